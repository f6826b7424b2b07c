"""Loading and checking config.yaml.

Two layers: the JSON schema (structure, unknown keys, types; applied with
``snakemake.utils.validate`` so defaults are filled in), then the checks a
schema cannot express (algorithms exist, version pins match, study criteria
name real KQIs). Both run before any job, and every message names the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from qmroct.studies import Criterion, CriterionError, parse_criterion

SCHEMA_PATH = Path(str(resources.files("qmroct") / "schemas" / "config.schema.yaml"))


class ConfigError(ValueError):
    pass


@dataclass
class Study:
    name: str
    criteria: list[Criterion]
    projects: list[str]
    description: str = ""
    set_scan_quality: bool = False


@dataclass
class Settings:
    """The checked configuration, with algorithms loaded."""

    raw: dict[str, Any]
    algorithms: dict[str, Any]  # name -> qmroct.algorithms.Algorithm
    studies: dict[str, Study] = field(default_factory=dict)

    def algorithm_params(self, name: str) -> dict[str, Any]:
        return dict((self.raw["algorithms"].get(name) or {}).get("params", {}))

    def algorithm_timeout(self, name: str) -> float:
        """Seconds one call of ``name`` may take: its timeout_s, else limits' factor x runtime_s."""
        explicit = (self.raw["algorithms"].get(name) or {}).get("timeout_s")
        if explicit is not None:
            return float(explicit)
        limits = self.raw.get("limits") or {}
        return self.algorithms[name].time_limit(
            limits.get("algorithm_timeout_factor"), limits.get("algorithm_min_timeout_s")
        )

    def algorithm_output_keep(self) -> int | None:
        """Bytes kept of an algorithm call's output, at its head and at its tail (None: default)."""
        kib = (self.raw.get("limits") or {}).get("algorithm_output_kib")
        return None if kib is None else int(kib) * 1024


def validate_schema(config: dict[str, Any]) -> None:
    """Structure check with defaults filled in; raises ConfigError naming the key."""
    import jsonschema

    from snakemake.utils import validate

    try:
        validate(config, str(SCHEMA_PATH), set_default=True)
    except Exception as exc:  # snakemake wraps jsonschema errors in WorkflowError
        cause = exc.__cause__ or exc.__context__ or exc
        if isinstance(cause, jsonschema.ValidationError):
            where = "/".join(str(p) for p in cause.absolute_path) or "(top level)"
            raise ConfigError(f"config.yaml: {where}: {cause.message}") from None
        raise ConfigError(f"config.yaml: {exc}") from None


