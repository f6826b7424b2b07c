"""XNAT-speaking REST test server (see server.py and README.md)."""

from .server import XnatTestServer

__all__ = ["XnatTestServer"]
