# qmroct: quality management for retinal OCT archives.
#
#   archive -> discover (checkpoint) -> compute (session x algorithm, grouped per session)
#           -> session summary -> write back (head node) -> aggregate -> report
#
# Rules are wiring only; the logic lives in the qmroct package (src/qmroct/).

from snakemake.utils import min_version

# The 9.x line: the executor plugin implements snakemake-interface-executor-plugins 9;
# 9.27.1 is the version pyproject.toml pins and the tests run.
min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/discover.smk"
include: "rules/compute.smk"
include: "rules/writeback.smk"
include: "rules/aggregate.smk"


rule all:
    default_target: True
    input:
        "results/report/index.html",
        "results/tables/kqi.tsv",
        writeback_receipts,
        scan_quality_receipts,


from qmroct.archive.xnat_tokens import start_archive_tokens, stop_archive_tokens
from qmroct.history_queue import start_history_queue, stop_history_queue
from qmroct.provenance.run_manifest import finish_run, start_run
from qmroct import runhistory
from qmroct.scheduler_wakes import lift_default_rate_limit


onstart:
    # Snakemake's default job rate limit makes its scheduler wake once a second per
    # finished job while others wait (qmroct.scheduler_wakes)
    lift_default_rate_limit(workflow)
    # results/runs/<run-id>/manifest.json: who, what, with which code and environment
    start_run(config, workflow)
    # its "summary" section: trigger, sessions new/changed, jobs, failures (after start_run)
    runhistory.start_run({f"compute_{name}": name for name in ALGORITHMS})
    # XNAT History: a Queued row for each compute job as it is handed to the
    # executor. Before the tokens: the head keeps its own connection.
    start_history_queue(
        config, SESSION_MANIFEST, {f"compute_{name}": name for name in ALGORITHMS}
    )
    # XNAT: jobs get an alias token in XNAT_USER/XNAT_PASS, never the password
    start_archive_tokens(config["archive"])
    # this run's scratch folder, with the marker that lets cleanup recognise it
    claim_scratch(SCRATCH)


onsuccess:
    finish_run(failed=False, algorithms=ALGORITHMS)
    runhistory.finish_run(config, failed=False)
    stop_history_queue(failed=False)
    stop_archive_tokens()
    # only this run's folder and those of dead runs, never a live neighbour's
    release_scratch(SCRATCH_ROOT, SCRATCH)


onerror:
    finish_run(failed=True, algorithms=ALGORITHMS)
    runhistory.finish_run(config, failed=True)
    stop_history_queue(failed=True)
    stop_archive_tokens()
    # only this run's folder and those of dead runs, never a live neighbour's
    release_scratch(SCRATCH_ROOT, SCRATCH)
