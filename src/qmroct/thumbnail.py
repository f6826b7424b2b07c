"""A session's thumbnail: one B-scan as a small grey PNG with boundary lines on it.

Drawn with Pillow rather than matplotlib: the summary job runs once per session, and
importing pyplot cost it ~0.4 s of CPU (more than an algorithm), for a picture that needs
a resample, a grey ramp and a few polylines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# boundary colours in the order the results list their lines; white after these
LINE_COLOURS = ["#ff4040", "#40ff60", "#40a0ff", "#ffd040"]


def write_thumbnail(
    target: Path,
    image: np.ndarray,
    lo: float,
    hi: float,
    width: int,
    lines: list[np.ndarray] = (),
) -> None:
    """``image`` (depth, ascan), grey from ``lo`` (black) to ``hi`` (white), resampled to
    ``width`` pixels wide with the aspect kept; each of ``lines`` is a row position per
    A-scan (NaN: not drawn there), in image rows."""
    from PIL import Image, ImageDraw

    rows, cols = image.shape
    height = max(1, int(round(width * rows / cols)))
    span = (hi - lo) or 1.0
    grey = np.clip((np.asarray(image, dtype=np.float32) - lo) / span, 0.0, 1.0)
    # area averaging (BOX) like an antialiased downscale: speckle averages out, lines stay
    picture = Image.fromarray(grey, mode="F").resize((width, height), Image.Resampling.BOX)
    pixels = np.clip(np.asarray(picture) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    canvas = Image.fromarray(pixels, mode="L").convert("RGB")
    draw = ImageDraw.Draw(canvas)
    sx, sy = width / cols, height / rows
    for k, line in enumerate(lines):
        colour = LINE_COLOURS[k] if k < len(LINE_COLOURS) else "#ffffff"
        x = (np.arange(cols) + 0.5) * sx
        y = np.asarray(line, dtype=np.float64) * sy
        finite = np.isfinite(y)
        # one polyline per run of drawable points, so a gap stays a gap
        breaks = np.flatnonzero(np.diff(finite.astype(np.int8)))
        for run in np.split(np.arange(cols), breaks + 1):
            if run.size > 1 and finite[run[0]]:
                points = list(zip(x[run].tolist(), y[run].tolist(), strict=True))
                draw.line(points, fill=colour, width=1)
    target = Path(target)
    canvas.save(target, format="PNG", optimize=False)
