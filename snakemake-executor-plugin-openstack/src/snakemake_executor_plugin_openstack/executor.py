"""The Snakemake executor: maps Snakemake jobs onto the VM pool."""

from __future__ import annotations

import atexit
import itertools
import os
import re
import threading
import time
from typing import AsyncGenerator, List, Optional

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.real import RealExecutor
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface

from . import cloud as cl
from .model import Backlog, JobState, PoolConfig, PoolJob
from .pool import Pool
from .settings import split_list
from .ssh import JobIO, tar_paths

MAX_SOURCE_BYTES = 10 * 1024 * 1024


def declared_seconds(resources) -> Optional[float]:
    """A job's declared runtime in seconds: the ``runtime_s`` resource (seconds), else
    Snakemake's ``runtime`` (whole minutes, so at least 60 s), else None."""
    for name, scale in (("runtime_s", 1.0), ("runtime", 60.0)):
        try:
            value = float(resources.get(name, 0) or 0)
        except (TypeError, ValueError):
            value = 0.0
        if value > 0:
            return value * scale
    return None


def submission_seconds(member_seconds: list, cores: int, default: float) -> float:
    """Expected run time of one submission whose members declared ``member_seconds`` (None:
    not declared). A group's members share the submission's cores; members without an
    estimate ride along with the declared ones. Nothing declared: ``default`` per member."""
    declared = [s for s in member_seconds if s]
    if declared:
        return max(max(declared), sum(declared) / max(1, cores))
    return default * max(1.0, len(member_seconds) / max(1, cores))


def split_outputs(job, members) -> tuple[list[str], list[str]]:
    """(outputs that must exist after the job, outputs brought back only if present).

    Required: the job's own outputs and every member's non-temp outputs (a group's internal
    results are checked on the head too). Optional: a group's internal temp() files, which the
    remote Snakemake deletes once no member needs them, and benchmarks."""
    external = {str(f) for f in job.output}
    required, optional = [], []
    for j in members:
        for f in j.output:
            temp = bool(getattr(f, "flags", {}).get("temp"))
            (optional if temp and str(f) not in external else required).append(str(f))
    optional += [str(j.benchmark) for j in members if getattr(j, "benchmark", None)]
    return list(dict.fromkeys(required)), list(dict.fromkeys(optional))


