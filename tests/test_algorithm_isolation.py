"""Issue 9, cases 6 and 9, through real snakemake: hostile algorithms are failed rows.

An algorithm that never returns, one that segfaults, one that calls
``sys.exit(0)``, one that calls ``os._exit(3)`` and one that prints 80 MB run
beside ``noise`` over the small demo archive. The run succeeds without
``--keep-going``; every bad call is a ``failed`` row naming its cause in the
tables and the report; the 80 MB are in the job's log, capped, and not on the
console.
"""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

VALID = "{'kqis': {'value_a': {'value': 1.0, 'unit': 'px'}}}"
HOSTILE = {
    "hang": (
        "import time\ndef compute(v, m, p, w):\n    while True:\n        time.sleep(1)\n",
        "timed out after 2 s",
    ),
    "segv": (
        "import ctypes\ndef compute(v, m, p, w):\n    ctypes.string_at(0)\n",
        "killed by SIGSEGV",
    ),
    "quits": (
        "import sys\ndef compute(v, m, p, w):\n    sys.exit(0)\n",
        "exited 0 without writing its output",
    ),
    "exits3": ("import os\ndef compute(v, m, p, w):\n    os._exit(3)\n", "exited with status 3"),
}
CHATTY = """
import sys
def compute(v, m, p, w):
    print("CHATTY-FIRST")
    line = "y" * 1023 + "\\n"
    for _ in range(80 * 1024):
        sys.stdout.write(line)
    print("CHATTY-LAST")
    {ending}
"""


def _add_algorithm(root, name: str, body: str) -> None:
    folder = root / "algorithms" / name
    folder.mkdir(parents=True)
    (folder / "algo.py").write_text(textwrap.dedent(body))
    (folder / "algorithm.yaml").write_text(
        f"name: {name}\nversion: '0.1'\nruntime: python\nentry: algo.py\n"
        "resources: {threads: 1, mem_mb: 100, runtime_s: 0.5}\n"
        "kqis: [{name: value_a, unit: px, higher_is_better: true}]\n"
    )


def test_hostile_algorithms_are_failed_rows_and_the_report_is_built(workflow):
    for name, (body, _) in HOSTILE.items():
        _add_algorithm(workflow.root, name, body)
    _add_algorithm(workflow.root, "chatty", CHATTY.format(ending=f"return {VALID}"))
    # The same 80 MB, then a failure: the row's reason carries a short tail, the console none.
    _add_algorithm(workflow.root, "chatfail", CHATTY.format(ending="raise RuntimeError('gave up')"))
    config = workflow.config()
    config["algorithms"] = {"noise": {}, "chatty": {}, "chatfail": {}}
    config["algorithms"].update({name: {} for name in HOSTILE})
    config["studies"] = {"demo_trial": {"criteria": ["noise.snr_db >= 15"]}}
    # runtime_s 0.5 x 1, floor 2 s: the endless loop is stopped after 2 s.
    config["limits"] = {"algorithm_timeout_factor": 1, "algorithm_min_timeout_s": 2}
    workflow.write_config(config)

    proc = workflow.run()  # no --keep-going: no job may fail

    root = workflow.root
    tidy = pd.read_csv(root / "results/tables/kqi.tsv", sep="\t", dtype={"scan": str})
    scans = tidy[tidy["algorithm"] == "noise"][["session", "scan"]].drop_duplicates()
    assert len(scans) == 6  # 3 sessions x 2 scans
    assert set(tidy[tidy["algorithm"] == "noise"]["status"]) == {"ok"}
    assert set(tidy[tidy["algorithm"] == "chatty"]["status"]) == {"ok"}
    chatfail = tidy[tidy["algorithm"] == "chatfail"]
    assert len(chatfail) == len(scans) and set(chatfail["status"]) == {"failed"}
    assert all("RuntimeError: gave up" in e and len(e) < 8000 for e in chatfail["error"])
    for name, (_, reason) in HOSTILE.items():
        rows = tidy[tidy["algorithm"] == name]
        assert len(rows) == len(scans), name  # one failed row per scan, none missing
        assert set(rows["status"]) == {"failed"}, name
        assert all(reason in error for error in rows["error"]), (name, set(rows["error"]))

    html = (root / "results/report/index.html").read_text()
    for _, reason in HOSTILE.values():
        assert reason in html
    assert (root / "results/tables/studies/demo_trial.tsv").is_file()

    # Case 9: the job's log has the head and tail of the 80 MB, the console has none of it.
    logs = sorted(root.glob("logs/compute/**/chatty.log")) + sorted(
        root.glob("logs/compute/**/chatfail.log")
    )
    assert len(logs) == 6
    for log in logs:
        text = log.read_text()
        assert (
            "CHATTY-FIRST" in text and "CHATTY-LAST" in text and "bytes of output dropped" in text
        )
        assert log.stat().st_size < 2 * (2 * 64 * 1024 + 4096)  # two scans, each capped
    console = proc.stdout + proc.stderr
    assert "yyyy" not in console and "CHATTY" not in console
    assert len(console) < 1_000_000
    for log in root.glob(".snakemake/log/*.log"):
        assert "yyyy" not in log.read_text()
    # The crash's own output (faulthandler's stack) is in its job's log too.
    segv_log = next(root.glob("logs/compute/**/segv.log")).read_text()
    assert "Segmentation fault" in segv_log
