"""What each workflow step does, given Snakemake's ``snakemake`` object.

The scripts in ``scripts/`` are one line each and call these functions, so
the steps can be read, tested and reused without Snakemake.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from qmroct.config import check_config


def _logger(snakemake: Any, name: str) -> logging.Logger:
    """The step's logger; everything qmroct logs during the step goes to the job's log file too."""
    package = logging.getLogger("qmroct")
    package.setLevel(logging.INFO)
    package.handlers.clear()
    if snakemake.log:
        Path(snakemake.log[0]).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(snakemake.log[0], mode="w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        package.addHandler(handler)
    console = logging.StreamHandler()
    # An algorithm's own output (up to 2 x 64 KiB per call) belongs in the log file only.
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    package.addHandler(console)
    return logging.getLogger(f"qmroct.{name}")


def _settings(snakemake: Any):
    return check_config(snakemake.config, Path(snakemake.scriptdir).parent)


def _algorithm_settings(snakemake: Any, name: str):
    """Settings with only the job's own algorithm loaded. The head checked the whole config
    while it read the workflow; a compute job (one per session x algorithm) reading and
    validating every other algorithm's manifest and the studies again cost ~0.1 s each."""
    config = dict(snakemake.config)
    config["algorithms"] = {name: snakemake.config["algorithms"][name]}
    config["studies"] = {}
    return check_config(config, Path(snakemake.scriptdir).parent)


def discover_step(snakemake: Any) -> None:
    from qmroct.discovery import discover

    log = _logger(snakemake, "discover")
    sessions = discover(
        snakemake.config, Path(snakemake.output.directory), Path(snakemake.output.index)
    )
    log.info("discovered %d sessions in %s", len(sessions), ", ".join(snakemake.config["projects"]))


def compute_step(snakemake: Any) -> None:
    from qmroct.algorithms.runner import TAIL_HEADER
    from qmroct.archive import archive_for, load_manifest
    from qmroct.compute import compute_session
    from qmroct.fileio import now_iso, write_json_atomic

    log = _logger(snakemake, "compute")
    name = snakemake.params.algorithm_name
    settings = _algorithm_settings(snakemake, name)
    session = load_manifest(snakemake.input.session)
    algo = settings.algorithms[name]
    with archive_for(snakemake.config) as archive:
        start = now_iso()
        # One History row per run: the row the head opened as Queued when it handed
        # this job to the executor (qmroct.history_queue), else a new one keyed by
        # the start time. Running now, Complete/Failed at write-back. History calls
        # never raise (archive/xnat_history.py guards them): a record, not a gate.
        history_key = archive.queued_run(session, name) or start
        archive.record_history(session, name, "Running", launch_time=history_key)
        try:
            result = compute_session(
                session,
                algo,
                settings.algorithm_params(name),
                archive,
                Path(snakemake.config["scratch_dir"]),
                Path(snakemake.output.extras),
                timeout=settings.algorithm_timeout(name),
                start_time=start,
                output_keep=settings.algorithm_output_keep(),
            )
        except Exception as err:
            # The job fails (the archive lost the session, say); its row must not stay Running.
            archive.record_history(
                session, name, "Failed", detail=str(err), launch_time=history_key
            )
            raise
    result["provenance"]["history_launch_time"] = history_key
    write_json_atomic(Path(snakemake.output.kqi), result)
    for scan in result["scans"]:
        if scan["status"] != "ok":
            # The reason only: the algorithm's output (its tail is in the error too) is already
            # in the log file, and the console gets none of it.
            reason = (scan["error"] or "").split(TAIL_HEADER, 1)[0]
            log.warning("session %s scan %s: %s", session.key, scan["scan"], reason)
    log.info(
        "%s %s on %s: %s (%d scans)",
        name,
        algo.version,
        session.key,
        result["status"],
        len(result["scans"]),
    )


def summary_step(snakemake: Any) -> None:
    from qmroct.archive import archive_for, load_manifest
    from qmroct.fileio import write_json_atomic
    from qmroct.staging import release_session
    from qmroct.summary import make_thumbnails, summarise_session

    log = _logger(snakemake, "summary")
    session = load_manifest(snakemake.input.session)
    results = [Path(p) for p in snakemake.input.results]
    scratch = Path(snakemake.config["scratch_dir"])
    with archive_for(snakemake.config) as archive:
        thumbs = make_thumbnails(
            session, archive, scratch, Path(snakemake.output.thumbnails), results
        )
    # The last job of the session's group: its staged scans go now. A failed thumbnail
    # keeps them (the group's rerun reuses them; the run's scratch folder goes at its end).
    release_session(scratch, session)
    summary = summarise_session(session, results)
    summary["thumbnails"] = thumbs
    write_json_atomic(Path(snakemake.output.summary), summary)
    log.info("summary of %s: %d algorithms, %d thumbnails", session.key, len(results), len(thumbs))


def writeback_step(snakemake: Any) -> None:
    from qmroct.archive import archive_for, load_manifest
    from qmroct.fileio import write_json_atomic
    from qmroct.writeback import write_back

    log = _logger(snakemake, "writeback")
    session = load_manifest(snakemake.input.session)
    with archive_for(snakemake.config) as archive:
        receipt = write_back(session, archive, [Path(p) for p in snakemake.input.results])
        # History trouble never fails a step; it is logged and kept in the receipt
        receipt["history_warnings"] = list(getattr(archive, "history_warnings", []))
    write_json_atomic(Path(snakemake.output.receipt), receipt)
    for item in receipt["assessments"]:
        log.info("%s: %s", item["label"], item["action"])


