"""qmroct.fileio: the one atomic writer and timestamp every module uses."""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from qmroct import fileio

EXTENDED_OFFSET = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")


def test_now_iso_has_an_extended_utc_offset():
    stamp = fileio.now_iso()
    # +01:00, never +0100: xs:dateTime (XNAT provenance, History) accepts only the former
    assert EXTENDED_OFFSET.fullmatch(stamp), stamp
    assert datetime.fromisoformat(stamp).utcoffset() is not None


def test_json_is_strict_and_nan_becomes_null(tmp_path):
    target = tmp_path / "deep" / "result.json"  # parents are made
    fileio.write_json_atomic(
        target,
        {
            "nan": math.nan,
            "inf": [math.inf],
            "np": np.float32(1.5),
            "i": np.int64(3),
            "arr": np.array([1.0, np.nan]),
            "path": Path("/x"),
        },
    )
    text = target.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "nan": None,
        "inf": [None],
        "np": 1.5,
        "i": 3,
        "arr": [1.0, None],
        "path": "/x",
    }


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "r.json"
    fileio.write_json_atomic(target, {"v": 1})
    with pytest.raises(TypeError):
        fileio.write_json_atomic(target, {"v": object()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_make_parents_false_refuses_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        fileio.write_bytes_atomic(tmp_path / "gone" / "f", b"x", make_parents=False)
    assert not (tmp_path / "gone").exists()


def test_two_writers_never_share_a_temporary_name(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", spy)
    for _ in range(2):
        fileio.write_text_atomic(tmp_path / "f", "x")
    assert len(set(seen)) == 2 and all(n.startswith(".f.") for n in seen)


def test_the_directory_archive_stamps_history_in_the_same_form(tmp_path):
    from qmroct.archive import directory

    # the directory archive used strftime('%z') (+0100) before it took the shared helper
    assert directory.now_iso is fileio.now_iso
