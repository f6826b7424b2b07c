"""Run the XNAT test server by hand.

    python -m tests.xnat_server --port 8080 --data /tmp/xnat-data

Users come from XNAT_TEST_USERS ("login:password,login2:password2"), never from
the command line; without it one user "admin" with password "admin" exists.
Point pyxnat or xnatpy (or qmroct) at the printed URL.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

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
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("the test server listens on loopback only")
    users = {}
    for pair in filter(None, os.environ.get("XNAT_TEST_USERS", "admin:admin").split(",")):
        login, _, password = pair.partition(":")
        users[login] = password
    args.data.mkdir(parents=True, exist_ok=True)
    server = XnatTestServer(
        args.data,
        host=args.host,
        port=args.port,
        users=users,
        schema_dir=args.schemas,
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
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
