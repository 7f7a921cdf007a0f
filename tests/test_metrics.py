"""Metrics: the batched error histogram equals prometheus-client's own Histogram; label cardinality is capped."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from pipeline.metrics import ERROR_BUCKETS, Metrics


def _samples(registry: CollectorRegistry) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect() if metric.name == "stationcast_abs_error_celsius"
            for s in metric.samples if not s.name.endswith("_created")}


def test_vectorized_error_histogram_matches_observe():
    rng = np.random.default_rng(1)
    horizons = rng.integers(1, 25, 5000)
    model, pers = np.abs(rng.normal(0, 3, 5000)), np.abs(rng.normal(0, 4, 5000))
    model[:10] = [0.25, 0.5, 1, 20, 25, 0, 2, 3, 4, 6]  # exactly on bucket bounds, and beyond the last
    fast = Metrics()
    fast.observe_errors(horizons[:2000], model[:2000], pers[:2000])  # two batches add up
    fast.observe_errors(horizons[2000:], model[2000:], pers[2000:])
    reference = CollectorRegistry()  # prometheus-client's own Histogram, one observe() per error
    slow = Histogram("stationcast_abs_error_celsius", "reference", ["horizon", "forecaster"],
                     buckets=ERROR_BUCKETS, registry=reference)
    for h, a, b in zip(horizons, model, pers, strict=True):
        slow.labels(horizon=str(h), forecaster="model").observe(a)
        slow.labels(horizon=str(h), forecaster="persistence").observe(b)
    f, s = _samples(fast.registry), _samples(reference)
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
