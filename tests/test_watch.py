"""The watcher's parts without a workflow run: lock, backoff, run records, status, notify."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from qmroct import runhistory
from qmroct.runlock import LockBusy, LockInfo, ProcessId, RunLock, process_start_ticks
from qmroct.status import collect, render
from qmroct.watch import LOCK_FILE, STATE_FILE, backoff_delay


def _write_lock(path: Path, **fields) -> None:
    me = ProcessId.of(os.getpid())
    info = LockInfo(
        pid=me.pid,
        start_ticks=me.start_ticks,
        boot_id=me.boot_id,
        host=socket.gethostname(),
        since="2026-01-01T00:00:00+0000",
    )
    data = asdict(info) | fields
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def sleeper():
    """A live process that is not us (a holder or an orphaned run)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    yield proc
    proc.stdin.close()
    proc.wait(timeout=30)


def test_lock_held_by_a_live_process_is_busy(tmp_path, sleeper):
    path = tmp_path / "lock"
    _write_lock(path, pid=sleeper.pid, start_ticks=process_start_ticks(sleeper.pid))
    with pytest.raises(LockBusy, match=f"pid {sleeper.pid}"):
        RunLock(path).acquire()
    assert json.loads(path.read_text())["pid"] == sleeper.pid  # untouched


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    ticks = process_start_ticks(dead.pid)
    dead.wait()
    path = tmp_path / "lock"
    _write_lock(path, pid=dead.pid, start_ticks=ticks)
    lock = RunLock(path).acquire()
    assert lock.took_over is not None and lock.took_over.pid == dead.pid
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()


def test_reused_pid_with_another_start_time_is_stale(tmp_path, sleeper):
    """The PID is alive, but it is another process than the one that took the lock."""
    path = tmp_path / "lock"
    _write_lock(path, pid=sleeper.pid, start_ticks=process_start_ticks(sleeper.pid) - 1)
    lock = RunLock(path).acquire()
    assert lock.took_over.pid == sleeper.pid
    lock.release()


