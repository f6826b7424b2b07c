"""Throughput on the pool: a session's KQIs through the workflow on isolated test-cloud VMs.

    .venv/bin/python benchmarks/throughput/bench_pool.py [--sessions 12] [--max-servers 4]

One run, side by side, on the same volumes (a demo archive, one 49 x 496 x 512 scan per
session, six algorithms):

(pool)  the real workflow with ``--workflow-profile openstack`` (the executor plugin) on the
        Nova test cloud (tests/cloud/novacloud.py: real Nova API, an sshd per fake server), its
        servers isolated (``--isolate``: the head's checkout, venvs, home and /tmp hidden; the
        workers run the worker image's Python, tests/executor/helpers.py build_worker_env);
(local) the same workflow with ``snakemake --cores N`` on this machine (bench_throughput.py);
(a)     the six algorithms together in one process (bench_throughput.py).

CPU of the pool case, from three cpuacct cgroups (cgroup v1) made for this run:
``head`` (the Snakemake head and everything it starts, its warm worker included), ``workers``
(every fake VM's sshd and so every SSH session, remote Snakemake, job, warm worker and
algorithm child on the VMs) and ``cloud`` (the test cloud's own work: the stand-in for the
cloud, not qmroct's cost; reported apart). A process enters its group before it execs and its
descendants inherit it, so nothing of the run is outside them: checked while the run lasts
(every process carrying this run's token or one of its servers' NOVA_INSTANCE_UUID must be in
one of the groups) and against the machine's totals (/proc/stat, the root cpuacct group).
The profile hook (profile_hook/, through pool_hook/) says where the CPU went, on the head and
on the VMs. The archive, the hook and its logs sit in a folder under /var/tmp, which isolated
servers see (the archive stands in for shared storage every worker mounts).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO / "benchmarks" / "executor"), str(REPO)]

import bench_throughput as bt  # noqa: E402
from run_benchmark import cloud_access, start_cloud  # noqa: E402

SNAKEMAKE = bt.BIN / "snakemake"
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
GROUPS = ("head", "workers", "cloud")
VISIBLE_ROOT = Path("/var/tmp")
RU = ("ru_utime", "ru_stime")  # not hidden from isolated servers (tests/cloud/README.md)


class CpuGroups:
    """cpuacct cgroups ``qmroct-bench-pool-<pid>/<name>`` for this run; CPU in seconds."""

    def __init__(self, names=GROUPS):
        self.base = CPUACCT / f"qmroct-bench-pool-{os.getpid()}"
        self.names = names
        for name in names:
            (self.base / name).mkdir(parents=True)

    def procs(self, name: str) -> Path:
        return self.base / name / "cgroup.procs"

    def usage(self, name: str) -> float:
        return int((self.base / name / "cpuacct.usage").read_text()) / 1e9

    def pids(self, name: str) -> list[int]:
        return [int(p) for p in self.procs(name).read_text().split()]

    def contains(self, pid: int) -> bool:
        """Whether ``pid`` is in one of the groups (False if it is gone)."""
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return True  # exited: nothing to check any more
        rel = "/" + self.base.name + "/"
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if "cpuacct" in controllers.split(","):
                return (path + "/").startswith(rel)
        return False

    def wait_empty(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pids(name):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cgroup {name} still has processes: {self.pids(name)}")
            time.sleep(0.2)

    def remove(self) -> list[int]:
        """Move what is left to the root group, remove the groups; the pids that were left."""
        left = []
        for name in self.names:
            for pid in self.pids(name):
                left.append(pid)
                try:
                    (CPUACCT / "cgroup.procs").write_text(str(pid))
                except OSError:
                    pass
            (self.base / name).rmdir()
        self.base.rmdir()
        return left


def in_group(groups: CpuGroups, name: str, cmd: list[str]) -> list[str]:
    """``cmd``, entering cgroup ``name`` before it execs (same pid)."""
    return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(groups.procs(name)), *cmd]


def machine_cpu() -> dict:
    """CPU the whole machine has used since boot (s): /proc/stat (user+nice+system+irq+softirq+
    steal) and the root cpuacct group."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "proc_stat_busy": (user + nice + system + irq + softirq + steal) / hz,
        "root_cpuacct": int((CPUACCT / "cpuacct.usage").read_text()) / 1e9,
    }


