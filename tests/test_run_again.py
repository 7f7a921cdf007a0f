"""`make run` twice: the main job replays the same records, which the store already holds after the first run.
The second run must forecast again (the old SQLite store kept under a dated name), and a store that cannot be
moved aside is refused in one line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from forecaster.data import nycflights_weather_path
from pipeline.run import already_stored
from pipeline.store import Store

STATIONCAST = str(Path(sys.executable).parent / "stationcast")


def _run(tmp_path: Path, data: Path, store: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [STATIONCAST, "run", "--data", str(data), "--speedup", "0", "--http-port", "0",
         "--store-url", f"sqlite:///{store}", "--registry", str(tmp_path / "registry")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)


def _stored_forecasts(store: Path) -> int:
    with Store.open(f"sqlite:///{store}") as s:
        return s.count("forecasts")


def test_the_main_job_run_again_forecasts_again_and_keeps_the_old_store(tmp_path):
    weather = pd.read_csv(nycflights_weather_path())
    weather = weather[weather["origin"].isin(["JFK", "LGA"])]
    first = weather.groupby("origin").head(220)  # lookback 168 + 24 h ahead + a day of scored forecasts
    data = tmp_path / "weather.csv"
    first.to_csv(data, index=False)
    store = tmp_path / "var" / "store.db"

    one = _run(tmp_path, data, store)
    assert one.returncode == 0, one.stderr[-3000:]
    made = _stored_forecasts(store)
    assert made > 0

    two = _run(tmp_path, data, store)
    assert two.returncode == 0, two.stderr[-3000:]
    moved = [ln for ln in two.stderr.splitlines() if "already held every reading" in ln and " MiB; delete it" in ln]
    assert len(moved) == 1, two.stderr[-3000:]
    kept = sorted(p for p in store.parent.glob("store-*.db"))
    assert len(kept) == 1 and re.fullmatch(r"store-\d{8}T\d{6}Z\.db", kept[0].name) and str(kept[0]) in moved[0]
    assert _stored_forecasts(kept[0]) == made  # the first run's results are kept as they were
    assert _stored_forecasts(store) == made  # and the second run forecast the same readings again

    # A replay that goes on past what is stored is served on the same store, the stored part named.
    weather.groupby("origin").head(260).to_csv(data, index=False)
    three = _run(tmp_path, data, store)
    assert three.returncode == 0, three.stderr[-3000:]
    assert "440 of the 520 readings are already in" in three.stderr, three.stderr[-3000:]
    assert len(list(store.parent.glob("store-*.db"))) == 1
    assert _stored_forecasts(store) > made


def test_already_stored_counts_readings_no_newer_than_the_stations_newest(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    records = pd.DataFrame({"station": ["a", "a", "a", "b"],
                            "time": pd.to_datetime(["2013-01-01 00:00", "2013-01-01 01:00", "2013-01-01 02:00",
                                                    "2013-01-01 00:00"])})
    assert already_stored(url, records) == 0  # no store yet (and none is created by asking)
    assert not (tmp_path / "store.db").exists()
    with Store.open(url) as s:
        s.add_readings("a", np.array([int(pd.Timestamp("2013-01-01 01:00").timestamp())]), np.array([[1.0]]), ["T"])
    assert already_stored(url, records) == 2  # a's first two; a's third is newer, b has nothing stored
