"""Metrics: vectorized histogram updates equal prometheus-client's own observe(); label cardinality is capped."""

from __future__ import annotations

import numpy as np
from prometheus_client import generate_latest

from pipeline.metrics import Metrics


def _samples(m: Metrics) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in m.registry.collect() if metric.name == "stationcast_abs_error_celsius"
            for s in metric.samples if not s.name.endswith("_created")}


def test_vectorized_error_histogram_matches_observe():
    rng = np.random.default_rng(1)
    horizons = rng.integers(1, 25, 5000)
    model, pers = np.abs(rng.normal(0, 3, 5000)), np.abs(rng.normal(0, 4, 5000))
    model[:10] = [0.25, 0.5, 1, 20, 25, 0, 2, 3, 4, 6]  # exactly on bucket bounds, and beyond the last
    fast, slow = Metrics(), Metrics()
    fast.observe_errors(horizons, model, pers)
    for h, a, b in zip(horizons, model, pers, strict=True):
        slow.abs_error.labels(horizon=str(h), forecaster="model").observe(a)
        slow.abs_error.labels(horizon=str(h), forecaster="persistence").observe(b)
    f, s = _samples(fast), _samples(slow)
    assert f.keys() == s.keys()
    for k in f:
        assert np.isclose(f[k], s[k], rtol=1e-12), k


def test_station_labels_are_capped():
    m = Metrics(max_station_labels=2)
    assert [m.station_label(s) for s in ("a", "b", "c", "a")] == ["a", "b", "other", "a"]
    assert Metrics(max_station_labels=0).station_label("a") is None
    m.set_station_gauges(["a", "b", "c"], m.last_actual, [1.0, 2.0, 3.0])
    text = generate_latest(m.registry).decode()
    assert 'stationcast_actual_celsius{station="a"} 1.0' in text and 'station="c"' not in text
