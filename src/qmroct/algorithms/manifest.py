"""Finding algorithms and reading their manifests (``algorithms/<name>/algorithm.yaml``)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from qmroct.algorithms.schema import validate_manifest

MANIFEST = "algorithm.yaml"
SHARED_DIR = "_shared"
IGNORED_DIRS = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
IGNORED_SUFFIXES = {".pyc", ".pyo"}
# Not what runs: the algorithm's own tests and docs. Editing them must not recompute every
# session (issue 16), so they are outside the code checksum and do not travel with jobs.
NOT_CODE_DIRS = {"tests", "test", "docs", "doc"}
NOT_CODE_SUFFIXES = {".md", ".rst"}
NOT_CODE_NAMES = {"conftest.py", "LICENSE", "LICENSE.txt", "README", "README.txt"}

DEFAULT_RESOURCES = {"threads": 1, "mem_mb": 1024, "runtime_s": 10.0}
DEFAULT_FUNCTION = {"python": "compute", "octave": None, "executable": None}


class AlgorithmError(Exception):
    """An algorithm that cannot be loaded (unknown name, invalid manifest)."""


class AlgorithmNotFound(AlgorithmError, LookupError):
    def __init__(self, name: str, available: list[str], search_paths: list[Path]) -> None:
        where = ", ".join(str(p) for p in search_paths) or "<no search path>"
        known = ", ".join(available) if available else "none"
        super().__init__(f"unknown algorithm {name!r} (searched {where}); available: {known}")
        self.name = name
        self.available = available


class ManifestError(AlgorithmError, ValueError):
    def __init__(self, path: Path, problems: list[str] | str) -> None:
        if isinstance(problems, str):
            problems = [problems]
        super().__init__(f"{path}: invalid algorithm manifest: " + "; ".join(problems))
        self.path = path
        self.problems = problems


@dataclass(frozen=True)
class KQISpec:
    name: str
    unit: str
    higher_is_better: bool | None
    valid_range: tuple[float | None, float | None] | None
    description: str = ""


_THRESHOLD_RE = re.compile(r"^\s*(>=|<=|>|<|==)\s*(-?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*$")


def parse_threshold(text: str) -> tuple[str, float]:
    """``">= 15"`` -> (">=", 15.0); raises ValueError for anything else."""
    m = _THRESHOLD_RE.match(text)
    if not m:
        raise ValueError(f"bad threshold {text!r}: expected e.g. '>= 15'")
    return m.group(1), float(m.group(2))


def default_search_paths() -> list[Path]:
    """``$QMROCT_ALGORITHMS`` (os.pathsep-separated), else ./algorithms."""
    env = os.environ.get("QMROCT_ALGORITHMS")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [Path("algorithms")]


def _candidates(search_paths: Iterable[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in search_paths:
        root = Path(root)
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.name.startswith(("_", ".")) or not (child / MANIFEST).is_file():
                continue
            found.setdefault(child.name, child)  # earlier search paths win
    return found


def available_algorithms(search_paths: Iterable[Path] | None = None) -> list[str]:
    """Names of every algorithm folder (with an algorithm.yaml) on the search paths."""
    paths = list(search_paths) if search_paths is not None else default_search_paths()
    return sorted(_candidates(paths))


def find_algorithm_dir(name: str, search_paths: Iterable[Path] | None = None) -> Path:
    paths = [
        Path(p) for p in (search_paths if search_paths is not None else default_search_paths())
    ]
    found = _candidates(paths)
    if name not in found:
        raise AlgorithmNotFound(name, sorted(found), paths)
    return found[name]


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        # libyaml's loader when PyYAML has it: 10x faster, and every job reads the manifests
        doc = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(path, f"cannot read: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError(path, "expected a mapping at the top level")
    if isinstance(doc.get("version"), (int, float)):
        doc["version"] = str(doc["version"])  # 1.0 written without quotes
    problems = validate_manifest(doc)
    if problems:
        raise ManifestError(path, problems)
    if doc["name"] != folder.name:
        raise ManifestError(
            path, f"name {doc['name']!r} differs from its folder name {folder.name!r}"
        )
    names = [k["name"] for k in doc["kqis"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ManifestError(path, f"KQI declared twice: {', '.join(dupes)}")
    for kqi, text in (doc.get("thresholds") or {}).items():
        if kqi not in names:
            raise ManifestError(
                path, f"threshold for undeclared KQI {kqi!r} (declared: {', '.join(names)})"
            )
        parse_threshold(text)
    _check_confined(path, folder, doc)
    entry = folder / doc["entry"]
    if doc["runtime"] == "python" and not entry.is_file():
        raise ManifestError(path, f"entry {doc['entry']!r} not found in {folder}")
    if doc["runtime"] == "octave" and not (
        entry.is_file() or (folder / (doc["entry"] + ".m")).is_file()
    ):
        raise ManifestError(path, f"entry {doc['entry']!r} (.m file) not found in {folder}")
    for shared in doc.get("shared") or []:
        if not (folder.parent / SHARED_DIR / shared).is_file():
            raise ManifestError(
                path, f"shared file {SHARED_DIR}/{shared} not found next to {folder}"
            )
    for data in doc.get("data") or []:
        if not (folder / data).is_file():
            raise ManifestError(path, f"data file {data!r} not found (relative to {folder})")
    return doc


def _inside(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def _check_confined(manifest: Path, folder: Path, doc: dict[str, Any]) -> None:
    """Every path the manifest names must resolve inside the algorithm's folder or the
    shared folder: code outside both escapes the code checksum, so editing it would leave
    stale KQIs under an unchanged identity. Symlinks are resolved before the check."""
    shared_root = folder.parent / SHARED_DIR
    checks = [("entry", doc["entry"], folder, (folder,))]
    checks += [("shared", s, shared_root, (shared_root,)) for s in doc.get("shared") or []]
    checks += [("data", d, folder, (folder, shared_root)) for d in doc.get("data") or []]
    for key, rel, base, allowed in checks:
        target = base / rel
        if Path(rel).is_absolute() or not any(_inside(target, root) for root in allowed):
            where = " or ".join(str(root) for root in allowed)
            raise ManifestError(
                manifest, f"{key} {rel!r} resolves to {target.resolve()}, outside {where}"
            )


def shared_names(folder: Path, doc: dict[str, Any]) -> list[str]:
    """Declared shared code plus data files that live in the shared folder, as names
    relative to it: everything outside the algorithm's folder that its checksum covers."""
    shared_root = (folder.parent / SHARED_DIR).resolve()
    names = list(doc.get("shared") or [])
    for data in doc.get("data") or []:
        target = (folder / data).resolve()
        if shared_root in target.parents:
            names.append(target.relative_to(shared_root).as_posix())
    return sorted(set(names))


