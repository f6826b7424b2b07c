"""Fixtures for the provenance tests (issue 10): XNAT's XSDs, small archives."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.xnat_server.server import DEFAULT_SCHEMA_DIR

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def xnat_xsd():
    """XNAT's own schema (../shared/xnat-schemas). Missing schemas FAIL the test, never skip:
    a provenance block that is not checked against XNAT's XSD is how it got lost before."""
    from lxml import etree

    path = DEFAULT_SCHEMA_DIR / "xnat" / "xnat.xsd"
    if not path.is_file():
        pytest.fail(f"XNAT XSD not found at {path}: the shared xnat-schemas folder is required")
    return etree.XMLSchema(etree.parse(str(path)))


@pytest.fixture
def archive_copy(tmp_path, small_demo):
    from qmroct.archive.directory import DirectoryArchive

    shutil.copytree(small_demo / "archive", tmp_path / "archive")
    return DirectoryArchive(tmp_path / "archive")
