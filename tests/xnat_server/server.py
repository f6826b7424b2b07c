"""An XNAT-speaking REST server for tests: real HTTP on loopback.

It implements the part of XNAT's REST API that pyxnat 1.6.4 and xnat (xnatpy)
0.8.1 use, with the status codes, bodies and quirks of the reference notes
(../shared/reference/xnat-rest.md):

- auth: basic auth on every request (pyxnat), ``PUT /data/services/auth`` and
  the ``JSESSIONID`` cookie (xnatpy), ``GET /data/auth``, ``/data/JSESSION``,
  alias tokens (``/data/services/tokens/issue|validate|invalidate|show``);
- listings as ``format=json`` (``ResultSet``) and ``format=csv`` (pyxnat);
  single objects as ``format=json`` (``items`` with ``meta``/``data_fields``/
  ``children``) and ``format=xml``;
- ``PUT`` creates (201) or updates (200) and answers the plain-text ID;
  assessors accept an XML document (raw or pyxnat's multipart ``data.xml``);
- resources and files: numeric or label resource IDs, raw (``inbody``) and
  multipart uploads, ``{"duplicates": [...]}`` with 200 when a file exists and
  ``overwrite`` is not set, streamed downloads with Content-Length, zip;
- workflow (history) entries: ``PUT /data/workflows`` keyed on
  (id, pipeline_name, launch_time), ``GET /data/workflows``,
  ``/data/services/workflows/<pipeline>``;
- ``/data/version``, ``/xapi/siteConfig/buildInfo``, ``/xapi/schemas`` served
  from ../shared/xnat-schemas when present;
- errors as Restlet's HTML status page (``<h3>message</h3>``), 401 for missing
  or bad credentials, 403 for a guest asking for tokens, 404 with XNAT's texts.

Fault injection (``XnatTestServer.inject`` or ``POST /__test__/faults`` with a
JSON rule): answer a status (5xx), delay, drop the connection, truncate a
download, expire all tokens, or delete an experiment when a request matches.
"""

from __future__ import annotations

import csv
import email.parser
import email.policy
import fnmatch
import html
import io
import json
import os
import re
import socket
import threading
import time
import xml.etree.ElementTree as ET
import zipfile
from base64 import b64decode
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from .store import NotFound, Store, now_iso

XNAT_VERSION = "1.8.10"
XNAT_NS = "http://nrg.wustl.edu/xnat"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
DEFAULT_SCHEMA_DIR = Path(
    os.environ.get("QMROCT_XNAT_SCHEMAS")
    or Path(__file__).resolve().parents[2].parent / "shared" / "xnat-schemas"
)

# Root elements of XML documents and their xsi types (the ones used here).
ROOT_TYPES = {
    "QCAssessment": "xnat:qcAssessmentData",
    "QCManualAssessment": "xnat:qcManualAssessorData",
    "OPTSession": "xnat:optSessionData",
    "MRSession": "xnat:mrSessionData",
    "MRAssessor": "xnat:mrAssessorData",
    "ImageAssessor": "xnat:imageAssessorData",
}
# Elements that repeat (become "children" listings in XNAT's JSON).
REPEATED = {
    "scan",
    "additionalStatistics",
    "addField",
    "field",
    "processStep",
    "library",
    "file",
    "slice",
    "share",
    "scanID",
    "addParam",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    417: "Expectation Failed",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def status_page(status: int, message: str) -> bytes:
    """Restlet's status page, as XNAT's /data API answers errors."""
    return (
        "<html>\n<head>\n   <title>Status page</title>\n</head>\n<body>\n"
        f"<h3>{html.escape(message)}</h3><p>You can get technical details "
        f'<a href="http://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html">here</a>.<br>\n'
        'Please continue your <a href="/">visit</a> at our home page.\n</p>\n</body>\n</html>\n'
    ).encode()


@dataclass
class Fault:
    """One injected fault. ``count`` requests matching ``method`` and ``path``
    (a regular expression searched in path?query) get ``action``."""

    action: str  # status | delay | drop | drop_after | truncate | expire_tokens | delete_experiment
    path: str = ".*"
    method: str = "*"
    count: int = 1
    status: int = 503
    delay: float = 0.0
    experiment: str = ""
    hits: int = 0

    def matches(self, method: str, target: str) -> bool:
        return (self.method in ("*", method)) and re.search(self.path, target) is not None


@dataclass
class Target:
    kind: str
    project: str | None = None
    subject: Any = None
    experiment: Any = None  # session row (or assessor row for kind assessor*)
    session: Any = None  # the image session of an assessor
    scan: Any = None
    owner: str = ""
    resource: Any = None
    ref: str = ""  # last path segment (label/ID/name) for element kinds
    file_path: str = ""
    base: str = ""  # canonical URI of the owner, for file URIs


class XnatTestServer:
    """Owns the HTTP server thread and the store. Use as a context manager."""

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        users: dict[str, str] | None = None,
        schema_dir: Path | None = DEFAULT_SCHEMA_DIR,
        token_lifetime: float = 2 * 24 * 3600,
        site: str = "XNAT",
        token_cleanup_interval: float = 3600.0,
        max_sessions: int = 1000,
    ):
        self.store = Store(
            Path(data_dir),
            site=site,
            token_lifetime=token_lifetime,
            token_cleanup_interval=token_cleanup_interval,
            max_sessions=max_sessions,
        )
        for login, password in (users or {}).items():
            self.store.add_user(login, password)
        self.schema_dir = Path(schema_dir) if schema_dir else None
        self.faults: list[Fault] = []
        self.fault_lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        # JSESSIONID -> the credential that opened it (the access log's "auth" column)
        self.session_credentials: dict[str, str] = {}
        self.log_path = Path(data_dir) / "access.log"
        self.httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "XnatTestServer":
        self.thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="xnat-test-server",
            daemon=True,
        )
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread:
            self.thread.join(5)

    def __enter__(self) -> "XnatTestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- faults
    def inject(self, action: str, **kwargs: Any) -> Fault:
        fault = Fault(action=action, **kwargs)
        with self.fault_lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.fault_lock:
            self.faults.clear()

    def take_fault(self, method: str, target: str) -> Fault | None:
        with self.fault_lock:
            for fault in self.faults:
                if fault.matches(method, target):
                    fault.hits += 1
                    if fault.hits >= fault.count:
                        self.faults.remove(fault)
                    return fault
        return None

    def record(self, entry: dict[str, Any]) -> None:
        self.requests.append(entry)
        with open(self.log_path, "a") as fh:
            fh.write("{time} {user} {auth} {method} {target} {status}\n".format(**entry))


# ====================================================================== handler
def _make_handler(server: XnatTestServer):
    class Handler(XnatHandler):
        app = server

    return Handler


