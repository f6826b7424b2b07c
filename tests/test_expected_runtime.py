"""The compute jobs' runtime estimate (qmroct.expected_runtime): measured durations of earlier
results win over the manifest's runtime_s."""

from __future__ import annotations

import json

from qmroct.expected_runtime import expected_runtime_s, measured_seconds


def write_result(root, project, session, algorithm, elapsed):
    path = root / project / session / f"{algorithm}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"provenance": {"elapsed_s": elapsed}}))


def test_without_results_the_manifest_decides(tmp_path):
    assert expected_runtime_s("noise", 2.2, tmp_path / "missing") == 3
    assert expected_runtime_s("noise", 0.5, tmp_path) == 1  # at least one second


def test_median_of_earlier_results_of_that_algorithm(tmp_path):
    for i, elapsed in enumerate([4.2, 3.9, 30.0]):
        write_result(tmp_path, "P", f"S{i}", "noise", elapsed)
    write_result(tmp_path, "P", "S0", "layers", 100.0)  # another algorithm
    (tmp_path / "P" / "S1" / "broken.json").write_text("{")
    write_result(tmp_path, "Q", "S9", "noise", "fast")  # not a number: skipped
    assert sorted(measured_seconds(tmp_path, "noise")) == [3.9, 4.2, 30.0]
    assert expected_runtime_s("noise", 60.0, tmp_path) == 5  # median 4.2, rounded up


def test_reads_a_bounded_sample(tmp_path):
    for i in range(10):
        write_result(tmp_path, "P", f"S{i:02d}", "noise", 1.0)
    assert len(measured_seconds(tmp_path, "noise", sample=4)) == 4
