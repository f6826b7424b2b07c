"""Workers reached through a jump host (setting jump_host): a real OpenSSH bastion on a loopback
address of its own, in front of the test cloud's fake VMs.

Proof that the traffic goes through the bastion: its sshd log (DEBUG1) shows a direct-tcpip
channel to every worker address, and killing the bastion's sessions cuts the pool's open worker
connections. Its host key is verified against the jump_host_known_hosts file."""

from __future__ import annotations

import getpass
import re
import time

import pytest

from tests.executor.helpers import (
    Bastion,
    finish,
    job,
    make_pool,
    make_workdir,
    run_snakemake,
    run_summary,
    submit_and_wait,
    wait,
)
from snakemake_executor_plugin_openstack.pool import JobState
from snakemake_executor_plugin_openstack.ssh import VMLost

pytestmark = pytest.mark.cloud


@pytest.fixture
def bastion(project, tmp_path):
    pub = (project.key.parent / (project.key.name + ".pub")).read_text()
    b = Bastion(tmp_path, pub)
    yield b
    b.stop()


def forwarded_targets(log: str) -> list[tuple[str, int]]:
    # OpenSSH: "server_request_direct_tcpip: originator  port 0, target 127.42.1.1 port 2222"
    # (asyncssh sends no originator)
    return [
        (a, int(p))
        for a, p in re.findall(
            r"direct_tcpip: originator \S* port \d+, target (\S+) port (\d+)", log
        )
    ]


def test_jobs_run_through_the_bastion(project, nova_cloud, bastion, in_tmp):
    kh = in_tmp / "known_hosts"
    kh.write_text(bastion.known_hosts_line())
    pool = make_pool(
        project,
        max_servers=2,
        jump_host=f"{getpass.getuser()}@{bastion.address}:{bastion.port}",
        jump_host_known_hosts=str(kh),
    )
    jobs = [job(i, "sleep 1", in_tmp) for i in range(4)]
    try:
        submit_and_wait(pool, jobs, 90, "jobs to finish")
        assert all(j.state == JobState.DONE for j in jobs), [j.error for j in jobs]
        assert (in_tmp / "out/3.txt").read_text() == "job3\n"
        ready = [s for s in pool.servers if s.shell is not None]
        assert ready, pool.logs
        log = bastion.log_text()
        assert f"Accepted publickey for {getpass.getuser()}" in log
        targets = forwarded_targets(log)
        for s in ready:  # every worker connection was a channel of the bastion
            assert (s.address, nova_cloud.ssh_port) in targets, (s.address, targets)
        assert all(a.startswith("127.42.") for a, _ in targets)
        # and only through it: without the bastion's sessions the workers' connections are gone
        assert bastion.kill_sessions() >= 1
        for s in ready:
            with pytest.raises(VMLost):
                pool.call(s.shell.run("true", timeout=10), timeout=30)
    finally:
        finish(pool, project)


def test_bastion_connections_close_with_their_workers(project, nova_cloud, bastion, in_tmp):
    """A worker that is ACTIVE but not yet answering refuses many connection attempts; each
    attempt's bastion connection must be closed, and the one of a ready worker must close
    with the worker connection."""
    nova_cloud.control(ssh_start_delay=3)
    kh = in_tmp / "known_hosts"
    kh.write_text(bastion.known_hosts_line())
    pool = make_pool(
        project,
        max_servers=1,
        jump_host=f"{bastion.address}:{bastion.port}",
        jump_host_known_hosts=str(kh),
    )
    j = job(1, "true", in_tmp)
    try:
        submit_and_wait(pool, [j], 60, "the job")
        assert j.state == JobState.DONE, j.error
        logins = bastion.log_text().count("Accepted publickey")
        assert logins >= 3, logins  # it did retry through the bastion while sshd was not up
        time.sleep(0.5)
        assert bastion.established() == 1  # only the ready worker's connection
    finally:
        finish(pool, project)
    wait(lambda: bastion.established() == 0, 10, "the bastion connection to close with the pool")


def test_a_wrong_bastion_host_key_stops_the_pool_at_once(project, nova_cloud, bastion, in_tmp):
    other = in_tmp / "other_key"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kh = in_tmp / "known_hosts"
    wrong = " ".join((in_tmp / "other_key.pub").read_text().split()[:2])
    kh.write_text(bastion.known_hosts_line(wrong))  # an impostor, or a bastion whose key changed
    pool = make_pool(
        project,
        max_servers=1,
        boot_timeout=60,
        jump_host=f"{bastion.address}:{bastion.port}",
        jump_host_known_hosts=str(kh),
    )
    jobs = [job(i, "true", in_tmp) for i in range(2)]
    try:
        took = submit_and_wait(pool, jobs, 45, "jobs to fail")
        assert took < 30, took  # not after boot_timeout, not after launch retries
        for j in jobs:
            assert j.state == JobState.FAILED
            assert (
                f"jump host {bastion.address}:{bastion.port}: host key not verified" in j.error
            ), j.error
        assert pool.stats.servers_created == 1  # no relaunches: another server cannot help
        log = bastion.log_text()
        assert "Accepted publickey" not in log and not forwarded_targets(log)
    finally:
        finish(pool, project)


def test_workflow_through_jump_host(project, nova_cloud, bastion, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(bastion.known_hosts_line())
    wd = make_workdir(tmp_path, samples=("s1", "s2"), algos=("alpha",))
    args = project.executor_args(
        max_servers=1, jump_host=f"{bastion.address}:{bastion.port}", jump_host_known_hosts=str(kh)
    )
    rc, log = run_snakemake(wd, args, project.env())
    assert rc == 0, log[-4000:]
    assert run_summary(wd)["jobs_done"] == 2
    targets = forwarded_targets(bastion.log_text())
    assert targets and all(a.startswith("127.42.") and p == nova_cloud.ssh_port for a, p in targets)
    assert project.servers() == []
