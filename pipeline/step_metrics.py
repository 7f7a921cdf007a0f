"""What a step's result means for the Prometheus metrics: every metric of the data path is set here, once per
batch, after the batch is stored (the live line, the status page and dashboards then see a batch all at once)."""

from __future__ import annotations

import time

import numpy as np

from pipeline.cadence import HOURLY, cadence_label
from pipeline.lanes import CadenceRouter
from pipeline.metrics import Metrics
from pipeline.scoring import TRACKED
from pipeline.step import ForwardPass, Step, StepResult

GAUGE_HORIZONS = (1, 6, 12, 24)  # horizons exported per station as forecast gauges


def export_step(m: Metrics, out: StepResult, step: Step, batch: bool = True,
                lanes: CadenceRouter | None = None) -> None:
    """``batch``: a polled batch (False: a replay of stored readings, which counts no new messages). The consumed
    count moves last, so whoever waits for it (tests, the main job's end) sees every other count of the batch.
    ``lanes``: the other cadences' steps; their stations' scores go to their own lane's rolling skill, their fleet
    series are ``station="all@<cadence>"`` (``station="all"`` stays the hourly lane's) and their horizons are
    labelled ``<steps>@<cadence>`` (``6@10min``), so no series mixes cadences."""
    for outcome, n in out.ring.items():
        m.readings_outcome.labels(outcome=outcome).inc(n)
    m.windows_not_ready.inc(out.not_ready)
    m.readings_unserved.inc(out.unserved)
    m.forecasts_expired.inc(out.expired)
    for stage, seconds in out.stages.items():
        if seconds:
            m.stage_seconds.labels(stage=stage).observe(seconds)
    errors = out.errors
    if not errors.empty and lanes is not None and len(lanes.lanes) > 1:
        cadence = errors["station"].map(lanes.lane_of).to_numpy()
        for c, lane in lanes.lanes.items():
            part = errors[cadence == c]
            if not part.empty:
                _export_errors(m, part, lane, hourly=lane is step, suffix=_suffix(c))
    elif not errors.empty:
        _export_errors(m, errors, step)
    for p in out.passes:
        _export_pass(m, p, out.arrived)
    if batch:
        for d in out.dead:
            m.readings_rejected.labels(reason=d.reason).inc()
        m.readings_accepted.inc(out.accepted)
        m.batches.inc()
        m.last_batch.set(time.time())
        m.readings_consumed.inc(out.consumed)


def _suffix(cadence_s: int) -> str:
    return "" if cadence_s == HOURLY else f"@{cadence_label(cadence_s)}"


def _export_errors(m: Metrics, errors, step: Step, hourly: bool = True, suffix: str = "") -> None:
    """Rolling MAE of the model and both baselines, skill (vs persistence, and vs the better baseline), per station
    and over the lane's fleet (``station="all<suffix>"``); per horizon over the fleet, with band coverage and the
    fleet's band offsets."""
    m.errors_scored.inc(len(errors))
    fleet = f"all{suffix}"
    if hourly:  # the per-horizon error histograms are the hourly lane's (their horizon label is in hours)
        m.observe_errors(errors["horizon"].to_numpy(), errors["abs_error"].to_numpy(),
                         errors["persistence_abs_error"].to_numpy(), errors["diurnal_abs_error"].to_numpy())
    stations = errors["station"].unique()
    sk = step.skill
    for name in TRACKED:
        table = getattr(sk, f"station_{name}")
        have = [s for s in stations if s in table]
        m.set_station_gauges(have, m.rolling_mae, [table[s] for s in have], forecaster=name)
        m.rolling_mae.labels(station=fleet, forecaster=name).set(getattr(sk, f"fleet_{name}"))
    m.set_station_gauges(stations, m.skill, [sk.skill_vs_persistence(s) for s in stations])
    m.set_station_gauges(stations, m.skill_best, [sk.skill(s) for s in stations])
    hs = step.horizon_skill
    for h in hs.horizons():
        label = f"{h}{suffix}"
        for name in TRACKED:
            m.horizon_mae.labels(horizon=label, forecaster=name).set(hs.mae[name].get(h, np.nan))
        m.horizon_skill.labels(horizon=label).set(hs.skill(h))
        m.band_coverage.labels(horizon=label).set(hs.coverage.get(h, np.nan))
    for h, q in step.calibrator.summary().items():
        m.band_offset.labels(horizon=f"{h}{suffix}").set(q)
    m.skill.labels(station=fleet).set(sk.skill_vs_persistence())
    m.skill_best.labels(station=fleet).set(sk.skill())
    m.band_coverage.labels(horizon=fleet).set(hs.coverage_all)


def _export_pass(m: Metrics, p: ForwardPass, arrived: float) -> None:
    m.batch_latency.observe(p.seconds)
    m.batch_size.observe(len(p.stations))
    m.forecasts.inc(len(p.stations))
    m.last_forecast_time.set(p.done_at)
    m.reading_to_forecast.observe(p.done_at - arrived)
    fc = p.forecast
    horizons = np.asarray(fc.horizons)
    names = ["p50"] if not fc.quantiles else [f"p{round(q * 100)}" for q in fc.quantiles]
    suffix = _suffix(p.cadence_s)  # other cadences: the gauge horizons in hours, labelled in steps@cadence
    at = {h * HOURLY // p.cadence_s for h in GAUGE_HORIZONS} if suffix else set(GAUGE_HORIZONS)
    picks = [i for i, h in enumerate(horizons) if h in at] or [len(horizons) - 1]
    for i, station in enumerate(p.stations.tolist()):
        label = m.station_label(station)
        if label is None or label == "other":
            continue
        for j in picks:
            for q, name in enumerate(names):
                m.last_forecast.labels(station=label, horizon=f"{int(horizons[j])}{suffix}", quantile=name).set(
                    float(fc.values[i, j, q if fc.quantiles else 0]))
