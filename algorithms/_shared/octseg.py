"""Shared building blocks of the built-in algorithms: input hygiene and ILM/BM segmentation.

Declared in a manifest as ``shared: [octseg.py]``: its bytes then count in that
algorithm's code checksum, so editing this file recomputes every algorithm
that uses it (and only those).

Segmentation follows the idea of Chiu et al. 2010 (Opt Express 18:19413):
boundaries are minimum-cost paths across the B-scan through a cost made from
vertical intensity gradients (dark-to-bright for the ILM, bright-to-dark for
Bruch's membrane below the RPE). Instead of Dijkstra on a pixel graph we solve
the same left-to-right path problem by dynamic programming (Viterbi) with a
bounded, penalised jump between neighbouring A-scans, vectorised over all
B-scans of the volume. To stay fast on full volumes the search runs in two
passes: a coarse pass on a laterally block-averaged volume finds the retina,
then the fine pass searches narrow bands around the coarse lines at full
resolution and refines each boundary to sub-pixel precision.

Axes: (bscan, depth, ascan). Boundary positions are continuous row
coordinates: pixel row r covers [r, r+1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d, median_filter

INTENSITY_KINDS = ("linear", "log8", "rescaled100")
LOG8_DYNAMIC_RANGE_DB = (
    40.0  # window of log8 exports (as qmroct.synth.to_log8 and common device exports)
)


class InputError(ValueError):
    """An input the algorithm cannot give a defined result for."""


def prepare(volume: np.ndarray, meta: dict | None = None) -> tuple[np.ndarray, list[str]]:
    """float32 (bscan, depth, ascan) with non-finite voxels replaced; notes on what was done.

    Raises InputError for volumes with no usable voxel.
    """
    notes: list[str] = []
    vol = np.asarray(volume)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3:
        raise InputError(f"expected a 3-D volume (bscan, depth, ascan), got shape {vol.shape}")
    if min(vol.shape) < 1:
        raise InputError(f"empty volume, shape {vol.shape}")
    vol = vol.astype(np.float32, copy=False)
    finite = np.isfinite(vol)
    n_bad = int(vol.size - np.count_nonzero(finite))
    if n_bad:
        if n_bad == vol.size:
            raise InputError("no finite voxel in the volume (all NaN/inf)")
        fill = float(np.min(vol[finite]))
        vol = np.where(finite, vol, np.float32(fill))
        notes.append(
            f"{n_bad} non-finite voxel(s) ({n_bad / vol.size:.2%}) replaced by the volume "
            f"minimum {fill:g}"
        )
    kind = (meta or {}).get("intensity", "linear") or "linear"
    if kind not in INTENSITY_KINDS:
        notes.append(f"unknown intensity kind {kind!r}; treated as linear")
    return vol, notes


def looks_rescaled100(vol: np.ndarray, meta: dict | None) -> bool:
    """Data declared linear that look normalised to 0-100 integers (oct-converter's DICOM
    writer does this)."""
    if intensity_kind(meta) != "linear" or vol.size == 0:
        return False
    lo, hi = float(vol.min()), float(vol.max())
    if lo < 0 or hi > 100 or hi - lo < 20:
        return False
    sample = vol.reshape(-1)[:: max(1, vol.size // 200_000)]
    return bool(np.all(sample == np.round(sample)))


RESCALED_NOTE = (
    "intensities look rescaled to 0-100 integers (e.g. an oct-converter DICOM) although "
    "declared linear: "
    "sigma and floor are not in device units and are quantisation-limited; SNR is indicative only"
)


def intensity_kind(meta: dict | None) -> str:
    kind = (meta or {}).get("intensity", "linear") or "linear"
    return kind if kind in INTENSITY_KINDS else "linear"


def to_log(x: np.ndarray, kind: str) -> np.ndarray:
    """A log-intensity image: speckle becomes additive and edges scale-free."""
    if kind == "log8":
        return x.astype(np.float32, copy=False)  # already logarithmic
    floor = np.float32(max(float(np.max(x)) * 1e-4, 1e-6))
    return np.log(np.maximum(x, floor)).astype(np.float32)


def depth_spacing_um(meta: dict | None, default: float = 3.9) -> float:
    sp = ((meta or {}).get("spacing_mm") or {}).get("depth") or 0
    return float(sp) * 1000 if sp and sp > 0 else default


def dp_band(cost: np.ndarray, ref: np.ndarray, max_jump: int, penalty: float) -> np.ndarray:
    """Minimum-cost left-to-right path through a band, for every B-scan at once.

    cost: (nb, B, nx), cost[b, o, x] is the cost of the boundary at row ref[b, x] + o.
    ref: (nb, nx) int, the band's top row per A-scan.
    Between neighbouring A-scans the row may change by at most ``max_jump``
    at ``penalty`` per pixel. Returns the chosen offsets o, (nb, nx) int.
    """
    nb, B, nx = cost.shape
    ref = np.asarray(ref, dtype=np.int64)
    jumps = np.arange(-max_jump, max_jump + 1)
    jump_cost = (penalty * np.abs(jumps)).astype(np.float32)
    dref = np.diff(ref, axis=1)  # (nb, nx-1)
    pad = max_jump + (int(np.max(np.abs(dref))) if nx > 1 else 0)
    big = np.float32(1e9)
    cost_t = np.ascontiguousarray(np.moveaxis(cost, 2, 0), dtype=np.float32)  # (nx, nb, B)
    # hist[x] holds the accumulated cost at column x, padded so that shifted windows stay inside
    hist = np.full((nx, nb, B + 2 * pad), big, dtype=np.float32)
    hist[0, :, pad : pad + B] = cost_t[0]
    bi = np.arange(nb)
    jc3 = jump_cost[None, :, None]
    # previous offset o' = o + dref - jump (row_cur - row_prev = jump):
    # window start pad + dref - jump
    starts = pad + dref[:, :, None] - jumps[None, None, :]  # (nb, nx-1, J)
    windows = np.lib.stride_tricks.sliding_window_view(
        hist, B, axis=2
    )  # (nx, nb, 2*pad+1, B), a view
    for x in range(1, nx):
        cand = windows[x - 1][bi[:, None], starts[:, x - 1]]  # (nb, J, B) copy
        cand += jc3
        hist[x, :, pad : pad + B] = np.minimum.reduce(cand, axis=1) + cost_t[x]
    # backtrack: only the chosen state per B-scan needs its best predecessor
    path = np.empty((nb, nx), dtype=np.int64)
    path[:, -1] = np.argmin(hist[-1, :, pad : pad + B], axis=1)
    for x in range(nx - 1, 0, -1):
        prev = path[:, x][:, None] + dref[:, x - 1][:, None] - jumps[None, :] + pad  # (nb, J)
        k = np.argmin(hist[x - 1][bi[:, None], prev] + jump_cost[None, :], axis=1)
        path[:, x - 1] = path[:, x] + dref[:, x - 1] - jumps[k]
    return np.clip(path, 0, B - 1)


def _gather(vol: np.ndarray, ref: np.ndarray, B: int) -> np.ndarray:
    nz = vol.shape[1]
    idx = np.clip(ref[:, None, :] + np.arange(B)[None, :, None], 0, nz - 1)
    return np.take_along_axis(vol, idx, axis=1)


def _subpixel(g: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Parabolic vertex offset (-0.5..0.5) of g (nb, B, nx) around the chosen offsets o (nb, nx)."""
    B = g.shape[1]
    om = np.clip(o - 1, 0, B - 1)
    op = np.clip(o + 1, 0, B - 1)
    g0 = np.take_along_axis(g, o[:, None, :], 1)[:, 0]
    gm = np.take_along_axis(g, om[:, None, :], 1)[:, 0]
    gp = np.take_along_axis(g, op[:, None, :], 1)[:, 0]
    den = gm - 2 * g0 + gp
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(den < 0, 0.5 * (gm - gp) / den, 0.0)
    return np.clip(np.nan_to_num(d), -0.5, 0.5)


