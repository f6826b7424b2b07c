"""What a run does at its start and end: the Snakefile's ``onstart``, ``onsuccess`` and
``onerror`` call these.

In a module of its own, imported by the hooks when they run, because what they use (the
XNAT client and ``requests``, the run manifest, History) costs ~0.08 s of imports that
every other reader of the Snakefile would pay for nothing: a dry run, a remote job's
``snakemake`` on a VM (one per submission; hooks do not run there) and the tests.
"""

from __future__ import annotations

from typing import Any


def start(
    workflow: Any, config: dict, algorithms: list[str], session_manifest: str, scratch: str
) -> None:
    from qmroct import runhistory
    from qmroct.archive.xnat_tokens import start_archive_tokens
    from qmroct.history_queue import start_history_queue
    from qmroct.provenance.run_manifest import start_run
    from qmroct.scheduler_wakes import lift_default_rate_limit
    from qmroct.scratch import claim

    compute_rules = {f"compute_{name}": name for name in algorithms}
    # Snakemake's default job rate limit makes its scheduler wake once a second per
    # finished job while others wait (qmroct.scheduler_wakes)
    lift_default_rate_limit(workflow)
    # results/runs/<run-id>/manifest.json: who, what, with which code and environment
    start_run(config, workflow)
    # its "summary" section: trigger, sessions new/changed, jobs, failures (after start_run)
    runhistory.start_run(compute_rules)
    # XNAT History: a Queued row for each compute job as it is handed to the
    # executor. Before the tokens: the head keeps its own connection.
    start_history_queue(config, session_manifest, compute_rules)
    # XNAT: jobs get an alias token in XNAT_USER/XNAT_PASS, never the password
    start_archive_tokens(config["archive"])
    # this run's scratch folder, with the marker that lets cleanup recognise it
    claim(scratch)


def finish(
    config: dict, algorithms: list[str], scratch_root: str, scratch: str, failed: bool
) -> None:
    from qmroct import runhistory
    from qmroct.archive.xnat_tokens import stop_archive_tokens
    from qmroct.history_queue import stop_history_queue
    from qmroct.provenance.run_manifest import finish_run
    from qmroct.scratch import release

    finish_run(failed=failed, algorithms=algorithms)
    runhistory.finish_run(config, failed=failed)
    stop_history_queue(failed=failed)
    stop_archive_tokens()
    # only this run's folder and those of dead runs, never a live neighbour's
    release(scratch_root, scratch)
