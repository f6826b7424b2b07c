"""Which paths an isolated test server hides: shared by the test cloud (Nova venv) and the
executor tests (project venv), so standard library only."""

from __future__ import annotations


def outermost(paths: list[str]) -> list[str]:
    """``paths`` without those inside another one, shortest first. Covering /tmp with a tmpfs
    already hides a checkout at /tmp/ci; mounting on /tmp/ci afterwards fails, because the
    covered path no longer exists, and the server's sshd never starts."""
    kept: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept
