"""Signal loss / shadowing and segmentation-informed SNR and CNR.

Uses the shared ILM/BM segmentation (octseg.segment).

Signal loss: per A-scan, the mean intensity above the noise floor in the
outer-retina band just above Bruch's membrane (``band_um`` = 45 um: IS/OS and
RPE, the most reflective layers, present across the fovea too). An A-scan has
lost signal when that band falls below ``loss_ratio`` (0.35) times the
reference: the running median over ``reference_fraction`` (1/4) of the B-scan
width (narrow shadows), or the median over the whole volume (a whole B-scan
gone dark, e.g. a blink).
shadow_fraction = share of A-scans with lost signal. The mask is written to
``signal_loss.npz``.

SNR / CNR (as defined in the open MATLAB image_quality.m by Romero-Bascones,
after Shirasawa et al. PLoS ONE 2014 and Rico-Jimenez et al. BOE 2022), per
B-scan with foreground = pixels between ILM and BM and background = all others:
SNR = 10 log10(mean_fg^2 / var_bg) dB, CNR = |mean_fg - mean_bg| / sqrt(var_fg + var_bg).
Volume values are the medians over B-scans.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import median_filter

from qmroct.algorithms.shared import load_shared


def band_signal(
    lin: np.ndarray, ilm: np.ndarray, bm: np.ndarray, band_px: int, floor: np.ndarray
) -> np.ndarray:
    """Mean intensity above the floor in rows [BM - band_px, BM) per A-scan, (nb, nx)."""
    nb, nz, nx = lin.shape
    top = np.clip(np.rint(bm).astype(np.int64) - band_px, 0, nz - 1)
    top = np.maximum(top, np.clip(np.ceil(ilm).astype(np.int64), 0, nz - 1))
    idx = np.clip(top[:, None, :] + np.arange(band_px)[None, :, None], 0, nz - 1)
    vals = np.take_along_axis(lin, idx, axis=1)
    return vals.mean(axis=1) - floor[:, None]


def informed_snr_cnr(
    vol: np.ndarray, ilm: np.ndarray, bm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per B-scan SNR (dB) and CNR; foreground = pixel centres within [ILM, BM]."""
    nb, nz, nx = vol.shape
    n_all = float(nz * nx)
    s_all = vol.sum(axis=(1, 2), dtype=np.float64)
    q_all = np.square(vol).sum(axis=(1, 2), dtype=np.float64)
    n_in = np.zeros(nb)
    s_in = np.zeros(nb)
    q_in = np.zeros(nb)
    for b in range(nb):  # only the rows the retina spans in this B-scan
        r0 = int(np.clip(np.floor(ilm[b].min()) - 1, 0, nz))
        r1 = int(np.clip(np.ceil(bm[b].max()) + 1, r0, nz))
        w = vol[b, r0:r1].astype(np.float64)
        centre = (np.arange(r0, r1) + 0.5)[:, None]
        inside = (centre >= ilm[b][None, :]) & (centre <= bm[b][None, :])
        n_in[b] = inside.sum()
        s_in[b] = w[inside].sum()
        q_in[b] = np.square(w[inside]).sum()
    n_out = n_all - n_in
    with np.errstate(divide="ignore", invalid="ignore"):
        mu_in = s_in / n_in
        mu_out = (s_all - s_in) / n_out
        var_in = (q_in - n_in * mu_in**2) / (n_in - 1)
        var_out = ((q_all - q_in) - n_out * mu_out**2) / (n_out - 1)
        snr = 10 * np.log10(mu_in**2 / var_out)
        cnr = np.abs(mu_in - mu_out) / np.sqrt(var_in + var_out)
    ok = (n_in > 1) & (n_out > 1) & (var_out > 0)
    return np.where(ok, snr, np.nan), np.where(ok, cnr, np.nan)


def compute(volume, meta, params, workdir):
    octseg = load_shared("octseg", __file__)
    p = {
        "band_um": 45.0,
        "loss_ratio": 0.35,
        "reference_fraction": 0.25,
        "log_dynamic_range_db": 40.0,
        **(params or {}),
    }
    vol, notes = octseg.prepare(volume, meta)
    seg = octseg.segment_cached(vol, meta, p)
    kind = octseg.intensity_kind(meta)
    lin = vol
    if kind == "log8":
        lin = np.power(np.float32(10.0), vol * np.float32(p["log_dynamic_range_db"] / 255.0 / 10.0))
        notes.append(
            "log8 input linearised for the signal-loss band; "
            "SNR/CNR computed on the stored (log) values"
        )
    nb, nz, nx = vol.shape
    dz_um = octseg.depth_spacing_um(meta)
    band_px = max(2, int(round(p["band_um"] / dz_um)))

    # noise floor per B-scan: median of the vitreous (rows well above the ILM)
    top_rows = np.clip(np.floor(seg.ilm.min(axis=1)).astype(int) - 8, 1, nz)
    floor = np.array([np.median(lin[b, : top_rows[b]].mean(axis=1)) for b in range(nb)])
    s = band_signal(lin, seg.ilm, seg.bm, band_px, floor)
    if nx >= 3:  # a median over 3 A-scans removes single speckle dips, keeps shadow edges
        s = median_filter(s, size=(1, 3), mode="nearest")
    win = max(31, int(nx * float(p["reference_fraction"])) | 1)
    local = median_filter(s, size=(1, win), mode="reflect") if nx > 1 else s
    r = float(p["loss_ratio"])
    vol_ref = float(np.median(s))
    # local: narrow shadows against their neighbours; volume: a whole dim B-scan (blink)
    lost = (s < r * local) | (s < r * vol_ref) | (s <= 0)
    if np.max(s) <= 0:
        notes.append("no signal above the noise floor anywhere: every A-scan counts as lost")
    np.savez_compressed(
        Path(workdir) / "signal_loss.npz", lost=lost, band_signal=s.astype(np.float32)
    )

    rescaled_note = None
    if kind == "rescaled100" or octseg.looks_rescaled100(vol, meta):
        rescaled_note = (
            "intensities rescaled to 0-100: SNR/CNR are quantisation-limited, not device values"
        )
        notes.append(rescaled_note)
    snr_b, cnr_b = informed_snr_cnr(vol, seg.ilm, seg.bm)
    finite = np.isfinite(snr_b)
    if not finite.all():
        notes.append(
            f"SNR/CNR undefined for {int((~finite).sum())} B-scan(s) "
            "(no retina or constant background)"
        )
    kqis = {
        "shadow_fraction": {
            "value": float(lost.mean()),
            "unit": "fraction",
            "per_bscan": lost.mean(axis=1),
        },
        "snr_seg_db": {
            "value": float(np.median(snr_b[finite])) if finite.any() else None,
            "unit": "dB",
            "per_bscan": snr_b,
        },
        "cnr": {
            "value": float(np.median(cnr_b[finite])) if finite.any() else None,
            "unit": "1",
            "per_bscan": cnr_b,
        },
    }
    if rescaled_note:
        kqis["snr_seg_db"]["note"] = kqis["cnr"]["note"] = rescaled_note
    return {
        "kqis": kqis,
        "files": ["signal_loss.npz"],
        "notes": notes,
    }
