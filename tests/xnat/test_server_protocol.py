"""The XNAT test server speaks XNAT's protocol as pyxnat and xnatpy expect it:
status codes, bodies and quirks from ../shared/reference/xnat-rest.md."""

from __future__ import annotations

import json

import pytest
import requests

from tests.xnat.conftest import needs_schemas
from tests.xnat.helpers import USER, seed_session


def test_put_answers_plain_id_201_then_200(xnat_server, password):
    auth = (USER, password)
    url = f"{xnat_server.url}/data/projects/OCT/subjects/S9"
    first = requests.put(url, params={"xsiType": "xnat:subjectData"}, auth=auth)
    again = requests.put(url, params={"xsiType": "xnat:subjectData"}, auth=auth)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.text == again.text and first.text.startswith("XNAT_S")
    exp = requests.put(
        f"{url}/experiments/E9", params={"xsiType": "xnat:optSessionData"}, auth=auth
    )
    assert exp.status_code == 201 and exp.text.startswith("XNAT_E")
    assert (
        requests.put(
            f"{url}/experiments/E9", params={"xsiType": "xnat:optSessionData"}, auth=auth
        ).status_code
        == 200
    )


def test_errors_are_html_status_pages(xnat_server, password):
    bad = requests.get(f"{xnat_server.url}/data/projects", auth=(USER, "nope"))
    assert bad.status_code == 401 and bad.text.startswith("<html>")
    assert "<h3>" in bad.text
    anon = requests.get(f"{xnat_server.url}/data/projects")
    assert anon.status_code == 401
    # authenticated but not allowed: 403
    other = requests.get(
        f"{xnat_server.url}/data/services/tokens/issue/user/{USER}", auth=("other", "other-pw")
    )
    assert other.status_code == 403 and other.text.startswith("<html>")
    gone = requests.delete(f"{xnat_server.url}/data/experiments/XNAT_E99999", auth=(USER, password))
    assert gone.status_code == 404 and "Unable to find the specified experiment." in gone.text


def test_duplicate_upload_without_overwrite(xnat_server, password, pyxnat_interface):
    seed_session(pyxnat_interface, "OCT", "S1", "S1_V1", scans=("1",), files_per_scan=1)
    url = (
        f"{xnat_server.url}/data/projects/OCT/subjects/S1/experiments/S1_V1/scans/1"
        "/resources/DICOM/files/S1_V1_1_000.dcm"
    )
    dup = requests.put(url, params={"inbody": "true"}, data=b"other", auth=(USER, password))
    assert dup.status_code == 200 and json.loads(dup.text) == {"duplicates": ["S1_V1_1_000.dcm"]}
    assert requests.get(url, auth=(USER, password)).content != b"other"
    ok = requests.put(
        url, params={"inbody": "true", "overwrite": "true"}, data=b"other", auth=(USER, password)
    )
    assert ok.status_code == 200 and requests.get(url, auth=(USER, password)).content == b"other"
    empty = requests.post(url, auth=(USER, password))
    assert empty.status_code == 400 and "inbody=true" in empty.text


def test_pyxnat_listings_are_csv(xnat_server, pyxnat_interface):
    seed_session(pyxnat_interface, "OCT", "S1", "S1_V1")
    assert [s.label() for s in pyxnat_interface.select.project("OCT").subjects()] == ["S1"]
    exp = pyxnat_interface.select("/project/OCT/subject/S1/experiment/S1_V1")
    assert exp.exists() and exp.datatype() == "xnat:optSessionData"
    assert sorted(exp.scans().get()) == ["1", "2"]
    csv_requests = [r["target"] for r in xnat_server.requests if "format=csv" in r["target"]]
    assert csv_requests and not [r for r in xnat_server.requests if "format=json" in r["target"]]
    with pytest.raises(Exception, match="Not Found|Connection failed|404"):
        pyxnat_interface._exec("/data/experiments/NOPE?format=xml")


@needs_schemas
def test_xnatpy_session_token_and_upload(xnat_server, password, pyxnat_interface, tmp_path):
    import xnat

    seed_session(pyxnat_interface, "OCT", "S1", "S1_V1", scans=("1",), files_per_scan=1)
    with xnat.connect(xnat_server.url, user=USER, password=password, loglevel="ERROR") as conn:
        assert conn.xnat_version == "1.8.10"
        assert conn.logged_in_user == USER
        exp = conn.projects["OCT"].experiments["S1_V1"]
        assert exp.__xsi_type__ == "xnat:optSessionData"
        scan = exp.scans["1"]
        assert scan.type == "OCT" and scan.series_description == "Macula 6x6"
        src = tmp_path / "note.txt"
        src.write_text("written by xnatpy")
        res = exp.create_resource("NOTES")
        res.upload(src, "note.txt")
        token = conn.services.issue_token()
    # the file xnatpy uploaded is there for pyxnat
    got = pyxnat_interface.select(
        "/project/OCT/subject/S1/experiment/S1_V1/resource/NOTES/file/note.txt"
    ).get(str(tmp_path / "back.txt"))
    assert open(got).read() == "written by xnatpy"
    # xnatpy logs in with an alias token (UUID user name: basic auth, then the JSESSION cookie)
    with xnat.connect(
        xnat_server.url, user=token.alias, password=token.secret, loglevel="ERROR"
    ) as conn:
        assert conn.logged_in_user == USER
        assert "S1_V1" in [e.label for e in conn.projects["OCT"].experiments.values()]
    with pytest.raises(xnat.exceptions.XNATLoginFailedError):
        xnat.connect(xnat_server.url, user=USER, password="wrong", loglevel="CRITICAL")


@needs_schemas
def test_schemas_are_served(xnat_server, password):
    names = requests.get(f"{xnat_server.url}/xapi/schemas", auth=(USER, password)).json()
    assert {"xnat", "xdat", "catalog", "pipeline/workflow", "birn/birnprov"} <= set(names)
    xsd = requests.get(f"{xnat_server.url}/xapi/schemas/xnat", auth=(USER, password))
    assert b'name="qcAssessmentData"' in xsd.content
