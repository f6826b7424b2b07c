"""The real workflow (snakemake) against the XNAT test server.

A small synthetic archive is uploaded into the server through pyxnat; snakemake
runs with ``archive: {backend: xnat}``; assessors appear; a second run does
nothing; a new session computes only that session; a new algorithm adds its
assessors. The user's password is handed to snakemake the way a user would
(XNAT_USER/XNAT_PASS); a probe algorithm records each job's environment, and
the test checks that no job, log or file saw the password.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.support import copy_workflow, job_stats
from tests.xnat.helpers import workflow_env, xnat_workflow_config
from tests.xnat_server.load import upload_archive

pytestmark = pytest.mark.slow

SHAPE = (5, 128, 64)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

PROBE_MANIFEST = """\
name: envprobe
version: "1.0.0"
runtime: python
entry: envprobe.py
function: compute
description: Test-only probe that records the job's environment.
params: {scale: 1.0}
kqis:
  - name: mean_intensity
    unit: intensity
    higher_is_better: null
    valid_range: null
    description: Mean of the volume.
resources: {threads: 1, mem_mb: 200, runtime_s: 0.5}
"""

PROBE_CODE = """\
import json
import os
from pathlib import Path

import numpy as np


def compute(volume, meta, params, workdir):
    dump = Path(os.environ["QMROCT_TEST_ENV_DUMP"])
    dump.mkdir(parents=True, exist_ok=True)
    (dump / f"{os.getpid()}.json").write_text(json.dumps(dict(os.environ)))
    value = float(np.mean(volume)) * float(params.get("scale", 1.0))
    return {"kqis": {"mean_intensity": {"value": value, "unit": "intensity"}}}
"""


class ProcWatch:
    """Polls /proc while snakemake runs: the command line of every process and
    the environment of every descendant of the snakemake head (its jobs)."""

    def __init__(self, secret: str):
        self.secret = secret.encode()
        self.leaks: list[str] = []
        self.jobs_seen: set[int] = set()
        self.stop = threading.Event()
        self.head: int | None = None
        self.head_cmdline = b""
        self.env_leaks: list[tuple[int, float, str]] = []

    @staticmethod
    def _started(pid: int) -> float:
        """Start time of a process, epoch seconds (from /proc)."""
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")

    def job_env_leaks(self, since: float | None) -> list[str]:
        """Environment leaks of processes started after ``since`` (the token's
        issue, i.e. onstart: the jobs); before it the head's own helpers (such as
        a compiler ctypes runs while modules import) share the user's environment."""
        return [
            f"environment of job process {pid}: {cmd}"
            for pid, started, cmd in self.env_leaks
            if since is None or started >= since - 0.02
        ]

    def _children(self) -> dict[int, int]:
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                    parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    pass
        return parents

    def run(self) -> None:
        deadline = time.time() + 600
        while not self.stop.wait(0.02) and time.time() < deadline:
            if self.head is not None and b"snakemake" not in self.head_cmdline:
                try:  # read right after the spawn, it may still be the parent's (pre-exec)
                    self.head_cmdline = Path(f"/proc/{self.head}/cmdline").read_bytes()
                except OSError:
                    pass
            parents = self._children()
            for pid in parents:
                try:
                    if self.secret in Path(f"/proc/{pid}/cmdline").read_bytes():
                        self.leaks.append(f"cmdline of {pid}")
                except OSError:
                    continue
                ancestor, depth = parents.get(pid), 0
                while ancestor and ancestor != self.head and depth < 20:
                    ancestor, depth = parents.get(ancestor), depth + 1
                if self.head is not None and ancestor == self.head:
                    try:
                        if Path(f"/proc/{pid}/cmdline").read_bytes() == self.head_cmdline:
                            # forked, not yet exec'd: /proc shows the head's original
                            # environment block, not what the job will get
                            continue
                        self.jobs_seen.add(pid)
                        if self.secret in Path(f"/proc/{pid}/environ").read_bytes():
                            cmd = (
                                Path(f"/proc/{pid}/cmdline")
                                .read_bytes()
                                .replace(b"\0", b" ")
                                .decode()[:300]
                            )
                            self.env_leaks.append((pid, self._started(pid), cmd))
                    except OSError:
                        pass


