"""``qmroct algorithm new NAME --runtime ...``: a working algorithm to start from.

Every template computes the same two real KQIs so that a new algorithm can be
tried at once (``qmroct algorithm test NAME``) and compared across runtimes:

* ``background_sigma``: standard deviation of the top ``rows`` rows of every
  B-scan (the vitreous above the retina: background noise);
* ``mean_intensity``: the mean of the whole volume.

Edit the computation, the manifest's KQI list and thresholds, and bump the
version when the results change.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

RUNTIMES = ("python", "octave", "executable")

MANIFEST = """\
name: {name}
version: "0.1.0"
runtime: {runtime}
entry: {entry}
{function}description: >
  TODO: what this algorithm measures. Scaffolded by `qmroct algorithm new`;
  background_sigma is the standard deviation of the top `rows` rows.
params:
  rows: 32
kqis:
  - name: background_sigma
    unit: intensity
    higher_is_better: false
    valid_range: [0, null]
    description: Standard deviation of the top `rows` rows of every B-scan (vitreous background).
  - name: mean_intensity
    unit: intensity
    higher_is_better: null
    valid_range: null
    description: Mean intensity of the volume.
thresholds: {{}}
resources: {{threads: 1, mem_mb: 500, runtime_s: 1.0}}
"""

PYTHON = '''\
"""{name}: scaffolded by `qmroct algorithm new` (python runtime).

compute(volume, meta, params, workdir) gets the volume as float32 numpy array
with axes (bscan, depth, ascan), the metadata dict (spacing_mm, device,
laterality, intensity, scan_id, shape) and the params dict (manifest defaults
overridden by config). It returns the KQIs declared in algorithm.yaml; extra
output files go into workdir and are listed in "files".
"""

import numpy as np


# Values normalised to 0-100 (meta["intensity"] == "rescaled100", e.g. oct-converter's
# DICOM writer) have lost the device's scale: say so on every noise-like KQI.
RESCALED_NOTE = "measured on rescaled 0-100 values: not a device noise level"


def compute(volume, meta, params, workdir):
    rows = int(params.get("rows", 32))
    top = volume[:, :rows, :].astype(np.float64)
    per_bscan = top.std(axis=(1, 2), ddof=1)
    sigma = {{
        "value": float(np.median(per_bscan)),
        "unit": "intensity",
        "per_bscan": per_bscan.tolist(),
    }}
    if meta.get("intensity") == "rescaled100":
        sigma["note"] = RESCALED_NOTE
    return {{
        "kqis": {{
            "background_sigma": sigma,
            "mean_intensity": {{
                "value": float(volume.mean(dtype=np.float64)),
                "unit": "intensity",
            }},
        }},
        "files": [],
        "notes": [],
    }}
'''

OCTAVE = """\
function result = {name}_kqi(vol, meta, params, outdir)
% {upper}_KQI  Scaffolded by `qmroct algorithm new` (octave runtime).
%   vol is double [depth, ascans, bscans]: vol(:,:,b) is B-scan b.
%   meta and params are structs decoded from JSON. Return result.kqis.<name>
%   with fields value, unit and optionally per_bscan; result.files and
%   result.notes (cellstr) are optional. Errors make the run fail.
  rows = 32;
  if isfield(params, 'rows')
    rows = params.rows;
  end
  nb = size(vol, 3);
  per = zeros(1, nb);
  for b = 1:nb
    top = vol(1:rows, :, b);
    per(b) = std(top(:));
  end
  result.kqis.background_sigma = struct('value', median(per), 'unit', 'intensity');
  result.kqis.background_sigma.per_bscan = per;
  % values normalised to 0-100 have lost the device's scale: say so on noise-like KQIs
  if isfield(meta, 'intensity') && strcmp(meta.intensity, 'rescaled100')
    result.kqis.background_sigma.note = ...
      'measured on rescaled 0-100 values: not a device noise level';
  end
  result.kqis.mean_intensity = struct('value', mean(vol(:)), 'unit', 'intensity');
  result.notes = {{}};
