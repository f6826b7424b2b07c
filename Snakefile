# qmroct: quality management for retinal OCT archives.
#
#   archive -> discover (checkpoint) -> compute (session x algorithm, grouped per session)
#           -> session summary -> write back (head node) -> aggregate -> report
#
# Rules are wiring only; the logic lives in the qmroct package (src/qmroct/).


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/discover.smk"
include: "rules/compute.smk"
include: "rules/writeback.smk"
include: "rules/aggregate.smk"


rule all:
    input:
        "results/report/index.html",
        "results/tables/kqi.tsv",
        writeback_receipts,
    default_target: True


onsuccess:
    wipe_scratch(SCRATCH)


onerror:
    wipe_scratch(SCRATCH)
