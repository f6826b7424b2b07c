"""``qmroct freeze NAME``: a result set a paper can cite, as a Provenance Run Crate.

``frozen/NAME/`` is a Workflow Run RO-Crate conforming to the Provenance Run Crate 0.5
profile (https://w3id.org/ro/wfrun/provenance/0.5), written with ro-crate-py:

* the computational workflow: ``workflow/`` holds the Snakefile (the crate's mainEntity),
  rules, scripts, envs, the config, the selected algorithms' code and qmroct's own source,
  so the crate alone can recompute its numbers (``qmroct rerun``);
* one ``HowToStep`` and tool per workflow step (discover, ``compute_<algorithm>``,
  aggregate), one ``CreateAction`` per job with its inputs and outputs, each wrapped in a
  ``ControlAction``, all organised by Snakemake (the ``OrganizeAction``), and the workflow
  run itself as the ``CreateAction`` whose instrument is the Snakefile;
* every KQI file, the session manifests, the table of the frozen set and the report as
  files with sha256, the run manifests that produced them, and the Python environment:
  what was installed and qmroct's hashed locks (``environment/lock-*.txt``, qmroct.envlock);
* ``frozen.json``: qmroct's own index of the set (selection, identities, tolerances, git
  state), which ``qmroct rerun`` reads.

A set that mixes algorithm identities or environments for one algorithm, or that was
made from a checkout with uncommitted changes, is refused: its numbers would not come
from one recorded thing. ``--allow-mixed`` / ``--allow-dirty`` override and record it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from qmroct.checksums import file_digest
from qmroct.provenance import identity
from qmroct.provenance.run_manifest import RUNS_DIR, redact

FROZEN_DIR = Path("frozen")
INDEX_NAME = "frozen.json"
INDEX_SCHEMA = "qmroct.frozen/1"
WORKFLOW_PARTS = ("Snakefile", "rules", "scripts", "envs", "pyproject.toml")
PROFILES = {  # versioned permalinks the crate conforms to (w3id.org/ro/wfrun, w3id.org/workflowhub)
    "https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
    "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
    "https://w3id.org/ro/wfrun/provenance/0.5": "Provenance Run Crate",
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": "Workflow RO-Crate",
}
DEFAULT_LICENSE = "https://spdx.org/licenses/MIT"
CRATE_VERSION = "1.1"


class FreezeError(ValueError):
    """A result set that cannot be frozen as asked; the message says why and what to do."""


@dataclass
class Selection:
    projects: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)  # labels or project/label
    algorithms: list[str] = field(default_factory=list)
    study: str | None = None


@dataclass
class FrozenResult:
    project: str
    session_key: str  # the session's folder name under results/
    algorithm: str
    path: Path
    doc: dict[str, Any]

    @property
    def rel(self) -> str:
        return f"results/kqi/{self.project}/{self.session_key}/{self.algorithm}.json"


def select_results(workdir: Path, settings, selection: Selection) -> list[FrozenResult]:
    """The existing result files of the selection; missing ones are an error (a set with
    gaps cannot be cited as 'all sessions')."""
    from qmroct.discovery import read_session_index

    index = workdir / "results" / "discovery" / "sessions.tsv"
    if not index.is_file():
        raise FreezeError(f"{index} not found: run the workflow (snakemake) before freezing")
    algorithms = list(selection.algorithms or sorted(settings.algorithms))
    projects = list(selection.projects or settings.raw["projects"])
    if selection.study:
        if selection.study not in settings.studies:
            raise FreezeError(
                f"unknown study {selection.study!r} (config has: "
                f"{', '.join(sorted(settings.studies)) or 'none'})"
            )
        study = settings.studies[selection.study]
        projects = [p for p in projects if p in study.projects]
        named = sorted({c.column.split(".", 1)[0] for c in study.criteria})
        algorithms = [a for a in algorithms if a in named] if selection.algorithms else named
    unknown = sorted(set(algorithms) - set(settings.algorithms))
    if unknown:
        raise FreezeError(f"algorithm(s) not declared in config.yaml: {', '.join(unknown)}")
    pairs = [(p, s) for p, s in read_session_index(index) if p in projects]
    if selection.sessions:
        wanted = set(selection.sessions)
        pairs = [(p, s) for p, s in pairs if s in wanted or f"{p}/{s}" in wanted]
        found = {s for _, s in pairs} | {f"{p}/{s}" for p, s in pairs}
        missing_sessions = sorted(wanted - found)
        if missing_sessions:
            raise FreezeError(
                f"session(s) not in the discovered archive: {', '.join(missing_sessions)}"
            )
    if not pairs or not algorithms:
        raise FreezeError("the selection is empty (no session or no algorithm)")
    results, missing = [], []
    for project, key in pairs:
        for algorithm in algorithms:
            path = workdir / "results" / "kqi" / project / key / f"{algorithm}.json"
            if not path.is_file():
                missing.append(f"{project}/{key}/{algorithm}")
                continue
            results.append(
                FrozenResult(project, key, algorithm, path, json.loads(path.read_text()))
            )
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise FreezeError(f"{len(missing)} result(s) missing ({shown}): run the workflow first")
    return results


def mixtures(results: list[FrozenResult], settings) -> list[str]:
    """Per algorithm: more than one identity (including the workflow's current one, which
    the crate's code has) or more than one environment among the results."""
    from qmroct.compute import algorithm_identity

    problems = []
    for name in sorted({r.algorithm for r in results}):
        own = [r for r in results if r.algorithm == name]
        current = algorithm_identity(settings.algorithms[name], settings.algorithm_params(name))
        idents: dict[str, int] = {}
        for r in own:
            key = json.dumps(r.doc["algorithm"], sort_keys=True)
            idents[key] = idents.get(key, 0) + 1
        stale = sum(n for key, n in idents.items() if json.loads(key) != current)
        if len(idents) > 1 or stale:
            versions = sorted({json.loads(k)["version"] for k in idents})
            problems.append(
                f"{name}: {len(idents)} identities among {len(own)} results (versions "
                f"{', '.join(versions)}); {stale} differ from the workflow's current code, "
                f"params or qmroct pipeline (rerun snakemake to bring them up to date)"
            )
        foreign = sum(
            1
            for r in own
            if (r.doc.get("provenance", {}).get("environment") or {}).get(
                "qmroct_pipeline", r.doc["algorithm"].get("pipeline_checksum")
            )
            != r.doc["algorithm"].get("pipeline_checksum")
        )
        if foreign:
            problems.append(
                f"{name}: {foreign} results were computed by qmroct code other than the "
                f"workflow's (a worker with another qmroct installed?)"
            )
        envs = {
            json.dumps(
                identity.environment_key(r.doc.get("provenance", {}).get("environment") or {}),
                sort_keys=True,
            )
            for r in own
        }
        if len(envs) > 1:
            problems.append(
                f"{name}: results computed in {len(envs)} different environments "
                f"(Python, package or runtime versions differ)"
            )
    return problems


def freeze(
    name: str,
    workdir: Path = Path("."),
    selection: Selection | None = None,
    allow_mixed: bool = False,
    allow_dirty: bool = False,
) -> Path:
    """Write ``frozen/NAME/`` and return its path; raises FreezeError with the reason."""
    from qmroct.config import load_settings

    workdir = Path(workdir).resolve()
    if not name or "/" in name or name.startswith("."):
        raise FreezeError(f"bad name {name!r}: one folder name such as paper1")
    target = workdir / FROZEN_DIR / name
    if target.exists():
        raise FreezeError(
            f"{target} exists: a frozen set is never overwritten (choose another name)"
        )
    settings = load_settings(workdir / "config.yaml", workdir)
    results = select_results(workdir, settings, selection or Selection())

    notes: list[str] = []
    mixed = mixtures(results, settings)
    if mixed and not allow_mixed:
        raise FreezeError(
            "the result set mixes identities or environments:\n  "
            + "\n  ".join(mixed)
            + "\n(--allow-mixed freezes it anyway and records this)"
        )
    notes += [f"mixed: {m}" for m in mixed]
    git = identity.git_state(workdir)
    diff = None
    if git and git["dirty"]:
        if not allow_dirty:
            raise FreezeError(
                f"{workdir} has uncommitted changes (git status): commit them, or "
                "--allow-dirty to record the diff in the crate"
            )
        diff = subprocess.run(
            ["git", "-C", str(workdir), "diff", "HEAD", "--binary"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        notes.append(
            "dirty: the checkout had uncommitted changes; workflow/uncommitted.diff holds them"
        )
    qmroct_git = identity.git_state(identity.PACKAGE_ROOT)

    staging = target.with_name(f".{name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        _write(
            staging,
            workdir,
            name,
            settings,
            results,
            selection or Selection(),
            git,
            qmroct_git,
            diff,
            notes,
        )
        staging.rename(target)  # all or nothing: a half-written crate is never left under its name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _copy_code(workdir: Path, settings, algorithms: list[str], out: Path) -> None:
    from qmroct.algorithms.manifest import MANIFEST, code_files

    out.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        source = workdir / part
        if source.is_dir():
            shutil.copytree(source, out / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            shutil.copy2(source, out / part)
    for name in algorithms:
        algo = settings.algorithms[name]
        for rel, path in code_files(algo.path, algo.shared):
            dest = out / "algorithms" / (rel if rel.startswith("_shared/") else f"{name}/{rel}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        shutil.copy2(algo.path / MANIFEST, out / "algorithms" / name / MANIFEST)
    # qmroct's own source, as imported (the pipeline checksum covers part of it)
    shutil.copytree(
        identity.PACKAGE_ROOT,
        out / "src" / "qmroct",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )


def _tolerances(settings, algorithms: list[str]) -> dict[str, Any]:
    out = {}
    for name in algorithms:
        manifest = settings.algorithms[name].manifest
        out[name] = {
            "default": manifest.get("tolerance") or {},
            "kqis": {k["name"]: k["tolerance"] for k in manifest["kqis"] if k.get("tolerance")},
        }
    return out


def _write(
    out: Path,
    workdir: Path,
    name: str,
    settings,
    results: list[FrozenResult],
    selection: Selection,
    git,
    qmroct_git,
    diff: str | None,
    notes: list[str],
) -> None:
    from rocrate.rocrate import ROCrate

    from qmroct.aggregate import tidy_table
    from qmroct.fileio import now_iso

    algorithms = sorted({r.algorithm for r in results})
    code_dir = out / "workflow"
    _copy_code(workdir, settings, algorithms, code_dir)
    config = redact(settings.raw)
    config["algorithms"] = {a: settings.raw["algorithms"].get(a) or {} for a in algorithms}
    if "algorithm_paths" in config:  # the crate holds them all in workflow/algorithms/
        config["algorithm_paths"] = ["algorithms"]
    # Only studies whose criteria name frozen algorithms: the frozen config must pass check-config.
    config["studies"] = {
        study: spec
        for study, spec in (config.get("studies") or {}).items()
        if {c.split(".", 1)[0].strip() for c in spec.get("criteria") or []} <= set(algorithms)
    }
    (code_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if diff is not None:
        (code_dir / "uncommitted.diff").write_text(diff)

    # results: KQI files with their extra outputs, the session manifests, a table of the set
    copied: dict[str, Path] = {}
    for r in results:
        dest = out / r.rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(r.path, dest)
        copied[r.rel] = dest
        extras = r.path.with_suffix(".files")
        if extras.is_dir():
            shutil.copytree(extras, dest.with_suffix(".files"))
    sessions = sorted({(r.project, r.session_key) for r in results})
    for project, key in sessions:
        rel = f"results/discovery/sessions/{project}/{key}.json"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(workdir / rel, out / rel)
    declared = {a: {k.name: k.unit for k in settings.algorithms[a].kqis} for a in algorithms}
    table = tidy_table([copied[r.rel] for r in results], declared)
    (out / "results" / "tables").mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results" / "tables" / "kqi.tsv", sep="\t", index=False, na_rep="NA")
    report = workdir / "results" / "report" / "index.html"
    if report.is_file():
        (out / "results" / "report").mkdir(parents=True)
        shutil.copy2(report, out / "results" / "report" / "index.html")
    digests = {r.rel: file_digest(copied[r.rel]) for r in results}
    runs = _run_manifests(workdir, digests, out)
    env_dir = out / "environment"
    env_dir.mkdir()
    installed = identity.installed_distributions()
    (env_dir / "requirements.txt").write_text("\n".join(installed) + "\n")
    environment_lock = _copy_locks(env_dir, installed)

    index = {
        "schema": INDEX_SCHEMA,
        "name": name,
        "created": now_iso(),
        "selection": {
            "projects": selection.projects,
            "sessions": selection.sessions,
            "algorithms": selection.algorithms,
            "study": selection.study,
        },
        "git": git,
        "qmroct_source_git": qmroct_git,
        "qmroct_version": identity.qmroct_version(),
        "original_workdir": str(workdir),
        "archive": redact(settings.raw["archive"]),
        "notes": notes,
        "algorithms": {
            a: sorted(
                {
                    json.dumps(r.doc["algorithm"], sort_keys=True)
                    for r in results
                    if r.algorithm == a
                }
            )
            for a in algorithms
        },
        "tolerance": _tolerances(settings, algorithms),
        "sessions": {
            f"{p}/{k}": json.loads(
                (out / f"results/discovery/sessions/{p}/{k}.json").read_text()
            ).get("fingerprint")
            for p, k in sessions
        },
        "results": [
            {
                "path": r.rel,
                "project": r.project,
                "session": r.session_key,
                "algorithm": r.algorithm,
                "sha256": digests[r.rel],
            }
            for r in results
        ],
        "run_manifests": runs,
        "environment_lock": environment_lock,
    }
    index["algorithms"] = {a: [json.loads(s) for s in v] for a, v in index["algorithms"].items()}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=1))

    # RO-Crate 1.1: the version the Workflow Run Crate profiles (0.5) are defined on; their
    # validators check the 1.1 descriptor and 1.1's Bioschemas IRIs.
    crate = ROCrate(version=CRATE_VERSION)
    _describe(crate, out, name, settings, results, index, runs)
    crate.metadata.write(out)  # ro-crate-metadata.json; the files it describes are in place


def _run_manifests(workdir: Path, digests: dict[str, str], out: Path) -> list[str]:
    """Copy the run manifests that produced (or last confirmed) any frozen result file."""
    kept = []
    for path in sorted((workdir / RUNS_DIR).glob("*/manifest.json")):
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue
        files = doc.get("result_files") or {}
        if any(
            files.get(rel, {}).get("sha256") == digest and files[rel].get("computed_in_this_run")
            for rel, digest in digests.items()
        ):
            rel = f"results/runs/{path.parent.name}/manifest.json"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out / rel)
            kept.append(rel)
    return kept


# ------------------------------------------------------------------ the RO-Crate graph


def _copy_locks(env_dir: Path, installed: list[str]) -> dict[str, Any]:
    """The Python locks of the qmroct that froze the set (qmroct.envlock) beside the list of
    what was installed, and how that differs from the runtime lock (what the KQIs depend
    on; [] when the environment was installed from it)."""
    from qmroct import envlock

    out: dict[str, Any] = {}
    for kind, source in (("runtime", envlock.RUNTIME_LOCK), ("dev", envlock.DEV_LOCK)):
        dest = env_dir / f"lock-{kind}.txt"
        shutil.copyfile(source, dest)
        out[kind] = {"path": f"environment/{dest.name}", "sha256": file_digest(dest)}
    pins = envlock.read_lock(envlock.RUNTIME_LOCK)
    out["installed_differs_from_runtime_lock"] = envlock.differences(pins, installed)
    return out


def _describe(
    crate, out: Path, name: str, settings, results: list[FrozenResult], index: dict, runs: list[str]
) -> None:
    """The Provenance Run Crate graph over the files already written to ``out``."""
    from rocrate.model.contextentity import ContextEntity

    def entity(identifier: str, props: dict[str, Any]):
        return crate.add(ContextEntity(crate, identifier, properties=props))

    def data_file(rel: str, props: dict[str, Any] | None = None):
        path = out / rel
        # No source: the file is already in place; the crate only describes it.
        return crate.add_file(
            None,
            rel,
            properties={
                "name": rel,
                "sha256": file_digest(path),
                "contentSize": str(path.stat().st_size),
                **(props or {}),
            },
        )

    root = crate.root_dataset
    root["name"] = f"qmroct frozen result set {name}"
    root["description"] = (
        f"KQIs of {len({(r.project, r.session_key) for r in results})} OCT sessions by "
        f"{', '.join(sorted({r.algorithm for r in results}))}, frozen with qmroct "
        f"{index['qmroct_version']}; recompute with `qmroct rerun frozen/{name}`."
    )
    root["license"] = DEFAULT_LICENSE
    root["datePublished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    profiles = [
        entity(uri, {"@type": "CreativeWork", "name": title, "version": uri.rsplit("/", 1)[1]})
        for uri, title in PROFILES.items()
    ]
    root["conformsTo"] = profiles

    # HowTo too: the Provenance Run Crate's workflow lists its steps (schema.org HowToStep)
    workflow = crate.add_workflow(
        None,
        "workflow/Snakefile",
        main=True,
        lang="snakemake",
        lang_version=_version("snakemake"),
        properties={"@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"]},
    )
    workflow["name"] = "qmroct workflow"
    workflow["description"] = (
        "Discover OCT sessions, compute KQIs per session and algorithm, tabulate."
    )
    qmroct_app = entity(
        "#qmroct",
        {
            "@type": "SoftwareApplication",
            "name": "qmroct",
            "softwareVersion": index["qmroct_version"],
        },
    )
    snakemake_app = entity(
        "#snakemake",
        {
            "@type": "SoftwareApplication",
            "name": "Snakemake",
            "softwareVersion": _version("snakemake"),
            "url": "https://snakemake.github.io",
        },
    )
    environment = data_file(
        "environment/requirements.txt",
        {
            "description": "Every Python distribution installed where the crate was frozen "
            "(name==version)"
        },
    )
    locks = [
        data_file(
            index["environment_lock"][kind]["path"],
            {
                "encodingFormat": "text/plain",
                "description": f"The {what} Python lock of this qmroct: every transitive "
                "distribution, exact version and sha256 hashes (pip install --require-hashes -r)",
            },
        )
        for kind, what in (("runtime", "runtime"), ("dev", "development (runtime + tests)"))
    ]
    for path in sorted((out / "workflow").rglob("*")):  # the rest of the workflow's code
        if path.is_file() and path.name != "Snakefile":
            data_file(path.relative_to(out).as_posix())
    frozen_index = data_file(
        INDEX_NAME, {"description": "qmroct's index of the frozen set (read by qmroct rerun)"}
    )
    manifests = [
        data_file(rel, {"encodingFormat": "application/json", "description": "qmroct run manifest"})
        for rel in runs
    ]

    # steps and tools: discover, one compute rule per algorithm, aggregate
    def step(rule: str, position: int, props: dict[str, Any]):
        tool = entity(f"#tool-{rule}", {"@type": "SoftwareApplication", "name": rule, **props})
        how = entity(
            f"#step-{rule}",
            {"@type": "HowToStep", "name": rule, "position": str(position), "workExample": tool},
        )
        return tool, how

    tools, steps = {}, {}
    tools["discover"], steps["discover"] = step(
        "discover", 0, {"description": "list the archive's sessions"}
    )
    for i, algorithm in enumerate(sorted({r.algorithm for r in results}), start=1):
        algo = settings.algorithms[algorithm]
        rule = f"compute_{algorithm}"
        tools[rule], steps[rule] = step(
            rule,
            i,
            {
                "description": algo.description or f"KQIs of {algorithm}",
                "softwareVersion": algo.version,
                "identifier": algo.code_checksum,
                "softwareRequirements": qmroct_app,
            },
        )
    tools["aggregate"], steps["aggregate"] = step(
        "aggregate", len(steps), {"description": "tidy KQI table"}
    )
    workflow["hasPart"] = list(tools.values())  # the code files are parts of the root dataset
    workflow["step"] = list(steps.values())

    controls = []

    def job(rule: str, ident: str, objects: list, products: list, props: dict[str, Any]):
        action = crate.add_action(
            tools[rule],
            identifier=ident,
            object=objects,
            result=products,
            properties={"@type": "CreateAction", "name": f"{rule} {ident.lstrip('#')}", **props},
        )
        controls.append(
            entity(
                f"#control-{ident.lstrip('#')}",
                {
                    "@type": "ControlAction",
                    "name": f"orchestrate {ident.lstrip('#')}",
                    "instrument": steps[rule],
                    "object": action,
                },
            )
        )
        return action

    session_files = {}
    for project, key in sorted({(r.project, r.session_key) for r in results}):
        rel = f"results/discovery/sessions/{project}/{key}.json"
        session_files[(project, key)] = data_file(
            rel,
            {
                "encodingFormat": "application/json",
                "description": f"session {project}/{key}: scans, file checksums, fingerprint",
            },
        )
    job("discover", "#job-discover", [], list(session_files.values()), {})
    kqi_files, starts, ends = [], [], []
    for r in results:
        prov = r.doc.get("provenance", {})
        kqi = data_file(
            r.rel,
            {
                "encodingFormat": "application/json",
                "description": f"KQIs of {r.algorithm} {r.doc['algorithm']['version']} "
                f"for {r.project}/{r.session_key} ({r.doc.get('status')})",
            },
        )
        kqi_files.append(kqi)
        props = {
            k: v
            for k, v in (("startTime", prov.get("start_time")), ("endTime", prov.get("end_time")))
            if v
        }
        starts += [prov["start_time"]] if prov.get("start_time") else []
        ends += [prov["end_time"]] if prov.get("end_time") else []
        job(
            f"compute_{r.algorithm}",
            f"#job-{r.algorithm}-{r.project}-{r.session_key}",
            [session_files[(r.project, r.session_key)]],
            [kqi],
            props,
        )
    table = data_file(
        "results/tables/kqi.tsv",
        {
            "encodingFormat": "text/tab-separated-values",
            "description": "one row per session, scan, algorithm and KQI",
        },
    )
    job("aggregate", "#job-aggregate", kqi_files, [table], {})
    outputs = [table, *kqi_files]
    if (out / "results" / "report" / "index.html").is_file():
        outputs.append(
            data_file(
                "results/report/index.html",
                {
                    "encodingFormat": "text/html",
                    "description": "the run's HTML report (all sessions of that run)",
                },
            )
        )

    run = crate.add_action(
        workflow,
        identifier="#workflow-run",
        object=list(session_files.values()),
        result=outputs,
        properties={
            "@type": "CreateAction",
            "name": f"qmroct workflow run (frozen as {name})",
            **({"startTime": min(starts)} if starts else {}),
            **({"endTime": max(ends)} if ends else {}),
            "description": "; ".join(index["notes"])
            or "one identity and environment per algorithm, clean checkout",
        },
    )
    run["subjectOf"] = manifests + [frozen_index, environment, *locks]
    entity(
        "#organize",
        {
            "@type": "OrganizeAction",
            "name": "Snakemake run",
            "instrument": snakemake_app,
            "object": controls,
            "result": run,
        },
    )


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"
