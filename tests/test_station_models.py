"""Per-station models: a new station streamed from a real NOAA file is fine-tuned from a Jena-trained global
model once it has enough history, served by its own model from then on (other stations stay on the global one),
and its live error drops below the global model's on the same windows. Also: routing and fallback, who is
eligible for fine-tuning, and the drift checks that trigger early retraining or fine-tuning."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from forecaster.adapt import AdaptConfig
from forecaster.artifact import read_card
from forecaster.clean import clean_station
from forecaster.data import load_records
from forecaster.experiment import fit
from forecaster.predict import Predictor
from forecaster.registry import Registry, station_model_name
from forecaster.train import TrainConfig
from pipeline.challenger import Outcome
from pipeline.config import ServiceConfig
from pipeline.finetune import FinetuneSettings, eligible_stations, finetune_stations
from pipeline.metrics import Metrics
from pipeline.pretrained import ensure_champion, shipped_artifact
from pipeline.replay import records_for_replay
from pipeline.scheduler import LifecycleScheduler, ScheduleState, state_path
from pipeline.scoring import RollingSkill
from pipeline.serving import Served, ServingModels
from pipeline.shadow import shadow_errors
from pipeline.store import Store
from tests.broker_fixture import kafka_broker  # noqa: F401
from tests.pipeline_harness import (
    ROOT,
    FakeView,
    ServiceThread,
    expected_origins,
    make_setup,
    metric,
    month_of_records,
    publish,
    stored_forecasts,
    wait_until,
)

DAY = 86_400
START = pd.Timestamp("2014-01-01")


@pytest.fixture(scope="module")
def jena_global(jena_hourly):
    """A global model trained on Jena only (briefly), with the shipped model's data layout."""
    torch.set_num_threads(1)
    card = read_card(shipped_artifact("global"))
    jena = clean_station(load_records(jena_hourly))
    cfg = TrainConfig(optimizer="adam", lr=1e-3, epochs=2, steps_per_epoch=150, seed=0, progress=False)
    return fit([jena], card.data, card.model, cfg, label="jena global")


@pytest.fixture(scope="module")
def denver(noaa_denver) -> pd.DataFrame:
    rec = records_for_replay(noaa_denver)
    rec = rec[(rec["time"] >= START) & (rec["time"] < START + pd.Timedelta(days=58))]
    return rec.assign(station="DEN").reset_index(drop=True)


def _with_jena_champion(setup, trained):
    registry = Registry(setup.cfg.registry)
    info = registry.register("global", trained.model, trained.card, note="trained on Jena only")
    registry.promote("global", info.version, note="test")
    return replace(setup, card=trained.card), info