class XnatWorkflow:
    def __init__(self, root: Path, env: dict[str, str]):
        self.root = root
        self.env = env
        self.outputs: list[str] = []

    def write_config(self, config: dict) -> None:
        (self.root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def run(
        self, *args: str, check: bool = True, watch: ProcWatch | None = None
    ) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--nocolor", *args]
        popen = subprocess.Popen(
            cmd,
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        thread = None
        if watch is not None:
            watch.head = popen.pid
            try:
                watch.head_cmdline = Path(f"/proc/{popen.pid}/cmdline").read_bytes()
            except OSError:
                watch.head_cmdline = b""
            thread = threading.Thread(target=watch.run, daemon=True)
            thread.start()
        try:
            out, err = popen.communicate(timeout=600)
        finally:
            if thread is not None:
                watch.stop.set()
                thread.join(5)
        proc = subprocess.CompletedProcess(cmd, popen.returncode, out, err)
        self.outputs.append(proc.stdout + proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
            )
        return proc

    def planned(self) -> dict[str, int]:
        self.run("-n")
        return job_stats(self.outputs[-1])


def assessor_labels(intf, session_id: str) -> list[str]:
    return sorted(
        r["label"]
        for r in intf._get_json(f"/data/experiments/{session_id}/assessors?columns=ID,label")
    )


def writes(server) -> list[dict]:
    return [
        r
        for r in server.requests
        if r["method"] in ("PUT", "POST", "DELETE") and "/JSESSION" not in r["target"]
    ]


def history_runs(server, session_id: str) -> dict[tuple[str, str], list[str]]:
    """Every History row qmroct wrote for a session, (pipeline, launch time) ->
    the statuses it went through, from the server's request log."""
    runs: dict[tuple[str, str], list[str]] = {}
    for r in server.requests:
        if r["method"] != "PUT" or not r["target"].startswith("/data/workflows?"):
            continue
        q = {k: v[0] for k, v in parse_qs(urlsplit(r["target"]).query).items()}
        if q.get("wrk:workflowData/id") == session_id:
            key = (q["wrk:workflowData/pipeline_name"], q["wrk:workflowData/launch_time"])
            runs.setdefault(key, []).append(q["wrk:workflowData/status"])
    return runs


def test_workflow_against_xnat(xnat_server, password, pyxnat_interface, tmp_path):
    from qmroct.synth.demo import build_demo_archive

    xnat_server.store.put_project("DEMO", {})
    demo = tmp_path / "demo"
    build_demo_archive(demo, sessions=4, seed=11, shape=SHAPE)
    first_two = upload_archive(
        pyxnat_interface, demo / "archive", only={"SUBJ001_V1", "SUBJ001_V2"}
    )
    assert first_two == ["SUBJ001_V1", "SUBJ001_V2"]

    root = copy_workflow(tmp_path / "wf")
    probe = root / "algorithms" / "envprobe"
    probe.mkdir()
    (probe / "algorithm.yaml").write_text(PROBE_MANIFEST)
    (probe / "envprobe.py").write_text(PROBE_CODE)
    config = xnat_workflow_config(root, xnat_server.url, {"noise": {}, "envprobe": {}})
    dumps = tmp_path / "envdumps"
    env = workflow_env(password, QMROCT_TEST_ENV_DUMP=str(dumps))
    wf = XnatWorkflow(root, env)
    wf.write_config(config)

    # 1. first run: every session x algorithm computed and written back; no process
    #    shows the password on its command line, no job has it in its environment
    watch = ProcWatch(password)
    wf.run(watch=watch)
    assert watch.jobs_seen, "no job process was observed"
    assert watch.leaks == []  # command lines
    issued = min(r["issued"] for r in xnat_server.store.q("SELECT issued FROM tokens"))
    assert watch.job_env_leaks(since=issued) == []
    sessions = {
        r["label"]: r["ID"] for r in pyxnat_interface._get_json("/data/projects/DEMO/experiments")
    }
    for label in first_two:
        assert assessor_labels(pyxnat_interface, sessions[label]) == [
            f"{label}_qmroct_envprobe_v1-0-0",
            f"{label}_qmroct_noise_v1-0-0",
        ]
        # the listing XNAT offers (WorkflowsRestlet), as the client reads it
        history = pyxnat_interface._exec(
            f"/data/services/workflows/qmroct?experiment={sessions[label]}&display=ALL&format=json"
        )
        items = json.loads(history)["ResultSet"]["Result"]
        assert sorted((i["pipeline_name"], i["status"]) for i in items) == [
            ("qmroct envprobe", "Complete"),
            ("qmroct noise", "Complete"),
        ]
        # one row per run, moved through Queued (head, at hand-off), Running (job),
        # Complete (write-back)
        runs = history_runs(xnat_server, sessions[label])
        assert sorted((pipeline, states) for (pipeline, _), states in runs.items()) == [
            ("qmroct envprobe", ["Queued", "Running", "Complete"]),
            ("qmroct noise", ["Queued", "Running", "Complete"]),
        ]
    kqi = json.loads(next(root.glob("results/kqi/DEMO/SUBJ001_V1/noise.json")).read_text())
    assert kqi["status"] in ("ok", "partial")

    # jobs saw an alias token, never the password; tokens are invalidated at the end
    envs = [json.loads(p.read_text()) for p in dumps.glob("*.json")]
    assert envs, "the probe algorithm did not run"
    for job_env in envs:
        assert password not in json.dumps(job_env)
        assert UUID.match(job_env["XNAT_USER"]) and job_env["XNAT_HOST"] == xnat_server.url
    assert xnat_server.store.q("SELECT * FROM tokens WHERE enabled=1") == []
    assert len(xnat_server.store.q("SELECT * FROM tokens")) == 1

    # 2. second run: nothing to do, nothing written to XNAT
    before = len(writes(xnat_server))
    assert wf.planned() == {}
    wf.run()
    assert writes(xnat_server)[before:] == []

    # 2b. changed KQIs (a param), History on: recomputed, and every assessor updated in
    #     place (same XNAT ID, as XNAT accepts it), its resource files whole again
    ids_before = {
        label: {
            r["label"]: r["ID"]
            for r in pyxnat_interface._get_json(
                f"/data/experiments/{sessions[label]}/assessors?columns=ID,label"
            )
        }
        for label in first_two
    }
    config["algorithms"]["envprobe"] = {"params": {"scale": 2.0}}
    wf.write_config(config)
    mark = len(xnat_server.requests)
    wf.run()
    # no write refused: no 400 on the update, no 409 on the resource (a GET may 404:
    # that is how the client finds the resource the rebuild dropped)
    refused = [
        r for r in xnat_server.requests[mark:] if r["status"] >= 400 and r["method"] != "GET"
    ]
    assert refused == []
    for label in first_two:
        eid = sessions[label]
        now = {
            r["label"]: r["ID"]
            for r in pyxnat_interface._get_json(
                f"/data/experiments/{eid}/assessors?columns=ID,label"
            )
        }
        assert now == ids_before[label]
        probe_id = now[f"{label}_qmroct_envprobe_v1-0-0"]
        kqi_file = json.loads((root / f"results/kqi/DEMO/{label}/envprobe.json").read_text())
        assert kqi_file["algorithm"]["params"] == {"scale": 2.0}
        files = pyxnat_interface._get_json(
            f"/data/experiments/{eid}/assessors/{probe_id}/resources/QMROCT/files"
        )
        assert [f["Name"] for f in files] == ["envprobe.json"]
        runs = history_runs(xnat_server, eid)
        assert (
            sorted(
                states for (pipeline, _), states in runs.items() if pipeline == "qmroct envprobe"
            )
            == [["Queued", "Running", "Complete"]] * 2
        )

    # 3. two new sessions in XNAT, one deleted between discovery and download:
    #    only the new sessions are computed, the deleted one fails alone, naming itself
    results = {p: p.stat().st_mtime_ns for p in root.glob("results/kqi/DEMO/*/*.json")}
    assert upload_archive(
        pyxnat_interface, demo / "archive", only={"SUBJ002_V1", "SUBJ002_V2"}
    ) == ["SUBJ002_V1", "SUBJ002_V2"]
    doomed = {
        r["label"]: r["ID"] for r in pyxnat_interface._get_json("/data/projects/DEMO/experiments")
    }["SUBJ002_V2"]
    xnat_server.inject(
        "delete_experiment", path=r"/files/SUBJ002_V2_\d+\.dcm$", method="GET", experiment=doomed
    )
    failed = wf.run("--keep-going", check=False)
    assert failed.returncode != 0
    assert re.search(
        r"DEMO/SUBJ002_V2 \(XNAT_E\d+\) is no longer available", failed.stdout + failed.stderr
    )
    assert all(p.stat().st_mtime_ns == t for p, t in results.items())  # old sessions untouched
    # the deleted session's History says so: no row is left Queued or Running
    doomed_runs = history_runs(xnat_server, doomed)
    assert sorted(pipeline for pipeline, _ in doomed_runs) == ["qmroct envprobe", "qmroct noise"]
    assert all(
        states[0] == "Queued" and states[-1] == "Failed" for states in doomed_runs.values()
    ), doomed_runs
    reasons = [r["details"] for r in xnat_server.store.workflows(data_id=doomed)]
    assert any("is no longer available" in reason for reason in reasons), reasons
    new_results = sorted(
        p.relative_to(root).as_posix()
        for p in root.glob("results/kqi/DEMO/*/*.json")
        if p not in results
    )
    assert new_results == [
        "results/kqi/DEMO/SUBJ002_V1/envprobe.json",
        "results/kqi/DEMO/SUBJ002_V1/noise.json",
    ]
    wf.run()  # the next run rediscovers without the deleted session and finishes
    new_id = {
        r["label"]: r["ID"] for r in pyxnat_interface._get_json("/data/projects/DEMO/experiments")
    }["SUBJ002_V1"]
    assert assessor_labels(pyxnat_interface, new_id) == [
        "SUBJ002_V1_qmroct_envprobe_v1-0-0",
        "SUBJ002_V1_qmroct_noise_v1-0-0",
    ]
    assert all(p.stat().st_mtime_ns == t for p, t in results.items())

    # 4. a new algorithm: computed for all sessions, its assessors added, nothing else rerun
    config["algorithms"]["signal"] = {}
    wf.write_config(config)
    results = {p: p.stat().st_mtime_ns for p in root.glob("results/kqi/DEMO/*/*.json")}
    wf.run()
    assert all(p.stat().st_mtime_ns == t for p, t in results.items())
    all_ids = {
        r["label"]: r["ID"] for r in pyxnat_interface._get_json("/data/projects/DEMO/experiments")
    }
    for label, eid in all_ids.items():
        labels = assessor_labels(pyxnat_interface, eid)
        assert labels == sorted(
            f"{label}_qmroct_{a}_v1-0-0" for a in ("envprobe", "noise", "signal")
        ), labels

    # 5. opt-in scan quality from a study: set where empty, a person's value is never overwritten
    def qualities(eid):
        rows = pyxnat_interface._get_json(f"/data/experiments/{eid}/scans?columns=ID,quality")
        return {r["ID"]: r.get("quality", "") for r in rows}

    first = all_ids["SUBJ001_V1"]
    person_scan = sorted(qualities(first))[0]
    pyxnat_interface._exec(
        f"/data/experiments/{first}/scans/{person_scan}?xsiType=xnat:optScanData"
        f"&xnat:optScanData/quality=questionable",
        "PUT",
    )
    config["studies"] = {"trial": {"criteria": ["noise.snr_db >= 15"], "set_scan_quality": True}}
    wf.write_config(config)
    wf.run()
    receipt = json.loads((root / "results/scan_quality/trial.json").read_text())
    assert set(receipt["sessions"]) == {f"DEMO/{label}" for label in all_ids}
    study = (root / "results/tables/studies/trial.tsv").read_text().splitlines()
    assert len(study) == 1 + sum(len(qualities(eid)) for eid in all_ids.values())
    for label, eid in all_ids.items():
        for scan, quality in qualities(eid).items():
            if label == "SUBJ001_V1" and scan == person_scan:
                assert quality == "questionable"  # set by a person before qmroct: kept
            else:
                assert quality in ("usable", "unusable"), (label, scan, quality)
    assert receipt["sessions"]["DEMO/SUBJ001_V1"][person_scan] == "person"

    # the watch can see a leak: with tokens switched off, jobs inherit the password
    config["archive"]["tokens"] = False
    wf.write_config(config)
    tokens_before = len(xnat_server.store.q("SELECT * FROM tokens"))
    control = ProcWatch(password)
    wf.run("--forcerun", "discover", "results/discovery/sessions.tsv", watch=control)
    assert len(xnat_server.store.q("SELECT * FROM tokens")) == tokens_before  # no token this time
    assert any(
        ".snakemake" in leak or "discover" in leak for leak in control.job_env_leaks(since=None)
    ), control.env_leaks
    config["archive"]["tokens"] = True
    wf.write_config(config)

    # no password in any log, output, metadata or result file, nor in any URL the server saw
    for text in wf.outputs:
        assert password not in text
    for path in root.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    assert password not in (xnat_server.store.data_dir / "access.log").read_text()
