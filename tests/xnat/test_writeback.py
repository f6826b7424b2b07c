"""Write-back through pyxnat: assessor XML, resource files, history, idempotency;
read back through xnatpy; XSD validation of what was stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qmroct.archive.xnat import XnatArchive
from qmroct.assessment import Assessment
from tests.xnat.conftest import SCHEMAS, needs_schemas
from tests.support import session_fields
from tests.xnat.helpers import USER, seed_session


def result_doc(session, algorithm="noise", snr=(23.1, 18.5), status="ok", version="1.0.0"):
    return {
        "session": session_fields(session),
        "algorithm": {
            "name": algorithm,
            "version": version,
            "code_checksum": "sha256:" + "ab" * 32,
            "runtime": "python",
        },
        "status": status,
        "scans": [
            {
                "scan": scan.id,
                "status": "ok",
                "error": None,
                "kqis": {
                    "snr_db": {"value": snr[i % len(snr)], "unit": "dB", "per_bscan": [1.0, 2.0]},
                    "cnr": {"value": 3.5, "unit": ""},
                },
            }
            for i, scan in enumerate(session.scans)
        ],
        "provenance": {
            "start_time": "2026-11-26T01:00:00",
            "end_time": "2026-11-26T01:00:05",
            "host": "worker-1",
            "qmroct_version": "0.1.0",
            "platform": "Linux",
            "python": "3.11",
        },
    }


def make_assessment(tmp_path: Path, session, **kw) -> Assessment:
    doc = result_doc(session, **kw)
    algo = doc["algorithm"]["name"]
    path = tmp_path / f"{session.label}-{algo}" / f"{algo}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    lines = path.parent / "layers_scan1.txt"
    lines.write_text("ilm 10 11 12\nrpe 40 41 42\n")
    return Assessment.from_result(doc, files={path.name: path, lines.name: lines})


@pytest.fixture
def seeded(xnat_env, pyxnat_interface):
    seed_session(pyxnat_interface, "OCT", "S1", "S1_V1")
    seed_session(pyxnat_interface, "OCT", "S2", "S2_V1")
    arc = XnatArchive(server=xnat_env.url, projects=["OCT"], backoff=0.05)
    return arc, arc.discover(["OCT"])


def assessors(server, session_id):
    return [
        dict(r) for r in server.store.q("SELECT * FROM experiments WHERE session_id=?", session_id)
    ]


def test_write_assessment_idempotent(seeded, xnat_server, tmp_path):
    arc, sessions = seeded
    s = sessions[0]
    a = make_assessment(tmp_path, s)
    out = arc.write_assessment(s, a)
    assert (
        out.action == "created"
        and out.label == "S1_V1_qmroct_noise"
        and out.detail.startswith("XNAT_E")
    )
    # same content again: nothing is re-sent
    before = len(xnat_server.requests)
    again = arc.write_assessment(s, make_assessment(tmp_path, s))
    assert again.action == "unchanged"
    sent = [r for r in xnat_server.requests[before:] if r["method"] in ("PUT", "POST", "DELETE")]
    assert sent == []
    # changed KQIs: updated in place, never duplicated
    changed = arc.write_assessment(s, make_assessment(tmp_path, s, snr=(11.0, 12.0)))
    assert changed.action == "updated" and changed.detail == out.detail
    rows = assessors(xnat_server, s.id)
    assert [r["label"] for r in rows] == ["S1_V1_qmroct_noise"]
    assert '<xnat:additionalStatistics name="snr_db">11.0' in rows[0]["xml"]
    # a second algorithm adds its own assessor
    arc.write_assessment(s, make_assessment(tmp_path, s, algorithm="layers"))
    assert sorted(r["label"] for r in assessors(xnat_server, s.id)) == [
        "S1_V1_qmroct_layers",
        "S1_V1_qmroct_noise",
    ]


def test_resource_files_and_history(seeded, xnat_server, tmp_path, pyxnat_interface):
    arc, sessions = seeded
    s = sessions[0]
    a = make_assessment(tmp_path, s)
    arc.write_assessment(s, a)
    base = f"/project/OCT/subject/S1/experiment/S1_V1/assessor/{a.label}/resource/QMROCT"
    names = sorted(pyxnat_interface.select(base).files().get())
    assert names == ["layers_scan1.txt", "noise.json"]
    stored = pyxnat_interface.select(f"{base}/file/noise.json").get(str(tmp_path / "back.json"))
    assert json.loads(Path(stored).read_text())["scans"][0]["kqis"]["snr_db"]["value"] == 23.1
    history = arc.history_entries(s)
    assert [(h["pipeline_name"], h["status"]) for h in history] == [("qmroct noise", "Complete")]
    assert history[0]["launch_time"] == "2026-11-26 01:00:00.000"
    # the workflow can record Queued/Running for the same run: one row moves through states
    arc.record_history(
        s, "layers", "Queued", launch_time="2026-11-26T02:00:00"
    )  # ISO, as in provenance
    arc.record_history(s, "layers", "Running", launch_time="2026-11-26 02:00:00.000")
    failed = make_assessment(tmp_path, s, algorithm="layers", status="failed")
    failed.scans[0]["status"], failed.scans[0]["error"] = "failed", "no retina found"
    failed.provenance["start_time"] = "2026-11-26T02:00:00"
    arc.write_assessment(s, failed)
    rows = [(h["pipeline_name"], h["status"], h["details"]) for h in arc.history_entries(s)]
    assert rows[1][:2] == ("qmroct layers", "Failed") and "no retina found" in rows[1][2]
    assert len(rows) == 2


@needs_schemas
def test_xnatpy_reads_kqis_back(seeded, xnat_server, password, tmp_path):
    import xnat

    arc, sessions = seeded
    s = sessions[0]
    arc.write_assessment(s, make_assessment(tmp_path, s))
    with xnat.connect(xnat_server.url, user=USER, password=password, loglevel="ERROR") as conn:
        exp = conn.projects["OCT"].experiments["S1_V1"]
        qc = exp.assessors["S1_V1_qmroct_noise"]
        assert qc.__xsi_type__ == "xnat:qcAssessmentData"
        assert qc.label == "S1_V1_qmroct_noise"
        # xnatpy lists scans/scan by position and additionalStatistics as values
        scans = {scan.id: scan for scan in qc.scans}
        assert sorted(scans) == ["1", "2"]
        stats = scans["1"].scan_statistics
        assert stats.__xsi_type__ == "xnat:statisticsData"
        values = [float(v) for v in stats.additional_statistics.listing]
        names = [
            item["data_fields"]["name"]
            for child in stats.fulldata["children"]
            if child["field"] == "additionalStatistics"
            for item in child["items"]
        ]
        assert dict(zip(names, values, strict=True)) == {"cnr": 3.5, "snr_db": pytest.approx(23.1)}
        assert stats.add_field.listing == ["ok"]
        # xnatpy 0.8.1 caches nested objects by (uri, field name), so scan 2's
        # scan_statistics would come back as scan 1's: read scan 2's own data
        stats2 = next(c for c in scans["2"].fulldata["children"] if c["field"] == "scanStatistics")[
            "items"
        ][0]
        kqis2 = {
            i["data_fields"]["name"]: float(i["data_fields"]["additionalStatistics"])
            for c in stats2["children"]
            if c["field"] == "additionalStatistics"
            for i in c["items"]
        }
        assert kqis2 == {"cnr": 3.5, "snr_db": 18.5}
        assert sorted(qc.resources["QMROCT"].files.keys()) == ["layers_scan1.txt", "noise.json"]


@needs_schemas
def test_stored_assessor_validates_against_xnat_xsd(
    seeded, xnat_server, tmp_path, pyxnat_interface
):
    from lxml import etree

    arc, sessions = seeded
    s = sessions[0]
    a = make_assessment(tmp_path, s)
    arc.write_assessment(s, a)
    schema = etree.XMLSchema(etree.parse(str(SCHEMAS / "xnat" / "xnat.xsd")))
    xml = pyxnat_interface.select(
        f"/project/OCT/subject/S1/experiment/S1_V1/assessor/{a.label}"
    ).get()
    doc = etree.fromstring(xml)
    assert schema.validate(doc), schema.error_log
    ns = {"xnat": "http://nrg.wustl.edu/xnat", "prov": "http://www.nbirn.net/prov"}
    assert (
        doc.findtext("xnat:provenance/prov:processStep/prov:program", namespaces=ns)
        == "qmroct:noise"
    )
    assert (
        doc.findtext("xnat:provenance/prov:processStep/prov:machine", namespaces=ns) == "worker-1"
    )
    # the generated document, before the server touches it, validates too
    assert schema.validate(etree.fromstring(a.to_xml())), schema.error_log
    # and a broken one is caught (the check can fail)
    broken = etree.fromstring(a.to_xml())
    broken.remove(broken.find("xnat:scans", ns))
    assert not schema.validate(broken)


def test_scan_quality_never_overwrites_a_person(seeded, xnat_server, pyxnat_interface):
    arc, sessions = seeded
    s = sessions[0]
    scan2 = pyxnat_interface.select("/project/OCT/subject/S1/experiment/S1_V1/scan/2")
    scan2.attrs.set("xnat:optScanData/quality", "questionable")  # a person's choice
    out = arc.set_scan_quality(s, "trial", {"1": "usable", "2": "unusable"}, {"2": "snr_db 9 < 15"})
    assert out == {"1": "set", "2": "person"}
    quality = {
        r["ID"]: r["quality"]
        for r in pyxnat_interface._get_json(f"/data/experiments/{s.id}/scans?columns=ID,quality")
    }
    assert quality == {"1": "usable", "2": "questionable"}
    # qmroct may change what it set itself...
    assert arc.set_scan_quality(s, "trial", {"1": "unusable", "2": "unusable"})["1"] == "set"
    # ...but once a person changes it, qmroct leaves it
    pyxnat_interface.select("/project/OCT/subject/S1/experiment/S1_V1/scan/1").attrs.set(
        "xnat:optScanData/quality", "usable"
    )
    assert arc.set_scan_quality(s, "trial", {"1": "unusable"}) == {"1": "person"}
    rows = assessors(xnat_server, s.id)
    assert [r["label"] for r in rows] == ["S1_V1_qmroct_study_trial"]
