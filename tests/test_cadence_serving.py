"""Stations served at their own cadence (issue #12): an hourly NOAA station and the 10-minute Jena record through the
real embedded broker and the real service, each on its cadence's champion, on its own grid; a cadence no champion
has is reported, not forecast; the command line refuses a file at such a cadence unless asked to resample."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from forecaster.clean import clean_station
from forecaster.experiment import fit
from forecaster.registry import Registry
from forecaster.train import TrainConfig
from pipeline.cadence import DETECT_READINGS, champion_name, horizon_label, resample
from pipeline.contract import CadenceError, enforce
from pipeline.replay import records_for_replay
from pipeline.store import Store
from tests.broker_fixture import kafka_broker  # noqa: F401
from tests.pipeline_harness import (
    ROOT,
    ServiceThread,
    expected_origins,
    fast_cfg,
    make_setup,
    metric,
    publish,
    stored_forecasts,
    wait_until,
)

TEN_MIN = 600
DEN_START = pd.Timestamp("2014-01-01")


@pytest.fixture(scope="module")
def jena10(jena_2020) -> pd.DataFrame:
    """The first 40 days of the 10-minute Jena 2020 record."""
    rec = records_for_replay(jena_2020)
    return rec[rec["time"] < rec["time"].min() + pd.Timedelta(days=40)].reset_index(drop=True)


@pytest.fixture(scope="module")
def ten_minute_model(jena10, shipped_card):
    """A small 10-minute model (6 h of lookback, +10 min .. +2 h), trained briefly on the slice's first weeks: what
    the service must route the 10-minute station to (the shipped one, when there is one, is a different size)."""
    torch.set_num_threads(1)
    series = clean_station(jena10)
    assert int(series.cadence.total_seconds()) == TEN_MIN
    data = replace(shipped_card.data, lookback=36, horizons=tuple(range(1, 13)))
    arch = replace(shipped_card.model, horizons=data.horizons)
    cfg = TrainConfig(optimizer="adam", lr=1e-3, epochs=1, steps_per_epoch=40, val_steps=4, seed=0, progress=False)
    return fit([series], data, arch, cfg, label="jena 10 min")


@pytest.fixture(scope="module")
def shipped_card():
    from forecaster.artifact import read_card
    from pipeline.pretrained import shipped_artifact

    return read_card(shipped_artifact("global"))


@pytest.fixture(scope="module")
def denver(noaa_denver) -> pd.DataFrame:
    rec = records_for_replay(noaa_denver)
    rec = rec[(rec["time"] >= DEN_START) & (rec["time"] < DEN_START + pd.Timedelta(days=9))]
    return rec.assign(station="DEN").reset_index(drop=True)


def _register(setup, trained) -> str:
    registry = Registry(setup.cfg.registry)
    name = champion_name(setup.cfg.model_name, TEN_MIN)
    info = registry.register(name, trained.model, trained.card, note="test: 10-minute Jena")
    registry.promote(name, info.version, note="test")
    return info.tag


def test_mixed_cadences_are_each_served_by_their_own_champion(kafka_broker, tmp_path, denver, jena10,  # noqa: F811
                                                              ten_minute_model):
    setup = make_setup(kafka_broker.bootstrap, tmp_path)
    ten_tag = _register(setup, ten_minute_model)
    hourly_tag = Registry(setup.cfg.registry).champion(setup.cfg.model_name).tag
    jena = jena10[jena10["time"] < jena10["time"].min() + pd.Timedelta(days=2)].assign(station="JENA10")
    # A real station reporting every 20 minutes (every other Jena reading): no champion has that cadence.
    slow = jena.iloc[::2].assign(station="JENA20")
    records = pd.concat([denver, jena, slow]).sort_values("time", kind="stable").reset_index(drop=True)
    stats = publish(setup, records)
    ten_card = ten_minute_model.card
    want = pd.concat([expected_origins(denver, setup.card), expected_origins(jena, ten_card)], ignore_index=True)
    n_rows = {"DEN": len(setup.card.data.horizons), "JENA10": len(ten_card.data.horizons)}
    with ServiceThread(setup) as service:
        wait_until(lambda: service.totals.consumed >= stats.sent, 120, "all readings consumed")
        expected_rows = sum(n_rows[s] for s in want["station"])
        wait_until(lambda: len(stored_forecasts(setup.cfg.store_url)) >= expected_rows, 60, "every forecast")
        assert service.model_of("DEN") == (hourly_tag, 3600)
        assert service.model_of("JENA10") == (ten_tag, TEN_MIN)
        assert service.model_of("JENA20") == (None, None)
        status = service.status({"limit": "10"})
        served = {m["cadence_s"]: m for m in status["service"]["models"]}
        assert served[3600]["model"] == hourly_tag and served[3600]["stations"] == 1
        assert served[TEN_MIN]["model"] == ten_tag and served[TEN_MIN]["stations"] == 1
        assert served[TEN_MIN]["horizons"][:6] == [horizon_label(h, TEN_MIN) for h in range(1, 7)]
        assert served[TEN_MIN]["horizons"][5] == "+1 h"
        rows = {s["station"]: s for s in status["stations"]}
        assert (rows["JENA10"]["model"], rows["JENA10"]["cadence_s"]) == (ten_tag, TEN_MIN)
        assert (rows["DEN"]["model"], rows["DEN"]["cadence_s"]) == (hourly_tag, 3600)
        [unserved] = status["service"]["unserved"]
        assert unserved["station"] == "JENA20" and unserved["cadence_s"] == 1200
        assert "20 min" in unserved["reason"] and "10 min" in unserved["reason"]
        assert metric(service, "stationcast_stations_served", {"model": ten_tag, "cadence": "600"}) == 1
        assert metric(service, "stationcast_stations_served", {"model": hourly_tag, "cadence": "3600"}) == 1
        assert metric(service, "stationcast_stations_unserved", {"cadence": "1200"}) == 1
        assert metric(service, "stationcast_readings_unserved_total") == len(slow)
        # Each cadence's fleet has its own scores: the hourly one under station="all" and the top of the status
        # page, the 10-minute one under station="all@10min" and its lane's entry; horizons in its own time.
        wait_until(lambda: _lane_scored(service, TEN_MIN) and _lane_scored(service, 3600), 60, "both lanes scored")
        status = service.status({"limit": "10"})
        scores = {m["cadence_s"]: m["scores"] for m in status["service"]["models"]}
        fleet = {"all": scores[3600], "all@10min": scores[TEN_MIN]}
        for label, sc in fleet.items():
            for forecaster, key in (("model", "rolling_mae"), ("persistence", "rolling_persistence_mae"),
                                    ("diurnal", "rolling_diurnal_mae")):
                exposed = metric(service, "stationcast_rolling_mae_celsius", {"station": label,
                                                                               "forecaster": forecaster})
                assert exposed == pytest.approx(sc[key], abs=1e-3), (label, forecaster)
            assert metric(service, "stationcast_skill_vs_best_baseline", {"station": label}) == \
                pytest.approx(sc["skill"], abs=1e-3)
        assert status["service"]["rolling_mae"] == scores[3600]["rolling_mae"]
        assert scores[TEN_MIN]["rolling_mae"] != scores[3600]["rolling_mae"]
        assert [h["label"] for h in scores[TEN_MIN]["horizons"]][:2] == ["+10 min", "+20 min"]
        assert [h["horizon"] for h in scores[3600]["horizons"]] == list(setup.card.data.horizons)
        assert metric(service, "stationcast_band_coverage", {"horizon": "all@10min"}) == \
            pytest.approx(scores[TEN_MIN]["band_coverage"], abs=1e-3)
    fc = stored_forecasts(setup.cfg.store_url)
    assert set(fc["station"]) == {"DEN", "JENA10"}, "the 20-minute station must not be forecast by any model"
    for station, tag, card in (("DEN", hourly_tag, setup.card), ("JENA10", ten_tag, ten_card)):
        mine = fc[fc["station"] == station]
        assert set(mine["model_version"]) == {tag}
        np.testing.assert_array_equal(mine["target_ts"] - mine["issue_ts"], mine["horizon"] * card.cadence_s)
        # Every issue time is one of the station's own readings (its own grid, never another cadence's), and every
        # due window of its own cadence was forecast exactly once.
        got = np.sort(mine["issue_ts"].unique())
        np.testing.assert_array_equal(got, np.sort(want.loc[want["station"] == station, "issue_ts"].to_numpy()))
        assert len(mine) == len(got) * len(card.data.horizons)
    jena_ts = jena["time"].to_numpy(dtype="datetime64[s]").astype(np.int64)
    assert np.isin(fc.loc[fc["station"] == "JENA10", "issue_ts"], jena_ts).all()
    # Scored on the 10-minute grid: the +10 min forecasts' targets are real 10-minute readings.
    with Store.open(setup.cfg.store_url) as store:
        errors = store.errors()
        assert store.count("readings") == stats.expected_valid  # the unserved station's readings are kept too
    ten = errors[errors["station"] == "JENA10"]
    assert len(ten) and np.isin(ten["target_ts"], jena_ts).all()
    assert len(ten[ten["horizon"] == 1]) >= len(jena) - ten_card.data.lookback - DETECT_READINGS


def _lane_scored(service, cadence: int) -> bool:
    models = service.status({"limit": "1"})["service"]["models"]
    return any(m["cadence_s"] == cadence and m["scores"]["rolling_mae"] is not None for m in models)


def test_a_worse_10_minute_champion_is_rolled_back_in_its_own_lane(kafka_broker, tmp_path, jena10,  # noqa: F811
                                                                   ten_minute_model):
    """Automatic rollback watches every cadence's champion: a worse global-10min promoted while the 10-minute
    station is served goes on probation against that lane's live MAE and is rolled back; the hourly champion is
    not touched."""
    setup = fast_cfg(make_setup(kafka_broker.bootstrap, tmp_path), model_check_s=0.3, rollback_min_errors=300,
                     rollback_margin=0.2)
    good = _register(setup, ten_minute_model)
    registry = Registry(setup.cfg.registry)
    name = champion_name(setup.cfg.model_name, TEN_MIN)
    hourly = registry.champion(setup.cfg.model_name).tag
    model, card, _ = registry.load(name)
    with torch.no_grad():  # a deliberately broken copy: every horizon anchored on the reading a "day" (24 steps,
        model.mix.fill_(10.0)  # 4 h here) before its target instead of the last one (a shifted head bias is
        # multiplied by the window's spread, which a 6 h window of a calm night makes small)
    bad = registry.register(name, model, card, note="deliberately worse")
    jena = jena10.assign(station="JENA10")
    day = jena["time"].min() + pd.Timedelta(days=2)
    with ServiceThread(setup) as service:
        s1 = publish(setup, jena[jena["time"] < day])
        wait_until(lambda: service.totals.consumed >= s1.sent and _lane_scored(service, TEN_MIN), 120, "live errors")
        assert service.model_of("JENA10") == (good, TEN_MIN)
        registry.promote(name, bad.version, note="a bad promotion")
        wait_until(lambda: service.model_of("JENA10")[0] == bad.tag, 20, "the swap to the bad model")
        s2 = publish(setup, jena[(jena["time"] >= day) & (jena["time"] < day + pd.Timedelta(days=2))])
        wait_until(lambda: service.model_of("JENA10")[0] == good, 90, "the automatic rollback")
        assert metric(service, "stationcast_rollbacks_total") == 1
        decisions = [d["decision"] for d in service.lifecycle.decisions]
        assert "probation" in decisions and "rolled_back" in decisions
        wait_until(lambda: service.totals.consumed >= s1.sent + s2.sent, 60, "all consumed")
    assert registry.champion(name).tag == good
    assert "auto rollback" in registry.events(name)[-1]["note"]
    assert registry.champion(setup.cfg.model_name).tag == hourly


def _slice_file(tmp_path, source, every: int) -> str:
    """The first two days of the Jena 2020 file, every ``every``-th reading, its lines as they are."""
    with gzip.open(source, "rb") as f:
        lines = [f.readline() for _ in range(1 + 288)]
    path = tmp_path / f"jena_every_{every}.csv"
    path.write_bytes(lines[0] + b"".join(lines[1::every]))
    return str(path)


def test_a_file_at_a_cadence_no_champion_has_is_refused_in_one_line(tmp_path, jena_2020):
    path = _slice_file(tmp_path, jena_2020, 2)  # every 20 minutes
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "replay", "--data", path, "--bootstrap-servers",
                        "127.0.0.1:9"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "STATIONCAST_REGISTRY": str(tmp_path / "registry")}, check=False)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "every 20 min" in lines[0] and "1 h (global)" in lines[0] and "--resample" in lines[0]


def test_resample_aggregates_onto_the_nearest_coarser_served_cadence(jena10):
    rows = jena10[jena10["time"] < jena10["time"].min() + pd.Timedelta(days=2)].iloc[::2]  # every 20 minutes
    with pytest.raises(CadenceError, match="every 20 min"):
        enforce(rows, "f.csv", {3600: "global", TEN_MIN: "global-10min"}, None)
    out = enforce(rows, "f.csv", {3600: "global", TEN_MIN: "global-10min"}, "mean")
    times = out["time"].drop_duplicates()
    assert (times.diff().dropna() == pd.Timedelta(hours=1)).all()
    # The documented aggregation: each value is the mean of the readings in (t - 1 h, t], stamped t.
    t = times.iloc[5]
    assert t.minute == rows["time"].iloc[-1].minute  # on the station's own phase
    window = rows[(rows["time"] > t - pd.Timedelta(hours=1)) & (rows["time"] <= t)]
    assert len(window) == 3
    got = out.loc[out["time"] == t].iloc[0]
    for col in ("T", "Tdew", "rh"):
        assert got[col] == pytest.approx(window[col].mean())
    holed = resample(rows.drop(index=window.index[1]), 3600, "mean")  # a step missing a reading is left out
    assert t not in set(holed["time"]) and len(holed) == len(out) - 1
    last = resample(rows, 3600, "last")
    assert last.loc[last["time"] == t, "T"].iloc[0] == window["T"].iloc[-1]
    with pytest.raises(CadenceError, match="no champion's cadence"):
        enforce(rows, "f.csv", {TEN_MIN: "global-10min"}, "mean")


def test_a_restart_rebuilds_each_station_into_its_own_lane(kafka_broker, tmp_path, denver, jena10,  # noqa: F811
                                                          ten_minute_model):
    """Stop, publish more, start again: every station is rebuilt from the store into its cadence's lane (detected
    from its stored readings), and the forecasts equal those of a run without the restart: each due window once."""
    setup = make_setup(kafka_broker.bootstrap, tmp_path)
    ten_tag = _register(setup, ten_minute_model)
    jena = jena10[jena10["time"] < jena10["time"].min() + pd.Timedelta(days=2)].assign(station="JENA10")
    den = denver  # 9 days: the restart lands before its first forecast (a 7-day window), rebuilt from the store
    first = pd.concat([den.iloc[: len(den) * 2 // 3], jena.iloc[: len(jena) // 2]]).sort_values("time", kind="stable")
    rest = pd.concat([den.iloc[len(den) * 2 // 3:], jena.iloc[len(jena) // 2:]]).sort_values("time", kind="stable")
    want = pd.concat([expected_origins(den, setup.card), expected_origins(jena, ten_minute_model.card)])
    n_h = {"DEN": len(setup.card.data.horizons), "JENA10": len(ten_minute_model.card.data.horizons)}
    rows = sum(n_h[s] for s in want["station"])
    s1 = publish(setup, first)
    with ServiceThread(setup) as service:
        wait_until(lambda: service.totals.consumed >= s1.sent, 120, "the first part consumed")
    s2 = publish(setup, rest)
    with ServiceThread(setup) as service:
        wait_until(lambda: len(stored_forecasts(setup.cfg.store_url)) >= rows, 120, "every forecast after restart")
        assert service.model_of("JENA10") == (ten_tag, TEN_MIN)
        assert service.model_of("DEN")[1] == 3600
        assert service.totals.consumed == s2.sent
    fc = stored_forecasts(setup.cfg.store_url)
    assert len(fc) == rows
    for station in ("DEN", "JENA10"):
        mine = fc[fc["station"] == station]
        got = np.sort(mine["issue_ts"].unique())
        np.testing.assert_array_equal(got, np.sort(want.loc[want["station"] == station, "issue_ts"].to_numpy()))
    assert set(fc.loc[fc["station"] == "JENA10", "model_version"]) == {ten_tag}


def _store_records(url: str, records: pd.DataFrame) -> None:
    from pipeline.readings import SENSORS

    values = np.column_stack([records[c].to_numpy(dtype=np.float64) if c in records else
                              np.full(len(records), np.nan) for c in SENSORS])
    with Store.open(url) as store:
        store.add_readings(records["station"].to_numpy(dtype=object),
                           records["time"].to_numpy(dtype="datetime64[s]").astype(np.int64), values, SENSORS, 0,
                           np.arange(len(records)))


def test_retraining_and_fine_tuning_work_per_cadence(tmp_path, noaa_denver, jena10, ten_minute_model):
    """Each cadence's champion retrains on its own stations' readings only, and a station is fine-tuned from its
    cadence's champion."""
    from pipeline.finetune import base_name
    from pipeline.retrain import RetrainSettings, retrain

    den = records_for_replay(noaa_denver)
    den = den[(den["time"] >= DEN_START) & (den["time"] < DEN_START + pd.Timedelta(days=40))].assign(station="DEN")
    url = f"sqlite:///{tmp_path}/store.db"
    _store_records(url, pd.concat([den, jena10.assign(station="JENA10")], ignore_index=True))
    registry = Registry(tmp_path / "registry")
    from pipeline.pretrained import ensure_champion

    hourly = ensure_champion(registry, "global")
    registry.register("global-10min", ten_minute_model.model, ten_minute_model.card, note="test")
    registry.promote("global-10min", 1, note="test")
    job = {"history_days": 3000.0, "holdout_days": 7.0, "epochs": 1, "steps_per_epoch": 5, "progress": False}
    ten = retrain(RetrainSettings(store_url=url, registry=str(registry.root), name="global-10min", **job))
    assert ten.outcome != "failed", ten.reason
    assert ten.stations == ["JENA10"] and ten.champion == "global-10min@v1"
    assert registry.card("global-10min", 2).cadence_s == TEN_MIN
    one = retrain(RetrainSettings(store_url=url, registry=str(registry.root), name="global", **job))
    assert one.outcome != "failed", one.reason
    assert one.stations == ["DEN"] and one.champion == hourly.tag
    with Store.open(url) as store:
        assert base_name(registry, "global", store.history(0, 2**40, ["JENA10"])["time"]) == "global-10min"
        assert base_name(registry, "global", store.history(0, 2**40, ["DEN"])["time"]) == "global"