class Executor(RemoteExecutor):
    def __post_init__(self):
        s = self.workflow.executor_settings
        try:
            s.validate()
        except ValueError as e:
            raise WorkflowError(str(e)) from e
        self._shutdown_done = False
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        try:  # the first calls that need the cloud: its name, endpoint and credentials
            conn = cl.connect(s.cloud)
            adapter = cl.CloudAdapter(conn, s.network)
            flavors = [adapter.find_flavor(f) for f in split_list(s.flavor)]
        except Exception as e:
            # one line the user can act on, not openstacksdk's 30-line chain (kept in a file)
            details = cl.write_error_chain(e, os.path.join(".snakemake", "openstack"))
            raise WorkflowError(cl.describe_connect_error(e, s.cloud) + details) from None
        pubkey = None
        try:
            import asyncssh

            key = asyncssh.read_private_key(os.path.expanduser(s.private_key))
            pubkey = key.export_public_key().decode()
        except Exception as e:
            raise WorkflowError(
                f"openstack executor: cannot read private key {s.private_key}: {e}"
            ) from e
        try:
            adapter.ensure_keypair(s.keypair, pubkey)
        except RuntimeError as e:
            raise WorkflowError(f"openstack executor: {e}") from e
        user_data = None
        if s.user_data:
            with open(s.user_data) as f:
                user_data = f.read()
        self.cfg = PoolConfig.from_settings(
            s, image_id=adapter.find_image_id(s.image), flavors=flavors, user_data_text=user_data
        )
        self.max_vcpus = max(f.vcpus for f in flavors)
        self.max_ram = max(f.ram for f in flavors)
        self.default_job_seconds = s.default_job_seconds
        self.env_names = split_list(s.envvars_from_head)
        self.pool = Pool(self.cfg, adapter, self._log, backlog=self._backlog)
        self.run_dir = os.path.join(".snakemake", "openstack", self.pool.run_id)
        os.makedirs(self.run_dir, exist_ok=True)
        self._backlog_work = Backlog()
        self._unit_cores_cache: dict[int, int] = {}
        self._pending: dict = {}  # job not yet submitted -> expected seconds of its submission
        self._backlog_at = 0.0
        self._submitted_jobs: set = set()  # every Snakemake job handed to the pool
        self._declared_by_rule: dict[str, Optional[float]] = {}
        self._sources_ready = False
        self.next_seconds_between_status_checks = s.status_interval
        # the DAG is known before the first job is handed over: start booting right away
        self._update_backlog(force=True)
        self.pool.start()
        atexit.register(self._atexit)
        self.logger.info(
            f"openstack executor: run {self.pool.run_id}, flavors "
            + ", ".join(f"{f.name}({f.vcpus} vCPU, {f.ram} MB)" for f in flavors)
            + f", max {s.max_servers} server(s)"
        )

    # ------------------------------------------------------------------
    def _log(self, level: str, msg: str) -> None:
        getattr(self.logger, level if level in ("info", "warning", "error", "debug") else "info")(
            msg
        )

    def _demand(self, job: JobExecutorInterface) -> tuple[int, int]:
        res = job.resources
        cores = int(res.get("_cores", getattr(job, "threads", 1)) or 1)
        mem = int(res.get("mem_mb", 0) or 0)
        return max(1, min(cores, self.max_vcpus)), max(0, min(mem, self.max_ram))

    def get_job_args(self, job: JobExecutorInterface, **kwargs):
        # the job gets exactly the cores its slot reserves on the VM (not 'all')
        cores, _ = self._demand(job)
        return RealExecutor.get_job_args(self, job, cores=cores)

    def additional_general_args(self):
        # Without a shared filesystem Snakemake appends `--directory <the head's workdir>`
        # when the head ran with -d (spawn_jobs.py, skipped only if assume_common_workdir).
        # On a worker that path is empty or missing: the job must run where it was staged,
        # its own folder, which is the current directory when cmd.sh starts. The last
        # --directory on the command line wins. (A string: format_job_exec joins strings,
        # as the local executor's override returns one, despite the base's "a list".)
        return "--directory ."

    def _kind(self, job) -> str:
        return ",".join(sorted(set(job.rules)))

    def _declared(self, job) -> Optional[float]:
        try:
            return declared_seconds(job.resources)
        except Exception:  # resources that need inputs not there yet: no estimate
            return None

    def _estimate(self, job) -> float:
        """Seconds one submission is expected to run: measured for its kind in this run,
        else from its members' declared runtimes, else ``default_job_seconds``."""
        measured = self.pool.runtime_estimate(self._kind(job), None)
        if measured is not None:
            return measured
        members = list(job.jobs) if job.is_group() else [job]
        cores, _ = self._demand(job)
        declared = [self._declared(j) for j in members]
        return submission_seconds(declared, cores, self.default_job_seconds)

    def _rule_seconds(self, job) -> Optional[float]:
        """Declared seconds of a job not yet submitted, cached per rule: the backlog is
        summed over the whole DAG every few seconds, and runtimes are mostly per rule."""
        rule = job.rule.name
        if rule not in self._declared_by_rule:
            self._declared_by_rule[rule] = self._declared(job)
        declared = self._declared_by_rule[rule]
        return declared if declared else self.pool.runtime_estimate(rule, None)

    def _unit_cores(self, job) -> int:
        try:
            return self._demand(job)[0]
        except Exception:  # resources that need inputs not there yet
            return 1

    def _update_backlog(self, force: bool = False):
        """Pool work the DAG still holds beyond what was submitted (the planner's input), as
        the submissions it will come in: one per group instance, one per other job. Local
        rules (localrules: the workflow's write-back, tables, report, `all`) run on this
        machine and are not pool work."""
        now = time.monotonic()
        if not force and now - self._backlog_at < 5.0:
            return
        self._backlog_at = now
        dag = self.workflow.dag
        try:
            units: dict[int, tuple] = {}
            for j in dag.needrun_jobs():
                if j.is_local or j in self._submitted_jobs:
                    continue
                group = dag.get_job_group(j)
                unit = group if group is not None else j
                units.setdefault(id(unit), (unit, []))[1].append(j)
        except Exception:
            return
        seconds, cores = [], []
        self._pending = {}
        for key, (unit, members) in units.items():
            if key not in self._unit_cores_cache:  # a group's cores: computed once
                self._unit_cores_cache[key] = self._unit_cores(unit)
            c = self._unit_cores_cache[key]
            cores.append(c)
            declared = [self._rule_seconds(m) for m in members]
            seconds.append(submission_seconds(declared, c, self.default_job_seconds))
            for m in members:
                self._pending[m] = seconds[-1]
        self._backlog_work = Backlog(
            work_seconds=sum(seconds),
            units=len(seconds),
            longest=max(seconds, default=0.0),
            cores=max(cores, default=1),
        )

    def _take_from_backlog(self, members) -> None:
        """A submission leaves the backlog at once (the next full count may be seconds away:
        counted twice, its work would make the planner boot for nothing). Its members are one
        unit of the last count, each mapped to that unit's seconds."""
        seconds = [self._pending.pop(m) for m in members if m in self._pending]
        if seconds:
            b = self._backlog_work
            self._backlog_work = Backlog(
                work_seconds=max(0.0, b.work_seconds - seconds[0]),
                units=max(0, b.units - 1),
                longest=b.longest,
                cores=b.cores,
            )

    def _backlog(self) -> Backlog:
        return self._backlog_work

    def _prepare_sources(self):
        files = []
        for f in sorted(self.workflow.dag.get_sources()):
            if f.startswith("..") or os.path.isabs(f) or not os.path.isfile(f):
                continue
            if os.path.getsize(f) > MAX_SOURCE_BYTES:
                self.logger.warning(f"openstack executor: source {f} larger than 10 MB, not staged")
                continue
            files.append(f)
        data = tar_paths(files)
        self.pool.set_sources(data)
        self.logger.info(
            f"openstack executor: {len(files)} source files ({len(data) // 1024} KiB) "
            "staged per server"
        )
        self._sources_ready = True

    def _secret_env(self) -> dict:
        env = {}
        for name in self.env_names:
            if name in os.environ:
                env[name] = os.environ[name]
        env.update(self.envvars() or {})
        return env

    # ------------------------------------------------------------------
    def run_job(self, job: JobExecutorInterface):
        with self._lock:
            if not self._sources_ready:
                self._prepare_sources()
        cores, mem = self._demand(job)
        key = str(next(self._counter))
        members = list(job.jobs) if job.is_group() else [job]
        required, optional = split_outputs(job, members)
        logs = [str(f) for f in job.log]
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", job.name)[:60]
        io_ = JobIO(
            job_key=key,
            command=self.format_job_exec(job),
            env=self._secret_env(),
            inputs=[str(f) for f in job.input],
            outputs=required,
            optional_outputs=optional,
            logs=logs,
            local_log=os.path.join(self.run_dir, f"{safe}-{key}.log"),
            path_prefix=self.cfg.remote_path_prefix,
        )
        pj = PoolJob(
            key=key,
            name=job.name if not job.is_group() else f"group {job.name}",
            kind=self._kind(job),
            cores=cores,
            mem_mb=mem,
            est_seconds=self._estimate(job),
            io=io_,
        )
        self._submitted_jobs.update(members)
        self._take_from_backlog(members)
        self._update_backlog()
        self.pool.submit(pj)
        self.report_job_submission(SubmittedJobInfo(job, external_jobid=key, aux={"pj": pj}))

    async def check_active_jobs(
        self, active_jobs: List[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        for j in active_jobs:
            pj: PoolJob = j.aux["pj"]
            if pj.state == JobState.DONE:
                self.report_job_success(j)
            elif pj.state in (JobState.FAILED, JobState.CANCELLED):
                msg = self._failure_message(pj)
                self.logger.error(msg)
                self.report_job_error(j, msg=msg, aux_logs=[pj.io.local_log] + list(pj.io.logs))
            else:
                yield j

    @staticmethod
    def _tail(path: str, n: int = 2000) -> str:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - n))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _failure_message(self, pj: PoolJob) -> str:
        parts = [f"openstack: {pj.name} failed: {pj.error}"]
        for lf in pj.io.logs:
            t = self._tail(lf, 1500)
            if t:
                parts.append(f"--- {lf} (job log, copied back) ---\n{t.rstrip()}")
        t = self._tail(pj.io.local_log, 1500)
        if t:
            parts.append(f"--- {pj.io.local_log} (remote output) ---\n{t.rstrip()}")
        return "\n".join(parts) + "\n"

    def cancel_jobs(self, active_jobs: List[SubmittedJobInfo]):
        try:
            self.pool.cancel_all(timeout=60)
        except Exception as e:
            self.logger.error(f"openstack executor: cancelling remote jobs failed: {e}")

    def shutdown(self):
        super().shutdown()
        self._shutdown_pool()

    def _shutdown_pool(self):
        with self._lock:
            if self._shutdown_done:
                return
            self._shutdown_done = True
        try:
            self.pool.shutdown(timeout=self.cfg.delete_timeout * 3 + 120)
        finally:
            try:
                self.pool.stats.write_json(
                    os.path.join(self.run_dir, "summary.json"), self.pool.servers
                )
            except OSError:
                pass

    def _atexit(self):
        try:
            self._shutdown_pool()
        except Exception:
            pass
