"""``qmroct watch`` with the real snakemake on a small directory archive.

Every wait is on a condition (a state file, a marker, a process exit), never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qmroct.runlock import pid_exists
from tests.support import wait_for

pytestmark = pytest.mark.slow

QMROCT = [sys.executable, "-m", "qmroct.cli"]
RUN_ARGS = ("--cores", "2", "--nocolor")
SECRET = "s3cret-pass-for-the-test"


def _env(**extra: str) -> dict[str, str]:
    return dict(
        os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", **extra
    )


def qmroct(wf, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*QMROCT, *args],
        cwd=wf.root,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(**env),
    )


def watch_once(wf, *options: str, args=RUN_ARGS, **env: str) -> subprocess.CompletedProcess:
    proc = qmroct(wf, "watch", "--once", *options, "--", *args, **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def start_watcher(wf, *options: str, args=RUN_ARGS, **env: str) -> subprocess.Popen:
    out = open(wf.root / "watcher.out", "a")
    return subprocess.Popen(
        [*QMROCT, "watch", *options, "--", *args],
        cwd=wf.root,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=_env(**env),
    )


def state(wf) -> dict:
    try:
        return json.loads((wf.root / ".qmroct/watch/state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def runs(wf) -> list[str]:
    base = wf.root / "results/runs"
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


def summary(wf, run_id: str) -> dict:
    return json.loads((wf.root / "results/runs" / run_id / "manifest.json").read_text())["summary"]


def add_session(wf, tmp_path: Path, start: int) -> str:
    from qmroct.synth.demo import build_demo_archive

    extra = tmp_path / f"extra{start}"
    build_demo_archive(extra, sessions=1, seed=start, shape=(3, 128, 64), start=start)
    new = next(extra.glob("archive/DEMO/subjects/*/experiments/*"))
    target = wf.archive / new.relative_to(extra / "archive")
    shutil.copytree(new, target)
    shutil.copy(new.parent.parent / "subject.json", target.parent.parent / "subject.json")
    return f"DEMO/{new.name}"


def one_algorithm(wf, **extra) -> dict:
    config = wf.config()
    config["algorithms"] = {"noise": {}}
    config["studies"] = {}
    config.update(extra)
    wf.write_config(config)
    return config


RECORDER = """\
import os, sys
with open({marker!r}, "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\\n")
os.execv(sys.executable, [sys.executable, "-m", "snakemake", *sys.argv[1:]])
"""


def test_one_run_per_change_history_notify(workflow, tmp_path):
    """A run by hand is recorded; the watcher's first check runs once; no change starts no
    snakemake (not even with the OpenStack profile: nothing boots); a new session makes
    exactly one run that computes only it; runs, status and the history page show it; the
    notify command receives each summary, without the credentials in the environment."""
    notify = wf_notify_script(workflow.root)
    one_algorithm(workflow, notify={"command": [sys.executable, str(notify)]})

    # 1. A run by hand: recorded with trigger manual, notified by the workflow's hook.
    proc = workflow.run()
    assert "Nothing to be done" not in proc.stdout + proc.stderr
    [manual] = runs(workflow)
    s = summary(workflow, manual)
    assert (s["trigger"], s["outcome"], s["exit_status"]) == ("manual", "success", 0)
    assert s["sessions"]["new"] == 3 and s["jobs"]["compute_noise"] == 3
    assert [n["run_id"] for n in notified(workflow.root)] == [manual]

    # 2. The watcher's first check runs the workflow once (there is nothing left to compute).
    watch_once(workflow, XNAT_PASS=SECRET)
    assert len(runs(workflow)) == 2
    first = summary(workflow, runs(workflow)[-1])
    assert first["trigger"] == "first check" and first["outcome"] == "success"
    assert "compute_noise" not in first["jobs"]

    # 3. No change: no snakemake at all, with the OpenStack profile too (so nothing boots).
    marker = workflow.root / "snakemake-started.txt"
    recorder = workflow.root / "recorder.py"
    recorder.write_text(RECORDER.format(marker=str(marker)))
    proc = watch_once(
        workflow,
        "--snakemake",
        f"{sys.executable} {recorder}",
        args=("--profile", "openstack"),
        XNAT_PASS=SECRET,
    )
    assert "no change" in proc.stderr
    assert not marker.exists(), "an unchanged archive must not start snakemake"
    assert len(runs(workflow)) == 2

    # 4. A new session: exactly one run, computing only it (the same recorder now sees a start).
    #    One of its scans is truncated: a failure, by reason, in the summary and on its page.
    key = add_session(workflow, tmp_path, start=7)
    broken = sorted(
        (workflow.archive / "DEMO/subjects").glob(
            f"*/experiments/{key.split('/')[1]}/scans/1/resources/*/files/*"
        )
    )[0]
    broken.write_bytes(broken.read_bytes()[:3000])
    watch_once(workflow, "--snakemake", f"{sys.executable} {recorder}", XNAT_PASS=SECRET)
    assert marker.read_text().count("\n") == 1
    assert len(runs(workflow)) == 3
    run_id = runs(workflow)[-1]
    s = summary(workflow, run_id)
    assert (s["trigger"], s["outcome"], s["exit_status"]) == ("archive changed", "success", 0)
    assert s["sessions"]["new"] == 1 and s["sessions"]["new_sessions"] == [key]
    assert s["sessions"]["unchanged"] == 3 and s["sessions"]["changed"] == 0
    assert s["jobs"]["compute_noise"] == 1 and s["jobs"]["discover"] == 1
    assert s["failures"] == {"scan not readable": 1}, s["failures"]
    [failure] = s["failure_list"]
    assert (
        f"{failure['project']}/{failure['session']}",
        failure["scan"],
        failure["algorithm"],
    ) == (key, "1", "noise")
    assert (workflow.root / "results/runs" / run_id / "snakemake.log").is_file()
    project, label = key.split("/")
    assert (workflow.root / "results/kqi" / project / label / "noise.json").is_file()
    assert workflow.planned_jobs() == {}

    # The notify command got the watcher's summaries, and never the password.
    got = notified(workflow.root)
    assert [n["run_id"] for n in got][-1] == run_id and got[-1]["trigger"] == "archive changed"
    assert got[-1]["sessions"]["new"] == 1
    assert SECRET not in (workflow.root / "notified.jsonl").read_text()
    assert all("XNAT_PASS" not in env for env in notified_env(workflow.root))

    # qmroct runs and status; the report links the history page, which links each run's failures.
    table = qmroct(workflow, "runs").stdout.splitlines()
    assert len(table) == 4 and table[-1].startswith(run_id) and "archive changed" in table[-1]
    status = qmroct(workflow, "status", "--max-age", "3600")
    assert status.returncode == 1, status.stdout  # the last run recorded a failure
    assert (
        run_id in status.stdout
        and "1 new" in status.stdout
        and "scan not readable 1" in status.stdout
    )
    assert qmroct(workflow, "status").returncode == 2  # no watcher running
    history = (workflow.root / "results/report/runs.html").read_text()
    assert f"../runs/{run_id}/failures.html" in history and manual in history
    assert label in (workflow.root / "results/runs" / run_id / "failures.html").read_text()
    assert "runs.html" in (workflow.root / "results/report/index.html").read_text()


def wf_notify_script(root: Path) -> Path:
    script = root / "notify.py"
    script.write_text(
        textwrap.dedent(f"""\
        import json, os, sys
        summary = json.load(sys.stdin)
        with open({str(root / "notified.jsonl")!r}, "a") as fh:
            fh.write(json.dumps({{"summary": summary, "env": dict(os.environ)}}) + "\\n")
    """)
    )
    return script


def _notified(root: Path) -> list[dict]:
    path = root / "notified.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def notified(root: Path) -> list[dict]:
    return [n["summary"] for n in _notified(root)]


def notified_env(root: Path) -> list[dict]:
    return [n["env"] for n in _notified(root)]


def test_unreachable_archive_backs_off_and_recovers(workflow):
    one_algorithm(workflow)
    away = workflow.archive.with_name("archive-away")
    workflow.archive.rename(away)
    watcher = start_watcher(workflow, "--interval", "0.3", "--max-backoff", "1.2")
    try:
        wait_for(lambda: state(workflow).get("archive_failures", 0) >= 5, 60, "five failed polls")
        assert watcher.poll() is None, "the watcher must survive an unreachable archive"
        status = qmroct(workflow, "status")
        assert (
            status.returncode == 2
            and "UNREACHABLE" in status.stdout
            and "does not exist" in status.stdout
        )
        delays = [
            float(line.rsplit("next try in ", 1)[1].split()[0])
            for line in (workflow.root / "watcher.out").read_text().splitlines()
            if "next try in" in line
        ]
        assert delays[:4] == [0.3, 0.6, 1.2, 1.2], delays
        assert runs(workflow) == []

        away.rename(workflow.archive)
        wait_for(lambda: state(workflow).get("last_run"), 300, "a run after the archive came back")
        s = summary(workflow, state(workflow)["last_run"])
        assert s["outcome"] == "success" and s["sessions"]["new"] == 3
        assert state(workflow)["archive"] == {"reachable": True}
        status = qmroct(workflow, "status")
        assert status.returncode == 0, status.stdout
        assert "watcher: running" in status.stdout
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=120) == 0
    assert not (workflow.root / ".qmroct/watch/lock").exists()
    assert len(runs(workflow)) == 1


def test_second_watcher_starts_no_run_and_a_crashed_one_is_taken_over(workflow, tmp_path):
    one_algorithm(workflow)
    first = start_watcher(workflow, "--interval", "3600")
    try:
        wait_for(lambda: state(workflow).get("last_run"), 300, "the first watcher's run")
        add_session(workflow, tmp_path, start=7)
        second = qmroct(workflow, "watch", "--once", "--", *RUN_ARGS)
        assert second.returncode == 0
        assert "another watcher" in second.stderr and f"pid {first.pid}" in second.stderr
        assert len(runs(workflow)) == 1, "a second watcher must not start a run"
        assert state(workflow)["pid"] == first.pid
    finally:
        first.kill()  # a crash: no clean-up, the lock file stays behind
        first.wait(timeout=60)
    lock = json.loads((workflow.root / ".qmroct/watch/lock").read_text())
    assert lock["pid"] == first.pid and not pid_exists(first.pid)

    proc = watch_once(workflow)
    assert "took over the stale lock" in proc.stderr
    assert len(runs(workflow)) == 2
    s = summary(workflow, runs(workflow)[-1])
    assert (
        s["outcome"] == "success" and s["sessions"]["new"] == 1 and s["jobs"]["compute_noise"] == 1
    )
    assert not (workflow.root / ".qmroct/watch/lock").exists()


GATE = """\
import time
from pathlib import Path


