"""An algorithm's identity covers what can change its numbers, and only that."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from qmroct.algorithms import ManifestError, load_algorithm
from qmroct.compute import algorithm_identity, compute_session
from qmroct.config import ConfigError, load_settings
from qmroct.provenance import identity
from tests.provenance.conftest import REPO

KQIS = "kqis: [{name: a, unit: px, higher_is_better: true}]\n"


def _algorithm(root: Path, name: str = "probe", entry: str = "algo.py", extra: str = "") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "algo.py").write_text(
        "def compute(volume, meta, params, workdir):\n"
        "    return {'kqis': {'a': {'value': 1.0, 'unit': 'px'}}}\n"
    )
    (folder / "algorithm.yaml").write_text(
        f"name: {name}\nversion: '1.0'\nruntime: python\nentry: {entry}\n{extra}{KQIS}"
    )
    return folder


@pytest.mark.parametrize(
    "entry, extra, named",
    [
        ("../../outside.py", "", "entry '../../outside.py'"),
        ("../outside.py", "", "entry '../outside.py'"),
        ("algo.py", "shared: [../../outside.py]\n", "shared '../../outside.py'"),
        ("algo.py", "data: [../../outside.py]\n", "data '../../outside.py'"),
    ],
)
def test_manifest_paths_outside_the_folder_are_refused(tmp_path, entry, extra, named):
    root = tmp_path / "wf" / "algorithms"
    _algorithm(root, entry=entry, extra=extra)
    (root / "_shared").mkdir()
    (tmp_path / "wf" / "outside.py").write_text("def compute(*a): pass\n")
    (root / "outside.py").write_text("def compute(*a): pass\n")
    with pytest.raises(ManifestError, match=named.replace("(", r"\(")):
        load_algorithm("probe", [root])


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    root = tmp_path / "algorithms"
    folder = _algorithm(root, entry="link.py")
    (tmp_path / "elsewhere.py").write_text("def compute(*a): pass\n")
    (folder / "link.py").symlink_to(tmp_path / "elsewhere.py")
    with pytest.raises(ManifestError, match="entry 'link.py' resolves to .*elsewhere.py, outside"):
        load_algorithm("probe", [root])


def test_data_in_the_shared_folder_is_in_the_checksum(tmp_path):
    root = tmp_path / "algorithms"
    (root / "_shared").mkdir(parents=True)
    table = root / "_shared" / "table.csv"
    table.write_text("1,2\n")
    _algorithm(root, extra="data: [../_shared/table.csv]\n")
    before = load_algorithm("probe", [root]).code_checksum
    table.write_text("1,3\n")
    assert load_algorithm("probe", [root]).code_checksum != before


def test_check_config_names_the_escaping_path(tmp_path):
    wf = tmp_path / "wf"
    _algorithm(wf / "algorithms", entry="../../outside.py")
    (wf / "outside.py").write_text("def compute(*a): pass\n")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["algorithms"] = {"probe": {}}
    config["studies"] = {}
    (wf / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(
        (ConfigError, ManifestError), match=r"entry '\.\./\.\./outside\.py' resolves to"
    ):
        load_settings(wf / "config.yaml")
    cli = subprocess.run(
        [sys.executable, "-m", "qmroct.cli", "check-config", str(wf / "config.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode != 0 and "../../outside.py" in cli.stderr, cli.stderr


def test_tests_and_docs_of_an_algorithm_are_not_its_code(tmp_path):
    root = tmp_path / "algorithms"
    folder = _algorithm(root)
    before = load_algorithm("probe", [root]).code_checksum
    (folder / "test_probe.py").write_text("def test_x(): pass\n")
    (folder / "README.md").write_text("# probe\n")
    (folder / "tests").mkdir()
    (folder / "tests" / "helpers.py").write_text("X = 1\n")
    assert load_algorithm("probe", [root]).code_checksum == before
    (folder / "helper.py").write_text("Y = 2\n")  # code next to the entry is code
    assert load_algorithm("probe", [root]).code_checksum != before


def test_pipeline_checksum_follows_the_reading_path_and_the_runtime(tmp_path):
    src = tmp_path / "qmroct"
    shutil.copytree(identity.PACKAGE_ROOT, src, ignore=shutil.ignore_patterns("__pycache__"))
    base = {rt: identity.pipeline_checksum(rt, src) for rt in ("python", "octave", "executable")}
    dicom = src / "scanio" / "dicom.py"
    dicom.write_text(dicom.read_text() + "\n# a fix in the DICOM reader\n")
    after_reader = {rt: identity.pipeline_checksum(rt, src) for rt in base}
    assert all(after_reader[rt] != base[rt] for rt in base)
    adapter = next((src / "algorithms" / "octave").glob("*.m"))
    adapter.write_text(adapter.read_text() + "\n% octave adapter fix\n")
    after_adapter = {rt: identity.pipeline_checksum(rt, src) for rt in base}
    assert after_adapter["octave"] != after_reader["octave"]
    assert after_adapter["python"] == after_reader["python"]
    child = src / "algorithms" / "child.py"  # every runtime's algorithm runs in its child process
    child.write_text(child.read_text() + "\n# child process fix\n")
    after_child = {rt: identity.pipeline_checksum(rt, src) for rt in base}
    assert all(after_child[rt] != after_adapter[rt] for rt in base)
    after_adapter = after_child
    writer = src / "fileio.py"  # writes the KQI file (NaN -> null)
    writer.write_text(writer.read_text() + "\n# result writing fix\n")
    after_writer = {rt: identity.pipeline_checksum(rt, src) for rt in base}
    assert all(after_writer[rt] != after_adapter[rt] for rt in base)
    after_adapter = after_writer
    report = src / "report.py"
    report.write_text(report.read_text() + "\n# not on the path to a KQI\n")
    assert {rt: identity.pipeline_checksum(rt, src) for rt in base} == after_adapter
    (src / "staging.py").unlink()
    with pytest.raises(FileNotFoundError, match="staging.py"):
        identity.pipeline_checksum("python", src)


def test_identity_and_result_record_what_ran(tmp_path, archive_copy):
    algo = load_algorithm("noise", search_paths=[REPO / "algorithms"])
    ident = algorithm_identity(algo, {})
    # (the cached value: src/ may be edited by someone else while the suite runs)
    assert ident["pipeline_checksum"] == identity.cached_pipeline_checksum("python")
    assert "environment" not in ident  # versions are recorded, never a rerun trigger
    session = archive_copy.discover(["DEMO"])[0]
    result = compute_session(
        session, algo, {}, archive_copy, tmp_path / "scratch", tmp_path / "extras"
    )
    env = result["provenance"]["environment"]
    assert env["qmroct_pipeline"] == ident["pipeline_checksum"]  # this process ran the head's code
    from importlib import metadata

    assert env["python"] == sys.version.split()[0]
    assert env["qmroct"] == metadata.version("qmroct")
    for dist in ("numpy", "scipy", "pydicom", "oct-converter"):
        assert env["packages"][dist] == metadata.version(dist)
    git = result["provenance"]["git"]
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout
    assert git["commit"] == head.strip() and isinstance(git["dirty"], bool)


def test_imported_packages_of_an_algorithm_are_recorded(tmp_path):
    code = tmp_path / "algo.py"
    code.write_text(
        textwrap.dedent("""
        import numpy as np
        from scipy import ndimage
        import yaml, json
        from . import local
    """)
    )
    assert {"numpy", "scipy", "PyYAML"} <= set(identity.imported_distributions([code]))


def test_qmroct_version_comes_from_metadata():
    import qmroct
    from importlib import metadata

    assert qmroct.__version__ == metadata.version("qmroct")
    source = (identity.PACKAGE_ROOT / "__init__.py").read_text()
    assert '__version__ = "' not in source


def test_octave_and_matlab_runtime_versions(tmp_path, monkeypatch):
    if shutil.which("octave-cli"):
        version = identity.octave_version()
        out = subprocess.run(["octave-cli", "--version"], capture_output=True, text=True).stdout
        assert version and version in out
    mcr = tmp_path / "mcr"
    mcr.mkdir()
    (mcr / "VersionInfo.xml").write_text(
        "<?xml version='1.0'?><MathWorks_version_info><version>9.13.0.2049777</version>"
        "<release>R2022b</release></MathWorks_version_info>"
    )
    assert identity.matlab_runtime_version(mcr) == "R2022b 9.13.0.2049777"
    assert identity.matlab_runtime_version(tmp_path / "nothing").startswith("unknown")
    assert identity.matlab_runtime_version(None) is None
