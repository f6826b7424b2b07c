"""ILM and Bruch's membrane per A-scan, with segmentation KQIs.

Boundaries come from the shared graph-search segmentation (octseg.segment:
gradient costs, minimum-cost path across each B-scan by dynamic programming,
in the spirit of Chiu et al. 2010). Written to ``layers.npz`` (ilm, bm as
float32 row positions, (n_bscans, n_ascans); confident as bool) for the report
and for other tools.

KQIs
* detection_fraction: share of A-scans where both boundaries were found with
  an edge at least ``confidence_ratio`` (0.3) times the volume's typical edge
  strength (shadowed or washed-out A-scans fall below it).
* thickness_mean_um / thickness_min_um: retinal thickness ILM-BM over
  confident A-scans (the minimum on a 5-A-scan running median, so that a
  single mis-detected A-scan cannot define it).
* discontinuities: number of steps where ILM or BM moves by more than
  ``discontinuity_px`` (6 px) within ``discontinuity_span`` (2) A-scans
  (consecutive over-threshold positions count as one step): the sign of a
  segmentation that hopped between layers or of lateral motion within a
  B-scan. A normal foveal pit slopes by less than 1 px per A-scan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import median_filter

from qmroct.algorithms.shared import load_shared


def count_steps(ilm: np.ndarray, bm: np.ndarray, threshold: float, span: int) -> np.ndarray:
    """Per B-scan: runs of positions where ILM or BM changes by > threshold over ``span``
    A-scans."""
    nb, nx = ilm.shape
    if nx <= span:
        return np.zeros(nb)
    over = (np.abs(ilm[:, span:] - ilm[:, :-span]) > threshold) | (
        np.abs(bm[:, span:] - bm[:, :-span]) > threshold
    )
    starts = over & ~np.concatenate([np.zeros((nb, 1), bool), over[:, :-1]], axis=1)
    return starts.sum(axis=1).astype(float)


def compute(volume, meta, params, workdir):
    octseg = load_shared("octseg", __file__)
    p = {"discontinuity_px": 6.0, "discontinuity_span": 2, **(params or {})}
    vol, notes = octseg.prepare(volume, meta)
    seg = octseg.segment_cached(vol, meta, p)
    dz_um = octseg.depth_spacing_um(meta)
    if not (meta or {}).get("spacing_mm", {}).get("depth"):
        notes.append(f"no depth spacing in metadata; assumed {dz_um} um per pixel")
    nb, nx = seg.ilm.shape
    thick = (seg.bm - seg.ilm) * dz_um
    conf = seg.confident
    det_b = conf.mean(axis=1)
    thick_med = median_filter(thick, size=(1, 5), mode="nearest") if nx >= 5 else thick
    mean_b = np.array([thick[b][conf[b]].mean() if conf[b].any() else np.nan for b in range(nb)])
    min_b = np.array([thick_med[b][conf[b]].min() if conf[b].any() else np.nan for b in range(nb)])
    disc_b = count_steps(
        seg.ilm, seg.bm, float(p["discontinuity_px"]), int(p["discontinuity_span"])
    )
    if conf.any():
        t_mean, t_min = float(thick[conf].mean()), float(np.nanmin(min_b))
    else:
        t_mean = t_min = None
        notes.append("no A-scan with a confident ILM and BM detection: thickness undefined")

    workdir = Path(workdir)
    np.savez_compressed(
        workdir / "layers.npz",
        ilm=seg.ilm.astype(np.float32),
        bm=seg.bm.astype(np.float32),
        confident=conf,
        depth_um_per_px=np.float32(dz_um),
    )
    return {
        "kqis": {
            "detection_fraction": {
                "value": float(conf.mean()),
                "unit": "fraction",
                "per_bscan": det_b,
            },
            "thickness_mean_um": {"value": t_mean, "unit": "um", "per_bscan": mean_b},
            "thickness_min_um": {"value": t_min, "unit": "um", "per_bscan": min_b},
            "discontinuities": {"value": float(disc_b.sum()), "unit": "count", "per_bscan": disc_b},
        },
        "files": ["layers.npz"],
        "notes": notes,
    }
