"""Write-back on XNAT: one ``xnat:qcAssessmentData`` assessor per session and
algorithm, with a ``QMROCT`` resource holding the KQI JSON and extra files.

How XNAT takes each call (and so the order of calls here):

- the assessor is PUT as a whole XML document with ``allowDataDeletion=true``,
  because KQIs that are gone must go. XNAT then builds the item from the XML
  alone (``ExptAssessmentResource.handlePut``: no template from the stored
  item), its SAX reader drops an empty ``ID=""``, and an update without the
  stored ID is refused with 400 ("ID cannot be modified" / ID required). An
  update therefore carries the assessor's ID.
- Rebuilt from the XML alone, the assessor keeps only the child items the XML
  names (``DBAction.StoreItem`` with ``allowItemRemoval``); its ``out/file``
  resources are not in our XML, so after an update the resource may be gone.
  The resource is therefore looked up after every assessor PUT and created
  only when missing: a PUT to an existing one answers 409 "Specified resource
  already exists." (``CatalogResource.handlePost``).
- files are uploaded when missing or different (MD5 when XNAT lists one, else
  always), stale ones deleted (needs delete rights on the assessor).
- labels carry the algorithm version (``Assessment.versioned``): a version bump
  writes a new assessor and the older ones of the same algorithm stay, marked
  with a ``qmroct_superseded_by`` field. That mark is PUT *without*
  ``allowDataDeletion``: XNAT then loads the document onto the stored item
  (``ExptAssessmentResource.handlePut`` with the stored item as template), so the
  old assessor keeps its ``QMROCT`` resource; its ``xnat:fields/field`` items are
  matched by name (``uniqueComposite="NAME"`` in xnat.xsd), so the mark adds one
  field and changes nothing else. Removing a mark (a version rolled back) cannot
  be done by such a merge: the current assessor is rewritten whole instead.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from qmroct.archive.base import ArchiveError, Session, WriteOutcome
from qmroct.archive.xnat_http import XnatForbidden, XnatNotFound, XnatUnanswered, file_path_of
from qmroct.archive.xnat_quality import fields_of
from qmroct.assessment import ASSESSMENT_TYPE, SUPERSEDED_FIELD, assessment_label, mark_superseded
from qmroct.checksums import file_digest

if TYPE_CHECKING:
    from qmroct.archive.xnat import XnatArchive
    from qmroct.assessment import Assessment


def existing_assessor(
    archive: XnatArchive, session: Session, label: str
) -> tuple[str, ET.Element] | None:
    """(XNAT ID, stored document) of the session's assessor with this label."""
    http = archive.http
    rows = http.listing(
        f"/data/experiments/{quote(session.id)}/assessors",
        columns="ID,label,xsiType",
        what=f"assessors of {session.key}",
    )
    for row in rows:
        if row.get("label") == label:
            xml = http.get(
                f"/data/experiments/{quote(session.id)}/assessors/{quote(row['ID'])}",
                params={"format": "xml"},
                what=f"assessor {label}",
            ).content
            return row["ID"], ET.fromstring(xml)
    return None


def put_assessor(
    archive: XnatArchive,
    session: Session,
    label: str,
    document: bytes,
    retries: int | None = None,
    replace: bool = True,
) -> Any:
    """PUT the whole document as the assessor's new state (see the module doc:
    an update's document must carry the assessor's ID, ``with_id``). ``replace=False``
    merges it onto the stored item instead, which keeps what the document does not name."""
    return archive.http.put(
        f"{archive.session_path(session)}/assessors/{quote(label)}",
        params={"inbody": "true", "allowDataDeletion": "true" if replace else "false"},
        data=document,
        headers={"Content-Type": "text/xml"},
        retries=retries,
        what=f"assessor {label}",
    )


def write_assessment(
    archive: XnatArchive, session: Session, assessment: Assessment
) -> WriteOutcome:
    label = assessment.label
    try:
        existing = existing_assessor(archive, session, label)
    except XnatNotFound:
        raise archive.vanished(session, "its assessors cannot be listed") from None
    resource = (
        f"{archive.session_path(session)}/assessors/{quote(label)}"
        f"/resources/{quote(archive.resource_label)}"
    )
    stored = fields_of(existing[1]) if existing else {}
    if (
        existing
        and stored.get("qmroct_digest") == assessment.digest
        # superseded earlier and current again (a version rolled back): rewritten below
        # without the mark
        and SUPERSEDED_FIELD not in stored
        and _resource_complete(archive, resource, assessment)
    ):
        # Nothing to re-send; but if a compute job opened a History row for this
        # result (it recomputed the same KQIs), that row must still end.
        archive.history.finish(session, assessment, note="assessment unchanged", only_if_open=True)
        supersede_older(archive, session, assessment)
        return WriteOutcome(label, "unchanged", existing[0])
    old_id = existing[0] if existing else ""
    response = put_document(archive, session, label, assessment.to_xml(), old_id)
    assessor_id = response.text.strip() or old_id
    action = "created" if response.status_code == 201 or not existing else "updated"
    _upload_files(archive, resource, assessment)
    archive.history.finish(session, assessment)
    supersede_older(archive, session, assessment)
    return WriteOutcome(label, action, assessor_id)


