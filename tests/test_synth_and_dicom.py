"""The synthetic generator, the OPT DICOM writer/reader and the demo archive."""

from __future__ import annotations

import hashlib

import numpy as np
import pydicom
import pytest

from qmroct.scanio import ScanError, read_scan
from qmroct.scanio.dicom import OPT_SOP_CLASS, write_opt_dicom
from qmroct.synth import SynthParams, fovea_offset_mm, generate_volume, to_log8
from qmroct.synth.demo import build_demo_archive

SMALL = dict(n_bscans=4, depth=160, width=96, spacing_mm=(0.12, 0.0121, 0.0117))


def test_generator_is_deterministic_and_consistent():
    a, ta = generate_volume(SynthParams(**SMALL, seed=3))
    b, tb = generate_volume(SynthParams(**SMALL, seed=3))
    assert np.array_equal(a, b) and np.array_equal(ta.ilm, tb.ilm)
    assert a.shape == (4, 160, 96) and a.dtype == np.float32
    assert np.all(ta.bm > ta.ilm + 5)
    # The vitreous above the ILM holds only floor + noise: its std is the truth.
    top = a[:, : int(ta.ilm.min()) - 8, :]
    assert abs(top.std() / ta.noise_sigma - 1) < 0.05
    assert abs(top.mean() - ta.noise_floor) < 0.05 * ta.noise_floor


def test_defects_leave_their_marks():
    clean, _ = generate_volume(SynthParams(**SMALL, seed=1))
    noisy, tn = generate_volume(SynthParams(**SMALL, seed=1, defects=("high_noise",)))
    assert tn.noise_sigma == pytest.approx(4 * 0.02 * 4000)
    shadow, ts = generate_volume(SynthParams(**SMALL, seed=1, defects=("shadow",)))
    assert ts.shadow_mask.any()
    b, cols = np.nonzero(ts.shadow_mask)
    rows = slice(int(ts.ilm.max()) + 6, int(ts.bm.min()))
    floor = ts.noise_floor
    assert shadow[b[0], rows, cols[0]].mean() - floor < 0.3 * (
        clean[b[0], rows, cols[0]].mean() - floor
    )
    moved, tm = generate_volume(SynthParams(**SMALL, seed=2, defects=("motion",)))
    # Bruch's membrane is flat (the pit comes from thinning inner layers), so it moves only
    # with the eye.
    assert np.allclose(tm.bm - tm.bm[0], tm.axial_shift[:, None])
    assert np.abs(np.diff(tm.axial_shift)).max() >= 4
    wide = dict(SMALL, n_bscans=9, width=256)
    _, centred = generate_volume(SynthParams(**wide, seed=2))
    _, tc = generate_volume(SynthParams(**wide, seed=2, defects=("decentered",)))
    assert fovea_offset_mm(centred) == 0 and fovea_offset_mm(tc) > 0.3
    log8 = to_log8(clean)
    assert log8.dtype == np.uint8 and log8.max() == 255


def test_unknown_defect_is_an_error():
    with pytest.raises(ValueError, match="unknown defect"):
        SynthParams(defects=("blur",))


def test_opt_dicom_round_trip(tmp_path):
    volume, truth = generate_volume(SynthParams(**SMALL, seed=5))
    path = tmp_path / "scan.dcm"
    write_opt_dicom(
        path, volume, spacing_mm=truth.spacing_mm, patient_id="P1", study_id="S1", series_number=1
    )
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == OPT_SOP_CLASS and ds.Modality == "OPT" and int(ds.NumberOfFrames) == 4
    back = read_scan(path)
    assert np.array_equal(back.data, np.round(volume))
    assert back.spacing_mm == pytest.approx(truth.spacing_mm)
    from oct_converter.readers import Dicom

    oct_volume = np.asarray(Dicom(str(path)).read_oct_volume().volume)
    assert oct_volume.shape == (4, 160, 96)


def test_reader_refuses_bad_files(tmp_path):
    volume, truth = generate_volume(SynthParams(**SMALL, seed=5))
    path = tmp_path / "scan.dcm"
    write_opt_dicom(
        path, volume, spacing_mm=truth.spacing_mm, patient_id="P1", study_id="S1", series_number=1
    )
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ScanError, match="corrupt"):
        read_scan(truncated)
    ds = pydicom.dcmread(path)
    ds.Modality, ds.SOPClassUID = "MR", "1.2.840.10008.5.1.4.1.1.4"
    ds.save_as(tmp_path / "mr.dcm")
    with pytest.raises(ScanError, match="not an OCT scan"):
        read_scan(tmp_path / "mr.dcm")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ScanError, match="unrecognised format"):
        read_scan(tmp_path / "notes.txt")


def test_demo_archive_is_deterministic(tmp_path):
    def digest(root):
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
        return h.hexdigest()

    build_demo_archive(tmp_path / "a", sessions=2, seed=1, shape=(3, 128, 64))
    build_demo_archive(tmp_path / "b", sessions=2, seed=1, shape=(3, 128, 64))
    assert digest(tmp_path / "a/archive") == digest(tmp_path / "b/archive")
    assert sorted(p.name for p in (tmp_path / "a/truth/DEMO").iterdir()) == [
        "SUBJ001_V1",
        "SUBJ001_V2",
    ]
    assert not list((tmp_path / "a/archive").rglob("*.npz")), (
        "ground truth must stay outside the archive"
    )


def test_oct_converter_rescaled_dicoms_are_flagged(tmp_path):
    """oct-converter rescales to 0..100: the reader must say so (noise KQIs are meaningless
    there)."""
    from oct_converter.dicom.dicom import write_opt_dicom as oct_converter_write
    from oct_converter.dicom.metadata import (
        DicomMetadata,
        ImageGeometry,
        ManufacturerMeta,
        OCTImageParams,
        PatientMeta,
        SeriesMeta,
    )

    volume, truth = generate_volume(SynthParams(**SMALL, seed=1))
    meta = DicomMetadata(
        PatientMeta(patient_id="P"),
        SeriesMeta(study_id="S", series_id="1"),
        ManufacturerMeta(manufacturer="X"),
        ImageGeometry(pixel_spacing=[0.0121, 0.0117], slice_thickness=0.12),
        OCTImageParams(),
    )
    path = oct_converter_write(meta, list(volume), tmp_path / "converted.dcm")
    assert read_scan(path).intensity == "rescaled100"
    ours = tmp_path / "ours.dcm"
    write_opt_dicom(
        ours, volume, spacing_mm=truth.spacing_mm, patient_id="P", study_id="S", series_number=1
    )
    assert read_scan(ours).intensity == "linear"


def test_demo_archive_extends_by_session_index_and_never_overwrites(tmp_path):
    first = build_demo_archive(
        tmp_path, sessions=2, seed=1, shape=(3, 128, 64), scans_per_session=1
    )
    assert first == ["SUBJ001_V1", "SUBJ001_V2"]
    more = build_demo_archive(
        tmp_path, sessions=1, seed=1, shape=(3, 128, 64), scans_per_session=1, start=3
    )
    assert more == ["SUBJ002_V1"]
    with pytest.raises(ValueError, match="already has session.*SUBJ001_V2"):
        build_demo_archive(
            tmp_path, sessions=2, seed=1, shape=(3, 128, 64), scans_per_session=1, start=2
        )
