"""Settings (settings.py), the pool's configuration built from them (model.PoolConfig) and the
plugin as Snakemake registers it (__init__.py)."""

from __future__ import annotations

import configargparse
import dataclasses

import pytest
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

from snakemake_executor_plugin_openstack import common_settings
from snakemake_executor_plugin_openstack.model import PoolConfig
from snakemake_executor_plugin_openstack.quota import Flavor
from snakemake_executor_plugin_openstack.settings import ExecutorSettings, split_list

REQUIRED = ("image", "flavor", "keypair", "private_key")
COMPLETE = dict(image="img", flavor="m1.medium", keypair="kp", private_key="~/.ssh/id")


def plugin():
    return ExecutorPluginRegistry().get_plugin("openstack")


def parse(argv: list[str]):
    """The settings as Snakemake builds them from a command line (its own registration code)."""
    parser = configargparse.ArgumentParser()
    plugin().register_cli_args(parser, "executor")
    return plugin().get_settings(parser.parse_args(argv))


def test_plugin_is_discovered_by_snakemake():
    assert "openstack" in ExecutorPluginRegistry().plugins


def test_every_setting_is_a_flag_with_help_that_snakemake_accepts():
    # register_cli_args raises InvalidPluginException for a field without help or default
    parser = configargparse.ArgumentParser()
    plugin().register_cli_args(parser, "executor")
    text = parser.format_help()
    for f in dataclasses.fields(ExecutorSettings):
        flag = "--openstack-" + f.name.replace("_", "-")
        assert flag in text, flag


def test_flags_reach_the_settings_with_their_types():
    s = parse(
        [
            "--openstack-max-servers",
            "7",
            "--openstack-idle-timeout",
            "2.5",
            "--openstack-keep-servers",
            "--openstack-flavor",
            "a, b",
        ]
    )
    assert s.max_servers == 7 and s.idle_timeout == 2.5 and s.keep_servers is True
    assert split_list(s.flavor) == ["a", "b"]
    assert parse([]).max_servers == 4  # the default, declared once in settings.py


def test_missing_required_settings_are_named_by_snakemake_and_by_validate():
    with pytest.raises(WorkflowError) as e:
        plugin().validate_settings(parse([]))
    for name in REQUIRED:
        assert "--openstack-" + name.replace("_", "-") in str(e.value)
    with pytest.raises(ValueError, match="missing settings: --openstack-keypair$"):
        ExecutorSettings(**{**COMPLETE, "keypair": ""}).validate()
    with pytest.raises(ValueError, match="names no flavor"):
        ExecutorSettings(**{**COMPLETE, "flavor": " , "}).validate()
    ExecutorSettings(**COMPLETE).validate()  # complete: no error


def _non_default(f: dataclasses.Field, i: int):
    if f.type in ("bool", bool):
        return not f.default
    if f.type in ("int", int):
        return 1000 + i
    if f.type in ("float", float):
        return 1000.5 + i
    return f"value-{i}"


def test_pool_config_carries_every_setting():
    values = {
        f.name: _non_default(f, i) for i, f in enumerate(dataclasses.fields(ExecutorSettings))
    }
    flavors = [Flavor("1", "m1.tiny", 1, 512)]
    cfg = PoolConfig.from_settings(
        ExecutorSettings(**values),
        image_id="id-1",
        flavors=flavors,
        user_data_text="#cloud-config\n",
    )
    for name, v in values.items():
        assert getattr(cfg, name) == v, name
    assert cfg.image_id == "id-1" and cfg.flavors == flavors and cfg.poll_interval == 0.5


def test_pool_config_resolved_forms():
    cfg = PoolConfig(
        image_id="i",
        flavors=[],
        security_groups="web, default,",
        private_key="~/k",
        launch_retries=0,
    )
    assert cfg.security_group_list == ["web", "default"]
    assert PoolConfig(image_id="i", flavors=[]).security_group_list is None
    assert cfg.key_path.endswith("/k") and not cfg.key_path.startswith("~")
    assert cfg.launch_retries == 1  # at least one attempt per server


def test_common_settings_self_staging_and_no_secret_on_command_line():
    assert common_settings.can_transfer_local_files
    assert common_settings.implies_no_shared_fs
    assert not common_settings.pass_envvar_declarations_to_cmd
    assert not common_settings.auto_deploy_default_storage_provider
