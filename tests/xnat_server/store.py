"""State of the XNAT test server: SQLite for the catalogue, plain files on disk.

Everything the REST layer needs is here, with XNAT's identifiers: experiments
(sessions and assessors) get ``<SITE>_E00001`` IDs, subjects ``<SITE>_S00001``,
resources numeric ``xnat_abstractresource_id`` values, workflows numeric
``wrk_workflowData_id`` values. Files live under ``<data>/files/<resource id>/``
with their MD5 digest in the catalogue, as XNAT keeps it when checksums are on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import string
import threading
import time
import uuid
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER);
CREATE TABLE IF NOT EXISTS users (login TEXT PRIMARY KEY, password TEXT);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY, name TEXT, description TEXT, insert_date TEXT);
CREATE TABLE IF NOT EXISTS subjects (
    id TEXT PRIMARY KEY, project TEXT, label TEXT, insert_date TEXT, UNIQUE(project, label));
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY, project TEXT, subject_id TEXT, label TEXT, xsi_type TEXT,
    date TEXT, insert_date TEXT, last_modified TEXT, fields TEXT,
    session_id TEXT, xml TEXT, UNIQUE(project, label));
CREATE TABLE IF NOT EXISTS scans (
    experiment_id TEXT, id TEXT, xsi_type TEXT, type TEXT, series_description TEXT,
    quality TEXT, note TEXT, fields TEXT, seq INTEGER, PRIMARY KEY(experiment_id, id));
CREATE TABLE IF NOT EXISTS resources (
    id INTEGER PRIMARY KEY, owner TEXT, label TEXT, format TEXT, content TEXT,
    UNIQUE(owner, label));
CREATE TABLE IF NOT EXISTS files (
    resource_id INTEGER, path TEXT, size INTEGER, digest TEXT, format TEXT,
    content TEXT, tags TEXT, PRIMARY KEY(resource_id, path));
CREATE TABLE IF NOT EXISTS workflows (
    id INTEGER PRIMARY KEY, data_id TEXT, data_type TEXT, external_id TEXT,
    pipeline_name TEXT, launch_time TEXT, status TEXT, step_description TEXT,
    details TEXT, comments TEXT, justification TEXT, percentage TEXT,
    category TEXT, type TEXT, create_user TEXT, last_modified TEXT);
CREATE TABLE IF NOT EXISTS tokens (
    alias TEXT PRIMARY KEY, secret TEXT, login TEXT, issued REAL, expires REAL, enabled INTEGER);
CREATE TABLE IF NOT EXISTS jsessions (
    id TEXT PRIMARY KEY, login TEXT, created REAL, last_seen REAL);
"""


def now_iso() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


class NotFound(Exception):
    pass


