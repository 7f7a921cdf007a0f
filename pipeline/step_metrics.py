"""What a step's result means for the Prometheus metrics: every metric of the data path is set here, once per
batch, after the batch is stored (the live line, the status page and dashboards then see a batch all at once)."""

from __future__ import annotations

import time

import numpy as np

from pipeline.metrics import Metrics
from pipeline.scoring import RollingSkill
from pipeline.step import ForwardPass, StepResult

GAUGE_HORIZONS = (1, 6, 12, 24)  # horizons exported per station as forecast gauges


def export_step(m: Metrics, out: StepResult, skill: RollingSkill, batch: bool = True) -> None:
    """``batch``: a polled batch (False: a replay of stored readings, which counts no new messages). The consumed
    count moves last, so whoever waits for it (tests, the main job's end) sees every other count of the batch."""
    for outcome, n in out.ring.items():
        m.readings_outcome.labels(outcome=outcome).inc(n)
    m.windows_not_ready.inc(out.not_ready)
    m.forecasts_expired.inc(out.expired)
    for stage, seconds in out.stages.items():
        if seconds:
            m.stage_seconds.labels(stage=stage).observe(seconds)
    errors = out.errors
    if not errors.empty:
        _export_errors(m, errors, skill)
    for p in out.passes:
        _export_pass(m, p, out.arrived)
    if batch:
        for d in out.dead:
            m.readings_rejected.labels(reason=d.reason).inc()
        m.readings_accepted.inc(out.accepted)
        m.batches.inc()
        m.last_batch.set(time.time())
        m.readings_consumed.inc(out.consumed)


def _export_errors(m: Metrics, errors, skill: RollingSkill) -> None:
    m.errors_scored.inc(len(errors))
    m.observe_errors(errors["horizon"].to_numpy(), errors["abs_error"].to_numpy(),
                     errors["persistence_abs_error"].to_numpy())
    stations = errors["station"].unique()
    m.set_station_gauges(stations, m.rolling_mae, [skill.station_model[s] for s in stations], forecaster="model")
    m.set_station_gauges(stations, m.rolling_mae, [skill.station_persistence[s] for s in stations],
                         forecaster="persistence")
    m.set_station_gauges(stations, m.skill, [skill.skill(s) for s in stations])
    m.rolling_mae.labels(station="all", forecaster="model").set(skill.fleet_model)
    m.rolling_mae.labels(station="all", forecaster="persistence").set(skill.fleet_persistence)
    m.skill.labels(station="all").set(skill.skill())


def _export_pass(m: Metrics, p: ForwardPass, arrived: float) -> None:
    m.batch_latency.observe(p.seconds)
    m.batch_size.observe(len(p.stations))
    m.forecasts.inc(len(p.stations))
    m.last_forecast_time.set(p.done_at)
    m.reading_to_forecast.observe(p.done_at - arrived)
    fc = p.forecast
    horizons = np.asarray(fc.horizons)
    names = ["p50"] if not fc.quantiles else [f"p{round(q * 100)}" for q in fc.quantiles]
    picks = [i for i, h in enumerate(horizons) if h in GAUGE_HORIZONS] or [len(horizons) - 1]
    for i, station in enumerate(p.stations.tolist()):
        label = m.station_label(station)
        if label is None or label == "other":
            continue
        for j in picks:
            for q, name in enumerate(names):
                m.last_forecast.labels(station=label, horizon=str(int(horizons[j])), quantile=name).set(
                    float(fc.values[i, j, q if fc.quantiles else 0]))
