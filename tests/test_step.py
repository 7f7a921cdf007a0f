"""The streaming step alone: no broker, no database. Real readings (the 2013 New York airports) as the messages a
poll would bring, through the shipped model, as the service runs it."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest
import torch

from forecaster.predict import Predictor
from forecaster.registry import Registry
from pipeline.config import ServiceConfig
from pipeline.pretrained import ensure_champion
from pipeline.readings import SENSORS
from pipeline.serving import Served, ServingModels
from pipeline.step import STAGES, Step, StepConfig
from tests.pipeline_harness import expected_origins, month_of_records

DAYS = 9  # the shipped model's lookback is 7 days: two days of forecasts, scored


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As the service runs inference (torch_threads = 1): small forward passes gain nothing from more threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    registry = Registry(str(tmp_path_factory.mktemp("registry")))
    info = ensure_champion(registry, "global")
    model, card, info = registry.load(info.name, info.version)
    return Served(Predictor(model, card, "cpu"), info, card)


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return month_of_records(DAYS)


def new_step(served: Served) -> Step:
    models = ServingModels("cpu")
    models.set_fleet(served)
    return Step(models, StepConfig.of(ServiceConfig()))


def messages(records: pd.DataFrame) -> tuple[list[bytes], list[bytes], np.ndarray, np.ndarray]:
    """The records as the service receives them: JSON values keyed by station, with partitions and offsets."""
    sensors = [c for c in records.columns if c not in ("station", "time")]
    stamps = np.char.add(np.datetime_as_string(records["time"].to_numpy().astype("datetime64[s]"), unit="s"), "Z")
    values = [orjson.dumps({"station": s, "time": t, "values": {k: v for k, v in zip(sensors, row, strict=True)
                                                                if v == v}})
              for s, t, row in zip(records["station"], stamps.tolist(), records[sensors].to_numpy().tolist(),
                                   strict=True)]
    keys = [s.encode() for s in records["station"]]
    return values, keys, np.zeros(len(values), dtype=np.int64), np.arange(len(values))


def run(step: Step, records: pd.DataFrame, batches: int = 1) -> list:
    raw, keys, parts, offsets = messages(records)
    bounds = np.linspace(0, len(raw), batches + 1).astype(int)
    now = np.datetime64(records["time"].max() + pd.Timedelta(hours=1))
    return [step(raw[a:b], keys[a:b], parts[a:b], offsets[a:b], now=now) for a, b in zip(bounds, bounds[1:],
                                                                                        strict=False)]


def test_a_backlog_forecasts_every_due_window_once_and_scores_what_arrived(served, records):
    step = new_step(served)
    [out] = run(step, records)
    card = served.card
    assert out.consumed == len(records) and not out.dead and out.accepted == len(records)
    issued = pd.DataFrame([(m["station"], m["issue_ts"]) for m in out.messages], columns=["station", "issue_ts"])
    expected = expected_origins(records, card)
    assert not issued.duplicated().any()
    assert set(map(tuple, issued.to_numpy().tolist())) == set(map(tuple, expected.to_numpy().tolist()))
    forecasts = out.forecasts
    assert len(forecasts) == len(issued) * len(card.model.horizons)
    # Every forecast whose target time got a reading is scored, with the model's and persistence's error.
    errors = out.errors
    times = records.assign(ts=records["time"].astype("datetime64[s]").astype(np.int64))
    actual = times.set_index(["station", "ts"])["T"].dropna()
    due = forecasts.set_index(["station", "target_ts"]).index.isin(actual.index)
    assert len(errors) == int(due.sum()) > 0
    joined = errors.merge(forecasts, on=["station", "issue_ts", "horizon"])
    truth = actual.loc[list(zip(joined["station"], joined["target_ts_x"], strict=True))].to_numpy()
    np.testing.assert_allclose(joined["abs_error"], np.abs(joined["value"] - truth), atol=1e-9)
    np.testing.assert_allclose(joined["persistence_abs_error"], np.abs(joined["persistence"] - truth), atol=1e-9)
    # Diurnal persistence (the value 24 h before the target) beside persistence, on the same windows.
    prior = actual.reindex(pd.MultiIndex.from_arrays([forecasts["station"], forecasts["target_ts"] - 86_400]))
    have = forecasts["diurnal"].notna().to_numpy() & prior.notna().to_numpy()
    assert have.sum() > len(forecasts) // 2
    np.testing.assert_allclose(forecasts["diurnal"].to_numpy()[have], prior.to_numpy()[have], atol=1e-4)
    scored = joined["diurnal_abs_error"].notna().to_numpy()
    np.testing.assert_allclose(joined["diurnal_abs_error"].to_numpy()[scored],
                               np.abs(joined["diurnal"].to_numpy() - truth)[scored], atol=1e-9)
    assert step.skill.count == len(errors) and np.isfinite(step.skill.fleet_model)
    assert set(step.horizon_skill.horizons()) == set(card.model.horizons)
    assert set(out.stages) == set(STAGES) and all(v >= 0 for v in out.stages.values())
    assert out.stages["forecast"] >= sum(p.seconds for p in out.passes) > 0


def test_one_batch_or_hour_by_hour_gives_the_same_forecasts_and_errors(served, records):
    """Live traffic (a poll per hour) and a backlog (one poll) reach the same forecasts and scores."""
    one = run(new_step(served), records)[0]
    hours = records["time"].nunique()
    many = run(new_step(served), records, batches=hours)
    assert max(len(o.messages) for o in many) <= records["station"].nunique()
    key = ["station", "issue_ts", "horizon"]
    a = one.forecasts.sort_values(key, ignore_index=True)
    b = pd.concat([o.forecasts for o in many]).sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(a[key], b[key])
    np.testing.assert_allclose(a["value"], b["value"], atol=1e-4)
    ea = one.errors.sort_values(key, ignore_index=True)
    eb = pd.concat([o.errors for o in many]).sort_values(key, ignore_index=True)
    assert len(ea) == len(eb) > 0
    np.testing.assert_allclose(ea["abs_error"], eb["abs_error"], atol=1e-4)
    # The backlog's first week goes into the ring at once (no window can be ready yet): the same counts as one
    # hour at a time.
    assert one.not_ready == sum(o.not_ready for o in many) > 0
    assert one.ring == {k: sum(o.ring[k] for o in many) for k in one.ring}
    assert len(one.actuals) == sum(len(o.actuals) for o in many) == one.ring["accepted"]


def test_bad_messages_are_dead_letters_and_redelivery_issues_nothing_twice(served, records):
    step = new_step(served)
    first = run(step, records)[0]
    raw, keys, parts, offsets = messages(records)
    junk = [b"not json", orjson.dumps({"station": "X", "time": "yesterday", "values": {"T": 1.0}})]
    again = step(raw + junk, keys + [b"X", b"X"], np.r_[parts, 0, 0], np.r_[offsets, 10**6, 10**6 + 1],
                 now=np.datetime64(records["time"].max() + pd.Timedelta(hours=1)))
    assert [d.reason for d in again.dead] and all(d.reason for d in again.dead) and len(again.dead) == 2
    assert again.consumed == len(raw) + 2 and again.accepted == len(raw)
    # The store keeps a redelivered batch once (its keys); the step sees duplicates (or readings too late for the
    # ring) and issues nothing.
    assert again.ring["duplicate"] + again.ring["late"] == len(records) and again.ring["duplicate"] > 0
    assert again.ring["accepted"] == 0
    assert not again.messages and again.errors.empty and first.messages


def test_replay_of_stored_readings_continues_where_the_stream_stopped(served, records):
    """A restart replays stored readings that were never forecast: the same forecasts as if they had streamed."""
    cut = records["time"].min() + pd.Timedelta(days=DAYS - 1)
    live = run(new_step(served), records)[0]
    step = new_step(served)
    head = run(step, records[records["time"] < cut])[0]
    tail = records[records["time"] >= cut]
    values = tail.reindex(columns=list(SENSORS)).to_numpy(dtype=np.float64)
    replayed = step.replay(tail["station"].to_numpy(dtype=object),
                           tail["time"].to_numpy().astype("datetime64[s]").astype(np.int64), values)
    assert replayed.readings is None and replayed.consumed == 0
    got = pd.concat([head.forecasts, replayed.forecasts]).sort_values(["station", "issue_ts", "horizon"])
    want = live.forecasts.sort_values(["station", "issue_ts", "horizon"])
    np.testing.assert_array_equal(got["issue_ts"].to_numpy(), want["issue_ts"].to_numpy())
    np.testing.assert_allclose(got["value"].to_numpy(), want["value"].to_numpy(), atol=1e-4)

