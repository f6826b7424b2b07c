"""qmroct.warmworker (issue 13): a job's step runs in a forked process of the run's warm
worker, and from outside it still looks like the job's own process: its exit status, its
output, its folder and environment, its signals; the worker is reused and ends with the run.

Each test runs real client processes (``python -c``) against a real worker on a unix
socket, as the ``script:`` jobs do; the step functions live in a module of the test's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qmroct.scratch import claim, run_folder

STEPS = """
import os, signal, sys, time
from pathlib import Path

def report(job):
    out = Path(job.out)
    out.write_text(repr({
        "cwd": os.getcwd(),
        "env": os.environ.get("QMROCT_TEST_VALUE"),
        "pid": os.getpid(),
        "parent": os.getppid(),
        "numpy_loaded_before": "numpy" in sys.modules,
    }))
    print("to the job's stdout")
    print("to the job's stderr", file=sys.stderr)

def fail(job):
    raise ValueError("a step that fails")

def exit_three(job):
    os._exit(3)

def segfault(job):
    os.kill(os.getpid(), signal.SIGSEGV)

def params_out(job):
    Path(job.params.out).write_text(repr({"pid": os.getpid(), "rule": job.rule,
                                          "params": vars(job.params)}))

def wait_for_go(job):
    Path(job.out).write_text(str(os.getpid()))
    while not Path(job.out + ".go").exists():
        time.sleep(0.05)
    print("went")

def wait_for_interrupt(job):
    Path(job.out).write_text(str(os.getpid()))
    try:
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        Path(job.out + ".interrupted").write_text("yes")
        raise
"""

CLIENT = """
import sys, types
sys.path.insert(0, sys.argv[1])
from qmroct.warmworker.client import run_step
job = types.SimpleNamespace(config={"scratch_dir": sys.argv[2]}, out=sys.argv[4])
run_step(sys.argv[3], job)
"""


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "wwsteps.py").write_text(STEPS)
    folder = claim(run_folder(tmp_path / "scratch"))  # owned by this (test) process
    yield folder
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    _wait(lambda: not _workers(folder), "the worker ends once its run folder is gone")


def _workers(folder: Path) -> list[int]:
    """The folder's worker processes; not their forks (a job process shows the same command
    line until its step has changed it, or it has exited)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if b"qmroct.warmworker.server" in cmdline and str(folder).encode() in cmdline:
                found[int(entry.name)] = parent
    return [pid for pid, parent in found.items() if parent not in found]


def _wait(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)


def _client(run_dir: Path, step: str, out: Path, env=None, **kwargs) -> subprocess.Popen:
    steps = run_dir.parent.parent / "steps"
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(steps), str(run_dir), f"wwsteps:{step}", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=kwargs.pop("cwd", run_dir.parent.parent),
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def test_a_step_runs_as_the_job_in_a_reused_worker(run_dir, tmp_path):
    job_dir = tmp_path / "jobdir"
    job_dir.mkdir()
    outs = []
    for n in range(2):
        out = tmp_path / f"out{n}"
        proc = _client(run_dir, "report", out, env={"QMROCT_TEST_VALUE": f"v{n}"}, cwd=job_dir)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert stdout == "to the job's stdout\n"
        assert "to the job's stderr" in stderr
        outs.append(eval(out.read_text()))
    workers = _workers(run_dir)
    assert len(workers) == 1  # the second job reused the first job's worker
    for n, seen in enumerate(outs):
        assert seen["cwd"] == str(job_dir)
        assert seen["env"] == f"v{n}"  # each job's own environment
        assert seen["parent"] == workers[0]  # the worker forked the job process
        assert seen["numpy_loaded_before"]  # the point: imports paid by the worker
    assert outs[0]["pid"] != outs[1]["pid"]  # every job its own process


@pytest.mark.parametrize(
    "step, returncode, stderr_has",
    [
        ("fail", 1, "ValueError: a step that fails"),
        ("exit_three", 3, ""),
        ("segfault", -signal.SIGSEGV, ""),
    ],
)
def test_the_job_ends_as_its_step_did(run_dir, tmp_path, step, returncode, stderr_has):
    proc = _client(run_dir, step, tmp_path / "out")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == returncode, stderr
    assert stderr_has in stderr
    # one job's crash takes nothing with it: the next job runs in the same worker
    ok = _client(run_dir, "report", tmp_path / "next")
    assert ok.communicate(timeout=120) and ok.returncode == 0
    assert len(_workers(run_dir)) == 1


