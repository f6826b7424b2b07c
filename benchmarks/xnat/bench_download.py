"""Download throughput: one session through qmroct's XNAT backend vs raw loopback HTTP.

    .venv/bin/python benchmarks/xnat/bench_download.py [--mib 128] [--files 8] [--repeat 3]

In one run it builds a session of ``--files`` files (``--mib`` MiB in all) in
the XNAT test server, then alternates, ``--repeat`` times each:

- xnat: ``XnatArchive.fetch`` of the discovered session (pyxnat session with
  basic auth, streamed GETs, MD5 + size verification, files written to disk);
- raw: the same bytes from the same disk files, served by a bare
  ``http.server`` handler with ``sendfile`` and read by ``http.client`` into
  files on disk (no auth, no checks): the loopback HTTP ceiling.

Prints one JSON line per measurement and a summary with the ratio (target >= 50 %).
Everything stays on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.xnat_server import XnatTestServer  # noqa: E402


def raw_server(files: dict[str, Path]) -> ThreadingHTTPServer:
    class Raw(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def setup(self):
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self):
            path = files[self.path.lstrip("/")]
            size = path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with open(path, "rb") as fh:
                self.connection.sendfile(fh)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Raw)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


def raw_fetch_parallel(port: int, names: list[str], dest: Path, chunk: int, threads: int) -> int:
    from concurrent.futures import ThreadPoolExecutor

    groups = [names[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda g: raw_fetch(port, g, dest, chunk), groups))


def raw_fetch(port: int, names: list[str], dest: Path, chunk: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    total = 0
    for name in names:
        conn.request("GET", "/" + name)
        response = conn.getresponse()
        with open(dest / name.replace("/", "_"), "wb") as out:
            while True:
                block = response.read(chunk)
                if not block:
                    break
                out.write(block)
                total += len(block)
    conn.close()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=128, help="session size in MiB")
    parser.add_argument("--files", type=int, default=8, help="number of files (2 per scan)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="parallel downloads (qmroct's download_threads)")
    parser.add_argument("--chunk", type=int, default=4 << 20, help="client read size in bytes (both clients)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="qmroct-bench-"))
    password = secrets.token_hex(16)
    os.environ.update(XNAT_USER="bench", XNAT_PASS=password)
    os.environ.pop("XNAT_HOST", None)
    import pyxnat

    from qmroct.archive.xnat import XnatArchive

    try:
        with XnatTestServer(work / "xnat", users={"bench": password}, schema_dir=None) as server:
            server.store.put_project("BENCH", {})
            intf = pyxnat.Interface(server=server.url, user="bench", password=password)
            exp = intf.select("/project/BENCH/subject/B1/experiment/B1_V1")
            exp.create(experiments="xnat:optSessionData")
            size = args.mib * (1 << 20) // args.files
            block = os.urandom(1 << 20)
            for i in range(args.files):
                scan = str(i // 2 + 1)
                if i % 2 == 0:
                    exp.scan(scan).create(scans="xnat:optScanData", **{"xnat:optScanData/type": "OCT"})
                src = work / f"src_{i}.dcm"
                with open(src, "wb") as fh:
                    for _ in range(size // len(block)):
                        fh.write(block)
                    fh.write(block[: size % len(block)])
                exp.scan(scan).resource("DICOM").file(f"f{i:03d}.dcm").put(str(src), format="DICOM")
                src.unlink()
            intf._http.close()

            archive = XnatArchive(server=server.url, projects=["BENCH"], chunk_size=args.chunk,
                                  download_threads=args.threads)
            session = archive.discover(["BENCH"])[0]
            total = sum(f.size for s in session.scans for f in s.files)
            # the raw server serves the very files the XNAT server stores
            files = {}
            for row in server.store.q("SELECT resource_id, path FROM files"):
                files[f"{row['resource_id']}/{row['path']}"] = server.store.file_path(row["resource_id"], row["path"])
            raw = raw_server(files)
            # the same session with the digests blanked: size check only (shows what MD5 costs)
            from dataclasses import replace

            unhashed = replace(session, scans=tuple(replace(sc, files=tuple(replace(f, checksum="") for f in sc.files))
                                                    for sc in session.scans))
            results = {"xnat": [], "raw": [], "raw_parallel": [], "xnat_no_md5": []}
            for rep in range(args.repeat):
                for kind in ("raw", "raw_parallel", "xnat", "xnat_no_md5"):
                    dest = work / f"out-{kind}-{rep}"
                    dest.mkdir()
                    start = time.perf_counter()
                    if kind in ("xnat", "xnat_no_md5"):
                        got = archive.fetch(session if kind == "xnat" else unhashed, dest)
                        nbytes = sum(p.stat().st_size for paths in got.values() for p in paths)
                    elif kind == "raw":
                        nbytes = raw_fetch(raw.server_address[1], sorted(files), dest, args.chunk)
                    else:
                        nbytes = raw_fetch_parallel(raw.server_address[1], sorted(files), dest, args.chunk,
                                                    args.threads)
                    seconds = time.perf_counter() - start
                    assert nbytes == total, (kind, nbytes, total)
                    mbps = nbytes / seconds / 1e6
                    results[kind].append(mbps)
                    print(json.dumps({"kind": kind, "rep": rep, "bytes": nbytes, "seconds": round(seconds, 3),
                                      "MB_per_s": round(mbps, 1)}), flush=True)
                    shutil.rmtree(dest)
            raw.shutdown()
            raw.server_close()
            archive.close()
            xnat_mb, raw_mb = statistics.median(results["xnat"]), statistics.median(results["raw"])
            rawp_mb = statistics.median(results["raw_parallel"])
            import hashlib

            sample = next(iter(files.values())).read_bytes()
            start = time.perf_counter()
            hashlib.md5(sample).hexdigest()
            md5_mb = len(sample) / (time.perf_counter() - start) / 1e6
            pairs = [x / r for x, r in zip(results["xnat"], results["raw"])]
            pairs_p = [x / r for x, r in zip(results["xnat"], results["raw_parallel"])]
            print(json.dumps({"summary": True, "session_MiB": args.mib, "files": args.files,
                              "repeat": args.repeat, "threads": args.threads,
                              "xnat_MB_per_s_median": round(xnat_mb, 1),
                              "raw_MB_per_s_median": round(raw_mb, 1),
                              "raw_parallel_MB_per_s_median": round(rawp_mb, 1),
                              "ratio_vs_raw": round(xnat_mb / raw_mb, 3),
                              "paired_ratio_vs_raw_median": round(statistics.median(pairs), 3),
                              "ratio_vs_raw_parallel": round(xnat_mb / rawp_mb, 3),
                              "paired_ratio_vs_raw_parallel_median": round(statistics.median(pairs_p), 3),
                              "xnat_no_md5_MB_per_s_median": round(statistics.median(results["xnat_no_md5"]), 1),
                              "md5_MB_per_s_one_core": round(md5_mb, 1),
                              "target_ratio": 0.5}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
