"""Model lifecycle on a real broker, a real SQLite store and replayed real records: retraining with
champion/challenger, failures that leave the champion serving, scheduled retraining with hot swap, a schedule
that survives a restart, and rollbacks (by command and automatic)."""

from __future__ import annotations

import math
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from forecaster.registry import Registry
from forecaster.schema import SENSOR_RANGES
from pipeline.challenger import Outcome, beats
from pipeline.config import ServiceConfig
from pipeline.metrics import Metrics
from pipeline.retrain import RetrainSettings, retrain
from pipeline.scheduler import LifecycleScheduler, ScheduleState, state_path
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

FILL_DAYS = 40
FAST = {"epochs": 2, "history_days": 40.0, "holdout_days": 5.0, "progress": False}


@pytest.fixture(scope="module")
def filled(kafka_broker, tmp_path_factory):  # noqa: F811
    """A store filled by a real service run over 40 days of replayed NY airport readings, and its registry."""
    tmp = tmp_path_factory.mktemp("filled")
    setup = make_setup(kafka_broker.bootstrap, tmp)
    records = month_of_records(days=FILL_DAYS + 6)
    records = records.sort_values(["time", "station"], kind="stable").reset_index(drop=True)
    first = records[records["time"] < records["time"].min() + np.timedelta64(FILL_DAYS, "D")]
    stats = publish(setup, first)
    with ServiceThread(setup) as service:
        wait_until(lambda: service.totals.consumed >= stats.sent, 120, "40 days consumed")
    return SimpleNamespace(setup=setup, records=records, rest=records.iloc[len(first):], tmp=tmp)


def _copy_into(filled, bootstrap: str, tmp: Path, **cfg_changes):
    """A fresh setup (own topics and group) over a copy of the filled store and registry."""
    setup = make_setup(bootstrap, tmp)
    src = sqlite3.connect(filled.setup.cfg.store_url.removeprefix("sqlite:///"))
    dst = sqlite3.connect(setup.cfg.store_url.removeprefix("sqlite:///"))
    src.backup(dst)
    src.close()
    dst.close()
    shutil.rmtree(setup.cfg.registry)
    shutil.copytree(filled.setup.cfg.registry, setup.cfg.registry)
    return replace(setup, cfg=replace(setup.cfg, **cfg_changes))


def _settings(setup, **changes) -> RetrainSettings:
    return RetrainSettings(store_url=setup.cfg.store_url, registry=setup.cfg.registry, **{**FAST, **changes})


def test_retrain_end_to_end_decision_follows_holdout_maes(filled, kafka_broker, tmp_path):  # noqa: F811
    setup = _copy_into(filled, kafka_broker.bootstrap, tmp_path)
    registry = Registry(setup.cfg.registry)
    before = registry.champion("global")
    out = retrain(_settings(setup, margin=0.02))
    assert out.outcome in ("promoted", "rejected"), out
    assert out.champion == before.tag and out.challenger is not None
    assert math.isfinite(out.challenger_mae) and math.isfinite(out.champion_mae) and out.holdout_samples > 100
    assert sorted(out.stations) == ["EWR", "JFK", "LGA"]
    assert out.train_span[1] < out.holdout_span[0], "no training row may lie in the holdout"
    promoted = beats(out.challenger_mae, out.champion_mae, 0.02)
    assert (out.outcome == "promoted") == promoted
    version = int(out.challenger.rpartition("@v")[2])
    info = registry.info("global", version)
    assert info.metrics["holdout_mae"] == pytest.approx(out.challenger_mae)
    assert info.metrics["champion_holdout_mae"] == pytest.approx(out.champion_mae)
    champion = registry.champion("global")
    if promoted:
        assert champion.version == version and info.status == "champion"
        assert registry.card("global", version).parent == before.tag
    else:
        assert champion.version == before.version and info.status == "rejected"
    # The same thing as a process: one JSON line on stdout.
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.retrain", "--store-url", setup.cfg.store_url, "--registry",
         setup.cfg.registry, "--history-days", "40", "--holdout-days", "5", "--epochs", "1", "--margin", "0.02",
         "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = Outcome.from_json(proc.stdout.strip().splitlines()[-1])
    assert line.outcome in ("promoted", "rejected") and proc.returncode == 0, proc.stderr[-2000:]
    assert (line.outcome == "promoted") == beats(line.challenger_mae, line.champion_mae, 0.02)
    assert "outcome" in proc.stderr  # logged too