def supersede_older(archive: XnatArchive, session: Session, assessment: Assessment) -> list[str]:
    """Mark the session's other assessors of the same algorithm (older or newer versions,
    or the unversioned label of earlier qmroct) as superseded by this one; never delete
    them: a paper may cite them. Returns the labels marked now.

    Which algorithm an assessor belongs to is read from its ``qmroct_algorithm`` field,
    never from its label: ``noise`` is a prefix of ``noise_octave``'s labels. The label only
    narrows which documents are fetched: every label this algorithm ever had is
    ``<session>_qmroct_<algorithm>`` or that plus ``_v<version>``, so a write-back costs one
    listing and a GET per version (and per algorithm whose name extends this one's)."""
    http = archive.http
    unversioned = assessment_label(assessment.session_label, assessment.algorithm)
    rows = http.listing(
        f"/data/experiments/{quote(session.id)}/assessors",
        columns="ID,label,xsiType",
        what=f"assessors of {session.key}",
    )
    marked = []
    for row in rows:
        label = row.get("label", "")
        if label == assessment.label or not (
            label == unversioned or label.startswith(unversioned + "_")
        ):
            continue
        if row.get("xsiType") not in (None, "", ASSESSMENT_TYPE):
            continue
        document = http.get(
            f"/data/experiments/{quote(session.id)}/assessors/{quote(row['ID'])}",
            params={"format": "xml"},
            what=f"assessor {label}",
        ).content
        fields = fields_of(ET.fromstring(document))
        algorithm = fields.get("qmroct_algorithm")
        legacy = algorithm is None and label == unversioned
        if algorithm != assessment.algorithm and not legacy:
            continue
        if fields.get(SUPERSEDED_FIELD) == assessment.label:
            continue  # marked by an earlier run
        put_assessor(
            archive,
            session,
            label,
            with_id(mark_superseded(document, assessment.label), row["ID"]),
            replace=False,  # merged onto the stored item: its resource and KQIs stay
        )
        marked.append(label)
    return marked


def put_document(
    archive: XnatArchive, session: Session, label: str, document: bytes, old_id: str
) -> Any:
    """Create or update. A create is sent once: if its answer is lost, XNAT may
    have stored it, and a second ID-less PUT would be an update XNAT refuses;
    so look again and send the update with the ID it got."""
    if old_id:
        return put_assessor(archive, session, label, with_id(document, old_id))
    try:
        return put_assessor(archive, session, label, document, retries=0)
    except XnatUnanswered:
        again = existing_assessor(archive, session, label)
        return put_assessor(archive, session, label, with_id(document, again[0] if again else ""))


def with_id(document: bytes, assessor_id: str) -> bytes:
    """The assessor document carrying its XNAT ID (nothing to add for a new one)."""
    if not assessor_id:
        return document
    root = ET.fromstring(document)
    root.set("ID", assessor_id)
    return ET.tostring(root, xml_declaration=True, encoding="UTF-8")


def _stored_files(archive: XnatArchive, resource: str) -> dict[str, str] | None:
    """{relative path: digest} of a resource's files; None when it does not exist."""
    try:
        rows = archive.http.listing(f"{resource}/files", what="assessor files")
    except XnatNotFound:
        return None
    return {file_path_of(r["URI"]): r.get("digest", "") for r in rows}


def _resource_complete(archive: XnatArchive, resource: str, assessment: Assessment) -> bool:
    """The resource holds exactly the assessment's files (a stale one left by an
    interrupted write-back makes it incomplete), each with its digest if listed."""
    stored = _stored_files(archive, resource)
    if stored is None:
        return not assessment.files
    return set(stored) == set(assessment.files) and all(
        not stored[name] or stored[name] == _md5(path) for name, path in assessment.files.items()
    )


def _upload_files(archive: XnatArchive, resource: str, assessment: Assessment) -> None:
    http = archive.http
    stored = _stored_files(archive, resource)
    if stored is None:
        # created only when missing; a 409 means a retry of this very PUT made it
        http.put(
            resource,
            params={"format": "JSON", "content": "qmroct KQIs"},
            ok=(200, 201, 409),
            what="assessor resource",
        )
        stored = {}
    for name, path in sorted(assessment.files.items()):
        path = Path(path)
        if stored.get(name) and stored[name] == _md5(path):
            continue
        http.put(
            f"{resource}/files/{quote_path(name)}",
            params={
                "inbody": "true",
                "overwrite": "true",
                "format": path.suffix.lstrip(".").upper() or "BIN",
                "content": "qmroct KQIs" if name.endswith(".json") else "qmroct output",
            },
            data=lambda path=path: open(path, "rb"),
            headers={"Content-Type": "application/octet-stream"},
            what=f"upload {name}",
        )
    for name in sorted(set(stored) - set(assessment.files)):
        try:
            http.delete(f"{resource}/files/{quote_path(name)}", what=f"remove stale {name}")
        except XnatForbidden:
            raise ArchiveError(
                f"XNAT refused to remove the stale file {name} of {assessment.label} (403): the "
                f"account '{http.user}' needs delete rights on assessors (docs/xnat.md)"
            ) from None


def quote_path(name: str) -> str:
    return "/".join(quote(p, safe="") for p in name.split("/"))


def _md5(path: Path) -> str:
    return file_digest(path, "md5")
