"""Download throughput: one session through qmroct's XNAT backend vs raw loopback HTTP.

    .venv/bin/python benchmarks/xnat/bench_download.py [--mib 256] [--files 8] [--repeat 7]

In one run it builds a session of ``--files`` files (``--mib`` MiB in all) in
the XNAT test server, then alternates, ``--repeat`` times each (the order of
the kinds rotates from one repetition to the next, so none always runs right
after another's disk writes):

- xnat: ``XnatArchive.fetch`` of the discovered session (pyxnat session with
  basic auth, streamed GETs, MD5 + size verification, files written to disk);
- raw: the same bytes from the same disk files, served by a bare
  ``http.server`` handler with ``sendfile`` and read by ``http.client`` into
  files on disk the way the backend reads (``readinto`` one reused buffer of
  the same size; no auth, no checks): the loopback HTTP ceiling.
- raw_parallel: the same with ``--threads`` connections (the backend's concurrency);
- raw_parallel_md5: raw_parallel that also hashes each file with MD5: the
  ceiling of any verified download on this machine, what qmroct's own
  overhead is measured against;
- xnat_no_md5: the backend with the digests blanked (size check only).

Prints one JSON line per measurement and a summary with the ratio (target >= 50 %).
Everything stays on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import hashlib
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
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return httpd


def raw_fetch_parallel(
    port: int, names: list[str], dest: Path, chunk: int, threads: int, md5: bool = False
) -> int:
    from concurrent.futures import ThreadPoolExecutor

    groups = [names[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda g: raw_fetch(port, g, dest, chunk, md5), groups))


def raw_fetch(port: int, names: list[str], dest: Path, chunk: int, md5: bool = False) -> int:
    # the same read loop as the backend's (one reused buffer, no bytes per read),
    # so the ceiling is not lowered by a sloppier client than the one measured
    conn = http.client.HTTPConnection("127.0.0.1", port)
    view = memoryview(bytearray(chunk))
    total = 0
    for name in names:
        conn.request("GET", "/" + name)
        response = conn.getresponse()
        hasher = hashlib.md5() if md5 else None
        with open(dest / name.replace("/", "_"), "wb") as out:
            while n := response.readinto(view):
                if hasher:
                    hasher.update(view[:n])
                out.write(view[:n])
                total += n
        if hasher:
            hasher.hexdigest()
    conn.close()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # 256 MiB: one measurement lasts 0.15 to 1 s, so a scheduler hiccup of the
    # shared machine does not decide it
    parser.add_argument("--mib", type=int, default=256, help="session size in MiB")
    parser.add_argument("--files", type=int, default=8, help="number of files (2 per scan)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=2, help="parallel downloads (qmroct's download_threads)"
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="client read size in bytes, both clients (default: the backend's chunk_size)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="qmroct-bench-"))
    password = secrets.token_hex(16)
    os.environ.update(XNAT_USER="bench", XNAT_PASS=password)
    os.environ.pop("XNAT_HOST", None)
    import pyxnat

    from qmroct.archive.xnat import XnatArchive

    if args.chunk is None:
        import inspect

        args.chunk = inspect.signature(XnatArchive).parameters["chunk_size"].default

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
                    exp.scan(scan).create(
                        scans="xnat:optScanData", **{"xnat:optScanData/type": "OCT"}
                    )
                src = work / f"src_{i}.dcm"
                with open(src, "wb") as fh:
                    for _ in range(size // len(block)):
                        fh.write(block)
                    fh.write(block[: size % len(block)])
                exp.scan(scan).resource("DICOM").file(f"f{i:03d}.dcm").put(str(src), format="DICOM")
                src.unlink()
            intf._http.close()

            archive = XnatArchive(
                server=server.url,
                projects=["BENCH"],
                chunk_size=args.chunk,
                download_threads=args.threads,
            )
            session = archive.discover(["BENCH"])[0]
            total = sum(f.size for s in session.scans for f in s.files)
            # the raw server serves the very files the XNAT server stores
            files = {}
            for row in server.store.q("SELECT resource_id, path FROM files"):
                files[f"{row['resource_id']}/{row['path']}"] = server.store.file_path(
                    row["resource_id"], row["path"]
                )
            raw = raw_server(files)
            # the same session with the digests blanked: size check only (shows what MD5 costs)
            from dataclasses import replace

            unhashed = replace(
                session,
                scans=tuple(
                    replace(sc, files=tuple(replace(f, checksum="") for f in sc.files))
                    for sc in session.scans
                ),
            )
            results = {
                "xnat": [],
                "raw": [],
                "raw_parallel": [],
                "xnat_no_md5": [],
                "raw_parallel_md5": [],
            }
            cpu = {kind: [] for kind in results}
            kinds = list(results)
            load_start = os.getloadavg()  # the machine is shared: say how busy it was
            for rep in range(args.repeat):
                for kind in kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]:
                    dest = work / f"out-{kind}-{rep}"
                    dest.mkdir()
                    start, cpu_start = time.perf_counter(), time.process_time()
                    if kind in ("xnat", "xnat_no_md5"):
                        got = archive.fetch(session if kind == "xnat" else unhashed, dest)
                        nbytes = sum(p.stat().st_size for paths in got.values() for p in paths)
                    elif kind == "raw":
                        nbytes = raw_fetch(raw.server_address[1], sorted(files), dest, args.chunk)
                    else:
                        nbytes = raw_fetch_parallel(
                            raw.server_address[1],
                            sorted(files),
                            dest,
                            args.chunk,
                            args.threads,
                            md5=kind == "raw_parallel_md5",
                        )
                    seconds = time.perf_counter() - start
                    # client and both servers live in this process: its CPU time is the
                    # whole transfer's, and unlike MB/s it hardly moves with the machine's load
                    cpu_ns = (time.process_time() - cpu_start) / nbytes * 1e9
                    assert nbytes == total, (kind, nbytes, total)
                    mbps = nbytes / seconds / 1e6
                    results[kind].append(mbps)
                    cpu[kind].append(cpu_ns)
                    print(
                        json.dumps(
                            {
                                "kind": kind,
                                "rep": rep,
                                "bytes": nbytes,
                                "seconds": round(seconds, 3),
                                "MB_per_s": round(mbps, 1),
                                "cpu_ns_per_byte": round(cpu_ns, 2),
                            }
                        ),
                        flush=True,
                    )
                    shutil.rmtree(dest)
            raw.shutdown()
            raw.server_close()
            archive.close()
            xnat_mb, raw_mb = statistics.median(results["xnat"]), statistics.median(results["raw"])
            rawp_mb = statistics.median(results["raw_parallel"])
            sample = next(iter(files.values())).read_bytes()
            start = time.perf_counter()
            hashlib.md5(sample).hexdigest()
            md5_mb = len(sample) / (time.perf_counter() - start) / 1e6
            pairs = [x / r for x, r in zip(results["xnat"], results["raw"], strict=True)]
            pairs_p = [x / r for x, r in zip(results["xnat"], results["raw_parallel"], strict=True)]
            print(
                json.dumps(
                    {
                        "summary": True,
                        "session_MiB": args.mib,
                        "files": args.files,
                        "chunk": args.chunk,
                        "repeat": args.repeat,
                        "threads": args.threads,
                        "xnat_MB_per_s_median": round(xnat_mb, 1),
                        "raw_MB_per_s_median": round(raw_mb, 1),
                        "raw_parallel_MB_per_s_median": round(rawp_mb, 1),
                        "ratio_vs_raw": round(xnat_mb / raw_mb, 3),
                        "paired_ratio_vs_raw_median": round(statistics.median(pairs), 3),
                        "ratio_vs_raw_parallel": round(xnat_mb / rawp_mb, 3),
                        "paired_ratio_vs_raw_parallel_median": round(statistics.median(pairs_p), 3),
                        "xnat_no_md5_MB_per_s_median": round(
                            statistics.median(results["xnat_no_md5"]), 1
                        ),
                        "raw_parallel_md5_MB_per_s_median": round(
                            statistics.median(results["raw_parallel_md5"]), 1
                        ),
                        "ratio_vs_raw_parallel_md5": round(
                            xnat_mb / statistics.median(results["raw_parallel_md5"]), 3
                        ),
                        "md5_MB_per_s_one_core": round(md5_mb, 1),
                        "cpu_ns_per_byte_median": {
                            k: round(statistics.median(v), 2) for k, v in cpu.items()
                        },
                        "load_average_start_end": [
                            round(load_start[0], 2),
                            round(os.getloadavg()[0], 2),
                        ],
                        "target_ratio": 0.5,
                    }
                ),
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