def test_ctrl_c_reaches_the_step(run_dir, tmp_path):
    out = tmp_path / "out"
    proc = _client(run_dir, "wait_for_interrupt", out)
    _wait(lambda: out.exists() and out.read_text(), "the step started")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert (tmp_path / "out.interrupted").read_text() == "yes"
    assert "KeyboardInterrupt" in stderr
    assert proc.returncode == -signal.SIGINT  # as a Python process ends on an uncaught Ctrl-C


def test_a_killed_job_does_not_leave_its_step_running(run_dir, tmp_path):
    out = tmp_path / "out"
    proc = _client(run_dir, "wait_for_interrupt", out)
    _wait(lambda: out.exists() and out.read_text(), "the step started")
    step_pid = int(out.read_text())
    proc.kill()  # SIGKILL: the client cannot pass anything on
    proc.communicate(timeout=60)
    _wait(lambda: not Path(f"/proc/{step_pid}").exists(), "the orphaned step was ended")


def test_the_worker_ends_when_its_run_ends(tmp_path):
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "wwsteps.py").write_text(STEPS)
    # the run folder's owner is a process that ends (here a sleep; in a run, snakemake)
    owner = subprocess.Popen(["sleep", "600"])
    try:
        from qmroct.scratch import Owner

        folder = claim(tmp_path / "scratch" / f"run-{owner.pid}-abcd1234", Owner.current(owner.pid))
        proc = _client(folder, "report", tmp_path / "out")
        assert proc.communicate(timeout=120) and proc.returncode == 0
        assert len(_workers(folder)) == 1
    finally:
        owner.kill()
        owner.wait()
    _wait(lambda: not _workers(folder), "the worker ends once the run's owner is gone")


def test_a_job_running_when_its_run_ends_still_finishes_and_is_reported(run_dir, tmp_path):
    out = tmp_path / "out"
    proc = _client(run_dir, "wait_for_go", out)
    _wait(lambda: out.exists() and out.read_text(), "the step started")
    (worker,) = _workers(run_dir)
    import shutil

    shutil.rmtree(run_dir)  # the run is over: the worker stops taking jobs...
    _wait(lambda: not (run_dir / ".warm-worker").exists(), "the run folder is gone")
    (tmp_path / "out.go").write_text("")  # ...and its running job goes on to its end
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert stdout == "went\n"
    _wait(lambda: not Path(f"/proc/{worker}").exists(), "then the worker ends")


def test_switched_off_the_step_runs_in_the_job_process(run_dir, tmp_path):
    out = tmp_path / "out"
    proc = _client(run_dir, "report", out, env={"QMROCT_WARM_WORKER": "0"})
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert eval(out.read_text())["pid"] == proc.pid
    assert not _workers(run_dir)


def test_a_job_command_parses_back_into_what_its_step_reads():
    import json

    from qmroct.warmworker.job import CONTEXT_ENV, JobArgumentError, parse, step_command

    command = step_command(
        "qmroct.workflow:summary_step",
        "session_summary",
        input=("session",),
        inputs=("results",),
        output=("x",),
    )
    # Snakemake's code trigger compares this text: nothing in it may depend on the machine
    assert "/" not in command.replace("{input.", "").split("-m", 1)[1]
    environ = {CONTEXT_ENV: json.dumps({"config": {"a": 1}, "workflow_dir": "/wf"})}
    target, job = parse(
        ["qmroct.workflow:summary_step", "session_summary", "--input", "session", "s.json"]
        + ["--inputs", "results", "r1.json", "r2.json", "--output", "x", "x.json"]
        + ["--param", "algorithm_name", "noise", "--log", "l.log"],
        environ,
    )
    assert target == "qmroct.workflow:summary_step" and job.rule == "session_summary"
    assert job.input.session == "s.json" and job.input.results == ["r1.json", "r2.json"]
    assert list(job.input) == ["s.json", "r1.json", "r2.json"]
    assert job.output.x == "x.json" and job.log == ["l.log"]
    assert job.params.algorithm_name == "noise" and job.config == {"a": 1}
    assert job.scriptdir == "/wf/scripts"
    with pytest.raises(JobArgumentError, match=CONTEXT_ENV):
        parse(["t:f", "rule"], {})
    with pytest.raises(JobArgumentError, match="unexpected argument --input session"):
        parse(["t:f", "rule", "--input", "session"], environ)


