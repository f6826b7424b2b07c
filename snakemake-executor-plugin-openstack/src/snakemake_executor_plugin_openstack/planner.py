"""Boot planning with PuLP: how many servers of which flavor to start.

Model (a small MILP solved with CBC):

* ``W``: remaining work in slot-seconds (queued + running + not yet submitted jobs, estimated).
* Existing server ``i`` (ready or booting) has ``s_i`` slots and is available in ``a_i`` seconds.
* Candidate new server ``k`` of flavor ``f`` (binary ``y_fk``) has ``s_f`` slots and is available
  after the flavor's boot time ``b_f``.
* ``w`` is the work each server takes: ``w <= s * (T - a)`` if used, ``w = 0`` otherwise,
  ``sum w = W``; ``T`` (the makespan) is at least the longest single job.
* Budget: new servers fit in the remaining quota / pool caps (instances, cores, RAM).
* At most as many new servers as the submissions not covered by existing slots can fill.
* Objective: minimise ``T`` plus a small price per booted server.  A server that would finish
  booting after the work is done cannot take work, so it only adds cost and is never chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional
from .quota import Flavor, Resources, how_many_fit, slots


@dataclass
class ExistingServer:
    slots: int
    available_in: float = 0.0  # seconds until it can take work (0: ready)


@dataclass
class PlanRequest:
    work_seconds: float  # slot-seconds of remaining work
    longest_job: float  # seconds
    cores: int  # per-job demand used to size slots
    mem_mb: int
    flavors: list[Flavor]
    boot_seconds: dict[str, float]  # flavor name -> expected create-to-ready time
    budget: Resources
    existing: list[ExistingServer] = field(default_factory=list)
    boot_price: float = 0.02  # fraction of a boot time charged per new server
    # submissions the work comes in (None: any number). Work is not divisible below one
    # submission: servers beyond those the submissions can fill would boot for nothing
    units: Optional[int] = None


@dataclass
class Plan:
    boots: dict[str, int]
    makespan: float
    status: str

    @property
    def total(self) -> int:
        return sum(self.boots.values())


def plan_boots(req: PlanRequest, time_limit: float = 1.0) -> Plan:
    """Solve the boot plan; after ``time_limit`` seconds CBC returns its best plan so far."""
    import pulp  # here, not at module level: every Snakemake start imports this plugin

    if req.work_seconds <= 0:
        return Plan({}, 0.0, "no work")
    W = float(req.work_seconds)
    cand: list[tuple[Flavor, int, float, int]] = []  # flavor, slots, boot, max count
    unplaced = None
    if req.units is not None:
        unplaced = max(0, req.units - sum(e.slots for e in req.existing if e.slots > 0))
    for f in req.flavors:
        s = slots(f, req.cores, req.mem_mb)
        if s <= 0:
            continue
        n = how_many_fit(req.budget, f)
        if unplaced is not None:
            n = min(n, math.ceil(unplaced / s))
        if n > 0:
            cand.append((f, s, float(req.boot_seconds.get(f.name, 120.0)), n))
    existing = [e for e in req.existing if e.slots > 0]
    if not cand and not existing:
        return Plan({}, math.inf, "no capacity")
    if not cand:
        return Plan({}, math.nan, "nothing to boot")

    prob = pulp.LpProblem("boot_plan", pulp.LpMinimize)
    T = pulp.LpVariable("T", lowBound=max(0.0, req.longest_job))
    M = W
    terms = []
    cost = []
    for i, e in enumerate(existing):
        u = pulp.LpVariable(f"u_{i}", cat="Binary")
        w = pulp.LpVariable(f"we_{i}", lowBound=0)
        # if unused (u = 0, so w = 0) the first bound must not restrict T: relax by slots * a
        prob += w <= e.slots * (T - e.available_in) + e.slots * e.available_in * (1 - u)
        prob += w <= M * u
        terms.append(w)
    y_by_flavor: dict[str, list] = {}
    min_boot = min(c[2] for c in cand)
    for f, s, b, n in cand:
        ys = []
        for k in range(n):
            y = pulp.LpVariable(f"y_{f.id}_{k}", cat="Binary")
            w = pulp.LpVariable(f"wn_{f.id}_{k}", lowBound=0)
            prob += w <= s * (T - b) + s * b * (1 - y)  # tight big-M: w = 0 when y = 0
            prob += w <= M * y
            if ys:
                prob += y <= ys[-1]  # symmetry: boot the k-th only if the (k-1)-th
            ys.append(y)
            terms.append(w)
            cost.append(req.boot_price * b * y)
        y_by_flavor[f.name] = ys
    prob += pulp.lpSum(terms) == W
    # budget over all flavors together
    for attr in ("instances", "cores", "ram"):
        cap = getattr(req.budget, attr)
        if cap != math.inf:
            use = {"instances": lambda f: 1, "cores": lambda f: f.vcpus, "ram": lambda f: f.ram}[
                attr
            ]
            prob += (
                pulp.lpSum(use(f) * y for f, _, _, _ in cand for y in y_by_flavor[f.name]) <= cap
            )
    # if there is no existing capacity, T must cover at least one boot
    if not existing:
        prob += T >= min_boot + req.longest_job
    prob += T + pulp.lpSum(cost)
    # a plan within 1% of the optimum is as good as the estimates it rests on
    status = prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=0.01))
    st = pulp.LpStatus[status]
    if st not in ("Optimal",):
        return Plan({}, math.nan, st)
    boots = {}
    for name, ys in y_by_flavor.items():
        n = sum(int(round(y.value() or 0)) for y in ys)
        if n:
            boots[name] = n
    return Plan(boots, float(T.value()), st)
