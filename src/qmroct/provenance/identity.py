"""What makes a result what it is, and what it ran on.

Two different things, kept apart on purpose:

* The **pipeline checksum** is part of an algorithm's identity (a Snakemake param, so a
  change reruns): a sha256 over the qmroct source files that stand between the archive's
  bytes and the array the algorithm receives (scan readers, staging), the runner and the
  runtime adapter the algorithm uses, and the code that writes the KQI file. A fix in
  the DICOM reader changes KQIs, so it must recompute them; an edit to the report does
  not, so the report's code is not in it.
* The **environment** (Python, the versions of the packages the algorithm and the reading
  path import, Octave or MATLAB Runtime, qmroct's own version, the git commit) is
  *recorded* in every result but is not a rerun trigger: a routine package upgrade must
  not recompute ten thousand sessions. Differences show up as drift in the report and
  are refused when freezing a result set (``qmroct freeze``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # src/qmroct

# Relative to src/qmroct. Every runtime goes through these: the scan readers and staging
# make the array, the runner validates the algorithm's output, compute builds the result and
# fileio writes it (undefined values become null there).
COMMON_SOURCES = (
    "scanio/*.py",
    "staging.py",
    "algorithms/runner.py",
    "algorithms/child.py",
    "compute.py",
    "fileio.py",
)
# What each runtime adds: the child-process shim and the shared-code loader for Python,
# the Octave side of the contract for Octave. An edit to an Octave adapter reruns only
# Octave algorithms.
RUNTIME_SOURCES = {
    "python": ("algorithms/pyrun.py", "algorithms/shared.py"),
    "octave": ("algorithms/octave/*.m",),
    "executable": (),
}
# Distributions on the reading path, recorded for every result whatever the algorithm.
READING_PATH_DISTRIBUTIONS = ("numpy", "scipy", "pydicom", "oct-converter")


def pipeline_files(runtime: str, root: Path = PACKAGE_ROOT) -> list[Path]:
    """The qmroct source files whose change can change an algorithm's KQIs, sorted."""
    if runtime not in RUNTIME_SOURCES:
        raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIME_SOURCES)})")
    files: set[Path] = set()
    for pattern in COMMON_SOURCES + RUNTIME_SOURCES[runtime]:
        matched = sorted(root.glob(pattern))
        if not matched:
            # A renamed module must not silently fall out of the identity.
            raise FileNotFoundError(f"pipeline source {pattern!r} matches nothing under {root}")
        files.update(matched)
    return sorted(files)


def pipeline_checksum(runtime: str, root: Path = PACKAGE_ROOT) -> str:
    """sha256 over the relative names and bytes of :func:`pipeline_files`."""
    return _files_checksum(
        (p.relative_to(root).as_posix(), p) for p in pipeline_files(runtime, root)
    )


@functools.lru_cache(maxsize=None)
def cached_pipeline_checksum(runtime: str) -> str:
    """Per process: the workflow asks once per algorithm rule, the files do not change meanwhile."""
    return pipeline_checksum(runtime)


def _files_checksum(named_files: Iterable[tuple[str, Path]]) -> str:
    h = hashlib.sha256()
    for rel, path in sorted(named_files):
        data = path.read_bytes()
        h.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return "sha256:" + h.hexdigest()


# ------------------------------------------------------------------ environment


def qmroct_version() -> str:
    """qmroct's version from its installed metadata (pyproject.toml), not a constant."""
    try:
        return metadata.version("qmroct")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def imported_distributions(code_files: Iterable[Path]) -> list[str]:
    """Installed distributions that the given Python files import (top-level names)."""
    modules: set[str] = set()
    for path in code_files:
        if path.suffix != ".py":
            continue
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except SyntaxError:
            continue  # the runner reports a broken algorithm; provenance only records
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module.split(".")[0])
    # Most distributions are named like their module (numpy); only the others need the full
    # module -> distribution map, which reads every installed distribution (slow per job).
    found, unknown = set(), set()
    for module in modules - set(sys.stdlib_module_names):
        try:
            metadata.version(module)
            found.add(module)
        except metadata.PackageNotFoundError:
            unknown.add(module)
    if unknown:
        owners = metadata.packages_distributions()
        found.update(dist for module in unknown for dist in owners.get(module, []))
    return sorted(found)