class XnatHandler(BaseHTTPRequestHandler):
    app: XnatTestServer
    protocol_version = "HTTP/1.1"
    server_version = "Apache-Coyote/1.1"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet stderr
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -------------------------------------------------------------- plumbing
    def do_GET(self) -> None:
        self.handle_any("GET")

    def do_HEAD(self) -> None:
        self.handle_any("HEAD")

    def do_PUT(self) -> None:
        self.handle_any("PUT")

    def do_POST(self) -> None:
        self.handle_any("POST")

    def do_DELETE(self) -> None:
        self.handle_any("DELETE")

    def handle_any(self, method: str) -> None:
        self.method = method
        self.truncate_next = False
        self.drop_response = False
        self.logged = False
        self.jsession = None
        self.user: str | None = None
        # which credential the request came with: "password", "alias:<alias>" (an alias
        # token), or the one that opened its JSESSION; "-" when none (never the secret)
        self.credential = "-"
        self.status_sent = 0
        self.new_cookies: list[str] = []
        self._body: bytes | None = None
        split = urlsplit(self.path)
        self.raw_path = split.path
        self.query = dict(parse_qsl(split.query, keep_blank_values=True))
        self.query_list = parse_qsl(split.query, keep_blank_values=True)
        target = self.path
        try:
            fault = (
                self.app.take_fault(method, target)
                if not self.raw_path.startswith("/__test__")
                else None
            )
            if fault is not None and self.apply_fault(fault):
                return
            self.route()
        except HttpError as err:
            self.send_error_page(err.status, err.message)
        except NotFound as err:
            self.send_error_page(404, str(err))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:  # a bug in the server: answer like XNAT would
            self.send_error_page(500, f"{type(err).__name__}: {err}")
        finally:
            self.log_request_once()

    def log_request_once(self) -> None:
        """Record the request (before its response goes out, so a client that
        has its answer always finds the request in the log)."""
        if self.logged:
            return
        self.logged = True
        self.app.record(
            {
                "time": now_iso().replace(" ", "T"),
                "user": self.user or "-",
                "auth": self.credential,
                "peer": "%s:%d" % self.client_address[:2],
                "method": self.method,
                "target": self.path,
                "status": self.status_sent,
            }
        )

    def apply_fault(self, fault: Fault) -> bool:
        if fault.action == "status":
            self.drain()
            self.send_error_page(fault.status, REASONS.get(fault.status, "Error"))
            return True
        if fault.action == "delay":
            time.sleep(fault.delay)
            return False
        if fault.action == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.status_sent = -1
            return True
        if fault.action == "drop_after":
            self.drop_response = True  # do the work, then lose the answer
            return False
        if fault.action == "truncate":
            self.truncate_next = True
            return False
        if fault.action == "expire_tokens":
            self.app.store.expire_tokens()
            return False
        if fault.action == "delete_experiment":
            try:
                self.app.store.delete_experiment(
                    self.app.store.experiment(None, fault.experiment)["id"]
                )
            except NotFound:
                pass
            return False
        raise HttpError(500, f"unknown fault action {fault.action}")

    def body(self) -> bytes:
        if self._body is None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                self._body = b"".join(parts)
            else:
                length = int(self.headers.get("Content-Length") or 0)
                self._body = self.rfile.read(length) if length else b""
        return self._body

    def drain(self) -> None:
        try:
            self.body()
        except Exception:
            self.close_connection = True

    def send_bytes(
        self,
        status: int,
        payload: bytes,
        content_type: str = "text/plain;charset=UTF-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.drain()
        if self.drop_response:
            self.status_sent = -status
            self.log_request_once()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(status)
        self.status_sent = status
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for cookie in self.new_cookies:
            self.send_header("Set-Cookie", cookie)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self._headers_buffer.append(b"\r\n")
        self.log_request_once()
        if self.method != "HEAD":
            self._headers_buffer.append(payload)
        self.flush_headers()

    def send_text(self, status: int, text: str) -> None:
        self.send_bytes(status, text.encode())

    def send_json(self, obj: Any, status: int = 200) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), "application/json")

    def send_error_page(self, status: int, message: str) -> None:
        if status == 401:
            headers = {"WWW-Authenticate": 'Basic realm="XNAT"'}
        else:
            headers = {}
        self.send_bytes(status, status_page(status, message), "text/html;charset=UTF-8", headers)

    # -------------------------------------------------------------- auth
    def authenticate(self, required: bool = True) -> str | None:
        store = self.app.store
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                login, _, password = b64decode(auth[6:]).decode().partition(":")
            except Exception:
                raise HttpError(401, "The request requires user authentication") from None
            user = None
            if store.check_password(login, password):
                user, credential = login, "password"
            else:
                user, credential = store.token_user(login, password), f"alias:{login}"
            if user is None:
                raise HttpError(401, "The request requires user authentication")
            self.user, self.credential = user, credential
            if (
                not self.cookie("JSESSIONID")
                or store.jsession_user(self.cookie("JSESSIONID")) != user
            ):
                self.set_session_cookie(store.new_jsession(user))
            return user
        sid = self.cookie("JSESSIONID")
        if sid:
            user = store.jsession_user(sid)
            if user:
                self.user = user
                self.credential = self.app.session_credentials.get(sid, "session")
                self.new_cookies.append(self.expiration_cookie())
                return user
        if required:
            raise HttpError(401, "The request requires user authentication")
        return None

    def cookie(self, name: str) -> str:
        for part in self.headers.get("Cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return ""

    def expiration_cookie(self) -> str:
        interval = int(self.app.store.session_timeout * 1000)
        return f'SESSION_EXPIRATION_TIME="{int(time.time() * 1000)},{interval}"; Path=/'

    def set_session_cookie(self, sid: str | None) -> None:
        if sid is None:
            raise HttpError(
                401,
                f"Maximum sessions of {self.app.store.max_sessions} for this principal exceeded",
            )
        self.jsession = sid
        self.app.session_credentials[sid] = self.credential
        self.new_cookies.append(f"JSESSIONID={sid}; Path=/; HttpOnly")
        self.new_cookies.append(self.expiration_cookie())

    # -------------------------------------------------------------- routing
    def route(self) -> None:
        path = self.raw_path
        if path.startswith("/__test__/"):
            return self.control(path[len("/__test__/") :])
        if path in ("", "/"):
            return self.root()
        if path.startswith("/REST/"):
            path = "/data/" + path[len("/REST/") :]
        if path.startswith("/data/archive/"):
            path = "/data/" + path[len("/data/archive/") :]
        if path == "/data/services/auth" and self.method in ("PUT", "POST"):
            return self.services_auth()
        if path.startswith("/xapi/schemas"):
            return self.schemas(path[len("/xapi/schemas") :].strip("/"))
        user = self.authenticate()
        if path == "/data/JSESSION":
            if self.method == "DELETE":
                self.app.store.drop_jsession(self.cookie("JSESSIONID"))
                return self.send_text(200, "")
            sid = self.jsession or self.cookie("JSESSIONID")
            return self.send_text(200, sid)
        if path == "/data/auth":
            return self.send_text(200, f"User '{user}' is logged in")
        if path == "/data/version":
            return self.send_text(200, XNAT_VERSION)
        if path == "/xapi/siteConfig/buildInfo":
            return self.send_json(
                {"version": XNAT_VERSION, "buildNumber": "test", "commit": "qmroct"}
            )
        if path == "/data/search/elements" or path.startswith("/data/search/elements/"):
            return self.search_elements(unquote(path[len("/data/search/elements") :].strip("/")))
        if path.startswith("/data/services/tokens/"):
            return self.tokens(
                [unquote(s) for s in path[len("/data/services/tokens/") :].split("/") if s]
            )
        if path.startswith("/data/services/workflows/"):
            return self.services_workflows(unquote(path[len("/data/services/workflows/") :]))
        if path == "/data/workflows" or path.startswith("/data/workflows/"):
            return self.workflows(path[len("/data/workflows") :].strip("/"))
        if path.startswith("/data/"):
            segments = [unquote(s) for s in path[len("/data/") :].split("/")]
            if segments and segments[-1] == "" and "files" not in segments:
                segments = segments[:-1]
            return self.archive(segments)
        raise HttpError(404, "Not Found")

    def root(self) -> None:
        if self.headers.get("Authorization"):
            self.authenticate()
        page = (
            "<!DOCTYPE html>\n<html><head><title>XNAT (qmroct test server)</title></head>"
            "<body>XNAT test server</body></html>\n"
        )
        self.send_bytes(200, page.encode(), "text/html;charset=UTF-8")

    def services_auth(self) -> None:
        form = dict(parse_qsl(self.body().decode(), keep_blank_values=True))
        login, password = form.get("username", ""), form.get("password", "")
        store = self.app.store
        if store.check_password(login, password):
            user, credential = login, "password"
        else:
            user, credential = store.token_user(login, password), f"alias:{login}"
        if user is None:
            raise HttpError(401, "Login attempt failed. Please try again.")
        self.user, self.credential = user, credential
        sid = store.new_jsession(user)
        self.set_session_cookie(sid)
        self.send_text(200, sid)

    def schemas(self, name: str) -> None:
        self.authenticate()
        directory = self.app.schema_dir
        if directory is None or not directory.is_dir():
            raise HttpError(404, "Not Found")
        available = {}
        for xsd in sorted(directory.rglob("*.xsd")):
            rel = xsd.relative_to(directory).with_suffix("").as_posix()
            folder, _, stem = rel.rpartition("/")
            # XNAT names a schema <folder> when the file is <folder>/<folder>.xsd
            available[folder if folder == stem else rel] = xsd
        if not name:
            return self.send_json(sorted(available))
        name = re.sub(r"\.xsd$", "", name)
        if name not in available:
            raise HttpError(404, f"No schema named {name}")
        self.send_bytes(200, available[name].read_bytes(), "application/xml")

    SEARCH_ELEMENTS = {
        "xnat:projectData": ("Project", ["ID", "NAME", "DESCRIPTION"]),
        "xnat:subjectData": ("Subject", ["SUBJECT_ID", "SUBJECT_LABEL", "PROJECT"]),
        "xnat:optSessionData": (
            "OPT Session",
            ["SESSION_ID", "LABEL", "DATE", "SUBJECT_ID", "PROJECT"],
        ),
        "xnat:mrSessionData": (
            "MR Session",
            ["SESSION_ID", "LABEL", "DATE", "SUBJECT_ID", "PROJECT"],
        ),
        "xnat:qcAssessmentData": ("Auto QC", ["EXPT_ID", "LABEL", "DATE", "SESSION_ID", "PROJECT"]),
    }

    def search_elements(self, element: str) -> None:
        if not element:
            rows = [
                {
                    "ELEMENT_NAME": name,
                    "SINGULAR": singular,
                    "PLURAL": singular + "s",
                    "SECURED": "true",
                    "COUNT": "0",
                }
                for name, (singular, _) in self.SEARCH_ELEMENTS.items()
            ]
            return self.send_listing(
                rows, ["ELEMENT_NAME", "SINGULAR", "PLURAL", "SECURED", "COUNT"]
            )
        if element not in self.SEARCH_ELEMENTS:
            raise HttpError(404, f"Unknown element {element}")
        rows = [
            {
                "FIELD_ID": f,
                "HEADER": f.lower(),
                "SUMMARY": "",
                "TYPE": "string",
                "REQUIRES_VALUE": "false",
                "DESC": "",
            }
            for f in self.SEARCH_ELEMENTS[element][1]
        ]
        self.send_listing(rows, ["FIELD_ID", "HEADER", "SUMMARY", "TYPE", "REQUIRES_VALUE", "DESC"])

    def control(self, what: str) -> None:
        """Test control endpoint (not XNAT): faults and the request log."""
        if what == "faults" and self.method == "POST":
            rule = json.loads(self.body() or b"{}")
            fault = self.app.inject(**rule)
            return self.send_json(
                {"action": fault.action, "path": fault.path, "count": fault.count}
            )
        if what == "faults" and self.method == "DELETE":
            self.app.clear_faults()
            return self.send_text(200, "")
        if what == "requests":
            return self.send_json(self.app.requests)
        raise HttpError(404, "Not Found")

    # -------------------------------------------------------------- tokens
    def tokens(self, parts: list[str]) -> None:
        store = self.app.store
        op = parts[0] if parts else ""
        rest = parts[1:]
        if rest[:1] == ["user"]:
            if len(rest) < 2 or rest[1] != self.user:
                raise HttpError(403, "Only administrators can manage other users' tokens")
            rest = rest[2:]
        if op == "issue":
            return self.send_json(store.issue_token(self.user))
        if op == "validate":
            if len(rest) < 2:
                raise HttpError(401, "You must specify both an alias and a secret")
            login = store.token_user(rest[0], rest[1])
            if login is None:
                raise HttpError(401, "Invalid alias token")
            return self.send_json({"valid": login})
        if op == "invalidate":
            if not rest or store.token(rest[0]) is None:
                raise HttpError(
                    404, f"Can't find an alias token with the alias {rest[0] if rest else ''}"
                )
            store.invalidate_token(rest[0])
            return self.send_json({"result": "OK"})
        if op == "show":
            rows = store.q("SELECT alias, expires, enabled FROM tokens WHERE login=?", self.user)
            return self.send_json(
                [
                    {
                        "alias": r["alias"],
                        "estimatedExpirationTime": int(r["expires"] * 1000),
                        "enabled": bool(r["enabled"]),
                    }
                    for r in rows
                ]
            )
        raise HttpError(400, f"Unknown operation {op}")

    # -------------------------------------------------------------- workflows
    def workflow_fields(self) -> dict[str, str]:
        out = {}
        for key, value in self.query_list:
            if key.startswith("wrk:workflowData/"):
                out[key[len("wrk:workflowData/") :]] = value
            elif key.startswith("wrk:workflowdata/"):
                out[key[len("wrk:workflowdata/") :]] = value
        return out

    @staticmethod
    def workflow_item(row) -> dict[str, Any]:
        return {
            "meta": {
                "xsi:type": "wrk:workflowData",
                "isHistory": False,
                "start_date": row["launch_time"],
            },
            "data_fields": workflow_row(row),
            "children": [],
        }

    def workflows(self, wid: str) -> None:
        store = self.app.store
        if self.method == "PUT":
            fields = self.workflow_fields()
            if (
                not fields.get("id")
                or not fields.get("pipeline_name")
                or not fields.get("launch_time")
            ):
                raise HttpError(400, "id, pipeline_name and launch_time are required")
            try:
                experiment = store.experiment(None, fields["id"])
            except NotFound:
                experiment = None
            if experiment is not None:
                fields.setdefault("ExternalID", experiment["project"])
            existing = store.workflows(
                data_id=fields["id"],
                pipeline_name=fields["pipeline_name"],
                launch_time=fields["launch_time"],
            )
            if existing and existing[0]["create_user"] != self.user:
                raise HttpError(403, "You are not allowed to make changes to this workflow.")
            if not existing and not fields.get("data_type"):
                # WorkflowResource.handlePut: a new row needs all four
                raise HttpError(
                    400,
                    "Id, launch_time, data_type and pipeline_name are all required "
                    "(scan_id may be specified when appropriate but is not required).",
                )
            number, created = store.put_workflow(fields, self.user)
            return self.send_text(200, str(number))
        fmt = (self.query.get("format") or "json").lower()
        if fmt not in ("json", "xml"):
            # WorkflowResource.represent -> SecureResource.representItem renders one item
            # as HTML, JSON or XML only; XNAT's fallback (XML for format=csv) would puzzle a
            # client that asked for CSV, so this server says so (simplification: JSON for xml)
            raise HttpError(
                400,
                f"format={fmt} is not offered for a single workflow (XNAT answers one item "
                "as JSON or XML); use format=json, or list rows as CSV with "
                "/data/services/workflows/<pipeline>?display=ALL&format=csv",
            )
        if wid:
            rows = store.workflows(id=wid)
            if not rows:
                raise HttpError(404, "Unable to find the specified workflow.")
            return self.send_json({"items": [self.workflow_item(rows[0])]})
        # WorkflowResource.represent -> WorkflowUtils.getUniqueWorkflow: exactly one row,
        # matched on all three keys; fewer keys match nothing (a null criterion)
        fields = self.workflow_fields()
        keys = {
            "data_id": fields.get("id"),
            "pipeline_name": fields.get("pipeline_name"),
            "launch_time": fields.get("launch_time"),
        }
        rows = store.workflows(**keys) if all(keys.values()) else []
        if not rows:
            raise HttpError(404, "Unable to find the specified workflow.")
        self.send_json({"items": [self.workflow_item(rows[0])]})

    def services_workflows(self, pipeline: str) -> None:
        """WorkflowsRestlet: the experiment's rows whose pipeline_name is LIKE
        '%<lower-cased pipeline>%' (case-sensitive, as PostgreSQL's LIKE);
        display=LATEST (the default) answers only the newest row as an item."""
        store = self.app.store
        experiment = None
        for project in (None, self.query.get("project")) if self.query.get("experiment") else ():
            try:
                experiment = store.experiment(project, self.query["experiment"])
                break
            except NotFound:
                continue
        # an experiment XNAT cannot find (deleted, say) is no filter at all: the
        # restlet then lists every experiment's rows of that pipeline
        rows = store.workflows(data_id=experiment["id"]) if experiment else store.workflows()
        wanted = unquote(pipeline).lower()
        rows = [r for r in rows if wanted in (r["pipeline_name"] or "")]
        if self.query.get("status"):
            rows = [r for r in rows if r["status"] == self.query["status"]]
        if self.query.get("display", "LATEST").upper() == "LATEST":
            if not rows:
                raise HttpError(
                    404,
                    f"Unable to find workflow entry for pipeline {pipeline} "
                    f"and experiment.{experiment['id'] if experiment else None}",
                )
            newest = max(rows, key=lambda r: r["launch_time"] or "")
            return self.send_json({"items": [self.workflow_item(newest)]})
        out = [workflow_row(r) for r in rows]
        self.send_listing(out, list(out[0].keys()) if out else ["wrk_workflowData_id"])

    # -------------------------------------------------------------- listings
    def send_listing(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        fmt = self.query.get("format", "html")
        rows = self.apply_filters(rows)
        if rows:
            lower = {k.lower(): k for k in rows[0]}
            for wanted in self.query.get("columns", "").split(","):
                key = lower.get(wanted.lower())
                if key and key not in columns:
                    columns = columns + [key]
        if fmt == "csv":
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(columns)
            for row in rows:
                writer.writerow([row.get(c, "") for c in columns])
            return self.send_bytes(200, out.getvalue().encode(), "text/csv")
        if fmt in ("json", "html", ""):
            result = [{c: str(row.get(c, "")) for c in columns} for row in rows]
            return self.send_json(
                {
                    "ResultSet": {
                        "Result": result,
                        "totalRecords": str(len(result)),
                        "title": "",
                        "Columns": [{"key": c} for c in columns],
                    }
                }
            )
        if fmt == "xml":
            root = ET.Element("ResultSet", {"totalRecords": str(len(rows))})
            results = ET.SubElement(root, "results")
            for row in rows:
                r = ET.SubElement(results, "row")
                for c in columns:
                    ET.SubElement(r, "cell").text = str(row.get(c, ""))
            return self.send_bytes(
                200, ET.tostring(root, xml_declaration=True, encoding="UTF-8"), "text/xml"
            )
        raise HttpError(400, f"Unsupported format {fmt}")

    IGNORED_PARAMS = {
        "format",
        "columns",
        "req_format",
        "xsiType_filter",
        "sortBy",
        "offset",
        "limit",
        "locator",
        "all",
        "accept-not-found",
        "listContents",
        "index",
        "structure",
    }

    ABSTRACT_TYPES = {
        "xnat:experimentData",
        "xnat:subjectAssessorData",
        "xnat:imageSessionData",
        "xnat:imageAssessorData",
        "xnat:derivedData",
    }

    def apply_filters(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for key, value in self.query.items():
            if key == "xsiType" and value in self.ABSTRACT_TYPES:
                continue
            if key in self.IGNORED_PARAMS or not rows or key not in rows[0]:
                continue
            patterns = value.split(",")
            rows = [
                r
                for r in rows
                if any(fnmatch.fnmatchcase(str(r.get(key, "")), p) for p in patterns)
            ]
        return rows

    # -------------------------------------------------------------- archive tree
    def resolve(self, seg: list[str]) -> Target:
        """Walk /data/... segments to what they name (raising 404 texts)."""
        store = self.app.store
        t = Target(kind="root")
        i = 0

        def take() -> str | None:
            nonlocal i
            if i < len(seg):
                i += 1
                return seg[i - 1]
            return None

        head = take()
        if head == "projects":
            ref = take()
            if ref is None:
                t.kind = "projects"
                return t
            t.project, t.ref, t.kind = ref, ref, "project"
            t.owner = f"project:{ref}"
            t.base = f"/data/projects/{ref}"
            nxt = take()
            if nxt is None:
                return t
            store.project(ref)
            if nxt == "subjects":
                sref = take()
                if sref is None:
                    t.kind = "subjects"
                    return t
                t.kind, t.ref = "subject", sref
                nxt2 = take()
                if nxt2 is None:
                    try:
                        t.subject = store.subject(ref, sref)
                    except NotFound:
                        t.subject = None
                    return t
                t.subject = store.subject(ref, sref)
                t.owner = f"subject:{t.subject['id']}"
                t.base = f"/data/subjects/{t.subject['id']}"
                if nxt2 == "experiments":
                    return self.resolve_experiment(t, seg, i)
                if nxt2 == "resources":
                    return self.resolve_resources(t, seg, i)
                raise HttpError(404, "Not Found")
            if nxt == "experiments":
                return self.resolve_experiment(t, seg, i)
            if nxt == "resources":
                return self.resolve_resources(t, seg, i)
            raise HttpError(404, "Not Found")
        if head == "subjects":
            sref = take()
            if sref is None:
                t.kind = "subjects"
                return t
            t.subject = store.subject(None, sref)
            t.project, t.kind, t.ref = t.subject["project"], "subject", sref
            t.owner = f"subject:{t.subject['id']}"
            t.base = f"/data/subjects/{t.subject['id']}"
            nxt = take()
            if nxt is None:
                return t
            if nxt == "experiments":
                return self.resolve_experiment(t, seg, i)
            if nxt == "resources":
                return self.resolve_resources(t, seg, i)
            raise HttpError(404, "Not Found")
        if head == "experiments":
            return self.resolve_experiment(t, seg, i)
        raise HttpError(404, "Not Found")

    def resolve_experiment(self, t: Target, seg: list[str], i: int) -> Target:
        store = self.app.store
        if i >= len(seg):
            t.kind = "experiments"
            return t
        ref = seg[i]
        i += 1
        t.kind, t.ref = "experiment", ref
        if i >= len(seg) and self.method == "PUT":
            try:
                t.experiment = store.experiment(
                    t.project, ref, t.subject["id"] if t.subject else None
                )
            except NotFound:
                t.experiment = None
            return t
        t.experiment = store.experiment(t.project, ref, t.subject["id"] if t.subject else None)
        if t.experiment["session_id"]:
            # an assessor reached through /experiments/<id>
            t.session = store.experiment(None, t.experiment["session_id"])
        t.project = t.project or t.experiment["project"]
        t.owner = f"exp:{t.experiment['id']}"
        t.base = f"/data/experiments/{t.experiment['id']}"
        if i >= len(seg):
            return t
        nxt = seg[i]
        i += 1
        if nxt == "scans":
            if i >= len(seg):
                t.kind = "scans"
                return t
            sid = seg[i]
            i += 1
            t.kind, t.ref = "scan", sid
            if i >= len(seg) and self.method == "PUT":
                try:
                    t.scan = store.scan(t.experiment["id"], sid)
                except NotFound:
                    t.scan = None
                return t
            t.scan = store.scan(t.experiment["id"], sid)
            t.owner = f"scan:{t.experiment['id']}:{sid}"
            t.base = f"/data/experiments/{t.experiment['id']}/scans/{quote(sid)}"
            if i >= len(seg):
                return t
            if seg[i] == "resources":
                return self.resolve_resources(t, seg, i + 1)
            raise HttpError(404, "Not Found")
        if nxt == "assessors":
            session = t.experiment
            if i >= len(seg):
                t.kind = "assessors"
                return t
            aref = seg[i]
            i += 1
            t.session, t.kind, t.ref = session, "assessor", aref
            try:
                t.experiment = store.experiment(session["project"], aref, session_id=session["id"])
            except NotFound:
                if i >= len(seg) and self.method == "PUT":
                    t.experiment = None
                    return t
                raise
            t.owner = f"exp:{t.experiment['id']}"
            t.base = f"/data/experiments/{session['id']}/assessors/{t.experiment['id']}"
            if i >= len(seg):
                return t
            if seg[i] in ("in", "out") and i + 1 < len(seg) and seg[i + 1] == "resources":
                i += 1
            if seg[i] == "resources":
                return self.resolve_resources(t, seg, i + 1)
            raise HttpError(404, "Not Found")
        if nxt == "resources":
            return self.resolve_resources(t, seg, i)
        if nxt in ("in", "out") and i < len(seg) and seg[i] == "resources":
            return self.resolve_resources(t, seg, i + 1)
        raise HttpError(404, "Not Found")

    def resolve_resources(self, t: Target, seg: list[str], i: int) -> Target:
        store = self.app.store
        if i >= len(seg):
            t.kind = "resources"
            return t
        ref = seg[i]
        i += 1
        t.kind, t.ref = "resource", ref
        try:
            t.resource = store.resource(t.owner, ref)
        except NotFound:
            if i >= len(seg) and self.method == "PUT":
                t.resource = None
                return t
            if (
                i < len(seg)
                and seg[i] == "files"
                and self.method in ("PUT", "POST")
                and i + 1 < len(seg)
            ):
                # uploading into a missing resource creates it (as XNAT does)
                rid, _ = store.put_resource(t.owner, ref)
                t.resource = store.resource(t.owner, str(rid))
            else:
                raise
        if i >= len(seg):
            return t
        if seg[i] != "files":
            raise HttpError(404, "Not Found")
        rest = seg[i + 1 :]
        if not rest or rest == [""]:
            t.kind = "files"
            return t
        t.kind = "file"
        t.file_path = "/".join(rest)
        return t

    def archive(self, seg: list[str]) -> None:
        t = self.resolve(seg)
        handler = getattr(
            self, f"{self.method.lower() if self.method != 'HEAD' else 'get'}_{t.kind}", None
        )
        if handler is None:
            raise HttpError(
                405 if t.kind != "root" else 404, f"Method {self.method} not allowed here"
            )
        handler(t)

    # ---------------------------------------------------------- field parsing
    def fields_from_query(self, xsi_type: str | None) -> dict[str, str]:
        """Query parameters that set fields: ``<xsiType>/field=v`` or ``field=v``."""
        skip = {
            "xsiType",
            "req_format",
            "format",
            "inbody",
            "allowDataDeletion",
            "event_reason",
            "event_id",
            "event_type",
            "event_action",
            "overwrite",
            "triggerPipelines",
            "fixScanTypes",
            "pullDataFromHeaders",
            "content",
            "tags",
            "extract",
            "update-stats",
        }
        out = {}
        for key, value in self.query_list:
            if key in skip:
                continue
            if "/" in key:
                prefix, _, rest = key.partition("/")
                if ":" not in prefix:
                    continue
                key = rest
            if "[" in key or "/" in key:
                continue  # nested xpaths are not supported for these objects
            out[key] = value
        return out

    # ---------------------------------------------------------- projects
    def get_projects(self, t: Target) -> None:
        rows = [
            {
                "ID": r["id"],
                "secondary_ID": r["id"],
                "name": r["name"],
                "description": r["description"],
                "pi_firstname": "",
                "pi_lastname": "",
                "URI": f"/data/projects/{r['id']}",
            }
            for r in self.app.store.q("SELECT * FROM projects ORDER BY id")
        ]
        self.send_listing(
            rows,
            ["ID", "secondary_ID", "name", "description", "pi_firstname", "pi_lastname", "URI"],
        )

    def get_project(self, t: Target) -> None:
        row = self.app.store.project(t.project)
        data = {
            "ID": row["id"],
            "secondary_ID": row["id"],
            "name": row["name"],
            "description": row["description"],
        }
        self.send_item("xnat:projectData", data, [], row["insert_date"], "Project")

    def put_project(self, t: Target) -> None:
        created = self.app.store.put_project(t.project, self.fields_from_query("xnat:projectData"))
        self.send_text(201 if created else 200, t.project)

    # ---------------------------------------------------------- subjects
    def get_subjects(self, t: Target) -> None:
        if t.project:
            self.app.store.project(t.project)
            rows = self.app.store.q("SELECT * FROM subjects WHERE project=? ORDER BY id", t.project)
        else:
            rows = self.app.store.q("SELECT * FROM subjects ORDER BY id")
        out = [
            {
                "ID": r["id"],
                "project": r["project"],
                "label": r["label"],
                "insert_date": r["insert_date"],
                "insert_user": "",
                "URI": f"/data/subjects/{r['id']}",
            }
            for r in rows
        ]
        self.send_listing(out, ["ID", "project", "label", "insert_date", "insert_user", "URI"])

    def get_subject(self, t: Target) -> None:
        if t.subject is None:
            raise NotFound("Unable to find the specified subject.")
        r = t.subject
        self.send_item(
            "xnat:subjectData",
            {"ID": r["id"], "project": r["project"], "label": r["label"]},
            [],
            r["insert_date"],
            "Subject",
        )

    def put_subject(self, t: Target) -> None:
        fields = self.fields_from_query("xnat:subjectData")
        sid, created = self.app.store.put_subject(t.project, t.ref, fields)
        self.send_text(201 if created else 200, sid)

    def delete_subject(self, t: Target) -> None:
        if t.subject is None:
            raise NotFound("Unable to find the specified subject.")
        store = self.app.store
        for e in store.q(
            "SELECT id FROM experiments WHERE subject_id=? AND session_id IS NULL", t.subject["id"]
        ):
            store.delete_experiment(e["id"])
        store.q("DELETE FROM subjects WHERE id=?", t.subject["id"])
        self.send_text(200, "")

    # ---------------------------------------------------------- experiments
    def experiment_row(self, r) -> dict[str, Any]:
        subject = self.app.store.one("SELECT label FROM subjects WHERE id=?", r["subject_id"])
        return {
            "ID": r["id"],
            "project": r["project"],
            "subject_ID": r["subject_id"],
            "xnat:subjectassessordata/subject_id": r["subject_id"],
            "subject_label": subject["label"] if subject else "",
            "label": r["label"],
            "date": r["date"],
            "xsiType": r["xsi_type"],
            "insert_date": r["insert_date"],
            "last_modified": r["last_modified"],
            "URI": f"/data/experiments/{r['id']}",
        }

    EXPT_COLUMNS = [
        "ID",
        "project",
        "subject_ID",
        "subject_label",
        "label",
        "date",
        "xsiType",
        "insert_date",
        "last_modified",
        "URI",
    ]

    def get_experiments(self, t: Target) -> None:
        store = self.app.store
        sql = "SELECT * FROM experiments WHERE session_id IS NULL"
        args: list[Any] = []
        if t.project:
            store.project(t.project)
            sql += " AND project=?"
            args.append(t.project)
        if t.subject is not None:
            sql += " AND subject_id=?"
            args.append(t.subject["id"])
        rows = [self.experiment_row(r) for r in store.q(sql + " ORDER BY id", *args)]
        self.send_listing(rows, self.EXPT_COLUMNS)

    def get_experiment(self, t: Target) -> None:
        r = t.experiment
        if r is None:
            raise NotFound("Unable to find the specified experiment.")
        if r["session_id"]:
            return self.get_assessor(t)
        fmt = self.query.get("format", "xml")
        store = self.app.store
        scans = store.q("SELECT * FROM scans WHERE experiment_id=? ORDER BY seq", r["id"])
        if fmt == "xml":
            return self.send_bytes(200, session_xml(r, scans, store), "text/xml")
        data = {
            "ID": r["id"],
            "project": r["project"],
            "label": r["label"],
            "subject_ID": r["subject_id"],
        }
        if r["date"]:
            data["date"] = r["date"]
        data.update(json.loads(r["fields"] or "{}"))
        children = []
        if scans:
            children.append(
                {
                    "field": "scans/scan",
                    "items": [
                        {
                            "meta": {
                                "xsi:type": s["xsi_type"],
                                "isHistory": False,
                                "start_date": r["insert_date"],
                            },
                            "data_fields": scan_fields(s, r),
                            "children": [],
                        }
                        for s in scans
                    ],
                }
            )
        self.send_item(r["xsi_type"], data, children, r["insert_date"], "Experiment")

    def put_experiment(self, t: Target) -> None:
        store = self.app.store
        xml_doc, xml_type, xml_fields = self.xml_body()
        xsi_type = self.query.get("xsiType") or xml_type
        if t.experiment is None:
            if t.subject is None:
                if xml_fields.get("subject_ID"):
                    t.subject = store.subject(t.project, xml_fields["subject_ID"])
                else:
                    raise HttpError(422, "Submitted experiment record must include the subject.")
            if not xsi_type:
                xsi_type = "xnat:mrSessionData"
        else:
            if t.project and t.experiment["project"] != t.project:
                raise HttpError(409, "Project must be modified through separate URI.")
            if "ID" in self.query and self.query["ID"] != t.experiment["id"]:
                raise HttpError(400, "ID cannot be modified")
            xsi_type = xsi_type or t.experiment["xsi_type"]
        if not re.match(r"^[A-Za-z0-9_\-]+$", t.ref):
            raise HttpError(417, "Invalid character in experiment label.")
        fields = dict(xml_fields)
        fields.update(self.fields_from_query(xsi_type))
        fields.pop("subject_ID", None)
        if "label" not in fields:
            fields["label"] = t.ref if t.experiment is None else t.experiment["label"]
        subject_id = t.subject["id"] if t.subject is not None else t.experiment["subject_id"]
        eid, created = store.put_experiment(
            t.project or t.experiment["project"], subject_id, t.ref, xsi_type, fields
        )
        if not created:
            store.touch(eid)
        self.send_text(201 if created else 200, eid)

    def delete_experiment(self, t: Target) -> None:
        if t.experiment is None:
            raise NotFound("Unable to find the specified experiment.")
        self.app.store.delete_experiment(t.experiment["id"])
        self.send_text(200, "")

    # ---------------------------------------------------------- assessors
    def get_assessors(self, t: Target) -> None:
        rows = self.app.store.q(
            "SELECT * FROM experiments WHERE session_id=? ORDER BY id", t.experiment["id"]
        )
        out = []
        for r in rows:
            row = self.experiment_row(r)
            row["URI"] = f"/data/experiments/{t.experiment['id']}/assessors/{r['id']}"
            row["session_ID"] = t.experiment["id"]
            out.append(row)
        self.send_listing(out, self.EXPT_COLUMNS + ["session_ID"])

    def get_assessor(self, t: Target) -> None:
        r = t.experiment
        fmt = self.query.get("format", "xml")
        if fmt == "xml":
            return self.send_bytes(200, assessor_xml(r), "text/xml")
        root = ET.fromstring(assessor_xml(r))
        item = element_item(root, r["xsi_type"])
        item["data_fields"].update({"ID": r["id"], "project": r["project"], "label": r["label"]})
        item["meta"]["start_date"] = r["insert_date"]
        self.send_json({"items": [item]})

    def put_assessor(self, t: Target) -> None:
        store = self.app.store
        session = t.session
        xml_doc, xml_type, xml_fields = self.xml_body()
        xsi_type = (
            self.query.get("xsiType")
            or xml_type
            or (t.experiment["xsi_type"] if t.experiment else None)
        )
        if not xsi_type:
            xsi_type = "xnat:mrAssessorData"
        if not re.match(r"^[A-Za-z0-9_\-]+$", t.ref):
            raise HttpError(417, "Invalid character in experiment label.")
        fields = {k: v for k, v in xml_fields.items() if k in ("date", "label")}
        fields.update(self.fields_from_query(xsi_type))
        fields.setdefault("label", t.ref if t.experiment is None else t.experiment["label"])
        # ExptAssessmentResource.handlePut: without allowDataDeletion=true an update
        # is loaded onto the stored item (template); with it, the item is built from
        # the XML alone. XNAT's SAX reader drops empty attributes, so ID="" is no ID.
        allow_deletion = self.query.get("allowDataDeletion", "false").lower() == "true"
        xml_id = None
        if xml_doc is not None:
            root = ET.fromstring(xml_doc)
            if root.get("label") and root.get("label") != fields["label"]:
                raise HttpError(400, "Label must be modified through separate URI.")
            if localname(root) not in ROOT_TYPES and xsi_type == xml_type:
                raise HttpError(422, "Only assessor documents can be PUT to an assessor URI.")
            xml_id = root.get("ID") or None
        elif t.experiment is None:
            # query-string creation: a minimal document
            xml_doc = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<xnat:{root_name(xsi_type)} '
                f'xmlns:xnat="{XNAT_NS}" project="{session["project"]}" '
                f'label="{fields["label"]}"/>'
            )
        kept_resources = None
        if t.experiment is not None:
            if allow_deletion and xml_id is None:
                # built from the XML alone: no ID, which xnat.xsd requires (validate()),
                # and "ID cannot be modified" after it
                raise HttpError(400, f"{xsi_type}/ID : Required Field; ID cannot be modified")
            if xml_id is not None and xml_id != t.experiment["id"]:
                raise HttpError(400, "ID cannot be modified")
            if allow_deletion:
                # DBAction.StoreItem(allowItemRemoval): child items the XML does not
                # name are removed, among them the out/file resources
                kept_resources = resource_labels(root)
        elif xml_id is not None:
            fields["ID"] = xml_id  # a new item keeps the ID it was given
        eid, created = store.put_experiment(
            session["project"],
            session["subject_id"],
            t.ref if t.experiment is None else t.experiment["id"],
            xsi_type,
            fields,
            session_id=session["id"],
            xml=None,
        )
        if xml_doc is not None:
            merged = merge_assessor_xml(
                None if created else store.experiment(None, eid)["xml"], xml_doc, allow_deletion
            )
            store.q("UPDATE experiments SET xml=?, xsi_type=? WHERE id=?", merged, xsi_type, eid)
        if kept_resources is not None and not store.rebuild_keeps_resources:
            for resource in store.resources(f"exp:{eid}"):
                if resource["label"] not in kept_resources:
                    store.delete_resource(resource["id"])
        self.send_text(201 if created else 200, eid)

    def delete_assessor(self, t: Target) -> None:
        if t.experiment is None:
            raise NotFound("Unable to find the specified experiment.")
        self.app.store.delete_experiment(t.experiment["id"])
        self.send_text(200, "")

    def xml_body(self) -> tuple[str | None, str | None, dict[str, str]]:
        """The XML document of a PUT (raw text/xml or pyxnat's multipart), its
        xsi type and its flat fields."""
        body = self.body()
        if not body:
            return None, None, {}
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            parts = parse_multipart(ctype, body)
            if not parts:
                raise HttpError(400, "Empty multipart body")
            body = parts[0][1]
        elif self.method == "PUT" and ctype.startswith("application/x-www-form-urlencoded"):
            return None, None, {}
        text = body.decode("utf-8")
        try:
            root = ET.fromstring(text)
        except ET.ParseError as err:
            raise HttpError(400, f"Unable to parse the XML document: {err}") from err
        name = localname(root)
        xsi_type = ROOT_TYPES.get(name) or f"xnat:{name[0].lower()}{name[1:]}Data"
        fields = {}
        for attr in ("label", "project"):
            if root.get(attr):
                fields[attr] = root.get(attr)
        for child in root:
            local = localname(child)
            if local in ("date", "subject_ID") and child.text:
                fields[local] = child.text.strip()
        return text, xsi_type, fields

    # ---------------------------------------------------------- scans
    def get_scans(self, t: Target) -> None:
        rows = self.app.store.q(
            "SELECT * FROM scans WHERE experiment_id=? ORDER BY seq", t.experiment["id"]
        )
        out = []
        for s in rows:
            row = scan_fields(s, t.experiment)
            row["xsiType"] = s["xsi_type"]
            row["URI"] = f"/data/experiments/{t.experiment['id']}/scans/{s['id']}"
            out.append(row)
        self.send_listing(
            out,
            [
                "xnat_imagescandata_id",
                "ID",
                "type",
                "quality",
                "series_description",
                "note",
                "xsiType",
                "URI",
            ],
        )

    def get_scan(self, t: Target) -> None:
        if t.scan is None:
            raise NotFound("Unable to find the specified scan.")
        s = t.scan
        if self.query.get("format", "xml") == "xml":
            el = ET.Element(
                f"{{{XNAT_NS}}}{root_name(s['xsi_type'])}", {"ID": s["id"], "type": s["type"]}
            )
            for name in ("quality", "series_description", "note"):
                if s[name]:
                    ET.SubElement(el, f"{{{XNAT_NS}}}{name}").text = s[name]
            return self.send_bytes(
                200, ET.tostring(el, xml_declaration=True, encoding="UTF-8"), "text/xml"
            )
        self.send_item(
            s["xsi_type"], scan_fields(s, t.experiment), [], t.experiment["insert_date"], "Scan"
        )

    def put_scan(self, t: Target) -> None:
        xsi_type = self.query.get("xsiType")
        if xsi_type == "xnat:imageScanData":
            # the base type of every scan has no element of its own: XNAT cannot
            # build an item of it from a PUT (issue 15; stricter where unsettled)
            raise HttpError(
                400, "xnat:imageScanData cannot be instantiated: use a concrete scan type"
            )
        created = self.app.store.put_scan(
            t.experiment["id"], t.ref, xsi_type, self.fields_from_query(xsi_type)
        )
        self.send_text(201 if created else 200, t.ref)

    def delete_scan(self, t: Target) -> None:
        self.app.store.delete_scan(t.experiment["id"], t.ref)
        self.send_text(200, "")

    # ---------------------------------------------------------- resources
    def get_resources(self, t: Target) -> None:
        store = self.app.store
        out = []
        for r in store.resources(t.owner):
            files = store.files(r["id"])
            out.append(
                {
                    "xnat_abstractresource_id": str(r["id"]),
                    "label": r["label"],
                    "element_name": "xnat:resourceCatalog",
                    "category": "",
                    "cat_id": "",
                    "cat_desc": "",
                    "format": r["format"],
                    "content": r["content"],
                    "tags": "",
                    "file_count": str(len(files)),
                    "file_size": str(sum(f["size"] for f in files)),
                }
            )
        self.send_listing(
            out,
            [
                "xnat_abstractresource_id",
                "label",
                "element_name",
                "category",
                "cat_id",
                "cat_desc",
                "format",
                "content",
                "tags",
                "file_count",
                "file_size",
            ],
        )

    def get_resource(self, t: Target) -> None:
        if self.query.get("format") == "zip":
            return self.get_files(t)
        r = t.resource
        if r is None:
            raise NotFound("Unable to find the specified resource.")
        files = self.app.store.files(r["id"])
        cat = ET.Element("{http://nrg.wustl.edu/catalog}Catalog", {"ID": str(r["id"])})
        entries = ET.SubElement(cat, "{http://nrg.wustl.edu/catalog}entries")
        for f in files:
            ET.SubElement(
                entries,
                "{http://nrg.wustl.edu/catalog}entry",
                {"URI": f["path"], "ID": f["path"], "digest": f["digest"]},
            )
        ET.register_namespace("cat", "http://nrg.wustl.edu/catalog")
        body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(cat)
        self.send_bytes(200, body, "text/xml")

    def put_resource(self, t: Target) -> None:
        if t.resource is not None:  # CatalogResource.handlePost
            raise HttpError(409, "Specified resource already exists.")
        self.app.store.put_resource(
            t.owner, t.ref, self.query.get("format", ""), self.query.get("content", "")
        )
        self.send_text(200, "")

    def delete_resource(self, t: Target) -> None:
        if t.resource is None:
            raise NotFound("Unable to find the specified resource.")
        self.app.store.delete_resource(t.resource["id"])
        self.touch_owner(t)
        self.send_text(200, "")

    def touch_owner(self, t: Target) -> None:
        eid = self.app.store.owner_experiment(t.owner)
        if eid:
            row = self.app.store.one("SELECT session_id FROM experiments WHERE id=?", eid)
            self.app.store.touch(eid, assessor=bool(row and row["session_id"]))

    # ---------------------------------------------------------- files
    def file_uri(self, t: Target, path: str) -> str:
        # CatalogUtils.getEntryDetails: parent URI + the raw relative path, not encoded
        return f"{t.base}/resources/{t.resource['id']}/files/{path}"

    def get_files(self, t: Target) -> None:
        store = self.app.store
        files = store.files(t.resource["id"])
        if self.query.get("format") == "zip":
            if not files:
                if self.query.get("accept-not-found") == "true":
                    return self.send_bytes(204, b"")
                raise HttpError(404, "No files to zip.")
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
                for f in files:
                    zf.write(
                        store.file_path(t.resource["id"], f["path"]),
                        f"{t.resource['label']}/files/{f['path']}",
                    )
            return self.send_bytes(
                200,
                buffer.getvalue(),
                "application/zip",
                {"Content-Disposition": f"attachment; filename={t.resource['label']}.zip"},
            )
        out = [
            {
                "Name": f["path"].rsplit("/", 1)[-1],
                "Size": str(f["size"]),
                "URI": self.file_uri(t, f["path"]),
                "collection": t.resource["label"],
                "file_tags": f["tags"],
                "file_format": f["format"],
                "file_content": f["content"],
                "cat_ID": str(t.resource["id"]),
                "digest": f["digest"],
            }
            for f in files
        ]
        self.send_listing(
            out,
            [
                "Name",
                "Size",
                "URI",
                "collection",
                "file_tags",
                "file_format",
                "file_content",
                "cat_ID",
                "digest",
            ],
        )

    def get_file(self, t: Target) -> None:
        store = self.app.store
        try:
            row = store.file(t.resource["id"], t.file_path)
        except NotFound:
            if self.query.get("accept-not-found") == "true":
                return self.send_bytes(204, b"")
            raise
        path = store.file_path(t.resource["id"], t.file_path)
        size = path.stat().st_size  # what is on disk (the catalogue may say otherwise)
        self.drain()
        self.send_response(200)
        self.status_sent = 200
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header(
            "Content-Disposition", f'inline; filename="{row["path"].rsplit("/", 1)[-1]}"'
        )
        for cookie in self.new_cookies:
            self.send_header("Set-Cookie", cookie)
        self.log_request_once()
        self.end_headers()
        if self.method == "HEAD":
            return
        with open(path, "rb") as fh:
            if self.truncate_next:
                self.wfile.write(fh.read(max(1, size // 2)))
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.flush()
            self.connection.sendfile(fh)

    def put_file(self, t: Target) -> None:
        self.post_file(t)

    def post_file(self, t: Target) -> None:
        store = self.app.store
        body = self.body()
        ctype = self.headers.get("Content-Type", "")
        meta = {
            "format": self.query.get("format", ""),
            "content": self.query.get("content", ""),
            "tags": self.query.get("tags", ""),
        }
        if meta["format"] == "U":
            meta["format"] = ""
        if ctype.startswith("multipart/form-data") and self.query.get("inbody") != "true":
            parts = parse_multipart(ctype, body)
            if not parts:
                raise HttpError(400, "You tried to POST to a resource but didn't provide any data.")
            uploads = [
                (t.file_path if len(parts) == 1 else (name or t.file_path), data)
                for name, data in parts
            ]
        else:
            if not body:
                raise HttpError(
                    400,
                    (
                        f"You tried to POST to {self.raw_path} but didn't provide any data to "
                        "upload. If you're trying to upload a file, try adding inbody=true to the "
                        "URL or use multipart/form-data to upload the file."
                    ),
                )
            uploads = [(t.file_path, body)]
        overwrite = self.query.get("overwrite", "false").lower() == "true"
        duplicates = [
            p
            for p, _ in uploads
            if store.one("SELECT 1 FROM files WHERE resource_id=? AND path=?", t.resource["id"], p)
        ]
        if duplicates and not overwrite:
            return self.send_bytes(
                200, json.dumps({"duplicates": duplicates}).encode(), "text/html"
            )
        for path, data in uploads:
            if self.query.get("extract") == "true" and path.endswith(".zip"):
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    for name in zf.namelist():
                        if not name.endswith("/"):
                            store.store_file(t.resource["id"], name, zf.read(name), meta)
            else:
                store.store_file(t.resource["id"], path, data, meta)
        self.touch_owner(t)
        self.send_text(200, "")

    def delete_file(self, t: Target) -> None:
        if self.user in self.app.store.no_delete:  # FileList.handleDelete: canDelete
            raise HttpError(403, "User account doesn't have permission to delete this file.")
        try:
            self.app.store.delete_file(t.resource["id"], t.file_path)
        except NotFound:
            if self.query.get("accept-not-found") == "true":
                return self.send_bytes(204, b"")
            raise HttpError(404, "File missing") from None
        self.touch_owner(t)
        self.send_text(200, "")

    # ---------------------------------------------------------- single items
    def send_item(
        self, xsi_type: str, data: dict[str, Any], children: list, start: str, root: str
    ) -> None:
        fmt = self.query.get("format", "xml")
        if fmt == "json":
            return self.send_json(
                {
                    "items": [
                        {
                            "meta": {
                                "create_event_id": 1,
                                "xsi:type": xsi_type,
                                "isHistory": False,
                                "start_date": start,
                            },
                            "data_fields": data,
                            "children": children,
                        }
                    ]
                }
            )
        el = ET.Element(
            f"{{{XNAT_NS}}}{root_name(xsi_type)}",
            {k: str(v) for k, v in data.items() if k in ("ID", "label", "project")},
        )
        self.send_bytes(200, ET.tostring(el, xml_declaration=True, encoding="UTF-8"), "text/xml")


# ====================================================================== helpers
def localname(el: ET.Element) -> str:
    return el.tag.rsplit("}", 1)[-1]


def workflow_row(row) -> dict[str, Any]:
    return {
        "wrk_workflowData_id": str(row["id"]),
        "ID": row["data_id"],
        "id": row["data_id"],
        "data_type": row["data_type"] or "",
        "ExternalID": row["external_id"] or "",
        "pipeline_name": row["pipeline_name"],
        "launch_time": row["launch_time"],
        "status": row["status"] or "",
        "step_description": row["step_description"] or "",
        "details": row["details"] or "",
        "comments": row["comments"] or "",
        "justification": row["justification"] or "",
        "percentageComplete": row["percentage"] or "",
        "category": row["category"] or "",
        "type": row["type"] or "",
        "create_user": row["create_user"] or "",
        "last_modified": row["last_modified"] or "",
    }


def scan_fields(s, experiment) -> dict[str, Any]:
    data = {
        "ID": s["id"],
        "xnat_imagescandata_id": f"{experiment['id']}:{s['id']}",
        "type": s["type"],
        "quality": s["quality"],
        "series_description": s["series_description"],
        "note": s["note"],
        "image_session_ID": experiment["id"],
        "project": experiment["project"],
    }
    data.update(json.loads(s["fields"] or "{}"))
    return {k: v for k, v in data.items() if v != ""}


def root_name(xsi_type: str) -> str:
    for name, t in ROOT_TYPES.items():
        if t == xsi_type:
            return name
    local = xsi_type.split(":")[-1]
    if local.endswith("ScanData"):
        return local[: -len("ScanData")].upper() + "Scan"
    return local[0].upper() + local[1:]


def session_xml(r, scans, store: Store) -> bytes:
    ET.register_namespace("xnat", XNAT_NS)
    ET.register_namespace("xsi", XSI_NS)
    x = lambda tag: f"{{{XNAT_NS}}}{tag}"  # noqa: E731
    root = ET.Element(
        x(root_name(r["xsi_type"])), {"ID": r["id"], "project": r["project"], "label": r["label"]}
    )
    if r["date"]:
        ET.SubElement(root, x("date")).text = r["date"]
    ET.SubElement(root, x("subject_ID")).text = r["subject_id"]
    if scans:
        el = ET.SubElement(root, x("scans"))
        for s in scans:
            scan = ET.SubElement(
                el,
                x("scan"),
                {"ID": s["id"], "type": s["type"], f"{{{XSI_NS}}}type": s["xsi_type"]},
            )
            for name in ("quality", "series_description", "note"):
                if s[name]:
                    ET.SubElement(scan, x(name)).text = s[name]
    return ET.tostring(root, xml_declaration=True, encoding="UTF-8")


def assessor_xml(r) -> bytes:
    """The stored document with the server's ID and label filled in."""
    ET.register_namespace("xnat", XNAT_NS)
    ET.register_namespace("xsi", XSI_NS)
    ET.register_namespace("prov", "http://www.nbirn.net/prov")
    root = ET.fromstring(r["xml"] or f'<xnat:{root_name(r["xsi_type"])} xmlns:xnat="{XNAT_NS}"/>')
    root.set("ID", r["id"])
    root.set("project", r["project"])
    root.set("label", r["label"])
    return ET.tostring(root, xml_declaration=True, encoding="UTF-8")


def resource_labels(root: ET.Element) -> set[str]:
    """Labels of the resources an assessor document names (``out/file``,
    ``in/file``, ``resources/resource``)."""
    return {
        el.get("label", "")
        for el in root.iter()
        if localname(el) in ("file", "resource") and el.get("label")
    }


def merge_assessor_xml(old: str | None, new: str, allow_deletion: bool) -> str:
    """XNAT merges a PUT into the stored item; with allowDataDeletion=true the
    new document replaces the children it names (here: the whole document)."""
    if old is None or allow_deletion:
        return new
    old_root = ET.fromstring(old)
    new_root = ET.fromstring(new)
    names = {c.tag for c in new_root}
    for child in list(old_root):
        if child.tag not in names:
            new_root.append(child)
    return ET.tostring(new_root, encoding="unicode")


def element_item(el: ET.Element, xsi_type: str | None = None) -> dict[str, Any]:
    """XNAT's JSON for an item: flat data_fields ('a/b' for single nested
    elements), children for repeated elements and typed sub-items."""
    local = localname(el)
    meta = {
        "xsi:type": xsi_type or el.get(f"{{{XSI_NS}}}type") or f"xnat:{local}",
        "isHistory": False,
    }
    data: dict[str, Any] = {}
    children: dict[str, list] = {}

    def walk(node: ET.Element, prefix: str) -> None:
        for k, v in node.attrib.items():
            if k.startswith("{"):
                continue
            data[f"{prefix}{k}"] = v
        for child in node:
            name = localname(child)
            path = f"{prefix}{name}"
            if name in REPEATED:
                sub = element_item(child, f"{meta['xsi:type']}_{name}")
                if len(child) == 0 and (child.text or "").strip():
                    sub["data_fields"][name] = child.text.strip()
                children.setdefault(path, []).append(sub)
            elif child.get(f"{{{XSI_NS}}}type"):
                children.setdefault(path, []).append(element_item(child))
            elif len(child) == 0:
                if (child.text or "").strip():
                    data[path] = child.text.strip()
                for k, v in child.attrib.items():
                    if not k.startswith("{"):
                        data[f"{path}/{k}"] = v
            else:
                walk(child, f"{path}/")

    walk(el, "")
    return {
        "meta": meta,
        "data_fields": data,
        "children": [{"field": f, "items": items} for f, items in children.items()],
    }


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    parts = []
    for part in message.iter_parts():
        parts.append(
            (
                part.get_filename() or part.get_param("name", header="content-disposition") or "",
                part.get_payload(decode=True) or b"",
            )
        )
    return parts
