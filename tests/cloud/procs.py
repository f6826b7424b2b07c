"""Process-tree helper shared by the test cloud (Nova venv) and the executor tests (project
venv): no imports beyond the standard library, so both interpreters can load it."""

from __future__ import annotations

import os


def descendants(pid: int) -> list[int]:
    """All processes below ``pid``, found through /proc: sshd's per-connection children
    leave its process group, so killing the group would miss them."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out
