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


def make_checkout(root: Path) -> str:
    """Make a workflow copy a git checkout of its own (with qmroct's source, as in the
    repository) and commit it; returns the commit."""
    import subprocess

    if not (root / "src" / "qmroct").is_dir():
        shutil.copytree(REPO / "src" / "qmroct", root / "src" / "qmroct",
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org", "PATH": "/usr/bin:/bin"}

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                              text=True, env=env).stdout.strip()

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "workflow")
    return git("rev-parse", "HEAD")
