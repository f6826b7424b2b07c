"""The deployment in docs/operations.md, tried as written: the systemd unit and the cron line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

DOC = REPO / "docs" / "operations.md"
PLACEHOLDER = "/srv/qmroct"


def _block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, f"docs/operations.md must have exactly one ```{language} block"
    return blocks[0]


def _venv_qmroct() -> Path:
    path = Path(sys.executable).parent / "qmroct"
    assert path.is_file(), f"{path} missing: install qmroct into the test venv"
    return path


def _verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (apt-get install systemd)",
)
def test_systemd_unit_verifies(tmp_path):
    unit = _block("ini")
    assert "KillMode=mixed" in unit and "ExecStart=/srv/qmroct/.venv/bin/qmroct watch" in unit
    text = unit.replace(f"{PLACEHOLDER}/.venv/bin/qmroct", str(_venv_qmroct())).replace(
        PLACEHOLDER, str(tmp_path)
    )
    path = tmp_path / "qmroct-watch.service"
    path.write_text(text)
    proc = _verify(path)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    # The check can fail: a typo in a directive or a missing program is reported.
    path.write_text(text.replace("KillMode=mixed", "KillMode=mixd"))
    assert "KillMode" in _verify(path).stderr or "kill mode" in _verify(path).stderr
    path.write_text(text.replace(str(_venv_qmroct()), str(tmp_path / "nope" / "qmroct")))
    assert _verify(path).returncode != 0


def test_cron_line_runs_as_written(workflow):
    line = _block("cron").strip()
    fields = line.split(None, 5)
    assert len(fields) == 6 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5]), line
    command = fields[5].replace(PLACEHOLDER, str(workflow.root))
    (workflow.root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    # Without an archive the check is quick: the watcher records it and exits 0 for cron.
    workflow.archive.rename(workflow.archive.with_name("moved"))
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    log = (workflow.root / "logs" / "watch.log").read_text()
    assert "archive not usable" in log and "does not exist" in log
    state = json.loads((workflow.root / ".qmroct/watch/state.json").read_text())
    assert state["mode"] == "once" and state["archive"]["reachable"] is False
    assert not (workflow.root / ".qmroct/watch/lock").exists()
