"""Counters of a pool run and the end-of-run summary."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field


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
    cancelled_remote: int = 0
    plans: int = 0
    vm_seconds: float = 0.0
    first_submit: float = 0.0  # wall clock (time.time()) of the first submission
    last_done: float = 0.0  # wall clock when the last job finished
    boot_seconds: list = field(default_factory=list)
    per_server: dict = field(default_factory=dict)
    timings: dict = field(default_factory=lambda: {"stage": [], "run": [], "fetch": [], "cleanup": []})

    def add_timings(self, t: dict) -> None:
        for k, v in t.items():
            self.timings.setdefault(k, []).append(v)

    def as_dict(self, servers=()) -> dict:
        d = asdict(self)
        now = time.monotonic()
        vm_s = self.vm_seconds + sum(now - s.t_create for s in servers if s.t_gone is None and s.id)
        d["vm_minutes"] = round(vm_s / 60.0, 3)
        d["jobs_per_vm"] = round(statistics.mean(self.per_server.values()), 2) if self.per_server else 0.0
        d["mean_boot_seconds"] = round(statistics.mean(self.boot_seconds), 2) if self.boot_seconds else None
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
            f"({self.jobs_done} done, {self.jobs_failed} failed), boot failures {self.boot_failures}, "
            f"quota rejections {self.quota_rejections}, VM losses {self.vm_losses} "
            f"(resubmitted {self.resubmissions}), mean boot {d['mean_boot_seconds']}s, "
            f"mean per-submission stage/run/fetch {mt.get('stage', 0):.2f}/{mt.get('run', 0):.2f}/"
            f"{mt.get('fetch', 0):.2f}s"
        )

    def write_json(self, path: str, servers=()) -> None:
        with open(path, "w") as f:
            json.dump(self.as_dict(servers), f, indent=1, sort_keys=True)
