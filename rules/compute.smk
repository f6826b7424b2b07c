# Compute: one job per session x algorithm, grouped per session so a remote
# executor runs a session's algorithms (and its summary) as one submission.
# The scans are staged once per session by the first job that needs them
# (see qmroct.staging for why this is not a temp() rule).


rule compute:
    input:
        session=session_manifest,
    output:
        kqi="results/kqi/{project}/{session}/{algorithm}.json",
        extras=directory("results/kqi/{project}/{session}/{algorithm}.files"),
    params:
        algorithm=algorithm_params,
    threads: algorithm_resource("threads", 1)
    resources:
        mem_mb=algorithm_resource("mem_mb", 2000),
        runtime=lambda wildcards: max(
            1, int(SETTINGS.algorithms[wildcards.algorithm].resources.get("runtime_s", 60) / 60) + 1
        ),
    group:
        "session"
    log:
        "logs/compute/{project}/{session}/{algorithm}.log",
    conda:
        "../envs/qmroct.yaml"
    script:
        "../scripts/compute.py"


rule session_summary:
    input:
        session=session_manifest,
        results=session_results,
    output:
        summary="results/sessions/{project}/{session}.json",
        thumbnails=directory("results/thumbnails/{project}/{session}"),
    group:
        "session"
    priority: 10
    log:
        "logs/summary/{project}/{session}.log",
    conda:
        "../envs/qmroct.yaml"
    script:
        "../scripts/session_summary.py"
