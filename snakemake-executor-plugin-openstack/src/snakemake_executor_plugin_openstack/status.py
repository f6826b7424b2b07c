"""Counters of a pool run, the one-line status and the end-of-run summary."""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field

from .quota import Resources


@dataclass
class PoolStats:
    jobs_submitted: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    servers_created: int = 0
    servers_deleted: int = 0
    boot_failures: int = 0
    launches_abandoned: int = 0
    quota_rejections: int = 0
    quota_rejected_at_create: int = 0  # Nova's 403 form
    quota_error_servers: int = 0  # Nova's ERROR-after-recheck form
    vm_losses: int = 0
    resubmissions: int = 0
    delete_failures: int = 0
    leaks_reaped: int = 0  # servers of dead runs deleted when the pool started
    cancelled_remote: int = 0
    plans: int = 0
    vm_seconds: float = 0.0
    # the planner's view against reality, over the submissions that finished: the estimate
    # each was planned with, and its measured run time (both in slot-seconds)
    predicted_work_seconds: float = 0.0
    actual_work_seconds: float = 0.0
    first_submit: float = 0.0  # wall clock (time.time()) of the first submission
    last_done: float = 0.0  # wall clock when the last job finished
    boot_seconds: list = field(default_factory=list)
    per_server: dict = field(default_factory=dict)
    timings: dict = field(
        default_factory=lambda: {"stage": [], "run": [], "fetch": [], "cleanup": []}
    )

    def add_work(self, predicted: float, actual: float) -> None:
        self.predicted_work_seconds += predicted
        self.actual_work_seconds += actual

    def add_timings(self, t: dict) -> None:
        for k, v in t.items():
            self.timings.setdefault(k, []).append(v)

    def as_dict(self, servers=()) -> dict:
        d = asdict(self)
        now = time.monotonic()
        vm_s = self.vm_seconds + sum(now - s.t_create for s in servers if s.t_gone is None and s.id)
        d["vm_minutes"] = round(vm_s / 60.0, 3)
        d["jobs_per_vm"] = (
            round(statistics.mean(self.per_server.values()), 2) if self.per_server else 0.0
        )
        d["mean_boot_seconds"] = (
            round(statistics.mean(self.boot_seconds), 2) if self.boot_seconds else None
        )
        d["mean_timings"] = {k: round(statistics.mean(v), 3) for k, v in self.timings.items() if v}
        del d["timings"]
        del d["boot_seconds"]
        return d

    def summary(self, servers=()) -> str:
        d = self.as_dict(servers)
        mt = d["mean_timings"]
        return (
            "openstack summary: "
            f"{d['vm_minutes']:.2f} VM-minutes, {self.servers_created} server(s) created, "
            f"{self.servers_deleted} deleted, jobs per VM {d['jobs_per_vm']:.2f} "
            f"({self.jobs_done} done, {self.jobs_failed} failed), "
            f"boot failures {self.boot_failures}, "
            f"quota rejections {self.quota_rejections}, VM losses {self.vm_losses} "
            f"(resubmitted {self.resubmissions}), mean boot {d['mean_boot_seconds']}s, "
            f"work predicted {self.predicted_work_seconds:.1f}s / "
            f"actual {self.actual_work_seconds:.1f}s, "
            f"mean per-submission stage/run/fetch {mt.get('stage', 0):.2f}/{mt.get('run', 0):.2f}/"
            f"{mt.get('fetch', 0):.2f}s"
        )

    def write_json(self, path: str, servers=()) -> None:
        with open(path, "w") as f:
            json.dump(self.as_dict(servers), f, indent=1, sort_keys=True)


def status_line(servers, n_queued: int, stats: PoolStats) -> str:
    """``openstack pool: servers booting=.. ready=.. busy=.. deleting=.. | jobs ...``."""
    from .model import ServerState  # model imports ssh; keep this module light

    booting = sum(1 for s in servers if s.state in ServerState.BOOTING)
    ready = [s for s in servers if s.state == ServerState.READY]
    busy = sum(1 for s in ready if s.jobs)
    deleting = sum(
        1 for s in servers if s.state in (ServerState.DELETE_SUBMIT, ServerState.DELETING)
    )
    running = sum(len(s.jobs) for s in servers)
    return (
        f"openstack pool: servers booting={booting} ready={len(ready)} busy={busy} "
        f"deleting={deleting} | jobs queued={n_queued} running={running} "
        f"done={stats.jobs_done} failed={stats.jobs_failed}"
    )


def fmt_resources(r: Resources) -> str:
    def f(v):
        return "inf" if v == math.inf else f"{v:g}"

    return f"instances={f(r.instances)} cores={f(r.cores)} ram={f(r.ram)}"
