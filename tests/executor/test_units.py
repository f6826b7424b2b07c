"""Fast unit tests: quota arithmetic, planning, host-key parsing, reaper rules, settings, run script."""

from __future__ import annotations

import base64
import dataclasses
import subprocess
import time
from types import SimpleNamespace

import pytest

from snakemake_executor_plugin_openstack import cloud as cl
from snakemake_executor_plugin_openstack import common_settings
from snakemake_executor_plugin_openstack.planner import ExistingServer, PlanRequest, plan_boots
from snakemake_executor_plugin_openstack.quota import (INF, Flavor, Limits, QuotaCache, Resources, budget,
                                                       how_many_fit, pool_caps, slots)
from snakemake_executor_plugin_openstack.reaper import why_dead
from snakemake_executor_plugin_openstack.settings import ExecutorSettings
from snakemake_executor_plugin_openstack.ssh import build_run_script, extract_tar, tar_paths

MEDIUM = Flavor("3", "m1.medium", 2, 4096)
LARGE = Flavor("4", "m1.large", 4, 8192)


# ---------------------------------------------------------------- quota
def test_limits_minus_one_is_unlimited():
    a = SimpleNamespace(instances=-1, total_cores=20, total_ram=-1,
                        instances_used=3, total_cores_used=6, total_ram_used=12288)
    lim = Limits.from_absolute(a)
    assert lim.max == Resources(INF, 20, INF)
    assert lim.used == Resources(3, 6, 12288)


def test_budget_subtracts_unmanaged_and_owned_servers():
    # project: 10 instances / 20 cores; 3 servers (6 cores) in use, 1 of them ours at read time
    lim = Limits(Resources(10, 20, 51200), Resources(3, 6, 12288))
    ours_then = MEDIUM.resources
    ours_now = MEDIUM.resources * 2  # we started one more since the read
    left = budget(lim, ours_then, ours_now, pool_caps(max_servers=8))
    # unmanaged = 2 servers / 4 cores; cloud left = 10-2-2 = 6 instances, 20-4-4 = 12 cores
    assert left.instances == 6 and left.cores == 12
    assert how_many_fit(left, MEDIUM) == 6
    assert how_many_fit(left, LARGE) == 3


def test_budget_pool_caps_win_when_smaller():
    lim = Limits(Resources(100, 1000, 10**7), Resources(0, 0, 0))
    left = budget(lim, Resources(), MEDIUM.resources, pool_caps(4, max_cores=6))
    assert left.instances == 3 and left.cores == 4
    assert how_many_fit(left, MEDIUM) == 2


def test_budget_never_negative_and_without_limits():
    lim = Limits(Resources(2, 4, 8192), Resources(5, 10, 20000))
    assert budget(lim, Resources(), Resources(), pool_caps(4)) == Resources(0, 0, 0)
    assert budget(None, Resources(), MEDIUM.resources, pool_caps(3)).instances == 2


def test_slots_follow_cores_and_memory():
    assert slots(MEDIUM, 1, 1000) == 2
    assert slots(MEDIUM, 1, 3000) == 1
    assert slots(MEDIUM, 2, 0) == 1
    assert slots(MEDIUM, 3, 0) == 0
    assert slots(LARGE, 1, 2000) == 4


def test_how_many_fit_refuses_unbounded():
    with pytest.raises(ValueError):
        how_many_fit(Resources(INF, INF, INF), MEDIUM)


def test_quota_cache_ttl_and_stale_fallback():
    calls = []
    now = [0.0]

    def reader():
        calls.append(now[0])
        if len(calls) == 3:
            raise RuntimeError("api down")
        return Limits(Resources(len(calls), 1, 1), Resources()), Resources()

    qc = QuotaCache(reader, ttl=10, clock=lambda: now[0])
    assert qc.get()[0].max.instances == 1
    now[0] = 5
    assert qc.get()[0].max.instances == 1 and len(calls) == 1
    now[0] = 11
    assert qc.get()[0].max.instances == 2
    now[0] = 30
    assert qc.get()[0].max.instances == 2 and qc.errors == 1  # stale value kept
    qc.invalidate()
    assert qc.get()[0].max.instances == 4


# ---------------------------------------------------------------- planner
def req(**kw):
    base = dict(work_seconds=120.0, longest_job=1.5, cores=1, mem_mb=1000, flavors=[MEDIUM],
                boot_seconds={"m1.medium": 12.0}, budget=Resources(4, 20, 51200))
    base.update(kw)
    return PlanRequest(**base)


