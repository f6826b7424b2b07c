"""The cloud adapter's parsing and metadata rules (cloud.py)."""

from __future__ import annotations

import time

from snakemake_executor_plugin_openstack import cloud as cl

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
        "ecdsa-sha2-nistp256 AAAAE2VjZHNh",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA",
    ]
    assert cl.parse_console_host_keys("no keys here") == []


def test_quota_error_detection():
    assert cl.is_quota_error(
        "Quota exceeded for instances: Requested 1, but already used 2 of 2 instances"
    )
    assert not cl.is_quota_error("No valid host was found. ")


def test_missing_security_groups_are_named_from_novas_error():
    # Nova 34 with neutronclient (400 on POST /servers), and the older wording
    nova = "BadRequestException: 400: Unable to find security_group with name or id 'web-x'"
    assert cl.missing_security_groups(nova, ["default", "web-x"]) == ["web-x"]
    assert cl.missing_security_groups("Security group web-x not found.", ["web-x", "web"]) == [
        "web-x"
    ]
    assert cl.missing_security_groups("Quota exceeded for instances", ["web-x"]) == []
    assert cl.missing_security_groups(nova, None) == []


def test_metadata_has_owner_run_expiry_and_no_secrets(monkeypatch):
    monkeypatch.setenv("SMOS_SECRET_X", "topsecret")
    md = cl.metadata_for("run1", 30, "pool")
    assert md[cl.MD_RUN] == "run1" and md[cl.MD_TOOL] == cl.TOOL
    assert float(md[cl.MD_EXPIRES]) > time.time() + 29 * 60
    assert "topsecret" not in repr(md)
