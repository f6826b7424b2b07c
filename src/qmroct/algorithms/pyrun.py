"""A Python algorithm in a fresh interpreter (when the runner cannot fork).

    python -m qmroct.algorithms.pyrun NAME ENTRY.py FUNCTION VOLUME META PARAMS OUTDIR

The runner forks Python algorithms from the job process; forking is unsafe
while other threads run, and then it starts this instead. Same child body as
the forked one (:func:`qmroct.algorithms.runner.python_child`): calls
``FUNCTION(volume, meta, params, outdir)``, writes ``OUTDIR/kqi.json``, and on
an exception exits 1 leaving the reason in ``OUTDIR/_failure.json``.
"""

from __future__ import annotations

import faulthandler
import json
import sys
from pathlib import Path

from qmroct.algorithms.runner import python_child


def main(argv: list[str]) -> int:
    if len(argv) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    name, entry, function, volume_path, meta_path, params_path, outdir = argv
    faulthandler.enable()  # a segfault leaves the Python stack in the output
    meta = json.loads(Path(meta_path).read_text())
    params = json.loads(Path(params_path).read_text())
    module = f"qmroct_isolated_algorithm_{name}"
    return python_child(
        name, Path(entry), function, Path(volume_path), meta, params, Path(outdir), module
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
