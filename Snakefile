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


# What a run does at its start and end (qmroct.run_hooks, imported only when a hook runs).


onstart:
    from qmroct import run_hooks

    run_hooks.start(workflow, config, ALGORITHMS, SESSION_MANIFEST, SCRATCH)


onsuccess:
    from qmroct import run_hooks

    run_hooks.finish(config, ALGORITHMS, SCRATCH_ROOT, SCRATCH, failed=False)


onerror:
    from qmroct import run_hooks

    run_hooks.finish(config, ALGORITHMS, SCRATCH_ROOT, SCRATCH, failed=True)
