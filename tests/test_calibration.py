"""Online conformal calibration of the band (pipeline/calibration.py): pure logic on known distributions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from pipeline.calibration import (
    BandCalibrator,
    CalibrationConfig,
    band_hits,
    conformal_quantile,
    conformity_scores,
)

HORIZONS = (1, 6, 24)


def _stream(calibrator: BandCalibrator, stations: np.ndarray, lo_raw: np.ndarray, hi_raw: np.ndarray,
            actual: np.ndarray) -> np.ndarray:
    """Issue, then score, one forecast per station and step, as the service does; returns hits [T, N, H]."""
    hits = []
    for t in range(actual.shape[0]):
        lo, hi, q = calibrator.adjust(stations, lo_raw[t], hi_raw[t])
        hits.append(band_hits(lo, hi, actual[t]))
        raw = conformity_scores(lo, hi, actual[t]) + q  # what the scoreboard stores as band_score
        calibrator.update(np.repeat(stations, len(HORIZONS)), np.tile(HORIZONS, len(stations)), raw.reshape(-1))
    return np.asarray(hits)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_coverage_converges_to_nominal_from_a_band_too_narrow_or_too_wide(scale):
    """Actuals ~ N(0, 1) per station; the model's band is the N(0, scale) P10-P90, i.e. far too narrow (0.5) or
    too wide (2.0): raw coverage 42 % or 99 %. After calibration the band covers 80 % within 3 points."""
    rng = np.random.default_rng(0)
    steps, stations = 1500, np.array([f"S{i}" for i in range(4)], dtype=object)
    z = 1.2815515655446004 * scale
    lo_raw = np.full((steps, len(stations), len(HORIZONS)), -z)
    hi_raw = -lo_raw
    actual = rng.normal(size=lo_raw.shape)
    raw_cov = band_hits(lo_raw, hi_raw, actual).mean()
    assert abs(raw_cov - 0.8) > 0.15  # the case really needs calibration
    cal = BandCalibrator(HORIZONS, CalibrationConfig(window=200, min_scores=50))
    hits = _stream(cal, stations, lo_raw, hi_raw, actual)
    settled = hits[300:]
    assert abs(settled.mean() - 0.8) < 0.03
    per_horizon = settled.mean(axis=(0, 1))
    assert np.all(np.abs(per_horizon - 0.8) < 0.03), per_horizon


def test_station_uses_its_own_scores_once_it_has_enough_and_the_fleet_before():
    """A noisy station beside calm ones: it borrows the fleet's offset first, then widens on its own scores."""
    cal = BandCalibrator(HORIZONS, CalibrationConfig(window=100, min_scores=40, fleet_min_scores=40))
    calm = np.array(["calm"], dtype=object)
    rng = np.random.default_rng(1)
    for _ in range(100):
        cal.update(np.repeat(calm, 3), np.array(HORIZONS), rng.normal(-0.5, 0.1, 3))
    fleet = cal.offsets(np.array(["new"], dtype=object))[0]
    assert np.allclose(fleet, cal.offsets(calm)[0])  # fleet == the only station so far
    assert np.all(fleet < 0)  # a band too wide is narrowed
    for _ in range(39):
        cal.update(np.array(["noisy"] * 3, dtype=object), np.array(HORIZONS), rng.normal(3.0, 0.1, 3))
    borrowed = cal.offsets(np.array(["noisy"], dtype=object))[0]
    assert np.allclose(borrowed, cal.offsets(np.array(["new"], dtype=object))[0])  # still the fleet's
    assert np.allclose(borrowed, list(cal.summary().values()))
    cal.update(np.array(["noisy"] * 3, dtype=object), np.array(HORIZONS), rng.normal(3.0, 0.1, 3))
    own = cal.offsets(np.array(["noisy"], dtype=object))[0]
    assert np.all(own > 2.5)
    assert cal.stations_calibrated == 2


