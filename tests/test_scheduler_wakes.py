"""The head lifts Snakemake's default job rate limit, whose timers woke the scheduler once a
second per finished job while other jobs waited (qmroct.scheduler_wakes). Real Snakemake runs
of a small workflow: one core, four one-after-the-other jobs; the scheduler's passes are
counted from its debug log ("Resources before job selection", one per pass)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SNAKEFILE = textwrap.dedent(
    """
    from qmroct.scheduler_wakes import lift_default_rate_limit

    onstart:
        lift_default_rate_limit(workflow)
        limiter = workflow.scheduler.job_rate_limiter
        with open("limit.txt", "w") as fh:
            fh.write("none" if limiter is None else f"{limiter.max_jobs}/{limiter.timespan}")

    rule all:
        input: expand("out/{i}.txt", i=range(4))

    rule one:
        output: "out/{i}.txt"
        shell: "sleep 0.6 && touch {output}"
    """
)
JOBS = 5  # four "one" jobs and "all"


def _run(tmp_path: Path, *args: str) -> tuple[str, int]:
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--verbose", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    passes = (done.stdout + done.stderr).count("Resources before job selection")
    return (tmp_path / "limit.txt").read_text(), passes


def test_the_default_limit_is_lifted_and_the_scheduler_wakes_only_for_jobs(tmp_path):
    limit, passes = _run(tmp_path)
    assert limit == "none"
    # a pass at the start and one per finished job, no timer passes
    assert passes <= JOBS + 1, passes


def test_a_limit_the_operator_chose_is_kept_with_its_wakes(tmp_path):
    kept, passes = _run(tmp_path, "--max-jobs-per-timespan", "99/1s")
    assert kept.startswith("99/")
    # with a limit, timer passes come on top (the cost the default's removal saves); this
    # also shows the count above can fail
    assert passes > JOBS + 1, passes
