"""The documented journeys, run from the docs' own shell blocks.

A fenced ```sh block right after an HTML comment ``<!-- journey: NAME -->`` (invisible
on GitHub) belongs to journey NAME; its blocks run in the order they appear, as one
bash script (``set -euo pipefail``), in a clone-like folder: the workflow files copied,
``.venv``, ``src``, ``tests`` and ``profiles`` linked from this checkout, ``.venv/bin``
first on PATH (README: "Run snakemake from .venv"). So a command a new user copies from
the docs is the command tested; a doc edit that breaks one fails here.

Journeys: README.md (partial reprocessing, crash recovery), docs/algorithms.md (write,
try, declare), docs/xnat.md section 7 (the XNAT test server), tests/cloud/README.md (a
run on the Nova test cloud, which stands in for docs/openstack.md's cloud).

What the test changes, and only this: it does what `make demo` does on a small scale
(2 sessions of 5x128x64 B-scans, then one workflow run) where a journey starts "after
`make demo`", keeps two algorithms in config.yaml, and swaps fixed ports and /tmp paths
of a block for free ones.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support import copy_workflow

from tests.support import REPO

MARK = re.compile(r"<!--\s*journey:\s*([\w-]+)\s*-->\s*\n```(?:sh|bash)\n(.*?)\n```", re.S)
SMALL = "5x128x64"


def journey(doc: str, name: str) -> str:
    """The journey's shell blocks of ``doc``, in order, as one script."""
    blocks = [body for tag, body in MARK.findall((REPO / doc).read_text()) if tag == name]
    assert blocks, f"{doc} has no block marked <!-- journey: {name} -->"
    return "\n".join(blocks)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def clone(tmp_path) -> Path:
    root = copy_workflow(tmp_path / "qmroct")
    for name in (".venv", "src", "tests", "profiles", "docs"):
        (root / name).symlink_to(REPO / name)
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["algorithms"] = {"noise": {}, "layers": {}}
    config["studies"] = {
        "demo_trial": {"criteria": ["noise.snr_db >= 15", "layers.detection_fraction >= 0.95"]}
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def run_script(root: Path, script: str, timeout: int = 900) -> subprocess.CompletedProcess:
    # background jobs a block starts (a test server) end with the script, whatever happens
    wrapped = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script
    env = dict(os.environ, PATH=f"{root / '.venv' / 'bin'}:{os.environ['PATH']}", EDITOR="true")
    env.pop("XNAT_USER", None), env.pop("XNAT_PASS", None)
    proc = subprocess.run(
        ["bash", "-c", wrapped], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"journey failed ({proc.returncode}):\n--- script\n{script}\n--- stdout\n"
        f"{proc.stdout[-5000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    )
    return proc


def small_demo_archive(root: Path, out: str = "demo") -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "qmroct.cli",
            "demo-archive",
            "--out",
            out,
            "--sessions",
            "2",
            "--seed",
            "0",
            "--shape",
            SMALL,
        ],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=300,
    )


def test_journey_extracts_only_marked_blocks():
    readme = journey("README.md", "readme")
    assert readme.startswith("snakemake -n") and "snakemake --unlock" not in readme
    assert journey("README.md", "crash").startswith("snakemake --unlock")
    with pytest.raises(AssertionError, match="no block marked"):
        journey("README.md", "no-such-journey")


@pytest.mark.slow
def test_readme_partial_reprocessing_and_crash_recovery(clone):
    """README: partial reprocessing targets, then the crash-recovery commands after a
    run killed while writing (a lock left behind, a KQI file marked incomplete)."""
    small_demo_archive(clone)
    run_script(clone, "snakemake --cores 2 --keep-going")  # the rest of `make demo`
    run_script(clone, journey("README.md", "readme"))
    for target in (
        "results/kqi/DEMO/SUBJ001_V1/noise.json",
        "results/by_algorithm/noise.tsv",
        "results/by_project/DEMO.tsv",
        "results/report/index.html",
    ):
        assert (clone / target).is_file(), target
    result = json.loads((clone / "results/kqi/DEMO/SUBJ001_V1/noise.json").read_text())
    assert result["status"] == "ok"
    # a "killed" run: Snakemake's own lock and incomplete marker for a KQI file
    kqi = clone / "results/kqi/DEMO/SUBJ001_V1/noise.json"
    # the same command twice: killed hard as its job starts, then refused by the lock left
    run_noise = [
        str(clone / ".venv/bin/snakemake"),
        "--cores",
        "1",
        "--forcerun",
        "compute_noise",
        str(kqi.relative_to(clone)),
    ]
    killed = subprocess.Popen(
        run_noise,
        cwd=clone,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PATH=f"{clone / '.venv/bin'}:{os.environ['PATH']}"),
    )
    for line in killed.stdout:  # killed hard as its job starts: lock (and marker) stay
        if "rule compute_noise" in line:
            break
    killed.kill()
    killed.wait()
    blocked = subprocess.run(
        run_noise,
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PATH=f"{clone / '.venv/bin'}:{os.environ['PATH']}"),
    )
    assert blocked.returncode != 0 and "LockException" in blocked.stdout + blocked.stderr
    run_script(clone, journey("README.md", "crash"))
    assert json.loads(kqi.read_text())["status"] == "ok"
    incomplete = clone / ".snakemake" / "incomplete"
    assert not incomplete.is_dir() or not any(incomplete.iterdir())


