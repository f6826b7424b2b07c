"""Bundled synthetic test volumes for ``qmroct algorithm test`` (generated, never committed).

Each case is a small volume from :mod:`qmroct.synth` with known ground truth;
the truth is mapped onto the KQI names of the built-in algorithms so that the
output can be printed side by side with it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from qmroct.algorithms.runner import Algorithm, AlgorithmFailure

CASES: dict[str, dict[str, Any]] = {
    "clean": {"defects": ()},
    "high_noise": {"defects": ("high_noise",)},
    "shadow": {"defects": ("shadow",)},
    "motion": {"defects": ("motion", "tilt")},
    "decentered": {"defects": ("decentered",)},
    "log8": {"defects": (), "log8": True},
}
DEFAULT_SHAPE = (9, 496, 256)


def truth_table(truth, log8: bool = False) -> dict[str, float | None]:
    """Ground truth under the KQI names it corresponds to."""
    from qmroct.synth.generator import fovea_offset_mm

    dz_um = truth.spacing_mm["depth"] * 1000
    thick = (truth.bm - truth.ilm) * dz_um
    shifts = np.abs(np.diff(truth.axial_shift)) * dz_um
    table = {
        "noise_sigma": None if log8 else truth.noise_sigma,
        "background_sigma": None if log8 else truth.noise_sigma,
        "noise_floor": None if log8 else truth.noise_floor,
        "thickness_mean_um": float(thick.mean()),
        "thickness_min_um": float(thick.min()),
        "shadow_fraction": float(truth.shadow_mask.mean()),
        "max_shift_um": float(shifts.max()) if shifts.size else None,
        "mean_shift_um": float(shifts.mean()) if shifts.size else None,
        "jumps": float(np.sum(shifts > 10.0)) if shifts.size else None,
        "fovea_offset_mm": fovea_offset_mm(truth),
        "fovea_ascan": truth.fovea_ascan,
        "fovea_bscan": truth.fovea_bscan,
    }
    return table


def run_on_synthetic(
    algo: Algorithm,
    workdir: Path | None = None,
    cases: list[str] | None = None,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    seed: int = 1,
    params: dict | None = None,
    timeout: float | None = None,
) -> list[dict[str, Any]]:
    """Run ``algo`` on each synthetic case; one row per case with kqis, truth, notes and error."""
    from qmroct.synth import SynthParams, generate_volume, to_log8

    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="qmroct-algotest-")) if own else Path(workdir)
    rows = []
    try:
        for i, case in enumerate(cases or list(CASES)):
            spec = CASES[case]
            nb, nz, nx = shape
            vol, truth = generate_volume(
                SynthParams(
                    n_bscans=nb, depth=nz, width=nx, defects=spec["defects"], seed=seed + i, looks=2
                )
            )
            intensity = "linear"
            if spec.get("log8"):
                vol, intensity = to_log8(vol).astype(np.float32), "log8"
            case_dir = root / case
            case_dir.mkdir(parents=True, exist_ok=True)
            np.save(case_dir / "volume.npy", vol)
            meta = {
                "scan_id": f"synthetic-{case}",
                "spacing_mm": truth.spacing_mm,
                "device": "Synthetic SD-OCT",
                "laterality": "OD",
                "intensity": intensity,
                "shape": list(vol.shape),
            }
            row: dict[str, Any] = {
                "case": case,
                "truth": truth_table(truth, bool(spec.get("log8"))),
                "error": None,
            }
            try:
                out = algo.run(
                    case_dir / "volume.npy", meta, params or {}, case_dir / "work", timeout=timeout
                )
                row.update(kqis=out["kqis"], notes=out["notes"], elapsed_s=out["elapsed_s"])
            except AlgorithmFailure as exc:
                row.update(kqis={}, notes=[], error=str(exc))
            finally:
                (case_dir / "volume.npy").unlink(missing_ok=True)
            rows.append(row)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
    return rows
