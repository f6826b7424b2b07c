"""The pool against the Nova test cloud without Snakemake: quota forms, slow and hung SSH,
reaper, leak cleanup at start, missing outputs, isolated servers."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.executor.helpers import (
    IMAGE,
    REPO,
    finish,
    job,
    make_pool,
    submit_and_wait,
    wait,
)  # noqa: F401
from snakemake_executor_plugin_openstack import cloud as cl
from snakemake_executor_plugin_openstack import reaper
from snakemake_executor_plugin_openstack.pool import JobState

pytestmark = pytest.mark.cloud


def test_quota_403_at_create_shrinks_pool_then_recovers(project, nova_cloud, in_tmp):
    project.set_quota(instances=5)
    pool = make_pool(project, max_servers=2, quota_cache_seconds=3600)
    pool._budget()  # limits read now (5 free) and cached
    project.set_quota(instances=1)
    other = project.conn.compute.create_server(
        name="someone-else", image_id=IMAGE, flavor_id="1", networks="none"
    )
    project.conn.compute.wait_for_server(other, interval=0.3, wait=60)
    pool.start()
    jobs = [job(i, "true", in_tmp) for i in range(2)]
    for j in jobs:
        pool.submit(j)
    try:
        wait(lambda: pool.stats.quota_rejections >= 1, 60, "a quota rejection")
        assert pool.stats.quota_rejected_at_create >= 1  # Nova's 403 form
        time.sleep(1.0)
        assert not any(
            j.state == JobState.FAILED for j in jobs
        )  # the pool waits instead of failing
        assert [s.name for s in project.servers()] == ["someone-else"]
        # quota frees up: the pool grows again on its next limits read
        project.conn.compute.delete_server(other)
        project.conn.compute.wait_for_delete(other, interval=0.3)
        pool.quota.ttl = 0.5
        wait(lambda: all(j.finished for j in jobs), 90, "jobs to finish")
        assert all(j.state == JobState.DONE for j in jobs), [j.error for j in jobs]
        assert (in_tmp / "out/0.txt").read_text() == "job0\n"
    finally:
        finish(pool, project)


def test_quota_error_after_burst_of_creates(project, nova_cloud, in_tmp):
    project.set_quota(instances=5)
    pool = make_pool(project, max_servers=3, quota_cache_seconds=3600)
    pool._budget()
    project.set_quota(instances=1)
    jobs = [job(i, "sleep 1", in_tmp) for i in range(4)]
    try:
        submit_and_wait(pool, jobs, 120, "jobs to finish")
        assert all(j.state == JobState.DONE for j in jobs), [j.error for j in jobs]
        st = pool.stats
        assert st.quota_rejections >= 1
        # Nova accepted the burst and put the extra servers into ERROR with a quota fault
        assert st.quota_error_servers >= 1, (st, pool.logs)
        assert st.boot_failures == 0  # quota rejections are not launch failures
        assert sum(st.per_server.values()) == 4 and len(st.per_server) == 1
    finally:
        finish(pool, project)


def test_missing_declared_output_fails_the_job_on_the_worker(project, nova_cloud, in_tmp):
    ok = job(1, "true", in_tmp)
    bad = job(2, "echo 'wrote a log' > out/2.log", in_tmp)  # exit 0, one output never written
    bad.io.outputs = ["out/2.txt", "out/never.txt", "out/not either.txt"]
    bad.io.logs = ["out/2.log"]
    pool = make_pool(project, max_servers=1)
    try:
        submit_and_wait(pool, [ok, bad], 60, "the jobs")
        assert ok.state == JobState.DONE, ok.error
        assert bad.state == JobState.FAILED
        assert "out/never.txt, out/not either.txt" in bad.error and "out/2.txt," not in bad.error
        assert "without its declared output(s)" in bad.error
        assert not (in_tmp / "out/2.txt").exists()  # nothing of a failed job's outputs comes back
        assert (in_tmp / "out/2.log").read_text() == "wrote a log\n"  # its log does
        assert "missing outputs: out/never.txt" in (in_tmp / "log/2.log").read_text()
        assert pool.stats.jobs_failed == 1 and pool.stats.jobs_done == 1
    finally:
        finish(pool, project)


def test_slow_ssh_after_active_is_waited_for(project, nova_cloud, in_tmp):
    nova_cloud.control(ssh_start_delay=3)
    pool = make_pool(project, max_servers=1, boot_timeout=20)
    j = job(1, "true", in_tmp)
    try:
        submit_and_wait(pool, [j], 60, "the job")
        assert j.state == JobState.DONE, j.error
        assert pool.stats.boot_failures == 0
        assert pool.stats.boot_seconds[0] >= 3.0
    finally:
        finish(pool, project)


def test_hung_server_is_detected_and_its_job_resubmitted(project, nova_cloud, in_tmp):
    mark = in_tmp / "first-attempt"
    pool = make_pool(project, max_servers=2, ssh_keepalive=1.0)
    pool.start()
    # the first attempt hangs (its server is frozen); a resubmission finds the marker and
    # ends at once
    j = job(1, f"if [ ! -e {mark} ]; then touch {mark}; sleep 60; fi", in_tmp)
    pool.submit(j)
    try:
        wait(
            lambda: mark.exists() and j.server is not None and j.state == JobState.RUNNING,
            60,
            "job running",
        )
        victim = j.server
        t0 = time.time()
        nova_cloud.control(hang=[victim.id])
        wait(lambda: j.finished, 90, "the job")
        assert j.state == JobState.DONE, j.error
        assert time.time() - t0 < 45
        assert j.vm_losses == 1 and pool.stats.resubmissions == 1
        assert len(j.servers_used) == 2 and j.servers_used[0] == victim.name
    finally:
        finish(pool, project)


def _tool_server(project, name, **md):
    meta = cl.metadata_for("run-" + name, 30, "smk-os")
    meta.update(md)
    s = project.conn.compute.create_server(
        name=name, image_id=IMAGE, flavor_id="1", networks="none", metadata=meta
    )
    return project.conn.compute.wait_for_server(s, interval=0.3, wait=60)


def _dead_runs_beside_a_live_and_a_foreign_server(project):
    """Servers of this tool whose run is over (lease expired; process gone), one of a live
    run (this process, fresh lease) and one another tool made: the first two may go."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    expired = _tool_server(project, "expired", **{cl.MD_EXPIRES: str(int(time.time()) - 5)})
    crashed = _tool_server(project, "crashed", **{cl.MD_PID: str(dead.pid)})
    _tool_server(project, "alive")
    foreign = project.conn.compute.create_server(
        name="foreign",
        image_id=IMAGE,
        flavor_id="1",
        networks="none",
        metadata={cl.MD_EXPIRES: "0"},
    )
    project.conn.compute.wait_for_server(foreign, interval=0.3, wait=60)
    return expired, crashed