def test_worse_challenger_is_rejected_and_champion_unchanged(filled, kafka_broker, tmp_path, monkeypatch):  # noqa: F811
    setup = _copy_into(filled, kafka_broker.bootstrap, tmp_path)
    registry = Registry(setup.cfg.registry)
    before = registry.champion("global")
    # Random weights, never trained (0 epochs), and scaled up: with the residual head, plain random weights are
    # about persistence, which can beat the shipped champion on these airports; scaled ones cannot.
    import forecaster.experiment as experiment

    real_build = experiment.build_model

    def scrambled(cfg):
        model = real_build(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(4.0)
        return model

    monkeypatch.setattr(experiment, "build_model", scrambled)
    out = retrain(_settings(setup, from_scratch=True, epochs=0, margin=0.0))
    assert out.outcome == "rejected", out
    assert out.challenger_mae > out.champion_mae
    assert registry.champion("global") == before
    info = registry.info("global", int(out.challenger.rpartition("@v")[2]))
    assert info.status == "rejected"
    assert f"{out.challenger_mae:.4f}" in info.note and f"{out.champion_mae:.4f}" in info.note
    assert [e["action"] for e in registry.events("global")][-2:] == ["register", "reject"]


def test_failed_runs_leave_the_champion_serving(filled, kafka_broker, tmp_path, monkeypatch):  # noqa: F811
    setup = _copy_into(filled, kafka_broker.bootstrap, tmp_path, model_check_s=0.2)
    registry = Registry(setup.cfg.registry)
    before = registry.champion("global")
    import pipeline.retrain as rt

    with ServiceThread(setup) as service:
        # 1. NaN during training (what forecaster.train raises on a non-finite loss).
        def nan_fit(*a, **k):
            raise FloatingPointError("challenger: training loss became nan at epoch 1")

        with monkeypatch.context() as m:
            m.setattr(rt, "fit", nan_fit)
            out = retrain(_settings(setup, margin=-10.0))  # would be promoted whatever its MAE
        assert out.outcome == "failed" and "FloatingPointError" in out.reason and out.challenger is None
        # 2. An artifact that does not load back (weights corrupted after writing).
        real_register = Registry.register

        def corrupting_register(self, name, model, card, note=""):
            info = real_register(self, name, model, card, note)
            weights = self.path(name, info.version) / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:-64] + b"\0" * 64)
            return info

        with monkeypatch.context() as m:
            m.setattr(Registry, "register", corrupting_register)
            out2 = retrain(_settings(setup, margin=-10.0, epochs=1))
        assert out2.outcome == "failed" and "checksum" in out2.reason, out2
        assert registry.info("global", int(out2.challenger.rpartition("@v")[2])).status == "rejected"
        assert registry.champion("global") == before
        # The running service still forecasts, with the old model.
        n0 = service.totals.forecasts
        stats = publish(setup, filled.rest.iloc[:300])
        wait_until(lambda: service.totals.consumed >= stats.sent and service.totals.forecasts > n0 + 50, 60,
                   "forecasts after the failed runs")
        assert service.model_info.tag == before.tag
        assert metric(service, "stationcast_model_swaps_total") == 0
    fc = stored_forecasts(setup.cfg.store_url)
    assert set(fc["model_version"]) == {before.tag}


