# Thin wrapper: the logic is qmroct.workflow.scan_quality_step.
from qmroct.workflow import scan_quality_step

scan_quality_step(snakemake)  # noqa: F821 (injected by Snakemake)
