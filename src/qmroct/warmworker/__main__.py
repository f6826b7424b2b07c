"""``python -m qmroct.warmworker TARGET RULE ...``: a per-session job's command (see .job)."""

import sys

from qmroct.warmworker import client

client.main(sys.argv[1:])
