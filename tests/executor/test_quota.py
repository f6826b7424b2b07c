"""Quota arithmetic: limits, budgets, slots and the limits cache (quota.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from snakemake_executor_plugin_openstack.quota import (
    INF,
    Flavor,
    Limits,
    QuotaCache,
    Resources,
    budget,
    how_many_fit,
    pool_caps,
    slots,
)

MEDIUM = Flavor("3", "m1.medium", 2, 4096)
LARGE = Flavor("4", "m1.large", 4, 8192)


def test_limits_minus_one_is_unlimited():
    a = SimpleNamespace(
        instances=-1,
        total_cores=20,
        total_ram=-1,
        instances_used=3,
        total_cores_used=6,
        total_ram_used=12288,
    )
    lim = Limits.from_absolute(a)
    assert lim.max == Resources(INF, 20, INF)
    assert lim.used == Resources(3, 6, 12288)


def test_budget_subtracts_unmanaged_and_owned_servers():
    # project: 10 instances / 20 cores; 3 servers (6 cores) in use, 1 of them ours at read time
    lim = Limits(Resources(10, 20, 51200), Resources(3, 6, 12288))
    ours_then = MEDIUM.resources
    ours_now = MEDIUM.resources * 2  # we started one more since the read
    left = budget(lim, ours_then, ours_now, pool_caps(max_servers=8))
    # unmanaged = 2 servers / 4 cores; cloud left = 10-2-2 = 6 instances, 20-4-4 = 12 cores
    assert left.instances == 6 and left.cores == 12
    assert how_many_fit(left, MEDIUM) == 6
    assert how_many_fit(left, LARGE) == 3


def test_budget_pool_caps_win_when_smaller():
    lim = Limits(Resources(100, 1000, 10**7), Resources(0, 0, 0))
    left = budget(lim, Resources(), MEDIUM.resources, pool_caps(4, max_cores=6))
    assert left.instances == 3 and left.cores == 4
    assert how_many_fit(left, MEDIUM) == 2


def test_budget_never_negative_and_without_limits():
    lim = Limits(Resources(2, 4, 8192), Resources(5, 10, 20000))
    assert budget(lim, Resources(), Resources(), pool_caps(4)) == Resources(0, 0, 0)
    assert budget(None, Resources(), MEDIUM.resources, pool_caps(3)).instances == 2


def test_slots_follow_cores_and_memory():
    assert slots(MEDIUM, 1, 1000) == 2
    assert slots(MEDIUM, 1, 3000) == 1
    assert slots(MEDIUM, 2, 0) == 1
    assert slots(MEDIUM, 3, 0) == 0
    assert slots(LARGE, 1, 2000) == 4


def test_how_many_fit_refuses_unbounded():
    with pytest.raises(ValueError):
        how_many_fit(Resources(INF, INF, INF), MEDIUM)


def test_quota_cache_ttl_and_stale_fallback():
    calls = []
    now = [0.0]

    def reader():
        calls.append(now[0])
        if len(calls) == 3:
            raise RuntimeError("api down")
        return Limits(Resources(len(calls), 1, 1), Resources()), Resources()

    qc = QuotaCache(reader, ttl=10, clock=lambda: now[0])
    assert qc.get()[0].max.instances == 1
    now[0] = 5
    assert qc.get()[0].max.instances == 1 and len(calls) == 1
    now[0] = 11
    assert qc.get()[0].max.instances == 2
    now[0] = 30
    assert qc.get()[0].max.instances == 2 and qc.errors == 1  # stale value kept
    qc.invalidate()
    assert qc.get()[0].max.instances == 4
