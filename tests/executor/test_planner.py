"""Boot planning with PuLP (planner.py): how many servers of which flavor."""

from __future__ import annotations

import time

import pytest

from snakemake_executor_plugin_openstack.planner import ExistingServer, PlanRequest, plan_boots
from snakemake_executor_plugin_openstack.quota import Flavor, Resources

MEDIUM = Flavor("3", "m1.medium", 2, 4096)
LARGE = Flavor("4", "m1.large", 4, 8192)


def req(**kw):
    base = dict(
        work_seconds=120.0,
        longest_job=1.5,
        cores=1,
        mem_mb=1000,
        flavors=[MEDIUM],
        boot_seconds={"m1.medium": 12.0},
        budget=Resources(4, 20, 51200),
    )
    base.update(kw)
    return PlanRequest(**base)


def test_planner_boots_up_to_quota_for_much_work():
    p = plan_boots(req())
    assert p.boots == {"m1.medium": 4}
    assert p.makespan == pytest.approx(12 + 120 / 8, rel=1e-3)


def test_planner_respects_instance_budget():
    assert plan_boots(req(budget=Resources(2, 20, 51200))).boots == {"m1.medium": 2}
    assert plan_boots(req(budget=Resources(9, 3, 51200))).boots == {"m1.medium": 1}  # cores: 3 // 2


def test_planner_does_not_boot_when_work_ends_before_boot():
    # 8 jobs of 1.5 s on a ready 2-slot server end after 6 s; a server booting 12 s cannot help
    p = plan_boots(req(work_seconds=12, existing=[ExistingServer(slots=2, available_in=0)]))
    assert p.boots == {}
    assert p.makespan == pytest.approx(6.0, rel=1e-3)


def test_planner_boots_when_it_shortens_the_run():
    # 200 s of work on one ready 2-slot server = 100 s;
    # with 4 more: 2T + 8(T - 12) = 200, T = 29.6 s
    p = plan_boots(req(work_seconds=200, existing=[ExistingServer(slots=2, available_in=0)]))
    assert p.boots == {"m1.medium": 4}
    assert p.makespan == pytest.approx(29.6, rel=1e-3)


def test_planner_counts_servers_already_booting():
    # 4 servers (8 slots) ready in 10 s finish 16 slot-s of work at 12 s:
    # a new boot (12 s) cannot help
    p = plan_boots(
        req(work_seconds=16, existing=[ExistingServer(2, 10.0)] * 4, budget=Resources(4, 20, 51200))
    )
    assert p.boots == {}
    assert p.makespan == pytest.approx(12.0, rel=1e-3)


def test_planner_prefers_fewer_larger_servers_under_instance_quota():
    p = plan_boots(
        req(
            work_seconds=400,
            flavors=[MEDIUM, LARGE],
            boot_seconds={"m1.medium": 12, "m1.large": 12},
            budget=Resources(2, 100, 10**6),
        )
    )
    assert p.boots == {"m1.large": 2}


def test_planner_without_capacity():
    assert plan_boots(req(budget=Resources(0, 0, 0))).boots == {}
    assert plan_boots(req(work_seconds=0)).boots == {}
    assert plan_boots(req(mem_mb=10**6)).boots == {}  # no flavor can hold a job


def test_planner_is_fast():
    t = time.time()
    plan_boots(
        req(
            work_seconds=5000,
            flavors=[MEDIUM, LARGE],
            boot_seconds={"m1.medium": 60, "m1.large": 90},
            budget=Resources(20, 200, 10**6),
            existing=[ExistingServer(2, 0)] * 3,
        )
    )
    assert time.time() - t < 5


def test_planner_boots_no_more_servers_than_the_submissions_can_fill():
    # 12 slot-s of work, but only 2 submissions still to place (the rest is jobs running on
    # servers being replaced, say): on 1-slot servers, more than 2 new ones get nothing to do
    r = req(work_seconds=12.0, longest_job=1.5, cores=2, boot_seconds={"m1.medium": 3.0})
    assert plan_boots(r).boots == {"m1.medium": 4}  # the divisible-work model alone
    r.units = 2
    assert plan_boots(r).boots == {"m1.medium": 2}
    # one slot already there (booting): only one more is of use
    r.existing = [ExistingServer(slots=1, available_in=2.0)]
    assert plan_boots(r).boots == {"m1.medium": 1}
    r.units = 1
    assert plan_boots(r).boots == {}
