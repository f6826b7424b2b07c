# Configuration, algorithms and the session list shared by all rules.

from pathlib import Path

from qmroct.config import check_config, validate_schema
from qmroct.compute import algorithm_identity
from qmroct.discovery import read_session_index
from qmroct.staging import wipe_scratch


validate_schema(config)
SETTINGS = check_config(config, workflow.basedir)
ALGORITHMS = sorted(SETTINGS.algorithms)
SCRATCH = config["scratch_dir"]
DISCOVERY = "results/discovery"


wildcard_constraints:
    project=r"[A-Za-z0-9_-]+",
    session=r"[^/]+",
    algorithm=r"[a-z][a-z0-9_]*",


def algorithm_params(wildcards):
    """Name, version, code checksum and params: any change reruns only this algorithm."""
    name = wildcards.algorithm
    return algorithm_identity(SETTINGS.algorithms[name], SETTINGS.algorithm_params(name))


def algorithm_resource(key, default):
    def get(wildcards):
        return SETTINGS.algorithms[wildcards.algorithm].resources.get(key, default)

    return get


def sessions(project=None):
    """(project, session) pairs from discovery; waits for the checkpoint."""
    index = checkpoints.discover.get().output.index
    return [(p, s) for p, s in read_session_index(index) if project in (None, p)]


def session_manifest(wildcards):
    return f"{DISCOVERY}/sessions/{wildcards.project}/{wildcards.session}.json"


def session_results(wildcards):
    return expand(
        "results/kqi/{project}/{session}/{algorithm}.json",
        project=wildcards.project,
        session=wildcards.session,
        algorithm=ALGORITHMS,
    )


def all_results(wildcards):
    return [
        f"results/kqi/{p}/{s}/{a}.json" for p, s in sessions() for a in ALGORITHMS
    ]


def writeback_receipts(wildcards):
    if not config["writeback"]["enabled"]:
        return []
    return [f"results/writeback/{p}/{s}.json" for p, s in sessions()]


def summaries(wildcards):
    return [f"results/sessions/{p}/{s}.json" for p, s in sessions()]
