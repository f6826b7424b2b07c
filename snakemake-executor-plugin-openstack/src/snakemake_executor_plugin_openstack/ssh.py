"""SSH to the workers (asyncssh) and per-job staging.

Layout on a worker (``S`` = the remote scratch expression):
  S/.cache/src-<sha>.tar      workflow sources, uploaded once per server
  S/<job dir>/                fresh per submission, wiped afterwards
  S/<job dir>/.snakemake-openstack/{run.sh,cmd.sh,pid,rc}

Secrets (environment variables) travel on the channel's stdin as ``NAME=<base64>`` lines and
are exported by run.sh; they never appear on a command line, in files or in logs.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import shlex
import tarfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

# asyncssh is imported where it is used: Snakemake imports every installed executor plugin
# when it starts (the head, every remote job, even local runs), and asyncssh's import is
# about 0.2 s of CPU that only a run with this executor needs.
if TYPE_CHECKING:
    import asyncssh

CTL = ".snakemake-openstack"


class VMLost(Exception):
    """The server stopped answering (connection refused/lost, keepalive timeout)."""


class HostKeyMismatch(Exception):
    pass


class MissingOutputs(Exception):
    """The job ended with exit code 0 but declared outputs are not in its folder."""

    def __init__(self, paths: list[str]):
        super().__init__(", ".join(paths))
        self.paths = paths


class JumpHostError(Exception):
    """The jump host's key is not the one in its known_hosts file, or it refused our key.

    A configuration problem that no retry or new server can fix, unlike a worker that is
    not up yet (connection refused) or a jump host that is briefly unreachable."""


@dataclass
class SshTarget:
    address: str
    port: int
    user: str
    client_key: Optional[str]
    host_keys: Optional[list[str]]  # pinned public keys; None: see known_hosts_mode
    known_hosts_mode: str = "console"  # console | known_hosts | none
    jump_host: Optional[str] = None
    jump_known_hosts: str = "~/.ssh/known_hosts"  # the jump host's key is always verified
    connect_timeout: float = 15.0
    keepalive: float = 5.0


def _parse_jump(spec: str):
    user = None
    if "@" in spec:
        user, spec = spec.split("@", 1)
    port = 22
    if ":" in spec:
        spec, p = spec.rsplit(":", 1)
        port = int(p)
    return spec, port, user


async def _open_jump(t: SshTarget) -> asyncssh.SSHClientConnection:
    """Connection to the jump host, verified against ``t.jump_known_hosts`` whatever
    ``known_hosts_mode`` says: that mode is about short-lived workers whose keys are new on
    every boot, while a bastion is a long-lived host whose key can be recorded once."""
    import asyncssh

    host, port, user = _parse_jump(t.jump_host)
    where = f"jump host {host}:{port}"
    known = os.path.expanduser(t.jump_known_hosts)
    if not os.path.isfile(known):
        raise JumpHostError(
            f"{where}: known_hosts file {known} does not exist; record the bastion's host key "
            f"there (e.g. ssh-keyscan -p {port} {host} >> {known}, after checking the fingerprint)"
        )
    kw = dict(
        username=user or t.user,
        known_hosts=known,
        connect_timeout=t.connect_timeout,
        keepalive_interval=t.keepalive,
        keepalive_count_max=3,
        agent_path=None,
    )
    if t.client_key:  # as for the workers: otherwise asyncssh's default key files
        kw["client_keys"] = [t.client_key]
    try:
        return await asyncssh.connect(host, port, **kw)
    except asyncssh.HostKeyNotVerifiable as e:
        raise JumpHostError(f"{where}: host key not verified against {known}: {e}") from e
    except asyncssh.PermissionDenied as e:
        raise JumpHostError(f"{where}: login as {user or t.user} refused: {e}") from e


async def open_connection(t: SshTarget) -> asyncssh.SSHClientConnection:
    import asyncssh

    if t.known_hosts_mode == "none":
        known_hosts = None
    elif t.known_hosts_mode == "known_hosts":
        known_hosts = os.path.expanduser("~/.ssh/known_hosts")
    else:
        if not t.host_keys:
            raise HostKeyMismatch("no pinned host key")
        known_hosts = ([asyncssh.import_public_key(k) for k in t.host_keys], [], [])
    kw = dict(
        username=t.user,
        known_hosts=known_hosts,
        connect_timeout=t.connect_timeout,
        keepalive_interval=t.keepalive,
        keepalive_count_max=3,
        agent_path=None,
    )
    if t.client_key:
        kw["client_keys"] = [t.client_key]
    tunnel = await _open_jump(t) if t.jump_host else None
    if tunnel is not None:
        kw["tunnel"] = tunnel
    try:
        conn = await asyncssh.connect(t.address, t.port, **kw)
    except BaseException as e:
        # a worker still booting refuses many attempts: each one's bastion connection must go
        if tunnel is not None:
            tunnel.close()
        if isinstance(e, asyncssh.HostKeyNotVerifiable):
            raise HostKeyMismatch(str(e)) from e
        raise
    if tunnel is not None:
        # asyncssh closes a tunnel it opened itself, not one handed in: tie the bastion
        # connection to the worker connection so closing (or losing) the worker closes it
        conn.set_tunnel(tunnel)
    return conn


def _q(s: str) -> str:
    return shlex.quote(s)


RUN_SH = r"""#!/bin/bash
# Written by snakemake-executor-plugin-openstack. Reads NAME=BASE64 lines from stdin
# (until an empty line) and exports them: secrets never touch the command line or disk.
while IFS= read -r line && [ -n "$line" ]; do
    export "${line%%=*}=$(printf '%s' "${line#*=}" | base64 -d)"
done
__PATH__
cd "$(dirname "$0")/.."
setsid bash .snakemake-openstack/cmd.sh </dev/null 2>&1 &
pid=$!
echo "$pid" > .snakemake-openstack/pid
wait "$pid"
rc=$?
echo "$rc" > .snakemake-openstack/rc
exit "$rc"
"""


FETCH_MISSING = 66  # exit code of FETCH_SH when a required path is missing
# stdin: one path per line, prefixed R (required) or O (optional); stdout: a tar of those present
FETCH_SH = (
    f"l={CTL}/fetch.list; : > $l; bad=; "
    "while IFS= read -r e; do p=${e#?}; "
    'if [ -e "$p" ]; then printf "%s\\0" "$p" >> $l; '
    'elif [ "${e%"$p"}" = R ]; then printf "missing: %s\\n" "$p" >&2; bad=1; fi; done; '
    f'if [ -n "$bad" ]; then exit {FETCH_MISSING}; fi; '
    "tar -c --null -T $l -f -"
)


def build_run_script(path_prefix: Optional[str]) -> str:
    p = f'export PATH={_q(path_prefix)}:"$PATH"' if path_prefix else ""
    return RUN_SH.replace("__PATH__", p)


def tar_paths(paths: list[str], extra: dict[str, bytes] | None = None, root: str = ".") -> bytes:
    """A tar (bytes) of existing relative paths below ``root`` plus in-memory files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        seen = set()
        for p in paths:
            p = os.path.normpath(p)
            if p in seen or p.startswith("..") or os.path.isabs(p):
                continue
            seen.add(p)
            full = os.path.join(root, p)
            if os.path.exists(full):
                tf.add(full, arcname=p)
        for name, data in (extra or {}).items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o700
            import time as _t

            ti.mtime = int(_t.time())
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def extract_tar(data: bytes, root: str = ".") -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tf:
        names = tf.getnames()
        tf.extractall(root, filter="data")
    return names


def _lost() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the VM (or the way to it) is gone, not that the job failed."""
    import asyncssh

    return (
        asyncssh.ConnectionLost,
        asyncssh.DisconnectError,
        asyncssh.ChannelOpenError,
        ConnectionError,
        BrokenPipeError,
        OSError,
        asyncio.TimeoutError,
    )


@dataclass
class JobIO:
    """What one submission needs on the worker."""

    job_key: str  # unique, used in the job dir name
    command: str
    env: dict[str, str]
    inputs: list[str]
    outputs: list[str]  # must exist after the job, else it fails (on the worker)
    logs: list[str]
    local_log: str
    path_prefix: Optional[str] = None
    # brought back if present: a group's internal temp() files, which the remote Snakemake
    # deletes once the group no longer needs them, and benchmarks
    optional_outputs: list[str] = field(default_factory=list)
    pid_known: bool = False
    remote_dir: Optional[str] = None
    extra_stats: dict = field(default_factory=dict)


class WorkerShell:
    """One persistent SSH connection to one worker, multiplexing job channels."""

    def __init__(self, conn: asyncssh.SSHClientConnection, scratch_expr: str):
        self.conn = conn
        self.scratch = scratch_expr
        self._src_lock = asyncio.Lock()
        self._src_done: set[str] = set()

    async def _run(self, cmd: str, input: Optional[bytes], timeout: Optional[float]):
        try:
            r = await asyncio.wait_for(
                self.conn.run(cmd, input=input, encoding=None, check=False), timeout
            )
        except _lost() as e:
            raise VMLost(f"{type(e).__name__}: {e}") from e
        if r.exit_status is None and r.exit_signal is None:
            raise VMLost("channel closed without exit status")
        return r

    async def run(
        self, cmd: str, input: Optional[bytes] = None, timeout: Optional[float] = None
    ) -> bytes:
        r = await self._run(cmd, input, timeout)
        if r.exit_status != 0:
            err = (r.stderr or b"").decode(errors="replace")[-2000:]
            raise RuntimeError(f"remote command failed ({r.exit_status}): {err}")
        return r.stdout or b""

    def _S(self) -> str:
        return f'S="{self.scratch}"'

    async def ensure_sources(self, sha: str, data: bytes) -> None:
        async with self._src_lock:
            if sha in self._src_done:
                return
            f = f'"$S/.cache/src-{sha}.tar"'
            cmd = (
                f'{self._S()}; mkdir -p "$S/.cache" && '
                f"if [ ! -f {f} ]; then cat > {f}.$$ && mv {f}.$$ {f}; else cat > /dev/null; fi"
            )
            await self.run(cmd, input=data)
            self._src_done.add(sha)

    async def stage(self, io_: JobIO, sha: Optional[str], inputs_tar: bytes) -> str:
        d = f'"$S/{io_.job_key}"'
        src = f' && tar -x -f "$S/.cache/src-{sha}.tar" -C {d}' if sha else ""
        cmd = f"{self._S()}; rm -rf {d} && mkdir -p {d}{src} && tar -x -C {d} && echo {d}"
        out = await self.run(cmd, input=inputs_tar)
        io_.remote_dir = out.decode().strip()
        return io_.remote_dir

    async def execute(self, io_: JobIO, on_output: Callable[[bytes], None]) -> int:
        """Run the job; stream its output; return its exit code. VMLost if the VM goes away."""
        env_lines = (
            "".join(f"{k}={base64.b64encode(v.encode()).decode()}\n" for k, v in io_.env.items())
            + "\n"
        )
        from asyncssh import STDOUT

        cmd = f"exec bash {_q(io_.remote_dir + '/' + CTL + '/run.sh')}"
        try:
            proc = await self.conn.create_process(cmd, encoding=None, stderr=STDOUT)
            proc.stdin.write(env_lines.encode())
            proc.stdin.write_eof()
            io_.pid_known = True
            while True:
                chunk = await proc.stdout.read(65536)
                if not chunk:
                    break
                on_output(chunk)
            await proc.wait_closed()
        except _lost() as e:
            raise VMLost(f"{type(e).__name__}: {e}") from e
        if proc.exit_status is not None:
            return proc.exit_status
        if proc.exit_signal is not None:
            # the remote shell was killed by a signal; is the server still alive?
            try:
                await self.run("true", timeout=10)
            except Exception as e:
                raise VMLost(f"job channel ended by signal and server does not answer: {e}") from e
            return 128 + 9
        raise VMLost("job channel closed without exit status")

    async def fetch(self, io_: JobIO, required: list[str], optional: list[str] = ()) -> list[str]:
        """Bring files back from the job folder (a tar on stdout).

        The worker checks the required paths first: if any is missing it names them and
        nothing is sent (``MissingOutputs``), so a job that did not produce its outputs fails
        there, with the names, instead of passing as done and leaving Snakemake on the head
        to guess at filesystem latency."""
        if not required and not optional:
            return []
        listing = "".join(f"R{p}\n" for p in required) + "".join(f"O{p}\n" for p in optional)
        cmd = f"cd {_q(io_.remote_dir)} && {FETCH_SH}"
        r = await self._run(cmd, listing.encode(), None)
        if r.exit_status == FETCH_MISSING:
            err = (r.stderr or b"").decode(errors="replace")
            raise MissingOutputs([ln[9:] for ln in err.splitlines() if ln.startswith("missing: ")])
        if r.exit_status != 0:
            err = (r.stderr or b"").decode(errors="replace")[-2000:]
            raise RuntimeError(f"fetching outputs failed ({r.exit_status}): {err}")
        return extract_tar(r.stdout) if r.stdout else []

    async def cleanup(self, io_: JobIO) -> None:
        if io_.remote_dir:
            await self.run(f"rm -rf {_q(io_.remote_dir)}", timeout=60)

    async def kill(self, io_: JobIO) -> None:
        if not io_.remote_dir:
            return
        pidf = _q(io_.remote_dir + "/" + CTL + "/pid")
        cmd = (
            f"if [ -f {pidf} ]; then p=$(cat {pidf}); kill -TERM -- -$p 2>/dev/null; "
            "for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 -- -$p 2>/dev/null || exit 0; "
            "sleep 0.5; done; "
            f"kill -KILL -- -$p 2>/dev/null; fi; true"
        )
        await self.run(cmd, timeout=20)

    async def close(self) -> None:
        try:
            self.conn.close()
            await asyncio.wait_for(self.conn.wait_closed(), 5)
        except Exception:
            pass
