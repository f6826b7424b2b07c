"""Developer commands of the algorithm layer.

    qmroct algorithm list                       the algorithms on the search path
    qmroct algorithm new NAME --runtime R       scaffold algorithms/NAME (python|octave|executable)
    qmroct algorithm test NAME                  run it on bundled synthetic volumes, truth beside
    qmroct algorithm schema [--manifest]        print the KQI output (or manifest) JSON schema
    qmroct kqi PATH... [--algorithm NAME]       KQIs of any scan files/folders, as JSON

``register(subparsers)`` adds these to the main ``qmroct`` parser; each
subcommand sets ``func`` (``args.func(args) -> int`` exit status).
``python -m qmroct.algorithms.cli ...`` runs them stand-alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from qmroct.algorithms.manifest import AlgorithmError, available_algorithms, default_search_paths

REPO_ALGORITHMS = Path(__file__).resolve().parents[3] / "algorithms"


def _search_paths(args) -> list[Path]:
    if getattr(args, "algorithms_dir", None):
        return [Path(p) for p in args.algorithms_dir]
    paths = default_search_paths()
    if not any(p.is_dir() for p in paths) and REPO_ALGORITHMS.is_dir():
        paths = [REPO_ALGORITHMS]  # running outside the checkout: the built-in set
    return paths


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--algorithms-dir",
        action="append",
        metavar="DIR",
        help=(
            "where algorithm folders live (repeatable; default $QMROCT_ALGORITHMS or ./algorithms)"
        ),
    )
    p.add_argument(
        "--mcr-root",
        help="MATLAB Runtime root for executable algorithms (default $QMROCT_MCR_ROOT)",
    )


def register(subparsers) -> None:
    """Add ``algorithm`` and ``kqi`` to a parser's subparsers."""
    alg = subparsers.add_parser("algorithm", help="write, try and inspect quality algorithms")
    sub = alg.add_subparsers(dest="algorithm_command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("list", help="list the algorithms on the search path")
    _add_common(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("new", help="scaffold a working algorithm with manifest and test")
    p.add_argument("name")
    p.add_argument("--runtime", choices=["python", "octave", "executable"], default="python")
    p.add_argument("--dir", default=None, help="parent folder (default: the first algorithms dir)")
    p.add_argument(
        "--build", action="store_true", help="executable runtime: compile the C template with gcc"
    )
    _add_common(p)
    p.set_defaults(func=cmd_new)

    p = sub.add_parser(
        "test", help="run on bundled synthetic volumes and print KQIs beside the ground truth"
    )
    p.add_argument("name")
    p.add_argument(
        "--case",
        action="append",
        help="synthetic case(s): clean, high_noise, shadow, motion, decentered, log8",
    )
    p.add_argument("--shape", default="9,496,256", help="n_bscans,depth,width (default 9,496,256)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_common(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("schema", help="print the KQI output JSON schema")
    p.add_argument(
        "--manifest", action="store_true", help="print the algorithm.yaml schema instead"
    )
    p.set_defaults(func=cmd_schema)

    k = subparsers.add_parser(
        "kqi", help="compute KQIs for scan files or folders and print them as JSON"
    )
    k.add_argument("paths", nargs="+", metavar="PATH")
    k.add_argument("--algorithm", "-a", action="append", help="algorithm(s) to run (default: all)")
    k.add_argument("--per-bscan", action="store_true", help="include per-B-scan arrays")
    k.add_argument("--timeout", type=float, default=None)
    k.add_argument(
        "--intensity",
        choices=["linear", "log8", "rescaled100"],
        help="override how the scan's intensities are stored (default: from the reader)",
    )
    _add_common(k)
    k.set_defaults(func=cmd_kqi)


# ------------------------------------------------------------------ handlers
def cmd_list(args) -> int:
    from qmroct.algorithms.runner import load_algorithm

    paths = _search_paths(args)
    for name in available_algorithms(paths):
        try:
            a = load_algorithm(name, paths)
            print(f"{a.name:14s} {a.version:8s} {a.runtime:10s} {', '.join(a.kqi_names)}")
        except AlgorithmError as exc:
            print(f"{name:14s} INVALID  {exc}")
    return 0


def cmd_new(args) -> int:
    from qmroct.algorithms.scaffold import scaffold

    root = Path(args.dir) if args.dir else _search_paths(args)[0]
    try:
        folder = scaffold(args.name, args.runtime, root, build=args.build)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created {folder}")
    for f in sorted(folder.iterdir()):
        print(f"  {f.name}")
    hint = {
        "python": f"edit {folder / (args.name + '.py')}",
        "octave": f"edit {folder / (args.name + '_kqi.m')} (needs octave-cli)",
        "executable": (
            f"build with sh {folder / 'build.sh'} (or replace with your MATLAB Compiler output)"
        ),
    }[args.runtime]
    print(
        f"next: {hint}; try it with `qmroct algorithm test {args.name}`; "
        "declare it in config.yaml under algorithms:"
    )
    return 0


def cmd_test(args) -> int:
    from qmroct.algorithms.runner import load_algorithm
    from qmroct.algorithms.testdata import run_on_synthetic

    try:
        algo = load_algorithm(args.name, _search_paths(args), mcr_root=args.mcr_root)
        shape = tuple(int(x) for x in args.shape.split(","))
        if len(shape) != 3:
            raise ValueError("--shape needs three numbers")
    except (AlgorithmError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = run_on_synthetic(
        algo, cases=args.case, shape=shape, seed=args.seed, timeout=args.timeout
    )
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
    else:
        print(
            f"{algo.name} {algo.version} ({algo.runtime}, {algo.code_checksum[:19]}...) "
            f"on synthetic {args.shape}"
        )
        for row in rows:
            print(
                f"\n[{row['case']}]" + (f"  {row['elapsed_s']:.2f} s" if "elapsed_s" in row else "")
            )
            if row["error"]:
                print(f"  ALGORITHM FAILURE: {row['error']}")
                continue
            for kqi, res in row["kqis"].items():
                truth = row["truth"].get(kqi)
                value = "null" if res["value"] is None else f"{res['value']:.4g}"
                beside = f"   truth {truth:.4g}" if truth is not None else ""
                print(f"  {kqi:22s} {value:>12s} {res['unit']:10s}{beside}")
            for note in row["notes"]:
                print(f"  note: {note}")
    return 1 if any(r["error"] for r in rows) else 0


def cmd_schema(args) -> int:
    from qmroct.algorithms.schema import KQI_OUTPUT_SCHEMA, MANIFEST_SCHEMA

    print(json.dumps(MANIFEST_SCHEMA if args.manifest else KQI_OUTPUT_SCHEMA, indent=1))
    return 0


def _scan_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
                and f.suffix.lower()
                not in (".json", ".txt", ".md", ".yaml", ".yml", ".csv", ".tsv")
            )
        else:
            files.append(p)
    return files


def cmd_kqi(args) -> int:
    from qmroct.algorithms.runner import AlgorithmFailure, load_algorithm
    from qmroct.scanio import ScanError, read_scan

    paths = _search_paths(args)
    names = args.algorithm or available_algorithms(paths)
    try:
        algos = [load_algorithm(n, paths, mcr_root=args.mcr_root) for n in names]
    except AlgorithmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = 0
    report = []
    scratch = Path(tempfile.mkdtemp(prefix="qmroct-kqi-"))
    try:
        for i, f in enumerate(_scan_files(args.paths)):
            entry: dict = {"path": str(f)}
            try:
                volume = read_scan(f)
            except (ScanError, OSError, ValueError) as exc:
                entry["error"] = str(exc)
                report.append(entry)
                status = 1
                continue
            if args.intensity:
                volume.intensity = args.intensity
            staged = scratch / f"scan{i}"
            vpath, _ = volume.save(staged, f.stem)
            meta = volume.meta(f.stem)
            entry.update(
                shape=list(volume.data.shape),
                device=volume.device,
                intensity=volume.intensity,
                results={},
            )
            del volume
            for algo in algos:
                try:
                    out = algo.run(vpath, meta, {}, staged / algo.name, timeout=args.timeout)
                    kqis = (
                        out["kqis"]
                        if args.per_bscan
                        else {
                            k: {kk: vv for kk, vv in v.items() if kk != "per_bscan"}
                            for k, v in out["kqis"].items()
                        }
                    )
                    entry["results"][algo.name] = {
                        "version": algo.version,
                        "kqis": kqis,
                        "notes": out["notes"],
                    }
                except AlgorithmFailure as exc:
                    entry["results"][algo.name] = {
                        "version": algo.version,
                        "error": exc.message,
                        "stderr_tail": exc.stderr_tail,
                    }
                    status = 1
            shutil.rmtree(staged, ignore_errors=True)
            report.append(entry)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        print(json.dumps(report, indent=1))
    except BrokenPipeError:  # e.g. piped into head
        pass
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qmroct", description="qmroct algorithm tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
