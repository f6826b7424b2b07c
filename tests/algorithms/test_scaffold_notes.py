"""Scaffolded algorithms follow the contract's advice for rescaled input (docs/algorithms.md):
a noise level measured on values normalised to 0-100 carries a note, in every runtime."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from qmroct.algorithms import load_algorithm
from qmroct.algorithms.scaffold import scaffold

SPACING = {"bscan": 0.1, "depth": 0.004, "ascan": 0.01}


@pytest.mark.parametrize("runtime", ["python", "octave", "executable"])
def test_scaffold_notes_rescaled_noise(tmp_path, stage, runtime):
    if runtime == "octave" and shutil.which("octave-cli") is None:
        pytest.skip("octave-cli not installed")
    root = tmp_path / "algs"
    folder = scaffold("mine", runtime, root)
    if runtime == "executable":
        subprocess.run(
            ["gcc", "-O2", "-o", str(folder / "mine"), str(folder / "mine.c"), "-lm"], check=True
        )
    volume = np.random.default_rng(0).uniform(0, 100, (2, 64, 32)).astype(np.float32)
    algorithm = load_algorithm("mine", [root], mcr_root=tmp_path)
    for intensity, noted in (("rescaled100", True), ("linear", False)):
        path, meta = stage(tmp_path / intensity, volume, SPACING, intensity=intensity)
        kqis = algorithm.run(path, meta, {}, tmp_path / f"w-{intensity}", timeout=120)["kqis"]
        assert ("note" in kqis["background_sigma"]) is noted, (intensity, kqis["background_sigma"])
        if noted:
            assert "rescaled" in kqis["background_sigma"]["note"]
        assert "note" not in kqis["mean_intensity"]
