"""The executable runtime (a real C program built with gcc, MCR calling convention) and the
developer CLI."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qmroct.algorithms import AlgorithmFailure, load_algorithm
from qmroct.algorithms.cli import main as cli_main
from qmroct.algorithms.scaffold import scaffold

from tests.support import ALGORITHMS_DIR as ALGORITHMS

HAVE_OCTAVE = shutil.which("octave-cli") is not None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """algorithms/ with an executable (compiled now from its C source) and a python twin."""
    if shutil.which("gcc") is None:
        pytest.fail(
            "gcc is needed to build the executable-runtime test program (apt-get install gcc)"
        )
    root = tmp_path_factory.mktemp("algs")
    folder = scaffold("bgexe", "executable", root)
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(folder / "bgexe"), str(folder / "bgexe.c"), "-lm"],
        check=True,
    )
    scaffold("bgpy", "python", root)
    mcr = tmp_path_factory.mktemp("fake_mcr_root")  # the run script only puts it on LD_LIBRARY_PATH
    return root, mcr


@pytest.mark.parametrize("seed", [1, 2])
def test_executable_matches_truth_and_python(tmp_path, built, synth, stage, seed):
    root, mcr = built
    exe = load_algorithm("bgexe", [root], mcr_root=mcr)
    assert exe.runtime == "executable"
    vol, truth = synth(n_bscans=3, depth=320, width=128, noise_sigma=0.02, seed=seed)
    path, meta = stage(tmp_path, vol, truth.spacing_mm)
    a = exe.run(path, meta, {"rows": 48}, tmp_path / "exe", timeout=60)["kqis"]
    b = load_algorithm("bgpy", [root]).run(path, meta, {"rows": 48}, tmp_path / "py")["kqis"]
    assert a["background_sigma"]["value"] == pytest.approx(truth.noise_sigma, rel=0.03)
    assert a["background_sigma"]["value"] == pytest.approx(b["background_sigma"]["value"], rel=1e-6)
    np.testing.assert_allclose(
        a["background_sigma"]["per_bscan"], b["background_sigma"]["per_bscan"], rtol=1e-6
    )
    assert a["mean_intensity"]["value"] == pytest.approx(b["mean_intensity"]["value"], rel=1e-6)


def test_mcr_root_required_and_passed(tmp_path, built, stage, monkeypatch):
    root, mcr = built
    monkeypatch.delenv("QMROCT_MCR_ROOT", raising=False)
    path, meta = stage(
        tmp_path, np.ones((2, 40, 16), np.float32), {"bscan": 0.1, "depth": 0.004, "ascan": 0.01}
    )
    with pytest.raises(AlgorithmFailure, match="MCR root"):
        load_algorithm("bgexe", [root]).run(path, meta, {}, tmp_path / "w")
    out = load_algorithm("bgexe", [root]).run(path, meta, {}, tmp_path / "w", mcr_root=mcr)
    assert out["kqis"]["background_sigma"]["value"] == 0.0
    monkeypatch.setenv("QMROCT_MCR_ROOT", str(mcr))
    assert (
        load_algorithm("bgexe", [root]).run(path, meta, {}, tmp_path / "w")["kqis"][
            "mean_intensity"
        ]["value"]
        == 1.0
    )


def test_executable_error_exit_is_a_failure(tmp_path, built):
    root, mcr = built
    bad = tmp_path / "volume.npy"
    bad.write_bytes(b"this is not numpy")
    with pytest.raises(AlgorithmFailure) as err:
        load_algorithm("bgexe", [root], mcr_root=mcr).run(bad, {}, {}, tmp_path / "w")
    assert "exited with status 2" in str(err.value) and "not a .npy file" in err.value.stderr_tail


def test_executable_timeout_and_missing_binary(tmp_path, stage):
    folder = tmp_path / "algs" / "hang"
    folder.mkdir(parents=True)
    (folder / "hang.sh").write_text("#!/bin/sh\necho starting >&2\nsleep 60\n")
    (folder / "hang.sh").chmod(0o755)
    (folder / "algorithm.yaml").write_text(
        "name: hang\nversion: '1'\nruntime: executable\nentry: hang.sh\n"
        "kqis: [{name: a, unit: px, higher_is_better: true}]\n"
    )
    path, meta = stage(
        tmp_path / "in",
        np.ones((1, 16, 16), np.float32),
        {"bscan": 0.1, "depth": 0.004, "ascan": 0.01},
    )
    with pytest.raises(AlgorithmFailure) as err:
        load_algorithm("hang", [tmp_path / "algs"]).run(path, meta, {}, tmp_path / "w", timeout=2)
    assert "timed out" in str(err.value) and "starting" in err.value.stderr_tail
    (folder / "hang.sh").unlink()
    with pytest.raises(AlgorithmFailure, match="not found"):
        load_algorithm("hang", [tmp_path / "algs"]).run(path, meta, {}, tmp_path / "w")


@pytest.mark.parametrize("runtime", ["python", "octave", "executable"])
def test_cli_new_then_test(tmp_path, capsys, runtime):
    if runtime == "octave" and not HAVE_OCTAVE:
        pytest.skip("octave-cli not installed")
    algs = tmp_path / "algs"
    assert (
        cli_main(["algorithm", "new", "mine", "--runtime", runtime, "--dir", str(algs), "--build"])
        == 0
    )
    assert (algs / "mine" / "algorithm.yaml").is_file() and (
        algs / "mine" / "test_mine.py"
    ).is_file()
    assert (
        cli_main(["algorithm", "new", "mine", "--runtime", runtime, "--dir", str(algs)]) == 2
    )  # exists
    capsys.readouterr()
    rc = cli_main(
        [
            "algorithm",
            "test",
            "mine",
            "--algorithms-dir",
            str(algs),
            "--case",
            "clean",
            "--case",
            "log8",
            "--shape",
            "3,320,128",
            "--json",
            "--mcr-root",
            str(tmp_path),
        ]
    )
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0, rows
    assert rows[0]["truth"]["noise_sigma"] == pytest.approx(80.0)
    assert rows[0]["kqis"]["background_sigma"]["value"] == pytest.approx(80.0, rel=0.1)
    # the scaffolded test passes too
    spec = importlib.util.spec_from_file_location("scaffold_test", algs / "mine" / "test_mine.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "t").mkdir()
    mod.test_mine_runs_and_validates(tmp_path / "t")


def test_cli_test_reports_failure(tmp_path, capsys):
    algs = tmp_path / "algs"
    (algs / "boom").mkdir(parents=True)
    (algs / "boom" / "b.py").write_text(
        "def compute(v, m, p, w):\n    raise RuntimeError('kaputt')\n"
    )
    (algs / "boom" / "algorithm.yaml").write_text(
        "name: boom\nversion: '1'\nruntime: python\nentry: b.py\n"
        "kqis: [{name: a, unit: px, higher_is_better: true}]\n"
    )
    assert (
        cli_main(
            [
                "algorithm",
                "test",
                "boom",
                "--algorithms-dir",
                str(algs),
                "--case",
                "clean",
                "--shape",
                "2,320,64",
            ]
        )
        == 1
    )
    assert "ALGORITHM FAILURE" in capsys.readouterr().out
    assert cli_main(["algorithm", "test", "nothere", "--algorithms-dir", str(algs)]) == 2
    assert "available: boom" in capsys.readouterr().err


def test_cli_kqi_on_files_and_folders(tmp_path, capsys, synth):
    vol, truth = synth(n_bscans=3, depth=320, width=128, seed=3)
    scans = tmp_path / "scans"
    scans.mkdir()
    np.save(scans / "a.npy", vol)
    (scans / "a.json").write_text(
        json.dumps({"spacing_mm": truth.spacing_mm, "device": "Spectralis"})
    )
    (scans / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    rc = cli_main(
        ["kqi", str(scans / "a.npy"), "--algorithm", "noise", "--algorithms-dir", str(ALGORITHMS)]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out[0]["results"]["noise"]["kqis"]["noise_sigma"]["value"] == pytest.approx(
        truth.noise_sigma, rel=0.03
    )
    assert "per_bscan" not in out[0]["results"]["noise"]["kqis"]["noise_sigma"]
    rc = cli_main(
        [
            "kqi",
            str(scans),
            "-a",
            "noise",
            "-a",
            "layers",
            "--per-bscan",
            "--algorithms-dir",
            str(ALGORITHMS),
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 1  # one unreadable file
    by_name = {Path(e["path"]).name: e for e in out}
    assert set(by_name) == {"a.npy", "broken.npy"}
    assert "error" in by_name["broken.npy"]
    assert len(by_name["a.npy"]["results"]["layers"]["kqis"]["thickness_mean_um"]["per_bscan"]) == 3
    assert not list(Path("/tmp").glob("qmroct-kqi-*/scan*"))  # staged scans removed


def test_cli_schema(capsys):
    assert cli_main(["algorithm", "schema"]) == 0
    assert "kqis" in json.loads(capsys.readouterr().out)["properties"]
