"""Bounded state at fleet scale: the status API pages and searches 20,000 stations in a small answer, the status
page stays quick to draw in headless Chromium, pending forecasts whose actual never comes are let go, and metric
label slots follow recent activity. Real broker, real service loop, real station records."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import replace

import numpy as np
import orjson
import pandas as pd
import pytest

from pipeline.http import HttpServer
from pipeline.replay import records_for_replay
from pipeline.scoring import Scoreboard
from tests.broker_fixture import kafka_broker  # noqa: F401
from tests.conftest import shared_file
from tests.pipeline_harness import ServiceThread, make_setup, publish, wait_until
from tests.test_observability import _need

FULL, SPARSE, FULL_HOURS, SPARSE_HOURS = 24, 20_000, 230, 3


def _get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def _code(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=30).status  # noqa: S310
    except urllib.error.HTTPError as exc:
        return exc.code


def _metric_stations(base: str, name: str) -> set[str]:
    text = _get(f"{base}/metrics").decode()
    return set(re.findall(rf'^{name}{{station="([^"]+)"', text, re.M))


def _sample(base: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", _get(f"{base}/metrics").decode(), re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def chicago() -> pd.DataFrame:
    return records_for_replay(shared_file("noaa_chicago_ohare_2010_2016_hourly.csv.gz"))


def _stations(base: pd.DataFrame, n: int, hours: int, prefix: str, skip: int = 0) -> pd.DataFrame:
    """``n`` pseudo-stations of ``hours`` consecutive real hourly records each, all on the clock of the first."""
    rows = base.iloc[skip: skip + n * hours].reset_index(drop=True)
    chunk = np.arange(len(rows)) // hours
    t = rows["time"].to_numpy()
    start = base["time"].iloc[0]
    return rows.assign(station=[f"{prefix}{c:05d}" for c in chunk], time=start + (t - t[chunk * hours]))


def test_scoreboard_stays_bounded_when_actuals_never_come() -> None:
    """Forecasts of stations whose temperature never arrives expire once their target is past lateness."""
    board, stations, horizons, lateness, step = Scoreboard(), np.array(["a", "b", "c"], dtype=object), 24, 3, 3600
    sizes = []
    for k in range(500):  # 500 batches, one forecast per station each, never scored
        issue = k * step
        frame = pd.DataFrame({
            "station": np.repeat(stations, horizons), "issue_ts": issue, "horizon": np.tile(np.arange(1, 25), 3),
            "target_ts": issue + np.tile(np.arange(1, 25), 3) * step, "model_version": "m", "value": 1.0,
            "persistence": 1.0})
        board.add(frame)
        board.match(stations, np.full(3, issue), np.full(3, np.nan))  # the reading came without a temperature
        board.expire_stations(stations, np.full(3, issue - lateness * step))
        sizes.append(len(board))
    assert max(sizes) <= len(stations) * horizons * (horizons + lateness + 1)
    assert sizes[-1] == sizes[-100], "the board grows with every batch"


def test_status_api_and_page_at_20000_stations(kafka_broker, chicago, tmp_path):  # noqa: F811
    chromium = _need("chromium")
    full = _stations(chicago, FULL, FULL_HOURS, "ORD-F")
    sparse = _stations(chicago, SPARSE, SPARSE_HOURS, "ORD-S")
    # Every 5th temperature of the full stations is missing: filled in their windows, but never an actual.
    t_missing = full.index.to_numpy() % 5 == 2
    full.loc[t_missing, "T"] = np.nan
    setup = make_setup(kafka_broker.bootstrap, tmp_path)
    setup = replace(setup, cfg=replace(setup.cfg, max_station_labels=50))
    s1 = publish(setup, full)
    s2 = publish(setup, sparse)
    with ServiceThread(setup) as service:
        http = HttpServer("127.0.0.1", 0, service.metrics.registry, lambda: service.alive, lambda: service.ready,
                          service.status).start()
        base = http.url
        try:
            wait_until(lambda: service.totals.accepted >= s1.expected_valid + s2.expected_valid, 600,
                       "every reading processed", interval=1)
            wait_until(lambda: service.totals.errors_scored > 0, 60, "scored forecasts")
            started = time.perf_counter()
            body = _get(f"{base}/api/status")
            took = time.perf_counter() - started
            status = orjson.loads(body)
            summary = status["summary"]
            assert summary["stations"] == FULL + SPARSE
            assert len(status["stations"]) == 50 and len(body) < 100_000, len(body)
            assert took < 3, f"/api/status took {took:.1f}s"
            # Worst first: the scored stations come first, in ascending skill.
            skills = [s["skill"] for s in status["stations"][:FULL]]
            assert all(s is not None for s in skills) and skills == sorted(skills)
            assert summary["scored"] == FULL and summary["ready"] == FULL
            # Search and paging.
            found = orjson.loads(_get(f"{base}/api/status?q=s01234"))
            assert [s["station"] for s in found["stations"]] == ["ORD-S01234"] and found["summary"]["matched"] == 1
            last = orjson.loads(_get(f"{base}/api/status?limit=100&offset={FULL + SPARSE - 30}"))
            assert len(last["stations"]) == 30 and last["stations"][-1]["station"] == f"ORD-S{SPARSE - 1:05d}"
            assert _code(f"{base}/api/status?limit=x") == 400
            # Pending forecasts whose actual is missing are let go; the board holds at most the open horizons.
            assert _sample(base, "stationcast_forecasts_expired_total") > 0
            n_h = len(setup.card.data.horizons)
            assert len(service.step.scoreboard) <= FULL * n_h * (n_h + service.cfg.lateness_steps + 1)
            # The page, drawn by Chromium: one page of charts, worst first, with the pager.
            flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                     "--disable-background-networking", "--disable-component-update",
                     f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000"]
            started = time.perf_counter()
            dom = subprocess.run([chromium, *flags, "--dump-dom", f"{base}/status"], capture_output=True,
                                 timeout=120).stdout.decode()
            took = time.perf_counter() - started
            charts = re.findall(r'<svg[^>]*class="station-chart"[^>]*data-station="([^"]+)"', dom)
            assert len(charts) == 50 and charts[0].startswith("ORD-F"), dom[:2000]
            assert f"1–50 of {FULL + SPARSE:,}" in dom and "20,024" in dom
            assert took < 60, f"Chromium took {took:.0f}s to draw the page"
            searched = subprocess.run([chromium, *flags, "--dump-dom", f"{base}/status?q=ORD-S0001"],
                                      capture_output=True, timeout=120).stdout.decode()
            found = re.findall(r'<svg[^>]*class="station-chart"[^>]*data-station="([^"]+)"', searched)
            assert found and all("ORD-S0001" in s for s in found) and "of 10 matching" in searched
        finally:
            http.stop()


def test_label_slots_follow_recent_activity(kafka_broker, chicago, tmp_path):  # noqa: F811
    """Stations that report once take a label slot, and leave it after station_idle_s for the next ones."""
    setup = make_setup(kafka_broker.bootstrap, tmp_path)
    setup = replace(setup, cfg=replace(setup.cfg, max_station_labels=3, station_idle_s=8.0))
    first = _stations(chicago, 3, 1, "junk-a")
    second = _stations(chicago, 3, 1, "junk-b", skip=3)
    with ServiceThread(setup) as service:
        http = HttpServer("127.0.0.1", 0, service.metrics.registry, lambda: service.alive, lambda: service.ready,
                          service.status).start()
        try:
            publish(setup, first)
            wait_until(lambda: _metric_stations(http.url, "stationcast_actual_celsius") == set(first["station"]),
                       60, "the first stations labelled")
            publish(setup, second)  # the slots are taken: these go unlabelled for now
            wait_until(lambda: service.totals.accepted >= 6, 60, "the second stations consumed")
            assert _metric_stations(http.url, "stationcast_actual_celsius") == set(first["station"])
            wait_until(lambda: _sample(http.url, "stationcast_stations_released_total") >= 6, 60,
                       "silent stations released")
            assert _metric_stations(http.url, "stationcast_actual_celsius") == set()
            assert orjson.loads(_get(f"{http.url}/api/status"))["summary"]["stations"] == 0
            third = _stations(chicago, 3, 1, "junk-c", skip=6)
            publish(setup, third)
            wait_until(lambda: _metric_stations(http.url, "stationcast_actual_celsius") == set(third["station"]),
                       60, "new stations taking the freed slots")
            assert _metric_stations(http.url, "stationcast_seconds_since_reading") == set(third["station"])
        finally:
            http.stop()
