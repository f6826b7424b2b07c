"""Downloads are verified whatever path the body takes: a file whose bytes
differ from XNAT's digest is refused after the retries, never kept; a body the
fast reader cannot take (encoded) still arrives, decoded, through requests."""

from __future__ import annotations

import gzip
import hashlib
import io

import pytest
import requests
import urllib3

from qmroct.archive.base import ArchiveError
from qmroct.archive.xnat import XnatArchive
from qmroct.archive.xnat_http import body_chunks
from tests.xnat.helpers import file_bytes, seed_session


@pytest.fixture
def session(xnat_env, pyxnat_interface):
    seed_session(
        pyxnat_interface, "OCT", "S1", "S1_V1", scans=("1",), files_per_scan=2, size=300_000
    )
    arc = XnatArchive(
        server=xnat_env.url,
        projects=["OCT"],
        backoff=0.01,
        timeout=2.0,
        retries=2,
        chunk_size=64 << 10,
    )  # several reads per file
    return arc, arc.discover(["OCT"])[0]


def gets(server, name):
    return [
        r["status"] for r in server.requests if r["target"].endswith(name) and r["method"] == "GET"
    ]


def test_fetch_is_byte_exact(session, tmp_path):
    arc, s = session
    got = arc.fetch(s, tmp_path / "ok")
    assert [p.read_bytes() for p in got["1"]] == [
        file_bytes("OCT", "S1_V1", "1", i, 300_000) for i in (0, 1)
    ]


def test_digest_mismatch_is_retried_then_refused(session, xnat_server, tmp_path):
    arc, s = session
    row = xnat_server.store.one(
        "SELECT resource_id, path FROM files WHERE path LIKE ?", "%S1_V1_1_001.dcm"
    )
    stored = xnat_server.store.file_path(row["resource_id"], row["path"])
    data = bytearray(stored.read_bytes())
    data[150_000] ^= 0xFF  # same size, one byte off: only the digest can tell
    stored.write_bytes(bytes(data))
    with pytest.raises(
        ArchiveError,
        match=r"S1_V1_1_001\.dcm failed after 3 attempts: md5 [0-9a-f]{32} "
        r"does not match XNAT's [0-9a-f]{32}",
    ):
        arc.fetch(s, tmp_path / "bad")
    assert gets(xnat_server, "S1_V1_1_001.dcm") == [200, 200, 200]
    assert not (tmp_path / "bad" / "1" / "S1_V1_1_001.dcm").exists()
    assert not list((tmp_path / "bad").rglob("*.part"))


def test_downloads_ask_for_the_plain_body(session, xnat_server, tmp_path, monkeypatch):
    arc, s = session
    seen = []
    real = requests.Session.request

    def spy(self, method, url, *args, **kwargs):
        seen.append((kwargs.get("headers") or {}).get("Accept-Encoding"))
        return real(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", spy)
    arc.fetch(s, tmp_path / "plain")
    assert seen == ["identity", "identity"]


def _response(body: bytes, headers: dict[str, str]) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.headers.update(headers)
    response.raw = urllib3.HTTPResponse(
        body=io.BytesIO(body), headers=headers, preload_content=False, decode_content=True
    )
    return response


def test_an_encoded_body_is_decoded_through_requests():
    data = bytes(range(256)) * 4000
    response = _response(gzip.compress(data), {"Content-Encoding": "gzip"})
    out = b"".join(bytes(piece) for piece in body_chunks(response, memoryview(bytearray(10_000))))
    assert hashlib.md5(out).hexdigest() == hashlib.md5(data).hexdigest()
