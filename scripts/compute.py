# Thin wrapper: the logic is qmroct.workflow.compute_step.
from qmroct.job_exit import exit_now
from qmroct.workflow import compute_step

compute_step(snakemake)  # noqa: F821 (injected by Snakemake)
exit_now()  # one job per session x algorithm: skip the interpreter's teardown (qmroct.job_exit)
