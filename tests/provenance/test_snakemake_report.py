"""`snakemake --report report.zip`: the report Snakemake users share holds qmroct's."""

from __future__ import annotations

import zipfile

import pytest

pytestmark = pytest.mark.slow


def test_snakemake_report_holds_the_qmroct_report_and_tables(checkout):
    checkout.run()
    checkout.run("--report", "report.zip")
    root = checkout.root / "results"
    with zipfile.ZipFile(checkout.root / "report.zip") as zf:
        names = zf.namelist()
        text = zf.read("report/report.html").decode(errors="replace")
        by_name = {
            n.rsplit("/", 1)[-1]: zf.read(n) for n in names if n.startswith("report/data/raw/")
        }
    assert by_name.get("index.html") == (root / "report/index.html").read_bytes(), names
    assert by_name.get("kqi.tsv") == (root / "tables/kqi.tsv").read_bytes(), names
    assert by_name.get("demo_trial.tsv") == (root / "tables/studies/demo_trial.tsv").read_bytes(), (
        names
    )
    assert "Every KQI of every scan" in text  # the captions travel with them
    assert "The qmroct quality report of this run" in text
