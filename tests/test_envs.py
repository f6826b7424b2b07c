"""One set of versions everywhere: pyproject.toml's pins, the hashed locks
(src/qmroct/locks/, qmroct.envlock), the conda environment (envs/qmroct.yaml) and the
environment the tests run in (made by `make setup` from the dev lock)."""

from __future__ import annotations

import subprocess
import tomllib
from importlib import metadata

import pytest
import yaml

from qmroct import envlock
from qmroct.provenance.identity import installed_distributions
from tests.support import REPO

ENV_FILE = REPO / "envs" / "qmroct.yaml"
NOT_PYTHON = {"python", "pip", "octave"}  # conda packages the lock has no say in


def _pins(specs: list[str]) -> dict[str, str]:
    pins = {}
    for spec in specs:
        requirement = spec.split(";", 1)[0].strip()
        name, _, version = requirement.partition("==")
        assert version, f"pyproject dependency {spec!r} is not pinned with =="
        pins[envlock.normalise(name)] = version.strip()
    return pins


def _project():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _conda_env() -> tuple[dict[str, str], dict[str, str]]:
    """(conda pins, pip pins) of envs/qmroct.yaml."""
    env = yaml.safe_load(ENV_FILE.read_text())
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for spec in dep.get("pip", []):
                name, _, version = spec.partition("==")
                pip[envlock.normalise(name)] = version
        else:
            name, _, version = dep.partition("=")
            conda[envlock.normalise(name)] = version
    return conda, pip


@pytest.fixture(scope="module")
def runtime():
    return envlock.resolved(envlock.read_lock(envlock.RUNTIME_LOCK), envlock.LINUX_PY311)


@pytest.fixture(scope="module")
def dev():
    return envlock.resolved(envlock.read_lock(envlock.DEV_LOCK), envlock.LINUX_PY311)


def test_conda_env_matches_python_pins():
    conda, pip = _conda_env()
    python = {k: v for k, v in {**conda, **pip}.items() if k not in NOT_PYTHON}
    assert python == _pins(_project()["dependencies"])


def test_conda_env_is_deployable():
    """Python 3.11, Octave from conda-forge for the .m algorithms, and qmroct itself
    installed by the post-deploy script Snakemake runs in the new environment."""
    conda, _ = _conda_env()
    channels = yaml.safe_load(ENV_FILE.read_text())["channels"]
    assert conda["python"] == "3.11" and "pip" in conda
    assert conda.get("octave") and "conda-forge" in channels
    deploy = (
        REPO / "envs" / "qmroct.post-deploy.sh"
    )  # Snakemake's name for it: <env>.post-deploy.sh
    script = deploy.read_text()
    assert deploy.stat().st_mode & 0o111 and script.startswith("#!")
    assert "pip install --no-deps -e ." in script


def test_post_deploy_refuses_to_run_outside_the_checkout(tmp_path):
    deploy = REPO / "envs" / "qmroct.post-deploy.sh"
    r = subprocess.run(["bash", str(deploy)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and "qmroct checkout" in r.stderr


def test_conda_env_pins_the_lock_versions(runtime):
    conda, pip = _conda_env()
    for name, version in {**conda, **pip}.items():
        if name in NOT_PYTHON:
            continue
        assert name in runtime, f"envs/qmroct.yaml pins {name}, which the runtime lock lacks"
        assert runtime[name].version == version, (name, version, runtime[name].version)


def test_every_pin_is_in_its_lock_with_hashes(runtime, dev):
    project = _project()
    for name, version in _pins(project["dependencies"]).items():
        assert runtime[name].version == version, f"runtime lock: {name} is not {version}"
    plugin = tomllib.loads(
        (REPO / "snakemake-executor-plugin-openstack" / "pyproject.toml").read_text()
    )["project"]
    wanted = {**_pins(project["dependencies"]), **_pins(project["optional-dependencies"]["test"])}
    for name, version in wanted.items():
        assert dev[name].version == version, f"dev lock: {name} is not {version}"
    for spec in plugin["dependencies"]:  # ranges there; the lock must hold each name
        name = envlock.normalise(spec.split(">", 1)[0].split("<", 1)[0].split("=", 1)[0])
        assert name in dev, f"dev lock lacks the executor plugin's {name}"
    for pin in [*runtime.values(), *dev.values()]:
        assert pin.hashes and all(len(h) == 64 for h in pin.hashes), pin.name


def test_dev_lock_agrees_with_the_runtime_lock(runtime, dev):
    """`make setup` (dev lock) and the worker image (runtime lock) run the same versions."""
    for name, pin in runtime.items():
        assert name in dev, f"dev lock lacks {name}"
        assert (dev[name].version, dev[name].hashes) == (pin.version, pin.hashes), name


def test_locks_are_closed_under_dependencies(dev):
    """Every requirement of every locked distribution (as its installed metadata declares
    it, for this interpreter, without extras) is itself locked: nothing floats."""
    missing = []
    for name in dev:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not for this platform (the next test says if one is missing)
        from packaging.requirements import Requirement

        for spec in requires:
            requirement = Requirement(spec)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            if envlock.normalise(requirement.name) not in dev:
                missing.append(f"{name} needs {requirement.name}")
    assert missing == []


def test_the_test_environment_is_the_dev_lock():
    """`make setup` installed exactly the dev lock (pip --require-hashes): a package added
    to pyproject.toml without `make lock`, or a locked one installed at another version
    by hand, shows here."""
    pins = envlock.read_lock(envlock.DEV_LOCK)
    assert envlock.differences(pins, installed_distributions()) == []


def test_read_lock_refuses_a_pin_without_hashes(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text(
        "numpy==2.4.6 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via x\nscipy==1.0\n"
    )
    with pytest.raises(ValueError, match="requirement 3 is not"):
        envlock.read_lock(lock)
    lock.write_text("numpy==2.4.6 ; python_version < '3.12' \\\n    --hash=sha256:" + "a" * 64)
    (pin,) = envlock.read_lock(lock)
    assert (pin.name, pin.version, pin.marker) == ("numpy", "2.4.6", "python_version < '3.12'")
    assert envlock.differences([pin], ["numpy==2.4.5"]) == ["numpy: locked 2.4.6, installed 2.4.5"]
