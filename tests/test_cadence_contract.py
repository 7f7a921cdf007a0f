"""Cadence is part of a model's contract on the command line: a file at another cadence is refused with both
cadences named, ``--resample AGG`` aggregates it as documented, horizons are reported in time; and the shipped
10-minute model forecasts its documented horizons from a 1,440-step window of the real 10-minute file."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecaster.artifact import load_artifact
from forecaster.clean import CleanConfig, load_stations
from forecaster.predict import Predictor
from forecaster.resample import resample_series
from forecaster.scorecard import horizon_label
from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
STATIONCAST = str(Path(sys.executable).parent / "stationcast")
SHIPPED_10MIN = ROOT / "pipeline" / "pretrained_models" / "global_10min"
MISMATCH = "data is 10-minute (600 s), model global@v1 is hourly (3600 s): pass --resample mean"


def jena_2020() -> Path:
    return shared_file("jena_2020_10min.csv.gz")


def head_of(src: Path, dest: Path, rows: int, drop: tuple[int, ...] = ()) -> Path:
    """The first ``rows`` readings of a real file, byte for byte (latin-1 header included), minus ``drop``."""
    with gzip.open(src, "rt", encoding="latin-1", newline="") as f:
        lines = [f.readline() for _ in range(rows + 1)]
    lines = [ln for i, ln in enumerate(lines) if i - 1 not in drop]
    dest.write_text("".join(lines), encoding="latin-1", newline="")
    return dest


@pytest.fixture(scope="module")
def jena_slice(tmp_path_factory) -> Path:
    """Five weeks of the real 10-minute Jena 2020 file."""
    return head_of(jena_2020(), tmp_path_factory.mktemp("data") / "jena_2020_head.csv", 144 * 35)


def stationcast(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([STATIONCAST, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("command", ["evaluate", "finetune"])
def test_a_10_minute_file_is_refused_by_the_hourly_model_naming_both_cadences(command, jena_slice, tmp_path):
    res = stationcast(command, "--data", str(jena_slice), "--registry", str(tmp_path / "reg"), cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert MISMATCH in res.stderr, res.stderr[-2000:]
    flag = "--base" if command == "finetune" else "--name"  # the flag that picks the model to start from
    assert f"or use the model of the data's cadence: {flag} global-10min" in res.stderr  # the seeded shipped one
    assert "Traceback" not in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if "error" in ln]) == 1, res.stderr


def test_a_fresh_registry_scores_a_10_minute_file_with_the_shipped_10_minute_model(jena_slice, tmp_path):
    """The command line seeds every shipped champion, as the service does: the name the refusal suggests works."""
    res = stationcast("evaluate", "--data", str(jena_slice), "--registry", str(tmp_path / "reg"), "--name",
                      "global-10min", "--json", "--plots", str(tmp_path / "plots"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert (out["model"], out["cadence_s"]) == ("global-10min@v1", 600)
    card = load_artifact(SHIPPED_10MIN)[1]
    assert [h["minutes"] for h in out["horizons"]] == [10 * h for h in card.data.horizons]
    assert out["windows"] > 0 and all(h["mae"] > 0 and h["diurnal_mae"] > 0 for h in out["horizons"])


def test_train_refuses_to_give_an_hourly_name_a_10_minute_version(jena_slice, tmp_path):
    registry = str(tmp_path / "reg")
    stationcast("models", "list", "--registry", registry, cwd=tmp_path)  # seeds global@v1, the shipped hourly model
    res = stationcast("train", "--data", str(jena_slice), "--registry", registry, "--epochs", "1", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert MISMATCH in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "reg" / "global" / "v0002").exists()


def test_resample_mean_scores_the_file_at_the_models_cadence_with_horizons_in_time(jena_slice, tmp_path):
    res = stationcast("evaluate", "--data", str(jena_slice), "--registry", str(tmp_path / "reg"), "--resample",
                      "mean", "--json", "--plots", str(tmp_path / "plots"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resampled from 10-minute (600 s) to hourly (3600 s) for global@v1 (--resample mean): each step at " \
           "time t is the mean of the readings in (t - 3600 s, t]" in res.stderr
    out = json.loads(res.stdout)
    assert out["cadence_s"] == 3600
    assert [(h["horizon"], h["minutes"]) for h in out["horizons"]] == [(h, 60 * h) for h in range(1, 25)]
    table = stationcast("evaluate", "--data", str(jena_slice), "--registry", str(tmp_path / "reg"), "--resample",
                        "mean", "--plots", str(tmp_path / "plots"), cwd=tmp_path)
    rows = {ln.split()[0] + " " + ln.split()[1]: ln.split()[2] for ln in table.stdout.splitlines()
            if ln.strip().startswith("+")}
    assert rows["+1 h"] == "1" and rows["+24 h"] == "24", table.stdout


@pytest.mark.parametrize("agg", ["mean", "max", "last"])
def test_resample_produces_the_documented_aggregation(agg, tmp_path):
    """Each hourly step t is AGG of the raw readings in (t - 1 h, t], computed here straight from the CSV with
    pandas; a step with a missing reading is missing, not an aggregate of what is left."""
    dropped = 100  # one reading, never filled (max-fill 0)
    path = head_of(jena_2020(), tmp_path / "head.csv", 144 * 3, drop=(dropped,))
    series = load_stations(path, None, None, CleanConfig(max_fill_steps=0))[0]
    hourly = resample_series(series, pd.Timedelta(hours=1), agg)
    assert hourly.cadence == pd.Timedelta(hours=1)
    raw = pd.read_csv(path, encoding="latin-1", parse_dates=["date"]).set_index("date")["T (degC)"]
    assert hourly.times[-1] == raw.index[-1]  # bins end on the last reading
    checked = 0
    for t, got in hourly.frame["T"].items():
        inside = raw[(raw.index > t - pd.Timedelta(hours=1)) & (raw.index <= t)]
        if len(inside) < 6:
            assert np.isnan(got), (t, inside)
            continue
        want = {"mean": inside.mean(), "max": inside.max(), "last": inside.iloc[-1]}[agg]
        assert got == pytest.approx(want, abs=1e-4), t
        checked += 1
    assert checked >= 60
    gap = raw.index[0] + dropped * pd.Timedelta(minutes=10)
    assert gap not in raw.index
    assert np.isnan(hourly.frame["T"][gap.ceil("h")])  # the hour the dropped reading belonged to


def test_shipped_10_minute_model_forecasts_its_horizons_from_a_1440_step_window():
    model, card = load_artifact(SHIPPED_10MIN)
    assert card.cadence_s == 600
    assert card.data.lookback >= 1440
    labels = [horizon_label(h * card.cadence_s / 60) for h in card.model.horizons]
    for want in ("+10 min", "+1 h", "+3 h", "+6 h", "+12 h", "+24 h"):
        assert want in labels, labels
    series = load_stations(jena_2020(), None, None, CleanConfig())[0]
    frame = series.frame[list(card.data.features)]
    end = len(frame) - 2000  # a window in the test span, gap-free
    window = frame.iloc[end - card.data.lookback:end]
    assert not window.isna().any().any()
    origin = np.array([window.index[-1].value // 10**9])
    forecast = Predictor(model, card, device="cpu").predict(window.to_numpy(np.float32)[None], origin)
    assert forecast.values.shape == (1, len(card.model.horizons), len(card.model.quantiles))
    point = forecast.point[0]
    actual = series.frame[card.data.target].iloc[[end - 1 + h for h in card.model.horizons]].to_numpy()
    assert np.isfinite(point).all()
    assert np.abs(point - actual).max() < 15  # degrees: a forecast of this station, not of another scale
    lo, hi = forecast.values[0, :, 0], forecast.values[0, :, -1]
    assert (lo <= point).all() and (point <= hi).all()
