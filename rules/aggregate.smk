# Aggregate: the tidy KQI table, per-study tables and the report.
# Named targets for partial reprocessing: kqi_by_algorithm, kqi_by_project.


rule aggregate:
    input:
        results=all_results,
    output:
        # report(): what `snakemake --report report.zip` holds, with its caption
        tsv=report(
            "results/tables/kqi.tsv",
            caption="captions/kqi_table.rst",
            category="Tables",
        ),
        parquet="results/tables/kqi.parquet",
        studies=report(
            directory("results/tables/studies"),
            patterns=["{study}.tsv"],
            caption="captions/study_table.rst",
            category="Tables",
        ),
    log:
        "logs/aggregate.log",
    localrule: True
    conda:
        "../envs/qmroct.yaml"
    params:
        studies=STUDIES,
    script:
        "../scripts/aggregate.py"


rule report:
    input:
        parquet="results/tables/kqi.parquet",
        results=all_results,  # algorithm versions and environment drift
        studies="results/tables/studies",
        summaries=summaries,
    output:
        html=report(
            "results/report/index.html",
            caption="captions/report.rst",
            category="Quality report",
        ),
    log:
        "logs/report.log",
    localrule: True
    conda:
        "../envs/qmroct.yaml"
    params:
        worst_scans=config["report"]["worst_scans"],
        studies=STUDIES,
        thumbnails=THUMBNAILS,  # results/thumbnails/<project>/<session path key>/
    script:
        "../scripts/report.py"


rule kqi_by_algorithm:
    """All sessions for one algorithm: results/by_algorithm/<algorithm>.tsv"""
    input:
        results=lambda wildcards: [
            f"results/kqi/{p}/{s}/{wildcards.algorithm}.json" for p, s in sessions()
        ],
    output:
        tsv="results/by_algorithm/{algorithm}.tsv",
    log:
        "logs/by_algorithm/{algorithm}.log",
    localrule: True
    conda:
        "../envs/qmroct.yaml"
    script:
        "../scripts/kqi_by_algorithm.py"


rule kqi_by_project:
    """All algorithms for one project: results/by_project/<project>.tsv"""
    input:
        results=lambda wildcards: [
            f"results/kqi/{p}/{s}/{a}.json"
            for p, s in sessions(wildcards.project)
            for a in ALGORITHMS
        ],
    output:
        tsv="results/by_project/{project}.tsv",
    log:
        "logs/by_project/{project}.log",
    localrule: True
    conda:
        "../envs/qmroct.yaml"
    script:
        "../scripts/kqi_by_project.py"
