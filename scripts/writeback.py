# Thin wrapper: the logic is qmroct.workflow.writeback_step.
from qmroct.workflow import writeback_step

writeback_step(snakemake)  # noqa: F821 (injected by Snakemake)
