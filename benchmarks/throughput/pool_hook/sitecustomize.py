"""bench_pool.py's hook: ``profile_hook/sitecustomize.py`` (one CPU record per Python process,
at exit), with the records of the processes on the test cloud's VMs written to a log of their
own, ``workers-cpu.jsonl`` beside QMROCT_BENCH_CPU_LOG. A VM's processes are those whose
environment has NOVA_INSTANCE_UUID (set by the VM's sshd, tests/cloud/novacloud.py).

bench_pool.py copies this folder and profile_hook/ side by side into a folder the isolated
VMs see, and puts this folder on PYTHONPATH (the head's and, through the executor's
envvars-from-head, the VMs')."""

import importlib.util
import os
import sys

_log = os.environ.get("QMROCT_BENCH_CPU_LOG")
if _log and os.environ.get("NOVA_INSTANCE_UUID"):
    os.environ["QMROCT_BENCH_CPU_LOG"] = os.path.join(os.path.dirname(_log), "workers-cpu.jsonl")
_path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "profile_hook", "sitecustomize.py")
_spec = importlib.util.spec_from_file_location("_qmroct_bench_profile_hook", _path)
_hook = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _hook
_spec.loader.exec_module(_hook)
