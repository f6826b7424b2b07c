"""The Snakemake side (executor.py) without a cloud: what a job must bring back."""

from __future__ import annotations

from types import SimpleNamespace

from snakemake.io import temp

from snakemake_executor_plugin_openstack.executor import split_outputs


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
