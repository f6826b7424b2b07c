"""Synthetic retinal OCT volumes with known ground truth.

A volume is built the way an SD-OCT device sees a retina: a stack of
reflective layers under the inner limiting membrane (ILM) down to Bruch's
membrane (BM), a foveal pit, a choroid fading below, Beer-Lambert attenuation,
an axial point-spread blur, multiplicative speckle and additive detector noise
on a constant noise floor. Defects seen in real archives can be injected:
high noise, shadowing (vessels, floaters), axial motion between B-scans, a
decentred fovea and tilt. Every injected quantity is returned as ground truth,
so algorithms can be validated against it.

Axes everywhere: (bscan, depth, ascan) = (n_bscans, rows, columns).
Intensities are in stored units (what a 16-bit device export holds): the
linear reflectivity times ``SynthParams.scale`` plus the noise floor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter1d

DEFECTS = ("high_noise", "shadow", "motion", "decentered", "tilt")

# Layer thicknesses in micrometres (NFL, GCL+IPL, INL, OPL, ONL, IS/OS, RPE) and
# their linear reflectivity relative to the RPE. The inner four thin out at the
# fovea, which is what makes the pit. Values are typical of published normative
# SD-OCT data; only their order matters for the algorithms.
LAYER_THICKNESS_UM = np.array([35.0, 75.0, 35.0, 30.0, 85.0, 22.0, 22.0])
LAYER_REFLECTIVITY = np.array([0.55, 0.32, 0.12, 0.28, 0.07, 0.75, 1.0])
INNER_LAYERS = 4
CHOROID_REFLECTIVITY = 0.35
CHOROID_DECAY_UM = 180.0


@dataclass(frozen=True)
class SynthParams:
    n_bscans: int = 49
    depth: int = 496
    width: int = 512
    spacing_mm: tuple[float, float, float] = (0.12, 0.0039, 0.0117)  # bscan, depth, ascan
    noise_sigma: float = 0.02  # additive noise, linear reflectivity units (RPE = 1)
    noise_floor: float = 0.25
    looks: float = 2.0  # speckle: Gamma(L, 1/L); L = 1 is fully developed speckle
    scale: float = 4000.0  # stored units per unit of linear reflectivity
    defects: tuple[str, ...] = ()
    seed: int = 0
    ilm_depth_mm: float = 0.55  # ILM depth below the top of the image, away from the fovea
    fovea_radius_mm: float = 0.55
    attenuation_per_mm: float = 1.2
    psf_sigma_px: float = 1.2
    device: str = "Synthetic SD-OCT"
    laterality: str = "OD"

    def __post_init__(self) -> None:
        unknown = set(self.defects) - set(DEFECTS)
        if unknown:
            raise ValueError(f"unknown defect(s) {sorted(unknown)}; known: {', '.join(DEFECTS)}")
        if min(self.n_bscans, self.depth, self.width) < 1:
            raise ValueError("volume dimensions must be positive")


@dataclass
class GroundTruth:
    """What an algorithm should find, in pixels and stored units."""

    noise_sigma: float  # stored units
    noise_floor: float  # stored units
    ilm: np.ndarray  # (n_bscans, width) float px
    bm: np.ndarray  # (n_bscans, width) float px (lower edge of the RPE)
    axial_shift: np.ndarray  # (n_bscans,) px, relative to B-scan 0
    shadow_mask: np.ndarray  # (n_bscans, width) bool: A-scans with lost signal
    fovea_bscan: float
    fovea_ascan: float
    tilt_px_per_ascan: float
    spacing_mm: dict[str, float]
    defects: list[str] = field(default_factory=list)
    shadow_factor: float = 1.0

    def scalars(self) -> dict:
        """Everything but the arrays, for a JSON sidecar."""
        data = asdict(self)
        for name in ("ilm", "bm", "axial_shift", "shadow_mask"):
            data.pop(name)
        data["fovea_offset_mm"] = fovea_offset_mm(self)
        data["max_axial_shift_px"] = (
            float(np.max(np.abs(np.diff(self.axial_shift)))) if len(self.axial_shift) > 1 else 0.0
        )
        data["shadow_fraction"] = float(self.shadow_mask.mean())
        return data

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "ilm": self.ilm,
            "bm": self.bm,
            "axial_shift": self.axial_shift,
            "shadow_mask": self.shadow_mask,
        }


def fovea_offset_mm(truth: GroundTruth) -> float:
    """Distance of the fovea from the scan centre in millimetres."""
    n_bscans, width = truth.ilm.shape
    dy = (truth.fovea_bscan - (n_bscans - 1) / 2) * truth.spacing_mm["bscan"]
    dx = (truth.fovea_ascan - (width - 1) / 2) * truth.spacing_mm["ascan"]
    return float(np.hypot(dx, dy))


def generate_volume(params: SynthParams) -> tuple[np.ndarray, GroundTruth]:
    """Return (volume float32 in stored units, ground truth)."""
    rng = np.random.default_rng(params.seed)
    nb, nz, nx = params.n_bscans, params.depth, params.width
    dy_mm, dz_mm, dx_mm = params.spacing_mm
    defects = set(params.defects)

    # Where the fovea sits: the scan centre, or up to ~1 mm away when decentred.
    fovea_b, fovea_a = (nb - 1) / 2, (nx - 1) / 2
    if "decentered" in defects:
        angle = rng.uniform(0, 2 * np.pi)
        radius_mm = rng.uniform(0.6, 1.0)
        fovea_a += radius_mm * np.cos(angle) / dx_mm
        fovea_b += radius_mm * np.sin(angle) / dy_mm if nb > 1 else 0.0
        fovea_a = float(np.clip(fovea_a, 0.15 * nx, 0.85 * nx))
        fovea_b = float(np.clip(fovea_b, 0, nb - 1))

    tilt = rng.uniform(0.06, 0.1) * rng.choice([-1, 1]) if "tilt" in defects else 0.0

    # Axial motion: the eye moves between B-scans, so whole B-scans shift.
    shift = np.zeros(nb)
    if "motion" in defects and nb > 1:
        n_jumps = max(1, nb // 16)
        for start in rng.choice(np.arange(1, nb), size=min(n_jumps, nb - 1), replace=False):
            shift[start:] += rng.choice([-1, 1]) * rng.uniform(4, 10)
        shift = np.round(shift)  # integer jumps keep the truth exact after resampling

    x_mm = (np.arange(nx) - fovea_a) * dx_mm
    y_mm = (np.arange(nb) - fovea_b) * dy_mm
    r2 = (y_mm[:, None] ** 2 + x_mm[None, :] ** 2) / params.fovea_radius_mm**2
    pit = np.exp(-r2)  # 1 at the foveola, 0 far away; (nb, nx)

    thickness_px = LAYER_THICKNESS_UM / (dz_mm * 1000)
    thick = np.broadcast_to(thickness_px, (nb, nx, len(thickness_px))).copy()
    thick[..., :INNER_LAYERS] *= 1 - 0.92 * pit[..., None]

    # The pit is made by thinning the inner layers, and the ILM drops by what they
    # lost, so the outer retina (and BM) stays flat under the fovea as in a real eye.
    ilm = params.ilm_depth_mm / dz_mm + tilt * (np.arange(nx) - (nx - 1) / 2)[None, :]
    ilm = np.broadcast_to(ilm, (nb, nx)).astype(float) + shift[:, None]
    ilm = ilm + (thickness_px[:INNER_LAYERS].sum() - thick[..., :INNER_LAYERS].sum(axis=-1))
    boundaries = ilm[..., None] + np.concatenate(
        [np.zeros((nb, nx, 1)), np.cumsum(thick, axis=-1)], axis=-1
    )
    bm = boundaries[..., -1]

    top = np.min(ilm) - 5
    bottom = np.max(bm) + 5
    if top < 10 or bottom > nz - 20:
        raise ValueError(
            f"retina does not fit in {nz} rows (rows {top:.0f}..{bottom:.0f}); "
            "increase depth or spacing"
        )

    z = np.arange(nz, dtype=float)[None, :, None] + 0.5  # pixel centres, (1, nz, 1)
    reflect = np.zeros((nb, nz, nx), dtype=np.float32)
    for k, r in enumerate(LAYER_REFLECTIVITY):
        upper = boundaries[:, None, :, k]
        lower = boundaries[:, None, :, k + 1]
        reflect += np.where((z >= upper) & (z < lower), np.float32(r), np.float32(0))
    below = z - bm[:, None, :]
    choroid_decay_px = CHOROID_DECAY_UM / (dz_mm * 1000)
    reflect += np.where(
        below >= 0, CHOROID_REFLECTIVITY * np.exp(-below / choroid_decay_px), 0
    ).astype(np.float32)
    # Beer-Lambert: light is attenuated on its way down through the tissue.
    depth_in_tissue_mm = np.clip(z - ilm[:, None, :], 0, None) * dz_mm
    reflect *= np.exp(-params.attenuation_per_mm * depth_in_tissue_mm).astype(np.float32)
    reflect = gaussian_filter1d(reflect, params.psf_sigma_px, axis=1)
    reflect = gaussian_filter1d(reflect, 0.7, axis=2)

    shadow_mask = np.zeros((nb, nx), dtype=bool)
    shadow_factor = 1.0
    if "shadow" in defects:
        shadow_factor = 0.08
        for b in range(nb):
            if nb > 1 and rng.random() < 0.5:
                continue
            start = int(rng.integers(int(0.1 * nx), int(0.8 * nx)))
            width = int(rng.integers(max(4, nx // 40), max(6, nx // 10)))
            shadow_mask[b, start : start + width] = True
        if not shadow_mask.any():
            shadow_mask[0, nx // 3 : nx // 3 + max(4, nx // 20)] = True
        # A vessel or floater absorbs light: everything below its top loses signal.
        shadow_top = ilm[:, None, :] + 4
        in_shadow = shadow_mask[:, None, :] & (z >= shadow_top)
        reflect = np.where(in_shadow, reflect * shadow_factor, reflect)

    speckle = rng.gamma(params.looks, 1 / params.looks, size=reflect.shape).astype(np.float32)
    sigma = params.noise_sigma * (4.0 if "high_noise" in defects else 1.0)
    noise = rng.normal(0.0, sigma, size=reflect.shape).astype(np.float32)
    volume = (reflect * speckle + params.noise_floor + noise) * params.scale
    np.clip(volume, 0, 65535, out=volume)

    truth = GroundTruth(
        noise_sigma=float(sigma * params.scale),
        noise_floor=float(params.noise_floor * params.scale),
        ilm=ilm.astype(np.float32),
        bm=bm.astype(np.float32),
        axial_shift=shift.astype(np.float32),
        shadow_mask=shadow_mask,
        fovea_bscan=float(fovea_b),
        fovea_ascan=float(fovea_a),
        tilt_px_per_ascan=float(tilt),
        spacing_mm={"bscan": dy_mm, "depth": dz_mm, "ascan": dx_mm},
        defects=sorted(defects),
        shadow_factor=shadow_factor,
    )
    return volume.astype(np.float32), truth


def to_log8(volume: np.ndarray, dynamic_range_db: float = 40.0) -> np.ndarray:
    """Log-compress and quantise to 8 bits, as devices store their exports.

    The top of the window is the 99.9th percentile; ``dynamic_range_db`` below
    it maps to 0. Values outside the window clip.
    """
    db = 10 * np.log10(np.maximum(volume, 1e-6))
    top = np.percentile(db, 99.9)
    scaled = (db - (top - dynamic_range_db)) / dynamic_range_db * 255
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
