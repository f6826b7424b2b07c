"""End-to-end: Snakemake with --executor openstack against the Nova test cloud (sshd per server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import wait_for
from tests.executor.helpers import (
    SECRET,
    SNAKEMAKE,
    SecretWatch,
    make_workdir,
    run_snakemake,
    run_summary,
    scan_tree_for,
)

pytestmark = pytest.mark.cloud


def results(wd: Path) -> dict:
    return {
        str(p.relative_to(wd)): json.loads(p.read_text())
        for p in sorted((wd / "results").rglob("*.json"))
    }


def local_reference(tmp_path: Path, **kw) -> dict:
    wd = make_workdir(tmp_path / "local", **kw)
    env = dict(os.environ, SMOS_TEST_TOKEN=SECRET)
    rc, log = run_snakemake(wd, ["--cores", "2"], env)
    assert rc == 0, log[-3000:]
    return results(wd)


def assert_clean(project, nova_cloud):
    servers = project.servers()
    assert servers == [], [s.name for s in servers]
    inst = nova_cloud.control()["instances"]
    assert not [i for i in inst.values() if i["name"].startswith("smk-os")], inst


def test_workflow_matches_local_run_with_reuse_and_cleanup(project, nova_cloud, isolated, tmp_path):
    wd = make_workdir(tmp_path / "remote", samples=("s1", "s2", "s3", "s4", "s5", "s6"))
    ref6 = local_reference(tmp_path / "l6", samples=("s1", "s2", "s3", "s4", "s5", "s6"))
    with SecretWatch(project) as watch:
        rc, log = run_snakemake(
            wd, project.executor_args(max_servers=2, remote_path_prefix=isolated), project.env()
        )
    assert rc == 0, log[-4000:]
    got = results(wd)
    assert got == ref6
    assert all(v["token_sha"] for v in got.values()), "the secret did not reach the jobs"
    # logs and benchmarks came back; the jobs ran on fake VMs (not locally)
    assert "ran on" in (wd / "logs/algo/s1_alpha.log").read_text()
    assert "local" not in (wd / "logs/algo/s1_alpha.log").read_text()
    assert (wd / "benchmarks/s1_alpha.tsv").exists()
    summ = run_summary(wd)
    assert summ["jobs_done"] == 6 and summ["jobs_failed"] == 0
    assert summ["servers_created"] <= 2
    assert summ["jobs_per_vm"] > 1, summ
    assert "openstack pool: servers booting=" in log
    assert "openstack summary:" in log
    assert_clean(project, nova_cloud)
    # secrets: never on a command line, in server details, logs or files
    assert watch.samples > 3
    assert watch.hits == []
    assert SECRET not in log
    assert scan_tree_for(wd, SECRET) == []
    assert scan_tree_for(Path(nova_cloud.state_dir), SECRET) == []


def test_workflow_with_directory_runs_in_the_staged_job_folder(
    project, nova_cloud, isolated, tmp_path
):
    """`snakemake -s wd/Snakefile -d wd` from outside the workdir: Snakemake appends
    `--directory <head workdir>` to every job; the job must still run in its staged folder."""
    ref = local_reference(tmp_path / "local", samples=("s1", "s2"))
    wd = make_workdir(tmp_path / "remote", samples=("s1", "s2"))
    rc, log = run_snakemake(
        wd.parent,
        [
            "-s",
            "wd/Snakefile",
            "-d",
            "wd",
            *project.executor_args(max_servers=1, remote_path_prefix=isolated),
        ],
        project.env(),
    )
    assert rc == 0, log[-4000:]
    assert results(wd) == ref
    ran_in = (wd / "logs/algo/s1_alpha.log").read_text().split(" in ", 1)[1].strip()
    assert ran_in != str(wd) and "/snakemake-openstack/" in ran_in, ran_in
    assert run_summary(wd)["jobs_done"] == 2
    assert_clean(project, nova_cloud)


def test_boot_to_error_is_deleted_and_relaunched(project, nova_cloud, tmp_path):
    nova_cloud.control(fail_spawns=2)
    wd = make_workdir(tmp_path, samples=("s1", "s2"))
    rc, log = run_snakemake(
        wd, project.executor_args(max_servers=1, launch_retries=4), project.env()
    )
    assert rc == 0, log[-4000:]
    summ = run_summary(wd)
    assert summ["boot_failures"] == 2, summ
    assert summ["jobs_done"] == 2
    assert "went to ERROR" in log
    assert_clean(project, nova_cloud)


def test_boot_slower_than_timeout(project, nova_cloud, tmp_path):
    nova_cloud.control(slow_spawns=1, slow_spawn_delay=20)
    wd = make_workdir(tmp_path, samples=("s1",))
    rc, log = run_snakemake(
        wd, project.executor_args(max_servers=1, launch_timeout=4), project.env()
    )
    assert rc == 0, log[-4000:]
    summ = run_summary(wd)
    assert summ["boot_failures"] == 1 and summ["jobs_done"] == 1, summ
    assert "not ACTIVE after 4s" in log
    assert_clean(project, nova_cloud)


def test_ssh_refused_until_boot_timeout(project, nova_cloud, tmp_path):
    nova_cloud.control(refuse_ssh=1)
    wd = make_workdir(tmp_path, samples=("s1",))
    rc, log = run_snakemake(wd, project.executor_args(max_servers=1, boot_timeout=4), project.env())
    assert rc == 0, log[-4000:]
    summ = run_summary(wd)
    assert summ["boot_failures"] == 1 and summ["jobs_done"] == 1, summ
    assert "SSH not answering" in log
    assert_clean(project, nova_cloud)


def test_over_quota_shrinks_pool_instead_of_failing(project, nova_cloud, tmp_path):
    project.set_quota(instances=1)
    wd = make_workdir(tmp_path, samples=("s1", "s2", "s3"))
    rc, log = run_snakemake(wd, project.executor_args(max_servers=3), project.env())
    assert rc == 0, log[-4000:]
    summ = run_summary(wd)
    # the limits are read from Nova: never more than one server at a time
    assert summ["servers_created"] == 1, summ
    assert summ["jobs_done"] == 3
    assert_clean(project, nova_cloud)


def _busy_instance(wd: Path, project, nova_cloud):
    """The id of a server that runs a job right now (from the executor's per-job logs)."""
    names = set()
    for p in (wd / ".snakemake" / "openstack").glob("*/*.log"):
        first = p.read_text().splitlines()[:1]
        if first and " on smk-os" in first[0]:
            names.add(first[0].split(" on ")[1].split()[0])
    for s in project.servers():
        if s.name in names and s.status == "ACTIVE":
            return s.id
    return None


def test_server_killed_mid_job_is_replaced_and_job_resubmitted(project, nova_cloud, tmp_path):
    wd = make_workdir(tmp_path, samples=("s1", "s2"), sleep=4)
    proc = subprocess.Popen(
        [
            str(SNAKEMAKE),
            "-j",
            "50",
            "--latency-wait",
            "1",
            "--retries",
            "0",
            *project.executor_args(max_servers=2),
        ],
        cwd=wd,
        env=project.env(),
        stdout=open(wd / "run.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        victim = wait_for(
            lambda: _busy_instance(wd, project, nova_cloud), 90, "a busy server", interval=0.2
        )
        time.sleep(1.5)  # the job is running (sleep 4 s)
        r = nova_cloud.control(kill=[victim])
        assert r["instances"][victim]["killed"]
        rc = proc.wait(240)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (wd / "run.log").read_text()
    assert rc == 0, log[-4000:]
    summ = run_summary(wd)
    assert summ["vm_losses"] >= 1 and summ["resubmissions"] >= 1, summ
    assert summ["jobs_done"] == 2
    assert len(list((wd / "results").rglob("*.json"))) == 4
    assert_clean(project, nova_cloud)


def test_algorithm_failure_is_reported_with_its_log(project, nova_cloud, tmp_path):
    wd = make_workdir(tmp_path, samples=("s1", "s2"))
    rc, log = run_snakemake(
        wd,
        [
            "--keep-going",
            *project.executor_args(
                max_servers=1, envvars_from_head="SMOS_TEST_TOKEN,SMOS_TEST_FAIL"
            ),
        ],
        project.env(SMOS_TEST_FAIL="s1/alpha"),
    )
    assert rc != 0
    assert "algorithm exploded on purpose" in (wd / "logs/algo/s1_alpha.log").read_text()
    assert "job exited with code" in log and "algorithm exploded on purpose" in log
    # a failing run too says its end-of-run lines once (issue 16 saw them twice)
    assert log.count("openstack summary:") == 1 and log.count(" server(s) of run ") <= 1
    summ = run_summary(wd)
    assert summ["vm_losses"] == 0 and summ["jobs_failed"] == 1 and summ["jobs_done"] == 1, summ
    assert (wd / "results/s2/alpha.json").exists()
    assert_clean(project, nova_cloud)


def _remote_job_pids(marker: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                env = open(f"/proc/{d}/environ", "rb").read()
                cmd = open(f"/proc/{d}/cmdline", "rb").read()
            except OSError:
                continue
            if b"NOVA_INSTANCE_UUID=" in env and marker.encode() in cmd:
                out.append(int(d))
    return out


def test_ctrl_c_kills_remote_jobs_and_deletes_servers(project, nova_cloud, tmp_path):
    wd = make_workdir(tmp_path, samples=("s1", "s2"), sleep=120)
    proc = subprocess.Popen(
        [str(SNAKEMAKE), "-j", "50", *project.executor_args(max_servers=2)],
        cwd=wd,
        env=project.env(),
        stdout=open(wd / "run.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: _remote_job_pids(str(wd)) or _remote_job_pids("algo.py") or None,
            120,
            "remote jobs running",
            interval=0.2,
        )
        time.sleep(2)
        assert _remote_job_pids("--mode")
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
        took = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (wd / "run.log").read_text()
    assert took < 90, log[-3000:]
    assert "killed" in log and "remote job" in log, log[-3000:]
    assert _remote_job_pids("--mode") == []
    assert_clean(project, nova_cloud)


def test_fast_jobs_boot_no_more_servers_than_their_work_needs(
    project, nova_cloud, isolated, tmp_path
):
    """Two submissions of jobs that declare 1 s each (runtime_s), plus two local rules: the
    pool boots at most one server per submission and every server it boots runs a job (it
    used to count each job, local ones included, as a minute of pool work and boot four)."""
    wd = make_workdir(tmp_path, samples=("s1", "s2"), runtime_s=1)
    rc, log = run_snakemake(
        wd, project.executor_args(max_servers=4, remote_path_prefix=isolated), project.env()
    )
    assert rc == 0, log[-4000:]
    summ = run_summary(wd)
    assert summ["jobs_done"] == 2
    assert summ["servers_created"] <= 2, summ
    assert len(summ["per_server"]) == summ["servers_created"], summ  # none booted for nothing
    # the summary sets the planner's estimate against the measured work
    assert 0 < summ["predicted_work_seconds"] < 10, summ
    assert summ["actual_work_seconds"] > 0
    assert "work predicted" in log
    assert (wd / "results/all.txt").exists()  # the local rules ran on the head
    assert_clean(project, nova_cloud)
