"""Running one algorithm on one staged scan, whatever its runtime.

Every runtime sees the same input: the volume (``volume.npy``, float32, axes
(bscan, depth, ascan); or a MAT file if the manifest asks for
``input_format: mat``), a ``meta.json`` and a ``params.json``, and writes
``kqi.json`` into its output folder (the workdir). The runner validates that
file against :data:`qmroct.algorithms.schema.KQI_OUTPUT_SCHEMA` and against
the manifest (every declared KQI present with its unit, nothing undeclared,
values inside the declared valid range). Anything else is an
:class:`AlgorithmFailure` carrying the stderr tail, distinct from a scan that
merely *fails QC* (a KQI value beyond a threshold).

Every runtime runs in a child process (:mod:`qmroct.algorithms.child`) with a
wall-clock limit (:meth:`Algorithm.time_limit`: the manifest's ``runtime_s``
times a factor, never below a floor) and its output captured, capped; a
crash, a signal, a timeout or an exit without output is an
:class:`AlgorithmFailure` naming the cause, never the caller's crash.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from qmroct.algorithms.child import Outcome, describe_exit, run_command, run_forked
from qmroct.algorithms.manifest import (
    DEFAULT_FUNCTION,
    DEFAULT_RESOURCES,
    KQISpec,
    code_checksum,
    find_algorithm_dir,
    kqi_specs,
    read_manifest,
    shared_names,
)
from qmroct.algorithms.schema import validate_output

OUTPUT_NAME = "kqi.json"
# Written by a Python child whose algorithm raised: the exact reason for the parent.
FAILURE_NAME = "_failure.json"
STDERR_TAIL_LINES = 40
# Between a failure's reason and the tail of the algorithm's output in str(AlgorithmFailure).
TAIL_HEADER = "\n--- output (tail) ---\n"
STDERR_TAIL_CHARS = 4000
# Wall-clock limit of one call: max(MIN_TIMEOUT_S, TIMEOUT_FACTOR x the manifest's
# runtime_s). The floor keeps tiny runtime_s values from timing out on a loaded
# machine; config.yaml's algorithm_limits sets both (defaults in the schema agree).
TIMEOUT_FACTOR = 10.0
MIN_TIMEOUT_S = 60.0
# Of an algorithm's stdout+stderr, the first and the last OUTPUT_KEEP bytes are kept.
OUTPUT_KEEP = 64 * 1024
OCTAVE_SUPPORT = Path(__file__).resolve().parent / "octave"


class AlgorithmFailure(RuntimeError):
    """The algorithm did not produce a valid result (crash, exit != 0, timeout, bad output)."""

    def __init__(self, message: str, stderr_tail: str = "", output: str = "") -> None:
        super().__init__(message)
        self.message = message
        # The last lines the algorithm printed (stdout and stderr share one pipe), or the
        # traceback of its exception: short enough for a result row.
        self.stderr_tail = stderr_tail
        self.output = output  # the call's whole stdout+stderr, capped (for the job log)

    def __str__(self) -> str:
        if self.stderr_tail:
            return f"{self.message}{TAIL_HEADER}{self.stderr_tail}"
        return self.message


def _tail(text: str, lines: int = STDERR_TAIL_LINES, chars: int = STDERR_TAIL_CHARS) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])[-chars:]


def jsonable(obj: Any) -> Any:
    """numpy scalars/arrays -> Python; NaN/inf -> None (JSON null)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


