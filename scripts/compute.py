# Thin wrapper: the logic is qmroct.workflow.compute_step.
from qmroct.workflow import compute_step

compute_step(snakemake)  # noqa: F821 (injected by Snakemake)