def check_config(
    config: dict[str, Any], workflow_dir: Path | str = ".", workdir: Path | str | None = None
) -> Settings:
    """Semantic checks after the schema; returns Settings with algorithms loaded.

    ``workdir`` is where snakemake runs (relative paths in the config are
    relative to it); the current directory unless given.
    """
    from qmroct.algorithms import available_algorithms, load_algorithm

    _check_paths(config, Path(workdir) if workdir is not None else Path.cwd(), Path(workflow_dir))
    _check_server(config["archive"])
    search_paths = [Path(workflow_dir) / p for p in config.get("algorithm_paths", ["algorithms"])]
    available = available_algorithms(search_paths)
    algorithms = {}
    for name, entry in config["algorithms"].items():
        if name not in available:
            raise ConfigError(
                f"config.yaml: algorithms/{name}: unknown algorithm {name!r}; "
                f"available: {', '.join(sorted(available)) or 'none'}"
            )
        algo = load_algorithm(name, search_paths=search_paths, mcr_root=config.get("mcr_root"))
        pin = (entry or {}).get("version")
        if pin is not None and str(pin) != str(algo.version):
            # An older version is served from git history (qmroct.provenance.history).
            from qmroct.algorithms import Algorithm
            from qmroct.provenance.history import PinError, pinned_folder

            here = Path(workdir) if workdir is not None else Path.cwd()
            try:
                folder = pinned_folder(
                    algo.path, str(pin), here / (config.get("cache_dir") or ".qmroct")
                )
            except PinError as exc:
                raise ConfigError(
                    f"config.yaml: algorithms/{name}/version: pinned {pin!r} "
                    f"but {name}'s manifest says "
                    f"{algo.version!r}, and {exc}"
                ) from None
            algo = Algorithm(folder, mcr_root=config.get("mcr_root"))
        # A misspelt key would otherwise be ignored and recompute everything with the defaults.
        unknown_params = sorted(set((entry or {}).get("params") or {}) - set(algo.default_params))
        if unknown_params:
            raise ConfigError(
                f"config.yaml: algorithms/{name}/params: unknown key(s) "
                f"{', '.join(unknown_params)}; "
                f"{name}'s manifest declares: "
                f"{', '.join(sorted(algo.default_params)) or 'no params'}"
            )
        algorithms[name] = algo

    kqis = {name: {k.name for k in algo.kqis} for name, algo in algorithms.items()}
    studies = {}
    for name, study in (config.get("studies") or {}).items():
        texts = list(study.get("criteria") or [])
        if study.get("default_thresholds"):
            texts += [
                f"{a}.{kqi} {rule}"
                for a, algo in sorted(algorithms.items())
                for kqi, rule in algo.thresholds.items()
            ]
        if not texts:
            raise ConfigError(
                f"config.yaml: studies/{name}: no criteria "
                "(and no default thresholds in the declared algorithms)"
            )
        try:
            criteria = [parse_criterion(text, kqis) for text in texts]
        except CriterionError as exc:
            raise ConfigError(f"config.yaml: studies/{name}/criteria: {exc}") from None
        projects = study.get("projects") or list(config["projects"])
        unknown = sorted(set(projects) - set(config["projects"]))
        if unknown:
            raise ConfigError(
                f"config.yaml: studies/{name}/projects: {', '.join(unknown)} "
                "not in the configured projects"
            )
        if study.get("set_scan_quality") and config["archive"]["backend"] != "xnat":
            raise ConfigError(
                f"config.yaml: studies/{name}/set_scan_quality: needs the xnat archive backend"
            )
        studies[name] = Study(
            name,
            criteria,
            projects,
            study.get("description", ""),
            bool(study.get("set_scan_quality")),
        )
    return Settings(raw=config, algorithms=algorithms, studies=studies)


def _check_server(archive: dict[str, Any]) -> None:
    """An XNAT URL with user:password@ in it is refused (issue 9): never persisted."""
    if archive.get("backend") != "xnat" or not archive.get("server"):
        return
    from qmroct.archive.base import ArchiveError
    from qmroct.archive.xnat_tokens import check_server_url

    try:
        check_server_url(str(archive["server"]))
    except ArchiveError as exc:
        raise ConfigError(f"config.yaml: archive/server: {exc}") from None


def _check_paths(config: dict[str, Any], workdir: Path, workflow_dir: Path) -> None:
    """Folders the workflow deletes in or names after config values (see qmroct.scratch)."""
    from qmroct.paths import is_periodic
    from qmroct.scratch import ScratchError, check_scratch_dir

    archive = config["archive"]
    try:
        check_scratch_dir(
            config.get("scratch_dir", "scratch"),
            workdir,
            archive.get("path") if archive.get("backend") == "directory" else None,
            also_not=(workflow_dir,),
        )
    except ScratchError as exc:
        raise ConfigError(str(exc)) from None
    for project in config["projects"]:
        # a project is a wildcard value of every rule: Snakemake refuses periodic ones
        if is_periodic(project):
            raise ConfigError(
                f"config.yaml: projects: {project!r} ends in a repeated pattern, "
                "which Snakemake cannot take as a wildcard value"
            )


def load_settings(path: Path | str, workflow_dir: Path | str | None = None) -> Settings:
    """Read, schema-check and semantically check a config file (for the CLI and tests)."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    validate_schema(config)
    # snakemake runs in the config's folder: relative paths are relative to it
    return check_config(config, workflow_dir or path.parent, workdir=path.parent)
