"""The Snakemake executor: maps Snakemake jobs onto the VM pool."""

from __future__ import annotations

import atexit
import itertools
import os
import re
import threading
import time
from typing import AsyncGenerator, List

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.real import RealExecutor
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface

from . import cloud as cl
from .model import JobState, PoolConfig, PoolJob
from .pool import Pool
from .settings import split_list
from .ssh import JobIO, tar_paths

MAX_SOURCE_BYTES = 10 * 1024 * 1024


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
        conn = cl.connect(s.cloud)
        adapter = cl.CloudAdapter(conn, s.network)
        flavors = [adapter.find_flavor(f) for f in split_list(s.flavor)]
        pubkey = None
        try:
            import asyncssh

            key = asyncssh.read_private_key(os.path.expanduser(s.private_key))
            pubkey = key.export_public_key().decode()
        except Exception as e:
            raise WorkflowError(f"openstack executor: cannot read private key {s.private_key}: {e}")
        try:
            adapter.ensure_keypair(s.keypair, pubkey)
        except RuntimeError as e:
            raise WorkflowError(f"openstack executor: {e}")
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
        self._backlog_work = 0.0
        self._backlog_at = 0.0
        self._submitted_members = {}
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

    def _estimate(self, job) -> float:
        rt = job.resources.get("runtime", 0)
        try:
            rt = float(rt or 0)
        except (TypeError, ValueError):
            rt = 0
        if rt > 0:
            return rt * 60.0
        n = len(list(job.jobs)) if job.is_group() else 1
        cores, _ = self._demand(job)
        default = self.default_job_seconds * max(1.0, n / cores)
        return self.pool.runtime_estimate(self._kind(job), default)

    def _update_backlog(self, force: bool = False):
        """Slot-seconds of work the DAG still holds beyond what was submitted (planner input)."""
        now = time.monotonic()
        if not force and now - self._backlog_at < 5.0:
            return
        self._backlog_at = now
        try:
            remaining = sum(1 for _ in self.workflow.dag.needrun_jobs())
        except Exception:
            return
        in_flight = sum(
            n
            for key, n in self._submitted_members.items()
            if not self.pool.jobs.get(key) or not self.pool.jobs[key].finished
        )
        est = self.pool.runtime_estimate("*", self.default_job_seconds)
        self._backlog_work = max(0, remaining - in_flight) * est

    def _backlog(self) -> float:
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
        self._submitted_members[key] = len(members)
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
