# Thin wrapper: the logic is qmroct.workflow.summary_step.
from qmroct.workflow import summary_step

summary_step(snakemake)  # noqa: F821 (injected by Snakemake)
