# Thin wrapper: the logic is qmroct.workflow.kqi_by_algorithm_step.
from qmroct.workflow import kqi_by_algorithm_step

kqi_by_algorithm_step(snakemake)  # noqa: F821 (injected by Snakemake)
