"""Issue 9 cases 2, 3, 4, 6 (labels), 7 and 8 (directory write-back): hostile archive
content with real snakemake, and the library pieces behind it.

Before: a label of ``../../../../x`` wrote outside results/, an absolute scan ID made
staging write there, a ``files/`` link to another folder was copied and checksummed,
an ``assessors/`` link received the write-back, a periodic label raised
PeriodicWildcardError, a 245-character label failed write-back with OSError, the end
of any run wiped every run's scratch, and killed write-backs left hidden folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from qmroct.archive.base import Session
from qmroct.archive.directory import DirectoryArchive
from qmroct.discovery import discover, vet_session
from qmroct.paths import (
    UnsafePath,
    check_label,
    check_relative,
    confined,
    is_periodic,
    path_segment,
)
from qmroct.scratch import Owner, claim

from tests.support import REPO
from tests.test_safety_scans import deflated_bomb

PERIODIC = "PAT1_00000000000000000000"
LONG = "L" + "ong_label-" * 24 + "x" * 4  # 245 characters, a valid XNAT label
assert len(LONG) == 245


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if d != skip.name]
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[path] = (st.st_size, st.st_mtime_ns)
    return out


def _clone(archive: Path, folder: str, label: str | None = None, **session_changes) -> Path:
    """A copy of the first demo session as DEMO/subjects/SUBJX/experiments/<folder>."""
    source = sorted(archive.glob("DEMO/subjects/*/experiments/*"))[0]
    target = archive / "DEMO" / "subjects" / "SUBJX" / "experiments" / folder
    shutil.copytree(source, target)
    info = json.loads((target / "session.json").read_text())
    info.update(
        label=folder if label is None else label,
        ID=folder if label is None else "X1",
        subject="SUBJX",
    )
    info.update(session_changes)
    (target / "session.json").write_text(json.dumps(info))
    return target


@pytest.mark.slow
def test_hostile_archive_computes_or_fails_alone(workflow, tmp_path):
    archive = workflow.archive
    (archive / "DEMO" / "subjects" / "SUBJX").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    # case 2: a label that climbs out, and a scan ID that is an absolute path
    _clone(archive, "EVIL1", label="../../../../x")
    evil2 = _clone(archive, "EVIL2")
    scan_json = evil2 / "scans" / "1" / "scan.json"
    scan_json.write_text(
        json.dumps(json.loads(scan_json.read_text()) | {"ID": str(outside / "abs")})
    )
    _clone(archive, "Unicode_Séance", label="Séance")  # not a label XNAT accepts
    # case 3: a files/ folder linked to a folder of secrets, an assessors/ folder linked elsewhere
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "ssh_host_key").write_bytes(os.urandom(64))
    secret_digest = hashlib.sha256((secrets_dir / "ssh_host_key").read_bytes()).hexdigest()
    linked = _clone(archive, "LINKFILES")
    files = linked / "scans" / "1" / "resources" / "DICOM" / "files"
    shutil.rmtree(files)
    files.symlink_to(secrets_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (_clone(archive, "LINKASSESS") / "assessors").symlink_to(elsewhere)
    # case 4: a deflated DICOM that would inflate to 600 MB
    bomb_session = _clone(archive, "BOMB")
    dicom = next((bomb_session / "scans" / "1").rglob("*.dcm"))
    deflated_bomb(dicom)
    for stray in dicom.parent.glob("seed.dcm"):
        stray.unlink()
    # case 6: labels XNAT accepts but Snakemake or a file name could not take as they are
    for label in (PERIODIC, LONG, "-rf", "K[x]^1"):
        _clone(archive, label)
    # case 7: a live neighbour's run folder, a dead run's, and a user's file in scratch
    scratch = workflow.root / "scratch"
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        neighbour = claim(scratch / "run-1-aaaaaaaa", owner=Owner.current(sleeper.pid))
        (neighbour / "staged.json").write_text("{}")
        dead_proc = subprocess.Popen(["sleep", "300"])
        dead_owner = Owner.current(dead_proc.pid)
        dead_proc.kill()
        dead_proc.wait()
        dead = claim(scratch / "run-2-bbbbbbbb", owner=dead_owner)
        (scratch / "notes.txt").write_text("not the workflow's")

        config = workflow.config()
        config["limits"] = {"scan_decoded_mb": 64}
        workflow.write_config(config)
        before_outside = _snapshot(tmp_path, skip=workflow.root)
        before_archive = _snapshot(archive)
        proc = workflow.run("--keep-going", check=False, timeout=900)
        log = proc.stdout + proc.stderr

        # Only the write-back into the linked assessors/ failed, and it said why.
        assert log.count("Error in rule") == 1 and "Error in rule writeback" in log, log[-5000:]
        assert "LINKASSESS" in log and "is a link" in log
        assert not any(elsewhere.iterdir())
        # Nothing outside the workflow's folder was written (secrets, /abs scan ID, ../ label).
        assert _snapshot(tmp_path, skip=workflow.root) == before_outside
        assert not (outside / "abs").exists()
        # In the archive, only assessors and history changed.
        after_archive = _snapshot(archive)
        changed = {p for p in after_archive if before_archive.get(p) != after_archive[p]}
        assert changed and all(
            "/assessors/" in p or p.endswith("history.jsonl") for p in changed
        ), changed
        assert set(before_archive) <= set(after_archive)

        index = (workflow.root / "results/discovery/sessions.tsv").read_text()
        assert secret_digest not in index
        assert secret_digest not in "".join(
            p.read_text() for p in (workflow.root / "results").rglob("*.json")
        )

        tidy = pd.read_csv(
            workflow.root / "results/tables/kqi.tsv",
            sep="\t",
            dtype={"scan": str},
            keep_default_na=False,
        )
        status = tidy.groupby("session")["status"].agg(set).to_dict()
        errors = (
            tidy.groupby(["session", "scan"])["error"].agg(lambda e: " ".join(set(e))).to_dict()
        )
        # the good sessions and the odd-but-valid labels computed
        for label in [
            p.name for p in sorted(archive.glob("DEMO/subjects/SUBJ0*/experiments/*"))
        ] + [PERIODIC, LONG, "-rf", "K[x]^1", "LINKASSESS"]:
            assert status[label] == {"ok"}, (label, status.get(label))
        # the hostile ones failed alone, with the reason
        assert (
            status["../../../../x"] == {"failed"}
            and "not a valid XNAT label" in errors[("../../../../x", "1")]
        )
        assert status["Séance"] == {"failed"}
        assert "not a valid XNAT scan ID" in errors[("EVIL2", str(outside / "abs"))]
        assert "link out of the archive" in errors[("LINKFILES", "1")]
        assert "limits/scan_decoded_mb" in errors[("BOMB", "1")]
        for session in ("EVIL2", "LINKFILES", "BOMB"):
            assert tidy[(tidy.session == session) & (tidy.scan == "2")]["status"].eq("ok").all()
        html = (workflow.root / "results/report/index.html").read_text()
        assert "not a valid XNAT label" in html

        # valid labels were written back (the long one under an encoded folder name)
        experiments = archive / "DEMO" / "subjects" / "SUBJX" / "experiments"
        for label in (PERIODIC, LONG, "-rf", "K[x]^1"):
            records = [
                json.loads(p.read_text())["label"]
                for p in (experiments / label / "assessors").glob("*/assessor.json")
            ]
            assert sorted(records) == [
                f"{label}_qmroct_layers_v1-0-0",
                f"{label}_qmroct_noise_v1-0-0",
            ]
        receipt = next((workflow.root / "results/writeback/DEMO").glob("x.*.json"))
        assert "not a valid XNAT label" in json.loads(receipt.read_text())["skipped"]

        # scratch: our run folder and the dead run's are gone; the neighbour's and the user's
        # file stay
        assert not dead.exists()
        assert (neighbour / "staged.json").is_file() and (scratch / "notes.txt").is_file()
        assert sorted(p.name for p in scratch.iterdir()) == [
            ".qmroct-scratch-root",
            "notes.txt",
            "run-1-aaaaaaaa",
        ]
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_a_discovery_only_run_leaves_the_scratch_folder_alone(workflow):
    """Case 1's aftermath: the cleanup of even a discovery-only run deleted scratch_dir whole."""
    scratch = workflow.root / "scratch"
    scratch.mkdir()
    (scratch / "keep.txt").write_text("data")
    workflow.run("results/discovery/sessions.tsv")
    assert (scratch / "keep.txt").read_text() == "data"
    assert [p.name for p in scratch.iterdir()] == ["keep.txt"]


