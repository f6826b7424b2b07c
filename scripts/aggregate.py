# Thin wrapper: the logic is qmroct.workflow.aggregate_step.
from qmroct.workflow import aggregate_step

aggregate_step(snakemake)  # noqa: F821 (injected by Snakemake)