def test_new_noaa_station_is_fine_tuned_served_and_beats_the_global_model(
        jena_global, denver, kafka_broker, tmp_path):  # noqa: F811
    setup = make_setup(kafka_broker.bootstrap, tmp_path)
    setup, base = _with_jena_champion(setup, jena_global)
    setup = replace(setup, cfg=replace(
        setup.cfg, finetune_interval_s=2.0, finetune_min_history_days=43.0, finetune_history_days=60.0,
        finetune_holdout_days=7.0, finetune_margin=0.02, model_check_s=3600.0))
    jfk = month_of_records(days=20)
    jfk = jfk[jfk["station"] == "JFK"]  # 20 days: never eligible, stays on the global model
    split = START + pd.Timedelta(days=44)
    first = pd.concat([denver[denver["time"] < split], jfk]).sort_values("time", kind="stable")
    rest = denver[denver["time"] >= split]
    n_h = len(setup.card.data.horizons)
    with ServiceThread(setup) as service:
        sched = service.lifecycle.scheduler
        s1 = publish(setup, first)
        wait_until(lambda: service.totals.consumed >= s1.sent, 60, "44 days consumed")
        wait_until(lambda: any(o.outcome == "promoted" for o in sched.finetune_outcomes), 120,
                   "a promoted station model")
        sched.scheduler.pause()
        [out] = [o for o in sched.finetune_outcomes if o.outcome == "promoted"]
        assert out.stations == ["DEN"] and out.champion == base.tag
        assert out.challenger_mae < out.champion_mae * 0.98, out  # beat the global model on the holdout
        wait_until(lambda: "DEN" in service.models.stations, 20, "the station model hot-swapped in")
        before = service.totals.forecasts
        s2 = publish(setup, rest)
        wait_until(lambda: service.totals.consumed >= s1.sent + s2.sent, 60, "the rest consumed")
        wait_until(lambda: service.totals.forecasts >= before + 14 * 24 - 30, 30, "forecasts by the station model")
        assert metric(service, "stationcast_finetune_runs_total", {"outcome": "promoted"}) == 1
        assert metric(service, "stationcast_station_models") == 1
    registry = Registry(setup.cfg.registry)
    served = registry.station_champions()
    assert list(served) == ["DEN"] and served["DEN"].tag == out.challenger
    assert registry.card(served["DEN"].name, served["DEN"].version).parent == base.tag
    listing = subprocess.run([sys.executable, "-m", "pipeline.cli", "models", "serving", "--registry",
                              setup.cfg.registry], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert any(ln.split()[:2] == ["DEN", out.challenger] for ln in listing.stdout.splitlines()), listing.stdout
    assert any(ln.split()[:4] == ["every", "other", "station", base.tag] for ln in listing.stdout.splitlines())

    fc = stored_forecasts(setup.cfg.store_url)
    per_issue = fc.groupby(["station", "issue_ts"]).size()
    assert (per_issue == n_h).all(), "a forecast was made twice or is incomplete across the swap"
    assert set(fc[fc["station"] == "JFK"]["model_version"]) == {base.tag}
    den = fc[fc["station"] == "DEN"]
    own = den[den["model_version"] == out.challenger]
    assert len(own) > 0 and set(den["model_version"]) == {base.tag, out.challenger}
    assert (den[den["issue_ts"] > own["issue_ts"].min()]["model_version"] == out.challenger).all()
    expected = expected_origins(pd.concat([denver, jfk]), setup.card)
    assert set(map(tuple, expected.to_numpy().tolist())) == set(per_issue.index.tolist()), "a due window was missed"

    # Live: the station model's scored errors against the global model's on the very same windows and targets.
    with Store.open(setup.cfg.store_url) as store:
        errors = store.errors("DEN")
    before = errors[errors["model_version"] == base.tag]
    # The offline replay is faithful: on the global model's own live forecasts it reproduces their errors.
    np.testing.assert_allclose(shadow_errors(jena_global.model, jena_global.card, denver, before),
                               before["abs_error"].to_numpy(), atol=2e-3)
    errors = errors[errors["model_version"] == out.challenger]
    assert len(errors) > 200 * n_h // 24
    global_err = shadow_errors(jena_global.model, jena_global.card, denver, errors)
    own_mae, global_mae = errors["abs_error"].mean(), global_err.mean()
    assert own_mae < global_mae, (own_mae, global_mae)


def test_routing_serves_station_models_and_falls_back(tmp_path):
    setup_registry = Registry(tmp_path / "registry")
    info = ensure_champion(setup_registry, "global")
    model, card, info = setup_registry.load("global")
    tuned = type(model)(card.model)
    tuned.load_state_dict(model.state_dict())
    with torch.no_grad():
        tuned.head.bias.add_(1.5)  # a station model whose forecasts are higher than the fleet model's
    st_card = replace(card, stations=["A"], parent=info.tag)
    a = setup_registry.register(station_model_name("A"), tuned, st_card)
    setup_registry.promote(a.name, a.version)
    short = replace(st_card, stations=["B"], data=replace(card.data, lookback=96))  # another window layout
    b = setup_registry.register(station_model_name("B"), tuned, short)
    setup_registry.promote(b.name, b.version)
    c = setup_registry.register(station_model_name("C"), tuned, replace(st_card, stations=["C"]))
    setup_registry.promote(c.name, c.version)
    (setup_registry.path(c.name, c.version) / "model.safetensors").write_bytes(b"corrupt")

    models = ServingModels("cpu")
    models.set_fleet(Served(Predictor(model, card, "cpu"), info, card))
    changed = models.refresh(setup_registry)
    assert changed == ["A"] and list(models.stations) == ["A"], "B's layout differs and C is corrupt"
    rng = np.random.default_rng(0)
    values = (rng.normal(size=(4, card.data.lookback, len(card.data.features))) * 3 + 10).astype(np.float32)
    origin = np.full(4, 1_400_000_000, dtype=np.int64)
    stations = np.array(["X", "A", "B", "C"], dtype=object)
    out, tags = models.predict(stations, values, origin)
    assert tags.tolist() == [info.tag, a.tag, info.tag, info.tag]
    fleet = Predictor(model, card, "cpu").predict(values, origin).values
    own = Predictor(tuned, st_card, "cpu").predict(values, origin).values
    np.testing.assert_allclose(out[[0, 2, 3]], fleet[[0, 2, 3]], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], own[1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(out[1], fleet[1])
    setup_registry.retire(a.name, note="back to the global model")  # withdrawn: the station falls back
    assert models.refresh(setup_registry) == ["A"] and not models.stations
    assert models.predict(stations, values, origin)[1].tolist() == [info.tag] * 4


def test_eligible_stations_follow_history_and_previous_attempts(tmp_path):
    url = f"sqlite:///{tmp_path}/store.db"
    t0 = 1_400_000_000
    with Store.open(url) as store:
        for station, days in (("long", 31), ("short", 10), ("tried", 40), ("served", 40)):
            ts = t0 + np.arange(0, days * DAY + 1, 3600, dtype=np.int64)
            vals = np.full((len(ts), 4), 5.0)
            store.add_readings(np.full(len(ts), station, dtype=object), ts, vals, ["T", "Tdew", "rh", "wv"],
                               np.zeros(len(ts), dtype=np.int64), np.arange(len(ts)))
        registry = Registry(tmp_path / "registry")
        ensure_champion(registry, "global")
        model, card, _ = registry.load("global")
        seen = str(pd.Timestamp(t0 + 35 * DAY, unit="s"))
        for station, promote in (("tried", False), ("served", True)):
            tried = replace(card, stations=[station], metrics={"holdout_span": [seen, seen]})
            v = registry.register(station_model_name(station), model, tried)
            (registry.promote if promote else registry.reject)(v.name, v.version)
        # "tried" was rejected after seeing data up to day 35; it is retried once 7 more days are stored.
        assert eligible_stations(store, registry, 30, 7) == ["long"]
        assert eligible_stations(store, registry, 30, 4) == ["long", "tried"]
        assert eligible_stations(store, registry, 5, 7) == ["long", "short"]
    # A station without enough history before its holdout fails cleanly and leaves nothing serving.
    [out] = finetune_stations(FinetuneSettings(url, str(tmp_path / "registry"), stations=("short",),
                                               history_days=3, adapt=AdaptConfig(holdout_days=2),
                                               progress=False))
    assert out.outcome == "failed" and "too little history" in out.reason
    assert "short" not in registry.station_champions()


def _drift_service(tmp_path: Path, **cfg) -> SimpleNamespace:
    c = ServiceConfig(store_url=f"sqlite:///{tmp_path}/store.db", registry=str(tmp_path / "registry"), **cfg)
    return SimpleNamespace(cfg=c, metrics=Metrics(), view=FakeView(RollingSkill(), val_mae=2.0))


def _errors(station: str, model: float, persistence: float, n: int) -> pd.DataFrame:
    return pd.DataFrame({"station": station, "abs_error": np.full(n, model),
                         "persistence_abs_error": np.full(n, persistence)})


def test_drift_is_measured_against_the_better_baseline(tmp_path):
    """A model that beats persistence but loses to diurnal persistence (the value a day before the target) is
    drifting: a forecast must beat the better of the two."""
    service = _drift_service(tmp_path, drift_for_s=0.0, drift_min_errors=100, drift_station_min_errors=50,
                             drift_tolerance=10.0)
    sched = LifecycleScheduler(service.cfg, service.metrics, service.view, runner=lambda cmd, timeout: (0, "", ""))
    behind_diurnal = _errors("day", 1.5, 2.0, 200).assign(diurnal_abs_error=1.2)
    service.view.skill.update(behind_diurnal)
    assert sched.check_station_drift() == ["day"]
    sched.check_drift()
    assert service.metrics.registry.get_sample_value("stationcast_drift_detected") == 1
    # The same errors without the diurnal baseline: ahead of persistence, no drift.
    service = _drift_service(tmp_path, drift_for_s=0.0, drift_min_errors=100, drift_station_min_errors=50,
                             drift_tolerance=10.0)
    sched = LifecycleScheduler(service.cfg, service.metrics, service.view, runner=lambda cmd, timeout: (0, "", ""))
    service.view.skill.update(behind_diurnal.drop(columns="diurnal_abs_error"))
    assert sched.check_station_drift() == []
    sched.check_drift()
    assert service.metrics.registry.get_sample_value("stationcast_drift_detected") == 0


def test_drift_is_checked_in_every_cadences_lane(tmp_path):
    """The 10-minute stations have their own champion and rolling skill: their fleet and stations falling behind
    the better baseline is drift even while the hourly lane is fine."""
    c = ServiceConfig(store_url=f"sqlite:///{tmp_path}/store.db", registry=str(tmp_path / "registry"),
                      drift_for_s=0.0, drift_min_errors=100, drift_station_min_errors=50, drift_tolerance=10.0)
    hourly, ten = RollingSkill(), RollingSkill()
    hourly.update(_errors("DEN", 1.0, 2.0, 300).assign(diurnal_abs_error=1.8))
    ten.update(_errors("JENA10", 1.5, 2.0, 300).assign(diurnal_abs_error=1.2))
    metrics = Metrics()
    sched = LifecycleScheduler(c, metrics, FakeView(hourly, 2.0, {"global-10min": (ten, 2.0)}),
                               runner=lambda cmd, timeout: (0, "", ""))
    assert sched.check_station_drift() == ["JENA10"]
    sched.check_drift()
    assert metrics.registry.get_sample_value("stationcast_drift_detected") == 1
    reason = ScheduleState(state_path(c)).read()["drift"]["reason"]
    assert reason.startswith("global-10min: live MAE 1.500") and "global:" not in reason
    # Only the hourly lane: no drift.
    sched = LifecycleScheduler(c, Metrics(), FakeView(hourly, 2.0), runner=lambda cmd, timeout: (0, "", ""))
    assert sched.check_station_drift() == [] and sched.check_drift() is False
    assert sched.metrics.registry.get_sample_value("stationcast_drift_detected") == 0


def test_drift_triggers_early_retraining_and_station_fine_tuning(tmp_path):
    calls: list[list[str]] = []

    def runner(cmd, timeout):
        calls.append(cmd)
        outcome = Outcome("rejected", champion="global@v1", challenger="x@v2", champion_mae=1.0, challenger_mae=1.1,
                          stations=[s for i, s in enumerate(cmd) if i and cmd[i - 1] == "--station"])
        return 0, outcome.to_json() + "\n", ""

    service = _drift_service(tmp_path, retrain_interval_s=3600.0, finetune_interval_s=3600.0, drift_check_s=0.2,
                             drift_for_s=1.0, drift_tolerance=0.25, drift_min_errors=100,
                             drift_station_min_errors=50)
    sched = LifecycleScheduler(service.cfg, service.metrics, service.view, runner=runner)
    state_file = Path(f"{tmp_path}/store.db.schedule.json")
    now = datetime.now(UTC)  # both jobs ran just now: only drift can bring them forward
    sched.state.record("retrain", now)
    sched.state.record("finetune", now)
    sched.start()
    try:
        # Healthy fleet and stations: no trigger however long it lasts.
        service.view.skill.update(pd.concat([_errors("A", 1.0, 2.0, 200), _errors("B", 1.5, 2.0, 200)]))
        time.sleep(1.5)
        assert calls == [] and service.metrics.registry.get_sample_value("stationcast_drift_detected") == 0
        # Station B falls behind persistence (fleet still fine): after drift_for_s, B alone is fine-tuned.
        service.view.skill.station_model["B"] = 2.6
        wait_until(lambda: calls, 5, "an early fine-tuning")
        assert calls[0][2] == "pipeline.finetune" and calls[0][-2:] == ["--station", "B"], calls[0]
        assert sched.job("retrain").next_run_time > datetime.now(UTC) + timedelta(minutes=30)
        # The whole fleet drifts beyond the card's validation MAE: after drift_for_s, retraining runs now.
        service.view.skill.station_model["B"] = 1.5
        service.view.skill.fleet_model = 2.0 * 1.25 + 0.3
        service.view.skill.fleet_persistence = 9.0
        wait_until(lambda: any(c[2] == "pipeline.retrain" for c in calls), 5, "an early retraining")
        assert service.metrics.registry.get_sample_value("stationcast_drift_detected") == 1
        assert "station_drift" in state_file.read_text() and '"drift"' in state_file.read_text()
    finally:
        sched.stop()
    assert [c[2] for c in calls].count("pipeline.finetune") == 1
