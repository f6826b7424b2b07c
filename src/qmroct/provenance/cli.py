"""``qmroct freeze`` and ``qmroct rerun`` (README: "Reproducing a paper's numbers")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_freeze(args: argparse.Namespace) -> int:
    from qmroct.provenance.freeze import Selection, freeze

    selection = Selection(
        projects=args.project or [],
        sessions=args.session or [],
        algorithms=args.algorithm or [],
        study=args.study,
    )
    target = freeze(
        args.name,
        Path(args.workdir),
        selection,
        allow_mixed=args.allow_mixed,
        allow_dirty=args.allow_dirty,
    )
    print(f"froze {target} (Provenance Run Crate; cite it, recompute with: qmroct rerun {target})")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    from qmroct.provenance.rerun import RerunError, format_report, rerun

    try:
        report = rerun(
            Path(args.crate),
            Path(args.workdir) if args.workdir else None,
            sessions=args.sessions,
            seed=args.seed,
            source=args.source,
            cores=args.cores,
        )
    except RerunError as exc:
        print(f"qmroct: rerun failed: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0 if report.reproduced else 1


def register(sub) -> None:
    freeze = sub.add_parser(
        "freeze", help="freeze the current results as frozen/NAME/ (a Provenance Run Crate)"
    )
    freeze.add_argument("name", help="folder name under frozen/, e.g. paper1")
    freeze.add_argument("--project", action="append", help="only this project (repeatable)")
    freeze.add_argument(
        "--session", action="append", help="only this session, LABEL or PROJECT/LABEL (repeatable)"
    )
    freeze.add_argument("--algorithm", action="append", help="only this algorithm (repeatable)")
    freeze.add_argument("--study", help="the sessions and algorithms of this study")
    freeze.add_argument(
        "--allow-mixed",
        action="store_true",
        help="freeze even when an algorithm's results mix identities or environments (recorded)",
    )
    freeze.add_argument(
        "--allow-dirty",
        action="store_true",
        help="freeze from a checkout with uncommitted changes (the diff goes into the crate)",
    )
    freeze.add_argument("--workdir", default=".", help="the workflow folder (default: here)")
    freeze.set_defaults(func=cmd_freeze)

    rerun = sub.add_parser(
        "rerun", help="recompute a frozen result set and compare every KQI (exit 0: reproduced)"
    )
    rerun.add_argument("crate", help="frozen/NAME")
    rerun.add_argument("--sessions", type=int, help="recompute a random sample of N sessions")
    rerun.add_argument(
        "--seed", type=int, help="seed of the random sample (printed when not given)"
    )
    rerun.add_argument(
        "--workdir", help="where to recreate and run the workflow (default: a temporary folder)"
    )
    rerun.add_argument(
        "--from",
        dest="source",
        choices=("auto", "git", "crate"),
        default="auto",
        help="code from a git worktree of the recorded commit, or the crate's copy (auto: git "
        "when this checkout has the commit and the frozen tree was clean)",
    )
    rerun.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2)")
    rerun.set_defaults(func=cmd_rerun)
