"""Every run writes results/runs/<run-id>/manifest.json; the report links it."""

from __future__ import annotations

import json
import re
from importlib import metadata

import pytest

from qmroct.checksums import file_digest
from qmroct.provenance.run_manifest import REDACTED, redact, redact_argv


def test_secrets_are_redacted_by_key_and_in_urls():
    config = {
        "archive": {
            "backend": "xnat",
            "server": "https://alice:s3cret@xnat.example/",
            "password": "hunter2",
            "tokens": True,
        },
        "openstack": {"api_key": "k-123", "openstack_private_key": "~/.ssh/id"},
    }
    clean = json.dumps(redact(config))
    assert "s3cret" not in clean and "hunter2" not in clean and "k-123" not in clean
    assert redact(config)["archive"]["server"] == f"https://alice:{REDACTED}@xnat.example/"
    assert redact(config)["archive"]["tokens"] is True  # a flag is no secret
    assert redact(config)["openstack"]["openstack_private_key"] == "~/.ssh/id"  # a path
    argv = [
        "snakemake",
        "--openstack-password",
        "pw1",
        "--api-key=pw2",
        "--config",
        "server=https://bob:pw3@h/",
        "--cores",
        "2",
    ]
    shown = " ".join(redact_argv(argv))
    assert not re.search(r"pw[123]", shown), shown
    assert "--cores 2" in shown


@pytest.mark.slow
def test_a_run_writes_its_manifest_and_the_report_links_it(checkout):
    workflow, commit = checkout, checkout.commit
    workflow.run()
    root = workflow.root
    manifests = sorted(root.glob("results/runs/*/manifest.json"))
    assert len(manifests) == 1
    doc = json.loads(manifests[0].read_text())
    assert doc["run_id"] == manifests[0].parent.name
    assert doc["outcome"] == "succeeded" and doc["start_time"] <= doc["end_time"]
    assert doc["user"] and doc["host"] and "snakemake" in " ".join(doc["command_line"])
    assert doc["config"]["algorithms"] == {"noise": {}}
    assert doc["git"] == {"commit": commit, "dirty": False}
    head = doc["head"]
    assert head["qmroct"] == metadata.version("qmroct") and head["snakemake"] == metadata.version(
        "snakemake"
    )
    assert f"numpy=={metadata.version('numpy')}" in head["distributions"]
    assert head["os"] and head["python"]
    assert doc["executor"]["name"] == "local"

    results = sorted(root.glob("results/kqi/DEMO/*/noise.json"))
    assert len(results) == 3
    for path in results:
        entry = doc["result_files"][path.relative_to(root).as_posix()]
        assert entry["sha256"] == file_digest(path) and entry["computed_in_this_run"]
        result = json.loads(path.read_text())
        key = f"DEMO/{result['session']['label']}"
        assert doc["sessions"][key] == result["session"]["fingerprint"]
        assert result["algorithm"] in doc["algorithms"]["noise"]
        host = result["provenance"]["host"]
        assert doc["workers"][host]["distributions_sha256"] == [head["distributions_sha256"]]
    assert (
        doc["outcome_counts"]["results"] == 3 and doc["outcome_counts"]["computed_in_this_run"] == 3
    )

    html = (root / "results/report/index.html").read_text()
    assert "Algorithm versions" in html and "1.0.0" in html
    href = re.search(r"href='([^']+manifest\.json)'", html).group(1)
    assert (root / "results/report" / href).resolve() == manifests[0].resolve()

    # A second run with nothing to do still records itself; nothing was computed in it.
    workflow.run("--forcerun", "report")
    second = [p for p in root.glob("results/runs/*/manifest.json") if p != manifests[0]]
    assert len(second) == 1
    again = json.loads(second[0].read_text())
    assert (
        again["outcome_counts"]["computed_in_this_run"] == 0
        and again["outcome_counts"]["results"] == 3
    )


def test_run_id_is_the_one_the_starter_gave_never_a_used_one(tmp_path, monkeypatch):
    from qmroct.provenance.run_manifest import (
        RUN_ID_ENV,
        manifest_path,
        new_run_id,
        run_id_for_this_run,
    )

    given = new_run_id()
    monkeypatch.setenv(RUN_ID_ENV, given)
    assert run_id_for_this_run(tmp_path) == given  # qmroct watch names the run
    manifest_path(given, tmp_path).parent.mkdir(parents=True)
    manifest_path(given, tmp_path).write_text("{}")
    fresh = run_id_for_this_run(tmp_path)  # that record exists: never overwritten
    assert fresh != given and re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", fresh)
    monkeypatch.setenv(RUN_ID_ENV, "../../etc")  # not an id: ignored
    assert run_id_for_this_run(tmp_path) != "../../etc"
