"""Hostile algorithms through the runner: every way of dying is a failure naming the cause.

Issue 9, cases 6 and 9. Each algorithm is real code written into a temporary
algorithms folder and run through ``Algorithm.run``: in the forked child (the
normal path), in a fresh interpreter (the path taken while other threads run)
and, where the runtime allows, as an executable.
"""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from qmroct.algorithms import AlgorithmFailure, load_algorithm
from qmroct.algorithms.child import CappedOutput, run_forked
from qmroct.algorithms.runner import MIN_TIMEOUT_S, OUTPUT_KEEP, TIMEOUT_FACTOR

VALID = "{'kqis': {'value_a': {'value': 1.0, 'unit': 'px'}}}"

# name -> (algorithm body, what the failure says)
HOSTILE = {
    "never_returns": (
        "def compute(v, m, p, w):\n    while True:\n        pass\n",
        "timed out after 2 s",
    ),
    "segfault_kill": (
        "import os, signal\ndef compute(v, m, p, w):\n    os.kill(os.getpid(), signal.SIGSEGV)\n",
        "killed by SIGSEGV",
    ),
    "segfault_ctypes": (
        "import ctypes\ndef compute(v, m, p, w):\n    ctypes.string_at(0)\n",
        "killed by SIGSEGV",
    ),
    "sys_exit_0": (
        "import sys\ndef compute(v, m, p, w):\n    sys.exit(0)\n",
        "exited 0 without writing its output",
    ),
    "os_exit_3": ("import os\ndef compute(v, m, p, w):\n    os._exit(3)\n", "exited with status 3"),
    "exit_at_import": (
        "import sys\nsys.exit(0)\ndef compute(v, m, p, w):\n    pass\n",
        "exited 0 without writing its output",
    ),
    "abort": ("import os\ndef compute(v, m, p, w):\n    os.abort()\n", "killed by SIGABRT"),
}


def make_algo(root: Path, name: str, body: str, runtime_s: float = 0.5) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "algo.py").write_text(textwrap.dedent(body))
    (folder / "algorithm.yaml").write_text(
        f"name: {name}\nversion: '0.1'\nruntime: python\nentry: algo.py\n"
        f"resources: {{threads: 1, mem_mb: 100, runtime_s: {runtime_s}}}\n"
        "kqis: [{name: value_a, unit: px, higher_is_better: true}]\n"
    )
    return folder


def make_executable(root: Path, name: str, script: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "run.sh").write_text("#!/bin/sh\n" + textwrap.dedent(script))
    (folder / "run.sh").chmod(0o755)
    (folder / "algorithm.yaml").write_text(
        f"name: {name}\nversion: '0.1'\nruntime: executable\nentry: run.sh\n"
        "kqis: [{name: value_a, unit: px, higher_is_better: true}]\n"
    )
    return folder


@pytest.fixture
def scan(tmp_path, stage):
    vol = np.random.default_rng(0).normal(100, 5, size=(2, 32, 24)).astype(np.float32)
    return stage(tmp_path / "in", vol, {"bscan": 0.1, "depth": 0.004, "ascan": 0.01})


@pytest.fixture(params=["fork", "fresh_interpreter"])
def child_mode(request):
    """fork: the normal path. fresh_interpreter: another thread runs, the runner must not fork."""
    if request.param == "fork":
        assert threading.active_count() == 1, (
            "another thread runs: the fork path would not be tested"
        )
        yield request.param
        return
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        yield request.param
    finally:
        stop.set()
        thread.join()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent, this test's child, is gone: init reaps it).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_python_algorithm_is_a_named_failure(tmp_path, scan, child_mode, case):
    body, reason = HOSTILE[case]
    make_algo(tmp_path / "algs", "bad", body)
    algo = load_algorithm("bad", [tmp_path / "algs"])
    started = time.monotonic()
    with pytest.raises(AlgorithmFailure) as err:
        algo.run(scan[0], scan[1], {}, tmp_path / "w", timeout=2)
    assert reason in err.value.message, err.value.message
    assert time.monotonic() - started < 30
    # The caller (this process) lives on and can run the next algorithm.
    make_algo(tmp_path / "algs", "good", f"def compute(v, m, p, w):\n    return {VALID}\n")
    assert load_algorithm("good", [tmp_path / "algs"]).run(scan[0], scan[1], {}, tmp_path / "w2")[
        "kqis"
    ]


def test_segfault_leaves_the_python_stack_in_the_output(tmp_path, scan):
    make_algo(
        tmp_path / "algs",
        "bad",
        "import ctypes\ndef compute(v, m, p, w):\n    ctypes.string_at(0)\n",
    )
    with pytest.raises(AlgorithmFailure) as err:
        load_algorithm("bad", [tmp_path / "algs"]).run(
            scan[0], scan[1], {}, tmp_path / "w", timeout=20
        )
    assert "Segmentation fault" in err.value.output and "algo.py" in err.value.output


