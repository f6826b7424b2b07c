# Thin wrapper: the logic is qmroct.workflow.discover_step.
from qmroct.workflow import discover_step

discover_step(snakemake)  # noqa: F821 (injected by Snakemake)