def is_code(rel: Path) -> bool:
    """Whether a file of an algorithm folder is part of what runs (see NOT_CODE_*)."""
    if any(part in NOT_CODE_DIRS for part in rel.parts[:-1]):
        return False
    if rel.suffix in NOT_CODE_SUFFIXES | IGNORED_SUFFIXES or rel.name in NOT_CODE_NAMES:
        return False
    stem = rel.stem
    is_test = stem.startswith("test_") or stem.endswith("_test")
    return not (rel.suffix in {".py", ".m"} and is_test)


def kqi_specs(doc: dict[str, Any]) -> list[KQISpec]:
    specs = []
    for k in doc["kqis"]:
        rng = k.get("valid_range")
        specs.append(
            KQISpec(
                name=k["name"],
                unit=k["unit"],
                higher_is_better=k.get("higher_is_better"),
                valid_range=tuple(rng) if rng is not None else None,
                description=k.get("description", ""),
            )
        )
    return specs


def code_files(folder: Path, shared: Iterable[str] = ()) -> list[tuple[str, Path]]:
    """(relative name, path) of every file that makes up the algorithm's code, sorted:
    the folder without its tests and docs (:func:`is_code`), plus the shared files."""
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        for fn in filenames:
            p = Path(dirpath) / fn
            rel = p.relative_to(folder)
            if not is_code(rel):
                continue
            files.append((rel.as_posix(), p))
    for s in shared:
        files.append((f"{SHARED_DIR}/{s}", folder.parent / SHARED_DIR / s))
    return sorted(files)


def code_checksum(folder: Path, shared: Iterable[str] = ()) -> str:
    """sha256 over the sorted relative paths and bytes of every code file (plus declared
    shared files)."""
    h = hashlib.sha256()
    for rel, path in code_files(folder, shared):
        data = path.read_bytes()
        h.update(rel.encode())
        h.update(b"\0")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return "sha256:" + h.hexdigest()