class Algorithm:
    """A loaded algorithm: its manifest, code checksum and a ``run`` method."""

    def __init__(self, folder: Path, mcr_root: str | Path | None = None) -> None:
        self.path = Path(folder).resolve()
        doc = read_manifest(self.path)
        self.manifest = doc
        self.name: str = doc["name"]
        self.version: str = str(doc["version"])
        self.runtime: str = doc["runtime"]
        self.entry: str = doc["entry"]
        self.function: str | None = doc.get("function") or DEFAULT_FUNCTION[self.runtime]
        self.description: str = doc.get("description", "")
        self.input_format: str = doc.get("input_format", "npy")
        self.shared: list[str] = shared_names(self.path, doc)  # shared code and shared data
        self.kqis: list[KQISpec] = kqi_specs(doc)
        self.thresholds: dict[str, str] = dict(doc.get("thresholds") or {})
        res = dict(DEFAULT_RESOURCES)
        res.update(doc.get("resources") or {})
        self.resources = {
            "threads": int(res["threads"]),
            "mem_mb": int(res["mem_mb"]),
            "runtime_s": float(res["runtime_s"]),
        }
        self.default_params: dict[str, Any] = dict(doc.get("params") or {})
        self.code_checksum: str = code_checksum(self.path, self.shared)
        self.mcr_root = str(mcr_root) if mcr_root is not None else None

    def __repr__(self) -> str:
        return f"Algorithm({self.name!r}, version={self.version!r}, runtime={self.runtime!r})"

    @property
    def kqi_names(self) -> list[str]:
        return [k.name for k in self.kqis]

    def time_limit(self, factor: float | None = None, floor: float | None = None) -> float:
        """Wall-clock limit of one call, in seconds: max(floor, factor x manifest runtime_s)."""
        factor = TIMEOUT_FACTOR if factor is None else float(factor)
        floor = MIN_TIMEOUT_S if floor is None else float(floor)
        return max(floor, factor * self.resources["runtime_s"])

    @property
    def _module_name(self) -> str:
        return f"qmroct_algorithm_{self.name}_{self.code_checksum[7:19]}"

    # ------------------------------------------------------------------ run
    def run(
        self,
        volume_path: Path,
        meta: dict,
        params: dict | None,
        workdir: Path,
        timeout: float | None = None,
        *,
        isolate: bool = True,
        mcr_root: str | Path | None = None,
        output_keep: int = OUTPUT_KEEP,
    ) -> dict[str, Any]:
        """Compute the KQIs of one staged scan.

        Returns ``{"kqis": {name: {"value", "unit", "per_bscan"}}, "files": [Path],
        "notes": [str], "info": {}, "elapsed_s": float, "output": str}``; ``output``
        is what the algorithm printed (stdout and stderr), its first and last
        ``output_keep`` bytes. Every runtime runs in a child process, killed with
        its process group after ``timeout`` seconds (default :meth:`time_limit`).
        ``isolate=False`` calls a Python algorithm inside this process instead:
        for trusted code that shares in-process caches (the benchmark), with no
        time limit and no output capture, and a crash is the caller's crash.
        """
        volume_path = Path(volume_path).resolve()
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if not volume_path.is_file():
            raise AlgorithmFailure(f"{self.name}: input volume {volume_path} does not exist")
        merged = {**self.default_params, **(params or {})}
        output = workdir / OUTPUT_NAME
        output.unlink(missing_ok=True)
        (workdir / FAILURE_NAME).unlink(missing_ok=True)
        limit = self.time_limit() if timeout is None else float(timeout)
        start = time.monotonic()
        captured = ""
        if self.runtime == "python" and not isolate:
            self._run_inprocess(volume_path, meta, merged, workdir)
        else:
            outcome = self._run_child(
                volume_path, meta, merged, workdir, limit, mcr_root, output_keep
            )
            captured = outcome.output
            self._judge(outcome, limit, workdir)
        try:
            result = self._read_output(output, workdir, _tail(captured))
        except AlgorithmFailure as exc:
            exc.output = captured
            raise
        result["elapsed_s"] = round(time.monotonic() - start, 4)
        result["output"] = captured
        return result

    def _run_child(
        self,
        volume_path: Path,
        meta: dict,
        params: dict,
        workdir: Path,
        limit: float,
        mcr_root,
        keep: int,
    ) -> Outcome:
        if self.runtime == "python" and hasattr(os, "fork") and threading.active_count() == 1:
            entry, function = self.path / self.entry, self.function or "compute"
            module = self._module_name

            def child() -> int:
                return python_child(
                    self.name, entry, function, volume_path, meta, params, workdir, module
                )

            return run_forked(child, limit, keep)
        staged: list[Path] = []
        try:
            input_path = volume_path
            if self.input_format == "mat" and self.runtime != "python":
                input_path = self._stage_mat(volume_path, workdir)
                staged.append(input_path)
            meta_path = workdir / "_meta.json"
            params_path = workdir / "_params.json"
            meta_path.write_text(json.dumps(jsonable(meta), indent=1))
            params_path.write_text(json.dumps(jsonable(params), indent=1))
            staged += [meta_path, params_path]
            cmd = self._command(input_path, meta_path, params_path, workdir, mcr_root)
            try:
                return run_command(cmd, workdir, self._child_env(), limit, keep)
            except OSError as exc:
                raise AlgorithmFailure(f"{self.name}: cannot start {cmd[0]}: {exc}") from exc
        finally:
            for p in staged:
                p.unlink(missing_ok=True)

    def _judge(self, outcome: Outcome, limit: float, workdir: Path) -> None:
        """An AlgorithmFailure naming how the child ended, unless it exited 0 with its output."""
        tail, printed = _tail(outcome.output), outcome.output
        reported = _read_reported_failure(workdir / FAILURE_NAME)
        if outcome.timed_out:
            raise AlgorithmFailure(f"{self.name}: timed out after {limit:g} s", tail, printed)
        if outcome.returncode == 1 and reported:
            raise AlgorithmFailure(reported["message"], reported.get("detail") or tail, printed)
        if outcome.returncode != 0:
            reason = describe_exit(outcome.returncode)
            raise AlgorithmFailure(f"{self.name}: {reason}", tail, printed)
        if not (workdir / OUTPUT_NAME).is_file():
            reason = f"exited 0 without writing its output ({OUTPUT_NAME})"
            raise AlgorithmFailure(f"{self.name}: {reason}", tail, printed)

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        threads = str(self.resources["threads"])
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, threads)
        return env

    # -------------------------------------------------------- python runtime
    def _run_inprocess(self, volume_path: Path, meta: dict, params: dict, workdir: Path) -> None:
        call_python(
            self.name,
            self.path / self.entry,
            self.function or "compute",
            volume_path,
            meta,
            params,
            workdir,
            self._module_name,
        )

    # ----------------------------------------------------- external runtimes
    def _stage_mat(self, volume_path: Path, workdir: Path) -> Path:
        import scipy.io

        vol = np.load(volume_path, allow_pickle=False)
        # MATLAB convention: I(:,:,b) is B-scan b (rows = depth, columns = A-scans).
        mat = workdir / "_volume.mat"
        scipy.io.savemat(
            mat,
            {"volume": np.ascontiguousarray(np.transpose(vol, (1, 2, 0)))},
            do_compression=False,
        )
        return mat

    def _command(
        self, input_path: Path, meta_path: Path, params_path: Path, outdir: Path, mcr_root
    ) -> list[str]:
        args = [str(input_path), str(meta_path), str(params_path), str(outdir)]
        if self.runtime == "python":
            # Only when forking is unsafe (other threads running): a fresh interpreter.
            entry = str(self.path / self.entry)
            function = self.function or "compute"
            pyrun = [sys.executable, "-m", "qmroct.algorithms.pyrun"]
            return [*pyrun, self.name, entry, function, *args]
        if self.runtime == "octave":
            octave = (
                os.environ.get("OCTAVE_EXECUTABLE")
                or shutil.which("octave-cli")
                or shutil.which("octave")
            )
            if not octave:
                raise AlgorithmFailure(
                    f"{self.name}: runtime 'octave' needs GNU Octave (octave-cli) on PATH or "
                    "$OCTAVE_EXECUTABLE; "
                    "install it with: apt-get install -y --no-install-recommends octave"
                )
            fn = self.function or Path(self.entry).stem
            q = lambda s: "'" + str(s).replace("'", "''") + "'"  # noqa: E731 - Octave string literal
            code = (
                f"addpath({q(OCTAVE_SUPPORT)}); addpath({q(self.path)}); "
                f"qmroct_run({q(fn)}, {', '.join(q(a) for a in args)});"
            )
            return [octave, "--no-gui", "--norc", "--quiet", "--no-window-system", "--eval", code]
        # executable: a compiled program in the algorithm folder (or an absolute path)
        exe = Path(self.entry) if Path(self.entry).is_absolute() else self.path / self.entry
        if not exe.is_file():
            raise AlgorithmFailure(f"{self.name}: executable {exe} not found (build it first)")
        if not os.access(exe, os.X_OK):
            raise AlgorithmFailure(f"{self.name}: {exe} is not executable")
        if exe.name.startswith("run_") and exe.name.endswith(".sh"):
            root = mcr_root if mcr_root is not None else self.mcr_root
            if root is None:
                root = os.environ.get("QMROCT_MCR_ROOT")
            if not root:
                raise AlgorithmFailure(
                    f"{self.name}: {exe.name} follows the MATLAB Runtime convention "
                    "run_<name>.sh <mcr_root> args...; "
                    "set the MCR root (config mcr_root, load_algorithm(..., mcr_root=...) "
                    "or $QMROCT_MCR_ROOT)"
                )
            return [str(exe), str(root), *args]
        return [str(exe), *args]

    # ------------------------------------------------------------ validation
    def _read_output(self, output: Path, workdir: Path, stderr: str = "") -> dict[str, Any]:
        if not output.is_file():
            raise AlgorithmFailure(f"{self.name}: no output file {OUTPUT_NAME} was written", stderr)
        try:
            doc = json.loads(output.read_text())
        except (ValueError, OSError) as exc:
            raise AlgorithmFailure(
                f"{self.name}: {OUTPUT_NAME} is not valid JSON: {exc}", stderr
            ) from exc
        problems = validate_output(doc)
        if problems:
            raise AlgorithmFailure(
                f"{self.name}: {OUTPUT_NAME} violates the KQI schema: " + "; ".join(problems[:5]),
                stderr,
            )
        problems = self._check_declared(doc["kqis"])
        if problems:
            raise AlgorithmFailure(
                f"{self.name}: output does not match the manifest: " + "; ".join(problems[:5]),
                stderr,
            )
        files = []
        for name in doc.get("files", []):
            p = (workdir / name).resolve()
            if workdir != p and workdir not in p.parents:
                raise AlgorithmFailure(
                    f"{self.name}: extra output {name!r} lies outside the workdir", stderr
                )
            if not p.is_file():
                raise AlgorithmFailure(
                    f"{self.name}: declared extra output {name!r} was not written", stderr
                )
            files.append(p)
        kqis = {
            k: {
                "value": v["value"],
                "unit": v["unit"],
                "per_bscan": v.get("per_bscan"),
                **({"note": v["note"]} if "note" in v else {}),
            }
            for k, v in doc["kqis"].items()
        }
        return {
            "kqis": kqis,
            "files": files,
            "notes": list(doc.get("notes", [])),
            "info": dict(doc.get("info", {})),
        }

    def _check_declared(self, kqis: dict[str, Any]) -> list[str]:
        problems = []
        declared = {k.name: k for k in self.kqis}
        missing = sorted(set(declared) - set(kqis))
        extra = sorted(set(kqis) - set(declared))
        if missing:
            problems.append(f"declared KQI(s) missing: {', '.join(missing)}")
        if extra:
            problems.append(f"undeclared KQI(s): {', '.join(extra)}")
        for name, spec in declared.items():
            if name not in kqis:
                continue
            got = kqis[name]
            if got["unit"] != spec.unit:
                problems.append(
                    f"{name}: unit {got['unit']!r} but the manifest declares {spec.unit!r}"
                )
            if spec.valid_range is not None:
                lo, hi = spec.valid_range
                values = [got["value"]] + list(got.get("per_bscan") or [])
                bad = [
                    v
                    for v in values
                    if v is not None
                    and ((lo is not None and v < lo) or (hi is not None and v > hi))
                ]
                if bad:
                    problems.append(
                        f"{name}: value {bad[0]} outside the declared valid range [{lo}, {hi}]"
                    )
        return problems