end
"""

C_SOURCE = r"""/* {name}: scaffolded by `qmroct algorithm new` (executable runtime).
 *
 * A compiled algorithm: called as  {name} VOLUME.npy META.json PARAMS.json OUTDIR
 * (through run_{name}.sh <mcr_root> ..., the MATLAB Runtime convention; a
 * MATLAB Compiler build of a .m function is called the same way). Reads the
 * float32 C-order volume (bscan, depth, ascan), writes OUTDIR/kqi.json and
 * exits 0; any other exit status is an algorithm failure.
 * Build: gcc -O2 -o {name} {name}.c -lm
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *msg, const char *arg) {{
    fprintf(stderr, "{name}: %s %s\n", msg, arg ? arg : "");
    return 2;
}}

static long json_int(const char *path, const char *key, long fallback) {{
    FILE *f = fopen(path, "rb");
    if (!f) return fallback;
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    char *p = strstr(buf, pat);
    if (!p) return fallback;
    p = strchr(p + strlen(pat), ':');
    return p ? strtol(p + 1, NULL, 10) : fallback;
}}

int main(int argc, char **argv) {{
    if (argc != 5) return fail("usage: VOLUME.npy META.json PARAMS.json OUTDIR", NULL);
    FILE *f = fopen(argv[1], "rb");
    if (!f) return fail("cannot open", argv[1]);
    unsigned char magic[8];
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "\x93NUMPY", 6) != 0)
        return fail("not a .npy file:", argv[1]);
    unsigned long hlen = 0;
    if (magic[6] == 1) {{
        unsigned char h[2];
        if (fread(h, 1, 2, f) != 2) return fail("truncated header", argv[1]);
        hlen = h[0] | (h[1] << 8);
    }} else {{
        unsigned char h[4];
        if (fread(h, 1, 4, f) != 4) return fail("truncated header", argv[1]);
        hlen = h[0] | (h[1] << 8) | ((unsigned long)h[2] << 16) | ((unsigned long)h[3] << 24);
    }}
    char *header = calloc(hlen + 1, 1);
    if (fread(header, 1, hlen, f) != hlen) return fail("truncated header", argv[1]);
    if (!strstr(header, "'<f4'")) return fail("expected float32 ('<f4') data in", argv[1]);
    if (strstr(header, "'fortran_order': True")) return fail("expected C order in", argv[1]);
    long nb = 0, nz = 0, nx = 0;
    char *s = strstr(header, "'shape': (");
    if (!s || sscanf(s + 10, "%ld, %ld, %ld", &nb, &nz, &nx) != 3)
        return fail("expected a 3-D shape in", argv[1]);
    size_t count = (size_t)nb * nz * nx;
    float *v = malloc(count * sizeof(float));
    if (!v || fread(v, sizeof(float), count, f) != count) return fail("truncated data in", argv[1]);
    fclose(f);

    /* values normalised to 0-100 have lost the device's scale: say so on noise-like KQIs */
    int rescaled = 0;
    FILE *mf = fopen(argv[2], "rb");
    if (mf) {{
        char mbuf[65536];
        size_t mn = fread(mbuf, 1, sizeof mbuf - 1, mf);
        fclose(mf);
        mbuf[mn] = 0;
        rescaled = strstr(mbuf, "\"rescaled100\"") != NULL;
    }}
    long rows = json_int(argv[3], "rows", 32);
    if (rows < 2) rows = 2;
    if (rows > nz) rows = nz;
    double *per = malloc(nb * sizeof(double));
    double total = 0.0;
    for (long b = 0; b < nb; b++) {{
        double sum = 0.0, sq = 0.0;
        long n = rows * nx;
        const float *p = v + (size_t)b * nz * nx;
        for (long i = 0; i < n; i++) {{ sum += p[i]; sq += (double)p[i] * p[i]; }}
        double mean = sum / n;
        per[b] = sqrt(fmax(0.0, (sq - n * mean * mean) / (n - 1)));
    }}
    for (size_t i = 0; i < count; i++) total += v[i];
    /* median of the per-B-scan values */
    double *sorted = malloc(nb * sizeof(double));
    memcpy(sorted, per, nb * sizeof(double));
    for (long i = 1; i < nb; i++) {{
        double x = sorted[i]; long j = i - 1;
        while (j >= 0 && sorted[j] > x) {{ sorted[j + 1] = sorted[j]; j--; }}
        sorted[j + 1] = x;
    }}
    double median = nb % 2 ? sorted[nb / 2] : 0.5 * (sorted[nb / 2 - 1] + sorted[nb / 2]);

    char out[4096];
    snprintf(out, sizeof out, "%s/kqi.json", argv[4]);
    FILE *o = fopen(out, "w");
    if (!o) return fail("cannot write", out);
    fprintf(o, "{{\"kqis\": {{\"background_sigma\": {{\"value\": %.10g, "
               "\"unit\": \"intensity\", \"per_bscan\": [", median);
    for (long b = 0; b < nb; b++) fprintf(o, "%s%.10g", b ? ", " : "", per[b]);
    fprintf(o, "]%s}}, \"mean_intensity\": {{\"value\": %.10g, "
               "\"unit\": \"intensity\"}}}}, \"files\": [], \"notes\": []}}\n",
            rescaled ? ", \"note\": \"measured on rescaled 0-100 values: "
                       "not a device noise level\"" : "",
            total / (double)count);
    fclose(o);
    return 0;
}}
"""

RUN_SH = """\
#!/bin/sh
# run_{name}.sh <mcr_root> args...
# The MATLAB Runtime (MCR) convention of MATLAB Compiler (mcc -m): the first
# argument is the MATLAB Runtime root; the libraries below it go on
# LD_LIBRARY_PATH, then the compiled program runs with the remaining args.
exe_dir=$(dirname "$0")
if [ "x$1" = "x" ]; then
  echo "Usage: $0 <deployedMCRroot> args" >&2
  exit 1