def test_planner_boots_up_to_quota_for_much_work():
    p = plan_boots(req())
    assert p.boots == {"m1.medium": 4}
    assert p.makespan == pytest.approx(12 + 120 / 8, rel=1e-3)


def test_planner_respects_instance_budget():
    assert plan_boots(req(budget=Resources(2, 20, 51200))).boots == {"m1.medium": 2}
    assert plan_boots(req(budget=Resources(9, 3, 51200))).boots == {"m1.medium": 1}  # cores: 3 // 2


def test_planner_does_not_boot_when_work_ends_before_boot():
    # 8 jobs of 1.5 s on a ready 2-slot server end after 6 s; a server booting 12 s cannot help
    p = plan_boots(req(work_seconds=12, existing=[ExistingServer(slots=2, available_in=0)]))
    assert p.boots == {}
    assert p.makespan == pytest.approx(6.0, rel=1e-3)


def test_planner_boots_when_it_shortens_the_run():
    # 200 s of work on one ready 2-slot server = 100 s; with 4 more: 2T + 8(T - 12) = 200, T = 29.6 s
    p = plan_boots(req(work_seconds=200, existing=[ExistingServer(slots=2, available_in=0)]))
    assert p.boots == {"m1.medium": 4}
    assert p.makespan == pytest.approx(29.6, rel=1e-3)


def test_planner_counts_servers_already_booting():
    # 4 servers (8 slots) ready in 10 s finish 16 slot-s of work at 12 s: a new boot (12 s) cannot help
    p = plan_boots(req(work_seconds=16, existing=[ExistingServer(2, 10.0)] * 4, budget=Resources(4, 20, 51200)))
    assert p.boots == {}
    assert p.makespan == pytest.approx(12.0, rel=1e-3)


def test_planner_prefers_fewer_larger_servers_under_instance_quota():
    p = plan_boots(req(work_seconds=400, flavors=[MEDIUM, LARGE],
                       boot_seconds={"m1.medium": 12, "m1.large": 12}, budget=Resources(2, 100, 10**6)))
    assert p.boots == {"m1.large": 2}


def test_planner_without_capacity():
    assert plan_boots(req(budget=Resources(0, 0, 0))).boots == {}
    assert plan_boots(req(work_seconds=0)).boots == {}
    assert plan_boots(req(mem_mb=10**6)).boots == {}  # no flavor can hold a job


def test_planner_is_fast():
    t = time.time()
    plan_boots(req(work_seconds=5000, flavors=[MEDIUM, LARGE], boot_seconds={"m1.medium": 60, "m1.large": 90},
                   budget=Resources(20, 200, 10**6), existing=[ExistingServer(2, 0)] * 3))
    assert time.time() - t < 5


# ---------------------------------------------------------------- host keys, metadata, reaper
CONSOLE = """[  5.1] cloud-init[812]: Cloud-init v. 23.1 running 'modules:final'
ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----
ec2: 256 SHA256:abc root@vm (ED25519)
ec2: -----END SSH HOST KEY FINGERPRINTS-----
-----BEGIN SSH HOST KEY KEYS-----
ecdsa-sha2-nistp256 AAAAE2VjZHNh root@vm
ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA root@vm
-----END SSH HOST KEY KEYS-----
"""


