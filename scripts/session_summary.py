# Thin wrapper: the logic is qmroct.workflow.summary_step.
from qmroct.job_exit import exit_now
from qmroct.workflow import summary_step

summary_step(snakemake)  # noqa: F821 (injected by Snakemake)
exit_now()  # one job per session x algorithm: skip the interpreter's teardown (qmroct.job_exit)