fi
MCRROOT="$1"
shift
LD_LIBRARY_PATH=.:${{MCRROOT}}/runtime/glnxa64:${{MCRROOT}}/bin/glnxa64:${{MCRROOT}}/sys/os/glnxa64:${{LD_LIBRARY_PATH}}
export LD_LIBRARY_PATH
exec "${{exe_dir}}/{name}" "$@"
"""

BUILD_SH = """\
#!/bin/sh
# Build the {name} executable next to this script (needs gcc).
cd "$(dirname "$0")" && gcc -O2 -Wall -o {name} {name}.c -lm
"""

TEST = '''\
"""Smoke test of {name}: runs it through the qmroct contract on a synthetic volume.

Run with: pytest {folder}
"""

import os
from pathlib import Path

import pytest

from qmroct.algorithms import load_algorithm
from qmroct.algorithms.testdata import run_on_synthetic

HERE = Path(__file__).resolve().parent


def test_{name}_runs_and_validates(tmp_path):
    # executables following the MATLAB Runtime convention need its root
    # (any folder for plain programs)
    algo = load_algorithm(
        "{name}", [HERE.parent], mcr_root=os.environ.get("QMROCT_MCR_ROOT", str(tmp_path))
    )
    rows = run_on_synthetic(algo, tmp_path, cases=["clean"], shape=(3, 320, 128))
    assert rows[0]["error"] is None, rows[0]["error"]
    out = rows[0]["kqis"]
    truth = rows[0]["truth"]
    assert out["background_sigma"]["value"] == pytest.approx(truth["noise_sigma"], rel=0.1)
'''


def scaffold(name: str, runtime: str, root: Path, *, build: bool = False) -> Path:
    """Create ``root/name`` with a manifest, code and a test; returns the folder."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"invalid algorithm name {name!r}: use lower-case letters, digits and _")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    folder = Path(root) / name
    if folder.exists():
        raise FileExistsError(f"{folder} already exists")
    folder.mkdir(parents=True)
    fmt = {"name": name, "upper": name.upper(), "folder": folder.as_posix()}
    if runtime == "python":
        entry, function = f"{name}.py", "function: compute\n"
        (folder / entry).write_text(PYTHON.format(**fmt))
    elif runtime == "octave":
        entry, function = f"{name}_kqi.m", f"function: {name}_kqi\n"
        (folder / entry).write_text(OCTAVE.format(**fmt))
    else:
        entry, function = f"run_{name}.sh", ""
        (folder / f"{name}.c").write_text(C_SOURCE.format(**fmt))
        for fn, text in ((entry, RUN_SH), ("build.sh", BUILD_SH)):
            p = folder / fn
            p.write_text(text.format(**fmt))
            p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        (folder / ".gitignore").write_text(f"/{name}\n")
    (folder / "algorithm.yaml").write_text(
        MANIFEST.format(name=name, runtime=runtime, entry=entry, function=function)
    )
    (folder / f"test_{name}.py").write_text(TEST.format(**fmt))
    if build and runtime == "executable":
        import subprocess

        subprocess.run(["sh", str(folder / "build.sh")], check=True)
    return folder


def is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
