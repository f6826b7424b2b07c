"""The Snakemake side (executor.py) without a cloud: what a job must bring back, and how
long jobs are expected to run (the planner's input)."""

from __future__ import annotations

from types import SimpleNamespace

from snakemake.io import temp

from snakemake_executor_plugin_openstack.executor import (
    Executor,
    declared_seconds,
    split_outputs,
    submission_seconds,
)


def member(outputs, benchmark=None):
    return SimpleNamespace(output=outputs, benchmark=benchmark)


def test_single_job_outputs_are_all_required_temp_included():
    j = member(["a.txt", temp("t.txt")], benchmark="b.tsv")
    assert split_outputs(j, [j]) == (["a.txt", "t.txt"], ["b.tsv"])


def test_group_internal_temp_files_are_optional_everything_else_required():
    prep = member([temp("pre/s1.txt"), "pre/s1.keep"])
    algo = member(["res/s1.json", temp("res/s1.tmp")], benchmark="bench/s1.tsv")
    # the group's external outputs: what jobs outside the group (or the targets) need
    group = SimpleNamespace(output=["res/s1.json", "res/s1.tmp"])
    required, optional = split_outputs(group, [prep, algo])
    assert required == ["pre/s1.keep", "res/s1.json", "res/s1.tmp"]
    assert optional == ["pre/s1.txt", "bench/s1.tsv"]


# ---------------------------------------------------------------- runtime estimates


def test_declared_seconds_prefer_runtime_s_over_whole_minutes():
    assert declared_seconds({"runtime": 1, "runtime_s": 3}) == 3.0
    assert declared_seconds({"runtime": 2}) == 120.0
    assert declared_seconds({"runtime_s": 0, "mem_mb": 500}) is None
    assert declared_seconds({"runtime": "soon"}) is None


def test_a_group_of_fast_members_is_seconds_not_minutes():
    # two 1 s algorithms and an undeclared summary on one core: 2 s, not 3 x 60 s
    assert submission_seconds([1.0, 1.0, None], cores=1, default=60.0) == 2.0
    assert submission_seconds([1.0, 5.0], cores=2, default=60.0) == 5.0  # the longest member
    assert submission_seconds([None, None], cores=1, default=60.0) == 120.0  # nothing declared


class FakeJob:
    def __init__(self, rule, seconds=None, threads=1, local=False):
        self.rule = SimpleNamespace(name=rule)
        self.resources = {"_cores": threads, **({"runtime_s": seconds} if seconds else {})}
        self.threads = threads
        self.is_local = local


def fake_executor(jobs, groups):
    """An Executor without Snakemake or a cloud: only what the backlog count reads."""
    ex = Executor.__new__(Executor)
    dag = SimpleNamespace(needrun_jobs=lambda: list(jobs), get_job_group=groups.get)
    ex.workflow = SimpleNamespace(dag=dag)
    ex.pool = SimpleNamespace(runtime_estimate=lambda kind, default: default)
    ex.default_job_seconds, ex.max_vcpus, ex.max_ram = 60.0, 4, 8192
    ex._backlog_at, ex._submitted_jobs, ex._pending = 0.0, set(), {}
    ex._unit_cores_cache, ex._declared_by_rule = {}, {}
    return ex


def test_backlog_is_pool_work_in_submissions_and_drops_what_was_submitted():
    # two sessions: each a group of two 1 s algorithms and an undeclared summary (2 cores),
    # plus the workflow's local rules, which run on the head
    sessions = []
    groups = {}
    for _ in range(2):
        members = [FakeJob("compute_a", 1), FakeJob("compute_b", 1), FakeJob("summary")]
        group = SimpleNamespace(resources={"_cores": 2}, threads=2)
        groups.update({id(m): group for m in members})
        sessions.append(members)
    local = [FakeJob("writeback", local=True), FakeJob("report", local=True)]
    jobs = [m for s in sessions for m in s] + local
    ex = fake_executor(jobs, {m: groups[id(m)] for s in sessions for m in s})
    ex._update_backlog(force=True)
    b = ex._backlog()
    assert (b.units, b.work_seconds, b.longest, b.cores) == (2, 2.0, 1.0, 2)
    ex._take_from_backlog(sessions[0])  # handed to the pool: gone before the next count
    assert (ex._backlog().units, ex._backlog().work_seconds) == (1, 1.0)
    ex._submitted_jobs.update(sessions[0])
    ex._update_backlog(force=True)
    assert (ex._backlog().units, ex._backlog().work_seconds) == (1, 1.0)
