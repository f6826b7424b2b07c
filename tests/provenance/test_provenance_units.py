"""Run manifest, report section and freeze checks on hand-made inputs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qmroct.algorithms import load_algorithm
from qmroct.compute import algorithm_identity
from qmroct.provenance.freeze import FrozenResult, mixtures
from qmroct.provenance.rerun import rerun_config
from qmroct.provenance.run_manifest import REDACTED, executor_info, versions_html
from tests.provenance.conftest import REPO


@dataclass
class _OpenStackSettings:  # shaped like an executor plugin's settings dataclass
    image: str = "qmroct-worker"
    flavor: str = "m1.small,m1.medium"
    password: str = "s3cret"
    private_key: str = "~/.ssh/qmroct"
    networks: list = field(default_factory=lambda: ["private"])


class _Plugin:
    name = "openstack"


class _Workflow:
    executor_plugin = _Plugin()
    executor_settings = _OpenStackSettings()


def test_executor_info_records_profile_image_flavors_without_secrets():
    info = executor_info(_Workflow(), ["snakemake", "--profile", "openstack", "--cores", "2"])
    assert info["name"] == "openstack" and info["profile"] == "openstack"
    assert (
        info["settings"]["image"] == "qmroct-worker"
        and info["settings"]["flavor"] == "m1.small,m1.medium"
    )
    assert info["settings"]["password"] == REDACTED and "s3cret" not in json.dumps(info)
    assert info["settings"]["networks"] == ["private"]


def _result(tmp_path: Path, name: str, numpy: str, version: str = "1.0.0") -> Path:
    doc = {
        "algorithm": {
            "name": "noise",
            "version": version,
            "code_checksum": "sha256:" + "a" * 64,
            "pipeline_checksum": "sha256:" + "b" * 64,
        },
        "provenance": {
            "environment": {"python": "3.11.7", "qmroct": "0.1.0", "packages": {"numpy": numpy}}
        },
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def test_report_section_shows_versions_drift_and_links_the_manifest(tmp_path):
    paths = [_result(tmp_path, "a", "2.4.6"), _result(tmp_path, "b", "2.4.6")]
    html = versions_html(paths, "20261201T120000Z-abc123", Path("results/report"))
    assert "noise" in html and "1.0.0" in html and "drift" not in html
    assert "href='../runs/20261201T120000Z-abc123/manifest.json'" in html
    html = versions_html(paths + [_result(tmp_path, "c", "2.5.0")], None, Path("results/report"))
    assert "Environment drift" in html and "numpy 2.5.0" in html and "numpy 2.4.6" in html
    assert "manifest.json" not in html  # no run, no link


class _Settings:
    def __init__(self):
        self.algorithms = {"noise": load_algorithm("noise", [REPO / "algorithms"])}

    def algorithm_params(self, name):
        return {}


def _frozen(settings, numpy: str, key: str, **identity) -> FrozenResult:
    ident = algorithm_identity(settings.algorithms["noise"], {}) | identity
    doc = {
        "algorithm": ident,
        "provenance": {
            "environment": {
                "python": "3.11.7",
                "packages": {"numpy": numpy},
                "executable": f"/venv-{key}/bin/python",
            }
        },
    }
    return FrozenResult("DEMO", key, "noise", Path(f"{key}.json"), doc)


def test_mixtures_of_environments_and_identities_are_found():
    settings = _Settings()
    same = [_frozen(settings, "2.4.6", "s1"), _frozen(settings, "2.4.6", "s2")]
    assert mixtures(same, settings) == []  # the interpreter's path is no difference
    envs = mixtures(same + [_frozen(settings, "2.5.0", "s3")], settings)
    assert len(envs) == 1 and "2 different environments" in envs[0]
    stale = mixtures([_frozen(settings, "2.4.6", "s1", version="0.9")], settings)
    assert len(stale) == 1 and "1 differ from the workflow's current code" in stale[0]
    worker = _frozen(settings, "2.4.6", "s4")
    worker.doc["provenance"]["environment"]["qmroct_pipeline"] = "sha256:" + "0" * 64
    assert any("other than the workflow's" in m for m in mixtures(same + [worker], settings))


def test_a_rerun_against_xnat_writes_nothing_into_it(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "config.yaml").write_text(
        "archive: {backend: xnat, server: 'https://xnat.example'}\nprojects: [P]\n"
        "writeback: {enabled: true}\n"
    )
    config = rerun_config(tmp_path, {}, code, tmp_path)
    assert config["writeback"]["enabled"] is False and config["archive"]["history"] is False


def test_a_rerun_finds_a_relative_directory_archive_here_or_where_it_was_frozen(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "config.yaml").write_text(
        "archive: {backend: directory, path: demo/archive}\nprojects: [P]\n"
    )
    (tmp_path / "old" / "demo" / "archive").mkdir(parents=True)
    config = rerun_config(
        tmp_path, {"original_workdir": str(tmp_path / "old")}, code, tmp_path / "elsewhere"
    )
    assert config["archive"]["path"] == str((tmp_path / "old" / "demo" / "archive").resolve())
    (code / "config.yaml").write_text("archive: {backend: directory, path: gone}\nprojects: [P]\n")
    from qmroct.provenance.rerun import RerunError

    with pytest.raises(RerunError, match="archive folder 'gone' not found"):
        rerun_config(tmp_path, {"original_workdir": str(tmp_path / "old")}, code, tmp_path)
