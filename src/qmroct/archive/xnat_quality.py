"""Scan quality on XNAT (opt-in, ``studies/<name>/set_scan_quality``).

A study's verdict per scan (usable / questionable / unusable) goes into the
scan's ``quality`` field, never over a value a person set: a scan is changed
only when its quality is empty or still what qmroct set last time. What qmroct
set is recorded in a ``<session>_qmroct_study_<study>`` assessor
(``xnat:qcAssessmentData``: per scan the verdict and its reason, and a
``qmroct_quality_scan_<id>`` field per scan qmroct changed).

Only scan types that carry ``quality`` are written: the field belongs to
``xnat:imageScanData``'s concrete subtypes (``xnat:optScanData``,
``xnat:mrScanData``, ...); XNAT refuses a PUT to the abstract
``xnat:imageScanData`` with 400, so such scans are reported, not written.
"""

from __future__ import annotations

import datetime as dt
import logging
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING
from urllib.parse import quote

from qmroct.archive.base import ArchiveError, Session, scan_order_key
from qmroct.archive.xnat_http import XnatNotFound
from qmroct.assessment import XNAT_NS

if TYPE_CHECKING:
    from qmroct.archive.xnat import XnatArchive

log = logging.getLogger("qmroct.archive.xnat")

QUALITY_VALUES = ("usable", "questionable", "unusable")
QUALITY_FIELD = "qmroct_quality_scan_"  # + scan ID: what qmroct set, recorded in the assessor
# Abstract scan types: no concrete element, XNAT cannot store a field on them.
NO_QUALITY_TYPES = frozenset({"xnat:imageScanData", ""})
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"


def set_scan_quality(
    archive: XnatArchive,
    session: Session,
    study: str,
    verdicts: dict[str, str],
    reasons: dict[str, str] | None = None,
) -> dict[str, str]:
    """Write the verdicts; returns {scan: "set" | "kept" | "person" | "no quality field"}."""
    reasons = reasons or {}
    bad = {k: v for k, v in verdicts.items() if v not in QUALITY_VALUES}
    if bad:
        raise ArchiveError(f"scan quality must be one of {', '.join(QUALITY_VALUES)}; got {bad}")
    http = archive.http
    label = f"{session.label}_qmroct_study_{study}"
    try:
        existing = archive.existing_assessor(session, label)
        rows = http.listing(
            f"/data/experiments/{quote(session.id)}/scans",
            columns="ID,quality,xsiType",
            what=f"scans of {session.key}",
        )
    except XnatNotFound:
        raise archive.vanished(session, "its scans cannot be listed") from None
    recorded = {
        k[len(QUALITY_FIELD) :]: v
        for k, v in (fields_of(existing[1]) if existing else {}).items()
        if k.startswith(QUALITY_FIELD)
    }
    current = {r["ID"]: (r.get("quality") or "", r.get("xsiType") or "") for r in rows}
    outcome: dict[str, str] = {}
    record: dict[str, str] = {}
    for scan_id, value in sorted(verdicts.items()):
        if scan_id not in current:
            continue
        now, scan_type = current[scan_id]
        if scan_type in NO_QUALITY_TYPES:
            outcome[scan_id] = "no quality field"
            log.warning(
                "XNAT %s scan %s: type %s has no quality field; verdict not written",
                session.key,
                scan_id,
                scan_type or "(none)",
            )
            continue
        if now and now != recorded.get(scan_id):
            outcome[scan_id] = "person"  # someone chose this value: leave it
            log.info(
                "XNAT %s scan %s: quality '%s' was set by a person; kept", session.key, scan_id, now
            )
            continue
        record[scan_id] = value
        if now == value:
            outcome[scan_id] = "kept"
            continue
        http.put(
            f"{archive.session_path(session)}/scans/{quote(scan_id)}",
            params={"xsiType": scan_type, f"{scan_type}/quality": value},
            what=f"quality of scan {scan_id}",
        )
        outcome[scan_id] = "set"
    document = study_document(session, label, study, verdicts, reasons, record)
    archive.put_assessor(session, label, document, existing[0] if existing else "")
    return outcome


def study_document(
    session: Session,
    label: str,
    study: str,
    verdicts: dict[str, str],
    reasons: dict[str, str],
    record: dict[str, str],
) -> bytes:
    """The study verdict assessor (xnat.xsd-valid QCAssessment)."""
    x = lambda tag: f"{{{XNAT_NS}}}{tag}"  # noqa: E731
    root = ET.Element(
        x("QCAssessment"),
        {
            "ID": "",
            "project": session.project,
            "label": label,
            "type": f"qmroct study {study}",
        },
    )
    ET.SubElement(root, x("date")).text = dt.date.today().isoformat()
    ET.SubElement(root, x("note")).text = f"qmroct scan quality for study {study}"
    fields = ET.SubElement(root, x("fields"))
    ET.SubElement(fields, x("field"), {"name": "qmroct_study"}).text = study
    for scan_id, value in sorted(record.items()):
        ET.SubElement(fields, x("field"), {"name": QUALITY_FIELD + scan_id}).text = value
    ET.SubElement(root, x("imageSession_ID")).text = session.id
    scans = ET.SubElement(root, x("scans"))
    for scan_id, value in sorted(verdicts.items(), key=lambda kv: scan_order_key(kv[0])):
        scan = ET.SubElement(scans, x("scan"), {"id": scan_id})
        stats = ET.SubElement(scan, x("scanStatistics"), {XSI_TYPE: "xnat:statisticsData"})
        ET.SubElement(stats, x("addField"), {"name": "quality"}).text = value
        if reasons.get(scan_id):
            ET.SubElement(stats, x("addField"), {"name": "reason"}).text = reasons[scan_id][:1000]
    return ET.tostring(root, xml_declaration=True, encoding="UTF-8")


def fields_of(root: ET.Element) -> dict[str, str]:
    fields = root.find(f"{{{XNAT_NS}}}fields")
    if fields is None:
        return {}
    return {f.get("name", ""): (f.text or "") for f in fields.findall(f"{{{XNAT_NS}}}field")}
