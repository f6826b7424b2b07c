"""One algorithm's KQIs for one session, as an archive stores them.

The same document goes into the directory archive (as a file) and into XNAT
(as an ``xnat:qcAssessmentData`` assessor), so both backends store exactly
what a researcher later reads. The digest covers the content only (no dates,
no host), so a rerun that produced the same KQIs is recognised as unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import xml.etree.ElementTree as ET
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qmroct.checksums import file_digest

XNAT_NS = "http://nrg.wustl.edu/xnat"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
PROV_NS = "http://www.nbirn.net/prov"
ASSESSMENT_TYPE = "xnat:qcAssessmentData"

ET.register_namespace("xnat", XNAT_NS)
ET.register_namespace("xsi", XSI_NS)
ET.register_namespace("prov", PROV_NS)

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def xsd_datetime(value: Any) -> str | None:
    """An ISO 8601 time as ``xs:dateTime`` wants it, or None when it is not one.

    Offsets come in both ISO forms (``+0000`` from ``strftime('%z')``, ``+00:00``,
    ``Z``); xs:dateTime accepts only the extended one, so the value is re-written.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.isoformat(timespec=spec)


def version_token(version: str) -> str:
    """An algorithm version as a label part: ``1.0.0`` -> ``v1-0-0``.

    XNAT labels take letters, digits, ``_`` and ``-`` only (qmroct.paths.check_label).
    Dotted versions map one to one (they contain no ``-``); anything else is made safe and
    given a digest of the exact version, so two versions never share a label.
    """
    if re.fullmatch(r"[0-9A-Za-z]+(\.[0-9A-Za-z]+)*", version):
        return "v" + version.replace(".", "-")
    safe = re.sub(r"[^0-9A-Za-z]+", "-", version).strip("-") or "x"
    return f"v{safe}_{hashlib.sha256(version.encode()).hexdigest()[:8]}"


def assessment_label(session_label: str, algorithm: str, version: str | None = None) -> str:
    """The label that makes a rerun replace, never duplicate. With ``version`` it carries
    the algorithm version, so a version bump writes a new assessor beside the old one."""
    if version is None:
        return f"{session_label}_qmroct_{algorithm}"
    return f"{session_label}_qmroct_{algorithm}_{version_token(version)}"


SUPERSEDED_FIELD = "qmroct_superseded_by"


def mark_superseded(xml: bytes, by_label: str) -> bytes:
    """The assessor document with a ``qmroct_superseded_by`` field: the assessor stays,
    readers see which newer one replaces it (still valid against xnat.xsd)."""
    root = ET.fromstring(xml)
    fields = root.find(f"{{{XNAT_NS}}}fields")
    if fields is None:
        raise ValueError("not a qmroct assessor document (no xnat:fields)")
    for field_el in fields.findall(f"{{{XNAT_NS}}}field"):
        if field_el.get("name") == SUPERSEDED_FIELD:
            fields.remove(field_el)
    ET.SubElement(fields, f"{{{XNAT_NS}}}field", {"name": SUPERSEDED_FIELD}).text = by_label
    return ET.tostring(root, xml_declaration=True, encoding="UTF-8")