def load_algorithm(
    name: str,
    search_paths: list[Path] | None = None,
    *,
    mcr_root: str | Path | None = None,
) -> Algorithm:
    """Load ``<search_path>/<name>/algorithm.yaml``; earlier search paths win.

    Raises :class:`~qmroct.algorithms.manifest.AlgorithmNotFound` (listing the
    available names) or :class:`~qmroct.algorithms.manifest.ManifestError`.
    """
    return Algorithm(find_algorithm_dir(name, search_paths), mcr_root=mcr_root)


def _read_reported_failure(path: Path) -> dict[str, Any] | None:
    """The reason a Python child wrote before exiting 1 (see :func:`python_child`)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    finally:
        path.unlink(missing_ok=True)
    return doc if isinstance(doc, dict) and isinstance(doc.get("message"), str) else None


def call_python(
    name: str,
    entry: Path,
    function: str,
    volume_path: Path,
    meta: dict,
    params: dict,
    workdir: Path,
    module_name: str,
) -> None:
    """Import ``entry`` (once per process), call ``function`` and write ``kqi.json``."""
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, entry)
        if spec is None or spec.loader is None:
            raise AlgorithmFailure(f"{name}: cannot import {entry}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise AlgorithmFailure(
                f"{name}: importing {Path(entry).name} failed: {exc!r}",
                _tail(traceback.format_exc()),
            ) from exc
    fn = getattr(module, function, None)
    if not callable(fn):
        raise AlgorithmFailure(f"{name}: {Path(entry).name} has no function {function!r}")
    try:
        volume = np.load(volume_path, allow_pickle=False)
    except Exception as exc:  # corrupt staging is an input problem, reported the same way
        raise AlgorithmFailure(f"{name}: cannot read input volume {volume_path}: {exc}") from exc
    try:
        result = fn(volume, dict(meta), dict(params), Path(workdir))
    except Exception as exc:
        reason = f"{name}: {type(exc).__name__}: {exc}"
        raise AlgorithmFailure(reason, _tail(traceback.format_exc())) from exc
    try:
        text = json.dumps(jsonable(result), allow_nan=False, indent=1)
    except (TypeError, ValueError) as exc:
        raise AlgorithmFailure(f"{name}: result is not JSON-serialisable: {exc}") from exc
    (Path(workdir) / OUTPUT_NAME).write_text(text)


def python_child(
    name: str,
    entry: Path,
    function: str,
    volume_path: Path,
    meta: dict,
    params: dict,
    workdir: Path,
    module_name: str,
) -> int:
    """The body of a Python algorithm's child process; returns its exit status.

    An exception in the algorithm becomes exit status 1 plus ``_failure.json``
    with the runner's exact reason (the traceback also goes to the output, so
    the job log shows it). ``sys.exit``/``os._exit``/signals are left to the
    caller: they end the child, and the parent names them.
    """
    try:
        call_python(name, entry, function, volume_path, meta, params, workdir, module_name)
    except AlgorithmFailure as exc:
        reported = {"message": exc.message, "detail": exc.stderr_tail}
        (Path(workdir) / FAILURE_NAME).write_text(json.dumps(reported))
        print(exc.stderr_tail or exc.message, file=sys.stderr)
        return 1
    return 0
