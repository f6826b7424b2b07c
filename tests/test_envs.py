"""envs/*.yaml pin the same versions as pyproject.toml."""

from __future__ import annotations


import re
import tomllib

import yaml

from tests.support import REPO



def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_conda_env_matches_python_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for spec in project["dependencies"]:
        name, _, version = spec.partition("==")
        assert version, f"pyproject dependency {spec!r} is not pinned with =="
        pins[_normalise(name)] = version
    env = yaml.safe_load((REPO / "envs/qmroct.yaml").read_text())
    conda = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for spec in dep.get("pip", []):
                name, _, version = spec.partition("==")
                conda[_normalise(name)] = version
        elif "=" in dep:
            name, _, version = dep.partition("=")
            conda[_normalise(name)] = version
    conda.pop("python", None)
    assert conda == pins
