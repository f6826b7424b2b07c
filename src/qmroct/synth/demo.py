"""Build a demo archive: synthetic sessions laid out like XNAT, truth beside it.

``build_demo_archive(out, sessions=8, seed=0)`` writes

    out/archive/<project>/...   the directory archive (see qmroct.archive.directory)
    out/truth/<project>/<session>/<scan>.json|.npz   ground truth, outside the archive

Everything is deterministic in (sessions, seed, shape), so two builds are
byte-identical and tests can rely on what each scan contains.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from qmroct.archive.directory import DirectoryArchive
from qmroct.scanio.dicom import write_opt_dicom
from qmroct.synth.generator import SynthParams, generate_volume

# How often each defect shows up in the demo: most scans are fine, as in a real archive.
DEFECT_MENU: tuple[tuple[str, ...], ...] = (
    (),
    (),
    (),
    ("high_noise",),
    ("shadow",),
    ("motion",),
    ("decentered",),
    ("tilt",),
    ("motion", "high_noise"),
)


def build_demo_archive(
    out: Path,
    sessions: int = 8,
    seed: int = 0,
    project: str = "DEMO",
    shape: tuple[int, int, int] = (49, 496, 512),
    scans_per_session: int = 2,
    start: int = 1,
) -> list[str]:
    """Create (or extend) a demo archive; returns the labels of the sessions written.

    ``start`` is the running index of the first session written (1-based, two visits per
    subject: index k is subject ``(k + 1) // 2``, visit ``V1`` or ``V2``), so an archive can be
    extended with new sessions without touching the existing ones. An index whose session
    already exists is refused: extending must never overwrite a session (and its assessors).
    """
    out = Path(out)
    if start < 1:
        raise ValueError(f"start must be 1 or more (the index of the first session), got {start}")
    archive = DirectoryArchive(out / "archive")
    existing = [
        k
        for k in range(start, start + sessions)
        if (
            out / "archive" / project / "subjects" / _subject(k) / "experiments" / _label(k)
        ).exists()
    ]
    if existing:
        taken = ", ".join(_label(k) for k in existing)
        raise ValueError(
            f"{out / 'archive'} already has session(s) {taken}; choose --start past the last "
            f"session index in use (session index k is {_label(1)} for k=1, {_label(3)} for k=3)"
        )
    rng = np.random.default_rng(seed)
    labels = []
    # Draw every session's parameters up front so session k is the same whatever ``sessions`` is.
    for k in range(start, start + sessions):
        session_rng = np.random.default_rng([seed, k])
        subject, label = _subject(k), _label(k)
        scans = []
        for s in range(scans_per_session):
            laterality = ("OD", "OS")[s % 2]
            defects = DEFECT_MENU[int(session_rng.integers(len(DEFECT_MENU)))]
            params = SynthParams(
                n_bscans=shape[0],
                depth=shape[1],
                width=shape[2],
                noise_sigma=float(session_rng.uniform(0.008, 0.03)),
                looks=float(session_rng.choice([1.0, 2.0, 4.0])),
                defects=defects,
                seed=int(session_rng.integers(2**31)),
                laterality=laterality,
            )
            params = _fit_depth(params)
            volume, truth = generate_volume(params)
            scan_id = str(s + 1)
            filename = f"{label}_{scan_id}.dcm"
            dicom_path = out / "tmp" / filename
            write_opt_dicom(
                dicom_path,
                volume,
                spacing_mm=truth.spacing_mm,
                patient_id=subject,
                study_id=label,
                series_number=s + 1,
                laterality=laterality,
            )
            scans.append(
                {
                    "id": scan_id,
                    "type": "OCT",
                    "series_description": f"Macular Cube {laterality}",
                    "files": [dicom_path],
                }
            )
            truth_dir = out / "truth" / project / label
            truth_dir.mkdir(parents=True, exist_ok=True)
            (truth_dir / f"{scan_id}.json").write_text(
                json.dumps({"params": _params_json(params), **truth.scalars()}, indent=1)
            )
            np.savez_compressed(truth_dir / f"{scan_id}.npz", **truth.arrays())
        archive.add_session(project, subject, label, scans, move=True)
        labels.append(label)
    tmp = out / "tmp"
    if tmp.exists() and not any(tmp.iterdir()):
        tmp.rmdir()
    del rng
    return labels


def _subject(k: int) -> str:
    return f"SUBJ{(k + 1) // 2:03d}"


def _label(k: int) -> str:
    """Session index k (1-based) -> label: two visits per subject."""
    return f"{_subject(k)}_V{(k + 1) % 2 + 1}"


def _fit_depth(params: SynthParams) -> SynthParams:
    """Small test volumes keep the retina in frame by coarsening the axial spacing."""
    if params.depth >= 400:
        return params
    dz = 0.0039 * 496 / params.depth
    return replace(params, spacing_mm=(params.spacing_mm[0], dz, params.spacing_mm[2]))


def _params_json(params: SynthParams) -> dict:
    data = params.__dict__.copy()
    data["defects"] = list(params.defects)
    data["spacing_mm"] = list(params.spacing_mm)
    return data