def test_reaper_deletes_only_dead_runs_of_this_tool(project, nova_cloud, monkeypatch):
    expired, crashed = _dead_runs_beside_a_live_and_a_foreign_server(project)
    adapter = cl.CloudAdapter(project.conn)
    out = io.StringIO()
    listed = reaper.reap(adapter, dry_run=True, out=out)
    assert sorted(listed) == sorted([expired.id, crashed.id]), out.getvalue()
    assert "would delete expired" in out.getvalue() and "would delete crashed" in out.getvalue()
    assert len(project.servers()) == 4  # dry run deletes nothing
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(project.clouds_yaml))
    assert reaper.main(["--cloud", "testcloud", "--interval", "0.5"]) == 0
    assert sorted(s.name for s in project.servers()) == ["alive", "foreign"]


def test_reap_console_script_exists():
    exe = os.path.join(os.path.dirname(sys.executable), "snakemake-openstack-reap")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--dry-run" in r.stdout


def test_idle_servers_retire_down_to_keep_warm_and_recycle(project, nova_cloud, in_tmp):
    pool = make_pool(project, max_servers=2, idle_timeout=1.0, keep_warm=1, max_jobs_per_server=2)
    jobs = [job(i, "sleep 1", in_tmp) for i in range(6)]
    try:
        submit_and_wait(pool, jobs, 120, "jobs to finish")
        assert all(j.state == JobState.DONE for j in jobs), [j.error for j in jobs]
        # a server runs at most 2 submissions, then it is replaced
        assert max(pool.stats.per_server.values()) <= 2 and pool.stats.servers_created >= 3
        wait(
            lambda: (
                len([s for s in project.servers() if s.status == "ACTIVE"]) == 1
                and len(pool.live()) == 1
            ),
            60,
            "idle servers to retire down to keep-warm",
        )
        time.sleep(2.0)
        assert len(pool.live()) == 1  # the keep-warm server stays while the run lasts
    finally:
        finish(pool, project)


