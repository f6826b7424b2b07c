"""The isolated workers' Python builds (tests/executor/helpers.py, build_worker_env) are shared
by concurrent test sessions and benchmarks: a build one of them uses is never removed by
another that builds for changed sources."""

from __future__ import annotations

import subprocess
import sys

from tests.executor.helpers import REPO, remove_unused_builds

HOLD = (
    "import sys; from pathlib import Path; from tests.executor.helpers import _hold; "
    "_hold(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()"
)


def test_a_build_in_use_elsewhere_survives_the_cleanup(tmp_path):
    root = tmp_path / "workers"
    used, unused, new = (root / k for k in ("used", "unused", "new"))
    for d in (used, unused, new):
        (d / "venv" / "bin").mkdir(parents=True)
        (d / "ready").write_text("x\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(used)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert remove_unused_builds(root, keep=new) == [unused]
        assert used.is_dir() and new.is_dir() and not unused.exists()
    finally:
        holder.stdin.close()
        holder.wait(30)
    # once its user has exited, the old build goes at the next cleanup
    assert remove_unused_builds(root, keep=new) == [used]
    assert sorted(p.name for p in root.iterdir()) == ["new"]
