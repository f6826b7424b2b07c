"""``qmroct``: the command line for people (the workflow itself runs with ``snakemake``).

    qmroct demo-archive --out demo --sessions 8 --seed 0    build the embedded demo archive
    qmroct check-config config.yaml                          validate a config without running
    qmroct discover config.yaml                              list sessions as the workflow would
    qmroct algorithm new|test|list NAME                      write and try an algorithm (docs/algorithms.md)
    qmroct kqi SCAN... [--algorithm NAME]                    KQIs of any scan file, outside the workflow
    qmroct cloud reap [--dry-run]                            delete VMs of crashed runs (docs/openstack.md)
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
        raise argparse.ArgumentTypeError(f"expected BSCANSxDEPTHxWIDTH such as 49x496x512, got {text!r}")
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
    print(f"wrote {len(labels)} sessions to {Path(args.out) / 'archive'} (ground truth in {Path(args.out) / 'truth'})")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from qmroct.config import load_settings

    settings = load_settings(args.config)
    print(f"{args.config}: OK ({len(settings.algorithms)} algorithms: {', '.join(sorted(settings.algorithms))}; "
          f"{len(settings.studies)} studies)")
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    import yaml

    from qmroct.config import validate_schema
    from qmroct.discovery import archive_for

    config = yaml.safe_load(Path(args.config).read_text())
    validate_schema(config)
    with archive_for(config) as archive:
        archive.check()
        for session in archive.discover(list(config["projects"])):
            print(json.dumps({"session": session.key, "subject": session.subject, "scans": len(session.scans),
                              "fingerprint": session.fingerprint}))
    return 0


def cmd_cloud_reap(reap_args: list[str]) -> int:
    try:
        from snakemake_executor_plugin_openstack.reaper import main as reap_main
    except ImportError:
        print("qmroct: error: the OpenStack executor plugin is not installed "
              "(pip install ./snakemake-executor-plugin-openstack)", file=sys.stderr)
        return 2
    return reap_main(reap_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qmroct", description="Quality management for retinal OCT archives.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-archive", help="build a synthetic directory archive with ground truth beside it")
    demo.add_argument("--out", default="demo", help="folder to create (archive/ and truth/ go inside)")
    demo.add_argument("--sessions", type=int, default=8, help="number of sessions")
    demo.add_argument("--seed", type=int, default=0, help="random seed (same seed, same archive)")
    demo.add_argument("--project", default="DEMO", help="project name")
    demo.add_argument("--shape", type=_shape, default=(49, 496, 512), help="BSCANSxDEPTHxWIDTH (default 49x496x512)")
    demo.add_argument("--scans", type=int, default=2, help="scans per session (alternating OD/OS)")
    demo.add_argument("--start", type=int, default=1, help="index of the first session to write, 1-based, two visits per subject "
                      "(index 7 is SUBJ004_V1); to extend an archive, one past the last index in use")
    demo.set_defaults(func=cmd_demo_archive)

    check = sub.add_parser("check-config", help="validate a config file and the algorithms it declares")
    check.add_argument("config", nargs="?", default="config.yaml")
    check.set_defaults(func=cmd_check_config)

    disc = sub.add_parser("discover", help="list the sessions the workflow would assess")
    disc.add_argument("config", nargs="?", default="config.yaml")
    disc.set_defaults(func=cmd_discover)

    from qmroct.algorithms.cli import register as register_algorithm_commands

    register_algorithm_commands(sub)  # qmroct algorithm new|test|list|schema, qmroct kqi

    cloud = sub.add_parser("cloud", help="OpenStack pool housekeeping")
    cloud_sub = cloud.add_subparsers(dest="cloud_command", required=True)
    reap = cloud_sub.add_parser(
        "reap",
        help="delete servers left by crashed runs (two-pass, only this tool's servers); --dry-run lists them",
        add_help=False,
    )
    reap.add_argument("reap_args", nargs=argparse.REMAINDER, help="options of snakemake-openstack-reap (see --help)")
    reap.set_defaults(func=lambda args: cmd_cloud_reap(args.reap_args))

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
