"""Loading code shared between algorithm folders (``algorithms/_shared/<name>.py``).

Algorithms declare shared files in their manifest (``shared: [octseg.py]``), so
the file counts in their code checksum. They load it with
``load_shared("octseg", __file__)``: by path, not by import name, so two
checkouts never mix, and keyed by modification time, so an edited file is
picked up in a long-lived process (``qmroct algorithm test`` loops).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_shared(name: str, algorithm_file: str) -> ModuleType:
    path = Path(algorithm_file).resolve().parent.parent / "_shared" / f"{name}.py"
    key = f"_qmroct_shared_{name}_{path.stat().st_mtime_ns}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return sys.modules[key]
