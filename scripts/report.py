# Thin wrapper: the logic is qmroct.workflow.report_step.
from qmroct.workflow import report_step

report_step(snakemake)  # noqa: F821 (injected by Snakemake)