class LeakWatch(threading.Thread):
    """While the run lasts, once a second: every process whose environment carries this run's
    token (the head, its jobs, the VMs' jobs through envvars-from-head) or NOVA_INSTANCE_UUID of
    one of this cloud's servers (every session on a VM) must be in one of the groups."""

    def __init__(self, groups: CpuGroups, token: str, state_dir: Path):
        super().__init__(daemon=True)
        self.groups, self.state_dir = groups, state_dir
        self.token = f"QMROCT_BENCH_RUN={token}".encode()
        self.checked: set[int] = set()
        self.leaks: dict[int, str] = {}
        self.stop = threading.Event()

    def _ours(self) -> set[bytes]:
        try:
            uuids = os.listdir(self.state_dir)
        except OSError:
            return {self.token}
        return {self.token, *(f"NOVA_INSTANCE_UUID={u}".encode() for u in uuids)}

    def scan(self) -> None:
        markers = self._ours()
        suspects = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                env = set(Path(f"/proc/{d}/environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if env & markers:
                self.checked.add(int(d))
                if not self.groups.contains(int(d)):
                    suspects.append(int(d))
        if suspects:  # a wrapper that has not yet written its pid: look again
            time.sleep(0.5)
        for pid in suspects:
            if not self.groups.contains(pid):
                try:
                    self.leaks[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()[:120].decode()
                except OSError:
                    pass

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.scan()


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def pool_run(
    base: Path,
    visible: Path,
    archive: Path,
    groups: CpuGroups,
    endpoint: str,
    state_dir: Path,
    worker_bin: Path,
    args: argparse.Namespace,
) -> dict:
    """The real workflow under its OpenStack profile on the test cloud; CPU from the groups."""
    (base / "pool").mkdir()
    work = bt.copy_workflow(base / "pool", archive, REPO)
    shutil.copytree(REPO / "profiles", work / "profiles")  # --workflow-profile openstack
    clouds, access = cloud_access(work, endpoint, "bench:qmroctpool", worker_bin)
    token = os.urandom(8).hex()
    cpu_log = visible / "cpu.jsonl"
    env = dict(
        os.environ,
        PATH=f"{bt.BIN}:{os.environ.get('PATH', '')}",
        OS_CLIENT_CONFIG_FILE=str(clouds),
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(visible / "pool_hook"), os.environ.get("PYTHONPATH")])
        ),
        QMROCT_BENCH_CPU_LOG=str(cpu_log),
        QMROCT_BENCH_RUN=token,
    )
    env.pop("OS_CLOUD", None)
    cmd = [
        str(SNAKEMAKE),
        "--workflow-profile",
        "openstack",
        "--nocolor",
        "--retries",
        "0",
        *access,
        "--openstack-max-servers",
        str(args.max_servers),
        "--openstack-expected-boot-seconds",
        str(max(1, round(args.boot))),
        # the hook and its log on the VMs (not secrets; this channel is simply the way in)
        "--openstack-envvars-from-head",
        "PYTHONPATH,QMROCT_BENCH_CPU_LOG,QMROCT_BENCH_RUN",
        "--openstack-status-log-interval",
        "10",
        *args.snakemake_args,
    ]
    watch = LeakWatch(groups, token, state_dir)
    before = {name: groups.usage(name) for name in GROUPS}
    machine_before = machine_cpu()
    driver_before = resource.getrusage(resource.RUSAGE_SELF)
    load_before = os.getloadavg()
    watch.start()
    epoch0 = time.time()
    try:
        wall, usage = bt.run_snakemake(in_group(groups, "head", cmd), work, env, "pool run")
    except RuntimeError:
        watch.stop.set()
        raise
    # the head's warm worker ends within a second of the run folder's release; the VMs'
    # processes when the executor has deleted its servers (the cloud kills them)
    groups.wait_empty("head", 90)
    groups.wait_empty("workers", 90)
    watch.stop.set()
    watch.join()
    watch.scan()
    cpu = {name: groups.usage(name) - before[name] for name in GROUPS}
    machine_after = machine_cpu()
    driver_after = resource.getrusage(resource.RUSAGE_SELF)
    load_after = os.getloadavg()
    kqi_files = list((work / "results" / "kqi").rglob("*.json"))
    assert len(kqi_files) == args.sessions * len(bt.SIX), f"{len(kqi_files)} KQI files"
    summaries = sorted((work / ".snakemake" / "openstack").glob("*/summary.json"))
    summ = json.loads(summaries[-1].read_text())
    head_records = read_records(cpu_log)
    worker_records = read_records(visible / "workers-cpu.jsonl")
    return {
        "cpu": cpu,
        "head_wait4": usage.ru_utime + usage.ru_stime,
        "wall": wall,
        "makespan": summ["last_done"] - epoch0,
        "servers_created": summ["servers_created"],
        "vm_minutes": summ["vm_minutes"],
        "submissions": summ["jobs_done"],
        "jobs_failed": summ["jobs_failed"],
        "machine": {k: machine_after[k] - machine_before[k] for k in machine_before},
        # this process (the leak watch's /proc scans): outside the groups, not the run's
        "driver": sum(getattr(driver_after, f) - getattr(driver_before, f) for f in RU),
        "load": (load_before, load_after),
        "checked_processes": len(watch.checked),
        "leaks": watch.leaks,
        "head_profile": bt.profile_by_kind(head_records, "snakemake head"),
        "worker_profile": bt.profile_by_kind(worker_records, "remote snakemake, one per group"),
    }