@dataclass
class Segmentation:
    ilm: np.ndarray  # (nb, nx) float rows
    bm: np.ndarray  # (nb, nx) float rows
    ilm_strength: np.ndarray  # (nb, nx) edge strength (log-intensity step) at the ILM
    bm_strength: np.ndarray  # (nb, nx) at BM
    confident: np.ndarray  # (nb, nx) bool
    ilm_jumps: np.ndarray  # (nb, nx-1) |delta| between neighbouring A-scans
    bm_jumps: np.ndarray


SEGMENT_DEFAULTS = {
    "max_retina_um": 800.0,
    "min_retina_um": 60.0,
    "jump_px": 5,
    "jump_penalty": 0.5,
    "confidence_ratio": 0.3,
    "lateral_sigma_px": 4.0,
}

_cache: dict = {}


def segment_cached(
    vol: np.ndarray, meta: dict | None = None, params: dict | None = None
) -> Segmentation:
    """:func:`segment`, remembering the last result in this process.

    Several algorithms (layers, signal, motion, centering) need the same
    boundaries; when they run in one process on the same volume (``qmroct kqi``,
    the benchmark, an in-process workflow job) the segmentation is computed once.
    The key is the CRC-32 of the voxel bytes and their exact float64 sum (~25 ms
    for a 49 x 496 x 512 volume, half the cost of SHA-1) plus the shape and
    everything segment() reads, so a different volume or setting does not get
    a stale result. Set QMROCT_SEGMENT_CACHE=0 to disable.
    """
    import os
    import zlib

    if os.environ.get("QMROCT_SEGMENT_CACHE", "1") == "0":
        return segment(vol, meta, params)
    p = {k: (params or {}).get(k, v) for k, v in SEGMENT_DEFAULTS.items()}
    data = np.ascontiguousarray(vol)
    key = (
        zlib.crc32(memoryview(data).cast("B")),
        float(data.sum(dtype=np.float64)),
        data.shape,
        str(data.dtype),
        intensity_kind(meta),
        depth_spacing_um(meta),
        tuple(sorted(p.items())),
    )
    if key not in _cache:
        _cache.clear()
        _cache[key] = _segment_shared(key, data, meta, p)
    return _cache[key]