def test_console_host_keys_are_parsed():
    assert cl.parse_console_host_keys(CONSOLE) == [
        "ecdsa-sha2-nistp256 AAAAE2VjZHNh", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA"]
    assert cl.parse_console_host_keys("no keys here") == []


def test_quota_error_detection():
    assert cl.is_quota_error("Quota exceeded for instances: Requested 1, but already used 2 of 2 instances")
    assert not cl.is_quota_error("No valid host was found. ")


def test_missing_security_groups_are_named_from_novas_error():
    # Nova 34 with neutronclient (400 on POST /servers), and the older wording
    nova = "BadRequestException: 400: Unable to find security_group with name or id 'web-x'"
    assert cl.missing_security_groups(nova, ["default", "web-x"]) == ["web-x"]
    assert cl.missing_security_groups("Security group web-x not found.", ["web-x", "web"]) == ["web-x"]
    assert cl.missing_security_groups("Quota exceeded for instances", ["web-x"]) == []
    assert cl.missing_security_groups(nova, None) == []


def test_jump_host_without_known_hosts_file_is_a_clear_error(tmp_path):
    import asyncio

    from snakemake_executor_plugin_openstack.ssh import JumpHostError, SshTarget, open_connection

    t = SshTarget("127.0.0.9", 22, "me", None, None, "none", jump_host="bastion.example:2200",
                  jump_known_hosts=str(tmp_path / "missing"), connect_timeout=2)
    t0 = time.time()
    with pytest.raises(JumpHostError, match=r"jump host bastion.example:2200: known_hosts file .*missing does not exist"):
        asyncio.run(open_connection(t))
    assert time.time() - t0 < 1  # decided before any network traffic


def test_metadata_has_owner_run_expiry_and_no_secrets(monkeypatch):
    monkeypatch.setenv("SMOS_SECRET_X", "topsecret")
    md = cl.metadata_for("run1", 30, "pool")
    assert md[cl.MD_RUN] == "run1" and md[cl.MD_TOOL] == cl.TOOL
    assert float(md[cl.MD_EXPIRES]) > time.time() + 29 * 60
    assert "topsecret" not in repr(md)


def test_reaper_rules():
    now = 1_000_000.0
    base = {cl.MD_TOOL: cl.TOOL, cl.MD_RUN: "r", cl.MD_OWNER: "me@here", cl.MD_PID: "42"}
    alive = lambda pid: pid == 42  # noqa: E731
    assert why_dead({**base, cl.MD_EXPIRES: str(now + 60)}, now, "here", alive) is None
    assert "expired" in why_dead({**base, cl.MD_EXPIRES: str(now - 1)}, now, "here", alive)
    assert "gone" in why_dead({**base, cl.MD_PID: "7", cl.MD_EXPIRES: str(now + 60)}, now, "here", alive)
    # another machine's run: only the lease decides
    assert why_dead({**base, cl.MD_PID: "7", cl.MD_EXPIRES: str(now + 60)}, now, "elsewhere", alive) is None
    # not ours: never
    assert why_dead({cl.MD_EXPIRES: "0"}, now, "here", alive) is None


# ---------------------------------------------------------------- settings and plugin
def test_every_setting_has_help_and_default():
    for f in dataclasses.fields(ExecutorSettings):
        assert f.metadata.get("help"), f.name
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def test_common_settings_self_staging_and_no_secret_on_command_line():
    assert common_settings.can_transfer_local_files
    assert common_settings.implies_no_shared_fs
    assert not common_settings.pass_envvar_declarations_to_cmd
    assert not common_settings.auto_deploy_default_storage_provider


def test_plugin_is_discovered_by_snakemake():
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    assert "openstack" in ExecutorPluginRegistry().plugins


# ---------------------------------------------------------------- run script and tar staging
def test_run_script_exports_secrets_from_stdin_not_argv(tmp_path):
    job = tmp_path / "job"
    (job / ".snakemake-openstack").mkdir(parents=True)
    (job / ".snakemake-openstack" / "run.sh").write_text(build_run_script("/opt/worker/bin"))
    (job / ".snakemake-openstack" / "cmd.sh").write_text(
        'printf "%s|%s|%s" "$TOKEN" "$MULTI" "${PATH%%:*}" > out.txt; cat /proc/$$/cmdline | tr "\\0" " " > argv.txt\n')
    secret = "s3cr=t 'quoted'"
    multi = base64.b64encode(b"a\nb").decode()
    stdin = f"TOKEN={base64.b64encode(secret.encode()).decode()}\nMULTI={multi}\n\n"
    r = subprocess.run(["bash", str(job / ".snakemake-openstack" / "run.sh")], input=stdin.encode(),
                       capture_output=True, timeout=20)
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
    r = subprocess.run(["bash", str(job / ".snakemake-openstack" / "run.sh")], input=b"\n", timeout=20)
    assert r.returncode == 7


def test_tar_round_trip_skips_missing_and_outside_paths(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f.txt").write_text("x")
    (src / "d").mkdir()
    (src / "d" / "g.txt").write_text("y")
    data = tar_paths(["a/b/f.txt", "d", "missing.txt", "../etc/passwd"], {"extra/run.sh": b"#!"}, root=str(src))
    dst = tmp_path / "dst"
    dst.mkdir()
    names = extract_tar(data, str(dst))
    assert (dst / "a/b/f.txt").read_text() == "x" and (dst / "d/g.txt").read_text() == "y"
    assert (dst / "extra/run.sh").read_bytes() == b"#!"
    assert not any("passwd" in n or "missing" in n for n in names)
