"""Issue 15: the test server answers as XNAT's code does, and the client
survives it. Each test first shows the server's behaviour through a real client
(pyxnat, xnatpy or plain requests), then the qmroct client against it."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import pytest
import requests

from qmroct.archive.xnat import XnatArchive
from qmroct.archive.xnat_history import INTERRUPTED
from qmroct.archive.xnat_state import last_modified
from tests.xnat.conftest import needs_schemas
from tests.xnat.helpers import USER, seed_session
from tests.xnat.test_writeback import make_assessment

XML = {"Content-Type": "text/xml"}


@pytest.fixture
def arc_session(xnat_env, pyxnat_interface):
    seed_session(pyxnat_interface, "OCT", "S1", "S1_V1")
    arc = XnatArchive(server=xnat_env.url, projects=["OCT"], backoff=0.02, retries=2)
    return arc, arc.discover(["OCT"])[0]


def assessor_url(server, session, label):
    return f"{server.url}/data/projects/OCT/subjects/S1/experiments/{session.id}/assessors/{label}"


def resource_files(server, assessor_id):
    rows = server.store.q(
        "SELECT r.label, f.path FROM resources r JOIN files f ON f.resource_id=r.id "
        "WHERE r.owner=?",
        f"exp:{assessor_id}",
    )
    return sorted((r["label"], r["path"]) for r in rows)


# ---------------------------------------------------------------- 1. assessor updates
def test_id_less_rebuild_is_refused_like_xnat(arc_session, xnat_server, password, tmp_path):
    """ExptAssessmentResource.handlePut: allowDataDeletion=true builds the item
    from the XML alone; ID="" is dropped by the SAX reader: 400."""
    arc, s = arc_session
    a = make_assessment(tmp_path, s)
    url, auth = assessor_url(xnat_server, s, a.label), (USER, password)
    params = {"inbody": "true", "allowDataDeletion": "true"}
    created = requests.put(url, params=params, data=a.to_xml(), headers=XML, auth=auth)
    assert created.status_code == 201 and created.text.startswith("XNAT_E")
    again = requests.put(url, params=params, data=a.to_xml(), headers=XML, auth=auth)
    assert again.status_code == 400 and "ID cannot be modified" in again.text
    other = a.to_xml().replace(b'ID=""', b'ID="XNAT_E99999"')
    moved = requests.put(url, params=params, data=other, headers=XML, auth=auth)
    assert moved.status_code == 400 and "ID cannot be modified" in moved.text
    # without allowDataDeletion the stored item is the template: the ID is kept
    merged = requests.put(url, params={"inbody": "true"}, data=a.to_xml(), headers=XML, auth=auth)
    assert (merged.status_code, merged.text) == (200, created.text)


def test_rerun_with_changed_kqis_updates_in_place_and_keeps_the_files(
    arc_session, xnat_server, tmp_path
):
    arc, s = arc_session
    first = arc.write_assessment(s, make_assessment(tmp_path, s))
    changed = arc.write_assessment(s, make_assessment(tmp_path, s, snr=(11.0, 12.0)))
    assert changed.action == "updated" and changed.detail == first.detail
    row = xnat_server.store.one("SELECT * FROM experiments WHERE id=?", first.detail)
    assert 'name="snr_db">11.0' in row["xml"]
    # the rebuild dropped the resource (as DBAction's item removal does); it is back, whole
    assert resource_files(xnat_server, first.detail) == [
        ("QMROCT", "layers_scan1.txt"),
        ("QMROCT", "noise.json"),
    ]
    stored = json.loads(
        xnat_server.store.file_path(
            xnat_server.store.resource(f"exp:{first.detail}", "QMROCT")["id"], "noise.json"
        ).read_text()
    )
    assert stored["scans"][0]["kqis"]["snr_db"]["value"] == 11.0
    # and the next run sees a complete assessment: nothing re-sent
    before = len(xnat_server.requests)
    assert (
        arc.write_assessment(s, make_assessment(tmp_path, s, snr=(11.0, 12.0))).action
        == "unchanged"
    )
    assert [r for r in xnat_server.requests[before:] if r["method"] != "GET"] == []


@needs_schemas
def test_pyxnat_and_xnatpy_read_the_updated_assessor(
    arc_session, xnat_server, password, pyxnat_interface, tmp_path
):
    import xnat

    arc, s = arc_session
    first = arc.write_assessment(s, make_assessment(tmp_path, s))
    arc.write_assessment(s, make_assessment(tmp_path, s, snr=(11.0, 12.0)))
    label = "S1_V1_qmroct_noise"
    with xnat.connect(xnat_server.url, user=USER, password=password, loglevel="ERROR") as conn:
        qc = conn.projects["OCT"].experiments["S1_V1"].assessors[label]
        assert qc.id == first.detail
        assert sorted(qc.resources["QMROCT"].files.keys()) == ["layers_scan1.txt", "noise.json"]
    found = pyxnat_interface.select(f"/project/OCT/subject/S1/experiment/S1_V1/assessor/{label}")
    assert found.id() == first.detail
    assert b'name="snr_db">11.0' in found.get()
    assert sorted(found.resource("QMROCT").files().get()) == ["layers_scan1.txt", "noise.json"]


def test_second_scan_quality_write_updates_the_study_assessor(arc_session, xnat_server):
    arc, s = arc_session
    assert arc.set_scan_quality(s, "trial", {"1": "usable", "2": "unusable"}) == {
        "1": "set",
        "2": "set",
    }
    assert arc.set_scan_quality(s, "trial", {"1": "unusable", "2": "unusable"}) == {
        "1": "set",
        "2": "kept",
    }
    rows = xnat_server.store.q(
        "SELECT id, xml FROM experiments WHERE label=?", "S1_V1_qmroct_study_trial"
    )
    assert len(rows) == 1 and 'name="qmroct_quality_scan_1">unusable' in rows[0]["xml"]


# ---------------------------------------------------------------- 2. History lookups
def test_workflow_lookup_needs_all_three_keys(arc_session, xnat_server, password):
    """WorkflowUtils.getUniqueWorkflow: one row by id, pipeline name and launch time."""
    arc, s = arc_session
    key = arc.record_history(s, "noise", "Queued", launch_time="2026-11-26T02:00:00")
    auth, url = (USER, password), f"{xnat_server.url}/data/workflows"
    keys = {
        "format": "json",
        "wrk:workflowData/id": s.id,
        "wrk:workflowData/pipeline_name": "qmroct noise",
        "wrk:workflowData/launch_time": key,
    }
    one = requests.get(url, params=keys, auth=auth)
    assert one.status_code == 200 and one.json()["items"][0]["data_fields"]["status"] == "Queued"
    for missing in ("wrk:workflowData/launch_time", "wrk:workflowData/pipeline_name"):
        partial = requests.get(
            url, params={k: v for k, v in keys.items() if k != missing}, auth=auth
        )
        assert partial.status_code == 404
    # a new row needs data_type too (WorkflowResource.handlePut)
    bare = {k: v for k, v in keys.items() if k != "format"}
    bare["wrk:workflowData/launch_time"] = "2026-11-26 03:00:00.000"
    assert requests.put(url, params=bare, auth=auth).status_code == 400


def test_listing_filters_exact_pipeline_names(arc_session, xnat_server, password):
    """WorkflowsRestlet matches LIKE '%name%': a longer algorithm name comes back too."""
    arc, s = arc_session
    arc.record_history(s, "noise_fast", "Queued", launch_time="2026-11-26T05:00:00")
    arc.record_history(s, "noise", "Queued", launch_time="2026-11-26T04:00:00")
    arc.record_history(s, "noise", "Queued", launch_time="2026-11-26T03:00:00")
    listed = requests.get(
        f"{xnat_server.url}/data/services/workflows/qmroct noise",
        params={"experiment": s.id, "display": "ALL", "format": "json"},
        auth=(USER, password),
    ).json()["ResultSet"]["Result"]
    assert sorted(r["pipeline_name"] for r in listed) == [
        "qmroct noise",
        "qmroct noise",
        "qmroct noise_fast",
    ]
    assert arc.queued_run(s, "noise") == "2026-11-26 04:00:00.000"  # not noise_fast's 05:00
    assert [r["pipeline_name"] for r in arc.history_entries(s)] == [
        "qmroct noise",
        "qmroct noise",
        "qmroct noise_fast",
    ]


def test_history_errors_never_fail_a_job(arc_session, xnat_server, caplog, tmp_path):
    arc, s = arc_session
    xnat_server.inject("status", path=r"workflows", status=500, count=100)
    with caplog.at_level(logging.WARNING):
        assert arc.queued_run(s, "noise") is None
        assert arc.record_history(s, "noise", "Running", launch_time="2026-11-26T02:00:00") is None
        out = arc.write_assessment(s, make_assessment(tmp_path, s))
    assert out.action == "created"
    assert "XNAT History: listing of OCT/S1_V1 not recorded" in caplog.text
    assert len(arc.history.warnings) == 3 and all("HTTP 500" in w for w in arc.history.warnings)


def test_pipeline_prefix_must_be_lower_case(xnat_env):
    with pytest.raises(Exception, match="pipeline_prefix must be lower case"):
        XnatArchive(server=xnat_env.url, pipeline_prefix="QMROCT")


# ---------------------------------------------------------------- 3. the resource
def test_existing_resource_answers_409(arc_session, xnat_server, password, pyxnat_interface):
    """CatalogResource.handlePost: "Specified resource already exists." """
    arc, s = arc_session
    url = f"{xnat_server.url}/data/experiments/{s.id}/resources/NOTES"
    assert requests.put(url, auth=(USER, password)).status_code == 200
    again = requests.put(url, auth=(USER, password))
    assert again.status_code == 409 and "Specified resource already exists." in again.text
    # pyxnat creates a resource only when it does not exist: uploads keep working
    res = pyxnat_interface.select(f"/project/OCT/subject/S1/experiment/{s.label}/resource/NOTES")
    res.file("a.txt").put(b"x", format="TXT")
    assert res.files().get() == ["a.txt"]


def test_interrupted_upload_then_retry(arc_session, xnat_server, tmp_path):
    arc, s = arc_session
    # the resource is made, then the run dies during the first file upload
    xnat_server.inject("drop", path=r"/resources/QMROCT/files/", method="PUT", count=3)
    with pytest.raises(Exception, match="upload"):
        arc.write_assessment(s, make_assessment(tmp_path, s))
    assessor = xnat_server.store.one("SELECT id FROM experiments WHERE session_id=?", s.id)["id"]
    assert resource_files(xnat_server, assessor) == []
    # the retry completes it: no 409 on the existing resource, every file there
    assert arc.write_assessment(s, make_assessment(tmp_path, s)).action == "updated"
    assert resource_files(xnat_server, assessor) == [
        ("QMROCT", "layers_scan1.txt"),
        ("QMROCT", "noise.json"),
    ]
    assert not [r for r in xnat_server.requests if r["status"] == 409]


def test_a_new_run_closes_rows_a_killed_run_left_open(arc_session):
    """Issue 9 case 8: kill -9 runs no handler; the next job of the same session
    and algorithm closes what is still Queued or Running as interrupted."""
    arc, s = arc_session
    arc.record_history(s, "noise", "Complete", launch_time="2026-11-26T01:00:00")
    arc.record_history(s, "noise", "Running", launch_time="2026-11-26T02:00:00")  # killed
    arc.record_history(s, "noise", "Queued", launch_time="2026-11-26T02:30:00")  # never started
    arc.record_history(s, "layers", "Running", launch_time="2026-11-26T02:00:00")  # another job
    arc.record_history(s, "noise", "Queued", launch_time="2026-11-26T03:00:00")  # the new run
    key = arc.queued_run(s, "noise")
    assert key == "2026-11-26 03:00:00.000"
    arc.record_history(s, "noise", "Running", launch_time=key)
    rows = {
        (r["pipeline_name"], r["launch_time"]): (r["status"], r["details"])
        for r in arc.history_entries(s)
    }
    assert rows == {
        ("qmroct noise", "2026-11-26 01:00:00.000"): ("Complete", ""),
        ("qmroct noise", "2026-11-26 02:00:00.000"): ("Failed", INTERRUPTED),
        ("qmroct noise", "2026-11-26 02:30:00.000"): ("Failed", INTERRUPTED),
        ("qmroct layers", "2026-11-26 02:00:00.000"): ("Running", ""),
        ("qmroct noise", "2026-11-26 03:00:00.000"): ("Running", ""),
    }


def test_listing_of_a_deleted_session_keeps_to_its_own_rows(xnat_env, pyxnat_interface, password):
    """WorkflowsRestlet: an experiment it cannot find is no filter at all (every
    experiment's rows of the pipeline come back); the client keeps its own."""
    seed_session(pyxnat_interface, "OCT", "S1", "S1_V1")
    seed_session(pyxnat_interface, "OCT", "S2", "S2_V1")
    arc = XnatArchive(server=xnat_env.url, projects=["OCT"], backoff=0.02)
    s1, s2 = arc.discover(["OCT"])
    arc.record_history(s1, "noise", "Queued", launch_time="2026-11-26T01:00:00")
    arc.record_history(s2, "noise", "Queued", launch_time="2026-11-26T02:00:00")
    xnat_env.store.delete_experiment(s1.id)
    listed = requests.get(
        f"{xnat_env.url}/data/services/workflows/qmroct noise",
        params={"experiment": s1.id, "display": "ALL", "format": "json"},
        auth=(USER, password),
    ).json()["ResultSet"]["Result"]
    assert sorted(r["id"] for r in listed) == sorted([s1.id, s2.id])
    assert arc.queued_run(s1, "noise") == "2026-11-26 01:00:00.000"


# ---------------------------------------------------------------- 4. the state token
def test_own_write_backs_leave_the_state_token_alone(xnat_env, pyxnat_interface, tmp_path):
    """XNAT's triggers propagate last_modified from assessors and scans to the
    session (GenericWrapperUtils); the token discounts qmroct's own writes."""
    seed_session(pyxnat_interface, "OCT", "S1", "S1_V1")
    seed_session(pyxnat_interface, "OCT", "S2", "S2_V1")
    arc = XnatArchive(
        server=xnat_env.url, projects=["OCT"], backoff=0.02, cache_dir=str(tmp_path / "cache")
    )
    plain = XnatArchive(server=xnat_env.url, projects=["OCT"], backoff=0.02)  # no ledger
    s1, s2 = arc.discover(["OCT"])
    token, modified = arc.state_token(["OCT"]), last_modified(arc, s1)
    arc.write_assessment(s1, make_assessment(tmp_path, s1))
    arc.write_assessment(s1, make_assessment(tmp_path, s1, snr=(1.0, 2.0)))
    arc.set_scan_quality(s1, "trial", {"1": "usable"})
    assert last_modified(arc, s1) != modified  # the server propagated our writes
    assert plain.state_token(["OCT"]) != token  # which a token of raw values would see
    assert arc.state_token(["OCT"]) == token
    # the reads around each write ask XNAT for the one session, not the whole project
    reads = [r["target"] for r in xnat_env.requests if "columns=ID%2Clast_modified" in r["target"]]
    assert reads and all(f"ID={s1.id}" in target for target in reads)
    # anyone else's change still counts
    pyxnat_interface.select("/project/OCT/subject/S2/experiment/S2_V1/scan/1/resource/DICOM").file(
        "extra.dcm"
    ).put(b"new data", format="DICOM")
    assert arc.state_token(["OCT"]) != token


# ---------------------------------------------------------------- 5. digests and file names
def test_files_without_digest_are_checked_by_size_and_recorded(
    xnat_env, pyxnat_interface, tmp_path
):
    """CatalogUtils fills digest only when the site's checksums setting was on."""
    xnat_env.store.checksums = False
    seed_session(pyxnat_interface, "OCT", "S1", "S1_V1", scans=("1",), files_per_scan=2)
    arc = XnatArchive(server=xnat_env.url, projects=["OCT"], backoff=0.01, retries=1, timeout=5)
    s = arc.discover(["OCT"])[0]
    assert [f.checksum for f in s.scans[0].files] == ["", ""]
    assert s.extra["files_without_digest"] == ["1/S1_V1_1_000.dcm", "1/S1_V1_1_001.dcm"]
    assert s.to_dict()["extra"]["files_without_digest"]  # in the manifest
    got = arc.fetch(s, tmp_path / "ok")
    assert [p.stat().st_size for p in got["1"]] == [4096, 4096]
    # a short file is still caught by its size
    row = xnat_env.store.one("SELECT resource_id, path FROM files WHERE path LIKE ?", "%_001.dcm")
    xnat_env.store.file_path(row["resource_id"], row["path"]).write_bytes(b"short")
    with pytest.raises(Exception, match=r"got 5 bytes, XNAT lists 4096"):
        arc.fetch(s, tmp_path / "bad")


@pytest.mark.parametrize("name", ["a b.dcm", "100%.dcm", "scan#2.dcm", "x %23 y#.dcm"])
def test_raw_file_uris_with_special_characters(
    xnat_env, password, pyxnat_interface, tmp_path, name
):
    """CatalogUtils puts the relative path into the URI raw, unencoded."""
    seed_session(pyxnat_interface, "OCT", "S1", "S1_V1", scans=("1",), files_per_scan=0)
    arc = XnatArchive(server=xnat_env.url, projects=["OCT"], backoff=0.01)
    s = arc.discover(["OCT"])[0]
    url = f"{xnat_env.url}/data/experiments/{s.id}/scans/1/resources/DICOM/files/"
    put = requests.put(
        url + quote(name, safe=""),
        params={"inbody": "true"},
        data=b"payload",
        auth=(USER, password),
    )
    assert put.ok
    listing = requests.get(url, params={"format": "json"}, auth=(USER, password)).json()
    assert listing["ResultSet"]["Result"][0]["URI"].endswith(f"/files/{name}")
    s = arc.discover(["OCT"])[0]
    assert [f.name for f in s.scans[0].files] == [name]
    got = arc.fetch(s, tmp_path / "dl")
    assert [p.read_bytes() for p in got["1"]] == [b"payload"]


# ---------------------------------------------------------------- 6. rights and scan types
def test_scan_quality_only_on_scan_types_that_carry_it(arc_session, xnat_server, password):
    arc, s = arc_session
    xnat_server.store.put_scan(s.id, "3", "xnat:imageScanData", {"type": "LOCALIZER"})
    refused = requests.put(
        f"{xnat_server.url}/data/experiments/{s.id}/scans/3",
        params={"xsiType": "xnat:imageScanData", "xnat:imageScanData/quality": "usable"},
        auth=(USER, password),
    )
    assert refused.status_code == 400
    out = arc.set_scan_quality(s, "trial", {"1": "usable", "3": "unusable"})
    assert out == {"1": "set", "3": "no quality field"}
    quality = {
        r["id"]: r["quality"]
        for r in xnat_server.store.q("SELECT id, quality FROM scans WHERE experiment_id=?", s.id)
    }
    assert quality == {"1": "usable", "2": "", "3": ""}


def test_removing_stale_files_needs_delete_rights(arc_session, xnat_server, tmp_path):
    arc, s = arc_session
    a = make_assessment(tmp_path, s)
    arc.write_assessment(s, a)
    xnat_server.store.rebuild_keeps_resources = True  # the branch where files survive
    xnat_server.store.no_delete.add(USER)
    fewer = make_assessment(tmp_path / "b", s, snr=(5.0, 6.0))
    fewer.files.pop("layers_scan1.txt")
    with pytest.raises(Exception, match=r"stale file layers_scan1.txt .* needs delete rights"):
        arc.write_assessment(s, fewer)
    xnat_server.store.no_delete.discard(USER)  # with the right: the stale file goes
    assert arc.write_assessment(s, fewer).action == "updated"
    aid = xnat_server.store.one("SELECT id FROM experiments WHERE session_id=?", s.id)["id"]
    assert resource_files(xnat_server, aid) == [("QMROCT", "noise.json")]


def test_single_workflow_in_csv_is_a_clear_400(arc_session, xnat_server, password):
    """WorkflowResource renders one item (SecureResource.representItem: HTML, JSON, XML):
    CSV is not offered there; the listing service is where rows come as CSV."""
    arc, s = arc_session
    key = arc.record_history(s, "noise", "Queued", launch_time="2026-11-26T02:00:00")
    auth, url = (USER, password), f"{xnat_server.url}/data/workflows"
    keys = {
        "wrk:workflowData/id": s.id,
        "wrk:workflowData/pipeline_name": "qmroct noise",
        "wrk:workflowData/launch_time": key,
    }
    refused = requests.get(url, params=keys | {"format": "csv"}, auth=auth)
    assert refused.status_code == 400 and "format=csv is not offered" in refused.text
    assert "display=ALL&amp;format=csv" in refused.text  # an HTML status page, as XNAT's
    listed = requests.get(
        f"{xnat_server.url}/data/services/workflows/qmroct noise",
        params={"experiment": s.id, "display": "ALL", "format": "csv"},
        auth=auth,
    )
    assert listed.status_code == 200 and listed.headers["Content-Type"].startswith("text/csv")
    assert "Queued" in listed.text