def test_labels_follow_xnats_rule():
    for ok in ("SUBJ001_V1", "-rf", PERIODIC, LONG, "a[b]^`c\\"):
        check_label("session label", ok)
    for bad in ("", "../x", "a/b", "a.b", "Séance", "a b", "x\0", "/etc"):
        with pytest.raises(UnsafePath):
            check_label("session label", bad)


def test_path_segments_are_safe_stable_and_distinct():
    assert path_segment("SUBJ001_V1") == "SUBJ001_V1"
    names = [
        PERIODIC,
        LONG,
        "../../x",
        "/etc/passwd",
        "",
        ".",
        "..",
        "K[x]^1",
        "é" * 300,
        "a" * 101,
    ]
    segments = [path_segment(n) for n in names]
    assert len(set(segments)) == len(names)
    for name, segment in zip(names, segments, strict=True):
        assert segment == path_segment(name)
        assert "/" not in segment and segment not in (".", "..") and len(segment) <= 100
        assert not is_periodic(segment) and "." in segment  # encoded, never equal to a plain label


def test_relative_names_and_confinement(tmp_path):
    check_relative("file", "DICOM/a.dcm")
    for bad in ("", "/abs", "../x", "a/../../b", "a//b", "x\n", "./a"):
        with pytest.raises(UnsafePath):
            check_relative("file", bad)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "in").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert (
        confined(tmp_path / "root", tmp_path / "root" / "in")
        == (tmp_path / "root" / "in").resolve()
    )
    with pytest.raises(UnsafePath):
        confined(tmp_path / "root", tmp_path / "root" / "link" / "x")


