"""Snakemake executor plugin for a reused, quota-aware pool of OpenStack VMs.

Jobs run over SSH on servers that are booted on demand, reused across jobs, healed when they
break and deleted when the run ends.  See README.md of the distribution for the settings.
"""

from snakemake_interface_executor_plugins.settings import CommonSettings

from .executor import Executor  # noqa: F401
from .settings import ExecutorSettings  # noqa: F401

common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=True,
    job_deploy_sources=False,
    pass_default_storage_provider_args=True,
    pass_default_resources_args=True,
    # secrets are sent through the SSH channel's stdin, never on the command line
    pass_envvar_declarations_to_cmd=False,
    auto_deploy_default_storage_provider=False,
    pass_group_args=True,
    # the executor stages sources, inputs and results itself (SSH)
    can_transfer_local_files=True,
)