def test_a_fresh_registry_serves_the_shipped_models_of_both_cadences(kafka_broker, tmp_path):  # noqa: F811
    from pipeline.pretrained import shipped_artifact

    assert shipped_artifact("global-10min") is not None, "the 10-minute model ships in pipeline/pretrained_models"
    setup = make_setup(kafka_broker.bootstrap, tmp_path)
    with ServiceThread(setup) as service:
        assert service.lane_tags() == {3600: "global@v1", TEN_MIN: "global-10min@v1"}
        assert service.lane_cards()[TEN_MIN].cadence_s == TEN_MIN
        models = service.status()["service"]["models"]
        assert [(m["cadence"], m["model"], m["horizons"][0], m["horizons"][-1]) for m in models] == [
            ("10 min", "global-10min@v1", "+10 min", "+24 h"), ("1 h", "global@v1", "+1 h", "+24 h")]


def test_a_declared_cadence_routes_a_station_at_its_first_reading(kafka_broker, tmp_path, denver, jena10):  # noqa: F811
    """``station_cadences`` (declared, not detected): a station goes to its cadence's champion with its first reading;
    an undeclared one waits for detection; a declaration that names no served cadence leaves the station unserved."""
    setup = fast_cfg(make_setup(kafka_broker.bootstrap, tmp_path), station_cadences="JENA10=10min, DEN=3600,ODD=20min")
    first = pd.concat([denver.iloc[:1], jena10.iloc[:1].assign(station="JENA10"),
                       jena10.iloc[:1].assign(station="ODD"), jena10.iloc[:1].assign(station="UNDECLARED")])
    stats = publish(setup, first)
    with ServiceThread(setup) as service:
        wait_until(lambda: service.totals.consumed >= stats.sent, 120, "the first readings consumed")
        assert service.model_of("JENA10") == ("global-10min@v1", TEN_MIN)
        assert service.model_of("DEN") == ("global@v1", 3600)
        assert service.model_of("ODD") == (None, None) and service.model_of("UNDECLARED") == (None, None)
        unserved = {u["station"]: u for u in service.status()["service"]["unserved"]}
        assert set(unserved) == {"ODD"} and unserved["ODD"]["cadence_s"] == 1200
    # A restart rebuilds the declared stations into their lanes from one stored reading each (too few to detect).
    with ServiceThread(setup) as service:
        wait_until(lambda: service.model_of("JENA10") == ("global-10min@v1", TEN_MIN), 60, "JENA10 rebuilt")
        assert service.model_of("DEN") == ("global@v1", 3600) and service.model_of("UNDECLARED") == (None, None)


def test_declared_cadences_are_checked_in_one_line():
    from pipeline.cadence import parse_declared
    from pipeline.config import load_config
    from pipeline.validation import SettingError

    assert parse_declared("a=10min, b=3600,c=1h,") == {"a": 600, "b": 3600, "c": 3600}
    for bad in ("a", "a=fast", "=600", "a=0"):
        with pytest.raises(SettingError, match="STATIONCAST_STATION_CADENCES.*station=cadence"):
            load_config(env={"STATIONCAST_STATION_CADENCES": bad})
