"""Run the XNAT test server by hand.

    python -m tests.xnat_server --port 8080 --data /tmp/xnat-data --load demo/archive

Users come from XNAT_TEST_USERS ("login:password,login2:password2"), never from
the command line; without it one user "admin" with password "admin" exists.
--load puts a directory archive (the `qmroct demo-archive` layout) into the server
through pyxnat as the first user, creating its projects; sessions already loaded
into the same --data folder are skipped. Point pyxnat or xnatpy (or qmroct) at the
printed URL.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from .load import LoadError, load_archive, session_folders
from .server import DEFAULT_SCHEMA_DIR, XnatTestServer


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.xnat_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--data", type=Path, required=True, help="directory for the SQLite catalogue and files"
    )
    parser.add_argument(
        "--schemas",
        type=Path,
        default=DEFAULT_SCHEMA_DIR,
        help="XSD folder served at /xapi/schemas",
    )
    parser.add_argument(
        "--token-lifetime", type=float, default=2 * 24 * 3600, help="alias token lifetime, seconds"
    )
    parser.add_argument(
        "--project", action="append", default=[], help="create this project at start (repeatable)"
    )
    parser.add_argument(
        "--load",
        action="append",
        default=[],
        type=Path,
        metavar="ARCHIVE",
        help="load this directory archive (e.g. demo/archive) once started (repeatable)",
    )
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("the test server listens on loopback only")
    users = {}
    for pair in filter(None, os.environ.get("XNAT_TEST_USERS", "admin:admin").split(",")):
        login, _, password = pair.partition(":")
        users[login] = password
    for archive in args.load:  # before anything starts: a wrong path is a one-line error
        try:
            session_folders(archive)
        except LoadError as exc:
            parser.error(str(exc))
    schemas_missing = not (args.schemas / "xnat" / "xnat.xsd").is_file()
    if schemas_missing:
        print(
            f"WARNING: no XNAT XSD schemas at {args.schemas} (expected xnat/xnat.xsd there): "
            "/xapi/schemas answers 404, so xnatpy cannot connect; pyxnat and qmroct work. "
            "Give --schemas DIR or set QMROCT_XNAT_SCHEMAS.",
            file=sys.stderr,
            flush=True,
        )
    args.data.mkdir(parents=True, exist_ok=True)
    server = XnatTestServer(
        args.data,
        host=args.host,
        port=args.port,
        users=users,
        schema_dir=None if schemas_missing else args.schemas,
        token_lifetime=args.token_lifetime,
    )
    for project in args.project:
        server.store.put_project(project, {})
    print(
        f"XNAT test server on {server.url} (data in {args.data}, users: {', '.join(users)})",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    try:
        for archive in args.load:
            login = next(iter(users))
            labels = load_archive(server.url, login, users[login], archive)
            print(f"loaded {len(labels)} sessions from {archive}: {', '.join(labels)}", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
