# Write-back: one assessment per session and algorithm into the archive.
# Runs on the head node (it holds the archive credentials), idempotently.


rule writeback:
    input:
        session=SESSION_MANIFEST,
        summary="results/sessions/{project}/{session}.json",
        results=SESSION_RESULTS,
    output:
        receipt="results/writeback/{project}/{session}.json",
    log:
        "logs/writeback/{project}/{session}.log",
    localrule: True
    conda:
        "../envs/qmroct.yaml"
    script:
        "../scripts/writeback.py"