def test_an_index_from_before_path_keys_still_reads(tmp_path):
    from qmroct.discovery import read_session_index

    index = tmp_path / "sessions.tsv"
    index.write_text(
        "project\tsubject\tsession\tscan\nDEMO\tS1\tSUBJ001_V1\t1\nDEMO\tS1\t" + "A" * 30 + "\t1\n"
    )
    from qmroct.paths import path_segment

    periodic = path_segment("A" * 30)
    assert periodic != "A" * 30
    assert read_session_index(index) == (("DEMO", "SUBJ001_V1"), ("DEMO", periodic))


def test_discovery_vets_every_backend_and_marks_duplicate_labels(tmp_path, small_demo):
    session = Session("DEMO", "S1", "../up", id="E1")
    assert "not a valid XNAT label" in vet_session(session).problem
    archive = tmp_path / "archive"
    shutil.copytree(small_demo / "archive", archive)
    first = sorted(archive.glob("DEMO/subjects/*/experiments/*"))[0]
    copy = archive / "DEMO" / "subjects" / "SUBJX" / "experiments" / "DUP"
    shutil.copytree(first, copy)
    config = {"archive": {"backend": "directory", "path": str(archive)}, "projects": ["DEMO"]}
    sessions = discover(config, tmp_path / "results", tmp_path / "results" / "sessions.tsv")
    duplicated = [s for s in sessions if s.label == first.name]
    assert len(duplicated) == 2 and all("used by 2 sessions" in s.problem for s in duplicated)
    assert len({s.path_key for s in sessions}) == len(sessions)
    index = pd.read_csv(tmp_path / "results" / "sessions.tsv", sep="\t", keep_default_na=False)
    assert set(index[index.session == first.name]["problem"]) == {duplicated[0].problem}


