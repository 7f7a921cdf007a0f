"""The model commands as a user runs them on a fresh install: the shipped model from the shared default
registry at once, test spans by date (the same default for evaluate and finetune), the --json contract checked
against an independent numpy computation on the same file, and one-line errors for bad dates and spans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecaster.clean import StationSeries
from forecaster.evaluate import diurnal_offsets, steps_per_day
from forecaster.spans import SpanError, finetune_ranges, resolve
from forecaster.spans import test_rows as rows_of_test_span
from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
STATIONCAST = str(Path(sys.executable).parent / "stationcast")
SHIPPED_CARD = ROOT / "pipeline/pretrained_models/global/card.json"
SLICE = ("2015-01-01", "2015-05-01")  # four gap-free months of the Jena hourly record (checked below)
TOP_KEYS = {"model", "test_span", "windows", "mae", "skill", "horizons"}
HORIZON_KEYS = {"horizon", "minutes", "mae", "persistence_mae", "diurnal_mae", "coverage", "skill"}


@pytest.fixture(scope="module")
def jena_slice(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """Four months of the real Jena hourly file in its own layout, and the same rows read independently."""
    raw = pd.read_csv(shared_file("jena_2009_2016_hourly.csv.gz"))
    raw["time"] = pd.to_datetime(raw["Date Time"], format="%d.%m.%Y %H:%M:%S")
    part = raw[(raw["time"] >= SLICE[0]) & (raw["time"] < SLICE[1])].reset_index(drop=True)
    # Precondition of the independent computation: a regular hourly series with every sensor in range.
    assert (part["time"].diff().dropna() == pd.Timedelta(hours=1)).all(), "slice has gaps: pick another"
    assert part["wv (m/s)"].min() >= 0 and part["rh (%)"].between(0, 100).all()
    path = tmp_path_factory.mktemp("jena") / "jena_2015_jan_apr.csv"
    part.drop(columns="time").to_csv(path, index=False)
    return path, part


def stationcast(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([STATIONCAST, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def shipped_lookback() -> int:
    return json.loads(SHIPPED_CARD.read_text())["data"]["lookback"]


def independent_scores(part: pd.DataFrame, start: str | pd.Timestamp, end_incl: str | pd.Timestamp,
                       lookback: int) -> dict:
    """Windows (origin and every target in the span, a full lookback and a day of history before the origin)
    and the two baselines per horizon, computed with numpy on the raw file rows."""
    t = part["T (degC)"].to_numpy(np.float64)
    times = part["time"]
    a = int(np.searchsorted(times, pd.Timestamp(start), side="left"))
    b = int(np.searchsorted(times, pd.Timestamp(end_incl), side="right"))
    origins = np.arange(max(a, max(lookback, 24) - 1), b - 24)
    h = np.arange(1, 25)
    target = t[origins[:, None] + h]
    persistence = np.abs(t[origins][:, None] - target).mean(axis=0)
    diurnal = np.abs(t[origins[:, None] + h - 24] - target).mean(axis=0)
    return {"windows": len(origins), "from": times[a], "until": times[b - 1], "persistence": persistence,
            "diurnal": diurnal}


def iso(ts: pd.Timestamp) -> str:
    return ts.isoformat(timespec="seconds")


def check_contract(out: dict) -> None:
    assert set(out) >= TOP_KEYS
    assert set(out["test_span"]) == {"from", "until"}
    assert [h["horizon"] for h in out["horizons"]] == list(range(1, 25))
    for h in out["horizons"]:
        assert set(h) >= HORIZON_KEYS
        assert h["minutes"] == 60 * h["horizon"]
        assert 0 <= h["coverage"] <= 1
        better = min(h["persistence_mae"], h["diurnal_mae"])
        assert h["skill"] == pytest.approx(1 - h["mae"] / better)
    assert out["mae"] == pytest.approx(np.mean([h["mae"] for h in out["horizons"]]))
    assert out["skill"] == pytest.approx(np.mean([h["skill"] for h in out["horizons"]]))


def test_evaluate_json_on_a_fresh_install_uses_the_shipped_model(jena_slice, tmp_path):
    path, part = jena_slice
    res = stationcast("evaluate", "--data", str(path), "--json", "--plots", str(tmp_path / "plots"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)  # stdout is the JSON alone
    check_contract(out)
    assert out["model"] == "global@v1"
    first, last = part["time"].iloc[0], part["time"].iloc[-1]
    expected = independent_scores(part, first + (last - first) * 0.8, last, shipped_lookback())
    assert out["test_span"] == {"from": iso(expected["from"]), "until": iso(expected["until"])}
    assert out["windows"] == expected["windows"]
    got_p = np.array([h["persistence_mae"] for h in out["horizons"]])
    got_d = np.array([h["diurnal_mae"] for h in out["horizons"]])
    np.testing.assert_allclose(got_p, expected["persistence"], atol=2e-3)
    np.testing.assert_allclose(got_d, expected["diurnal"], atol=2e-3)
    # The default registry is the service's (var/registry), seeded with the shipped model on first use.
    listing = stationcast("models", "list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("global@v1"))
    assert "champion" in row and "shipped pretrained model" in row
    assert (tmp_path / "var/registry/global/v0001/card.json").exists()


def test_models_list_seeds_a_fresh_registry(tmp_path):
    res = stationcast("models", "list", "--registry", str(tmp_path / "reg"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert any(line.startswith("global@v1") and "champion" in line for line in res.stdout.splitlines())
    assert "every other station" in res.stdout and "global@v1" in res.stdout.splitlines()[-1]


def test_test_span_by_date_restricts_the_windows(jena_slice, tmp_path):
    path, part = jena_slice
    res = stationcast("evaluate", "--data", str(path), "--json", "--test-from", "2015-03-01",
                      "--test-until", "2015-03-20", "--registry", str(tmp_path / "reg"),
                      "--plots", str(tmp_path / "plots"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    check_contract(out)
    # A bare date as the end covers that whole day.
    expected = independent_scores(part, "2015-03-01", "2015-03-20 23:59:59", shipped_lookback())
    assert out["test_span"] == {"from": iso(expected["from"]), "until": iso(expected["until"])}
    assert out["test_span"]["from"].startswith("2015-03-01") and out["test_span"]["until"].startswith("2015-03-20")
    assert out["windows"] == expected["windows"]
    np.testing.assert_allclose([h["diurnal_mae"] for h in out["horizons"]], expected["diurnal"], atol=2e-3)


def test_finetune_and_evaluate_share_the_default_test_span(jena_slice, tmp_path):
    path, _ = jena_slice
    reg = str(tmp_path / "reg")
    ev = stationcast("evaluate", "--data", str(path), "--json", "--registry", reg, "--plots", str(tmp_path / "p"),
                     cwd=tmp_path)
    ft = stationcast("finetune", "--data", str(path), "--json", "--registry", reg, "--days", "30", "--epochs", "1",
                     "--plots", str(tmp_path / "p"), cwd=tmp_path)
    assert ev.returncode == 0 and ft.returncode == 0, (ev.stderr[-2000:], ft.stderr[-2000:])
    e, f = json.loads(ev.stdout), json.loads(ft.stdout)
    check_contract(f)
    check_contract(f["base"])
    assert f["test_span"] == e["test_span"] and f["windows"] == e["windows"]
    # The base block is the evaluated model on the very same windows.
    assert f["base"]["model"] == e["model"] == "global@v1"
    assert f["base"]["mae"] == pytest.approx(e["mae"], abs=1e-4)
    assert [h["persistence_mae"] for h in f["horizons"]] == pytest.approx([h["persistence_mae"] for h in e["horizons"]])
    # Registered as a candidate exactly when the holdout accepted it; the base serves otherwise.
    assert f["registered"] is f["adaptation"]["accepted"] and f["promoted"] is False
    name = f"station-{f['stations'][0]}"  # the station id: the file's name for a Jena layout
    listing = stationcast("models", "list", "--registry", reg, cwd=tmp_path).stdout
    if f["registered"]:
        assert f["model"] == f["served"] == f"{name}@v1"
        assert any(line.startswith(f["model"]) and "candidate" in line for line in listing.splitlines())
    else:
        assert f["model"] == name and f["served"] == "global@v1" and name not in listing


@pytest.fixture(scope="module")
def seeded_registry(tmp_path_factory) -> str:
    """A registry already seeded, so the errors below are the only thing the commands print."""
    reg = tmp_path_factory.mktemp("seeded") / "reg"
    assert stationcast("models", "list", "--registry", str(reg), cwd=reg.parent).returncode == 0
    return str(reg)


@pytest.mark.parametrize("args, needle", [
    (["evaluate", "--test-from", "2015-13-45"], "--test-from"),
    (["evaluate", "--test-until", "yesterday-ish"], "--test-until"),
    (["evaluate", "--test-from", "2015-04-01", "--test-until", "2015-03-01"], "test span is empty"),
    (["evaluate", "--test-from", "2015-04-20T00:00", "--test-until", "2015-04-20T12:00"], "holds no full window"),
    (["train", "--train-until", "2015-01-03", "--epochs", "1"], "training span"),
    (["finetune", "--train-until", "2015-03-01", "--test-from", "2015-02-01"], "--train-until"),
])
def test_bad_dates_and_spans_are_one_line_errors(jena_slice, seeded_registry, tmp_path, args, needle):
    path, _ = jena_slice
    res = stationcast(*args, "--data", str(path), "--registry", seeded_registry, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def _series(start: str, periods: int, freq: str = "h") -> StationSeries:
    index = pd.date_range(start, periods=periods, freq=freq, name="time")
    return StationSeries("s", pd.Timedelta(freq if freq[0].isdigit() else f"1{freq}"),
                         pd.DataFrame({"T": np.arange(periods, dtype=float)}, index=index))


def test_span_defaults_and_date_bounds():
    s = _series("2015-01-01", 24 * 100)  # 100 days hourly
    spans = resolve([s])
    assert spans.test_start == s.times[0] + (s.times[-1] + pd.Timedelta(1, "ns") - s.times[0]) * 0.8
    assert spans.train_end == spans.test_start
    # "train until a day" covers that day; the test span then starts right after it.
    spans = resolve([s], train_until="2015-02-10")
    assert spans.train_end == spans.test_start == pd.Timestamp("2015-02-11")
    r = rows_of_test_span(s, resolve([s], test_from="2015-03-01", test_until="2015-03-02"))
    assert s.times[r][0] == pd.Timestamp("2015-03-01") and s.times[r][-1] == pd.Timestamp("2015-03-02 23:00")
    r = rows_of_test_span(s, resolve([s], test_from="2015-03-01T06:00", test_until="2015-03-01T12:00"))
    assert len(s.times[r]) == 7  # a timestamp as the end is inclusive
    with pytest.raises(SpanError, match="--test-from"):
        resolve([s], test_from="2015-02-30")
    with pytest.raises(SpanError, match="reaches into the test span"):
        resolve([s], train_until="2015-03-05", test_from="2015-03-01")
    train, hold, test = finetune_ranges(s, resolve([s], test_from="2015-03-01"), days=10, holdout_days=3)
    assert s.times[train][0] == pd.Timestamp("2015-02-19") and s.times[hold][-1] == pd.Timestamp("2015-02-28 23:00")
    assert s.times[hold][0] == pd.Timestamp("2015-02-26") == s.times[train][-1] + pd.Timedelta(hours=1)


def test_diurnal_baseline_reads_the_day_before_each_target():
    assert diurnal_offsets((1, 12, 24), 24).tolist() == [-23, -12, 0]
    assert diurnal_offsets((1, 144), 144).tolist() == [-143, 0]  # 10-minute cadence
    assert diurnal_offsets((30,), 24).tolist() == [-18]  # beyond a day: whole days back, already observed
    assert steps_per_day(600) == 144 and steps_per_day(3600) == 24 and steps_per_day(7 * 60) is None
