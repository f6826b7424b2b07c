"""Fixtures for the XNAT backend tests: a real XNAT test server on loopback.

The server (tests/xnat_server) runs in a thread of the test process; clients
(pyxnat, xnatpy, qmroct's XnatArchive, snakemake subprocesses) talk to it over
real HTTP on 127.0.0.1. Each test gets a fresh server with its own data folder
and a random password, so a test can look for that password in logs.
"""

from __future__ import annotations

import functools
import secrets
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.xnat_server import XnatTestServer  # noqa: E402
from tests.xnat_server.server import DEFAULT_SCHEMA_DIR  # noqa: E402

SCHEMAS = DEFAULT_SCHEMA_DIR
from tests.xnat.helpers import USER  # noqa: E402


def schemas_present() -> bool:
    return (SCHEMAS / "xnat" / "xnat.xsd").is_file()


def needs_schemas(test):
    """Tests that need XNAT's XSDs (xnatpy builds its classes from them, the stored
    documents are validated against them) FAIL without them, never skip: a
    skipped check is one that could never fail in CI."""

    @functools.wraps(test)
    def checked(*args, **kwargs):
        if not schemas_present():
            pytest.fail(f"XNAT XSD schemas not found at {SCHEMAS} (../shared/xnat-schemas)")
        return test(*args, **kwargs)

    return checked


@pytest.fixture
def password() -> str:
    return "pw-" + secrets.token_hex(12)


@pytest.fixture
def xnat_server(tmp_path, password):
    server = XnatTestServer(
        tmp_path / "xnat-data",
        users={USER: password, "other": "other-pw"},
        schema_dir=SCHEMAS if schemas_present() else None,
    )
    server.store.put_project("OCT", {"name": "OCT test project"})
    with server:
        yield server


@pytest.fixture
def xnat_env(monkeypatch, xnat_server, password):
    """Credentials the way XNAT's Container Service hands them: environment."""
    monkeypatch.setenv("XNAT_HOST", xnat_server.url)
    monkeypatch.setenv("XNAT_USER", USER)
    monkeypatch.setenv("XNAT_PASS", password)
    monkeypatch.delenv("NETRC", raising=False)
    return xnat_server


@pytest.fixture
def pyxnat_interface(xnat_server, password):
    import pyxnat

    intf = pyxnat.Interface(server=xnat_server.url, user=USER, password=password)
    yield intf
    intf._http.close()