# Set by the workflow's compute step to the staged scan's folder (qmroct.compute): there
# the algorithms of a session, each in its own process, share one segmentation per scan.
SEGMENT_DIR_ENV = "QMROCT_SEGMENT_DIR"


def _segment_shared(key: tuple, data: np.ndarray, meta: dict | None, p: dict) -> Segmentation:
    """:func:`segment`, read from / written to a file in ``$QMROCT_SEGMENT_DIR`` when set.

    The file name hashes the in-process key and this file's own bytes: an algorithm pinned
    to an older version (its own copy of this file, served from git history) never reads
    boundaries computed by other code. A lock makes a second process wait for the first
    rather than compute the same boundaries beside it (the lock dies with its process, so
    an algorithm killed on its time limit never blocks the others).
    """
    import fcntl
    import hashlib
    import os
    from pathlib import Path

    folder = os.environ.get(SEGMENT_DIR_ENV)
    if not folder or not Path(folder).is_dir():
        return segment(data, meta, p)
    digest = hashlib.sha256(repr(key).encode() + Path(__file__).read_bytes()).hexdigest()[:32]
    path = Path(folder) / f"octseg-{digest}.npz"
    try:
        lock = open(path.with_suffix(".lock"), "w")
    except OSError:  # a folder this process may not write to: sharing is an optimisation only
        return segment(data, meta, p)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as saved:
                    return Segmentation(**{name: saved[name] for name in saved.files})
            except (OSError, ValueError, TypeError, KeyError):
                pass  # unreadable or from another layout: compute it again
        seg = segment(data, meta, p)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        try:
            np.savez(tmp, **vars(seg))
            os.replace(tmp, path)
        except OSError:  # disk full, say: the result stands, the next job computes its own
            tmp.unlink(missing_ok=True)
        return seg