def _tidy_table(snakemake: Any, log: logging.Logger):
    """The tidy KQI table of the rule's declared results (every declared KQI a row)."""
    from qmroct.aggregate import tidy_table

    settings = _settings(snakemake)
    declared = {
        name: {k.name: k.unit for k in algo.kqis} for name, algo in settings.algorithms.items()
    }
    tidy = tidy_table([Path(p) for p in snakemake.input.results], declared)
    log.info(
        "%d KQI rows from %d results, %d failed",
        len(tidy),
        len(snakemake.input.results),
        (tidy["status"] == "failed").sum(),
    )
    return tidy


def aggregate_step(snakemake: Any) -> None:
    """Rule aggregate: the tidy table (TSV and Parquet) and one table per study."""
    from qmroct.aggregate import study_table, write_tables

    log = _logger(snakemake, "aggregate")
    settings = _settings(snakemake)
    tidy = _tidy_table(snakemake, log)
    write_tables(tidy, Path(snakemake.output.tsv), Path(snakemake.output.parquet))
    studies_dir = Path(snakemake.output.studies)
    studies_dir.mkdir(parents=True, exist_ok=True)
    for name, study in settings.studies.items():
        table = study_table(tidy, study)
        table.to_csv(studies_dir / f"{name}.tsv", sep="\t", index=False, na_rep="NA")
        log.info(
            "study %s: %d of %d scans usable", name, (table["overall"] == "pass").sum(), len(table)
        )


def _write_tsv(snakemake: Any, name: str) -> None:
    tidy = _tidy_table(snakemake, _logger(snakemake, name))
    Path(snakemake.output.tsv).parent.mkdir(parents=True, exist_ok=True)
    tidy.to_csv(snakemake.output.tsv, sep="\t", index=False, na_rep="NA")


def kqi_by_algorithm_step(snakemake: Any) -> None:
    """Rule kqi_by_algorithm: one algorithm's KQIs over every session, as TSV."""
    _write_tsv(snakemake, "kqi_by_algorithm")


def kqi_by_project_step(snakemake: Any) -> None:
    """Rule kqi_by_project: every algorithm's KQIs over one project's sessions, as TSV."""
    _write_tsv(snakemake, "kqi_by_project")


def report_step(snakemake: Any) -> None:
    import pandas as pd

    from qmroct.provenance.run_manifest import RUN_ID_ENV, versions_html
    from qmroct.report import render_report

    settings = _settings(snakemake)
    tidy = pd.read_parquet(snakemake.input.parquet)
    studies_dir = Path(snakemake.input.studies)
    studies = {}
    for name in settings.studies:
        path = studies_dir / f"{name}.tsv"
        studies[name] = pd.read_csv(path, sep="\t", dtype={"scan": str}, keep_default_na=True)
    criteria = {
        name: [(c.column, c.text, c.threshold) for c in s.criteria]
        for name, s in settings.studies.items()
    }
    versions = versions_html(
        [Path(p) for p in snakemake.input.results],
        os.environ.get(RUN_ID_ENV),
        Path(snakemake.output.html).parent,
    )
    # each session's summary names its path key, the folder its thumbnails are in
    path_keys = {}
    for summary_path in snakemake.input.summaries:
        session = json.loads(Path(summary_path).read_text())["session"]
        path_keys[(session["project"], session["label"])] = session.get("path_key", "")
    html = render_report(
        tidy,
        studies,
        criteria,
        Path(snakemake.params.thumbnails),
        snakemake.params.worst_scans,
        versions_section=versions,
        path_keys=path_keys,
    )
    Path(snakemake.output.html).parent.mkdir(parents=True, exist_ok=True)
    Path(snakemake.output.html).write_text(html)
    _logger(snakemake, "report").info("report written to %s", snakemake.output.html)


def scan_quality_step(snakemake: Any) -> None:
    """Opt-in: write one study's verdicts into the archive's scan quality fields."""
    import pandas as pd

    from qmroct.archive import archive_for, load_manifest, manifest_path
    from qmroct.fileio import write_json_atomic

    log = _logger(snakemake, "scan_quality")
    settings = _settings(snakemake)
    name = snakemake.wildcards.study
    study = settings.studies[name]
    table = pd.read_csv(
        Path(snakemake.input.studies) / f"{name}.tsv", sep="\t", dtype={"scan": str}
    )
    texts = [c.text for c in study.criteria]
    outcomes: dict[str, dict[str, str]] = {}
    with archive_for(snakemake.config) as archive:
        for (project, label), rows in table.groupby(["project", "session"], sort=True):
            session = load_manifest(manifest_path(snakemake.params.discovery, project, label))
            verdicts = dict(zip(rows["scan"], rows["quality"], strict=True))
            reasons = {
                row["scan"]: "; ".join(f"{t}: {row[t]}" for t in texts if row[t] != "pass")
                or "all criteria pass"
                for row in rows.to_dict("records")
            }
            outcomes[f"{project}/{label}"] = archive.set_scan_quality(
                session, name, verdicts, reasons
            )
            log.info("%s/%s: %s", project, label, outcomes[f"{project}/{label}"])
    write_json_atomic(Path(snakemake.output.receipt), {"study": name, "sessions": outcomes})
