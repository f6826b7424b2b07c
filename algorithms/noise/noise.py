"""Background noise sigma, noise floor and SNR per B-scan and per volume.

Background (signal-free) regions are found without segmentation: each B-scan
is cut into tiles (16 rows x 32 A-scans); the tiles with the lowest means are
the vitreous and the deep, signal-free rows. A tile counts as background when
its mean is within 4 standard errors of the mean of the lowest 10 % of tiles.
Noise sigma is the square root of the median tile variance over background
tiles; the noise floor is their median mean.

SNR (dB) = 20 log10((P99 - floor) / sigma), P99 being the 99th percentile of
the B-scan's intensities: how far the brightest tissue stands above the
background noise (amplitude ratio, as in background-noise SNR definitions of
e.g. Shirasawa et al., PLoS ONE 2014).

Intensity domains: "linear" data are used as stored. "log8" exports
(log-compressed 8-bit) are linearised first with the dynamic range in
``params.log_dynamic_range_db`` (default 40 dB): sigma is then in relative
linear units (the device scale is unknown) while the SNR, a ratio, stays
comparable. "rescaled100" (0-100 normalised, e.g. oct-converter DICOM) is
computed as stored but flagged: its sigma is quantisation-limited and not in
device units.
"""

from __future__ import annotations

import numpy as np

from qmroct.algorithms.shared import load_shared


def tile_stats(vol: np.ndarray, tile_rows: int, tile_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile mean and variance, (nb, n_tiles)."""
    nb, nz, nx = vol.shape
    th, tw = min(tile_rows, nz), min(tile_cols, nx)
    nzt, nxt = nz // th, nx // tw
    tiles = vol[:, : nzt * th, : nxt * tw].reshape(nb, nzt, th, nxt, tw)
    mean = tiles.mean(axis=(2, 4), dtype=np.float64).reshape(nb, -1)
    sq = np.square(tiles, dtype=np.float32).mean(axis=(2, 4), dtype=np.float64).reshape(nb, -1)
    var = np.maximum(sq - mean**2, 0.0) * (th * tw) / max(th * tw - 1, 1)
    return mean, var


def background(
    mean: np.ndarray, var: np.ndarray, n: int, low_fraction: float, k: float
) -> np.ndarray:
    """Boolean (nb, n_tiles): tiles whose mean is within k standard errors of the lowest tiles."""
    nb, nt = mean.shape
    n_low = max(1, int(round(low_fraction * nt)))
    order = np.argsort(mean, axis=1)
    low = order[:, :n_low]
    mu0 = np.take_along_axis(mean, low, 1).mean(axis=1)
    s0 = np.sqrt(np.median(np.take_along_axis(var, low, 1), axis=1))
    sel = mean <= (mu0 + k * s0 / np.sqrt(n))[:, None]
    sel[np.arange(nb)[:, None], low] = True
    return sel


def compute(volume, meta, params, workdir):
    octseg = load_shared("octseg", __file__)
    vol, notes = octseg.prepare(volume, meta)
    kind = octseg.intensity_kind(meta)
    p = {
        "tile_rows": 16,
        "tile_cols": 32,
        "low_fraction": 0.1,
        "k": 4.0,
        "signal_percentile": 99.0,
        "log_dynamic_range_db": 40.0,
        **(params or {}),
    }
    note = None
    if kind == "log8":
        vol = np.power(np.float32(10.0), vol * np.float32(p["log_dynamic_range_db"] / 255.0 / 10.0))
        note = (
            f"log8 input linearised with a {p['log_dynamic_range_db']} dB window: sigma and "
            "floor in relative "
            "linear units; SNR comparable"
        )
    elif kind == "rescaled100":
        note = (
            "intensities were rescaled to 0-100 (e.g. oct-converter DICOM): sigma and floor "
            "are not in device "
            "units and are quantisation-limited; SNR is indicative only"
        )
    elif octseg.looks_rescaled100(vol, meta):
        note = octseg.RESCALED_NOTE
    if note:
        notes.append(note)
    nb, nz, nx = vol.shape
    mean, var = tile_stats(vol, int(p["tile_rows"]), int(p["tile_cols"]))
    n = min(int(p["tile_rows"]), nz) * min(int(p["tile_cols"]), nx)
    sel = background(mean, var, n, float(p["low_fraction"]), float(p["k"]))

    sig_b = np.array([np.sqrt(np.median(var[b][sel[b]])) for b in range(nb)])
    floor_b = np.array([np.median(mean[b][sel[b]]) for b in range(nb)])
    sigma = float(np.sqrt(np.median(var[sel])))
    floor = float(np.median(mean[sel]))

    flat = vol.reshape(nb, -1)
    kth = min(flat.shape[1] - 1, int(round(p["signal_percentile"] / 100 * (flat.shape[1] - 1))))
    peak_b = np.partition(flat, kth, axis=1)[:, kth].astype(np.float64)
    signal_b = peak_b - floor_b
    with np.errstate(divide="ignore", invalid="ignore"):
        snr_b = np.where((sig_b > 0) & (signal_b > 0), 20 * np.log10(signal_b / sig_b), np.nan)
        signal = float(np.median(peak_b)) - floor
        snr = 20 * np.log10(signal / sigma) if sigma > 0 and signal > 0 else float("nan")
    if not np.isfinite(snr):
        notes.append(
            "SNR undefined: no signal above the noise floor or zero noise "
            "(blank or constant volume)"
        )

    def k(value, unit, per=None):
        d = {"value": value, "unit": unit, "per_bscan": per}
        if note:
            d["note"] = note
        return d

    snr_min = float(np.nanmin(snr_b)) if np.isfinite(snr_b).any() else None
    return {
        "kqis": {
            "noise_sigma": k(sigma, "intensity", sig_b),
            "noise_floor": k(floor, "intensity", floor_b),
            "snr_db": k(snr, "dB", snr_b),
            "snr_db_min": k(snr_min, "dB"),
        },
        "notes": notes,
        "info": {"intensity": kind, "background_tile_fraction": float(sel.mean())},
    }
