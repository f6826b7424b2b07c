"""qmroct.job_exit: a job's process ends without the interpreter's teardown (issue 13),
keeping its exit hooks, its log file and its output."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import atexit, logging, sys, threading
from pathlib import Path
from qmroct.job_exit import exit_now

out = Path(sys.argv[1])

class TornDown:  # its __del__ runs only when the interpreter frees module globals
    def __del__(self):
        (out / "teardown").write_text("ran")

keep = TornDown()
atexit.register(lambda: (out / "atexit").write_text("ran"))
log = logging.getLogger("job")
log.addHandler(logging.FileHandler(out / "job.log"))
log.warning("result written")
print("to stdout", end="")
if sys.argv[2] == "thread":
    threading.Thread(target=lambda: __import__("time").sleep(0.2)).start()
exit_now()
"""


def run(tmp_path, mode):
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path), mode], capture_output=True, text=True
    )
    return proc


def test_exit_hooks_log_and_output_kept_teardown_skipped(tmp_path):
    proc = run(tmp_path, "alone")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "to stdout"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "job.log").read_text() == "result written\n"
    assert not (tmp_path / "teardown").exists(), "the interpreter was torn down"


def test_a_live_thread_means_a_normal_exit(tmp_path):
    proc = run(tmp_path, "thread")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "teardown").read_text() == "ran"