def _coarse_factor(nx: int) -> int:
    return max(1, nx // 128)


def segment(vol: np.ndarray, meta: dict | None = None, params: dict | None = None) -> Segmentation:
    """ILM and BM per A-scan. ``vol`` as returned by :func:`prepare`."""
    p = {**SEGMENT_DEFAULTS, **(params or {})}
    kind = intensity_kind(meta)
    nb, nz, nx = vol.shape
    dz_um = depth_spacing_um(meta)
    max_ret = int(round(p["max_retina_um"] / dz_um))
    min_ret = max(4, int(round(p["min_retina_um"] / dz_um)))

    # ---- coarse pass: lateral block average, log, smooth
    f = _coarse_factor(nx)
    nxc = nx // f
    coarse = vol[:, :, 0 : nxc * f : f].copy()  # block mean over f A-scans (strided sums: fast)
    for k in range(1, f):
        coarse += vol[:, :, k : nxc * f : f]
    coarse *= np.float32(1.0 / f)
    lc = to_log(coarse, kind)
    lc = gaussian_filter1d(lc, max(0.7, 8.0 / dz_um), axis=1)
    if nxc > 3:
        lc = gaussian_filter1d(lc, 1.0, axis=2)
    lo = np.percentile(lc, 20, axis=(1, 2))[:, None, None]
    hi = np.percentile(lc, 99.5, axis=(1, 2))[:, None, None]
    above = lc > lo + 0.35 * (hi - lo)
    has = above.any(axis=1)
    ilm_c = np.where(has, np.argmax(above, axis=1), nz // 3).astype(np.int64)  # (nb, nxc)
    if nxc >= 5:
        ilm_c = median_filter(ilm_c, size=(1, 5), mode="nearest")
    # RPE = brightest path below the ILM: DP through the smoothed log intensity
    top_rpe = np.clip(ilm_c + min_ret // 2, 0, nz - 1)
    B_rpe = max(4, min(max_ret, nz))
    band = _gather(lc, top_rpe, B_rpe)
    valid = (top_rpe[:, None, :] + np.arange(B_rpe)[None, :, None]) < nz
    scale = np.maximum(hi - lo, 1e-6)
    cost = np.where(valid, (hi - band) / scale, 10.0).astype(np.float32)
    o = dp_band(cost, top_rpe, max_jump=3, penalty=0.05)
    rpe_c = top_rpe + o

    # ---- fine pass: bands at full lateral resolution around the coarse lines
    sz_fine = max(0.5, 4.0 / dz_um)
    xs = (np.arange(nx) + 0.5) / f - 0.5
    xc = np.arange(nxc)

    def upsample(line: np.ndarray) -> np.ndarray:
        if nxc == 1:
            return np.repeat(line, nx, axis=1).astype(float)
        return np.stack([np.interp(xs, xc, row) for row in line])

    def smooth_ref(line: np.ndarray) -> np.ndarray:
        return np.rint(
            gaussian_filter1d(upsample(line.astype(float)), 4.0, axis=1, mode="nearest")
        ).astype(np.int64)

    def fine(ref: np.ndarray, B: int, sign: float) -> tuple[np.ndarray, np.ndarray]:
        raw = _gather(vol, ref, B)
        band = gaussian_filter1d(to_log(raw, kind), sz_fine, axis=1)
        inside = ref[:, None, :] + np.arange(B)[None, :, None]
        edge_ok = (inside >= 1) & (inside < nz - 1)

        def grad(img):
            g = np.zeros_like(img)
            g[:, 1:-1] = sign * (img[:, 2:] - img[:, :-2]) * 0.5
            return np.where(edge_ok, g, 0.0).astype(np.float32)

        # the path follows a laterally well-smoothed gradient; the edge strength used for
        # confidence comes from a lightly smoothed one, so that narrow shadows are not bridged
        g = grad(gaussian_filter1d(band, float(p["lateral_sigma_px"]), axis=2) if nx > 3 else band)
        g_local = grad(gaussian_filter1d(band, 1.5, axis=2) if nx > 3 else band)
        gref = np.maximum(np.percentile(np.max(g, axis=1), 90, axis=1), 1e-6)[:, None, None]
        cost = (1.0 - np.clip(g / gref, -1.0, 1.0)).astype(np.float32)
        o = dp_band(cost, ref, max_jump=int(p["jump_px"]), penalty=float(p["jump_penalty"]))
        # sub-pixel position: the steepest *linear*-intensity edge within +-2 px of the path.
        # (The log gradient that guides the path peaks on the dark side of a blurred step:
        # about half a pixel above the ILM on our synthetic data.)
        lin_band = raw
        if kind == "log8":
            lin_band = np.power(
                np.float32(10.0), lin_band * np.float32(LOG8_DYNAMIC_RANGE_DB / 2550.0)
            )
        lin_band = gaussian_filter1d(lin_band, sz_fine, axis=1)
        if nx > 3:
            lin_band = gaussian_filter1d(lin_band, float(p["lateral_sigma_px"]), axis=2)
        gl = grad(lin_band)
        near_l = np.stack(
            [
                np.take_along_axis(gl, np.clip(o + d, 0, B - 1)[:, None, :], 1)[:, 0]
                for d in (-2, -1, 0, 1, 2)
            ]
        )
        o_lin = np.clip(o + np.argmax(near_l, axis=0) - 2, 0, B - 1)
        pos = ref + o_lin + 0.5 + _subpixel(gl, o_lin)
        # strongest local edge within +-1 px of the path (step across 2 px)
        near = np.stack(
            [
                np.take_along_axis(g_local, np.clip(o + d, 0, B - 1)[:, None, :], 1)[:, 0]
                for d in (-1, 0, 1)
            ]
        )
        strength = near.max(axis=0) * 2.0
        return pos, strength

    # band sizes in micrometres, so that coarse (small test) and fine axial sampling behave alike
    B_ilm = 2 * max(3, int(round(50.0 / dz_um)))
    ilm_ref = smooth_ref(ilm_c) - B_ilm // 2
    ilm, ilm_s = fine(ilm_ref, B_ilm, +1.0)
    B_bm = max(6, int(round(100.0 / dz_um)))
    bm_ref = smooth_ref(rpe_c) - max(2, int(round(25.0 / dz_um)))
    # BM is never above the ILM: keep the band below it
    bm_ref = np.maximum(bm_ref, np.floor(ilm).astype(np.int64) + 2)
    bm, bm_s = fine(bm_ref, B_bm, -1.0)

    typical_ilm = np.median(ilm_s)
    typical_bm = np.median(bm_s)
    r = float(p["confidence_ratio"])
    confident = (
        (ilm_s > r * max(typical_ilm, 1e-6))
        & (bm_s > r * max(typical_bm, 1e-6))
        & (bm - ilm >= min_ret / 2)
    )
    ilm_j = np.abs(np.diff(ilm, axis=1))
    bm_j = np.abs(np.diff(bm, axis=1))
    return Segmentation(
        ilm=ilm,
        bm=bm,
        ilm_strength=ilm_s,
        bm_strength=bm_s,
        confident=confident,
        ilm_jumps=ilm_j,
        bm_jumps=bm_j,
    )
