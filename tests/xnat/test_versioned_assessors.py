"""Versioned assessors on XNAT, through the test server and read back through pyxnat:
a version bump writes a new assessor, the older ones of the same algorithm stay (same
ID, same KQIs, same files), marked superseded; a rollback clears the mark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree

from qmroct.archive.xnat import XnatArchive
from qmroct.assessment import SUPERSEDED_FIELD, Assessment
from tests.xnat.conftest import SCHEMAS, needs_schemas
from tests.xnat.helpers import seed_session
from tests.xnat.test_writeback import result_doc

NS = {"xnat": "http://nrg.wustl.edu/xnat"}
BASE = "/project/OCT/subject/S1/experiment/S1_V1/assessor"


@pytest.fixture
def seeded(xnat_env, pyxnat_interface):
    seed_session(pyxnat_interface, "OCT", "S1", "S1_V1")
    archive = XnatArchive(server=xnat_env.url, projects=["OCT"], backoff=0.05)
    return archive, archive.discover(["OCT"])[0]


@pytest.fixture(scope="module")
def xsd():
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "xnat" / "xnat.xsd")))


def _write(archive, session, tmp_path, version, snr, algorithm="noise", versioned=True):
    doc = result_doc(session, algorithm=algorithm, snr=(snr,), version=version)
    folder = tmp_path / f"{algorithm}-{version}-{snr}"
    folder.mkdir(exist_ok=True)
    path = folder / f"{algorithm}.json"
    path.write_text(json.dumps(doc))
    assessment = Assessment.from_result(doc, files={path.name: path}, versioned=versioned)
    return archive.write_assessment(session, assessment)


def _stored(intf, label):
    """The assessor as pyxnat reads it: (document, fields)."""
    doc = etree.fromstring(intf.select(f"{BASE}/{label}").get())
    fields = {f.get("name"): f.text for f in doc.findall("xnat:fields/xnat:field", NS)}
    return doc, fields


def _labels(intf):
    return [assessor.label() for assessor in intf.select(f"{BASE}s")]


def _kqi_file(intf, label, tmp_path):
    local = intf.select(f"{BASE}/{label}/resource/QMROCT/file/noise.json").get(
        str(tmp_path / f"{label}.json")
    )
    return json.loads(Path(local).read_text())["scans"][0]["kqis"]["snr_db"]["value"]


def _writes(server, since):
    return [r for r in server.requests[since:] if r["method"] in ("PUT", "POST", "DELETE")]


@needs_schemas
def test_version_bump_on_xnat_keeps_the_old_assessor_marked_superseded(
    seeded, xnat_server, pyxnat_interface, tmp_path, xsd
):
    archive, session = seeded
    assert archive.versioned_labels
    old, new = "S1_V1_qmroct_noise_v1-0-0", "S1_V1_qmroct_noise_v1-1-0"
    other = "S1_V1_qmroct_noise_octave_v1-0-0"  # its label starts like noise's

    first = _write(archive, session, tmp_path, "1.0.0", 20.0)
    assert (first.label, first.action) == (old, "created")
    assert _write(archive, session, tmp_path, "1.0.0", 20.0, "noise_octave").label == other
    since = len(xnat_server.requests)
    assert _write(archive, session, tmp_path, "1.0.0", 20.0).action == "unchanged"
    assert _writes(xnat_server, since) == []  # rerunning the same version sends nothing

    bumped = _write(archive, session, tmp_path, "1.1.0", 21.0)
    assert (bumped.label, bumped.action) == (new, "created")
    labels = _labels(pyxnat_interface)
    assert sorted(labels) == sorted([old, new, other])
    doc, fields = _stored(pyxnat_interface, old)
    assert fields[SUPERSEDED_FIELD] == new and fields["qmroct_version"] == "1.0.0"
    assert doc.get("ID") == first.detail  # updated under its own ID, not replaced
    assert xsd.validate(doc), xsd.error_log
    assert "20.0" in [e.text for e in doc.iter("{%s}additionalStatistics" % NS["xnat"])]
    assert _kqi_file(pyxnat_interface, old, tmp_path) == 20.0  # its files stay too
    assert SUPERSEDED_FIELD not in _stored(pyxnat_interface, new)[1]
    assert SUPERSEDED_FIELD not in _stored(pyxnat_interface, other)[1]

    since = len(xnat_server.requests)
    assert _write(archive, session, tmp_path, "1.1.0", 21.0).action == "unchanged"
    assert _writes(xnat_server, since) == []  # already marked: nothing re-sent

    # Rolled back to 1.0.0: that one is current again (mark cleared, files whole),
    # 1.1.0 stays, superseded by it.
    back = _write(archive, session, tmp_path, "1.0.0", 20.0)
    assert back.label == old and back.detail == first.detail
    doc, fields = _stored(pyxnat_interface, old)
    assert SUPERSEDED_FIELD not in fields and xsd.validate(doc), xsd.error_log
    assert _kqi_file(pyxnat_interface, old, tmp_path) == 20.0
    assert _stored(pyxnat_interface, new)[1][SUPERSEDED_FIELD] == old
    assert _kqi_file(pyxnat_interface, new, tmp_path) == 21.0
    assert sorted(_labels(pyxnat_interface)) == sorted([old, new, other])


def test_unversioned_assessor_of_earlier_qmroct_is_superseded_not_replaced(
    seeded, xnat_server, pyxnat_interface, tmp_path
):
    archive, session = seeded
    legacy = _write(archive, session, tmp_path, "1.0.0", 19.0, versioned=False)
    assert legacy.label == "S1_V1_qmroct_noise"
    current = _write(archive, session, tmp_path, "1.0.0", 20.0)
    assert current.label == "S1_V1_qmroct_noise_v1-0-0" and current.action == "created"
    doc, fields = _stored(pyxnat_interface, legacy.label)
    assert fields[SUPERSEDED_FIELD] == current.label and doc.get("ID") == legacy.detail
    assert _kqi_file(pyxnat_interface, legacy.label, tmp_path) == 19.0
