"""Queued History rows: the head opens one when Snakemake hands a compute job
to its executor; the job claims it (Running); write-back ends it; a run that
stops first marks what never started as Failed. Against the XNAT test server,
with Snakemake's own log records driving the handler."""

from __future__ import annotations

import json
import logging

import pytest

from qmroct.archive.xnat import XnatArchive
from qmroct.history_queue import NOT_RUN, SNAKEMAKE_LOGGER, start_history_queue, stop_history_queue
from tests.xnat.helpers import seed_session

PATTERN = "{root}/sessions/{{project}}/{{session}}.json"


@pytest.fixture
def queue_setup(xnat_env, pyxnat_interface, tmp_path):
    seed_session(pyxnat_interface, "OCT", "S1", "S1_V1")
    arc = XnatArchive(server=xnat_env.url, projects=["OCT"], backoff=0.05, retries=1)
    sessions = arc.discover(["OCT"])
    for s in sessions:  # the discovery manifests the Snakefile's pattern points at
        path = tmp_path / "sessions" / s.project / f"{s.label}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(s.to_dict()))
    config = {
        "archive": {"backend": "xnat", "server": xnat_env.url, "backoff": 0.05, "retries": 1},
        "projects": ["OCT"],
    }
    pattern = PATTERN.format(root=tmp_path)
    snakemake_logger = logging.getLogger(SNAKEMAKE_LOGGER)
    level = snakemake_logger.level
    snakemake_logger.setLevel(logging.INFO)  # as Snakemake's logger manager sets it
    yield arc, sessions[0], config, pattern
    stop_history_queue(failed=False)
    snakemake_logger.setLevel(level)


def job_info(rule: str, session, event: str = "job_info") -> None:
    """What Snakemake's scheduler logs when it hands a job to the executor."""
    logging.getLogger(SNAKEMAKE_LOGGER).info(
        f" Rule: {rule}, Jobid: 1",
        extra={
            "event": event,
            "rule_name": rule,
            "wildcards": {"project": session.project, "session": session.label},
        },
    )


def rows(arc, session):
    return sorted(
        (h["pipeline_name"], h["status"], h["details"]) for h in arc.history_entries(session)
    )


def test_job_info_opens_a_queued_row_the_job_then_claims(queue_setup):
    arc, session, config, pattern = queue_setup
    handler = start_history_queue(
        config, pattern, {"compute_noise": "noise", "compute_layers": "layers"}
    )
    assert handler is not None
    job_info("compute_noise", session)
    job_info("session_summary", session)  # not an algorithm run: no row
    job_info("compute_layers", session, event="job_finished")  # another event: no row
    assert rows(arc, session) == [("qmroct noise", "Queued", "")]

    # the compute job claims the row and moves it to Running: still one row
    key = arc.queued_run(session, "noise")
    assert key is not None and arc.queued_run(session, "layers") is None
    assert arc.record_history(session, "noise", "Running", launch_time=key) == key
    assert rows(arc, session) == [("qmroct noise", "Running", "")]
    assert arc.queued_run(session, "noise") is None  # claimed: no job can take it twice

    # a successful run leaves every row as the jobs left them
    stop_history_queue(failed=False)
    assert rows(arc, session) == [("qmroct noise", "Running", "")]


def test_a_failed_run_marks_what_never_started(queue_setup):
    arc, session, config, pattern = queue_setup
    start_history_queue(config, pattern, {"compute_noise": "noise", "compute_layers": "layers"})
    job_info("compute_noise", session)
    job_info("compute_layers", session)
    started = arc.queued_run(session, "noise")
    arc.record_history(session, "noise", "Running", launch_time=started)
    stop_history_queue(failed=True)
    assert rows(arc, session) == [
        ("qmroct layers", "Failed", NOT_RUN),
        ("qmroct noise", "Running", ""),
    ]
    # the handler is gone: later job_info records write nothing
    job_info("compute_noise", session)
    assert len(rows(arc, session)) == 2


def test_history_trouble_never_breaks_the_scheduler(queue_setup, xnat_server, caplog):
    arc, session, config, pattern = queue_setup
    start_history_queue(config, pattern, {"compute_noise": "noise"})
    xnat_server.inject("status", path=r"^/data/workflows", method="PUT", status=500, count=10)
    with caplog.at_level(logging.WARNING):
        job_info("compute_noise", session)  # must not raise into Snakemake's logging call
    # the one History guard (qmroct.archive.xnat_history) logged it
    assert (
        "History: Queued for OCT/S1_V1 noise not recorded: XNAT history of OCT/S1_V1" in caplog.text
    )
    assert rows(arc, session) == []


def test_only_xnat_with_history_listens(queue_setup):
    _, _, config, pattern = queue_setup
    assert (
        start_history_queue({"archive": {"backend": "directory", "path": "x"}}, pattern, {}) is None
    )
    assert (
        start_history_queue(
            dict(config, archive=dict(config["archive"], history=False)), pattern, {}
        )
        is None
    )
    assert not any(
        type(h).__name__ == "QueuedHistory" for h in logging.getLogger(SNAKEMAKE_LOGGER).handlers
    )
