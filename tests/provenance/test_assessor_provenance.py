"""Every assessor carries XNAT's provenance block, whatever form the time zone takes."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from lxml import etree

from qmroct.algorithms import load_algorithm
from qmroct.assessment import Assessment
from qmroct.compute import compute_session, now_iso
from tests.provenance.conftest import REPO

NS = {"xnat": "http://nrg.wustl.edu/xnat", "prov": "http://www.nbirn.net/prov"}


def _result(end_time: str, start_time: str | None = None) -> dict:
    return {
        "session": {"project": "DEMO", "subject": "S1", "label": "S1_V1", "id": "S1_V1"},
        "algorithm": {"name": "noise", "version": "1.0.0", "code_checksum": "sha256:ab"},
        "status": "ok",
        "scans": [
            {
                "scan": "1",
                "status": "ok",
                "error": None,
                "kqis": {"snr_db": {"value": 20.5, "unit": "dB"}},
            }
        ],
        "provenance": {
            "start_time": start_time or end_time,
            "end_time": end_time,
            "host": "worker-1",
            "platform": "Linux",
            "python": "3.11.9",
            "qmroct_version": "0.1.0",
        },
    }


def _timestamp(xml: bytes) -> str | None:
    return etree.fromstring(xml).findtext(
        "xnat:provenance/prov:processStep/prov:timestamp", namespaces=NS
    )


def test_now_iso_is_timezone_aware_in_xsd_form():
    stamp = now_iso()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", stamp), stamp
    assert datetime.fromisoformat(stamp).utcoffset() is not None


@pytest.mark.parametrize(
    "stamp, expected",
    [
        (
            "2026-11-26T10:00:00+0000",
            "2026-11-26T10:00:00+00:00",
        ),  # strftime('%z'), as before the fix
        ("2026-11-26T10:00:00+01:00", "2026-11-26T10:00:00+01:00"),
        ("2026-11-26T10:00:00-0530", "2026-11-26T10:00:00-05:30"),
        ("2026-11-26T10:00:00Z", "2026-11-26T10:00:00+00:00"),
        ("2026-11-26T10:00:00.250000+02:00", "2026-11-26T10:00:00.250000+02:00"),
    ],
)
def test_timezone_aware_timestamps_keep_the_block_and_validate(xnat_xsd, stamp, expected):
    xml = Assessment.from_result(_result(stamp)).to_xml()
    assert _timestamp(xml) == expected
    assert xnat_xsd.validate(etree.fromstring(xml)), xnat_xsd.error_log


def test_missing_block_is_caught_by_the_check(xnat_xsd):
    """The presence check can fail: an assessor without its block is not accepted."""
    doc = etree.fromstring(Assessment.from_result(_result(now_iso())).to_xml())
    doc.remove(doc.find("xnat:provenance", NS))
    assert xnat_xsd.validate(doc)  # the XSD alone would let it pass (the block is optional) ...
    assert doc.find("xnat:provenance/prov:processStep", NS) is None  # ... so tests check presence


def test_no_usable_timestamp_is_an_error_not_a_silent_drop():
    result = _result("yesterday")
    with pytest.raises(ValueError, match="S1_V1_qmroct_noise.*end_time"):
        Assessment.from_result(result).to_xml()


def test_a_real_result_writes_a_valid_assessor_with_provenance(tmp_path, archive_copy, xnat_xsd):
    """compute -> assessment, as the workflow does: the block survives the real timestamps."""
    session = archive_copy.discover(["DEMO"])[0]
    algo = load_algorithm("noise", search_paths=[REPO / "algorithms"])
    result = compute_session(
        session, algo, {}, archive_copy, tmp_path / "scratch", tmp_path / "extras"
    )
    doc = etree.fromstring(Assessment.from_result(result).to_xml())
    assert xnat_xsd.validate(doc), xnat_xsd.error_log
    step = doc.find("xnat:provenance/prov:processStep", NS)
    assert step is not None, "provenance/processStep missing from a real assessor"
    stamp = step.findtext("prov:timestamp", namespaces=NS)
    assert datetime.fromisoformat(stamp).utcoffset() is not None
    assert step.findtext("prov:program", namespaces=NS) == "qmroct:noise"
    assert step.find("prov:program", NS).get("arguments") == f"code_checksum={algo.code_checksum}"
