"""The Snakemake side (executor.py) without a cloud: what a job must bring back, and how
long jobs are expected to run (the planner's input)."""

from __future__ import annotations

from types import SimpleNamespace

from snakemake.io import temp

from snakemake_executor_plugin_openstack.executor import (
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