def test_before_any_score_the_model_band_is_published_as_is_and_never_inverted():
    cal = BandCalibrator(HORIZONS)
    lo, hi = np.array([[1.0, 2.0, 3.0]]), np.array([[2.0, 4.0, 6.0]])
    new_lo, new_hi, q = cal.adjust(np.array(["A"], dtype=object), lo, hi)
    assert np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi) and not q.any()
    for _ in range(60):  # every actual exactly at the band's centre: scores far negative
        cal.update(np.array(["A"] * 3, dtype=object), np.array(HORIZONS), -(hi - lo)[0])
    new_lo, new_hi, _ = cal.adjust(np.array(["A"], dtype=object), lo, hi)
    assert np.all(new_lo <= new_hi)


def test_disabled_calibration_keeps_the_model_band():
    cal = BandCalibrator(HORIZONS, CalibrationConfig(window=0))
    cal.update(np.array(["A"] * 3, dtype=object), np.array(HORIZONS), np.array([5.0, 5.0, 5.0]))
    lo, hi, q = cal.adjust(np.array(["A"], dtype=object), np.zeros((1, 3)), np.ones((1, 3)))
    assert not q.any() and np.array_equal(hi, np.ones((1, 3)))


def test_ring_keeps_only_the_newest_scores_even_from_one_long_batch():
    cal = BandCalibrator((1,), CalibrationConfig(window=10, min_scores=10, fleet_min_scores=10))
    scores = np.r_[np.full(50, 100.0), np.arange(10.0)]  # old outliers, then 0..9
    cal.update(np.array(["A"] * 60, dtype=object), np.ones(60, dtype=np.int64), scores)
    assert cal.offsets(np.array(["A"], dtype=object))[0, 0] == conformal_quantile(np.arange(10.0), 0.8)


def test_conformal_quantile_is_the_finite_sample_rank_and_ignores_nan():
    s = np.arange(1.0, 11.0)  # 10 scores: ceil(11 * 0.8) = 9th smallest
    assert conformal_quantile(s, 0.8) == 9.0
    assert conformal_quantile(np.r_[s, np.nan, np.nan], 0.8) == 9.0
    assert np.isnan(conformal_quantile(np.full(3, np.nan), 0.8))
    assert conformal_quantile(np.arange(1.0, 4.0), 0.8) == 3.0  # too few: the largest


def test_unknown_horizons_and_nan_scores_are_ignored():
    cal = BandCalibrator(HORIZONS, CalibrationConfig(window=5, min_scores=1, fleet_min_scores=1))
    cal.update(np.array(["A", "A", "A"], dtype=object), np.array([2, 1, 1]), np.array([9.0, np.nan, 1.0]))
    q = cal.offsets(np.array(["A"], dtype=object))[0]
    assert q[0] == 1.0 and q[1] == 0.0 and q[2] == 0.0


def test_band_hits_and_scores():
    lo, hi = np.array([0.0, 0.0, 0.0, np.nan]), np.array([1.0, 1.0, 1.0, np.nan])
    y = np.array([0.5, -2.0, 1.5, 0.0])
    assert np.array_equal(band_hits(lo, hi, y)[:3], [1.0, 0.0, 0.0]) and np.isnan(band_hits(lo, hi, y)[3])
    assert np.allclose(conformity_scores(lo, hi, y)[:3], [-0.5, 2.0, 0.5])


