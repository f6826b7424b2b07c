"""qmroct: quality management for retinal OCT archives."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _version() -> str:
    from qmroct.provenance.identity import qmroct_version

    return qmroct_version()


def __getattr__(name: str) -> str:
    # From the installed metadata (pyproject.toml is the one place the version is written),
    # read when first asked for: reading it imports importlib.metadata (~40 ms), which every
    # job's small entry process (qmroct.warmworker) would otherwise pay for nothing.
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'qmroct' has no attribute {name!r}")
