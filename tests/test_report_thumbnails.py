"""The report finds a session's thumbnails under its path key, never under its label."""

from __future__ import annotations

import base64

import pandas as pd

from qmroct.paths import path_segment
from qmroct.report import render_report

PNG = base64.b64decode(  # a 1x1 image
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGA"
    "WjR9awAAAABJRU5ErkJggg=="
)


def _tidy(label: str) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "project": "DEMO",
                "subject": "S1",
                "session": label,
                "scan": "1",
                "algorithm": "noise",
                "version": "1.0.0",
                "kqi": "snr_db",
                "value": float("nan"),
                "unit": "dB",
                "status": "failed",
                "error": "algorithm failure: deliberate",
            }
        ]
    )


def test_thumbnail_of_a_session_stored_under_an_encoded_path_key(tmp_path):
    label = "Visite Ü 1"  # a label that is no file name: its path key is encoded
    key = path_segment(label)
    assert key != label
    (tmp_path / "DEMO" / key).mkdir(parents=True)
    (tmp_path / "DEMO" / key / "1.png").write_bytes(PNG)
    page = render_report(_tidy(label), {}, {}, tmp_path)
    assert "(no thumbnail" not in page and "data:image/png;base64," in page


def test_thumbnail_found_by_the_path_key_the_summary_names(tmp_path):
    label = "SUBJ001_V1"  # a duplicated label: discovery chose another key than the default
    (tmp_path / "DEMO" / "SUBJ001_V1.0123abcd").mkdir(parents=True)
    (tmp_path / "DEMO" / "SUBJ001_V1.0123abcd" / "1.png").write_bytes(PNG)
    assert "(no thumbnail" in render_report(_tidy(label), {}, {}, tmp_path)
    page = render_report(
        _tidy(label), {}, {}, tmp_path, path_keys={("DEMO", label): "SUBJ001_V1.0123abcd"}
    )
    assert "(no thumbnail" not in page
