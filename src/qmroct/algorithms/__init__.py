"""The algorithm layer: one contract for Python, GNU Octave and compiled programs.

>>> from qmroct.algorithms import load_algorithm
>>> algo = load_algorithm("noise", search_paths=[Path("algorithms")])
>>> out = algo.run(volume_path, meta, params, workdir)

See docs/algorithms.md for how to write, try and declare an algorithm.
"""

from qmroct.algorithms.manifest import (
    AlgorithmError,
    AlgorithmNotFound,
    KQISpec,
    ManifestError,
    available_algorithms,
    code_checksum,
    default_search_paths,
    parse_threshold,
)
from qmroct.algorithms.runner import Algorithm, AlgorithmFailure, load_algorithm
from qmroct.algorithms.schema import KQI_OUTPUT_SCHEMA, MANIFEST_SCHEMA, validate_output

__all__ = [
    "Algorithm",
    "AlgorithmError",
    "AlgorithmFailure",
    "AlgorithmNotFound",
    "KQISpec",
    "KQI_OUTPUT_SCHEMA",
    "MANIFEST_SCHEMA",
    "ManifestError",
    "available_algorithms",
    "code_checksum",
    "default_search_paths",
    "load_algorithm",
    "parse_threshold",
    "validate_output",
]