def test_scheduled_retraining_promotes_and_hot_swaps(filled, kafka_broker, tmp_path):  # noqa: F811
    # promote_margin -10: any finite challenger is promoted, so the swap path is exercised deterministically.
    setup = _copy_into(filled, kafka_broker.bootstrap, tmp_path, retrain_interval_s=3.0, retrain_history_days=40.0,
                       retrain_holdout_days=5.0, retrain_epochs=1, promote_margin=-10.0, model_check_s=3600.0)
    registry = Registry(setup.cfg.registry)
    before = registry.champion("global")
    n_h = len(setup.card.data.horizons)
    half = len(filled.rest) // 2
    with ServiceThread(setup) as service:
        sched = service.lifecycle.scheduler
        assert sched is not None and sched.job("retrain").max_instances == 1 and sched.job("retrain").coalesce
        s1 = publish(setup, filled.rest.iloc[:half])
        wait_until(lambda: service.totals.consumed >= s1.sent, 60, "first part consumed")
        wait_until(lambda: sched.outcomes, 90, "a scheduled retraining")
        first = sched.outcomes[0]
        assert first.outcome == "promoted", first
        wait_until(lambda: service.model_info.tag == first.challenger, 20, "the hot swap")
        sched.scheduler.pause()  # no further retraining while the rest is checked
        swapped_at = service.totals.forecasts
        s2 = publish(setup, filled.rest.iloc[half:])
        wait_until(lambda: service.totals.consumed >= s1.sent + s2.sent, 60, "second part consumed")
        wait_until(lambda: service.totals.forecasts > swapped_at + 100, 30, "forecasts by the new model")
        assert metric(service, "stationcast_model_swaps_total") >= 1
        assert metric(service, "stationcast_retrain_runs_total", {"outcome": "promoted"}) >= 1
        assert metric(service, "stationcast_retrain_last_success_timestamp_seconds") > 0
        assert metric(service, "stationcast_retrain_seconds_count") >= 1
        assert metric(service, "stationcast_retrain_holdout_mae_celsius", {"model": "challenger"}) == \
            pytest.approx(first.challenger_mae)
    assert registry.champion("global").tag != before.tag
    fc = stored_forecasts(setup.cfg.store_url)
    per_issue = fc.groupby(["station", "issue_ts"]).size()
    assert (per_issue == n_h).all(), "a forecast was made twice or is incomplete across the swap"
    tags = fc.groupby(["station", "issue_ts"])["model_version"].agg(set)
    assert all(len(t) == 1 for t in tags), "one forecast mixes two models"
    for station, f in fc.groupby("station"):  # per station: once the new model serves, the old one never again
        new = f[f["model_version"] != before.tag]
        assert len(new) > 0, station
        assert (f[f["issue_ts"] > new["issue_ts"].min()]["model_version"] != before.tag).all(), station
    # Every due window has exactly one forecast (none dropped), computed the batch way.
    valid = filled.records  # readings with an impossible value are dead-lettered by the service, so never issue
    for sensor, (lo, hi) in SENSOR_RANGES.items():
        if sensor in valid:
            valid = valid[~((valid[sensor] < lo) | (valid[sensor] > hi))]
    expected = expected_origins(valid, setup.card)
    assert set(map(tuple, expected.to_numpy().tolist())) == set(per_issue.index.tolist())


def _fake_service(tmp_path: Path, **cfg) -> SimpleNamespace:
    c = ServiceConfig(store_url=f"sqlite:///{tmp_path}/store.db", registry=str(tmp_path / "registry"), **cfg)
    skill = SimpleNamespace(fleet_model=float("nan"), fleet_persistence=float("nan"), count=0)
    return SimpleNamespace(cfg=c, metrics=Metrics(), view=FakeView(skill, val_mae=1.0))


def _scheduler(fake: SimpleNamespace, runner) -> LifecycleScheduler:
    return LifecycleScheduler(fake.cfg, fake.metrics, fake.view, runner=runner)