def test_timeout_kills_the_whole_process_group(tmp_path, scan):
    """The algorithm starts a helper process and hangs; both are gone after the timeout."""
    pidfile = tmp_path / "helper.pid"
    make_algo(
        tmp_path / "algs",
        "hang",
        f"""
        import subprocess, time
        def compute(v, m, p, w):
            helper = subprocess.Popen(["sleep", "300"])
            open({str(pidfile)!r}, "w").write(str(helper.pid))
            time.sleep(300)
    """,
    )
    with pytest.raises(AlgorithmFailure, match="timed out after 3 s"):
        load_algorithm("hang", [tmp_path / "algs"]).run(
            scan[0], scan[1], {}, tmp_path / "w", timeout=3
        )
    assert _wait_gone(int(pidfile.read_text()))


def test_leftover_processes_are_ended_when_the_algorithm_returns(tmp_path, scan):
    """A helper the algorithm left running (holding the output pipe) does not outlive the call."""
    pidfile = tmp_path / "helper.pid"
    make_algo(
        tmp_path / "algs",
        "leaky",
        f"""
        import subprocess
        def compute(v, m, p, w):
            helper = subprocess.Popen(["sleep", "300"])
            open({str(pidfile)!r}, "w").write(str(helper.pid))
            return {VALID}
    """,
    )
    started = time.monotonic()
    out = load_algorithm("leaky", [tmp_path / "algs"]).run(
        scan[0], scan[1], {}, tmp_path / "w", timeout=60
    )
    assert out["kqis"]["value_a"]["value"] == 1.0
    assert time.monotonic() - started < 30
    assert _wait_gone(int(pidfile.read_text()))


@pytest.mark.parametrize("ok", [True, False])
def test_80_mb_of_output_is_capped_head_and_tail(tmp_path, scan, child_mode, ok, capfd):
    """Case 9: 80 MB printed; first and last 64 KiB kept, the drop stated, nothing on our fds."""
    ending = f"return {VALID}" if ok else "raise RuntimeError('gave up')"
    make_algo(
        tmp_path / "algs",
        "chatty",
        f"""
        import sys
        def compute(v, m, p, w):
            print("FIRST-LINE")
            line = "y" * 1023 + "\\n"
            for _ in range(40 * 1024):
                sys.stdout.write(line)
                sys.stderr.write(line)
            print("LAST-LINE", file=sys.stderr)
            {ending}
    """,
    )
    algo = load_algorithm("chatty", [tmp_path / "algs"])
    if ok:
        text = algo.run(scan[0], scan[1], {}, tmp_path / "w", timeout=120)["output"]
    else:
        with pytest.raises(AlgorithmFailure, match="RuntimeError: gave up") as err:
            algo.run(scan[0], scan[1], {}, tmp_path / "w", timeout=120)
        text = err.value.output
        assert len(str(err.value)) < 8000  # the row's reason carries a short tail only
    assert text.startswith("FIRST-LINE\n")
    assert "LAST-LINE" in text[-OUTPUT_KEEP:]
    assert "bytes of output dropped" in text
    assert len(text.encode()) < 2 * OUTPUT_KEEP + 500
    dropped = int(text.split("[... ", 1)[1].split(" bytes", 1)[0])
    assert dropped > 80 * 1024 * 1024 - 2 * OUTPUT_KEEP
    seen = capfd.readouterr()
    assert "yyyy" not in seen.out and "yyyy" not in seen.err


def test_output_cap_is_configurable(tmp_path, scan):
    make_algo(
        tmp_path / "algs",
        "chatty",
        f"def compute(v, m, p, w):\n    print('z' * 100000)\n    return {VALID}\n",
    )
    text = load_algorithm("chatty", [tmp_path / "algs"]).run(
        scan[0], scan[1], {}, tmp_path / "w", output_keep=1000
    )["output"]
    assert text.startswith("z" * 1000 + "\n[... 98001 bytes of output dropped")
    assert text.endswith("z" * 999 + "\n")


def test_capped_output_keeps_exact_head_and_tail():
    cap = CappedOutput(10)
    for chunk in (b"0123", b"456789ab", b"cdefghijklmnop", b"qrstuvwxyz"):
        cap.feed(chunk)
    assert cap.total == 36 and cap.dropped == 16
    assert cap.head == b"0123456789" and cap.tail == b"qrstuvwxyz"
    small = CappedOutput(10)
    small.feed("héllo wörld, ok".encode())  # 17 bytes: nothing dropped, multibyte chars intact
    assert small.text() == "héllo wörld, ok"


