"""qmroct: quality management for retinal OCT archives."""

__version__ = "0.1.0"
