"""SSH side (ssh.py): the remote run script, tar staging, the jump host's checks."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time

import pytest

from snakemake_executor_plugin_openstack.ssh import (
    JumpHostError,
    SshTarget,
    build_run_script,
    extract_tar,
    open_connection,
    tar_paths,
)


def test_jump_host_without_known_hosts_file_is_a_clear_error(tmp_path):
    t = SshTarget(
        "127.0.0.9",
        22,
        "me",
        None,
        None,
        "none",
        jump_host="bastion.example:2200",
        jump_known_hosts=str(tmp_path / "missing"),
        connect_timeout=2,
    )
    t0 = time.time()
    with pytest.raises(
        JumpHostError,
        match=r"jump host bastion.example:2200: known_hosts file .*missing does not exist",
    ):
        asyncio.run(open_connection(t))
    assert time.time() - t0 < 1  # decided before any network traffic


def test_run_script_exports_secrets_from_stdin_not_argv(tmp_path):
    job = tmp_path / "job"
    (job / ".snakemake-openstack").mkdir(parents=True)
    (job / ".snakemake-openstack" / "run.sh").write_text(build_run_script("/opt/worker/bin"))
    (job / ".snakemake-openstack" / "cmd.sh").write_text(
        'printf "%s|%s|%s" "$TOKEN" "$MULTI" "${PATH%%:*}" > out.txt; '
        'cat /proc/$$/cmdline | tr "\\0" " " > argv.txt\n'
    )
    secret = "s3cr=t 'quoted'"
    multi = base64.b64encode(b"a\nb").decode()
    stdin = f"TOKEN={base64.b64encode(secret.encode()).decode()}\nMULTI={multi}\n\n"
    r = subprocess.run(
        ["bash", str(job / ".snakemake-openstack" / "run.sh")],
        input=stdin.encode(),
        capture_output=True,
        timeout=20,
    )
    assert r.returncode == 0, r.stderr
    assert (job / "out.txt").read_text() == f"{secret}|a\nb|/opt/worker/bin"
    assert secret not in (job / "argv.txt").read_text()
    assert (job / ".snakemake-openstack" / "rc").read_text().strip() == "0"
    assert (job / ".snakemake-openstack" / "pid").read_text().strip().isdigit()


def test_run_script_returns_job_exit_code(tmp_path):
    job = tmp_path / "job"
    (job / ".snakemake-openstack").mkdir(parents=True)
    (job / ".snakemake-openstack" / "run.sh").write_text(build_run_script(None))
    (job / ".snakemake-openstack" / "cmd.sh").write_text("exit 7\n")
    r = subprocess.run(
        ["bash", str(job / ".snakemake-openstack" / "run.sh")], input=b"\n", timeout=20
    )
    assert r.returncode == 7


def test_tar_round_trip_skips_missing_and_outside_paths(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f.txt").write_text("x")
    (src / "d").mkdir()
    (src / "d" / "g.txt").write_text("y")
    data = tar_paths(
        ["a/b/f.txt", "d", "missing.txt", "../etc/passwd"], {"extra/run.sh": b"#!"}, root=str(src)
    )
    dst = tmp_path / "dst"
    dst.mkdir()
    names = extract_tar(data, str(dst))
    assert (dst / "a/b/f.txt").read_text() == "x" and (dst / "d/g.txt").read_text() == "y"
    assert (dst / "extra/run.sh").read_bytes() == b"#!"
    assert not any("passwd" in n or "missing" in n for n in names)


def _fetch(job, listing: str, shell: str):
    from snakemake_executor_plugin_openstack.ssh import FETCH_SH

    return subprocess.run(
        [shell, "-c", f"cd {job} && {FETCH_SH}"],
        input=listing.encode(),
        capture_output=True,
        timeout=20,
    )


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_fetch_fails_on_the_worker_naming_missing_required_outputs(tmp_path, shell):
    from snakemake_executor_plugin_openstack.ssh import FETCH_MISSING

    job = tmp_path / "job"
    (job / ".snakemake-openstack").mkdir(parents=True)
    (job / "res").mkdir()
    (job / "res" / "a b.json").write_text("{}")
    listing = "Rres/a b.json\nRres/gone.json\nOtmp/internal.txt\nRres/also gone\n"
    r = _fetch(job, listing, shell)
    assert r.returncode == FETCH_MISSING, r.stderr
    assert r.stderr.decode().splitlines() == ["missing: res/gone.json", "missing: res/also gone"]
    assert r.stdout == b""  # nothing is sent back


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_fetch_sends_required_and_present_optional_files(tmp_path, shell):
    job = tmp_path / "job"
    (job / ".snakemake-openstack").mkdir(parents=True)
    (job / "res" / "dir").mkdir(parents=True)
    (job / "res" / "a b.json").write_text("{}")
    (job / "res" / "dir" / "x").write_text("x")
    (job / "bench.tsv").write_text("s\n")
    r = _fetch(job, "Rres/a b.json\nRres/dir\nObench.tsv\nOtmp/removed-temp.txt\n", shell)
    assert r.returncode == 0, r.stderr
    dst = tmp_path / "dst"
    dst.mkdir()
    names = extract_tar(r.stdout, str(dst))
    assert sorted(names) == ["bench.tsv", "res/a b.json", "res/dir", "res/dir/x"]
