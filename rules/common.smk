# Configuration, algorithms and the session list shared by all rules.

import os


from qmroct.config import check_config, validate_schema
from qmroct.compute import algorithm_identity
from qmroct.discovery import read_session_index
from qmroct.expected_runtime import expected_runtime_s
from qmroct.scanio.volume import MAX_DECODED_ENV
from qmroct.scratch import run_folder
from qmroct.warmworker.job import export_context, step_command

validate_schema(config)
SETTINGS = check_config(config, workflow.basedir)
# Jobs without a shared file system (the OpenStack executor implies that; known before
# the executor starts) must still reach the archive: refused here, before any job.
from snakemake_interface_executor_plugins.settings import SharedFSUsage

if (
    not workflow.remote_exec
    and SharedFSUsage.INPUT_OUTPUT not in workflow.storage_settings.shared_fs_usage
):
    from qmroct.archive.directory import check_reachable_from_workers

    check_reachable_from_workers(config["archive"])
ALGORITHMS = sorted(SETTINGS.algorithms)
DISCOVERY = "results/discovery"
THUMBNAILS = "results/thumbnails"

# Scratch: every process that parses this file (the head, a remote job's snakemake)
# works in its own run folder under scratch_dir and deletes only that (qmroct.scratch).
# Jobs see it as config["scratch_dir"], so staging, algorithm work folders and
# thumbnails all land in it. Created by onstart (a dry run creates nothing).
SCRATCH_ROOT = config["scratch_dir"]
SCRATCH = str(run_folder(SCRATCH_ROOT))
config["scratch_dir"] = SCRATCH
# Scan readers run deep inside staging: they read the limit from the environment,
# which this process's jobs inherit.
os.environ[MAX_DECODED_ENV] = str(config["limits"]["scan_decoded_mb"])
# The per-session jobs are shell commands that name only their files (qmroct.warmworker.job):
# the config as read, the workflow folder and the interpreter reach them the same way.
from snakemake.settings.types import DeploymentMethod

export_context(
    config,
    workflow.basedir,
    use_conda=DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method,
)


wildcard_constraints:
    project=r"[A-Za-z0-9_-]+",
    session=r"[^/]+",


def algorithm_code(algo):
    """The algorithm's code files as job inputs: they travel with the job to a remote
    worker (no image rebuild for a new algorithm) and a change reruns only its jobs."""
    from qmroct.algorithms.manifest import code_files

    return sorted(
        os.path.relpath(path) for _, path in code_files(algo.path, algo.shared)
    )


def sessions(project=None):
    """(project, session) pairs from discovery; waits for the checkpoint."""
    index = checkpoints.discover.get().output.index
    return [(p, s) for p, s in read_session_index(index) if project in (None, p)]


# Static patterns (not input functions): Snakemake evaluates functions per job,
# which dominates the DAG time at thousands of sessions.
SESSION_MANIFEST = f"{DISCOVERY}/sessions/{{project}}/{{session}}.json"
SESSION_RESULTS = expand(
    "results/kqi/{{project}}/{{session}}/{algorithm}.json", algorithm=ALGORITHMS
)


def all_results(wildcards):
    return [f"results/kqi/{p}/{s}/{a}.json" for p, s in sessions() for a in ALGORITHMS]


def writeback_receipts(wildcards):
    if not config["writeback"]["enabled"]:
        return []
    return [f"results/writeback/{p}/{s}.json" for p, s in sessions()]


# Study definitions as params: a changed study rebuilds the tables and report only.
STUDIES = {
    name: [c.text for c in study.criteria] for name, study in SETTINGS.studies.items()
}


def scan_quality_receipts(wildcards):
    return [
        f"results/scan_quality/{name}.json"
        for name, study in SETTINGS.studies.items()
        if study.set_scan_quality
    ]


def summaries(wildcards):
    return [f"results/sessions/{p}/{s}.json" for p, s in sessions()]
