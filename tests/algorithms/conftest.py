"""Shared fixtures of the algorithm tests: the repository's algorithms and staged synthetic
scans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support import ALGORITHMS_DIR as ALGORITHMS


def stage_scan(
    directory: Path,
    volume: np.ndarray,
    spacing_mm: dict,
    intensity: str = "linear",
    scan_id: str = "scan1",
    device: str = "Synthetic SD-OCT",
) -> tuple[Path, dict]:
    """Write volume.npy + meta.json the way the workflow stages a scan; returns
    (volume_path, meta)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "volume.npy"
    np.save(path, np.ascontiguousarray(volume, dtype=np.float32))
    meta = {
        "scan_id": scan_id,
        "spacing_mm": dict(spacing_mm),
        "device": device,
        "laterality": "OD",
        "intensity": intensity,
        "shape": list(volume.shape),
    }
    (directory / "meta.json").write_text(json.dumps(meta))
    return path, meta


@pytest.fixture
def algorithms_dir() -> Path:
    return ALGORITHMS


@pytest.fixture
def stage():
    """stage(directory, volume, spacing_mm, intensity="linear") -> (volume_path, meta)"""
    return stage_scan


@pytest.fixture(scope="session")
def synth():
    """generate_volume, cached per parameter set for the test session."""
    from qmroct.synth.generator import SynthParams, generate_volume

    cache: dict = {}

    def make(**kw):
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items()))
        if key not in cache:
            cache[key] = generate_volume(SynthParams(**kw))
        return cache[key]

    return make