@pytest.mark.slow
def test_algorithms_write_try_declare(clone):
    """docs/algorithms.md: scaffold a Python and an Octave algorithm, test them, try one
    on a scan file, declare it in config.yaml and compute it over the archive."""
    small_demo_archive(clone)
    run_script(clone, journey("docs/algorithms.md", "algorithms"))
    table = (clone / "results/by_algorithm/myqi.tsv").read_text()
    assert "SUBJ001_V1" in table and "SUBJ001_V2" in table
    assert (clone / "algorithms/myqo/myqo_kqi.m").is_file()


@pytest.mark.slow
def test_xnat_try_it_with_the_test_server(clone, tmp_path):
    """docs/xnat.md section 7: demo archive loaded into the XNAT test server, the
    workflow run against it; assessors written to the server."""
    port = str(_free_port())
    script = journey("docs/xnat.md", "xnat")
    data, log = tmp_path / "xnat-data", tmp_path / "xnat.log"
    script = script.replace("8080", port).replace("/tmp/xnat.log", str(log))
    script = script.replace("/tmp/xnat ", f"{data} ")
    run_script(clone, script)
    access = (data / "access.log").read_text().splitlines()
    writes = [line for line in access if " PUT " in line and "/assessors/" in line]
    assert writes and all(line.split()[-1].startswith("2") for line in writes), writes[:5]
    assert (clone / "results/report/index.html").is_file()


@pytest.mark.slow
@pytest.mark.cloud
def test_cloud_run_on_the_test_cloud(clone, tmp_path):
    """tests/cloud/README.md: the test cloud started with the README's command, the
    README's clouds.yaml, then its run block; the workflow completes on the VMs."""
    readme = (REPO / "tests/cloud/README.md").read_text()
    start = (
        re.search(
            r"^(\.venv-nova/bin/python tests/cloud/novacloud\.py .*?\n.*?)\n#", readme, re.S | re.M
        )
        .group(1)
        .replace("\\\n", " ")
    )
    clouds = re.search(r"```yaml\n(clouds:.*?)```", readme, re.S).group(1)
    api, ssh = str(_free_port()), str(_free_port())
    key = tmp_path / "ssh" / "id_ed25519"  # the README's ~/.ssh/id_ed25519, kept out of $HOME
    key.parent.mkdir()
    (clone / ".venv-nova").symlink_to(REPO / ".venv-nova")
    (clone / "clouds.yaml").write_text(clouds.replace("18774", api))
    small_demo_archive(clone)
    state = tmp_path / "novacloud"
    command = start.replace("18774", api).replace("/tmp/novacloud", str(state))
    log = tmp_path / "novacloud.log"  # a file, not a pipe: Nova logs a lot and must not block
    with open(log, "w") as fh:
        cloud = subprocess.Popen(
            f"exec {command} --ssh-port {ssh}",
            shell=True,
            cwd=clone,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        # the README's "-> nova test cloud serving ..." line
        while "nova test cloud serving" not in log.read_text():
            if cloud.poll() is not None:
                pytest.fail(f"the test cloud did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        script = journey("tests/cloud/README.md", "cloud")
        script = script.replace("~/.ssh/id_ed25519", str(key)).replace("2222", ssh)
        proc = run_script(clone, script)
    finally:
        cloud.terminate()
        cloud.wait(timeout=60)
    out = proc.stdout + proc.stderr
    assert "openstack summary:" in out and "(2 done, 0 failed)" in out, out[-3000:]
    assert (clone / "results/report/index.html").is_file()
