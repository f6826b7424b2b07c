"""The code checksum covers what runs: an algorithm's own tests and docs are left out,
so editing a scaffolded algorithm's test file recomputes nothing (issue 16)."""

from __future__ import annotations

import pytest

from qmroct.algorithms import load_algorithm
from qmroct.algorithms.manifest import code_files
from qmroct.algorithms.scaffold import scaffold


@pytest.mark.parametrize("runtime", ["python", "octave"])
def test_tests_and_docs_do_not_count_code_does(tmp_path, runtime):
    folder = scaffold("myqi", runtime, tmp_path)
    checksum = load_algorithm("myqi", [tmp_path]).code_checksum
    test_file = folder / "test_myqi.py"
    assert test_file.is_file(), "the scaffold writes a test beside the code"
    assert "test_myqi.py" not in [rel for rel, _ in code_files(folder)]
    test_file.write_text(test_file.read_text() + "\n# one more case\n")
    (folder / "README.md").write_text("How myqi works.\n")
    (folder / "docs").mkdir()
    (folder / "docs" / "notes.txt").write_text("background\n")
    (folder / "tests").mkdir()
    (folder / "tests" / "case.py").write_text("x = 1\n")
    (folder / "myqi_test.m").write_text("% an Octave test\n")
    assert load_algorithm("myqi", [tmp_path]).code_checksum == checksum
    code = next(p for rel, p in code_files(folder) if rel != "algorithm.yaml")
    code.write_text(code.read_text() + "\n")
    assert load_algorithm("myqi", [tmp_path]).code_checksum != checksum
    (folder / "lookup.csv").write_text("a,b\n")  # data the code reads counts
    assert "lookup.csv" in [rel for rel, _ in code_files(folder)]