def test_restart_mid_interval_does_not_run_the_job_twice(tmp_path):
    runs: list[float] = []

    def runner(cmd, timeout):
        runs.append(time.time())
        return 0, Outcome("rejected", champion="global@v1", challenger="global@v2", champion_mae=1.0,
                          challenger_mae=1.1).to_json() + "\n", ""

    service = _fake_service(tmp_path, retrain_interval_s=4.0)
    a = LifecycleScheduler(service.cfg, service.metrics, service.view, runner=runner)
    a.start()
    try:
        wait_until(lambda: len(runs) == 1, 10, "the first scheduled run")
        wait_until(lambda: (ScheduleState(state_path(service.cfg)).read().get("retrain") or {}).get("status")
                   == "rejected", 5, "the run recorded")
    finally:
        a.stop()
    last = ScheduleState(state_path(service.cfg)).last_run("retrain")
    assert last is not None and abs(last.timestamp() - runs[0]) < 1.0
    # Restart in the middle of the interval: the next run is last + interval, not now.
    b = _scheduler(_fake_service(tmp_path, retrain_interval_s=4.0), runner)
    b.start()
    try:
        nxt = b.job("retrain").next_run_time
        assert nxt.timestamp() == pytest.approx((last + timedelta(seconds=4)).timestamp(), abs=0.01)
        time.sleep(max(0.0, nxt.timestamp() - time.time() - 0.5))
        assert len(runs) == 1, "the job ran again right after the restart"
        wait_until(lambda: len(runs) == 2, 5, "the next run on schedule")
        assert runs[1] - runs[0] == pytest.approx(4.0, abs=0.8)
    finally:
        b.stop()
    # Down for longer than several intervals: the missed runs coalesce into one run now.
    old = datetime.now(UTC) - timedelta(seconds=60)
    ScheduleState(state_path(service.cfg)).record("retrain", old)
    c = _scheduler(_fake_service(tmp_path, retrain_interval_s=4.0), runner)
    c.start()
    try:
        wait_until(lambda: len(runs) == 3, 5, "one catch-up run")
        time.sleep(1.5)
        assert len(runs) == 3
    finally:
        c.stop()
    assert service.metrics.registry.get_sample_value("stationcast_retrain_runs_total", {"outcome": "rejected"}) == 1


def test_models_rollback_command_switches_a_running_service_back(filled, kafka_broker, tmp_path):  # noqa: F811
    setup = _copy_into(filled, kafka_broker.bootstrap, tmp_path, model_check_s=0.3)
    registry = Registry(setup.cfg.registry)
    v1 = registry.champion("global")
    model, card, _ = registry.load("global")
    with ServiceThread(setup) as service:
        v2 = registry.register("global", model, card, note="a second version")
        registry.promote("global", v2.version, note="test")
        wait_until(lambda: service.model_info.tag == v2.tag, 20, "the swap to v2")
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "models", "rollback", "--registry",
                               setup.cfg.registry], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and v1.tag in proc.stdout, proc.stderr
        wait_until(lambda: service.model_info.tag == v1.tag, 20, "the switch back to v1")
        wait_until(lambda: metric(service, "stationcast_rollbacks_total") == 1, 5, "the rollback counted")
        n0 = service.totals.forecasts
        stats = publish(setup, filled.rest.iloc[:150])
        wait_until(lambda: service.totals.consumed >= stats.sent and service.totals.forecasts > n0, 60,
                   "forecasts after the rollback")
    fc = stored_forecasts(setup.cfg.store_url)
    assert set(fc["model_version"]) == {v1.tag}
    assert registry.info("global", v2.version).status == "rejected"


def test_auto_rollback_when_promoted_model_is_worse_live(filled, kafka_broker, tmp_path):  # noqa: F811
    setup = _copy_into(filled, kafka_broker.bootstrap, tmp_path, model_check_s=0.3, rollback_min_errors=200,
                       rollback_margin=0.2)
    registry = Registry(setup.cfg.registry)
    v1 = registry.champion("global")
    model, card, _ = registry.load("global")
    with torch.no_grad():  # a deliberately broken copy of the champion: its head's weights scaled up (EWR: 2.5x MAE)
        model.head.weight.mul_(4.0)
        model.head.bias.mul_(4.0)
    bad_version = registry.register("global", model, card, note="deliberately worse").version
    third = len(filled.rest) // 3
    with ServiceThread(setup) as service:
        s1 = publish(setup, filled.rest.iloc[:third])
        wait_until(lambda: service.totals.consumed >= s1.sent and service.skill.count > 200, 60, "live errors")
        registry.promote("global", bad_version, note="a bad promotion")
        wait_until(lambda: service.model_info.version == bad_version, 20, "the swap to the bad model")
        s2 = publish(setup, filled.rest.iloc[third:])
        wait_until(lambda: service.model_info.tag == v1.tag, 60, "the automatic rollback")
        assert metric(service, "stationcast_rollbacks_total") == 1
        decisions = [d["decision"] for d in service.lifecycle.decisions]
        assert "probation" in decisions and "rolled_back" in decisions
        wait_until(lambda: service.totals.consumed >= s1.sent + s2.sent, 60, "all consumed")
    assert registry.champion("global").tag == v1.tag
    assert "auto rollback" in registry.events("global")[-1]["note"]