@dataclass
class Assessment:
    project: str
    subject: str
    session_label: str
    session_id: str
    algorithm: str
    version: str
    code_checksum: str
    status: str  # "ok", "partial" or "failed"
    scans: list[
        dict[str, Any]
    ]  # [{"scan": id, "status": ..., "error": ..., "kqis": {name: {"value", "unit"}}}]
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # resource file name -> local path
    date: str = ""  # ISO date of the computation (provenance, not content)
    # Whether the label carries the algorithm version (the archive says: Archive.versioned_labels)
    versioned: bool = False

    @property
    def label(self) -> str:
        version = self.version if self.versioned else None
        return assessment_label(self.session_label, self.algorithm, version)

    @classmethod
    def from_result(
        cls, result: dict[str, Any], files: dict[str, Path] | None = None, versioned: bool = False
    ) -> "Assessment":
        """Build from a KQI result document (see qmroct.results)."""
        session = result["session"]
        algorithm = result["algorithm"]
        provenance = result.get("provenance", {})
        return cls(
            project=session["project"],
            subject=session["subject"],
            session_label=session["label"],
            session_id=session.get("id") or session["label"],
            algorithm=algorithm["name"],
            version=algorithm["version"],
            code_checksum=algorithm.get("code_checksum", ""),
            status=result["status"],
            scans=[
                {
                    "scan": s["scan"],
                    "status": s["status"],
                    "error": s.get("error"),
                    "kqis": {
                        k: {"value": v.get("value"), "unit": v.get("unit", "")}
                        for k, v in s.get("kqis", {}).items()
                    },
                }
                for s in result.get("scans", [])
            ],
            provenance=provenance,
            files=dict(files or {}),
            date=str(provenance.get("end_time", ""))[:10],
            versioned=versioned,
        )

    def content(self) -> dict[str, Any]:
        """What the digest covers: KQIs, status and the algorithm identity."""
        return {
            "label": self.label,
            "algorithm": self.algorithm,
            "version": self.version,
            "code_checksum": self.code_checksum,
            "status": self.status,
            "scans": self.scans,
            # The KQI JSON itself carries run times and host; its scientific content is
            # ``scans`` above, so it is left out and a rerun with equal KQIs stays unchanged.
            "files": {
                name: file_digest(path)
                for name, path in sorted(self.files.items())
                if name != f"{self.algorithm}.json"
            },
        }

    @property
    def digest(self) -> str:
        blob = json.dumps(self.content(), sort_keys=True, separators=(",", ":"), default=str)
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()

    def to_xml(self) -> bytes:
        """The ``xnat:QCAssessment`` document (element order follows xnat.xsd)."""
        x = lambda tag: f"{{{XNAT_NS}}}{tag}"  # noqa: E731
        # ID is required by xnat.xsd; empty lets the archive assign (or keep) it.
        # The algorithm version goes in the fields and the provenance: the
        # experiment's own @version attribute is an xs:integer.
        root = ET.Element(
            x("QCAssessment"),
            {"ID": "", "project": self.project, "label": self.label, "type": "qmroct"},
        )
        if _DATE.match(self.date or ""):
            ET.SubElement(root, x("date")).text = self.date
        ET.SubElement(
            root, x("note")
        ).text = f"qmroct {self.algorithm} {self.version}: {self.status}"
        fields = ET.SubElement(root, x("fields"))
        for name, value in (
            ("qmroct_algorithm", self.algorithm),
            ("qmroct_version", self.version),
            ("qmroct_code_checksum", self.code_checksum),
            ("qmroct_status", self.status),
            ("qmroct_digest", self.digest),
        ):
            ET.SubElement(fields, x("field"), {"name": name}).text = value
        self._provenance_xml(root)
        ET.SubElement(root, x("imageSession_ID")).text = self.session_id
        scans = ET.SubElement(root, x("scans"))
        for scan in self.scans:
            scan_el = ET.SubElement(scans, x("scan"), {"id": str(scan["scan"])})
            stats = ET.SubElement(
                scan_el, x("scanStatistics"), {f"{{{XSI_NS}}}type": "xnat:statisticsData"}
            )
            for name, kqi in sorted(scan["kqis"].items()):
                value = kqi.get("value")
                if (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                ):
                    ET.SubElement(stats, x("additionalStatistics"), {"name": name}).text = repr(
                        float(value)
                    )
            ET.SubElement(stats, x("addField"), {"name": "status"}).text = scan["status"]
            if scan.get("error"):
                ET.SubElement(stats, x("addField"), {"name": "error"}).text = str(scan["error"])
        return ET.tostring(root, xml_declaration=True, encoding="UTF-8")

    def _provenance_xml(self, root: ET.Element) -> None:
        """XNAT's provenance fields (derivedData/provenance, prov:processStep).

        One step: the algorithm (name, version, code checksum as arguments),
        when it ran, who ran it, on which host and platform, and qmroct's own
        version as a library. Required sub-elements get a placeholder when the
        result document does not say, so the document stays schema-valid.
        """
        p = lambda tag: f"{{{PROV_NS}}}{tag}"  # noqa: E731
        prov = self.provenance or {}
        timestamp = xsd_datetime(prov.get("end_time") or prov.get("start_time"))
        if timestamp is None:
            # Never drop the block silently: an assessor without provenance cannot be cited.
            raise ValueError(
                f"assessment {self.label}: provenance has no ISO 8601 end_time or start_time "
                f"(got {prov.get('end_time')!r}, {prov.get('start_time')!r})"
            )
        process = ET.SubElement(root, f"{{{XNAT_NS}}}provenance")
        step = ET.SubElement(process, p("processStep"))
        ET.SubElement(
            step,
            p("program"),
            {"version": self.version, "arguments": f"code_checksum={self.code_checksum}"},
        ).text = f"qmroct:{self.algorithm}"
        ET.SubElement(step, p("timestamp")).text = timestamp
        ET.SubElement(step, p("user")).text = str(prov.get("user") or "qmroct")
        ET.SubElement(step, p("machine")).text = str(
            prov.get("host") or prov.get("machine") or "unknown"
        )
        platform = str(prov.get("platform") or "unknown")
        ET.SubElement(
            step, p("platform"), {"version": str(prov.get("python") or "")}
        ).text = platform
        ET.SubElement(
            step, p("library"), {"version": str(prov.get("qmroct_version") or "")}
        ).text = "qmroct"
