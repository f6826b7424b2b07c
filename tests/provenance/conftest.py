"""Fixtures for the provenance tests (issue 10): XNAT's XSDs, small archives."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.xnat_server.server import DEFAULT_SCHEMA_DIR

from tests.support import REPO


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
    if not (root / "src" / "qmroct").is_dir():
        shutil.copytree(
            REPO / "src" / "qmroct",
            root / "src" / "qmroct",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "workflow")
    return git(root, "rev-parse", "HEAD")


def git(root: Path, *args: str) -> str:
    """git in the checkout ``root`` with a fixed author and none of the developer's config."""
    import subprocess

    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


@pytest.fixture
def checkout(workflow, monkeypatch):
    """The workflow copy as a git checkout of its own that imports qmroct from its own
    source (PYTHONPATH), so the identities it computes do not move while other people
    edit the repository's src/ during a test."""
    import os

    config = workflow.config()
    config["algorithms"] = {"noise": {}}
    config["studies"] = {"demo_trial": {"criteria": ["noise.snr_db >= 15"]}}
    workflow.write_config(config)
    workflow.commit = make_checkout(workflow.root)
    monkeypatch.setenv(
        "PYTHONPATH", f"{workflow.root / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    )
    return workflow


def qmroct_cli(root: Path, *args: str, timeout: int = 900):
    """``qmroct ARGS`` run in ``root`` as a user would (same interpreter and environment)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    return subprocess.run(
        [sys.executable, "-m", "qmroct.cli", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
