# Compute: one job per session x algorithm, grouped per session so a remote
# executor runs a session's algorithms (and its summary) as one submission.
# The scans are staged once per session by the first job that needs them
# (see qmroct.staging for why this is not a temp() rule).
#
# One rule per declared algorithm (compute_<name>), generated in a loop: each
# has its algorithm's identity as a static params value (a version bump, code
# edit or params change reruns only that rule) and its own threads and memory
# from the manifest. Static values also keep the DAG cheap at 10,000 sessions.


for _name, _algo in SETTINGS.algorithms.items():

    rule:
        name:
            f"compute_{_name}"
        input:
            session=SESSION_MANIFEST,
            code=algorithm_code(_algo),
        output:
            kqi=f"results/kqi/{{project}}/{{session}}/{_name}.json",
            extras=directory(f"results/kqi/{{project}}/{{session}}/{_name}.files"),
        log:
            f"logs/compute/{{project}}/{{session}}/{_name}.log",
        group:
            "session"
        conda:
            "../envs/qmroct.yaml"
        threads: int(_algo.resources.get("threads", 1))
        resources:
            mem_mb=int(_algo.resources.get("mem_mb", 2000)),
            runtime=max(1, int(float(_algo.resources.get("runtime_s", 60)) / 60) + 1),
            # seconds, from earlier runs' measured durations or the manifest: what a remote
            # executor's pool is sized from (runtime has whole minutes, 30x too much here)
            runtime_s=expected_runtime_s(_name, _algo.resources.get("runtime_s", 60)),
        params:
            algorithm=algorithm_identity(_algo, SETTINGS.algorithm_params(_name)),
        shell:
            # The step runs in the run's warm worker (qmroct.warmworker). No loop variable
            # in here: in --mode remote (a job on a VM) Snakemake evaluates this expression
            # again when the job runs, after the loop, so _name would be the last algorithm.
            step_command(
                "qmroct.workflow:compute_step",
                "compute_{params.algorithm[name]}",
                input=("session",),
                output=("kqi", "extras"),
                params={"algorithm_name": "algorithm[name]"},
            )


rule session_summary:
    input:
        session=SESSION_MANIFEST,
        results=SESSION_RESULTS,
    output:
        summary="results/sessions/{project}/{session}.json",
        thumbnails=directory(f"{THUMBNAILS}/{{project}}/{{session}}"),
    log:
        "logs/summary/{project}/{session}.log",
    priority: 10
    group:
        "session"
    conda:
        "../envs/qmroct.yaml"
    shell:
        step_command(
            "qmroct.workflow:summary_step",
            "session_summary",
            input=("session",),
            inputs=("results",),
            output=("summary", "thumbnails"),
        )
