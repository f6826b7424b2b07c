"""qmroct: quality management for retinal OCT archives."""

from __future__ import annotations

_version_read: str | None = None


def _version() -> str:
    global _version_read
    if _version_read is None:
        from qmroct.provenance.identity import qmroct_version

        _version_read = qmroct_version()
    return _version_read


def __getattr__(name: str) -> str:
    # From the installed metadata (pyproject.toml is the one place the version is written),
    # read when first asked for: reading it imports importlib.metadata (~40 ms), which every
    # job's small entry process (qmroct.warmworker) would otherwise pay for nothing (it
    # imports only what is built into the interpreter; not even functools).
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'qmroct' has no attribute {name!r}")