def compute(volume, meta, params, workdir):
    gate = Path(params["gate"])
    Path(str(gate) + ".reached").touch()
    while not gate.exists():  # blocks until the test opens the gate (or the run is interrupted)
        time.sleep(0.05)
    return {"kqis": {"mean_intensity": {"value": float(volume.mean()), "unit": "intensity"}},
            "files": [], "notes": []}
"""

GATE_MANIFEST = """\
name: gate
version: "0.1.0"
runtime: python
entry: gate.py
function: compute
description: Waits for a file, then measures the mean intensity (a test algorithm).
params:
  gate: ""
kqis:
  - name: mean_intensity
    unit: intensity
    higher_is_better: null
    valid_range: null
    description: Mean intensity of the volume.
thresholds: {}
resources: {threads: 1, mem_mb: 500, runtime_s: 1.0}
"""


def add_gate(workflow) -> Path:
    """An algorithm that blocks until the returned path exists: a run that is surely mid-way."""
    gate = workflow.root / "gate-open"
    folder = workflow.root / "algorithms/gate"
    folder.mkdir()
    (folder / "algorithm.yaml").write_text(GATE_MANIFEST)
    (folder / "gate.py").write_text(GATE)
    config = one_algorithm(workflow)
    config["algorithms"]["gate"] = {"params": {"gate": str(gate)}}
    workflow.write_config(config)
    return gate


def assert_all_results_ok(workflow) -> None:
    for algorithm in ("noise", "gate"):
        results = sorted(workflow.root.glob(f"results/kqi/DEMO/*/{algorithm}.json"))
        assert len(results) == 3
        assert all(json.loads(p.read_text())["status"] == "ok" for p in results)
    assert workflow.planned_jobs() == {}


def test_sigterm_during_a_run_then_the_next_run_completes(workflow):
    gate = add_gate(workflow)
    watcher = start_watcher(workflow, "--interval", "3600")
    try:
        wait_for(lambda: Path(str(gate) + ".reached").exists(), 300, "a gate job to be running")
        run_pid = state(workflow)["run"]["pid"]
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=180) == 0
    assert not pid_exists(run_pid), "snakemake must have ended"
    [interrupted] = runs(workflow)
    s = summary(workflow, interrupted)
    assert s["outcome"] == "interrupted" and s["exit_status"] != 0
    assert not (workflow.root / ".qmroct/watch/lock").exists()
    locks = workflow.root / ".snakemake/locks"
    assert not locks.exists() or not any(locks.iterdir()), "snakemake's lock must be released"
    # Nothing half-done is presented as a result: no gate result exists, none recorded as failed.
    assert not list(workflow.root.glob("results/kqi/DEMO/*/gate.json"))

    gate.touch()
    watch_once(workflow)
    assert len(runs(workflow)) == 2
    s = summary(workflow, runs(workflow)[-1])
    assert s["outcome"] == "success" and s["jobs"]["compute_gate"] == 3
    assert_all_results_ok(workflow)


def test_watcher_and_run_killed_hard_then_recovered(workflow):
    """kill -9 of the watcher: its snakemake goes on and keeps the folder locked; then that
    dies too (as in a power cut): the next watcher takes over, unlocks snakemake's lock,
    marks the dead run killed and completes the work."""
    gate = add_gate(workflow)
    watcher = start_watcher(workflow, "--interval", "3600")
    wait_for(lambda: Path(str(gate) + ".reached").exists(), 300, "a gate job to be running")
    dead_run = state(workflow)["run"]
    watcher.kill()
    watcher.wait(timeout=60)
    assert pid_exists(dead_run["pid"]), "snakemake runs on in its own session"

    proc = qmroct(workflow, "watch", "--once", "--", *RUN_ARGS)
    assert proc.returncode == 0 and "another watcher or its run" in proc.stderr
    assert f"its run pid {dead_run['pid']}" in proc.stderr

    os.killpg(dead_run["pid"], signal.SIGKILL)
    wait_for(lambda: not pid_exists(dead_run["pid"]), 60, "the orphaned snakemake to die")
    assert any((workflow.root / ".snakemake/locks").iterdir()), "a killed snakemake leaves its lock"

    gate.touch()
    proc = watch_once(workflow)
    assert "took over the stale lock" in proc.stderr and "snakemake --unlock" in proc.stderr
    killed, finished = runs(workflow)
    assert summary(workflow, killed)["outcome"] == "killed"
    s = summary(workflow, finished)
    assert s["outcome"] == "success" and s["trigger"] == "first check"
    assert_all_results_ok(workflow)


def test_ctrl_c_on_a_run_by_hand_is_recorded_as_interrupted(workflow):
    """No watcher: a person's Ctrl-C (SIGINT to the foreground process group)."""
    gate = add_gate(workflow)
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", *RUN_ARGS],
        cwd=workflow.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        start_new_session=True,
    )
    try:
        wait_for(lambda: Path(str(gate) + ".reached").exists(), 300, "a gate job to be running")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=180) != 0
    [run_id] = runs(workflow)
    s = summary(workflow, run_id)
    assert (s["trigger"], s["outcome"], s["exit_status"]) == ("manual", "interrupted", 1)
