"""HTTP calls to XNAT through pyxnat's session, with retries and clear errors.

pyxnat's ``Interface`` owns the ``requests`` session (basic auth on every
request, its cookies, TLS verification); this module adds what a workflow
needs on top: timeouts, retries with exponential backoff on 5xx, timeouts and
dropped connections, and error messages that name the XNAT URL and what went
wrong, never the credentials. Every transport the backend uses lives here:
calls, listings, verified downloads and deletes.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import logging
import os
import random
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from qmroct.archive.base import ArchiveError

log = logging.getLogger("qmroct.archive.xnat")

# a file listing's URI up to the file's path inside its resource
FILES_PREFIX = re.compile(r"^.*?/resources/[^/]+/files/")
RETRY_STATUS = frozenset({500, 502, 503, 504})
TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class XnatNotFound(ArchiveError):
    """XNAT answered 404 for this URI."""


class XnatUnanswered(ArchiveError):
    """No usable answer after every attempt (5xx, timeouts, dropped connections):
    XNAT may or may not have done what was asked."""


class XnatForbidden(ArchiveError):
    """XNAT answered 403: the account lacks the right for this call."""


class XnatAuthError(ArchiveError):
    """XNAT answered 401: bad credentials, or an expired/invalidated alias token."""


def error_text(response: requests.Response) -> str:
    """The message of an XNAT error page (``<h3>...</h3>``) or the start of the body."""
    text = response.text or ""
    match = re.search(r"<h3>(.*?)</h3>", text, re.S)
    if match:
        return html.unescape(match.group(1).strip())
    text = re.sub(r"<[^>]+>", " ", text)
    return " ".join(text.split())[:300]


def looks_like_error_page(body: bytes | str) -> bool:
    """Both clients treat an HTML page as an error, whatever the status."""
    prefix = body[:20] if isinstance(body, (bytes, str)) else b""
    if isinstance(prefix, str):
        prefix = prefix.encode(errors="replace")
    return prefix.lstrip().startswith((b"<!DOCTYPE", b"<html>"))


def file_path_of(uri: str) -> str:
    """A file's path inside its resource, from a listing's URI (XNAT gives it raw)."""
    return FILES_PREFIX.sub("", uri, count=1)


def file_url(uri: str) -> str:
    """A listing's file URI made requestable: XNAT gives it raw (the relative path
    as stored: spaces, ``%``, ``#``), so every segment is percent-encoded here."""
    return "/".join(quote(part, safe="") for part in uri.split("/"))


