"""qmroct: quality management for retinal OCT archives."""

from qmroct.provenance.identity import qmroct_version as _qmroct_version

# From the installed metadata (pyproject.toml is the one place the version is written).
__version__ = _qmroct_version()