def test_state_rebuilt_from_each_stations_newest_scores_equals_the_live_state():
    """What the service does after a restart: feed only each station's newest ``history`` scores and hits per
    horizon, in target order; every offset (own and fleet) equals that of a calibrator that saw the whole stream."""
    cfg = CalibrationConfig(window=30, min_scores=20, fleet_stations=3, fleet_min_scores=20)
    rng = np.random.default_rng(2)
    stations = np.array(["A", "B", "C", "D", "E"], dtype=object)
    live = BandCalibrator(HORIZONS, cfg)
    rows = []
    for t in range(200):  # stations arrive interleaved, some late ones only
        present = stations if t >= 120 else stations[:3]
        st = np.repeat(present, len(HORIZONS))
        h = np.tile(HORIZONS, len(present))
        sc = rng.normal(0.0, 1.0 + np.arange(len(st)) % 3, len(st))
        hit = (rng.random(len(st)) < 0.7).astype(float)
        live.update(st, h, sc, hit)
        rows.append(pd.DataFrame({"station": st, "horizon": h, "t": t, "score": sc, "hit": hit}))
    history = pd.concat(rows, ignore_index=True)
    assert cfg.window < live.history < 150  # the early stations are past it, the late ones not
    newest = history.sort_values("t").groupby(["station", "horizon"]).tail(live.history).sort_values("t")
    rebuilt = BandCalibrator(HORIZONS, cfg)
    rebuilt.update(newest["station"].to_numpy(), newest["horizon"].to_numpy(), newest["score"].to_numpy(),
                   newest["hit"].to_numpy())
    everyone = np.r_[stations, np.array(["new"], dtype=object)]
    assert np.array_equal(rebuilt.offsets(everyone), live.offsets(everyone))
    assert np.array_equal(rebuilt.fleet_offsets(), live.fleet_offsets())
    assert not np.isnan(live.fleet_offsets()).any()
    assert len(np.unique(live.offsets(stations[:3]))) > 1  # the levels differ, so the hits were really rebuilt
    short = BandCalibrator(HORIZONS, cfg)  # the newest ``window`` alone lose the hits that count
    tail = history.sort_values("t").groupby(["station", "horizon"]).tail(cfg.window).sort_values("t")
    short.update(tail["station"].to_numpy(), tail["horizon"].to_numpy(), tail["score"].to_numpy(),
                 tail["hit"].to_numpy())
    assert not np.array_equal(short.offsets(stations[:3]), live.offsets(stations[:3]))


def test_the_fleet_pool_is_a_fixed_sample_of_stations_whatever_their_order():
    cfg = CalibrationConfig(window=10, min_scores=5, fleet_stations=2, fleet_min_scores=5)
    a, b = BandCalibrator((1,), cfg), BandCalibrator((1,), cfg)
    names = [f"S{i}" for i in range(6)]
    for cal, order in ((a, names), (b, names[::-1])):
        for s in order:
            cal.update(np.array([s] * 10, dtype=object), np.ones(10, dtype=np.int64),
                       np.full(10, float(names.index(s))))
    assert a.fleet_offsets()[0] == b.fleet_offsets()[0]


def _persistent_weather(steps: int, stations: int, phi: float, seed: int) -> np.ndarray:
    """Actuals [T, N, 1] ~ N(0, 1) from an AR(1) with coefficient ``phi``: misses come in long runs."""
    rng = np.random.default_rng(seed)
    x, out = np.zeros(stations), np.empty((steps, stations, 1))
    for t in range(steps):
        x = phi * x + np.sqrt(1 - phi**2) * rng.normal(size=stations)
        out[t, :, 0] = x
    return out


def _coverage_per_station(feedback: float, actual: np.ndarray, warmup: int) -> np.ndarray:
    stations = np.array([f"S{i}" for i in range(actual.shape[1])], dtype=object)
    cal = BandCalibrator((1,), CalibrationConfig(window=200, min_scores=50, feedback=feedback))
    z = 1.2815515655446004 / 2  # the model's band is half as wide as it should be
    hits = []
    for t in range(len(actual)):
        lo, hi, q = cal.adjust(stations, np.full((len(stations), 1), -z), np.full((len(stations), 1), z))
        hit = band_hits(lo, hi, actual[t])
        hits.append(hit)
        cal.update(stations, np.ones(len(stations), dtype=np.int64), (conformity_scores(lo, hi, actual[t]) + q)[:, 0],
                   hit[:, 0])
    return np.asarray(hits)[warmup:].mean(axis=(0, 2))


