"""Loading and cleaning real station records, quirks included."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from forecaster.clean import CleanConfig, clean_station, infer_cadence, load_stations, segments_from_valid
from forecaster.data import DataError, detect_schema, load_records, nycflights_weather_path
from forecaster.schema import JENA, JENA_2020, NYCFLIGHTS, Schema


def test_jena_2020_quirks(jena_2020):
    records = load_records(jena_2020)
    assert detect_schema(jena_2020) is JENA_2020
    # -9999 placeholders become missing values in wv, max. PAR and OT.
    assert records["wv"].isna().sum() == 1
    assert records["max_PAR"].isna().sum() == 30
    assert records["OT"].isna().sum() == 50
    assert (records.drop(columns=["station", "time"]) == -9999).sum().sum() == 0
    series = clean_station(records)
    assert series.cadence == pd.Timedelta("10min")
    assert series.report["duplicates_dropped"] == 1
    assert not series.times.duplicated().any()
    # The 100-minute gap: nine missing 10-minute steps, too long to fill (default max 3), so it splits.
    missing = series.frame.index[series.frame["T"].isna()]
    assert len(missing) == 9
    assert (np.diff(missing.to_numpy()) == np.timedelta64(10, "m")).all()
    seg = series.segments(["T", "p"])
    assert (seg[series.frame["T"].isna().to_numpy()] == -1).all()
    assert seg.max() == 1  # one split, at the gap


def test_short_gap_is_interpolated_and_long_gap_splits():
    times = pd.date_range("2020-01-01", periods=20, freq="h")
    keep = np.ones(20, bool)
    keep[[3, 4]] = False  # 2 missing steps: filled
    keep[10:16] = False  # 6 missing steps: split
    t = np.arange(20, dtype=float)
    records = pd.DataFrame({"station": "x", "time": times[keep], "T": t[keep]})
    s = clean_station(records, CleanConfig(max_fill_steps=3))
    assert s.frame["T"].iloc[3] == pytest.approx(3.0) and s.frame["T"].iloc[4] == pytest.approx(4.0)
    assert s.frame["T"].iloc[10:16].isna().all()
    assert s.report["filled_values"] == 2
    assert list(np.unique(s.segments(["T"]))) == [-1, 0, 1]


def test_phase_drift_keeps_every_reading():
    # Like the Jena hourly file: readings drift from :10 to :30 after a late reading; none may collide.
    a = pd.date_range("2020-01-01 00:10", periods=10, freq="h")
    b = pd.date_range(a[-1] + pd.Timedelta("1h20min"), periods=10, freq="h")
    records = pd.DataFrame({"station": "x", "time": a.append(b), "T": np.arange(20.0)})
    s = clean_station(records)
    assert s.report["duplicates_dropped"] == 0
    assert s.frame["T"].notna().sum() == 20


def test_jena_hourly_loads_regular(jena_hourly):
    s = clean_station(load_records(jena_hourly))
    assert s.cadence == pd.Timedelta("1h")
    assert s.report["duplicates_dropped"] == 0
    assert s.frame["T"].notna().sum() == 70038


def test_nycflights_units_and_stations():
    series = load_stations(nycflights_weather_path())
    assert [s.station for s in series] == ["EWR", "JFK", "LGA"]
    raw = pd.read_csv(nycflights_weather_path(), nrows=1)
    assert series[0].frame["T"].iloc[0] == pytest.approx((raw["temp"][0] - 32) * 5 / 9)
    assert series[0].frame["wv"].iloc[0] == pytest.approx(raw["wind_speed"][0] * 0.44704)
    assert detect_schema(nycflights_weather_path()) is NYCFLIGHTS


def test_declared_schema_for_another_layout(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("ts;st;tempF\n" * 0 + "ts,st,tempF\n2021-03-01T00:00,A,50\n2021-03-01T01:00,A,-9999\n"
                    "2021-03-01T02:00,A,59\n")
    schema = Schema(name="other", time_column="ts", station_column="st", sensors={"T": "tempF"}, units={"T": "degF"})
    r = load_records(path, schema)
    assert r["T"].iloc[0] == pytest.approx(10.0) and np.isnan(r["T"].iloc[1]) and r["T"].iloc[2] == pytest.approx(15.0)


def test_malformed_file_names_line_and_column(tmp_path):
    path = tmp_path / "bad.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("Date Time,p (mbar),T (degC),Tdew (degC),rh (%),VPmax (mbar),wv (m/s)\n")
        fh.write("01.01.2009 00:10:00,996.52,-8.02,-8.90,93.30,3.33,1.03\n")
        fh.write("01.01.2009 01:10:00,996.50,warm,-8.30,94.80,3.44,0.18\n")
    with pytest.raises(DataError, match=r"bad\.csv\.gz: line 3, column 3 \('T \(degC\)'\): not a number: 'warm'"):
        load_records(path)
    path2 = tmp_path / "badtime.csv"
    path2.write_text("Date Time,p (mbar),T (degC),Tdew (degC),rh (%),VPmax (mbar),wv (m/s)\n"
                     "2009-01-01,996.52,-8.02,-8.90,93.30,3.33,1.03\n")
    with pytest.raises(DataError, match=r"line 2, column 1 .*bad timestamp"):
        load_records(path2, JENA)
    path3 = tmp_path / "unknown.csv"
    path3.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="unknown layout"):
        load_records(path3)
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "missing.csv")


def test_cadence_and_segments_helpers():
    assert infer_cadence(pd.date_range("2020", periods=5, freq="10min")) == pd.Timedelta("10min")
    assert list(segments_from_valid(np.array([1, 1, 0, 1, 0, 0, 1], bool))) == [0, 0, -1, 1, -1, -1, 2]