def test_directory_archive_refuses_links_and_unreadable_metadata(tmp_path, small_demo):
    archive = tmp_path / "archive"
    shutil.copytree(small_demo / "archive", archive)
    sessions_dirs = sorted(archive.glob("DEMO/subjects/*/experiments/*"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "session.json").write_text("{}")
    shutil.rmtree(sessions_dirs[0])
    sessions_dirs[0].symlink_to(tmp_path / "other")  # a whole session linked out
    (sessions_dirs[1] / "scans" / "2" / "scan.json").write_text("{not json")
    found = {s.label: s for s in DirectoryArchive(archive).discover(["DEMO"])}
    assert "link out of the archive" in found[sessions_dirs[0].name].problem
    scan = next(s for s in found[sessions_dirs[1].name].scans if s.id == "2")
    assert "unreadable metadata" in scan.problem and not scan.files
    assert not found[sessions_dirs[2].name].problem


def _interrupted_writer(archive: Path, fifo: Path) -> subprocess.Popen:
    """A write-back that blocks while writing its document (read from a FIFO nobody
    writes): killed, it leaves its working folder behind as a crash would."""
    code = f"""
import sys
from pathlib import Path
from qmroct.archive.directory import DirectoryArchive
archive = DirectoryArchive({str(archive)!r})
session = archive.discover(["DEMO"])[0]
class Doc:
    label = session.label + "_qmroct_noise"
    digest = "sha256:1"
    files = {{}}
    provenance = {{}}
    algorithm, version, status = "noise", "1", "ok"
    def to_xml(self):
        return Path({str(fifo)!r}).read_bytes()
archive.write_assessment(session, Doc())
"""
    return subprocess.Popen([sys.executable, "-c", code])


def test_interrupted_write_back_is_cleaned_by_the_next(tmp_path, small_demo):
    archive = tmp_path / "archive"
    shutil.copytree(small_demo / "archive", archive)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = _interrupted_writer(archive, fifo)
    first = sorted(archive.glob("DEMO/subjects/*/experiments/*"))[0]
    assessors = first / "assessors"
    deadline = time.monotonic() + 60
    while not (
        assessors.is_dir()
        and any(p.name.startswith(".qmroct-writing.") for p in assessors.iterdir())
    ):
        assert writer.poll() is None and time.monotonic() < deadline, (
            "the writer never started writing"
        )
        time.sleep(0.05)
    live = _interrupted_writer(archive, fifo)  # a second, live writer of the same session
    while len([p for p in assessors.iterdir() if p.name.startswith(".qmroct-writing.")]) < 2:
        assert live.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    (assessors / ".someone-elses").mkdir()
    legacy = assessors / f".{first.name}_qmroct_layers.ab12_x9z"  # what earlier versions left
    legacy.mkdir()

    # the next write-back into the session cleans up what the killed one left
    archive_api = DirectoryArchive(archive)
    session = next(s for s in archive_api.discover(["DEMO"]) if s.label == first.name)
    outcome = archive_api.write_assessment(session, _Doc(f"{first.name}_qmroct_layers"))
    assert outcome.action == "created"
    left = sorted(p.name for p in assessors.iterdir())
    assert not legacy.exists() and ".someone-elses" in left
    assert len([n for n in left if n.startswith(".qmroct-writing.")]) == 1  # the live writer's
    assert f"{first.name}_qmroct_layers" in left
    live.kill()
    live.wait()


class _Doc:
    """The parts of an Assessment the directory archive writes."""

    digest, provenance, algorithm, version, status = "sha256:1", {}, "layers", "1", "ok"
    files: dict = {}

    def __init__(self, label: str) -> None:
        self.label = label

    def to_xml(self) -> bytes:
        return b"<x/>"


def test_qmroct_discover_lists_problem_sessions_with_their_reasons(tmp_path, small_demo):
    archive = tmp_path / "archive"
    shutil.copytree(small_demo / "archive", archive)
    first = sorted(archive.glob("DEMO/subjects/*/experiments/*"))[0]
    shutil.copytree(first, archive / "DEMO" / "subjects" / "SUBJX" / "experiments" / "DUP")
    (
        sorted(archive.glob("DEMO/subjects/*/experiments/*"))[1] / "scans" / "2" / "scan.json"
    ).write_text("{not json")
    config = tmp_path / "config.yaml"
    import yaml

    settings = yaml.safe_load((REPO / "config.yaml").read_text())
    settings["archive"] = {"backend": "directory", "path": str(archive)}
    config.write_text(yaml.safe_dump(settings))
    out = subprocess.run(
        [sys.executable, "-m", "qmroct.cli", "discover", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    duplicated = [r for r in rows if r["session"] == f"DEMO/{first.name}"]
    assert len(duplicated) == 2 and all("used by 2 sessions" in r["problem"] for r in duplicated)
    broken = [r for r in rows if "scan_problems" in r]
    assert len(broken) == 1 and "unreadable metadata" in broken[0]["scan_problems"]["2"]
    assert sum("problem" not in r and "scan_problems" not in r for r in rows) == len(rows) - 3
