"""``qmroct rerun frozen/NAME``: recompute a frozen result set and compare every KQI.

1. Recreate the frozen workflow in a work folder: a git worktree of the recorded commit
   when this checkout has it and the frozen tree was clean, else the crate's own copy of
   the code (``workflow/``, with qmroct's source). Either way the frozen config is used
   (write-back off: a rerun never writes into the archive) and qmroct is imported from
   the recreated source, so a later qmroct does not stand in for the frozen one.
2. Check each frozen session's fingerprint against the archive. Changed and missing
   sessions are listed and not recomputed: their new numbers would not be the same
   experiment.
3. Recompute (all sessions, or ``--sessions N`` drawn at random) with real snakemake.
4. Compare every KQI (value and per-B-scan values) with the frozen one within the
   algorithm's declared ``tolerance`` (manifest; per KQI or per algorithm): ``|a - b| <=
   max(abs, rel * max(|a|, |b|))``; undeclared: exact for integers, 1e-9 relative for
   floats. Print a table of what differs; exit 0 only when everything reproduced.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qmroct.provenance.freeze import INDEX_NAME, INDEX_SCHEMA

DEFAULT_REL = 1e-9


class RerunError(ValueError):
    """The rerun could not be carried out (not a difference in numbers)."""


@dataclass
class Difference:
    session: str
    algorithm: str
    scan: str
    kqi: str
    frozen: Any
    rerun: Any
    tolerance: str


@dataclass
class RerunReport:
    code_source: str
    workdir: Path
    compared: list[str] = field(default_factory=list)  # project/session/algorithm
    differences: list[Difference] = field(default_factory=list)
    changed_sessions: list[str] = field(default_factory=list)
    missing_sessions: list[str] = field(default_factory=list)
    kqis_compared: int = 0
    seed: int | None = None

    @property
    def reproduced(self) -> bool:
        return not (self.differences or self.changed_sessions or self.missing_sessions) and bool(
            self.compared
        )


# ------------------------------------------------------------------ tolerance


def tolerance_for(tolerances: dict[str, Any], algorithm: str, kqi: str) -> dict[str, float]:
    spec = tolerances.get(algorithm) or {}
    return dict((spec.get("kqis") or {}).get(kqi) or spec.get("default") or {})


def within(frozen: Any, rerun: Any, tol: dict[str, float]) -> bool:
    """Whether two KQI values agree under ``tol`` (see the module docstring)."""
    if frozen is None or rerun is None:
        return frozen is None and rerun is None
    if isinstance(frozen, bool) or isinstance(rerun, bool):
        return frozen == rerun
    if not tol and isinstance(frozen, int) and isinstance(rerun, int):
        return frozen == rerun  # integers (counts) reproduce exactly
    a, b = float(frozen), float(rerun)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    abs_tol = float(tol.get("abs", 0.0))
    rel_tol = float(tol.get("rel", 0.0 if tol else DEFAULT_REL))
    return abs(a - b) <= max(abs_tol, rel_tol * max(abs(a), abs(b)))


def _tol_text(tol: dict[str, float]) -> str:
    if not tol:
        return f"default (int exact, rel {DEFAULT_REL:g})"
    return ", ".join(f"{k} {v:g}" for k, v in sorted(tol.items()))


def compare_results(
    frozen: dict[str, Any], rerun: dict[str, Any], tolerances: dict[str, Any], session: str
) -> tuple[list[Difference], int]:
    """Every KQI of every scan; a scan or status that differs is a difference too."""
    algorithm = frozen["algorithm"]["name"]
    diffs: list[Difference] = []
    count = 0

    def differ(scan: str, kqi: str, a: Any, b: Any, tol: str) -> None:
        diffs.append(Difference(session, algorithm, scan, kqi, a, b, tol))

    if frozen.get("status") != rerun.get("status"):
        differ("-", "(status)", frozen.get("status"), rerun.get("status"), "exact")
    new_scans = {s["scan"]: s for s in rerun.get("scans", [])}
    for scan in frozen.get("scans", []):
        sid = scan["scan"]
        other = new_scans.pop(sid, None)
        if other is None:
            differ(sid, "(scan)", "present", "missing", "exact")
            continue
        if scan.get("status") != other.get("status"):
            differ(sid, "(status)", scan.get("status"), other.get("status"), "exact")
        kqis, new_kqis = scan.get("kqis") or {}, dict(other.get("kqis") or {})
        for kqi, value in sorted(kqis.items()):
            count += 1
            tol = tolerance_for(tolerances, algorithm, kqi)
            new = new_kqis.pop(kqi, None)
            if new is None:
                differ(sid, kqi, value.get("value"), "missing", _tol_text(tol))
                continue
            if not within(value.get("value"), new.get("value"), tol):
                differ(sid, kqi, value.get("value"), new.get("value"), _tol_text(tol))
                continue
            per_a, per_b = value.get("per_bscan") or [], new.get("per_bscan") or []
            if len(per_a) != len(per_b):
                differ(
                    sid,
                    f"{kqi}[per_bscan]",
                    f"{len(per_a)} values",
                    f"{len(per_b)} values",
                    "exact",
                )
                continue
            for i, (a, b) in enumerate(zip(per_a, per_b, strict=True)):
                if not within(a, b, tol):
                    differ(sid, f"{kqi}[bscan {i}]", a, b, _tol_text(tol))
                    break
        for kqi, new in sorted(new_kqis.items()):
            differ(sid, kqi, "absent", new.get("value"), "exact")
    for sid in sorted(new_scans):
        differ(sid, "(scan)", "absent", "present", "exact")
    return diffs, count


# ------------------------------------------------------------------ recreating the workflow


def load_index(crate: Path) -> dict[str, Any]:
    path = Path(crate) / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise RerunError(
            f"{path} not found: {crate} is not a crate written by qmroct freeze"
        ) from None
    except ValueError as exc:
        raise RerunError(f"{path}: not JSON: {exc}") from None
    if index.get("schema") != INDEX_SCHEMA:
        raise RerunError(f"{path}: schema {index.get('schema')!r}, expected {INDEX_SCHEMA!r}")
    return index


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=check, timeout=600
    )


def _has_commit(repo: Path, commit: str) -> bool:
    try:
        return _git(repo, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def recreate(crate: Path, index: dict[str, Any], code: Path, source: str, repo: Path) -> str:
    """Put the frozen workflow into ``code``; returns how ('git <commit>' or 'crate')."""
    git = index.get("git") or {}
    usable_git = (
        bool(git.get("commit")) and not git.get("dirty") and _has_commit(repo, git["commit"])
    )
    if source == "git" and not usable_git:
        why = (
            "the frozen checkout was dirty"
            if git.get("dirty")
            else (
                f"commit {git.get('commit')} is not in {repo}"
                if git.get("commit")
                else "no commit was recorded"
            )
        )
        raise RerunError(f"cannot rerun from git: {why} (use --from crate)")
    if source in ("git", "auto") and usable_git:
        _git(repo, "worktree", "add", "--detach", str(code), git["commit"])
        how = f"git {git['commit']}"
        if not (code / "src" / "qmroct").is_dir():  # a checkout without qmroct's source
            shutil.copytree(crate / "workflow" / "src", code / "src")
    else:
        shutil.copytree(crate / "workflow", code)
        how = "crate"
    shutil.copy2(crate / "workflow" / "config.yaml", code / "config.yaml")  # the frozen config
    return how


def rerun_config(crate: Path, index: dict[str, Any], code: Path, here: Path) -> dict[str, Any]:
    """The frozen config, made runnable here: write-back off, a directory archive's relative
    path resolved against this checkout (else the frozen run's folder)."""
    config = yaml.safe_load((code / "config.yaml").read_text())
    config.setdefault("writeback", {})["enabled"] = False
    archive = config["archive"]
    if archive.get("backend") == "xnat":
        archive["history"] = False  # no History rows for a check: the archive stays as it was
    if archive.get("backend") == "directory" and not Path(archive["path"]).is_absolute():
        for base in (here, Path(index.get("original_workdir") or here)):
            if (base / archive["path"]).is_dir():
                archive["path"] = str((base / archive["path"]).resolve())
                break
        else:
            raise RerunError(
                f"archive folder {archive['path']!r} not found in {here} "
                f"nor {index.get('original_workdir')}"
            )
    (code / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def check_fingerprints(crate: Path, index: dict[str, Any], config: dict[str, Any]):
    """(reproducible session keys, changed, missing) against the archive as it is now."""
    from qmroct.archive import archive_for

    frozen = {}
    for key in index["sessions"]:
        project, folder = key.split("/", 1)
        manifest = json.loads(
            (crate / "results" / "discovery" / "sessions" / project / f"{folder}.json").read_text()
        )
        frozen[(project, manifest["label"])] = (key, manifest["fingerprint"])
    projects = sorted({p for p, _ in frozen})
    with archive_for(config) as archive:
        archive.check()
        now = {(s.project, s.label): s.fingerprint for s in archive.discover(projects)}
    ok, changed, missing = [], [], []
    for (project, label), (key, fingerprint) in sorted(frozen.items()):
        if (project, label) not in now:
            missing.append(key)
        elif now[(project, label)] != fingerprint:
            changed.append(key)
        else:
            ok.append(key)
    return ok, changed, missing


def _snakemake(code: Path, targets: list[str], cores: int, log: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(code / "src"), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--nocolor", *targets]
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=code, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RerunError(f"snakemake failed (exit {proc.returncode}); log {log}:\n{tail}")


def rerun(
    crate: Path,
    workdir: Path | None = None,
    sessions: int | None = None,
    seed: int | None = None,
    source: str = "auto",
    cores: int = 2,
    here: Path = Path("."),
) -> RerunReport:
    crate, here = Path(crate).resolve(), Path(here).resolve()
    index = load_index(crate)
    own_workdir = workdir is None
    work = (
        Path(tempfile.mkdtemp(prefix="qmroct-rerun-")) if own_workdir else Path(workdir).resolve()
    )
    work.mkdir(parents=True, exist_ok=True)
    code = work / "workflow"
    if code.exists():
        raise RerunError(f"{code} exists: give an empty --workdir")
    how = recreate(crate, index, code, source, here)
    report = RerunReport(code_source=how, workdir=work)
    try:
        config = rerun_config(crate, index, code, here)
        ok, report.changed_sessions, report.missing_sessions = check_fingerprints(
            crate, index, config
        )
        if sessions is not None and sessions < len(ok):
            report.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
            ok = sorted(random.Random(report.seed).sample(ok, sessions))
        todo = [r for r in index["results"] if f"{r['project']}/{r['session']}" in set(ok)]
        if not todo:
            return report
        log = work / "rerun.log"
        _snakemake(code, ["results/discovery/sessions.tsv"], cores, log)  # the checkpoint first
        _snakemake(code, [r["path"] for r in todo], cores, log)
        for r in todo:
            frozen = json.loads((crate / r["path"]).read_text())
            new = json.loads((code / r["path"]).read_text())
            diffs, count = compare_results(
                frozen, new, index.get("tolerance") or {}, f"{r['project']}/{r['session']}"
            )
            report.differences += diffs
            report.kqis_compared += count
            report.compared.append(f"{r['project']}/{r['session']}/{r['algorithm']}")
        (work / "rerun.json").write_text(json.dumps(_report_doc(report), indent=1, default=str))
        return report
    finally:
        if how.startswith("git"):
            _git(here, "worktree", "remove", "--force", str(code), check=False)
        if own_workdir and report.reproduced:
            shutil.rmtree(work, ignore_errors=True)


def _report_doc(report: RerunReport) -> dict[str, Any]:
    return {
        "reproduced": report.reproduced,
        "code_source": report.code_source,
        "seed": report.seed,
        "compared": report.compared,
        "kqis_compared": report.kqis_compared,
        "changed_sessions": report.changed_sessions,
        "missing_sessions": report.missing_sessions,
        "differences": [d.__dict__ for d in report.differences],
    }


def format_report(report: RerunReport) -> str:
    lines = [f"code: {report.code_source}; work folder: {report.workdir}"]
    if report.seed is not None:
        lines.append(
            f"random sample of sessions, seed {report.seed} (--seed {report.seed} repeats it)"
        )
    for title, keys in (
        ("changed in the archive since the freeze (not recomputed)", report.changed_sessions),
        ("missing from the archive (not recomputed)", report.missing_sessions),
    ):
        if keys:
            lines.append(f"{len(keys)} session(s) {title}: {', '.join(keys)}")
    if report.differences:
        rows = [("session", "algorithm", "scan", "KQI", "frozen", "rerun", "tolerance")]
        rows += [
            (d.session, d.algorithm, str(d.scan), d.kqi, _fmt(d.frozen), _fmt(d.rerun), d.tolerance)
            for d in report.differences
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines.append(f"{len(report.differences)} KQI(s) differ:")
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
    verdict = "REPRODUCED" if report.reproduced else "NOT REPRODUCED"
    lines.append(
        f"{verdict}: {report.kqis_compared} KQIs compared in {len(report.compared)} results, "
        f"{len(report.differences)} differ"
    )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)
