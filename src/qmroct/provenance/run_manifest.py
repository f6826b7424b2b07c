"""``results/runs/<run-id>/manifest.json``: what one workflow run was, for a paper's methods.

Written by the Snakefile's hooks: :func:`start_run` (onstart) writes it with the head's
side (who, where, which command, config, code, environment, executor) and outcome
``running``, so a crashed run still leaves a record; :func:`finish_run` (onsuccess /
onerror) adds what the results carry (algorithm identities, session fingerprints, result
checksums, and the environment of every worker that computed results in this run) and
the outcome counts. Secrets never reach it: config values whose key names a secret and
passwords in URLs are replaced by ``<redacted>``.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import re
import secrets
import socket
import sys
import time
from dataclasses import fields, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qmroct.checksums import file_digest
from qmroct.provenance import identity

RUNS_DIR = Path("results/runs")
MANIFEST_SCHEMA = "qmroct.run-manifest/1"
RUN_ID_ENV = "QMROCT_RUN_ID"  # seen by the head's own jobs (the report links the manifest)
REDACTED = "<redacted>"
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|credential|api[_-]?key|private", re.IGNORECASE)
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):[^@/\s]+@", re.IGNORECASE
)
# Key names that are public even though they match the pattern above (paths, not secrets).
_PUBLIC_KEYS = {"openstack_private_key", "private_key"}

_current: dict[str, Any] = {}


RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def new_run_id() -> str:
    """Sortable by time, unique across hosts: ``20261201T145012Z-3fa2c1``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def run_id_for_this_run(workdir: Path = Path(".")) -> str:
    """The id whoever started this run gave it (``qmroct watch`` sets QMROCT_RUN_ID, so its
    logs and the manifest share one name), else a new one. An inherited id whose manifest
    already exists is never reused: a run record is not overwritten."""
    inherited = os.environ.get(RUN_ID_ENV, "")
    if RUN_ID.fullmatch(inherited) and not manifest_path(inherited, workdir).exists():
        return inherited
    return new_run_id()