def test_without_a_worker_the_step_still_runs_and_says_why(run_dir, tmp_path):
    (run_dir / ".warm-worker").write_text("not a folder")  # no worker can live here
    out = tmp_path / "out"
    proc = _client(run_dir, "report", out)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "no warm worker" in stderr and "running the step in the job's process" in stderr
    assert eval(out.read_text())["pid"] == proc.pid and stdout == "to the job's stdout\n"
    assert not _workers(run_dir)


def _entry(run_dir: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """A job's command as Snakemake runs it: ``python -P -m qmroct.warmworker ...`` with the
    environment the Snakefile exports (qmroct.warmworker.job.export_context)."""
    import json

    from qmroct.warmworker import RUN_FOLDER_ENV
    from qmroct.warmworker.job import CONTEXT_ENV

    steps = run_dir.parent.parent / "steps"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(steps), os.environ.get("PYTHONPATH")])),
        RUN_FOLDER_ENV: str(run_dir),
        CONTEXT_ENV: json.dumps({"config": {"scratch_dir": str(run_dir)}, "workflow_dir": "/wf"}),
    }
    return subprocess.run(
        [sys.executable, "-P", "-m", "qmroct.warmworker", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=run_dir.parent.parent,
        timeout=120,
    )


def test_a_job_command_is_read_by_the_worker(run_dir, tmp_path):
    out = tmp_path / "out"
    done = _entry(run_dir, ["wwsteps:params_out", "compute_x", "--param", "out", str(out)])
    assert done.returncode == 0, done.stderr
    seen = eval(out.read_text())
    assert seen["rule"] == "compute_x" and seen["params"] == {"out": str(out)}
    assert seen["pid"] != os.getpid() and len(_workers(run_dir)) == 1
    # a malformed command: the same one-line error and exit status as in the job's process
    bad = _entry(run_dir, ["wwsteps:params_out", "compute_x", "--bogus", "1"])
    assert bad.returncode == 2
    assert "qmroct: unexpected argument --bogus 1" in bad.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
    reason="needs root (to listen as another user) and a system python3 that user can run",
)
def test_a_worker_socket_of_another_user_gets_nothing(run_dir, tmp_path):
    import shutil
    import tempfile

    from qmroct.warmworker import FOLDER
    from qmroct.warmworker.client import _worker_name

    # Another user's listening socket, made where that user can write and then moved into
    # the place where the job looks for its worker (root can; the test stands in for a
    # run folder that someone else got hold of).
    theirs = Path(tempfile.mkdtemp(prefix="qmroct-impostor-"))
    shutil.chown(theirs, 65534, 65534)
    impostor = subprocess.Popen(
        [
            "/usr/bin/python3",
            "-c",
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1] + '/s'); s.listen(1)\n"
            "open(sys.argv[1] + '/ready', 'w').close()\n"
            "c, _ = s.accept(); data = c.recv(1 << 20)\n"
            "open(sys.argv[1] + '/got', 'wb').write(data)\n",
            str(theirs),
        ],
        user=65534,
        group=65534,
        cwd="/",
    )
    try:
        _wait(lambda: (theirs / "ready").exists(), "the other user's socket listens")
        (run_dir / FOLDER).mkdir()
        os.rename(theirs / "s", run_dir / FOLDER / f"{_worker_name()}.sock")
        out = tmp_path / "out"
        done = _entry(run_dir, ["wwsteps:params_out", "compute_x", "--param", "out", str(out)])
        assert done.returncode == 0, done.stderr
        assert "belongs to another user" in done.stderr  # and the job ran in its own process
        assert eval(out.read_text())["rule"] == "compute_x"
        _wait(lambda: impostor.poll() is not None, "the other user's listener saw the close")
        assert (theirs / "got").read_bytes() == b""  # not a byte of the job's environment
    finally:
        impostor.kill()
        impostor.wait()
        shutil.rmtree(theirs, ignore_errors=True)
