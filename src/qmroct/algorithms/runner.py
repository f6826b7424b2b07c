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
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from qmroct.algorithms.manifest import (
    DEFAULT_FUNCTION,
    DEFAULT_RESOURCES,
    KQISpec,
    code_checksum,
    find_algorithm_dir,
    kqi_specs,
    read_manifest,
)
from qmroct.algorithms.schema import validate_output

OUTPUT_NAME = "kqi.json"
STDERR_TAIL_LINES = 40
OCTAVE_SUPPORT = Path(__file__).resolve().parent / "octave"


class AlgorithmFailure(RuntimeError):
    """The algorithm did not produce a valid result (crash, exit != 0, timeout, bad output)."""

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        if self.stderr_tail:
            return f"{self.message}\n--- stderr (tail) ---\n{self.stderr_tail}"
        return self.message


def _tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


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
        self.shared: list[str] = list(doc.get("shared") or [])
        self.kqis: list[KQISpec] = kqi_specs(doc)
        self.thresholds: dict[str, str] = dict(doc.get("thresholds") or {})
        res = dict(DEFAULT_RESOURCES)
        res.update(doc.get("resources") or {})
        self.resources = {"threads": int(res["threads"]), "mem_mb": int(res["mem_mb"]), "runtime_s": float(res["runtime_s"])}
        self.default_params: dict[str, Any] = dict(doc.get("params") or {})
        self.code_checksum: str = code_checksum(self.path, self.shared)
        self.mcr_root = str(mcr_root) if mcr_root is not None else None

    def __repr__(self) -> str:
        return f"Algorithm({self.name!r}, version={self.version!r}, runtime={self.runtime!r})"

    @property
    def kqi_names(self) -> list[str]:
        return [k.name for k in self.kqis]

    # ------------------------------------------------------------------ run
    def run(
        self,
        volume_path: Path,
        meta: dict,
        params: dict | None,
        workdir: Path,
        timeout: float | None = None,
        *,
        isolate: bool | None = None,
        mcr_root: str | Path | None = None,
    ) -> dict[str, Any]:
        """Compute the KQIs of one staged scan.

        Returns ``{"kqis": {name: {"value", "unit", "per_bscan"}}, "files": [Path], "notes": [str]}``.
        Python algorithms run in-process unless ``isolate`` is true or a
        ``timeout`` is given (a timeout can only be enforced on a subprocess).
        """
        volume_path = Path(volume_path).resolve()
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if not volume_path.is_file():
            raise AlgorithmFailure(f"{self.name}: input volume {volume_path} does not exist")
        merged = {**self.default_params, **(params or {})}
        output = workdir / OUTPUT_NAME
        if output.exists():
            output.unlink()
        if isolate is None:
            isolate = timeout is not None
        start = time.monotonic()
        staged: list[Path] = []
        try:
            if self.runtime == "python" and not isolate:
                self._run_inprocess(volume_path, meta, merged, workdir)
            else:
                input_path = volume_path
                if self.input_format == "mat":
                    input_path = self._stage_mat(volume_path, workdir)
                    staged.append(input_path)
                meta_path = workdir / "_meta.json"
                params_path = workdir / "_params.json"
                meta_path.write_text(json.dumps(jsonable(meta), indent=1))
                params_path.write_text(json.dumps(jsonable(merged), indent=1))
                staged += [meta_path, params_path]
                cmd = self._command(input_path, meta_path, params_path, workdir, mcr_root)
                self._run_subprocess(cmd, workdir, timeout)
        finally:
            for p in staged:
                p.unlink(missing_ok=True)
        result = self._read_output(output, workdir)
        result["elapsed_s"] = round(time.monotonic() - start, 4)
        return result

    # -------------------------------------------------------- python runtime
    def _load_module(self):
        entry = self.path / self.entry
        modname = f"qmroct_algorithm_{self.name}_{self.code_checksum[7:19]}"
        module = sys.modules.get(modname)
        if module is None:
            spec = importlib.util.spec_from_file_location(modname, entry)
            if spec is None or spec.loader is None:
                raise AlgorithmFailure(f"{self.name}: cannot import {entry}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[modname] = module
            try:
                spec.loader.exec_module(module)
            except BaseException as exc:
                sys.modules.pop(modname, None)
                raise AlgorithmFailure(f"{self.name}: importing {entry.name} failed: {exc!r}", _tail(traceback.format_exc())) from exc
        fn = getattr(module, self.function or "compute", None)
        if not callable(fn):
            raise AlgorithmFailure(f"{self.name}: {entry.name} has no function {self.function!r}")
        return fn

    def _run_inprocess(self, volume_path: Path, meta: dict, params: dict, workdir: Path) -> None:
        fn = self._load_module()
        try:
            volume = np.load(volume_path, allow_pickle=False)
        except Exception as exc:  # corrupt staging is an input problem, reported the same way
            raise AlgorithmFailure(f"{self.name}: cannot read input volume {volume_path}: {exc}") from exc
        try:
            result = fn(volume, dict(meta), dict(params), workdir)
        except Exception as exc:
            raise AlgorithmFailure(f"{self.name}: {type(exc).__name__}: {exc}", _tail(traceback.format_exc())) from exc
        try:
            text = json.dumps(jsonable(result), allow_nan=False, indent=1)
        except (TypeError, ValueError) as exc:
            raise AlgorithmFailure(f"{self.name}: result is not JSON-serialisable: {exc}") from exc
        (workdir / OUTPUT_NAME).write_text(text)

    # ----------------------------------------------------- external runtimes
    def _stage_mat(self, volume_path: Path, workdir: Path) -> Path:
        import scipy.io

        vol = np.load(volume_path, allow_pickle=False)
        # MATLAB convention: I(:,:,b) is B-scan b (rows = depth, columns = A-scans).
        mat = workdir / "_volume.mat"
        scipy.io.savemat(mat, {"volume": np.ascontiguousarray(np.transpose(vol, (1, 2, 0)))}, do_compression=False)
        return mat

    def _command(self, input_path: Path, meta_path: Path, params_path: Path, outdir: Path, mcr_root) -> list[str]:
        args = [str(input_path), str(meta_path), str(params_path), str(outdir)]
        if self.runtime == "python":
            return [sys.executable, "-m", "qmroct.algorithms.pyrun", str(self.path / self.entry), self.function or "compute", *args]
        if self.runtime == "octave":
            octave = os.environ.get("OCTAVE_EXECUTABLE") or shutil.which("octave-cli") or shutil.which("octave")
            if not octave:
                raise AlgorithmFailure(
                    f"{self.name}: runtime 'octave' needs GNU Octave (octave-cli) on PATH or $OCTAVE_EXECUTABLE; "
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
                    f"{self.name}: {exe.name} follows the MATLAB Runtime convention run_<name>.sh <mcr_root> args...; "
                    "set the MCR root (config mcr_root, load_algorithm(..., mcr_root=...) or $QMROCT_MCR_ROOT)"
                )
            return [str(exe), str(root), *args]
        return [str(exe), *args]

    def _run_subprocess(self, cmd: list[str], workdir: Path, timeout: float | None) -> None:
        env = dict(os.environ)
        threads = str(self.resources["threads"])
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, threads)
        stderr_path = workdir / "_stderr.log"
        stdout_path = workdir / "_stdout.log"
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            try:
                proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=err, env=env, start_new_session=True)
            except OSError as exc:
                raise AlgorithmFailure(f"{self.name}: cannot start {cmd[0]}: {exc}") from exc
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                tail = _tail(stderr_path.read_text(errors="replace"))
                raise AlgorithmFailure(f"{self.name}: timed out after {timeout} s", tail) from None
        stderr = stderr_path.read_text(errors="replace")
        stdout_path.unlink(missing_ok=True)
        stderr_path.unlink(missing_ok=True)
        if rc != 0:
            raise AlgorithmFailure(f"{self.name}: exited with status {rc}", _tail(stderr))
        self._last_stderr = stderr

    # ------------------------------------------------------------ validation
    def _read_output(self, output: Path, workdir: Path) -> dict[str, Any]:
        stderr = _tail(getattr(self, "_last_stderr", "") or "")
        self._last_stderr = ""
        if not output.is_file():
            raise AlgorithmFailure(f"{self.name}: no output file {OUTPUT_NAME} was written", stderr)
        try:
            doc = json.loads(output.read_text())
        except (ValueError, OSError) as exc:
            raise AlgorithmFailure(f"{self.name}: {OUTPUT_NAME} is not valid JSON: {exc}", stderr) from exc
        problems = validate_output(doc)
        if problems:
            raise AlgorithmFailure(f"{self.name}: {OUTPUT_NAME} violates the KQI schema: " + "; ".join(problems[:5]), stderr)
        problems = self._check_declared(doc["kqis"])
        if problems:
            raise AlgorithmFailure(f"{self.name}: output does not match the manifest: " + "; ".join(problems[:5]), stderr)
        files = []
        for name in doc.get("files", []):
            p = (workdir / name).resolve()
            if workdir != p and workdir not in p.parents:
                raise AlgorithmFailure(f"{self.name}: extra output {name!r} lies outside the workdir", stderr)
            if not p.is_file():
                raise AlgorithmFailure(f"{self.name}: declared extra output {name!r} was not written", stderr)
            files.append(p)
        kqis = {
            k: {"value": v["value"], "unit": v["unit"], "per_bscan": v.get("per_bscan"), **({"note": v["note"]} if "note" in v else {})}
            for k, v in doc["kqis"].items()
        }
        return {"kqis": kqis, "files": files, "notes": list(doc.get("notes", [])), "info": dict(doc.get("info", {}))}

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
                problems.append(f"{name}: unit {got['unit']!r} but the manifest declares {spec.unit!r}")
            if spec.valid_range is not None:
                lo, hi = spec.valid_range
                values = [got["value"]] + list(got.get("per_bscan") or [])
                bad = [v for v in values if v is not None and ((lo is not None and v < lo) or (hi is not None and v > hi))]
                if bad:
                    problems.append(f"{name}: value {bad[0]} outside the declared valid range [{lo}, {hi}]")
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