def redact(value: Any, key: str = "") -> Any:
    """A copy of ``value`` without secrets (by key name, and passwords inside URLs)."""
    if key and _SECRET_KEY.search(key) and key.lower().replace("-", "_") not in _PUBLIC_KEYS:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and value != "":
            return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)
    return value


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with values of secret-looking options and URL passwords removed."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        option, eq, value = arg.partition("=")
        if (
            option.startswith("-")
            and _SECRET_KEY.search(option)
            and option.lstrip("-").replace("-", "_") not in _PUBLIC_KEYS
        ):
            if eq:
                out.append(f"{option}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redact(arg))
    return out


def _profile(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        for flag in ("--profile", "--workflow-profile"):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return os.environ.get("SNAKEMAKE_PROFILE")


def executor_info(workflow: Any, argv: list[str]) -> dict[str, Any]:
    """Which executor ran the jobs, its settings (image, flavors, ...) and the profile."""
    plugin = getattr(workflow, "executor_plugin", None)
    info: dict[str, Any] = {
        "name": getattr(plugin, "name", None) or "local",
        "profile": _profile(argv),
    }
    settings = getattr(workflow, "executor_settings", None)
    if settings is not None and is_dataclass(settings):
        info["settings"] = redact(
            {f.name: _plain(getattr(settings, f.name)) for f in fields(settings)}
        )
    return info


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def head_environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "os": platform.platform(),
        "qmroct": identity.qmroct_version(),
        "snakemake": _snakemake_version(),
        "octave": identity.octave_version(),
        "matlab_runtime": identity.matlab_runtime_version(os.environ.get("QMROCT_MCR_ROOT")),
        "distributions": identity.installed_distributions(),
        "distributions_sha256": identity.distributions_digest(),
    }


def _snakemake_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("snakemake")
    except metadata.PackageNotFoundError:
        return "unknown"


def manifest_path(run_id: str, root: Path = Path(".")) -> Path:
    return root / RUNS_DIR / run_id / "manifest.json"


def start_run(
    config: dict[str, Any],
    workflow: Any = None,
    workdir: Path = Path("."),
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Write the manifest of a starting run (outcome ``running``) and remember it."""
    from qmroct.fileio import now_iso, write_json_atomic

    argv = list(sys.argv if argv is None else argv)
    run_id = run_id_for_this_run(workdir)
    os.environ[RUN_ID_ENV] = run_id
    doc = {
        "schema": MANIFEST_SCHEMA,
        "run_id": run_id,
        "start_time": now_iso(),
        "end_time": None,
        "outcome": "running",
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "command_line": redact_argv(argv),
        "working_directory": str(Path(workdir).resolve()),
        "config": redact(config),
        "git": identity.git_state(workdir),
        "head": head_environment(),
        "executor": executor_info(workflow, argv),
    }
    write_json_atomic(manifest_path(run_id, workdir), doc)
    _current.clear()
    _current.update(doc=doc, workdir=Path(workdir), started=time.time())
    return doc


def result_set(workdir: Path, algorithms: list[str]) -> list[Path]:
    """The result files of the discovered sessions x configured algorithms that exist."""
    from qmroct.discovery import read_session_index

    index = workdir / "results" / "discovery" / "sessions.tsv"
    if not index.is_file():
        return []
    paths = (
        workdir / "results" / "kqi" / p / s / f"{a}.json"
        for p, s in read_session_index(index)
        for a in algorithms
    )
    return sorted(p for p in paths if p.is_file())


def finish_run(failed: bool, algorithms: list[str]) -> dict[str, Any] | None:
    """Complete the current run's manifest (no-op when :func:`start_run` did not run)."""
    from qmroct.fileio import now_iso, write_json_atomic

    if not _current:
        return None
    doc, workdir = _current["doc"], _current["workdir"]
    doc["end_time"] = now_iso()
    doc["outcome"] = "failed" if failed else "succeeded"
    try:
        doc.update(
            results_section(result_set(workdir, algorithms), workdir, since=_current["started"])
        )
    except Exception as exc:  # the other end-of-run hooks (token invalidation) must still run
        doc["results_error"] = f"{type(exc).__name__}: {exc}"
        print(f"qmroct: run manifest incomplete: {doc['results_error']}", file=sys.stderr)
    path = manifest_path(doc["run_id"], workdir)
    try:  # keep the sections other hooks merged in meanwhile (qmroct.runhistory's "summary")
        merged = {**json.loads(path.read_text()), **doc}
    except (OSError, ValueError):
        merged = doc
    write_json_atomic(path, merged)
    _current.clear()
    return merged


def results_section(result_paths: list[Path], workdir: Path, since: float) -> dict[str, Any]:
    """Identities, fingerprints, checksums, worker environments and counts from the results.

    A result computed by this run is one whose file was written after the run started;
    the others were up to date and are listed too (they are part of the result set).
    """
    algorithms: dict[str, list[dict[str, Any]]] = {}
    sessions: dict[str, str] = {}
    files: dict[str, dict[str, Any]] = {}
    workers: dict[str, dict[str, Any]] = {}
    status_counts: dict[str, int] = {}
    computed = 0
    for path in sorted(result_paths):
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            files[_rel(path, workdir)] = {"error": f"unreadable: {exc}"}
            continue
        ident = doc.get("algorithm", {})
        known = algorithms.setdefault(ident.get("name", "?"), [])
        if ident not in known:
            known.append(ident)
        session = doc.get("session", {})
        sessions[f"{session.get('project')}/{session.get('label')}"] = session.get("fingerprint")
        fresh = Path(path).stat().st_mtime >= since
        computed += fresh
        files[_rel(path, workdir)] = {
            "sha256": file_digest(Path(path)),
            "status": doc.get("status"),
            "computed_in_this_run": fresh,
        }
        status_counts[doc.get("status", "unknown")] = (
            status_counts.get(doc.get("status", "unknown"), 0) + 1
        )
        prov = doc.get("provenance", {})
        if fresh:
            host = prov.get("host", "unknown")
            full = prov.get("environment") or {}
            env = identity.environment_key(full)
            worker = workers.setdefault(
                host,
                {"platform": prov.get("platform"), "environments": [], "distributions_sha256": []},
            )
            if env and env not in worker["environments"]:
                worker["environments"].append(env)
            digest = full.get("distributions_sha256")
            if digest and digest not in worker["distributions_sha256"]:
                worker["distributions_sha256"].append(digest)
    return {
        "algorithms": algorithms,
        "sessions": sessions,
        "result_files": files,
        "workers": workers,
        "outcome_counts": {
            "results": len(files),
            "computed_in_this_run": computed,
            **status_counts,
        },
    }


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- the report's section


def versions_html(result_paths: list[Path], run_id: str | None, report_dir: Path) -> str:
    """The report's "Algorithm versions" section: each algorithm's identity and results,
    environment drift (results of one algorithm computed in different environments), and
    a link to the run manifest of the run that made the report."""
    import html

    per_algo: dict[str, dict[str, Any]] = {}
    for path in result_paths:
        doc = json.loads(Path(path).read_text())
        ident = doc.get("algorithm", {})
        entry = per_algo.setdefault(ident.get("name", "?"), {"identities": {}, "environments": {}})
        key = (ident.get("version"), ident.get("code_checksum"), ident.get("pipeline_checksum"))
        entry["identities"][key] = entry["identities"].get(key, 0) + 1
        env = identity.environment_key(doc.get("provenance", {}).get("environment") or {})
        env_key = json.dumps(env, sort_keys=True)
        entry["environments"][env_key] = entry["environments"].get(env_key, 0) + 1

    short = lambda checksum: html.escape(str(checksum or "")[7:19])  # noqa: E731
    parts = ["<h2>Algorithm versions</h2>"]
    if run_id:
        manifest = manifest_path(run_id)
        href = os.path.relpath(manifest, report_dir)
        parts.append(
            f"<p>Run <code>{html.escape(run_id)}</code>: "
            f"<a href='{html.escape(href)}'>run manifest</a> (config, code, environment, "
            f"checksums of every result).</p>"
        )
    parts.append(
        "<table><tr><th>algorithm</th><th>version</th><th>code</th><th>qmroct pipeline</th>"
        "<th>results</th></tr>"
    )
    drift = []
    for name in sorted(per_algo):
        for (version, code, pipeline), count in sorted(
            per_algo[name]["identities"].items(), key=str
        ):
            parts.append(
                f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(version))}</td>"
                f"<td><code>{short(code)}</code></td><td><code>{short(pipeline)}</code></td>"
                f"<td>{count}</td></tr>"
            )
        envs = per_algo[name]["environments"]
        if len(envs) > 1:
            drift.append((name, envs))
    parts.append("</table>")
    if drift:
        parts.append(
            "<h3 class='fail'>Environment drift</h3><p>These algorithms' results were "
            "computed in more than one environment (packages or runtimes differ):</p><ul>"
        )
        for name, envs in drift:
            variants = "; ".join(
                f"{count} results: {_env_summary(json.loads(env))}"
                for env, count in sorted(envs.items())
            )
            parts.append(f"<li><b>{html.escape(name)}</b>: {html.escape(variants)}</li>")
        parts.append("</ul>")
    return "\n".join(parts)


def _env_summary(env: dict[str, Any]) -> str:
    items = [f"python {env.get('python')}", f"qmroct {env.get('qmroct')}"]
    items += [f"{k} {v}" for k, v in sorted((env.get("packages") or {}).items())]
    items += [f"{k} {env[k]}" for k in ("octave", "matlab_runtime") if env.get(k)]
    if env.get("qmroct_pipeline"):
        items.append(f"qmroct code {str(env['qmroct_pipeline'])[7:19]}")
    return ", ".join(items)
