"""``qmroct``: the command line for people (the workflow itself runs with ``snakemake``).

qmroct demo-archive --out demo --sessions 8 --seed 0    build the embedded demo archive
qmroct check-config config.yaml                          validate a config without running
qmroct discover config.yaml                              list sessions as the workflow would
qmroct algorithm new|test|list NAME                      write and try an algorithm
                                                         (docs/algorithms.md)
qmroct kqi SCAN... [--algorithm NAME]                    KQIs of any scan file, outside the workflow
qmroct cloud reap [--dry-run]                            delete VMs of crashed runs
                                                         (docs/openstack.md)
qmroct watch [--interval 300] [--once] [-- SNAKEMAKE ARGS]  run the workflow when the
                                                         archive changes
qmroct runs | qmroct status                              run history; health for monitoring
                                                         (docs/operations.md)
qmroct freeze NAME [--study S]                           freeze results as a citable crate
qmroct rerun frozen/NAME [--sessions N]                  recompute a frozen set and compare
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(
            f"expected BSCANSxDEPTHxWIDTH such as 49x496x512, got {text!r}"
        )
    return parts  # type: ignore[return-value]


def cmd_demo_archive(args: argparse.Namespace) -> int:
    from qmroct.synth.demo import build_demo_archive

    try:
        labels = build_demo_archive(
            Path(args.out),
            sessions=args.sessions,
            seed=args.seed,
            project=args.project,
            shape=args.shape,
            scans_per_session=args.scans,
            start=args.start,
        )
    except ValueError as exc:
        print(f"qmroct demo-archive: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {len(labels)} sessions to {Path(args.out) / 'archive'} "
        f"(ground truth in {Path(args.out) / 'truth'})"
    )
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from qmroct.config import load_settings

    settings = load_settings(args.config)
    print(
        f"{args.config}: OK ({len(settings.algorithms)} algorithms: "
        f"{', '.join(sorted(settings.algorithms))}; "
        f"{len(settings.studies)} studies)"
    )
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    import yaml

    from qmroct.config import validate_schema
    from qmroct.discovery import vetted_sessions

    config = yaml.safe_load(Path(args.config).read_text())
    validate_schema(config)
    for session in vetted_sessions(config):
        row = {
            "session": session.key,
            "subject": session.subject,
            "scans": len(session.scans),
            "fingerprint": session.fingerprint,
        }
        # the reasons the run would record as failed rows, said before any run
        scan_problems = {scan.id: scan.problem for scan in session.scans if scan.problem}
        if session.problem:
            row["problem"] = session.problem
        if scan_problems:
            row["scan_problems"] = scan_problems
        print(json.dumps(row))
    return 0


def cmd_cloud_reap(reap_args: list[str]) -> int:
    try:
        from snakemake_executor_plugin_openstack.reaper import main as reap_main
    except ImportError:
        print(
            "qmroct: error: the OpenStack executor plugin is not installed "
            "(pip install ./snakemake-executor-plugin-openstack)",
            file=sys.stderr,
        )
        return 2
    return reap_main(reap_args)


def cmd_watch(args: argparse.Namespace) -> int:
    import logging
    import os
    import shlex

    from qmroct.watch import WatchOptions, watch

    if args.interval <= 0 or args.max_backoff <= 0:
        raise ValueError("--interval and --max-backoff must be positive (seconds)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s qmroct watch: %(message)s")
    os.chdir(args.directory)
    options = WatchOptions(
        interval=args.interval,
        once=args.once,
        max_backoff=args.max_backoff,
        configfile=Path(args.configfile),
        snakemake_args=list(args.snakemake_args),
    )
    if args.snakemake:
        options.snakemake = shlex.split(args.snakemake)
    return watch(options)


def cmd_runs(args: argparse.Namespace) -> int:
    from qmroct.runhistory import list_runs, runs_table

    runs = list_runs(Path(args.directory))
    if args.last:
        runs = runs[-args.last :]
    if args.json:
        print(json.dumps(runs, indent=1))
    elif runs:
        print(runs_table(runs))
    else:
        print("no runs recorded yet (results/runs/ is empty)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from qmroct.status import collect, render

    info, code = collect(Path(args.directory), max_age=args.max_age)
    print(json.dumps(info, indent=1) if args.json else render(info))
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qmroct", description="Quality management for retinal OCT archives."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo-archive", help="build a synthetic directory archive with ground truth beside it"
    )
    demo.add_argument(
        "--out", default="demo", help="folder to create (archive/ and truth/ go inside)"
    )
    demo.add_argument("--sessions", type=int, default=8, help="number of sessions")
    demo.add_argument("--seed", type=int, default=0, help="random seed (same seed, same archive)")
    demo.add_argument("--project", default="DEMO", help="project name")
    demo.add_argument(
        "--shape",
        type=_shape,
        default=(49, 496, 512),
        help="BSCANSxDEPTHxWIDTH (default 49x496x512)",
    )
    demo.add_argument("--scans", type=int, default=2, help="scans per session (alternating OD/OS)")
    demo.add_argument(
        "--start",
        type=int,
        default=1,
        help="index of the first session to write, 1-based, two visits per subject "
        "(index 7 is SUBJ004_V1); to extend an archive, one past the last index in use",
    )
    demo.set_defaults(func=cmd_demo_archive)

    check = sub.add_parser(
        "check-config", help="validate a config file and the algorithms it declares"
    )
    check.add_argument("config", nargs="?", default="config.yaml")
    check.set_defaults(func=cmd_check_config)

    disc = sub.add_parser("discover", help="list the sessions the workflow would assess")
    disc.add_argument("config", nargs="?", default="config.yaml")
    disc.set_defaults(func=cmd_discover)

    from qmroct.algorithms.cli import register as register_algorithm_commands

    register_algorithm_commands(sub)  # qmroct algorithm new|test|list|schema, qmroct kqi

    from qmroct.provenance.cli import register as register_provenance_commands

    register_provenance_commands(sub)  # qmroct freeze NAME, qmroct rerun frozen/NAME

    cloud = sub.add_parser("cloud", help="OpenStack pool housekeeping")
    cloud_sub = cloud.add_subparsers(dest="cloud_command", required=True)
    reap = cloud_sub.add_parser(
        "reap",
        help=(
            "delete servers left by crashed runs (two-pass, only this tool's servers); "
            "--dry-run lists them"
        ),
        add_help=False,
    )
    reap.add_argument(
        "reap_args",
        nargs=argparse.REMAINDER,
        help="options of snakemake-openstack-reap (see --help)",
    )
    reap.set_defaults(func=lambda args: cmd_cloud_reap(args.reap_args))

    watch = sub.add_parser(
        "watch",
        help="poll the archive; run the workflow when it changed (docs/operations.md)",
        description="Arguments after -- go to snakemake unchanged (default: --cores all), "
        "e.g. qmroct watch -- --profile openstack",
    )
    watch.add_argument(
        "--interval", type=float, default=300.0, help="seconds between polls (default 300)"
    )
    watch.add_argument(
        "--once", action="store_true", help="one check and at most one run (for cron)"
    )
    watch.add_argument(
        "--max-backoff",
        type=float,
        default=3600.0,
        help="longest wait between polls of an unreachable archive (default 3600 s)",
    )
    watch.add_argument("--configfile", default="config.yaml", help="the config the workflow uses")
    watch.add_argument("--directory", "-d", default=".", help="the workflow folder (default: here)")
    watch.add_argument(
        "--snakemake",
        default=None,
        help="command that starts snakemake (default: this Python's -m snakemake)",
    )
    watch.add_argument("snakemake_args", nargs="*", help="after --: arguments for snakemake")
    watch.set_defaults(func=cmd_watch)

    runs = sub.add_parser("runs", help="the run history (results/runs/), one line per run")
    runs.add_argument("--last", type=int, default=0, help="only the last N runs")
    runs.add_argument("--json", action="store_true", help="the summaries as JSON")
    runs.add_argument("--directory", "-d", default=".", help="the workflow folder (default: here)")
    runs.set_defaults(func=cmd_runs)

    status = sub.add_parser(
        "status",
        help="last run, next poll, open failures; exit 0 healthy, 1 failures, 2 not watching",
    )
    status.add_argument(
        "--max-age",
        type=float,
        default=None,
        help="for cron (watch --once): healthy if the last check is at most this many "
        "seconds old, even though no watcher is running",
    )
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.add_argument(
        "--directory", "-d", default=".", help="the workflow folder (default: here)"
    )
    status.set_defaults(func=cmd_status)

    return parser


def main(argv: list[str] | None = None) -> int:
    from qmroct.archive.base import ArchiveError
    from qmroct.config import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["cloud", "reap"]:  # every option (even --help) belongs to the reaper
        return cmd_cloud_reap(argv[2:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ArchiveError, ValueError) as exc:
        print(f"qmroct: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
