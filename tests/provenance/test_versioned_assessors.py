"""Versioned assessors in the directory archive: a version bump keeps the cited one."""

from __future__ import annotations

import json

import pytest
from lxml import etree

from qmroct.assessment import SUPERSEDED_FIELD, Assessment, assessment_label, version_token
from qmroct.paths import check_label
from tests.support import kqi_result

NS = {"xnat": "http://nrg.wustl.edu/xnat"}


@pytest.mark.parametrize(
    "version, token", [("1.0.0", "v1-0-0"), ("2", "v2"), ("1.0rc1", "v1-0rc1")]
)
def test_version_token(version, token):
    assert version_token(version) == token


def test_versioned_labels_are_xnat_labels_and_distinct():
    versions = ["1.0.0", "1.0-0", "1-0.0", "1.0.0+build.5", "2024 final", "ü", "1.0", "1.0.0.0"]
    labels = [assessment_label("SUBJ001_V1", "noise", v) for v in versions]
    for label in labels:
        check_label("assessor", label)  # raises when XNAT would refuse it
    assert len(set(labels)) == len(labels)
    assert assessment_label("S", "noise") == "S_qmroct_noise"  # unversioned, as before


def _result(session, version, value):
    result = kqi_result(session, value, version=version)
    result["provenance"]["host"] = "h"
    return result


def _write(archive, session, version, value, tmp_path, algorithm="noise"):
    result = _result(session, version, value)
    result["algorithm"]["name"] = algorithm
    kqi = tmp_path / f"{algorithm}.json"
    kqi.write_text(json.dumps(result))
    return archive.write_assessment(
        session, Assessment.from_result(result, {kqi.name: kqi}, versioned=archive.versioned_labels)
    )


def _record(base, label):
    return json.loads((base / label / "assessor.json").read_text())


def test_version_bump_keeps_the_old_assessor_marked_superseded(tmp_path, archive_copy, xnat_xsd):
    session = archive_copy.discover(["DEMO"])[0]
    base = archive_copy.session_dir(session) / "assessors"
    old, new = (f"{session.label}_qmroct_noise_v1-0-0", f"{session.label}_qmroct_noise_v1-1-0")
    other = f"{session.label}_qmroct_noise_octave_v1-0-0"  # same prefix, another algorithm

    assert _write(archive_copy, session, "1.0.0", 20.0, tmp_path).action == "created"
    assert (
        _write(archive_copy, session, "1.0.0", 20.0, tmp_path, "noise_octave").action == "created"
    )
    assert (
        _write(archive_copy, session, "1.0.0", 20.0, tmp_path).action == "unchanged"
    )  # idempotent
    assert _write(archive_copy, session, "1.1.0", 21.0, tmp_path).action == "created"
    assert sorted(p.name for p in base.iterdir()) == sorted([old, new, other])
    assert _record(base, old)["superseded_by"] == new
    assert "superseded_by" not in _record(base, new) and "superseded_by" not in _record(base, other)
    xml = etree.fromstring((base / old / "assessor.xml").read_bytes())
    assert xnat_xsd.validate(xml), xnat_xsd.error_log
    fields = {f.get("name"): f.text for f in xml.findall("xnat:fields/xnat:field", NS)}
    assert fields[SUPERSEDED_FIELD] == new and fields["qmroct_version"] == "1.0.0"
    assert b">20.0<" in (base / old / "assessor.xml").read_bytes()  # the cited numbers are kept
    history = (archive_copy.session_dir(session) / "history.jsonl").read_text()
    assert f"assessor {old} superseded by {new}" in history

    # Rolled back to 1.0.0: that one is current again, 1.1.0 stays, superseded.
    assert _write(archive_copy, session, "1.0.0", 20.0, tmp_path).action == "unchanged"
    assert "superseded_by" not in _record(base, old) and _record(base, new)["superseded_by"] == old


def test_assessors_of_earlier_qmroct_are_superseded_not_replaced(tmp_path, archive_copy):
    session = archive_copy.discover(["DEMO"])[0]
    result = _result(session, "1.0.0", 19.0)
    kqi = tmp_path / "noise.json"
    kqi.write_text(json.dumps(result))
    legacy = archive_copy.write_assessment(session, Assessment.from_result(result, {kqi.name: kqi}))
    assert legacy.label == f"{session.label}_qmroct_noise"
    base = archive_copy.session_dir(session) / "assessors"
    record = _record(base, legacy.label)
    record.pop("algorithm"), record.pop("version")  # as earlier qmroct wrote it
    (base / legacy.label / "assessor.json").write_text(json.dumps(record))
    outcome = _write(archive_copy, session, "1.0.0", 20.0, tmp_path)
    assert outcome.label == f"{session.label}_qmroct_noise_v1-0-0"
    assert _record(base, legacy.label)["superseded_by"] == outcome.label
