"""The alert rules of deploy/prometheus/alerts.yml: promtool unit tests, and one firing and one quiet case per rule.

promtool comes with Debian's prometheus package; without it these tests skip locally and fail in CI (CI=true).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROM = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
ALERTS = PROM / "alerts.yml"
TESTS = PROM / "alerts_test.yml"
SEVERITIES = {"critical", "warning", "info"}


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool is required in CI: apt-get install -y prometheus")
        pytest.skip("promtool not installed (apt-get install -y prometheus)")
    return path


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def alert_cases() -> list[tuple[str, list]]:
    spec = yaml.safe_load(TESTS.read_text())
    return [(case["alertname"], case["exp_alerts"])
            for test in spec["tests"] for case in test.get("alert_rule_test", [])]


def test_promtool_unit_tests_pass():
    res = subprocess.run([promtool(), "test", "rules", TESTS.name], cwd=PROM, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_the_unit_tests_load_the_alert_rules():
    assert yaml.safe_load(TESTS.read_text())["rule_files"] == [ALERTS.name]


def test_every_rule_has_a_firing_and_a_quiet_test_case():
    cases = alert_cases()
    tested = {name for name, _ in cases}
    names = [r["alert"] for r in rules()]
    assert not set(tested) - set(names), f"tests for unknown alerts: {set(tested) - set(names)}"
    for name in names:
        assert any(n == name and exp for n, exp in cases), f"{name}: no test case where it fires"
        assert any(n == name and not exp for n, exp in cases), f"{name}: no test case where it stays quiet"


def test_every_rule_has_severity_summary_description_and_runbook():
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    for r in rules():
        assert "record" not in r, r
        assert re.fullmatch(r"Stationcast[A-Z][A-Za-z]+", r["alert"]), r["alert"]
        assert r["labels"]["severity"] in SEVERITIES, r["alert"]
        for key in ("summary", "description", "runbook"):
            assert r["annotations"].get(key, "").strip(), f"{r['alert']}: no {key}"
        if "for" in r:
            assert re.fullmatch(r"\d+[smhd]", r["for"]), r["alert"]


def test_the_required_conditions_are_covered():
    exprs = "\n".join(r["expr"] for r in rules())
    for needle in (
        'stationcast_rolling_mae_celsius{forecaster="model"',  # model worse than the better baseline, per station
        'forecaster=~"persistence|diurnal"',
        'stationcast_band_coverage{horizon=~"all(@.+)?"}',  # every cadence's fleet
        'station=~"all@.+"',  # the fleet of another cadence than hourly
        "stationcast_consumer_lag",
        "stationcast_seconds_since_reading",
        "stationcast_max_seconds_since_reading",
        "rate(stationcast_forecasts_total",
        "stationcast_last_forecast_timestamp_seconds",
        "stationcast_readings_rejected_total",
        "stationcast_readings_consumed_total",
        'stationcast_retrain_runs_total{outcome="failed"}',
        "stationcast_retrain_last_success_timestamp_seconds",
        "increase(stationcast_rollbacks_total",
    ):
        assert needle in exprs, needle