def test_executable_runtime_is_isolated_the_same_way(tmp_path, scan):
    """The same causes for a program: a signal, an exit 0 without output, a status."""
    make_executable(tmp_path / "algs", "segv", "echo about to crash >&2\nkill -SEGV $$\n")
    make_executable(tmp_path / "algs", "quiet", "exit 0\n")
    make_executable(tmp_path / "algs", "three", "echo giving up\nexit 3\n")
    expected = {
        "segv": ("killed by SIGSEGV", "about to crash"),
        "quiet": ("exited 0 without writing its output", ""),
        "three": ("exited with status 3", "giving up"),
    }
    for name, (reason, printed) in expected.items():
        with pytest.raises(AlgorithmFailure) as err:
            load_algorithm(name, [tmp_path / "algs"]).run(
                scan[0], scan[1], {}, tmp_path / name, timeout=30
            )
        assert reason in err.value.message
        assert printed in err.value.output and printed in err.value.stderr_tail


def test_executable_helper_processes_die_on_timeout(tmp_path, scan):
    pidfile = tmp_path / "helper.pid"
    make_executable(tmp_path / "algs", "hang", f"sleep 300 &\necho $! > {pidfile}\nwait\n")
    with pytest.raises(AlgorithmFailure, match="timed out after 2 s"):
        load_algorithm("hang", [tmp_path / "algs"]).run(
            scan[0], scan[1], {}, tmp_path / "w", timeout=2
        )
    assert _wait_gone(int(pidfile.read_text()))


def test_default_limit_comes_from_the_manifest(tmp_path):
    make_algo(tmp_path / "algs", "slowish", "def compute(v, m, p, w):\n    pass\n", runtime_s=30)
    make_algo(tmp_path / "algs", "quick", "def compute(v, m, p, w):\n    pass\n", runtime_s=0.01)
    slowish = load_algorithm("slowish", [tmp_path / "algs"])
    quick = load_algorithm("quick", [tmp_path / "algs"])
    assert slowish.time_limit() == 30 * TIMEOUT_FACTOR
    assert quick.time_limit() == MIN_TIMEOUT_S  # the floor
    assert slowish.time_limit(factor=2, floor=1) == 60 and quick.time_limit(factor=2, floor=1) == 1


def test_default_limit_is_enforced(tmp_path, scan):
    """No timeout given: the manifest's runtime_s x factor applies (here with a 1 s floor)."""
    make_algo(
        tmp_path / "algs",
        "sleepy",
        "import time\ndef compute(v, m, p, w):\n    time.sleep(300)\n",
        runtime_s=0.5,
    )
    algo = load_algorithm("sleepy", [tmp_path / "algs"])
    timeout = algo.time_limit(factor=2, floor=0.1)
    with pytest.raises(AlgorithmFailure, match="timed out after 1 s"):
        algo.run(scan[0], scan[1], {}, tmp_path / "w", timeout=timeout)


def test_config_limits_reach_the_algorithm(tmp_path):
    """limits/algorithm_timeout_factor and algorithm_min_timeout_s, and timeout_s per algorithm."""
    from qmroct.config import ConfigError, check_config, validate_schema

    make_algo(tmp_path / "algorithms", "one", "def compute(v, m, p, w):\n    pass\n", runtime_s=4)
    make_algo(tmp_path / "algorithms", "two", "def compute(v, m, p, w):\n    pass\n", runtime_s=4)
    base = {
        "archive": {"backend": "directory", "path": str(tmp_path / "archive")},
        "projects": ["P"],
        "scratch_dir": str(tmp_path / "scratch"),
    }
    config = {**base, "algorithms": {"one": {}, "two": {"timeout_s": 7}}}
    validate_schema(config)
    settings = check_config(config, tmp_path)
    assert settings.algorithm_timeout("one") == max(MIN_TIMEOUT_S, 4 * TIMEOUT_FACTOR)
    assert settings.algorithm_timeout("two") == 7
    assert settings.algorithm_output_keep() == OUTPUT_KEEP  # the schema's default agrees
    config = {
        **base,
        "algorithms": {"one": {}},
        "limits": {
            "algorithm_timeout_factor": 3,
            "algorithm_min_timeout_s": 5,
            "algorithm_output_kib": 2,
        },
    }
    validate_schema(config)
    settings = check_config(config, tmp_path)
    assert settings.algorithm_timeout("one") == 12 and settings.algorithm_output_keep() == 2048
    for bad in (
        {"algorithm_timeout_factor": 0},
        {"algorithm_min_timeout_s": -1},
        {"algorithm_output_kib": 0},
        {"algorithm_timeout_factr": 2},
    ):
        with pytest.raises(ConfigError, match="limits"):
            validate_schema({**base, "algorithms": {"one": {}}, "limits": bad})


