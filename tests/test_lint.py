"""`make lint` as a test: snakemake --lint, snakefmt, ruff check and ruff format --check
(pyproject [tool.ruff])."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_snakemake_lint_is_clean():
    proc = _run("snakemake", "--lint", "--nocolor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_rules_are_snakefmt_formatted():
    proc = _run("snakefmt", "--check", "Snakefile", "rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_check_is_clean():
    proc = _run("ruff", "check", "--no-cache", "--output-format", "concise", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_python_is_ruff_formatted():
    proc = _run("ruff", "format", "--check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_reads_the_project_config():
    # without [tool.ruff] ruff would check 88 columns and its default rules only
    proc = _run("ruff", "check", "--show-settings", "src/qmroct/workflow.py")
    assert proc.returncode == 0, proc.stderr
    assert "linter.line_length = 100" in proc.stdout
    assert "(B905)" in proc.stdout  # bugbear selected