def test_lease_is_renewed_while_the_run_lives(project, nova_cloud, in_tmp):
    pool = make_pool(project, max_servers=1, lease_minutes=0.25)  # 15 s lease, renewed every 5 s
    pool.start()
    j = job(1, "sleep 14", in_tmp)
    pool.submit(j)
    try:
        wait(lambda: j.state == JobState.RUNNING, 60, "job running")
        first = float(project.servers()[0].metadata[cl.MD_EXPIRES])
        wait(lambda: j.finished, 60, "the job")
        assert j.state == JobState.DONE, j.error
        later = float(project.servers()[0].metadata[cl.MD_EXPIRES])
        assert later > first + 4  # renewed at least once
        assert later > time.time()  # still alive: the reaper leaves it alone
        assert reaper.find_dead(cl.CloudAdapter(project.conn)) == {}
    finally:
        finish(pool, project)


def test_pool_start_reaps_servers_of_dead_runs(project, nova_cloud, in_tmp):
    expired, crashed = _dead_runs_beside_a_live_and_a_foreign_server(project)
    pool = make_pool(project, max_servers=1, leak_check_interval=0.5)
    pool.start()
    try:
        wait(lambda: pool.stats.leaks_reaped == 2, 60, "the leak cleanup")
        wait(
            lambda: sorted(s.name for s in project.servers()) == ["alive", "foreign"],
            60,
            "the dead runs' servers to go",
        )
        logs = "\n".join(pool.logs)
        assert f"leak cleanup: deleting expired ({expired.id})" in logs and "lease expired" in logs
        assert f"leak cleanup: deleting crashed ({crashed.id})" in logs and "is gone" in logs
    finally:
        for s in project.servers():
            if s.name in ("alive", "foreign"):
                project.conn.compute.delete_server(s)
                project.conn.compute.wait_for_delete(s, interval=0.3)
        finish(pool, project)


def test_isolated_server_sees_nothing_of_the_head_and_keeps_no_job_folder(
    project, nova_cloud, isolated, in_tmp
):
    head_file = in_tmp / "head-only.txt"
    head_file.write_text("on the head\n")
    cmd = (
        f"test ! -e {head_file} && test ! -e {REPO / 'pyproject.toml'} "
        f'&& test -z "$(ls -A {Path.home()})" && python -c "import snakemake, qmroct" '
        "&& echo isolated > out/iso.txt"
    )
    j = job(1, cmd, in_tmp)
    j.io.outputs.append("out/iso.txt")
    j.io.path_prefix = str(isolated)  # the executor sets it from remote_path_prefix
    pool = make_pool(project, max_servers=1, remote_path_prefix=str(isolated))
    try:
        submit_and_wait(pool, [j], 90, "the job")
        assert j.state == JobState.DONE, (j.error, (in_tmp / "log/1.log").read_text())
        assert (in_tmp / "out/iso.txt").read_text() == "isolated\n"
        # the job folder (its inputs, scans in a real run) is gone from the worker afterwards
        job_dir = Path(j.io.remote_dir)
        assert job_dir.is_relative_to(nova_cloud.state_dir)
        wait(lambda: not job_dir.exists(), 30, "the job folder to be wiped")
    finally:
        finish(pool, project)
