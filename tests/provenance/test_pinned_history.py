"""A config pin to an older version runs that version, restored from git history."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from qmroct.config import ConfigError, load_settings

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@e",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@e",
    "PATH": "/usr/bin:/bin",
}


def _commit(root, message):
    subprocess.run(["git", "-C", str(root), "commit", "-qam", message], check=True, env=GIT_ENV)


def _bump_noise(root, version="1.1.0"):
    manifest = root / "algorithms" / "noise" / "algorithm.yaml"
    manifest.write_text(manifest.read_text().replace('version: "1.0.0"', f'version: "{version}"'))
    code = root / "algorithms" / "noise" / "noise.py"
    code.write_text(code.read_text() + "\n# 1.1.0 changes the code too\n")
    _commit(root, f"noise {version}")


@pytest.mark.slow
def test_a_pinned_old_version_runs_from_history(checkout):
    root = checkout.root
    before = load_settings(root / "config.yaml", root).algorithms["noise"]
    _bump_noise(root)
    config = checkout.config()
    config["algorithms"]["noise"] = {"version": "1.0.0"}
    checkout.write_config(config)

    old = load_settings(root / "config.yaml", root).algorithms["noise"]
    assert old.version == "1.0.0" and old.code_checksum == before.code_checksum  # the same code
    assert (root / ".qmroct" / "algorithm-history") in old.path.parents
    assert not os.stat(old.path / "noise.py").st_mode & stat.S_IWUSR  # read-only
    assert (old.path.parent / "_shared" / "octseg.py").is_file()  # its shared code of then

    checkout.run()
    for path in root.glob("results/kqi/DEMO/*/noise.json"):
        assert json.loads(path.read_text())["algorithm"]["version"] == "1.0.0"
    table = (root / "results/tables/kqi.tsv").read_text().splitlines()
    assert all("\tnoise\t1.0.0\t" in line for line in table[1:])  # the version of each row

    # Unpinned, the current version runs: both versions' results can be compared.
    config["algorithms"]["noise"] = {}
    checkout.write_config(config)
    assert checkout.planned_jobs().get("compute_noise") == 3

    # A remote worker has the job's files but no git history: the restored folder came along.
    config["algorithms"]["noise"] = {"version": "1.0.0"}
    checkout.write_config(config)
    (root / ".git").rename(root / ".git-elsewhere")
    again = load_settings(root / "config.yaml", root).algorithms["noise"]
    assert again.path == old.path and again.code_checksum == before.code_checksum


def test_a_version_nowhere_in_history_names_the_versions_there(checkout):
    root = checkout.root
    _bump_noise(root)
    config = checkout.config()
    config["algorithms"]["noise"] = {"version": "0.9"}
    checkout.write_config(config)
    with pytest.raises(
        ConfigError, match=r"pinned '0.9'.*versions in its history: 1\.0\.0, 1\.1\.0"
    ):
        load_settings(root / "config.yaml", root)


def test_without_git_the_pin_fails_with_the_reason(workflow):
    config = workflow.config()
    config["algorithms"] = {"noise": {"version": "0.9"}}
    config["studies"] = {}
    workflow.write_config(config)
    with pytest.raises(ConfigError, match=r"pinned '0.9'.*git history cannot be read"):
        load_settings(workflow.root / "config.yaml", workflow.root)
