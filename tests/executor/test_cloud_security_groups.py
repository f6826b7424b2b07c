"""Security groups (setting security_groups) against Nova's security group code with the
NeutronFixture (made to resolve group names and keep them on ports, see tests/cloud/README.md).

Nova reports a server's groups from its Neutron ports, so these servers are on the fixture's
network; with network 'none' a server has no port and GET /servers/{id} lists no groups."""

from __future__ import annotations

import time

import pytest

from tests.executor.helpers import (
    NEUTRON_NETWORK,
    finish,
    job,
    make_pool,
    make_workdir,
    run_snakemake,
    submit_and_wait,
)
from snakemake_executor_plugin_openstack.pool import JobState

pytestmark = pytest.mark.cloud


def test_servers_carry_the_requested_security_groups(project, nova_cloud, in_tmp):
    nova_cloud.control(add_security_groups=[{"name": "qmroct-workers", "project_id": project.name}])
    pool = make_pool(
        project, network=NEUTRON_NETWORK, max_servers=1, security_groups="qmroct-workers,default"
    )
    j = job(1, "true", in_tmp)
    try:
        submit_and_wait(pool, [j], 60, "the job")
        assert j.state == JobState.DONE, j.error
        (server,) = project.servers()
        got = project.conn.compute.get_server(server.id).security_groups
        assert sorted(g["name"] for g in got) == ["default", "qmroct-workers"]
    finally:
        finish(pool, project)


def test_unknown_security_group_fails_at_once_and_names_the_group(project, nova_cloud, in_tmp):
    pool = make_pool(project, max_servers=2, security_groups="default,no-such-group")
    jobs = [job(i, "true", in_tmp) for i in range(3)]
    try:
        took = submit_and_wait(pool, jobs, 30, "jobs to fail")
        assert took < 15
        for j in jobs:
            assert j.state == JobState.FAILED
            assert "security group 'no-such-group' not found" in j.error, j.error
            assert "'default'" not in j.error  # only the missing one is named
        assert pool.stats.servers_created == 0  # Nova refused the create (400), no server left
        errors = [m for m in pool.logs if "no-such-group" in m]
        assert len(errors) == 1, pool.logs  # said once, no relaunch loop
        time.sleep(1.5)
        assert pool.stats.servers_created == 0 and project.servers() == []
    finally:
        finish(pool, project)


def test_workflow_with_unknown_security_group_stops_with_a_clear_error(
    project, nova_cloud, tmp_path
):
    wd = make_workdir(tmp_path, samples=("s1",), algos=("alpha",))
    t0 = time.time()
    rc, log = run_snakemake(
        wd, project.executor_args(security_groups="no-such-group"), project.env(), timeout=120
    )
    assert rc != 0
    assert time.time() - t0 < 60
    assert "security group 'no-such-group' not found in this project" in log, log[-3000:]
    assert project.servers() == []
