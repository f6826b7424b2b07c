"""Quota arithmetic: what the pool may still start.

Budget for new servers = min(cloud limits - servers the pool does not own - servers the pool owns,
pool caps (max servers / cores / RAM) - servers the pool owns).  Limits are read from the cloud,
cached, and -1 means unlimited.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

INF = math.inf


@dataclass(frozen=True)
class Resources:
    instances: float = 0
    cores: float = 0
    ram: float = 0

    def __add__(self, o: "Resources") -> "Resources":
        return Resources(self.instances + o.instances, self.cores + o.cores, self.ram + o.ram)

    def __sub__(self, o: "Resources") -> "Resources":
        return Resources(self.instances - o.instances, self.cores - o.cores, self.ram - o.ram)

    def __mul__(self, n: float) -> "Resources":
        return Resources(self.instances * n, self.cores * n, self.ram * n)

    __rmul__ = __mul__

    def min(self, o: "Resources") -> "Resources":
        return Resources(
            min(self.instances, o.instances), min(self.cores, o.cores), min(self.ram, o.ram)
        )

    def non_negative(self) -> bool:
        return self.instances >= 0 and self.cores >= 0 and self.ram >= 0

    def clamp0(self) -> "Resources":
        return Resources(max(0, self.instances), max(0, self.cores), max(0, self.ram))


UNLIMITED = Resources(INF, INF, INF)


def _lim(v) -> float:
    if v is None or v < 0:
        return INF
    return float(v)


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    vcpus: int
    ram: int  # MB

    @property
    def resources(self) -> Resources:
        return Resources(1, self.vcpus, self.ram)


@dataclass(frozen=True)
class Limits:
    """Absolute limits and project-wide usage as read at one moment."""

    max: Resources
    used: Resources

    @classmethod
    def from_absolute(cls, a) -> "Limits":
        """From openstacksdk's ``get_limits().absolute`` (or any object with those names)."""
        mx = Resources(_lim(a.instances), _lim(a.total_cores), _lim(a.total_ram))
        used = Resources(a.instances_used or 0, a.total_cores_used or 0, a.total_ram_used or 0)
        return cls(mx, used)


def pool_caps(max_servers: int, max_cores: int = 0, max_ram_mb: int = 0) -> Resources:
    """Pool caps from settings; 0 (or less) for cores/RAM means no cap."""
    return Resources(
        max(0, max_servers),
        max_cores if max_cores and max_cores > 0 else INF,
        max_ram_mb if max_ram_mb and max_ram_mb > 0 else INF,
    )


def budget(
    limits: Optional[Limits], owned_at_read: Resources, owned_now: Resources, caps: Resources
) -> Resources:
    """Resources still available for new servers of this pool.

    ``owned_at_read``: what the pool owned when ``limits`` were read (so that project usage
    minus it is the usage of servers the pool does not own); ``owned_now``: what it owns now.
    """
    pool_left = caps - owned_now
    if limits is None:
        return pool_left.clamp0()
    unmanaged = (limits.used - owned_at_read).clamp0()
    cloud_left = limits.max - unmanaged - owned_now
    return pool_left.min(cloud_left).clamp0()


def how_many_fit(left: Resources, flavor: Flavor) -> int:
    """How many servers of ``flavor`` fit in ``left``."""
    n = left.instances
    if flavor.vcpus > 0:
        n = min(n, left.cores / flavor.vcpus)
    if flavor.ram > 0:
        n = min(n, left.ram / flavor.ram)
    if n == INF:
        raise ValueError("unbounded budget: set max_servers")
    return max(0, int(math.floor(n + 1e-9)))


def slots(flavor: Flavor, cores: int, mem_mb: int) -> int:
    """Concurrent jobs of (cores, mem_mb) one server of ``flavor`` can run."""
    c = max(1, cores)
    n = flavor.vcpus // c
    if mem_mb and mem_mb > 0:
        n = min(n, flavor.ram // mem_mb)
    return max(0, n)


def fits(free_cores: int, free_mem: int, cores: int, mem_mb: int) -> bool:
    return cores <= free_cores and (mem_mb or 0) <= free_mem


class QuotaCache:
    """Caches the project's limits for ``ttl`` seconds; keeps the stale value if a refresh fails.

    ``reader`` returns ``(Limits, owned_at_read)``.
    """

    def __init__(
        self, reader: Callable[[], tuple[Limits, Resources]], ttl: float, clock=time.monotonic
    ):
        self.reader = reader
        self.ttl = ttl
        self.clock = clock
        self.value: Optional[tuple[Limits, Resources]] = None
        self.read_at: Optional[float] = None
        self.errors = 0

    def invalidate(self) -> None:
        self.read_at = None

    def stale(self) -> bool:
        return self.read_at is None or self.clock() - self.read_at >= self.ttl

    def get(self) -> Optional[tuple[Limits, Resources]]:
        if self.stale():
            try:
                self.value = self.reader()
                self.read_at = self.clock()
            except Exception:
                self.errors += 1
                if self.value is None:
                    raise
        return self.value
