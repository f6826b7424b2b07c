"""Executor settings: each field becomes ``--openstack-<name>`` and a profile key."""

from dataclasses import dataclass, field, fields
from typing import Optional

from snakemake_interface_executor_plugins.settings import ExecutorSettingsBase


def _f(default, help_text, **extra):
    meta = {"help": help_text}
    meta.update(extra)
    return field(default=default, metadata=meta)


def split_list(value: Optional[str]) -> list[str]:
    """A comma-separated setting as a list (empty items dropped)."""
    return [x.strip() for x in (value or "").split(",") if x.strip()]


def cli_flag(name: str) -> str:
    return "--openstack-" + name.replace("_", "-")


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    # --- cloud ---
    cloud: Optional[str] = _f(
        None,
        "Cloud name in clouds.yaml. Without it, OS_CLOUD or the usual OS_* variables "
        "(password or application credentials) are used. Credentials stay on this machine.",
        env_var=True,
    )
    # required: True makes Snakemake's validate_settings name them before the executor starts
    image: Optional[str] = _f(
        None,
        "Worker image name or id (Python, Snakemake and tools installed).",
        env_var=True,
        required=True,
    )
    flavor: Optional[str] = _f(
        None,
        "Flavor name or id; a comma-separated list lets the planner choose among several flavors.",
        env_var=True,
        required=True,
    )
    network: Optional[str] = _f(
        None,
        "Network name or id for the servers ('none' for no network; default: the cloud's default).",
    )
    keypair: Optional[str] = _f(
        None,
        "Nova key pair name. Created from the private key's public half if it does not exist.",
        required=True,
    )
    private_key: Optional[str] = _f(
        None, "Path of the SSH private key that matches the key pair.", required=True
    )
    ssh_user: str = _f("ubuntu", "SSH login user on the workers.")
    ssh_port: int = _f(22, "SSH port of the workers.")
    security_groups: Optional[str] = _f(None, "Comma-separated security groups for the servers.")
    host_key_check: str = _f(
        "console",
        "How the worker's SSH host key is verified: 'console' (pinned from the "
        "cloud-init console output), 'known_hosts' (the user's known_hosts file) or "
        "'none' (not verified; test clouds only).",
        choices=["console", "known_hosts", "none"],
    )
    jump_host: Optional[str] = _f(
        None,
        "Optional SSH jump host as [user@]host[:port] (e.g. a bastion with a floating IP). "
        "Workers are reached through it with the same private key; its user defaults to ssh_user.",
    )
    jump_host_known_hosts: str = _f(
        "~/.ssh/known_hosts",
        "known_hosts file holding the jump host's key. The jump host is always verified "
        "(host_key_check applies to the workers only); an unknown or changed key stops the run.",
    )
    user_data: Optional[str] = _f(
        None, "Optional cloud-init user data file passed to every server (must hold no secrets)."
    )
    # --- pool size and quota ---
    max_servers: int = _f(4, "Never run more than this many servers at once.")
    max_cores: int = _f(0, "Cap on the total vCPUs of the pool (0: only the project quota).")
    max_ram_mb: int = _f(0, "Cap on the total RAM (MB) of the pool (0: only the project quota).")
    keep_warm: int = _f(0, "Keep at least this many idle servers while the run lasts.")
    idle_timeout: float = _f(
        60.0,
        "Delete a server that has run no job for this many seconds (keep-warm servers excepted).",
    )
    max_jobs_per_server: int = _f(
        0, "Delete a server after it ran this many submissions (0: unlimited; 1: one VM per job)."
    )
    quota_cache_seconds: float = _f(300.0, "How long the project's limits are cached.")
    # --- timing and failure handling ---
    launch_timeout: float = _f(
        600.0, "Seconds from create request until the server must be ACTIVE."
    )
    boot_timeout: float = _f(
        300.0, "Seconds from ACTIVE until SSH must answer (host key from the console log included)."
    )
    launch_retries: int = _f(
        3, "Launch attempts per server before giving up on it (quota rejections excluded)."
    )
    delete_timeout: float = _f(300.0, "Seconds to wait for a server deletion before retrying it.")
    quota_wait_timeout: float = _f(
        900.0,
        "If the quota allows no server at all, wait this long for quota to free up "
        "before failing the queued jobs.",
    )
    expected_boot_seconds: float = _f(
        120.0, "Initial estimate of create-to-SSH time, refined by measured boots (planner input)."
    )
    default_job_seconds: float = _f(
        60.0,
        "Runtime estimate for jobs without a 'runtime' resource until runtimes of that rule "
        "were measured.",
    )
    vm_failure_retries: int = _f(
        3,
        "How often a job is resubmitted because its VM died or stopped answering "
        "(does not consume Snakemake's --retries).",
    )
    ssh_connect_timeout: float = _f(15.0, "Seconds for one SSH connection attempt.")
    ssh_keepalive: float = _f(
        5.0,
        "SSH keepalive interval; 3 missed answers mark the VM as dead and its jobs "
        "are resubmitted.",
    )
    status_interval: float = _f(0.5, "Seconds between job status checks (in-memory, cheap).")
    status_log_interval: float = _f(
        15.0, "Seconds between one-line pool status messages (0: only on change)."
    )
    # --- names, metadata, remote layout ---
    name_prefix: str = _f("smk-os", "Prefix of server names.")
    lease_minutes: float = _f(
        30.0,
        "Servers carry an expiry this far in the future, renewed while the run is alive; "
        "the reaper deletes servers whose expiry passed.",
    )
    leak_check_interval: float = _f(
        10.0,
        "When the pool starts, servers of this tool whose run died (lease expired, or the run's "
        "process on this machine gone) are deleted, with the two passes of "
        "snakemake-openstack-reap this many seconds apart (0: no cleanup).",
    )
    remote_scratch: str = _f(
        "${TMPDIR:-/tmp}/snakemake-openstack",
        "Remote directory (shell expression) holding the per-job scratch directories.",
    )
    remote_path_prefix: Optional[str] = _f(
        None,
        "Directories prepended to PATH on the worker "
        "(where the image's python with snakemake lives).",
    )
    envvars_from_head: Optional[str] = _f(
        None,
        "Comma-separated environment variables copied from this machine into every job "
        "through the SSH channel's stdin (never on a command line). "
        "Snakemake's --envvars are sent the same way.",
    )
    keep_servers: bool = _f(
        False, "Do not delete the servers at the end of the run (debugging only)."
    )

    def validate(self) -> None:
        """Raise ValueError naming every required setting that is missing or empty.

        Snakemake checks ``required`` fields for None only; an empty string from a profile or
        an environment variable would otherwise reach the cloud as a name."""
        missing = [
            cli_flag(f.name)
            for f in fields(self)
            if f.metadata.get("required") and not getattr(self, f.name)
        ]
        if missing:
            raise ValueError("openstack executor: missing settings: " + ", ".join(missing))
        if not split_list(self.flavor):
            raise ValueError(f"openstack executor: {cli_flag('flavor')} names no flavor")