def test_schema_defaults_agree_with_the_runner():
    import yaml

    from qmroct.config import SCHEMA_PATH

    limits = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["limits"]["properties"]
    assert limits["algorithm_timeout_factor"]["default"] == TIMEOUT_FACTOR
    assert limits["algorithm_min_timeout_s"]["default"] == MIN_TIMEOUT_S
    assert limits["algorithm_output_kib"]["default"] * 1024 == OUTPUT_KEEP


def test_forked_child_runs_in_its_own_process_group():
    """setsid in the child: a timeout can kill the child and everything it started, nothing else."""
    r, w = os.pipe()

    def report() -> int:
        os.write(w, f"{os.getpgid(0)} {os.getpid()}".encode())
        return 0

    outcome = run_forked(report, 10, 1000)
    os.close(w)
    pgid, pid = os.read(r, 100).decode().split()
    os.close(r)
    assert outcome.returncode == 0 and pgid == pid and pid != str(os.getpid())


JOBS = {
    # A forked Python algorithm: it writes its own pid.
    "forked": """
        import os, time
        from pathlib import Path
        from qmroct.algorithms.child import run_forked
        def hang():
            Path({pidfile!r}).write_text(str(os.getpid()))
            time.sleep(300)
            return 0
        run_forked(hang, 300, 1000)
    """,
    # A program (Octave, an executable): the shell writes its pid, then becomes sleep.
    "program": """
        from pathlib import Path
        from qmroct.algorithms.child import run_command
        script = "echo $$ > {pidfile}; exec sleep 300"
        run_command(["sh", "-c", script], Path("."), {{"PATH": "/usr/bin:/bin"}}, 300, 1000)
    """,
}


@pytest.mark.parametrize("kind", sorted(JOBS))
def test_algorithm_dies_with_a_killed_job(tmp_path, kind):
    """kill -9 of the job process (Snakemake cancelling it) does not leave the algorithm running."""
    import subprocess
    import sys

    pidfile = tmp_path / "algorithm.pid"
    code = textwrap.dedent(JOBS[kind].format(pidfile=str(pidfile)))
    job = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.is_file() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline and job.poll() is None, "the algorithm never started"
            time.sleep(0.05)
        algorithm = int(pidfile.read_text())
        assert _alive(algorithm)
    finally:
        job.kill()
        job.wait()
    assert _wait_gone(algorithm)


def test_interrupting_the_caller_kills_the_child(tmp_path):
    """A KeyboardInterrupt while waiting (Snakemake stopping the job) leaves no child behind."""
    pidfile = tmp_path / "child.pid"

    def hang() -> int:
        pidfile.write_text(str(os.getpid()))
        time.sleep(300)
        return 0

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(2)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_forked(hang, 60, 1000)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert _wait_gone(int(pidfile.read_text()))


OCTAVE_CASES = {
    "endless": ("  while true\n    x = 1;\n  end\n", "timed out after 10 s"),
    "quits": ("  printf('leaving early\\n');\n  exit(0);\n", "exited 0 without writing its output"),
}


@pytest.mark.parametrize("case", sorted(OCTAVE_CASES))
def test_octave_runtime_is_isolated_the_same_way(tmp_path, scan, case):
    import shutil

    if not (shutil.which("octave-cli") or os.environ.get("OCTAVE_EXECUTABLE")):
        if os.environ.get("QMROCT_REQUIRE_OCTAVE") == "1":
            raise RuntimeError("QMROCT_REQUIRE_OCTAVE=1 but octave-cli is not installed")
        pytest.skip("GNU Octave (octave-cli) not installed")
    body, reason = OCTAVE_CASES[case]
    folder = tmp_path / "algs" / "octbad"
    folder.mkdir(parents=True)
    (folder / "octbad_kqi.m").write_text(
        f"function result = octbad_kqi(vol, meta, params, outdir)\n{body}end\n"
    )
    (folder / "algorithm.yaml").write_text(
        "name: octbad\nversion: '1'\nruntime: octave\nentry: octbad_kqi.m\n"
        "kqis: [{name: a, unit: px, higher_is_better: true}]\n"
    )
    with pytest.raises(AlgorithmFailure) as err:
        load_algorithm("octbad", [tmp_path / "algs"]).run(
            scan[0], scan[1], {}, tmp_path / "w", timeout=10
        )
    assert reason in err.value.message
    if case == "quits":
        assert "leaving early" in err.value.output
