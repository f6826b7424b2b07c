"""Subprocess entry for Python algorithms (used when isolated or with a timeout).

    python -m qmroct.algorithms.pyrun ENTRY.py FUNCTION VOLUME META PARAMS OUTDIR

Same contract as the Octave and executable runtimes: reads the staged input,
calls ``FUNCTION(volume, meta, params, outdir)`` and writes ``OUTDIR/kqi.json``.
Exit status 0 only when the file was written.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from qmroct.algorithms.runner import OUTPUT_NAME, jsonable


def main(argv: list[str]) -> int:
    if len(argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    entry, function, volume_path, meta_path, params_path, outdir = argv
    spec = importlib.util.spec_from_file_location("qmroct_isolated_algorithm", entry)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, function)
    volume = np.load(volume_path, allow_pickle=False)
    meta = json.loads(Path(meta_path).read_text())
    params = json.loads(Path(params_path).read_text())
    result = fn(volume, meta, params, Path(outdir))
    text = json.dumps(jsonable(result), allow_nan=False, indent=1)
    (Path(outdir) / OUTPUT_NAME).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
