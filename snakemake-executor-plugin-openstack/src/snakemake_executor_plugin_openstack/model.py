"""The pool's data model: jobs, servers, their states, and the pool's configuration.

Plain data only: the state machines that move servers through these states live in
``lifecycle.py``, the job runner in ``jobs.py``, the decisions over them in ``scheduling.py``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Optional

from .quota import Flavor
from .settings import ExecutorSettings, split_list
from .ssh import JobIO, WorkerShell


class JobState:
    QUEUED = "queued"
    STAGING = "staging"
    RUNNING = "running"
    FETCHING = "fetching"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class PoolJob:
    """One submission (a Snakemake job or group job) as the pool sees it."""

    key: str
    name: str
    kind: str  # runtime-estimate class (rule names)
    cores: int
    mem_mb: int
    est_seconds: float
    io: JobIO
    state: str = JobState.QUEUED
    error: Optional[str] = None
    server: Optional["Server"] = None
    vm_losses: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    servers_used: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Backlog:
    """Pool work the workflow still holds beyond what was submitted (the planner's input)."""

    work_seconds: float = 0.0  # expected run time, summed over the submissions to come
    units: int = 0  # submissions to come (a group job is one)
    longest: float = 0.0  # seconds, the longest of them
    cores: int = 1  # the largest core demand among them


class ServerState:
    # launch state machine; the names follow Nodepool's OpenStack state machines
    # (nodepool/driver/openstack/adapter.py): a "submitting" state while the API call is out
    START = "start"
    SUBMIT = "submitting create"
    BUILDING = "building"
    HOSTKEY = "waiting for host key"
    CONNECTING = "connecting ssh"
    READY = "ready"
    # delete state machine
    DELETE_SUBMIT = "submitting delete"
    DELETING = "deleting"
    DELETED = "deleted"

    LIVE = (START, SUBMIT, BUILDING, HOSTKEY, CONNECTING, READY)
    BOOTING = (START, SUBMIT, BUILDING, HOSTKEY, CONNECTING)


class LaunchFailed(Exception):
    def __init__(self, msg: str, quota: bool = False, fatal: bool = False):
        super().__init__(msg)
        self.quota = quota
        # a configuration error (unknown security group, jump host key): no other server can
        # succeed, so the pool stops launching and fails the queued jobs with this message
        self.fatal = fatal


@dataclass
class Server:
    name: str
    flavor: Flavor
    attempt: int = 1
    id: Optional[str] = None
    state: str = ServerState.START
    address: Optional[str] = None
    shell: Optional[WorkerShell] = None
    jobs: set = field(default_factory=set)
    used_cores: int = 0
    used_mem: int = 0
    submissions: int = 0
    t_create: float = field(default_factory=time.monotonic)
    t_active: Optional[float] = None
    t_ready: Optional[float] = None
    t_gone: Optional[float] = None
    last_active: float = field(default_factory=time.monotonic)
    broken: bool = False
    retired: bool = False

    @property
    def free_cores(self) -> int:
        return self.flavor.vcpus - self.used_cores

    @property
    def free_mem(self) -> int:
        return self.flavor.ram - self.used_mem

    def take(self, job: PoolJob) -> None:
        """Reserve the job's slot on this server."""
        self.jobs.add(job.key)
        self.used_cores += job.cores
        self.used_mem += job.mem_mb
        self.submissions += 1

    def release(self, job: PoolJob) -> None:
        if job.key in self.jobs:
            self.jobs.discard(job.key)
            self.used_cores -= job.cores
            self.used_mem -= job.mem_mb
        self.last_active = time.monotonic()


@dataclass(kw_only=True)
class PoolConfig(ExecutorSettings):
    """The executor settings plus what was resolved from them on the cloud.

    A subclass rather than a copy, so every default is declared once (in ``settings.py``).
    The settings' own fields keep their user-facing form (``security_groups`` is the
    comma-separated string, ``user_data`` the file name); the resolved values have own names.
    """

    image_id: str
    flavors: list[Flavor]
    user_data_text: Optional[str] = None  # the content of the ``user_data`` file
    poll_interval: float = 0.5  # seconds between state-machine polls (not a user setting)

    def __post_init__(self):
        # a server needs at least one attempt; 0 used to mean the same
        self.launch_retries = max(1, self.launch_retries)

    @classmethod
    def from_settings(cls, settings: ExecutorSettings, **resolved) -> "PoolConfig":
        values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(ExecutorSettings)}
        return cls(**values, **resolved)

    @property
    def security_group_list(self) -> Optional[list[str]]:
        return split_list(self.security_groups) or None

    @property
    def key_path(self) -> Optional[str]:
        return os.path.expanduser(self.private_key) if self.private_key else None
