"""Maximum tissue contrast index (mTCI), Huang et al., IOVS 2012;53:2133 (doi 10.1167/iovs.11-8755).

Per B-scan, from the intensity histogram (200 equal-width bins from the
B-scan's minimum to its maximum) and the empirical CDF F:

* N1  = centre of the modal bin (the noise peak);
* N1s = centre of the first bin whose count reaches 95 % of the peak;
  cN1s = F(N1s);
* cN2 = 0.999 * cN1s / cN1B, with the device constant cN1B (the share of
  the histogram that is noise on that device: Cirrus 0.40, RTVue 0.55,
  Spectralis 0.45, 3D-OCT-1000 0.50);
* N2 = F^-1(cN2) (the noise/tissue separation), N3 = F^-1(0.999) (saturation);
* mTCI = (N3 - N1) / (N2 - N1).

F^-1(c) is the smallest intensity x with F(x) >= c. When cN2 > 1 the index is
undefined for that B-scan (null, with a note). The volume value is the median
over B-scans; mtci_min is the worst B-scan.
"""

from __future__ import annotations

import math

import numpy as np

from qmroct.algorithms.shared import load_shared

DEVICE_CN1B = {"cirrus": 0.40, "rtvue": 0.55, "spectralis": 0.45, "3d-oct-1000": 0.50}
DEVICE_ALIASES = {
    "zeiss": "cirrus",
    "optovue": "rtvue",
    "heidelberg": "spectralis",
    "topcon": "3d-oct-1000",
    "3d oct-1000": "3d-oct-1000",
    "3d-oct": "3d-oct-1000",
}
DEFAULT_CN1B = 0.45


def device_constant(device: str) -> tuple[float | None, str | None]:
    """cN1B for a device string (case-insensitive substring match); (None, None) if unknown."""
    d = (device or "").lower()
    for key, value in DEVICE_CN1B.items():
        if key in d:
            return value, key
    for alias, key in DEVICE_ALIASES.items():
        if alias in d:
            return DEVICE_CN1B[key], key
    return None, None


def mtci_bscan(values: np.ndarray, cn1b: float, bins: int = 200) -> tuple[float | None, dict]:
    """mTCI of one B-scan's intensities (any shape; non-finite values ignored)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return None, {"reason": "no finite intensity"}
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return None, {"reason": "constant B-scan"}
    counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    i1 = int(np.argmax(counts))
    n1 = centres[i1]
    i1s = int(np.argmax(counts >= 0.95 * counts[i1]))
    n1s = centres[i1s]
    c_n1s = np.count_nonzero(x <= n1s) / n
    c_n2 = 0.999 * c_n1s / cn1b
    detail = {"N1": n1, "N1s": n1s, "cN1s": c_n1s, "cN2": c_n2}
    if c_n2 > 1:
        return None, {**detail, "reason": f"cN2 = {c_n2:.3f} > 1 (noise dominates the histogram)"}
    k2 = max(0, math.ceil(c_n2 * n - 1e-9) - 1)
    k3 = max(0, math.ceil(0.999 * n - 1e-9) - 1)
    part = np.partition(x, [k2, k3])
    n2, n3 = float(part[k2]), float(part[k3])
    detail.update(N2=n2, N3=n3)
    if n2 <= n1:
        return None, {**detail, "reason": "N2 <= N1 (no tissue above the noise peak)"}
    return (n3 - n1) / (n2 - n1), detail


def compute(volume, meta, params, workdir):
    octseg = load_shared("octseg", __file__)
    vol, notes = octseg.prepare(volume, meta)
    p = {"cN1B": None, "bins": 200, **(params or {})}
    if p["cN1B"] is not None:
        cn1b, source = float(p["cN1B"]), "params"
    else:
        cn1b, source = device_constant((meta or {}).get("device", ""))
        if cn1b is None:
            cn1b, source = DEFAULT_CN1B, "default"
            notes.append(
                f"device {(meta or {}).get('device', '')!r} has no published cN1B; "
                f"used {DEFAULT_CN1B} (Spectralis)"
            )
    kind = octseg.intensity_kind(meta)
    if kind != "linear":
        notes.append(
            f"mTCI computed on {kind} intensities as stored; compare only with the same export type"
        )
    per = []
    reasons = set()
    for b in range(vol.shape[0]):
        value, detail = mtci_bscan(vol[b], cn1b, int(p["bins"]))
        per.append(value)
        if value is None:
            reasons.add(detail["reason"].split(" = ")[0])
    if reasons:
        notes.append(
            f"mTCI undefined for {sum(v is None for v in per)} B-scan(s): "
            + "; ".join(sorted(reasons))
        )
    defined = [v for v in per if v is not None]
    return {
        "kqis": {
            "mtci": {
                "value": float(np.median(defined)) if defined else None,
                "unit": "1",
                "per_bscan": per,
            },
            "mtci_min": {"value": float(min(defined)) if defined else None, "unit": "1"},
        },
        "notes": notes,
        "info": {"cN1B": cn1b, "cN1B_source": source},
    }
