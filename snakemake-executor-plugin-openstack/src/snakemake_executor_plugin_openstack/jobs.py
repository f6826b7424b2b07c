"""The job runner: one submission on one server (stage, run, fetch back, clean up).

``JobRunner`` is a mixin of ``Pool``: it uses the pool's ``queue``, ``jobs``, ``servers``,
``stats``, ``log``, ``run_id``, ``_sources`` and its ``_spawn``/``wake`` plumbing, and
``_server_broken`` from ``ServerLifecycle`` when a server is lost under a job.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Optional

from .model import JobState, PoolJob, Server
from .ssh import CTL, JobIO, MissingOutputs, VMLost, WorkerShell, build_run_script, tar_paths


class JobRunner:
    def _init_runner(self) -> None:
        self._runtime_ema: dict[str, float] = {}

    def runtime_estimate(self, kind: str, default: Optional[float]) -> Optional[float]:
        """Measured runtime of jobs of this kind in this run (moving average), else default."""
        return self._runtime_ema.get(kind, default)

    def _est(self, job: PoolJob) -> float:
        return job.est_seconds if job.est_seconds > 0 else self._runtime_ema.get(job.kind, 60.0)

    async def _run_job(self, job: PoolJob, s: Server):
        io_ = job.io
        sh = s.shell
        logf = None
        t0 = time.monotonic()
        outcome = None
        try:
            os.makedirs(os.path.dirname(os.path.abspath(io_.local_log)), exist_ok=True)
            logf = open(io_.local_log, "ab", buffering=0)  # streamed: readable while the job runs
            logf.write(f"# openstack: {job.name} on {s.name} ({s.address})\n".encode())
            if sh is None:
                raise VMLost("no connection")
            sha = None
            if self._sources is not None:
                sha, data = self._sources
                await sh.ensure_sources(sha, data)
            extra = {
                f"{CTL}/run.sh": build_run_script(io_.path_prefix).encode(),
                f"{CTL}/cmd.sh": (io_.command + "\n").encode(),
            }
            inputs_tar = await self.loop.run_in_executor(self.api, tar_paths, io_.inputs, extra)
            io_.job_key = f"{self.run_id}-{job.key}-{uuid.uuid4().hex[:6]}"
            await sh.stage(io_, sha, inputs_tar)
            t1 = time.monotonic()
            job.state = JobState.RUNNING
            job.started_at = t1
            rc = await sh.execute(io_, logf.write)
            t2 = time.monotonic()
            job.state = JobState.FETCHING
            missing = None
            if rc == 0:
                try:
                    await sh.fetch(io_, io_.outputs, io_.optional_outputs + io_.logs)
                except MissingOutputs as e:
                    missing = e.paths
                    logf.write(f"# openstack: missing outputs: {', '.join(missing)}\n".encode())
            if rc != 0 or missing:
                await self._fetch_logs(sh, io_)
            t3 = time.monotonic()
            # wiping the scratch directory does not delay the job's result
            self._spawn(self._cleanup(sh, io_))
            job.timings = {"stage": t1 - t0, "run": t2 - t1, "fetch": t3 - t2}
            self.stats.add_timings(job.timings)
            if missing:
                outcome = (
                    JobState.FAILED,
                    f"job ended on {s.name} without its declared "
                    f"output(s) {', '.join(missing)} (not in the job folder {io_.remote_dir})",
                )
            elif rc == 0:
                outcome = (JobState.DONE, None)
                self.stats.add_work(job.est_seconds, t2 - t1)
                prev = self._runtime_ema.get(job.kind)
                self._runtime_ema[job.kind] = (
                    (t2 - t1) if prev is None else 0.7 * prev + 0.3 * (t2 - t1)
                )
            else:
                outcome = (JobState.FAILED, f"job exited with code {rc} on {s.name}")
        except asyncio.CancelledError:
            outcome = (JobState.CANCELLED, "cancelled")
            raise
        except VMLost as e:
            job.vm_losses += 1
            self.stats.vm_losses += 1
            if logf:
                logf.write(f"# openstack: lost server {s.name}: {e}\n".encode())
            self.log("warning", f"openstack: lost {s.name} while running {job.name}: {e}")
            self._server_broken(s)
            if job.vm_losses > self.cfg.vm_failure_retries or self._stopping:
                outcome = (JobState.FAILED, f"server lost {job.vm_losses} times; last: {e}")
            else:
                self.stats.resubmissions += 1
                outcome = (JobState.QUEUED, None)
        except Exception as e:
            outcome = (JobState.FAILED, f"{type(e).__name__}: {e}")
        finally:
            if logf:
                logf.close()
            s.release(job)
            if outcome is not None:
                state, err = outcome
                job.server = None
                if state == JobState.QUEUED:
                    job.state = JobState.QUEUED
                    io_.remote_dir = None
                    self.queue.appendleft(job)
                else:
                    job.error = err
                    job.finished_at = time.monotonic()
                    self.stats.last_done = time.time()
                    job.state = state
                    if state == JobState.DONE:
                        self.stats.jobs_done += 1
                        self.stats.per_server[s.name] = self.stats.per_server.get(s.name, 0) + 1
                    elif state == JobState.FAILED:
                        self.stats.jobs_failed += 1
            self.wake()

    @staticmethod
    async def _fetch_logs(sh: WorkerShell, io_: JobIO) -> None:
        """The logs of a failed job, if it wrote any (they explain the failure)."""
        try:
            await sh.fetch(io_, [], io_.logs)
        except VMLost:
            raise
        except Exception:
            pass

    async def _cleanup(self, sh: WorkerShell, io_: JobIO):
        t = time.monotonic()
        try:
            await sh.cleanup(io_)
            self.stats.add_timings({"cleanup": time.monotonic() - t})
        except Exception:
            pass

    def _fail_queued(self, msg: str):
        while self.queue:
            j = self.queue.popleft()
            if not j.finished:
                j.error = msg
                j.finished_at = time.monotonic()
                j.state = JobState.FAILED
                self.stats.jobs_failed += 1

    async def _cancel_all(self):
        kills = []
        for s in self.servers:
            for key in list(s.jobs):
                job = self.jobs.get(key)
                if job and s.shell is not None and job.io.remote_dir:
                    kills.append(s.shell.kill(job.io))
        for j in list(self.queue):
            j.state = JobState.CANCELLED
        self.queue.clear()
        if kills:
            res = await asyncio.gather(*kills, return_exceptions=True)
            self.stats.cancelled_remote = sum(1 for r in res if not isinstance(r, Exception))
            self.log("info", f"openstack: killed {self.stats.cancelled_remote} remote job(s)")