def test_feedback_closes_the_shortfall_of_a_quantile_over_runs_of_misses():
    """Where scores come in runs (weather persists for days), the plain conformal quantile of a short window covers
    well under its level; raising each station's level by its own shortfall brings every station within 3 points."""
    actual = _persistent_weather(8000, 8, 0.995, seed=0)
    plain = _coverage_per_station(0.0, actual, warmup=1000)
    fed = _coverage_per_station(1.0, actual, warmup=1000)
    assert plain.mean() < 0.77  # the case needs the feedback
    assert np.all((fed >= 0.77) & (fed <= 0.83)), fed
    assert abs(fed.mean() - 0.8) < abs(plain.mean() - 0.8) / 2


def test_feedback_narrows_a_band_that_covered_too_much_and_stays_in_bounds():
    cfg = CalibrationConfig(window=100, min_scores=10, fleet_min_scores=10, feedback=1.0)
    plain, fed = BandCalibrator((1,), dataclasses.replace(cfg, feedback=0.0)), BandCalibrator((1,), cfg)
    scores, a = np.linspace(-1.0, 1.0, 100, dtype=np.float32), np.array(["A"] * 100, dtype=object)
    for cal in (plain, fed):
        cal.update(a, np.ones(100, dtype=np.int64), scores, np.ones(100))  # every actual was inside: 100 %
    assert fed.offsets(a[:1])[0, 0] < plain.offsets(a[:1])[0, 0]
    assert fed.offsets(a[:1])[0, 0] == conformal_quantile(scores, cfg.min_level)  # 0.8 - 0.2, at the bound
    never = BandCalibrator((1,), cfg)
    never.update(a, np.ones(100, dtype=np.int64), scores, np.zeros(100))  # none inside: asks for 1.6, gets 0.97
    assert never.offsets(a[:1])[0, 0] == conformal_quantile(scores, cfg.max_level)
    unknown = BandCalibrator((1,), cfg)
    unknown.update(a, np.ones(100, dtype=np.int64), scores)  # no hits known (older stored rows): no feedback
    assert unknown.offsets(a[:1])[0, 0] == plain.offsets(a[:1])[0, 0]


def test_a_long_batch_counts_only_the_newest_hits_and_forget_clears_them():
    cfg = CalibrationConfig(window=10, min_scores=10, fleet_min_scores=10)
    one, a = np.ones(30, dtype=np.int64), np.array(["A"] * 30, dtype=object)
    scores = np.arange(30.0)
    long_batch, newest = BandCalibrator((1,), cfg), BandCalibrator((1,), cfg)
    assert long_batch.hits_after == 12  # ten scores of its own, and twice the longest horizon
    long_batch.update(a, one, scores, np.r_[np.zeros(20), np.ones(10)])  # old misses, then ten hits
    newest.update(a[:22], one[:22], scores[8:], np.r_[np.zeros(12), np.ones(10)])  # the newest ``history``
    assert long_batch.offsets(a[:1])[0, 0] == newest.offsets(a[:1])[0, 0] == 26.0  # level 0.6: ceil(11 * 0.6) = 7th
    long_batch.forget(["A"])
    long_batch.update(a[:22], one[:22], scores[8:], np.ones(22))  # a new "A": its first 12 hits do not count
    long_batch.update(a[:10], one[:10], scores[20:], np.zeros(10))  # then it missed every time: level 0.97
    assert long_batch.offsets(a[:1])[0, 0] == 29.0
    young = BandCalibrator((1,), cfg)
    young.update(a[:12], one[:12], scores[18:], np.zeros(12))  # all twelve before its own band: no feedback yet
    assert young.offsets(a[:1])[0, 0] == conformal_quantile(scores[20:], 0.8)