def prepare_visible(visible: Path) -> None:
    """The hook (pool_hook + profile_hook) where the VMs see it."""
    shutil.copytree(HERE / "pool_hook", visible / "pool_hook")
    shutil.copytree(HERE / "profile_hook", visible / "profile_hook")
    for d in ("pool_hook", "profile_hook"):
        shutil.rmtree(visible / d / "__pycache__", ignore_errors=True)


def sshd_wrapper(visible: Path, groups: CpuGroups) -> Path:
    """A VM's sshd through this: into the workers' group, then exec sshd (same pid)."""
    wrapper = visible / "sshd-in-workers-cgroup"
    wrapper.write_text(
        f'#!/bin/sh\necho $$ > {groups.procs("workers")} || exit 1\nexec /usr/sbin/sshd "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def problems(pool: dict) -> list[str]:
    """What would mean that the groups missed some of the run's CPU."""
    out = []
    if pool["leaks"]:
        out.append(f"processes of the run outside the groups: {pool['leaks']}")
    m = pool["machine"]
    if abs(m["proc_stat_busy"] - m["root_cpuacct"]) > 0.05 * m["proc_stat_busy"] + 1:
        out.append(f"/proc/stat and the root cpuacct group disagree: {m}")
    for side, records in (("head", "head_profile"), ("workers", "worker_profile")):
        hooked = sum(sum(v) for v in pool[records].values())
        if hooked > pool["cpu"][side] + 0.5:
            out.append(f"{side}: the hook's records ({hooked:.1f} s) exceed the group's CPU")
    return out


def report(n: int, pool: dict, local: dict | None, tog: dict, args) -> None:
    cpu = pool["cpu"]
    a = tog["cpu_per_session"]
    qm = cpu["head"] + cpu["workers"]
    lb, la = pool["load"]
    print(
        f"{n} sessions, one 49x496x512 scan each, six algorithms; pool: at most "
        f"{args.max_servers} m1.medium servers, boot {args.boot:g} s, delete {args.delete:g} s, "
        f"isolated; load average at the pool run's start {lb[0]:.1f}/{lb[1]:.1f}, end "
        f"{la[0]:.1f}/{la[1]:.1f} (1/5 min) on {os.cpu_count()} CPUs\n"
    )
    print("| what | CPU per session (s) | ratio to (a) | wall (s) |\n|---|---:|---:|---:|")
    print(f"| (a) six algorithms together, one process | {a:.2f} | 1 | |")
    if local:
        print(
            f"| (b) local workflow, snakemake --cores {args.cores} | "
            f"{local['cpu_per_session']:.2f} | {local['cpu_per_session'] / a:.2f} | "
            f"{local['wall_total']:.0f} |"
        )
    print(
        f"| **(pool) workflow on the pool: head + workers** | **{qm / n:.2f}** | "
        f"**{qm / n / a:.2f}** | {pool['wall']:.0f} |"
    )
    print(f"| of which the head (Snakemake, its jobs, SSH) | {cpu['head'] / n:.2f} | | |")
    print(f"| of which the workers (everything on the VMs) | {cpu['workers'] / n:.2f} | | |")
    print(f"| the test cloud itself (not qmroct's cost) | {cpu['cloud'] / n:.2f} | | |\n")
    print(
        f"Servers created {pool['servers_created']}, VM-minutes {pool['vm_minutes']}, "
        f"submissions {pool['submissions']} (failed {pool['jobs_failed']}), wall "
        f"{pool['wall']:.1f} s (teardown included), last job done after {pool['makespan']:.1f} s."
    )
    m = pool["machine"]
    ours = sum(cpu.values())
    print(
        f"Cross-check over the pool run: the machine used {m['proc_stat_busy']:.1f} s "
        f"(/proc/stat; root cpuacct {m['root_cpuacct']:.1f} s), the three groups "
        f"{ours:.1f} s, this benchmark's own process (the watch) {pool['driver']:.1f} s, "
        f"everything else on the machine (other users) "
        f"{m['root_cpuacct'] - ours - pool['driver']:.1f} s. "
        f"Head group {cpu['head']:.1f} s vs wait4 of the head's tree "
        f"{pool['head_wait4']:.1f} s (the difference: its warm worker, outside its tree). "
        f"Processes of the run checked for their group: {pool['checked_processes']}, "
        f"outside the groups: {len(pool['leaks'])} {pool['leaks'] or ''}\n"
    )
    prof = {k: (len(v), sum(v)) for k, v in pool["worker_profile"].items()}
    print(f"Where the workers' {cpu['workers']:.1f} s went (profile hook on the VMs):\n")
    bt.print_profile(
        prof,
        cpu["workers"],
        n,
        "not attributed: sshd sessions, shells, tar (staging), teardown after the exit hook",
    )
    prof = {k: (len(v), sum(v)) for k, v in pool["head_profile"].items()}
    print(f"\nWhere the head's {cpu['head']:.1f} s went:\n")
    bt.print_profile(prof, cpu["head"], n, "not attributed: teardown after the exit hook, wrappers")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=12)
    ap.add_argument("--max-servers", type=int, default=4)
    ap.add_argument("--boot", type=float, default=2.0, help="fake boot, from the create request")
    ap.add_argument("--delete", type=float, default=1.0)
    ap.add_argument("--cores", type=int, default=2, help="the local case's --cores")
    ap.add_argument(
        "--local", action=argparse.BooleanOptionalAction, default=True, help="also run locally"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders (printed)")
    ap.add_argument(
        "snakemake_args", nargs="*", help="more arguments for the pool's snakemake (after --)"
    )
    args = ap.parse_args()
    from tests.executor.helpers import build_worker_env

    base = Path(tempfile.mkdtemp(prefix="qmroct-bench-pool-"))  # /tmp: hidden from the VMs
    visible = Path(tempfile.mkdtemp(prefix="qmroct-bench-pool-", dir=VISIBLE_ROOT))
    groups = CpuGroups()
    cloud = None
    try:
        (base / "worker-src").mkdir()
        root = os.environ.get("QMROCT_BENCH_WORKER_ROOT", "/opt/qmroct-bench-worker")
        worker_bin = build_worker_env(base / "worker-src", root=Path(root))
        archive = bt.build_archive(visible, args.sessions, 1)
        prepare_visible(visible)
        cloud_env = dict(
            os.environ,
            QMROCT_BENCH_CLOUD_CGROUP=str(groups.procs("cloud")),
            QMROCT_BENCH_SSHD=str(sshd_wrapper(visible, groups)),
        )
        cloud, endpoint = start_cloud(
            base, args.boot, args.delete, isolate=True, script=HERE / "pool_cloud.py", env=cloud_env
        )
        cloud_cpu_at_ready = groups.usage("cloud")
        pool = pool_run(base, visible, archive, groups, endpoint, base / "state", worker_bin, args)
        local = None
        if args.local:
            (base / "local").mkdir()
            local = bt.workflow(
                bt.copy_workflow(base / "local", archive, REPO), args.cores, args.sessions, REPO
            )
        tog = bt.together(base, archive)
        load_end = os.getloadavg()
    finally:
        if cloud is not None:
            cloud.send_signal(signal.SIGTERM)
            cloud.wait(30)
        left = groups.remove()  # reported with the results
        if args.keep:
            print(f"kept {base} and {visible}")
        else:
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(visible, ignore_errors=True)
    rev = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"tree {rev}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"test cloud start-up {cloud_cpu_at_ready:.1f} s CPU (not counted); load at the end "
        f"{load_end[0]:.1f}/{load_end[1]:.1f}"
    )
    report(args.sessions, pool, local, tog, args)
    found = problems(pool) + ([f"processes left in the groups: {left}"] if left else [])
    for problem in found:
        print(f"\nACCOUNTING PROBLEM: {problem}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