def distribution_versions(names: Iterable[str]) -> dict[str, str]:
    versions = {}
    for name in sorted(set(names)):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def installed_distributions() -> list[str]:
    """Every distribution in this interpreter's environment as ``name==version``, sorted."""
    seen = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return [seen[k] for k in sorted(seen)]


@functools.lru_cache(maxsize=None)
def octave_version() -> str | None:
    """``GNU Octave, version 7.3.0`` -> ``7.3.0``; None when Octave is not installed."""
    import os

    octave = (
        os.environ.get("OCTAVE_EXECUTABLE") or shutil.which("octave-cli") or shutil.which("octave")
    )
    if not octave:
        return None
    try:
        out = subprocess.run(
            [octave, "--version"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc.__class__.__name__})"
    match = re.search(r"version\s+(\S+)", out)
    return match.group(1) if match else "unknown"


def matlab_runtime_version(mcr_root: str | Path | None) -> str | None:
    """The MATLAB Runtime's release from ``<root>/VersionInfo.xml`` (what its installer
    writes), else ``unknown``; None when no runtime root is configured."""
    if not mcr_root:
        return None
    info = Path(mcr_root) / "VersionInfo.xml"
    try:
        text = info.read_text(errors="replace")
    except OSError:
        return f"unknown (no {info})"
    release = re.search(r"<release>([^<]+)</release>", text)
    version = re.search(r"<version>([^<]+)</version>", text)
    parts = [m.group(1).strip() for m in (release, version) if m]
    return " ".join(parts) or "unknown"


def git_state(directory: Path | str) -> dict[str, Any] | None:
    """The commit of the checkout holding ``directory`` and whether it has uncommitted
    changes (with a hash of the diff, so two dirty runs can be told apart); None outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no")
        diff = git("diff", "HEAD", "--binary") if status.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return None
    state: dict[str, Any] = {"commit": commit, "dirty": bool(status.strip())}
    if diff:
        state["diff_sha256"] = "sha256:" + hashlib.sha256(diff.encode()).hexdigest()
    return state


def algorithm_environment(algo, code_files: Iterable[Path] = ()) -> dict[str, Any]:
    """What one algorithm's result ran on: recorded, never a rerun trigger."""
    dists = set(READING_PATH_DISTRIBUTIONS) | set(imported_distributions(code_files))
    dists.discard("qmroct")
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "qmroct": qmroct_version(),
        "packages": distribution_versions(dists),
        # What this process's qmroct code hashes to: equal to the identity's pipeline_checksum
        # (computed by the head) unless a worker runs other qmroct code (a stale image).
        "qmroct_pipeline": cached_pipeline_checksum(algo.runtime),
        # The whole environment in one value: equal to the head's run manifest entry when
        # the worker had the same environment (the full list would bloat every result).
        "distributions_sha256": distributions_digest(),
    }
    if algo.runtime == "octave":
        env["octave"] = octave_version()
    if algo.runtime == "executable" and Path(algo.entry).name.startswith("run_"):
        import os

        env["matlab_runtime"] = matlab_runtime_version(
            algo.mcr_root or os.environ.get("QMROCT_MCR_ROOT")
        )
    return env


@functools.lru_cache(maxsize=None)
def distributions_digest() -> str:
    """One value for the whole environment: the sorted ``*.dist-info``/``*.egg-info`` folder
    names on sys.path (name and version each). A directory listing, not a metadata read:
    it runs in every compute job."""
    import os

    names = set()
    for entry in sys.path:
        try:
            names.update(
                n for n in os.listdir(entry or ".") if n.endswith((".dist-info", ".egg-info"))
            )
        except OSError:
            continue
    return "sha256:" + hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def environment_key(env: dict[str, Any]) -> dict[str, Any]:
    """The part of an environment that can change an algorithm's numbers: Python, the
    packages it and the reading path import, Octave, MATLAB Runtime, qmroct. Not the
    interpreter's path, nor unrelated packages (a test tool installed later)."""
    return {k: v for k, v in env.items() if k not in {"executable", "distributions_sha256"}}
