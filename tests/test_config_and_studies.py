"""Config checks and study criteria."""

from __future__ import annotations


import math

import pandas as pd
import pytest
import yaml

from qmroct.aggregate import study_table, tidy_rows
from qmroct.config import ConfigError, Study, check_config, load_settings, validate_schema
from qmroct.studies import CriterionError, parse_criterion

from tests.support import REPO

KQIS = {"noise": {"snr_db", "sigma"}, "layers": {"detection_fraction", "sigma"}}


def _config(**changes):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(changes)
    return config


def test_repository_config_is_valid():
    settings = load_settings(REPO / "config.yaml")
    assert set(settings.algorithms) >= {"noise", "layers"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"projcts": ["DEMO"]}, "projcts"),
        ({"projects": []}, "projects"),
        ({"archive": {"backend": "ftp"}}, "archive/backend"),
        ({"archive": {"backend": "directory"}}, "path"),
        ({"algorithms": {"noise": {"versoin": "1"}}}, "algorithms/noise"),
    ],
)
def test_schema_errors_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        validate_schema(_config(**change))


def test_semantic_errors_name_the_key():
    config = _config(algorithms={"noise": {}, "nosuch": {}})
    validate_schema(config)
    with pytest.raises(ConfigError, match="algorithms/nosuch: unknown algorithm"):
        check_config(config, REPO)
    config = _config(algorithms={"noise": {"version": "0.0.0-not-this"}})
    validate_schema(config)
    with pytest.raises(ConfigError, match="algorithms/noise/version: pinned"):
        check_config(config, REPO)
    config = _config(algorithms={"noise": {"params": {"kk": 3.5, "k": 3.0}}}, studies={})
    validate_schema(config)
    with pytest.raises(
        ConfigError, match=r"algorithms/noise/params: unknown key\(s\) kk; .*declares: .*\bk\b"
    ):
        check_config(config, REPO)
    config = _config(algorithms={"noise": {"params": {"k": 3.0}}}, studies={})
    validate_schema(config)
    assert check_config(config, REPO).algorithm_params("noise") == {"k": 3.0}
    config = _config(studies={"t": {"criteria": ["noise.snr_db >= lots"]}})
    validate_schema(config)
    with pytest.raises(ConfigError, match="studies/t/criteria: cannot parse"):
        check_config(config, REPO)


def test_criteria_parse_and_resolve():
    c = parse_criterion("snr_db >= 15", KQIS)
    assert (c.algorithm, c.kqi, c.op, c.threshold) == ("noise", "snr_db", ">=", 15.0)
    assert (
        c.evaluate(15.0) == "pass" and c.evaluate(14.9) == "fail" and c.evaluate(None) == "missing"
    )
    assert c.evaluate(math.nan) == "missing"
    assert parse_criterion("layers.sigma < 1e-2", KQIS).threshold == 0.01
    with pytest.raises(CriterionError, match="ambiguous"):
        parse_criterion("sigma < 3", KQIS)
    with pytest.raises(CriterionError, match="has no KQI 'snr'"):
        parse_criterion("noise.snr > 3", KQIS)
    with pytest.raises(CriterionError, match="not declared"):
        parse_criterion("mtci.mtci > 3", KQIS)


def test_study_table_shows_failures_as_rows():
    def result(scans):
        return {
            "session": {"project": "P", "subject": "S1", "label": "E1"},
            "algorithm": {"name": "noise", "version": "1"},
            "scans": scans,
        }

    rows = list(
        tidy_rows(
            result(
                [
                    {
                        "scan": "1",
                        "status": "ok",
                        "kqis": {"snr_db": {"value": 20.0, "unit": "dB"}},
                    },
                    {
                        "scan": "2",
                        "status": "ok",
                        "kqis": {"snr_db": {"value": 10.0, "unit": "dB"}},
                    },
                    {
                        "scan": "3",
                        "status": "failed",
                        "error": "scan not readable: corrupt DICOM",
                        "kqis": {},
                    },
                ]
            ),
            {"snr_db": "dB", "sigma": "DN"},
        )
    )
    tidy = pd.DataFrame(rows)
    assert len(tidy) == 6  # every declared KQI of every scan is a row
    failed = tidy[tidy["scan"] == "3"]
    assert set(failed["status"]) == {"failed"} and failed["value"].isna().all()
    study = Study("t", [parse_criterion("noise.snr_db >= 15", KQIS)], ["P"])
    table = study_table(tidy, study)
    assert list(table["overall"]) == ["pass", "fail", "missing"]
    assert list(table["quality"]) == ["usable", "unusable", "questionable"]


def test_default_thresholds_come_from_the_manifests():
    settings = load_settings(REPO / "config.yaml")
    texts = [c.text for c in settings.studies["recommended"].criteria]
    expected = [
        f"{name}.{kqi} {rule}"
        for name, algo in sorted(settings.algorithms.items())
        for kqi, rule in algo.thresholds.items()
    ]
    assert texts == expected and "noise.snr_db >= 25" in texts
