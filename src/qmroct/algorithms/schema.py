"""The JSON schemas of the algorithm contract.

``KQI_OUTPUT_SCHEMA`` is what every algorithm writes (``kqi.json``), whatever
its runtime; ``MANIFEST_SCHEMA`` is what ``algorithms/<name>/algorithm.yaml``
holds. Both are plain dicts so they travel with the code (no package data);
``qmroct algorithm schema`` prints them.
"""

from __future__ import annotations

from typing import Any

_NUMBER_OR_NULL = {"type": ["number", "null"]}

KQI_OUTPUT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://qmroct.example/schemas/kqi-output.json",
    "title": "KQI output of one algorithm on one scan",
    "type": "object",
    "required": ["kqis"],
    "additionalProperties": False,
    "properties": {
        "kqis": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": "^[a-z][a-z0-9_]*$"},
            "additionalProperties": {
                "type": "object",
                "required": ["value", "unit"],
                "additionalProperties": False,
                "properties": {
                    "value": _NUMBER_OR_NULL,
                    "unit": {"type": "string"},
                    "per_bscan": {"type": ["array", "null"], "items": _NUMBER_OR_NULL},
                    "note": {"type": "string"},
                },
            },
        },
        "files": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "notes": {"type": "array", "items": {"type": "string"}},
        # Free-form extras an algorithm wants to keep (e.g. the chosen device
        # constant); never used for pass/fail.
        "info": {"type": "object"},
    },
}

# Absolute and relative: |a - b| <= max(abs, rel * max(|a|, |b|)). Unset: exact for
# integers, 1e-9 relative for floats (qmroct.provenance.rerun).
_TOLERANCE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "abs": {"type": "number", "minimum": 0},
        "rel": {"type": "number", "minimum": 0},
    },
}

_THRESHOLD_PATTERN = r"^\s*(>=|<=|>|<|==)\s*-?[0-9.]+([eE][-+]?[0-9]+)?\s*$"

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "algorithm.yaml",
    "type": "object",
    "required": ["name", "version", "runtime", "entry", "kqis"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
        "version": {"type": "string", "minLength": 1},
        "runtime": {"enum": ["python", "octave", "executable"]},
        "entry": {"type": "string", "minLength": 1},
        "function": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "description": {"type": "string"},
        "citation": {"type": "string"},
        "input_format": {"enum": ["npy", "mat"]},
        "shared": {"type": "array", "items": {"type": "string"}},
        # Files the code reads (lookup tables, weights), relative to the folder; in the
        # checksum like the code. They must lie inside the folder or the shared folder.
        "data": {"type": "array", "items": {"type": "string", "minLength": 1}},
        # How closely a rerun must reproduce each KQI (qmroct rerun); per-KQI overrides below.
        "tolerance": _TOLERANCE,
        "params": {"type": "object"},
        "kqis": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "unit", "higher_is_better"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                    "unit": {"type": "string"},
                    "higher_is_better": {"type": ["boolean", "null"]},
                    "valid_range": {
                        "type": ["array", "null"],
                        "minItems": 2,
                        "maxItems": 2,
                        "items": _NUMBER_OR_NULL,
                    },
                    "description": {"type": "string"},
                    "per_bscan": {"type": "boolean"},
                    "tolerance": _TOLERANCE,
                },
            },
        },
        "thresholds": {
            "type": "object",
            "additionalProperties": {"type": "string", "pattern": _THRESHOLD_PATTERN},
        },
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "threads": {"type": "integer", "minimum": 1},
                "mem_mb": {"type": "integer", "minimum": 1},
                "runtime_s": {"type": "number", "exclusiveMinimum": 0},
            },
        },
    },
}


def validate_output(doc: Any) -> list[str]:
    """Return a list of schema violations of a KQI output document (empty = valid)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(KQI_OUTPUT_SCHEMA)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


def validate_manifest(doc: Any) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]