class Store:
    """The catalogue. All methods are thread-safe (one lock around SQLite)."""

    def __init__(
        self,
        data_dir: Path,
        site: str = "XNAT",
        token_lifetime: float = 2 * 24 * 3600,
        token_cleanup_interval: float = 3600.0,
        max_sessions: int = 1000,
    ):
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.site = site
        self.token_lifetime = token_lifetime
        # SiteConfigPreferences: sessionTimeout "15 minutes", concurrentMaxSessions 1000,
        # aliasTokenTimeoutSchedule "0 0 * * * *" (the expired-token cleanup, hourly)
        self.session_timeout = 900.0
        self.max_sessions = max_sessions
        self.sessions_opened: dict[str, int] = {}  # logins ever, per user (tests count them)
        # the site's "checksums" setting: a file gets its digest only if it was on
        # when the file arrived (CatalogUtils.setChecksum); tests switch it off
        self.checksums = True
        self.no_delete: set[str] = set()  # logins without delete rights (403 on file deletes)
        # whether an assessor rebuilt from XML alone keeps resources the XML does not
        # name: XNAT's source does not settle it; removed (stricter) unless a test asks
        self.rebuild_keeps_resources = False
        self.token_cleanup_interval = token_cleanup_interval
        self.next_token_cleanup = time.time() + token_cleanup_interval
        self.lock = threading.RLock()
        self.db = sqlite3.connect(
            str(self.data_dir / "xnat.db"), check_same_thread=False, isolation_level=None
        )
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)

    # ------------------------------------------------------------------ basics
    def q(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        rows = self.q(sql, *args)
        return rows[0] if rows else None

    def _next(self, name: str) -> int:
        with self.lock:
            row = self.db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
            value = (row[0] if row else 0) + 1
            self.db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (name, value))
            return value

    # ------------------------------------------------------------------ users, sessions, tokens
    def add_user(self, login: str, password: str) -> None:
        self.q("INSERT OR REPLACE INTO users VALUES (?, ?)", login, password)

    def check_password(self, login: str, password: str) -> bool:
        row = self.one("SELECT password FROM users WHERE login=?", login)
        return row is not None and secrets.compare_digest(row["password"], password)

    def new_jsession(self, login: str) -> str | None:
        """A new HTTP session, or None when the user has ``max_sessions`` live
        ones (SecurityConfig: maxSessionsPreventsLogin, exceptionIfMaximumExceeded)."""
        t = time.time()
        with self.lock:
            if self.live_sessions(login) >= self.max_sessions:
                return None
            sid = secrets.token_hex(16).upper()
            self.q("INSERT INTO jsessions VALUES (?, ?, ?, ?)", sid, login, t, t)
            self.sessions_opened[login] = self.sessions_opened.get(login, 0) + 1
        return sid

    def live_sessions(self, login: str) -> int:
        row = self.one(
            "SELECT COUNT(*) AS n FROM jsessions WHERE login=? AND last_seen>?",
            login,
            time.time() - self.session_timeout,
        )
        return int(row["n"])

    def jsession_user(self, sid: str) -> str | None:
        row = self.one("SELECT login, last_seen FROM jsessions WHERE id=?", sid)
        if row is None or time.time() - row["last_seen"] > self.session_timeout:
            return None
        self.q("UPDATE jsessions SET last_seen=? WHERE id=?", time.time(), sid)
        return row["login"]

    def drop_jsession(self, sid: str) -> None:
        self.q("DELETE FROM jsessions WHERE id=?", sid)

    def issue_token(self, login: str) -> dict[str, Any]:
        alias = str(uuid.uuid4())
        alphabet = string.ascii_letters + string.digits
        secret = "".join(secrets.choice(alphabet) for _ in range(64))
        issued = time.time()
        expires = issued + self.token_lifetime
        self.q(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, 1)", alias, secret, login, issued, expires
        )
        n = self._next("token")
        return {
            "id": n,
            "enabled": True,
            "created": int(issued * 1000),
            "timestamp": int(issued * 1000),
            "disabled": 0,
            "alias": alias,
            "secret": secret,
            "singleUse": False,
            "xdatUserId": login,
            "validIPAddresses": [],
            "estimatedExpirationTime": int(expires * 1000),
        }

    def token_user(self, alias: str, secret: str) -> str | None:
        """HibernateAliasTokenService.validateToken: alias and secret only, no
        expiry check; expired tokens go at the next scheduled cleanup."""
        self.cleanup_tokens_when_due()
        row = self.token(alias)
        if row is None or not secrets.compare_digest(row["secret"], secret):
            return None
        return row["login"]

    def token(self, alias: str) -> sqlite3.Row | None:
        """A token XNAT still has (invalidated ones are deleted there; kept here,
        disabled, for the tests to inspect)."""
        return self.one("SELECT * FROM tokens WHERE alias=? AND enabled=1", alias)

    def invalidate_token(self, alias: str) -> bool:
        with self.lock:
            cur = self.db.execute(
                "UPDATE tokens SET enabled=0 WHERE alias=? AND enabled=1", (alias,)
            )
            return cur.rowcount > 0

    def cleanup_tokens_when_due(self) -> None:
        if time.time() >= self.next_token_cleanup:
            self.cleanup_expired_tokens()

    def cleanup_expired_tokens(self) -> int:
        """invalidateExpiredTokens, as the hourly schedule runs it."""
        with self.lock:
            self.next_token_cleanup = time.time() + self.token_cleanup_interval
            return self.db.execute(
                "UPDATE tokens SET enabled=0 WHERE enabled=1 AND expires<?", (time.time(),)
            ).rowcount

    def expire_tokens(self) -> int:
        """Fault injection: every token expired and the cleanup run now."""
        with self.lock:
            self.db.execute("UPDATE tokens SET expires=? WHERE enabled=1", (time.time() - 1,))
            return self.cleanup_expired_tokens()

    # ------------------------------------------------------------------ projects / subjects
    def put_project(self, pid: str, fields: dict[str, str]) -> bool:
        row = self.one("SELECT * FROM projects WHERE id=?", pid)
        if row is None:
            self.q(
                "INSERT INTO projects VALUES (?, ?, ?, ?)",
                pid,
                fields.get("name", pid),
                fields.get("description", ""),
                now_iso(),
            )
            return True
        for key in ("name", "description"):
            if key in fields:
                self.q(f"UPDATE projects SET {key}=? WHERE id=?", fields[key], pid)
        return False

    def project(self, pid: str) -> sqlite3.Row:
        row = self.one("SELECT * FROM projects WHERE id=?", pid)
        if row is None:
            raise NotFound("Unable to find the specified project.")
        return row

    def subject(self, project: str | None, ref: str) -> sqlite3.Row:
        if project is None:
            row = self.one("SELECT * FROM subjects WHERE id=?", ref)
        else:
            row = self.one(
                "SELECT * FROM subjects WHERE project=? AND (id=? OR label=?) ORDER BY id=? DESC",
                project,
                ref,
                ref,
                ref,
            )
        if row is None:
            raise NotFound("Unable to find the specified subject.")
        return row

    def put_subject(self, project: str, ref: str, fields: dict[str, str]) -> tuple[str, bool]:
        self.project(project)
        try:
            return self.subject(project, ref)["id"], False
        except NotFound:
            sid = f"{self.site}_S{self._next('subject'):05d}"
            self.q(
                "INSERT INTO subjects VALUES (?, ?, ?, ?)",
                sid,
                project,
                fields.get("label", ref),
                now_iso(),
            )
            return sid, True

    # ------------------------------------------------------------------ experiments and assessors
    def experiment(
        self,
        project: str | None,
        ref: str,
        subject_id: str | None = None,
        session_id: str | None = None,
    ) -> sqlite3.Row:
        sql = "SELECT * FROM experiments WHERE (id=? OR label=?)"
        args: list[Any] = [ref, ref]
        if project is not None:
            sql += " AND (project=? OR id=?)"
            args += [project, ref]
        if subject_id is not None:
            sql += " AND subject_id=?"
            args.append(subject_id)
        if session_id is not None:
            sql += " AND session_id=?"
            args.append(session_id)
        sql += " ORDER BY id=? DESC"
        args.append(ref)
        row = self.one(sql, *args)
        if row is None:
            raise NotFound("Unable to find the specified experiment.")
        return row

    def put_experiment(
        self,
        project: str,
        subject_id: str,
        ref: str,
        xsi_type: str,
        fields: dict[str, str],
        session_id: str | None = None,
        xml: str | None = None,
    ) -> tuple[str, bool]:
        try:
            row = self.experiment(project, ref, session_id=session_id)
        except NotFound:
            row = None
        t = now_iso()
        if row is None:
            eid = fields.get("ID") or f"{self.site}_E{self._next('experiment'):05d}"
            self.q(
                "INSERT INTO experiments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                eid,
                project,
                subject_id,
                fields.get("label") or ref,
                xsi_type,
                fields.get("date", ""),
                t,
                t,
                json.dumps({k: v for k, v in fields.items() if k not in ("ID", "label", "date")}),
                session_id,
                xml,
            )
            if session_id:
                self.touch(session_id, assessor=True)
            return eid, True
        eid = row["id"]
        stored = json.loads(row["fields"] or "{}")
        for key, value in fields.items():
            if key in ("ID", "label"):
                continue
            if key == "date":
                self.q(
                    "UPDATE experiments SET date=? WHERE id=?",
                    "" if value == "NULL" else value,
                    eid,
                )
            elif value == "NULL":
                stored.pop(key, None)
            else:
                stored[key] = value
        self.q(
            "UPDATE experiments SET fields=?, last_modified=? WHERE id=?",
            json.dumps(stored),
            t,
            eid,
        )
        if xml is not None:
            self.q("UPDATE experiments SET xml=?, xsi_type=? WHERE id=?", xml, xsi_type, eid)
        if session_id:
            self.touch(session_id, assessor=True)
        return eid, False

    def touch(self, experiment_id: str, assessor: bool = False) -> None:
        """Record a change of an experiment and of what it belongs to: XNAT's
        update_ls_* triggers (GenericWrapperUtils.GetUpdateFunctions) set
        last_modified on the changed row and PERFORM the same on its parents, so
        a change to an assessor, a scan or a file changes its session's too."""
        t = now_iso()
        row = self.one("SELECT session_id FROM experiments WHERE id=?", experiment_id)
        self.q("UPDATE experiments SET last_modified=? WHERE id=?", t, experiment_id)
        if row is not None and row["session_id"]:
            self.q("UPDATE experiments SET last_modified=? WHERE id=?", t, row["session_id"])

    def delete_experiment(self, eid: str) -> None:
        for a in self.q("SELECT id FROM experiments WHERE session_id=?", eid):
            self.delete_experiment(a["id"])
        for scan in self.q("SELECT id FROM scans WHERE experiment_id=?", eid):
            self._delete_owner(f"scan:{eid}:{scan['id']}")
        self._delete_owner(f"exp:{eid}")
        self.q("DELETE FROM scans WHERE experiment_id=?", eid)
        self.q("DELETE FROM experiments WHERE id=?", eid)

    def _delete_owner(self, owner: str) -> None:
        for res in self.q("SELECT id FROM resources WHERE owner=?", owner):
            shutil.rmtree(self.files_dir / str(res["id"]), ignore_errors=True)
            self.q("DELETE FROM files WHERE resource_id=?", res["id"])
        self.q("DELETE FROM resources WHERE owner=?", owner)

    # ------------------------------------------------------------------ scans
    def scan(self, eid: str, sid: str) -> sqlite3.Row:
        row = self.one("SELECT * FROM scans WHERE experiment_id=? AND id=?", eid, sid)
        if row is None:
            raise NotFound("Unable to find the specified scan.")
        return row

    def put_scan(self, eid: str, sid: str, xsi_type: str | None, fields: dict[str, str]) -> bool:
        columns = ("type", "series_description", "quality", "note")
        row = self.one("SELECT * FROM scans WHERE experiment_id=? AND id=?", eid, sid)
        if row is None:
            self.q(
                "INSERT INTO scans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                eid,
                sid,
                xsi_type or "xnat:mrScanData",
                fields.get("type", ""),
                fields.get("series_description", ""),
                fields.get("quality", ""),
                fields.get("note", ""),
                json.dumps({k: v for k, v in fields.items() if k not in columns and k != "ID"}),
                self._next("scanseq"),
            )
            self.touch(eid)
            return True
        extra = json.loads(row["fields"] or "{}")
        for key, value in fields.items():
            value = "" if value == "NULL" else value
            if key in columns:
                self.q(f"UPDATE scans SET {key}=? WHERE experiment_id=? AND id=?", value, eid, sid)
            elif key != "ID":
                extra[key] = value
        self.q(
            "UPDATE scans SET fields=? WHERE experiment_id=? AND id=?", json.dumps(extra), eid, sid
        )
        if xsi_type:
            self.q("UPDATE scans SET xsi_type=? WHERE experiment_id=? AND id=?", xsi_type, eid, sid)
        self.touch(eid)  # a scan is a child of its session
        return False

    def delete_scan(self, eid: str, sid: str) -> None:
        self._delete_owner(f"scan:{eid}:{sid}")
        self.q("DELETE FROM scans WHERE experiment_id=? AND id=?", eid, sid)
        self.touch(eid)

    # ------------------------------------------------------------------ resources and files
    def resource(self, owner: str, ref: str) -> sqlite3.Row:
        row = self.one(
            "SELECT * FROM resources WHERE owner=? AND (label=? OR CAST(id AS TEXT)=?) "
            "ORDER BY CAST(id AS TEXT)=? DESC",
            owner,
            ref,
            ref,
            ref,
        )
        if row is None:
            raise NotFound("Unable to find the specified resource.")
        return row

    def put_resource(
        self, owner: str, label: str, fmt: str = "", content: str = ""
    ) -> tuple[int, bool]:
        try:
            return self.resource(owner, label)["id"], False
        except NotFound:
            rid = self._next("resource")
            self.q("INSERT INTO resources VALUES (?, ?, ?, ?, ?)", rid, owner, label, fmt, content)
            return rid, True

    def resources(self, owner: str) -> list[sqlite3.Row]:
        return self.q("SELECT * FROM resources WHERE owner=? ORDER BY id", owner)

    def delete_resource(self, rid: int) -> None:
        shutil.rmtree(self.files_dir / str(rid), ignore_errors=True)
        self.q("DELETE FROM files WHERE resource_id=?", rid)
        self.q("DELETE FROM resources WHERE id=?", rid)

    def files(self, rid: int) -> list[sqlite3.Row]:
        return self.q("SELECT * FROM files WHERE resource_id=? ORDER BY path", rid)

    def file(self, rid: int, path: str) -> sqlite3.Row:
        row = self.one("SELECT * FROM files WHERE resource_id=? AND path=?", rid, path)
        if row is None:
            raise NotFound("Unable to find file.")
        return row

    def file_path(self, rid: int, path: str) -> Path:
        target = (self.files_dir / str(rid) / path).resolve()
        if not str(target).startswith(str((self.files_dir / str(rid)).resolve())):
            raise NotFound("Unable to find file.")
        return target

    def store_file(self, rid: int, path: str, source, meta: dict[str, str]) -> None:
        """Write ``source`` (a file object or bytes) as ``path`` of resource ``rid``."""
        target = self.file_path(rid, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".upload-{secrets.token_hex(4)}")
        md5 = hashlib.md5()
        size = 0
        with open(tmp, "wb") as out:
            if isinstance(source, (bytes, bytearray)):
                out.write(source)
                md5.update(source)
                size = len(source)
            else:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    out.write(chunk)
                    md5.update(chunk)
                    size += len(chunk)
        os.replace(tmp, target)
        self.q(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
            rid,
            path,
            size,
            md5.hexdigest() if self.checksums else "",
            meta.get("format", ""),
            meta.get("content", ""),
            meta.get("tags", ""),
        )

    def delete_file(self, rid: int, path: str) -> None:
        self.file(rid, path)
        try:
            self.file_path(rid, path).unlink()
        except FileNotFoundError:
            pass
        self.q("DELETE FROM files WHERE resource_id=? AND path=?", rid, path)

    def owner_experiment(self, owner: str) -> str | None:
        parts = owner.split(":")
        return parts[1] if parts[0] in ("exp", "scan") else None

    # ------------------------------------------------------------------ workflows
    def put_workflow(self, fields: dict[str, str], login: str) -> tuple[int, bool]:
        key = (fields.get("id", ""), fields.get("pipeline_name", ""), fields.get("launch_time", ""))
        row = self.one(
            "SELECT * FROM workflows WHERE data_id=? AND pipeline_name=? AND launch_time=?", *key
        )
        columns = {
            "data_type": "data_type",
            "ExternalID": "external_id",
            "status": "status",
            "step_description": "step_description",
            "details": "details",
            "comments": "comments",
            "justification": "justification",
            "percentageComplete": "percentage",
            "category": "category",
            "type": "type",
        }
        if row is None:
            wid = self._next("workflow")
            self.q(
                "INSERT INTO workflows (id, data_id, pipeline_name, launch_time, create_user, "
                "last_modified) VALUES (?, ?, ?, ?, ?, ?)",
                wid,
                key[0],
                key[1],
                key[2],
                login,
                now_iso(),
            )
            created = True
        else:
            wid = row["id"]
            created = False
        for name, column in columns.items():
            if name in fields:
                self.q(
                    f"UPDATE workflows SET {column}=?, last_modified=? WHERE id=?",
                    fields[name],
                    now_iso(),
                    wid,
                )
        return wid, created

    def workflows(self, **filters: str) -> list[sqlite3.Row]:
        sql = "SELECT * FROM workflows WHERE 1=1"
        args = []
        for column, value in filters.items():
            sql += f" AND {column}=?"
            args.append(value)
        return self.q(sql + " ORDER BY id", *args)
