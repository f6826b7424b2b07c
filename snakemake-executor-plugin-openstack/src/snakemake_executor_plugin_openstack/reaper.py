"""Delete servers left behind by runs that crashed (two-pass, metadata-based).

Only servers carrying this tool's metadata are considered.  A server is *dead* when its lease
expired (the run renews it while alive) or when it belongs to a run on this machine whose
process no longer exists.  A server is deleted only if it is dead in two passes taken
``--interval`` seconds apart (a run that just started or just renewed is not a leak).

Entry points: ``snakemake-openstack-reap`` (console script) and ``main(argv)``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Callable, Optional

from . import cloud as cl


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LineLogger:
    """A file-like ``out`` for ``reap`` that hands each printed line to ``log(level, text)``
    (the pool's logger), so the cleanup at pool start shows in the run's log."""

    def __init__(self, log: Callable[[str, str], None], prefix: str):
        self.log, self.prefix, self._buf = log, prefix, ""

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line:
                self.log("info", self.prefix + line)
        return len(text)

    def flush(self) -> None:
        pass


def why_dead(
    md: dict,
    now: Optional[float] = None,
    hostname: Optional[str] = None,
    pid_alive: Callable[[int], bool] = _pid_alive,
) -> Optional[str]:
    """Reason the run owning a server with metadata ``md`` is dead, or None if it may be alive."""
    if md.get(cl.MD_TOOL) != cl.TOOL:
        return None
    now = time.time() if now is None else now
    try:
        expires = float(md.get(cl.MD_EXPIRES, "0"))
    except ValueError:
        expires = 0.0
    if expires < now:
        return f"lease expired {int(now - expires)}s ago"
    owner = md.get(cl.MD_OWNER, "")
    host = owner.split("@", 1)[1] if "@" in owner else ""
    if host and host == (hostname or socket.gethostname()):
        try:
            pid = int(md.get(cl.MD_PID, "0"))
        except ValueError:
            pid = 0
        if pid > 0 and not pid_alive(pid):
            return f"run process {pid} on {host} is gone"
    return None


def find_dead(
    adapter: cl.CloudAdapter, run: Optional[str] = None
) -> dict[str, tuple[cl.ServerView, str]]:
    out = {}
    for s in adapter.list_tool_servers():
        if run and s.metadata.get(cl.MD_RUN) != run:
            continue
        reason = why_dead(s.metadata)
        if reason:
            out[s.id] = (s, reason)
    return out


def reap(
    adapter: cl.CloudAdapter,
    dry_run: bool = False,
    interval: float = 10.0,
    run: Optional[str] = None,
    out=sys.stdout,
    wait: bool = True,
    timeout: float = 300.0,
) -> list[str]:
    """Two passes; returns the ids deleted (or that would be deleted with dry_run)."""
    first = find_dead(adapter, run)
    if dry_run:
        for sid, (s, reason) in sorted(first.items(), key=lambda x: x[1][0].name):
            print(
                f"would delete {s.name} ({sid}) run={s.metadata.get(cl.MD_RUN)} "
                f"owner={s.metadata.get(cl.MD_OWNER)}: {reason}",
                file=out,
            )
        if not first:
            print("nothing to reap", file=out)
        return sorted(first)
    if not first:
        print("nothing to reap", file=out)
        return []
    time.sleep(interval)
    second = find_dead(adapter, run)
    victims = sorted(set(first) & set(second))
    for sid in victims:
        s, reason = second[sid]
        print(f"deleting {s.name} ({sid}) run={s.metadata.get(cl.MD_RUN)}: {reason}", file=out)
        adapter.delete_server(sid)
    if wait:
        deadline = time.time() + timeout
        pending = set(victims)
        while pending and time.time() < deadline:
            pending = {sid for sid in pending if adapter.get_server(sid) is not None}
            if pending:
                time.sleep(1.0)
        if pending:
            print(f"still deleting: {', '.join(sorted(pending))}", file=out)
    return victims


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="snakemake-openstack-reap",
        description="Delete OpenStack servers of snakemake-executor-plugin-openstack runs "
        "that died "
        "(two passes; only servers carrying this tool's metadata).",
    )
    p.add_argument(
        "--cloud",
        default=os.environ.get("SNAKEMAKE_OPENSTACK_CLOUD"),
        help="cloud name in clouds.yaml (default: OS_CLOUD / OS_* variables)",
    )
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    p.add_argument(
        "--interval", type=float, default=10.0, help="seconds between the two passes (default 10)"
    )
    p.add_argument("--run", default=None, help="only servers of this run id")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the deletions to finish")
    args = p.parse_args(argv)
    adapter = cl.CloudAdapter(cl.connect(args.cloud))
    reap(adapter, dry_run=args.dry_run, interval=args.interval, run=args.run, wait=not args.no_wait)
    return 0


if __name__ == "__main__":
    sys.exit(main())