def test_orphaned_run_keeps_the_lock_until_it_ends(tmp_path, sleeper):
    """A watcher killed while its snakemake went on: nobody may start another run."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    ticks = process_start_ticks(dead.pid)
    dead.wait()
    path = tmp_path / "lock"
    run = {"pid": sleeper.pid, "start_ticks": process_start_ticks(sleeper.pid), "run_id": "r1"}
    _write_lock(path, pid=dead.pid, start_ticks=ticks, run=run)
    with pytest.raises(LockBusy, match=f"its run pid {sleeper.pid}"):
        RunLock(path).acquire()
    sleeper.stdin.close()
    sleeper.wait(timeout=30)
    lock = RunLock(path).acquire()
    assert lock.took_over.run["run_id"] == "r1"  # the watcher then unlocks snakemake's own lock
    lock.release()


def test_lock_of_another_host_is_not_taken(tmp_path):
    path = tmp_path / "lock"
    _write_lock(path, pid=1, host="some-other-head")
    with pytest.raises(LockBusy, match="some-other-head"):
        RunLock(path).acquire()


def test_torn_lock_file_is_stale(tmp_path):
    path = tmp_path / "lock"
    path.write_text('{"pid": 12')
    lock = RunLock(path).acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_backoff_doubles_and_is_capped():
    assert [backoff_delay(10, k, 60) for k in range(6)] == [10, 10, 20, 40, 60, 60]
    assert backoff_delay(300, 3, 100) == 300  # never more often than the interval


def test_compare_sessions():
    before = {"P/a": "f1", "P/b": "f2", "P/gone": "f3"}
    after = {"P/a": "f1", "P/b": "f2x", "P/new": "f4"}
    diff = runhistory.compare_sessions(before, after)
    assert (diff["new"], diff["changed"], diff["unchanged"], diff["removed"]) == (1, 1, 1, 1)
    assert diff["new_sessions"] == ["P/new"] and diff["changed_sessions"] == ["P/b"]


def test_run_record_merges_into_the_manifest(tmp_path):
    folder = tmp_path / runhistory.RUNS_DIR / "20260101T000000Z-abcdef"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(
        json.dumps({"run_id": "20260101T000000Z-abcdef", "git": {"commit": "x"}})
    )
    runhistory.merge_summary(
        "20260101T000000Z-abcdef", {"outcome": "running", "trigger": "manual"}, tmp_path
    )
    runhistory.merge_summary(
        "20260101T000000Z-abcdef", {"outcome": "success", "exit_status": 0}, tmp_path
    )
    record = json.loads((folder / "manifest.json").read_text())
    assert record["git"] == {"commit": "x"}  # the reproducibility sections stay
    assert record["summary"] == {
        "outcome": "success",
        "trigger": "manual",
        "exit_status": 0,
        "run_id": "20260101T000000Z-abcdef",
    }
    with pytest.raises(ValueError):
        runhistory.run_dir("../../etc")


def _record(root: Path, run_id: str, **summary) -> None:
    runhistory.merge_summary(run_id, summary, root)


def test_runs_table_and_history_page(tmp_path):
    _record(
        tmp_path,
        "20260101T000000Z-aaaaaa",
        start="2026-01-01T00:00:00+00:00",
        end="2026-01-01T00:03:00+00:00",
        trigger="first check",
        sessions={"new": 3, "changed": 0, "unchanged": 0},
        jobs={"compute_noise": 3},
        failures={},
        failure_list=[],
        outcome="success",
        exit_status=0,
    )
    _record(
        tmp_path,
        "20260102T000000Z-bbbbbb",
        start="2026-01-02T00:00:00+00:00",
        end="2026-01-02T00:01:00+00:00",
        trigger="archive changed",
        sessions={"new": 1, "changed": 0, "unchanged": 3},
        jobs={"compute_noise": 1},
        failures={"scan not readable": 1},
        outcome="success",
        exit_status=0,
        failure_list=[
            {
                "project": "P",
                "session": "S<1>",
                "scan": "1",
                "algorithm": "noise",
                "reason": "scan not readable: truncated",
            }
        ],
        pool={"vm_minutes": 4.5, "servers": 2},
    )
    table = runhistory.runs_table(runhistory.list_runs(tmp_path)).splitlines()
    assert table[0].split()[:4] == ["run", "start", "min", "trigger"]
    assert table[1].startswith("20260101T000000Z-aaaaaa") and "3.0" in table[1]
    assert "scan not readable 1" in table[2] and "4.5" in table[2]
    # The summaries are cached by manifest size and mtime; a rewritten manifest is read again.
    assert (tmp_path / runhistory.SUMMARY_CACHE).is_file()
    assert "failure_list" not in runhistory.list_runs(tmp_path)[1]  # lists stay in the manifest
    _record(tmp_path, "20260101T000000Z-aaaaaa", trigger="config changed")
    assert runhistory.list_runs(tmp_path)[0]["trigger"] == "config changed"
    runhistory.write_pages("20260102T000000Z-bbbbbb", tmp_path)
    page = (tmp_path / runhistory.HISTORY_PAGE).read_text()
    assert "../runs/20260102T000000Z-bbbbbb/failures.html" in page and "4.5 min, 2 servers" in page
    failures = (
        tmp_path / runhistory.RUNS_DIR / "20260102T000000Z-bbbbbb/failures.html"
    ).read_text()
    assert "S&lt;1&gt;" in failures and "truncated" in failures


def test_status_exit_codes(tmp_path, sleeper):
    state = tmp_path / STATE_FILE
    state.parent.mkdir(parents=True)

    def set_state(**data):
        state.write_text(json.dumps(data))

    # Nothing ever ran: not watching.
    info, code = collect(tmp_path)
    assert code == 2 and "not running" in render(info)

    # A live watcher, archive fine, last run clean: healthy.
    _write_lock(tmp_path / LOCK_FILE, pid=sleeper.pid, start_ticks=process_start_ticks(sleeper.pid))
    set_state(
        pid=sleeper.pid,
        last_check="2026-01-01T00:00:00+00:00",
        archive={"reachable": True},
        next_poll="2026-01-01T00:05:00+00:00",
        mode="watch",
        started="x",
    )
    _record(
        tmp_path,
        "20260101T000000Z-aaaaaa",
        start="2026-01-01T00:00:00+00:00",
        outcome="success",
        exit_status=0,
        failures={},
    )
    info, code = collect(tmp_path)
    assert code == 0, render(info)
    assert "next poll: 2026-01-01T00:05:00+00:00" in render(info)

    # The last run had failures: 1.
    _record(
        tmp_path,
        "20260102T000000Z-bbbbbb",
        start="2026-01-02T00:00:00+00:00",
        outcome="success",
        exit_status=0,
        failures={"algorithm failure": 2},
    )
    assert collect(tmp_path)[1] == 1
    _record(tmp_path, "20260102T000000Z-bbbbbb", failures={}, exit_status=1, outcome="failed")
    assert collect(tmp_path)[1] == 1

    # Archive unreachable at the last poll: 2, whatever the last run.
    set_state(pid=sleeper.pid, archive={"reachable": False, "error": "no route", "since": "t"})
    info, code = collect(tmp_path)
    assert code == 2 and "UNREACHABLE" in render(info) and "no route" in render(info)

    # The watcher died: 2; a cron deployment with a recent check: healthy again.
    sleeper.stdin.close()
    sleeper.wait(timeout=30)
    _record(tmp_path, "20260102T000000Z-bbbbbb", exit_status=0, outcome="success")
    from qmroct.watch import iso
    import time

    set_state(pid=sleeper.pid, archive={"reachable": True}, last_check=iso(time.time()))
    assert collect(tmp_path)[1] == 2
    assert collect(tmp_path, max_age=600)[1] == 0


def test_open_failures_from_the_tables(tmp_path):
    table = tmp_path / "results/tables/kqi.tsv"
    table.parent.mkdir(parents=True)
    table.write_text(
        "project\tsession\tscan\talgorithm\tkqi\tstatus\terror\n"
        "P\tA\t1\tnoise\tsnr_db\tfailed\tscan not readable: truncated\n"
        "P\tA\t1\tnoise\tsnr_db_min\tfailed\tscan not readable: truncated\n"
        "P\tB\t1\tnoise\tsnr_db\tok\t\n"
        "P\tB\t2\tlayers\tx\tfailed\talgorithm failure: boom\n"
    )
    info, _ = collect(tmp_path)
    assert info["open_failures"] == {"scan not readable": 1, "algorithm failure": 1}


def test_notify_gets_the_summary_and_no_secrets(tmp_path, monkeypatch):
    out = tmp_path / "got.json"
    script = tmp_path / "notify.py"
    script.write_text(
        "import json, os, sys\n"
        "got = {'stdin': sys.stdin.read(), 'env': dict(os.environ), 'argv': sys.argv}\n"
        f"json.dump(got, open({str(out)!r}, 'w'))\n"
    )
    monkeypatch.setenv("XNAT_PASS", "hunter2-secret")
    monkeypatch.setenv("OS_PASSWORD", "cloud-pw-secret")
    monkeypatch.setenv("MY_API_TOKEN", "tok-secret")
    summary = {"run_id": "r", "outcome": "failed", "note": "login as alice:hunter2-secret failed"}
    code = runhistory.notify(
        {"notify": {"command": [sys.executable, str(script), "--room", "qc"]}}, summary
    )
    assert code == 0
    got = json.loads(out.read_text())
    assert json.loads(got["stdin"])["outcome"] == "failed"
    assert got["argv"][1:] == ["--room", "qc"]
    text = out.read_text()
    for secret in ("hunter2-secret", "cloud-pw-secret", "tok-secret"):
        assert secret not in text
    assert "XNAT_PASS" not in got["env"] and "PATH" in got["env"]
    # No command configured, or a broken one: nothing happens, nothing raises.
    assert runhistory.notify({}, summary) is None
    assert runhistory.notify({"notify": {"command": "/nonexistent/notifier"}}, summary) is None


def test_pool_usage_from_the_executors_summary(tmp_path):
    """VM-minutes and servers come from the file the OpenStack executor writes at shutdown."""
    from snakemake_executor_plugin_openstack.status import PoolStats

    since = time.time() - 1
    stats = PoolStats(servers_created=3, vm_seconds=270.0)
    folder = tmp_path / runhistory.POOL_RUNS / "pool1"
    folder.mkdir(parents=True)
    stats.write_json(str(folder / "summary.json"))
    assert runhistory.pool_usage(since, tmp_path) == {"vm_minutes": 4.5, "servers": 3}
    # A pool run that ended before this run started is not this run's.
    assert runhistory.pool_usage(time.time() + 5, tmp_path) is None


def test_bad_config_and_missing_archive_are_named_by_status(tmp_path, monkeypatch):
    """One check (no snakemake): what stops assessment is said, and status exits 2."""
    from qmroct.watch import WatchOptions, Watcher

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        "archive: {backend: directory, path: nowhere}\nprojects: [DEMO]\n"
        "algorithms: {noise: {}}\nalgoritms: {}\n"
    )
    assert Watcher(WatchOptions(once=True, configfile=config)).run() == 0
    info, code = collect(tmp_path, max_age=600)
    assert code == 2 and "config: INVALID" in render(info) and "algoritms" in render(info)

    config.write_text(config.read_text().replace("algoritms: {}\n", ""))
    assert Watcher(WatchOptions(once=True, configfile=config)).run() == 0
    info, code = collect(tmp_path, max_age=600)
    assert code == 2 and "archive: UNREACHABLE" in render(info) and "nowhere" in render(info)
    assert json.loads((tmp_path / STATE_FILE).read_text())["archive_failures"] == 2
    assert not (tmp_path / LOCK_FILE).exists() and not (tmp_path / "results").exists()


def test_ledger_counts_snakemake_job_events():
    """The head's handler, fed the records Snakemake's logger emits (event names and fields
    as in snakemake/jobs.py and scheduling/job_scheduler.py)."""
    import logging

    ledger = runhistory.RunLedger()

    def emit(msg: str = "", **extra) -> None:
        record = logging.LogRecord("snakemake.logging", logging.INFO, __file__, 0, msg, None, None)
        record.__dict__.update(extra)
        ledger.emit(record)

    emit(event="job_info", jobid=1, rule_name="discover", wildcards={})
    for jobid, session in ((2, "A"), (3, "B")):
        wildcards = {"project": "P", "session": session}
        emit(event="job_info", jobid=jobid, rule_name="compute_noise", wildcards=wildcards)
    emit(event="job_finished", job_id=1)
    emit(event="job_finished", job_id=2)
    emit(event="job_error", jobid=3, rule_name="compute_noise", log=["logs/compute/P/B/noise.log"])
    emit(event="progress", done=2, total=3)
    assert not ledger.interrupted
    emit("Terminating processes on user request, this might take some time.")
    assert [rule for rule, _ in ledger.finished] == ["discover", "compute_noise"]
    assert ledger.finished[1][1] == {"project": "P", "session": "A"}
    [failure] = runhistory.job_failures(ledger.failed)
    assert (failure["session"], failure["reason"]) == ("B", "job compute_noise failed")
    assert failure["log"] == ["logs/compute/P/B/noise.log"]
    assert ledger.interrupted
