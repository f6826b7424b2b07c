"""Fovea position (retinal thickness minimum) and its offset from the scan centre.

Uses the shared ILM/BM segmentation (octseg.segment). The ILM-BM thickness map
(n_bscans x n_ascans) is smoothed by normalised convolution (only confidently
segmented A-scans contribute; Gaussian of ``smooth_mm`` = 0.05 mm laterally,
half a B-scan across B-scans). The fovea is the minimum of that map, refined
as the weighted centroid of the connected region deeper than half the pit
depth (weights = depth below the half-depth level), so that the estimate is
sub-pixel and insensitive to the noise of a single minimum. The pit depth is
the median thickness minus the minimum; below ``min_pit_um`` (30 um) no fovea
is reported (null values with a note).

Offsets from the scan centre ((n-1)/2 in both directions) in mm, using the
spacing from the metadata.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, label

from qmroct.algorithms.shared import load_shared


def find_fovea(thick: np.ndarray, weight: np.ndarray, sigma: tuple[float, float], min_pit: float):
    """(bscan, ascan, pit_depth, smoothed map) or (None, None, pit_depth, map) when there
    is no pit."""
    w = weight.astype(np.float64)
    num = gaussian_filter(np.where(weight, thick, 0.0), sigma, mode="nearest")
    den = gaussian_filter(w, sigma, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        sm = num / den
    if not np.isfinite(sm).any():
        return None, None, None, sm
    sm = np.where(np.isfinite(sm), sm, np.nanmax(sm))
    ref = float(np.median(sm))
    b0, x0 = np.unravel_index(int(np.argmin(sm)), sm.shape)
    depth = ref - float(sm[b0, x0])
    if depth < min_pit:
        return None, None, depth, sm
    level = sm[b0, x0] + 0.5 * depth
    regions, _ = label(sm < level)
    region = regions == regions[b0, x0]
    wts = np.where(region, level - sm, 0.0)
    bb, xx = np.indices(sm.shape)
    total = wts.sum()
    return float((bb * wts).sum() / total), float((xx * wts).sum() / total), depth, sm


def compute(volume, meta, params, workdir):
    octseg = load_shared("octseg", __file__)
    p = {"smooth_mm": 0.05, "min_pit_um": 30.0, **(params or {})}
    vol, notes = octseg.prepare(volume, meta)
    seg = octseg.segment_cached(vol, meta, p)
    nb, nx = seg.ilm.shape
    dz_um = octseg.depth_spacing_um(meta)
    spacing = (meta or {}).get("spacing_mm") or {}
    dx = float(spacing.get("ascan") or 0) or None
    dy = float(spacing.get("bscan") or 0) or None
    if dx is None:
        notes.append("no A-scan spacing in metadata: offsets in mm are undefined")
    if dy is None and nb > 1:
        notes.append("no B-scan spacing in metadata: offsets in mm are undefined")
    sig_x = float(p["smooth_mm"]) / dx if dx else 4.0
    sig_b = 0.5 if nb > 1 else 0.0
    thick = (seg.bm - seg.ilm) * dz_um
    fb, fx, depth, _ = find_fovea(thick, seg.confident, (sig_b, sig_x), float(p["min_pit_um"]))
    kq = {
        "fovea_offset_mm": {"value": None, "unit": "mm"},
        "fovea_offset_x_mm": {"value": None, "unit": "mm"},
        "fovea_offset_y_mm": {"value": None, "unit": "mm"},
        "fovea_ascan": {"value": None, "unit": "index"},
        "fovea_bscan": {"value": None, "unit": "index"},
        "pit_depth_um": {"value": depth, "unit": "um"},
    }
    if fb is None:
        notes.append(
            f"no foveal pit found (depth {depth if depth is not None else 'n/a'} um "
            f"< {p['min_pit_um']} um)"
        )
        return {"kqis": kq, "notes": notes}
    ox = (fx - (nx - 1) / 2) * dx if dx else None
    oy = (fb - (nb - 1) / 2) * dy if dy else (0.0 if nb == 1 else None)
    kq["fovea_ascan"]["value"] = fx
    kq["fovea_bscan"]["value"] = fb
    kq["fovea_offset_x_mm"]["value"] = ox
    kq["fovea_offset_y_mm"]["value"] = oy
    if ox is not None and oy is not None:
        kq["fovea_offset_mm"]["value"] = float(np.hypot(ox, oy))
    if nb == 1:
        notes.append(
            "a single B-scan: the fovea is located along it only (offset across B-scans taken as 0)"
        )
    return {"kqis": kq, "notes": notes}
