"""Issue 9 cases 1 and 7: scratch space the workflow may delete, and only that.

Case 1: a scratch_dir of `.`, `/`, $HOME, an ancestor of the working directory,
or a folder inside or above the archive used to pass check-config, and the
end-of-run cleanup deleted it whole. Case 7: a second run in the same folder
wiped the first run's staging when it ended.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qmroct.config import ConfigError, check_config, load_settings
from qmroct.scratch import (
    MARKER,
    Owner,
    ScratchError,
    check_scratch_dir,
    claim,
    read_owner,
    release,
    run_folder,
)

from tests.support import REPO


def _config(tmp_path: Path, scratch: str) -> Path:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["archive"] = {"backend": "directory", "path": "demo/archive"}
    config["algorithm_paths"] = [str(REPO / "algorithms")]
    config["scratch_dir"] = scratch
    path = tmp_path / "wf" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "demo" / "archive").mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "scratch, reason",
    [
        (".", "working directory"),
        ("..", "working directory"),
        ("/", "file system root"),
        ("~", "home"),
        ("demo", "archive"),  # above the archive
        ("demo/archive", "archive"),
        ("demo/archive/DEMO/tmp", "archive"),  # inside it
        ("scratch/../..", "working directory"),
    ],
)
def test_check_config_refuses_scratch_that_cleanup_could_destroy(tmp_path, scratch, reason):
    path = _config(tmp_path, scratch)
    with pytest.raises(ConfigError, match=reason):
        load_settings(path)
    # the command line says the same and fails
    proc = subprocess.run(
        [sys.executable, "-m", "qmroct.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and reason in proc.stderr and "scratch_dir" in proc.stderr


def test_scratch_that_is_a_link_to_the_working_directory_is_refused(tmp_path):
    path = _config(tmp_path, "scratch")
    (path.parent / "scratch").symlink_to(path.parent)
    with pytest.raises(ConfigError, match="working directory"):
        load_settings(path)


def test_a_plain_subfolder_and_an_outside_folder_are_accepted(tmp_path):
    for scratch in ("scratch", "tmp/qmroct", str(tmp_path / "elsewhere")):
        assert load_settings(_config(tmp_path, scratch)).raw["scratch_dir"] == scratch


def test_the_snakefile_checks_with_the_working_directory(tmp_path, monkeypatch):
    config = yaml.safe_load(_config(tmp_path, "scratch").read_text())
    from qmroct.config import validate_schema

    validate_schema(config)
    monkeypatch.chdir(tmp_path / "wf")
    check_config(config, REPO)
    config["scratch_dir"] = str(REPO)  # the workflow's own folder, when snakemake runs elsewhere
    with pytest.raises(ConfigError, match="working directory"):
        check_config(config, REPO)


def _dead_owner() -> Owner:
    proc = subprocess.Popen(["sleep", "30"])
    owner = Owner.current(proc.pid)
    proc.kill()
    proc.wait()
    assert owner.started and owner.alive() is False
    return owner


@pytest.fixture
def live_owner():
    proc = subprocess.Popen(["sleep", "120"])
    yield Owner.current(proc.pid)
    proc.kill()
    proc.wait()


def test_release_deletes_only_its_own_and_dead_runs(tmp_path, live_owner):
    root = tmp_path / "scratch"
    mine = claim(run_folder(root))
    (mine / "DEMO").mkdir()
    neighbour = claim(root / "run-1-aaaaaaaa", owner=live_owner)
    (neighbour / "staged.json").write_text("{}")
    dead = claim(root / "run-2-bbbbbbbb", owner=_dead_owner())
    other_host = claim(root / "run-3-cccccccc", owner=Owner("another-host", 1, "1"))
    unmarked = root / "run-4-dddddddd"
    unmarked.mkdir()
    user_file = root / "notes.txt"
    user_file.write_text("mine, not the workflow's")

    removed = release(root, mine)

    assert set(removed) == {mine, dead}
    assert (neighbour / "staged.json").is_file() and read_owner(neighbour) == live_owner
    assert other_host.is_dir() and unmarked.is_dir() and user_file.read_text()
    # the parent goes only when a run created it and it is empty
    for folder in (neighbour, other_host):
        (folder / MARKER).unlink()
        folder.rename(tmp_path / folder.name)
    unmarked.rmdir()
    user_file.unlink()
    release(root, mine)
    assert not root.exists()


def test_claim_refuses_a_folder_that_is_not_a_run_folder(tmp_path):
    existing = tmp_path / "scratch" / "run-5-eeeeeeee"
    existing.mkdir(parents=True)
    with pytest.raises(ScratchError, match="not a qmroct run folder"):
        claim(existing)
    link = tmp_path / "scratch" / "run-6-ffffffff"
    link.symlink_to(tmp_path)
    with pytest.raises(ScratchError):
        claim(link)
    assert release(tmp_path / "scratch", link) == [] and tmp_path.is_dir()


def test_run_folder_is_private(tmp_path):
    run = claim(run_folder(tmp_path / "scratch"))
    assert (run.stat().st_mode & 0o777) == 0o700
    assert read_owner(run) == Owner.current()


def test_check_scratch_dir_resolves_relative_to_the_working_directory(tmp_path):
    (tmp_path / "a").mkdir()
    assert check_scratch_dir("s", tmp_path / "a") == (tmp_path / "a" / "s").resolve()
    with pytest.raises(ScratchError):
        check_scratch_dir(str(tmp_path), tmp_path / "a")
    home = Path.home()
    if home != Path("/"):
        with pytest.raises(ScratchError, match="home"):
            check_scratch_dir(str(home), tmp_path)


@pytest.mark.slow
def test_snakemake_refuses_a_dangerous_scratch_dir_before_any_job(workflow):
    config = workflow.config()
    config["scratch_dir"] = "."
    workflow.write_config(config)
    (workflow.root / "precious.txt").write_text("keep")
    proc = workflow.run(check=False)
    assert proc.returncode != 0 and "scratch_dir" in proc.stdout + proc.stderr
    assert (workflow.root / "precious.txt").read_text() == "keep" and not (
        workflow.root / "results"
    ).exists()


def test_a_scratch_dir_that_existed_before_is_never_removed(tmp_path):
    root = tmp_path / "shared"
    root.mkdir()  # a folder the user made (or /tmp): empty after the run, still not ours
    mine = claim(run_folder(root))
    assert release(root, mine) == [mine]
    assert root.is_dir() and not any(root.iterdir())


@pytest.mark.slow
def test_two_runs_in_one_folder_keep_each_others_staging(workflow, tmp_path):
    """Case 7 with two real snakemake runs: run A is held inside its first algorithm call
    (its session staged), run B computes another session and ends; A must then finish its
    second scan from its staging. Before, B's end wiped scratch/ and A's scan 2 failed."""
    gate = tmp_path / "gate"
    gate.mkdir()
    code = workflow.root / "algorithms" / "noise" / "noise.py"
    held = (
        "def compute(volume, meta, params, workdir):\n"
        "    import pathlib, time\n"
        f"    gate = pathlib.Path({str(gate)!r})\n"
        "    if not (gate / 'entered').exists():  # only the first call anywhere waits\n"
        "        (gate / 'entered').touch()\n"
        "        while not (gate / 'open').exists():\n"
        "            time.sleep(0.05)\n"
        "    return _compute(volume, meta, params, workdir)\n"
    )
    code.write_text(code.read_text().replace("def compute(", "def _compute(") + "\n\n" + held)
    config = workflow.config()
    config["algorithms"] = {"noise": {}}
    config["studies"] = {}
    config["limits"] = {"algorithm_min_timeout_s": 900}
    workflow.write_config(config)
    workflow.run("results/discovery/sessions.tsv")
    first, second = sorted(p.name for p in workflow.archive.glob("DEMO/subjects/*/experiments/*"))[
        :2
    ]

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    run_a = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "1",
            "--nocolor",
            f"results/kqi/DEMO/{first}/noise.json",
        ],
        cwd=workflow.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (gate / "entered").exists():
            assert run_a.poll() is None, run_a.stdout.read()
            assert time.monotonic() < deadline, "run A never reached its algorithm"
            time.sleep(0.05)
        a_folders = list((workflow.root / "scratch").glob(f"run-{run_a.pid}-*"))
        assert len(a_folders) == 1 and list(a_folders[0].rglob("staged.json"))

        workflow.run(f"results/kqi/DEMO/{second}/noise.json")  # run B, start to end

        assert a_folders[0].is_dir() and list(a_folders[0].rglob("volume.npy"))
        (gate / "open").touch()
        out, _ = run_a.communicate(timeout=600)
    finally:
        (gate / "open").touch()
        if run_a.poll() is None:
            run_a.kill()
            run_a.wait()
    assert run_a.returncode == 0, out[-4000:]
    result = json.loads((workflow.root / f"results/kqi/DEMO/{first}/noise.json").read_text())
    assert [s["status"] for s in result["scans"]] == ["ok", "ok"], result["scans"]
    assert not (workflow.root / "scratch").exists()


def _claim_after(barrier, run_dir, errors):
    barrier.wait()
    try:
        claim(run_dir)
    except ScratchError as exc:
        errors.put(str(exc))


def test_jobs_claiming_one_run_folder_at_once_all_get_it(tmp_path):
    # a remote group job: its compute jobs claim the run folder at the same moment; a
    # folder seen between its creation and its marker was refused as foreign
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    for _attempt in range(100):  # the race showed in ~1 of 50 attempts
        run_dir = run_folder(tmp_path / "scratch")
        barrier = ctx.Barrier(6)
        procs = [
            ctx.Process(target=_claim_after, args=(barrier, run_dir, errors)) for _ in range(6)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert all(p.exitcode == 0 for p in procs)
        assert errors.empty(), errors.get()
        assert read_owner(run_dir) is not None
    assert not [p for p in (tmp_path / "scratch").iterdir() if p.name.endswith(".tmp")]


def test_sessions_released_at_once_prune_their_project_folder_quietly(tmp_path):
    from qmroct.staging import _prune_empty

    root = tmp_path / "scratch" / "run-1-aaaaaaaa"
    (root / "DEMO").mkdir(parents=True)
    _prune_empty(root / "DEMO" / "gone-already", stop=root)  # removed by the other job
    assert not (root / "DEMO").exists() and root.is_dir()
    (root / "DEMO" / "OTHER").mkdir(parents=True)
    _prune_empty(root / "DEMO", stop=root)  # another session still staged: kept
    assert (root / "DEMO" / "OTHER").is_dir()
