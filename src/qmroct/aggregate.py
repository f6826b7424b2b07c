"""Tidy KQI table and per-study tables (pandas).

The tidy table has one row per (session, scan, algorithm, KQI) for every
declared KQI, so a failure is a row with status 'failed', an empty value and
its reason, never a missing row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from qmroct.config import Study

TIDY_COLUMNS = [
    "project",
    "subject",
    "session",
    "scan",
    "algorithm",
    "version",
    "kqi",
    "value",
    "unit",
    "status",
    "error",
]


def tidy_rows(result: dict[str, Any], declared_kqis: dict[str, str]) -> Iterable[dict[str, Any]]:
    """Rows of one result document; ``declared_kqis`` maps KQI name -> unit."""
    session = result["session"]
    algorithm = result["algorithm"]
    base = {
        "project": session["project"],
        "subject": session["subject"],
        "session": session["label"],
        "algorithm": algorithm["name"],
        "version": algorithm["version"],
    }
    if not result["scans"]:
        for kqi, unit in declared_kqis.items():
            yield base | {
                "scan": "",
                "kqi": kqi,
                "value": np.nan,
                "unit": unit,
                "status": "failed",
                "error": result.get("error"),
            }
    for scan in result["scans"]:
        names = dict(declared_kqis)
        names.update({k: v.get("unit", "") for k, v in scan.get("kqis", {}).items()})
        for kqi, unit in names.items():
            value = scan.get("kqis", {}).get(kqi, {}).get("value")
            ok = scan["status"] == "ok"
            yield base | {
                "scan": scan["scan"],
                "kqi": kqi,
                "value": float(value) if value is not None else np.nan,
                "unit": unit,
                "status": "ok"
                if ok and value is not None
                else ("failed" if not ok else "undefined"),
                "error": scan.get("error") if not ok else None,
            }


def tidy_table(result_paths: Iterable[Path], declared: dict[str, dict[str, str]]) -> pd.DataFrame:
    """``declared``: algorithm -> {kqi: unit} from the manifests."""
    rows: list[dict[str, Any]] = []
    for path in result_paths:
        result = json.loads(Path(path).read_text())
        rows.extend(tidy_rows(result, declared.get(result["algorithm"]["name"], {})))
    table = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    table["value"] = table["value"].astype(float)
    return table.sort_values(
        ["project", "session", "scan", "algorithm", "kqi"], kind="stable"
    ).reset_index(drop=True)


def study_table(tidy: pd.DataFrame, study: Study) -> pd.DataFrame:
    """One row per scan of the study's projects: values, verdict per criterion, overall."""
    scans = tidy[tidy["project"].isin(study.projects) & (tidy["scan"] != "")]
    keys = ["project", "subject", "session", "scan"]
    table = scans[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    values = scans.assign(column=scans["algorithm"] + "." + scans["kqi"]).pivot_table(
        index=keys, columns="column", values="value", aggfunc="first", dropna=False
    )
    verdicts = []
    for criterion in study.criteria:
        column = criterion.column
        if column in values.columns:
            series = values[column].reindex(pd.MultiIndex.from_frame(table[keys])).to_numpy()
        else:
            series = np.full(len(table), np.nan)
        table[column] = series
        table[criterion.text] = [criterion.evaluate(v) for v in series]
        verdicts.append(criterion.text)

    def overall(row: pd.Series) -> str:
        results = set(row[verdicts])
        return "fail" if "fail" in results else ("missing" if "missing" in results else "pass")

    table["overall"] = table.apply(overall, axis=1) if len(table) else pd.Series(dtype=str)
    table["quality"] = table["overall"].map(
        {"pass": "usable", "fail": "unusable", "missing": "questionable"}
    )
    return table


def write_tables(tidy: pd.DataFrame, tsv: Path, parquet: Path) -> None:
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tidy.to_csv(tsv, sep="\t", index=False, na_rep="NA")
    tidy.to_parquet(parquet, index=False)
