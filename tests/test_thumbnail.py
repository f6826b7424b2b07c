"""Session thumbnails: drawn with Pillow (issue 13: no pyplot import in every summary job)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from qmroct.thumbnail import write_thumbnail


def test_grey_ramp_size_and_boundary_lines(tmp_path):
    rows, cols = 200, 400
    image = np.tile(np.linspace(0.0, 10.0, rows, dtype=np.float32)[:, None], (1, cols))
    ilm = np.full(cols, 50.0)
    bm = np.full(cols, 150.0)
    bm[100:200] = np.nan  # not found there: no line drawn
    target = tmp_path / "1.png"
    write_thumbnail(target, image, 0.0, 10.0, 320, [ilm, bm])
    picture = np.asarray(Image.open(target).convert("RGB")).astype(int)
    assert picture.shape == (160, 320, 3)  # 320 wide, aspect kept
    column = picture[:, 10]
    assert column[2, 0] < 10 and column[-3, 0] > 245, "lo is black, hi is white"
    assert tuple(picture[40, 160]) == (0xFF, 0x40, 0x40), "first line in the first colour"
    assert tuple(picture[120, 40]) == (0x40, 0xFF, 0x60), "second line where it was found"
    gap = picture[118:123, 100:140]
    assert (gap[..., 0] == gap[..., 1]).all(), "no line drawn where the boundary is NaN"


def test_summary_thumbnails_do_not_import_matplotlib(tmp_path, small_demo):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from qmroct.archive.directory import DirectoryArchive\n"
        "from qmroct.summary import make_thumbnails\n"
        "archive = DirectoryArchive(sys.argv[1])\n"
        "session = archive.discover(['DEMO'])[0]\n"
        "out = Path(sys.argv[2])\n"
        "written = make_thumbnails(session, archive, out / 'scratch', out / 'thumbs', [])\n"
        "assert written and all((out / 'thumbs' / name).is_file() for name in written)\n"
        "assert 'matplotlib' not in sys.modules, 'pyplot costs every summary job ~0.4 s'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(small_demo / "archive"), str(tmp_path)], check=True
    )
