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
    shell:
        step_command(
            "qmroct.workflow:writeback_step",
            "writeback",
            input=("session",),
            inputs=("results",),
            output=("receipt",),
        )


rule scan_quality:
    """Opt-in (studies/<name>/set_scan_quality): a study's verdicts into the scans'
    quality field, never overwriting a value a person set (XNAT backend)."""
    input:
        studies="results/tables/studies",
    output:
        receipt="results/scan_quality/{study}.json",
    log:
        "logs/scan_quality/{study}.log",
    localrule: True
    conda:
        "../envs/qmroct.yaml"
    params:
        discovery=DISCOVERY,  # the sessions' manifests, written by the discover checkpoint
    script:
        "../scripts/scan_quality.py"
