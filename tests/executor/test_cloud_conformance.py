"""Snakemake's own executor conformance tests (snakemake.common.tests.TestWorkflowsBase, which
the catalog's executor plugins such as snakemake-executor-plugin-slurm subclass) run against
this plugin on the Nova test cloud's isolated servers (they see none of the head's files: the
`isolated` fixture): Snakemake's API in this process, every input, source and output travels
over SSH, the workdir passed as an absolute path (so Snakemake appends `--directory <head
workdir>` to every job command)."""

from __future__ import annotations

import getpass
from typing import Optional

import pytest
from snakemake.common.tests import TestWorkflowsBase

from snakemake_executor_plugin_openstack.settings import ExecutorSettings
from tests.executor.helpers import IMAGE

pytestmark = pytest.mark.cloud


class TestOpenStackConformance(TestWorkflowsBase):
    __test__ = True

    @pytest.fixture(autouse=True)
    def _cloud(self, project, isolated, monkeypatch):
        """Each test case on a project of its own (the `project` fixture of conftest.py)."""
        self.worker_bin = isolated
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(project.clouds_yaml))
        monkeypatch.delenv("OS_CLOUD", raising=False)
        self.project = project
        yield
        assert project.servers() == [], [s.name for s in project.servers()]

    def get_executor(self) -> str:
        return "openstack"

    def get_executor_settings(self) -> Optional[ExecutorSettings]:
        p = self.project
        return ExecutorSettings(
            cloud="testcloud",
            image=IMAGE,
            flavor="m1.medium",
            network="none",
            keypair="k-" + p.name,
            private_key=str(p.key),
            ssh_user=getpass.getuser(),
            ssh_port=p.cloud.ssh_port,
            remote_path_prefix=str(self.worker_bin),
            max_servers=2,
            expected_boot_seconds=3,
            # a server that never answers fails the test in minutes, not after the defaults
            boot_timeout=90,
            launch_retries=1,
            status_log_interval=5,
        )

    def get_default_storage_provider(self) -> Optional[str]:
        return None  # the executor stages files itself (can_transfer_local_files)

    def get_default_storage_prefix(self) -> Optional[str]:
        return None

    def get_default_storage_provider_settings(self):
        return None

    def get_assume_shared_fs(self) -> bool:
        return False
