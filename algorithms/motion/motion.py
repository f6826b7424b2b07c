"""Axial motion between adjacent B-scans.

Uses the shared ILM/BM segmentation (octseg.segment) in two steps:

1. coarse: the shift of B-scan b against b-1 is the median, over A-scans
   confidently segmented in both, of the change of Bruch's membrane position
   (BM rather than ILM: the outer retina stays flat under the fovea whereas
   the ILM dips into the pit and changes shape from B-scan to B-scan);
2. fine: around that estimate, the axial cross-correlation of the two B-scans'
   log-intensity in a window around the outer retina (from ``window_um``
   above to below the BM of B-scan b-1), summed over all A-scans, is
   maximised and the peak refined by a parabola. Summing over hundreds of
   A-scans averages speckle out, which a per-A-scan boundary cannot.

KQIs: max and mean absolute shift (um), the number of jumps larger than
``jump_um`` (10 um), and per B-scan the absolute shift against the previous
one (null for the first). The signed shifts and the cumulative axial profile
go into ``info``.
A single B-scan has no inter-B-scan motion: values are null with a note.
"""

from __future__ import annotations

import numpy as np

from qmroct.algorithms.shared import load_shared


def adjacent_shifts(bm: np.ndarray, confident: np.ndarray, min_fraction: float = 0.1) -> np.ndarray:
    """Signed shift (px) of each B-scan against the previous one, (nb-1,); NaN where too few
    A-scans are confidently segmented in both B-scans to tell."""
    nb, nx = bm.shape
    d = np.diff(bm, axis=0)
    both = confident[1:] & confident[:-1]
    out = np.empty(nb - 1)
    for i in range(nb - 1):
        out[i] = np.median(d[i][both[i]]) if both[i].sum() >= max(3, min_fraction * nx) else np.nan
    return out


def refine_shifts(
    vol: np.ndarray,
    kind: str,
    bm: np.ndarray,
    coarse: np.ndarray,
    above_px: int,
    below_px: int,
    search: int = 2,
) -> np.ndarray:
    """Sub-pixel shifts by axial cross-correlation around the coarse estimate, (nb-1,)."""
    octseg = load_shared("octseg", __file__)
    from scipy.ndimage import gaussian_filter1d

    nb, nz, nx = vol.shape
    out = np.full(nb - 1, np.nan)
    offs = np.arange(-above_px, below_px + 1)
    lags = np.arange(-search, search + 1)
    ok = np.isfinite(coarse)
    if not ok.any():
        return out
    # log intensity, smoothed along depth, once, over the rows any window can reach
    reach = above_px + below_px + search + int(np.nanmax(np.abs(coarse))) + 4
    r0 = int(np.clip(np.floor(np.nanmin(bm)) - reach, 0, nz))
    r1 = int(np.clip(np.ceil(np.nanmax(bm)) + reach, r0 + 1, nz))
    logv = gaussian_filter1d(octseg.to_log(vol[:, r0:r1], kind), 1.0, axis=1)
    nzw = r1 - r0
    for i in np.flatnonzero(ok):
        ref_rows = np.rint(bm[i]).astype(np.int64)[None, :] + offs[:, None] - r0  # (W, nx)
        s0 = int(np.rint(coarse[i]))
        a = np.take_along_axis(logv[i], np.clip(ref_rows, 0, nzw - 1), axis=0)
        a = a - a.mean(axis=0)
        rows = ref_rows[None] + s0 + lags[:, None, None]  # (L, W, nx)
        bb = np.take_along_axis(logv[i + 1][None], np.clip(rows, 0, nzw - 1), axis=1)
        bb -= bb.mean(axis=1, keepdims=True)
        num = np.einsum("wx,lwx->l", a, bb)
        cc = num / np.sqrt((a * a).sum() * np.einsum("lwx,lwx->l", bb, bb) + 1e-12)
        k = int(np.argmax(cc))
        delta = 0.0
        if 0 < k < len(lags) - 1:
            den = cc[k - 1] - 2 * cc[k] + cc[k + 1]
            if den < 0:
                delta = float(np.clip(0.5 * (cc[k - 1] - cc[k + 1]) / den, -0.5, 0.5))
        out[i] = s0 + lags[k] + delta
    return out


def compute(volume, meta, params, workdir):
    octseg = load_shared("octseg", __file__)
    p = {"jump_um": 10.0, "window_um": 120.0, **(params or {})}
    vol, notes = octseg.prepare(volume, meta)
    nb = vol.shape[0]
    unit = {"max_shift_um": "um", "mean_shift_um": "um", "jumps": "count"}
    if nb < 2:
        notes.append("a single B-scan: motion between B-scans cannot be measured")
        return {
            "kqis": {
                k: {"value": None, "unit": u, "per_bscan": [None] * nb} for k, u in unit.items()
            },
            "notes": notes,
        }
    seg = octseg.segment_cached(vol, meta, p)
    dz_um = octseg.depth_spacing_um(meta)
    coarse = adjacent_shifts(seg.bm, seg.confident)
    win = max(4, int(round(float(p["window_um"]) / dz_um)))
    shifts = refine_shifts(vol, octseg.intensity_kind(meta), seg.bm, coarse, win, win // 2)
    shifts_um = shifts * dz_um
    ok = np.isfinite(shifts_um)
    if not ok.all():
        notes.append(
            f"{int((~ok).sum())} of {nb - 1} B-scan pair(s) without enough confidently "
            "segmented A-scans: "
            "shift unknown (null)"
        )
    per = [None] + [float(abs(v)) if np.isfinite(v) else None for v in shifts_um]
    jumps = int(np.sum(np.abs(shifts_um[ok]) > float(p["jump_um"])))
    if not ok.any():
        return {
            "kqis": {
                k: {"value": None, "unit": u, "per_bscan": per if k == "max_shift_um" else None}
                for k, u in unit.items()
            },
            "notes": notes,
        }
    return {
        "kqis": {
            "max_shift_um": {
                "value": float(np.max(np.abs(shifts_um[ok]))),
                "unit": "um",
                "per_bscan": per,
            },
            "mean_shift_um": {"value": float(np.mean(np.abs(shifts_um[ok]))), "unit": "um"},
            "jumps": {"value": float(jumps), "unit": "count"},
        },
        "notes": notes,
        "info": {
            "shift_um": shifts_um.round(3).tolist(),
            "axial_profile_px": [0.0] + np.cumsum(np.nan_to_num(shifts)).round(3).tolist(),
            "depth_um_per_px": dz_um,
        },
    }