class XnatHttp:
    """Authenticated, retrying HTTP on top of a pyxnat ``Interface``."""

    def __init__(
        self,
        interface: Any,
        server: str,
        user: str,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
    ):
        self.intf = interface
        self.server = server.rstrip("/")
        self.user = user
        self.timeout = (connect_timeout, timeout)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.is_token = bool(
            re.fullmatch(r"[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}", user or "")
        )

    def sleep_before(self, attempt: int) -> None:
        delay = min(self.max_backoff, self.backoff * (2**attempt))
        time.sleep(delay * (1 + random.random() * 0.25))

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        ok: Iterable[int] = (200, 201),
        retries: int | None = None,
        what: str = "",
    ) -> requests.Response:
        """One call, retried on transient failures. ``data`` may be a callable
        returning a fresh body (for file uploads that must restart)."""
        retries = self.retries if retries is None else retries
        ok = tuple(ok)
        what = what or f"{method} {path}"
        last: str = ""
        for attempt in range(retries + 1):
            if attempt:
                self.sleep_before(attempt - 1)
            body = data() if callable(data) else data
            try:
                call = getattr(self.intf, method.lower())
                response = call(
                    path,
                    params=params,
                    data=body,
                    headers=headers or {},
                    stream=stream,
                    timeout=self.timeout,
                )
            except TRANSIENT as err:
                last = f"{type(err).__name__}: {_short(err)}"
                log.warning("XNAT %s: %s (attempt %d of %d)", what, last, attempt + 1, retries + 1)
                continue
            finally:
                if hasattr(body, "close"):
                    body.close()
            status = response.status_code
            if status in RETRY_STATUS:
                last = f"HTTP {status} {error_text(response)}"
                response.close()
                log.warning("XNAT %s: %s (attempt %d of %d)", what, last, attempt + 1, retries + 1)
                continue
            if status == 401:
                response.close()
                if self.is_token:
                    raise XnatAuthError(
                        f"XNAT at {self.server} refused the alias token {self.user[:8]}... (401): "
                        "it expired or was invalidated; the head process renews tokens, rerun the "
                        "workflow if it stopped"
                    )
                raise XnatAuthError(
                    f"XNAT at {self.server} refused the login of user '{self.user}' (401): wrong "
                    "user name or password (check ~/.netrc or XNAT_USER/XNAT_PASS)"
                )
            if status == 404:
                message = error_text(response)
                response.close()
                raise XnatNotFound(f"XNAT {what}: not found (404 {message})")
            if status == 403:
                message = error_text(response)
                response.close()
                raise XnatForbidden(f"XNAT {what}: forbidden (403 {message})")
            if status not in ok:
                message = error_text(response)
                response.close()
                raise ArchiveError(f"XNAT {what} failed: HTTP {status} {message}")
            if not stream and looks_like_error_page(response.content):
                raise ArchiveError(f"XNAT {what} answered an error page: {error_text(response)}")
            return response
        raise XnatUnanswered(
            f"XNAT {what} failed after {retries + 1} attempts at {self.server}: {last}"
        )

    def close(self) -> None:
        """End the XNAT login session (XNAT allows 1000 per user, each lives 15
        minutes unless ended) and the HTTP connections."""
        session = self.intf._http
        try:
            if session.cookies.get("JSESSIONID"):
                self.request("DELETE", "/data/JSESSION", ok=(200,), retries=0, what="logout")
        except ArchiveError as err:  # the session expires on its own
            log.info("XNAT logout: %s", err)
        finally:
            session.close()

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, ok=(200,), **kwargs)

    def listing(
        self, path: str, columns: str = "", what: str = "", **params: Any
    ) -> list[dict[str, str]]:
        """A listing as pyxnat reads it: ``format=csv`` parsed into dicts."""
        from pyxnat.core.jsonutil import csv_to_json

        query = {"format": "csv", **params}
        if columns:
            query["columns"] = columns
        response = self.get(path, params=query, what=what or f"listing {path}")
        text = response.content.decode("utf-8")
        if not text.strip():
            return []
        return csv_to_json(text)

    def download(
        self, uri: str, target: Path, size: int, checksum: str, what: str, chunk_size: int = 1 << 20
    ) -> None:
        """Stream ``uri`` into ``target`` (via ``.part``), checked against the
        listed size and, when XNAT gave one, its digest (``md5:<hex>``);
        retried on dropped connections, truncated bodies and mismatches."""
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        algo, _, expected = checksum.partition(":")
        attempts = self.retries + 1
        problem = ""
        buffer = memoryview(bytearray(chunk_size))  # one buffer for every read (see body_chunks)
        for attempt in range(attempts):
            if attempt:
                self.sleep_before(attempt - 1)
            hasher = hashlib.new(algo) if algo in ("md5", "sha256", "sha1") else None
            got = 0
            # identity: size and digest are the stored file's, and a plain body
            # can be read straight into the buffer
            response = self.get(
                file_url(uri),
                stream=True,
                ok=(200,),
                headers={"Accept-Encoding": "identity"},
                what=f"download {what}",
            )
            try:
                with open(part, "wb") as fh:
                    for chunk in body_chunks(response, buffer):
                        if (
                            not got
                            and looks_like_error_page(bytes(chunk[:20]))
                            and not target.name.lower().endswith((".html", ".htm"))
                        ):
                            raise ArchiveError("XNAT answered an error page")
                        if hasher:
                            hasher.update(chunk)  # releases the GIL: files hash in parallel
                        fh.write(chunk)  # pieces are larger than the file buffer: written through
                        got += len(chunk)
            except (requests.RequestException, BrokenBody) as err:  # dropped or truncated
                problem = f"{_broken(err)} after {got} bytes"
                part.unlink(missing_ok=True)
                log.warning(
                    "XNAT download %s: %s (attempt %d of %d)", what, problem, attempt + 1, attempts
                )
                continue
            except (OSError, ArchiveError) as err:  # the local file (disk full) or an error page
                part.unlink(missing_ok=True)
                raise ArchiveError(f"XNAT download {what}: {err}") from None
            except Exception as err:  # anything else urllib3 raises mid-body
                problem = f"{type(err).__name__} after {got} bytes"
                part.unlink(missing_ok=True)
                log.warning(
                    "XNAT download %s: %s (attempt %d of %d)", what, problem, attempt + 1, attempts
                )
                continue
            finally:
                response.close()
            if got != size:
                problem = f"got {got} bytes, XNAT lists {size}"
            elif hasher and hasher.hexdigest() != expected.lower():
                problem = f"{algo} {hasher.hexdigest()} does not match XNAT's {expected}"
            else:
                os.replace(part, target)
                return
            part.unlink(missing_ok=True)
            log.warning(
                "XNAT download %s: %s (attempt %d of %d)", what, problem, attempt + 1, attempts
            )
        raise ArchiveError(f"XNAT download {what} failed after {attempts} attempts: {problem}")


def _broken(err: Exception) -> str:
    # a BrokenBody says what broke; requests' own errors are named by their type
    return str(err) if isinstance(err, BrokenBody) else type(err).__name__


class BrokenBody(Exception):
    """The connection failed while a response body was read (timeout, reset,
    closed early): transient, the download is worth another attempt."""


def body_chunks(response: requests.Response, buffer: memoryview) -> Iterator[memoryview | bytes]:
    """A streamed response's body, piece by piece, read into ``buffer``.

    Each piece is a view of ``buffer``, valid until the next one is asked for:
    the body goes socket -> buffer -> (digest, file) with no bytes object per
    piece and none of the generator layers of ``iter_content`` (measured: 3 to
    5 % less CPU per verified byte, and a verified download is CPU-bound, see
    benchmarks/xnat/README.md). That needs the plain
    body, so the request should ask for ``Accept-Encoding: identity``; an
    encoded body, or a urllib3 whose response is not built on
    ``http.client``, goes through ``iter_content`` (which decodes) instead.
    """
    raw = response.raw
    fp = getattr(raw, "_fp", None)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if not (
        isinstance(fp, http.client.HTTPResponse)
        and encoding in ("", "identity")
        and getattr(raw, "_fp_bytes_read", None) == 0
    ):
        yield from response.iter_content(len(buffer))
        return
    while True:
        try:
            n = fp.readinto(buffer)
        except (OSError, http.client.HTTPException) as err:  # timeout, reset, bad chunking
            raise BrokenBody(f"{type(err).__name__} ({_short(err)})") from err
        if not n:
            break
        yield buffer[:n]
    if fp.length:  # http.client ends a Content-Length body that stops short without an error
        raise BrokenBody(f"IncompleteRead (connection closed {fp.length} bytes early)")
    if fp.isclosed():  # read to its end: the connection goes back to the pool for the next file
        raw.release_conn()


def _short(err: BaseException) -> str:
    text = str(err)
    # requests' messages repeat the URL and pool details; keep them short
    return text if len(text) < 200 else text[:200] + "..."
