"""Validating a crate with roc-validator offline, as the test suite must (no network).

The validator resolves the JSON-LD context a crate names through an HTTP cache
(requests-cache, sqlite); with ``--offline`` it serves only from that cache. The cache is
seeded here through a ``CachedSession`` on the same path whose transport answers from a
local document and refuses every other URL (a test can never reach the network).

The document is the RO-Crate context that ro-crate-py ships (1.3). Frozen crates are
RO-Crate 1.1, the version the Provenance Run Crate 0.5 profile is built on (roc-validator
checks the 1.1 descriptor), so the 1.1 context URL is answered with it, with the four
terms whose IRIs differ in RO-Crate 1.1's context (Bioschemas moved from
``https://bioschemas.org/`` to ``https://bioschemas.org/terms/`` in 1.2) mapped as 1.1 maps
them. Every other term the crate uses (schema.org, ``conformsTo``, ``File``) has the same
IRI in both versions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import requests

CONTEXT_11 = "https://w3id.org/ro/crate/1.1/context"
CONTEXT_13 = "https://w3id.org/ro/crate/1.3/context"
# RO-Crate 1.1's context (w3id.org/ro/crate/1.1/context) for the terms that changed IRI.
BIOSCHEMAS_11 = {
    "ComputationalWorkflow": "https://bioschemas.org/ComputationalWorkflow",
    "FormalParameter": "https://bioschemas.org/FormalParameter",
    "input": "https://bioschemas.org/ComputationalWorkflow#input",
    "output": "https://bioschemas.org/ComputationalWorkflow#output",
}


class _LocalContexts(requests.adapters.BaseAdapter):
    def __init__(self, files: dict[str, Path]) -> None:
        super().__init__()
        self.files = files

    def send(self, request, **kwargs):
        if request.url not in self.files:
            raise requests.ConnectionError(f"offline test: no local copy of {request.url}")
        import io

        import urllib3

        body = self.files[request.url].read_bytes()
        headers = {"Content-Type": "application/ld+json", "Content-Length": str(len(body))}
        response = requests.Response()
        response.raw = urllib3.HTTPResponse(
            body=io.BytesIO(body),
            headers=headers,
            status=200,
            preload_content=False,
            request_url=request.url,
        )
        response.status_code = 200
        response._content = body
        response.headers.update(headers)
        response.url = request.url
        response.request = request
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass


def seed_cache(cache_path: Path) -> Path:
    import requests_cache
    import rocrate

    shipped = Path(rocrate.__file__).parent / "data" / "ro-crate.jsonld"
    doc = json.loads(shipped.read_text())
    assert doc["@id"] == CONTEXT_13, "rocrate ships another context version"
    assert {doc["@context"][t] for t in ("ComputationalWorkflow", "FormalParameter")} == {
        "https://bioschemas.org/terms/ComputationalWorkflow",
        "https://bioschemas.org/terms/FormalParameter",
    }
    doc_11 = dict(doc, **{"@id": CONTEXT_11, "@context": {**doc["@context"], **BIOSCHEMAS_11}})
    context_11 = cache_path.parent / "ro-crate-1.1-context.jsonld"
    context_11.parent.mkdir(parents=True, exist_ok=True)
    context_11.write_text(json.dumps(doc_11))
    session = requests_cache.CachedSession(
        cache_name=str(cache_path),
        backend="sqlite",
        expire_after=-1,
        allowable_methods=("GET",),
        allowable_codes=(200, 302, 404),
    )
    files = {CONTEXT_13: shipped, CONTEXT_11: context_11}
    adapter = _LocalContexts(files)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    for url in files:
        assert session.get(url).status_code == 200
    session.close()
    return cache_path


def validate(crate: Path, cache_path: Path, profile: str = "provenance-run-crate-0.5") -> dict:
    """roc-validator's JSON report for ``crate`` at REQUIRED severity, offline."""
    report = crate.parent / f"{crate.name}.validation.json"
    cmd = [
        str(Path(sys.executable).parent / "rocrate-validator"),
        "validate",
        "-p",
        profile,
        "-l",
        "required",
        "--offline",
        "--cache-path",
        str(cache_path),
        "--skip-availability-check",
        "--no-paging",
        "-f",
        "json",
        "-o",
        str(report),
        str(crate),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if not report.is_file():
        raise AssertionError(
            f"validator wrote no report ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    return json.loads(report.read_text())
