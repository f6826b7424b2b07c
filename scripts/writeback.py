# Thin wrapper: the logic is qmroct.workflow.writeback_step, run in the run's warm worker
# (qmroct.warmworker: a process with the imports paid once per run, not once per job).
from qmroct.warmworker.client import run_step

run_step("qmroct.workflow:writeback_step", snakemake)  # noqa: F821 (injected by Snakemake)
