"""The Nova test cloud (tests/cloud/novacloud.py) for bench_pool.py, its CPU split in two.

Run with the test cloud's Python (.venv-nova) and novacloud.py's arguments. Before anything
else this process enters the cpuacct cgroup named by QMROCT_BENCH_CLOUD_CGROUP (its
``cgroup.procs``): the cloud's own work (Nova's API, conductor, scheduler, compute manager,
ssh-keygen for host keys, the mount helpers of an isolated server) is counted there. Every
fake VM's sshd is started through QMROCT_BENCH_SSHD, a wrapper that enters the workers'
cgroup and then execs /usr/sbin/sshd (same pid, so the cloud still stops it by pid): every
SSH session, job and process on the VM is its descendant and is counted in the workers'
group, whatever becomes of its parent (cgroups are inherited at fork, not by ancestry).
"""

import os
import sys
from pathlib import Path

with open(os.environ["QMROCT_BENCH_CLOUD_CGROUP"], "w") as f:
    f.write(str(os.getpid()))

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "cloud"))
import novacloud  # noqa: E402

# the wrapper execs this path: fail loudly if the test cloud starts sshd from elsewhere
assert novacloud.SSHD == "/usr/sbin/sshd", novacloud.SSHD
novacloud.SSHD = os.environ["QMROCT_BENCH_SSHD"]
novacloud.main()
