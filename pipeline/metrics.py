"""Prometheus metrics of the service: what operators watch on dashboards and alert on.

Every metric lives on a per-service :class:`CollectorRegistry` so tests can run several services in one
process. Per-station labels are capped (``max_station_labels``; 0 disables them) so that a network of
10,000 stations cannot explode the series count: stations past the cap are reported as ``other``. A station
silent for ``station_idle_s`` releases its slot (:meth:`Metrics.release_stations`) for the next one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

NS = "stationcast"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ERROR_BUCKETS = (0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 20)


class Metrics:
    def __init__(self, max_station_labels: int = 50, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.max_station_labels = max_station_labels
        self._labelled: set[str] = set()
        self._lock = threading.Lock()
        r = self.registry
        self.readings_consumed = Counter(f"{NS}_readings_consumed", "Messages read from the readings topic", registry=r)
        self.readings_accepted = Counter(f"{NS}_readings_accepted", "Valid readings stored", registry=r)
        self.readings_rejected = Counter(
            f"{NS}_readings_rejected", "Messages sent to the dead-letter topic, by reason", ["reason"], registry=r
        )
        self.readings_outcome = Counter(
            f"{NS}_window_readings", "Accepted readings by window outcome (accepted, duplicate, late)", ["outcome"],
            registry=r,
        )
        self.forecasts = Counter(f"{NS}_forecasts", "Forecasts issued (one per station and issue time)", registry=r)
        self.errors_scored = Counter(f"{NS}_errors_scored", "Forecast errors scored against actuals", registry=r)
        self.windows_not_ready = Counter(
            f"{NS}_windows_not_ready", "Windows that advanced but could not forecast (gap or short history)", registry=r
        )
        self.lag = Gauge(f"{NS}_consumer_lag", "Messages behind the fetch high-water mark, per partition",
                         ["partition"], registry=r)
        self.batch_latency = Histogram(
            f"{NS}_inference_seconds", "Batched forward-pass latency", buckets=LATENCY_BUCKETS, registry=r
        )
        self.reading_to_forecast = Histogram(
            f"{NS}_reading_to_forecast_seconds", "From a reading's arrival in the service to its forecast published",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.stage_seconds = Histogram(
            f"{NS}_stage_seconds", "Seconds per batch in each stage of the data path (parse, ring, score, forecast: "
            "the step; store_readings, publish, store_forecasts: the service)", ["stage"], buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(f"{NS}_inference_batch_stations", "Stations per forward pass",
                                    buckets=(1, 10, 100, 1000, 10000), registry=r)
        self.abs_error = ErrorHistogram(
            f"{NS}_abs_error_celsius", "Absolute forecast error by horizon (hours) and forecaster", ERROR_BUCKETS, r)
        self.rolling_mae = Gauge(
            f"{NS}_rolling_mae_celsius", "Rolling MAE over the recent window, by station (capped) and forecaster",
            ["station", "forecaster"], registry=r,
        )
        self.skill = Gauge(f"{NS}_skill_vs_persistence", "1 - MAE(model)/MAE(persistence), rolling, by station "
                           "(see stationcast_skill_vs_best_baseline)", ["station"], registry=r)
        self.skill_best = Gauge(
            f"{NS}_skill_vs_best_baseline", "1 - MAE(model)/MAE(better of persistence and diurnal persistence), "
            "rolling, by station (station=all: the hourly fleet; all@10min: the fleet of another cadence)", ["station"],
            registry=r)
        self.horizon_mae = Gauge(
            f"{NS}_horizon_rolling_mae_celsius", "Rolling MAE over all stations by horizon (hours) and forecaster",
            ["horizon", "forecaster"], registry=r)
        self.horizon_skill = Gauge(
            f"{NS}_horizon_skill_vs_best_baseline", "1 - MAE(model)/MAE(better baseline at that horizon), rolling, "
            "over all stations, by horizon (hours)", ["horizon"], registry=r)
        self.band_coverage = Gauge(
            f"{NS}_band_coverage", "Rolling fraction of actuals inside the published (calibrated) P10-P90 band, by "
            "horizon (hours; all: every horizon); nominal 0.8", ["horizon"], registry=r)
        self.band_offset = Gauge(
            f"{NS}_band_offset_celsius", "Fleet conformal widening of the model's band by horizon (negative: "
            "narrowed); stations with enough scored forecasts use their own", ["horizon"], registry=r)
        self.last_forecast = Gauge(f"{NS}_forecast_celsius", "Latest forecast by station, horizon and quantile",
                                   ["station", "horizon", "quantile"], registry=r)
        self.last_actual = Gauge(f"{NS}_actual_celsius", "Latest observed temperature by station", ["station"],
                                 registry=r)
        self.seconds_since_reading = Gauge(
            f"{NS}_seconds_since_reading", "Wall seconds since each station's last reading arrived", ["station"],
            registry=r,
        )
        self.max_seconds_since_reading = Gauge(
            f"{NS}_max_seconds_since_reading", "Longest silence over all stations this service owns", registry=r
        )
        self.stations = Gauge(f"{NS}_stations", "Stations held in windows by this service", registry=r)
        self.stations_ready = Gauge(f"{NS}_stations_ready", "Stations whose window is ready", registry=r)
        self.model_info = Info(f"{NS}_model", "The model serving forecasts", registry=r)
        self.model_version = Gauge(f"{NS}_model_version", "Champion version number serving forecasts", ["model"],
                                   registry=r)
        self.deadletter_published = Counter(f"{NS}_deadletter_published", "Dead-letter records published",
                                            registry=r)
        self.deadletter_failures = Counter(
            f"{NS}_deadletter_failures", "Rejected messages that could not be published to the dead-letter topic "
            "(counted, logged and skipped: the partition goes on)", registry=r,
        )
        self.batches = Counter(f"{NS}_batches", "Consumer batches processed", registry=r)
        self.last_batch = Gauge(f"{NS}_last_batch_timestamp_seconds", "Unix time of the last processed batch",
                                registry=r)
        self.last_forecast_time = Gauge(f"{NS}_last_forecast_timestamp_seconds", "Unix time of the last forecast",
                                        registry=r)
        self.commit_failures = Counter(f"{NS}_commit_failures", "Offset commits refused (batch redelivered)",
                                       registry=r)
        self.rebalances = Counter(f"{NS}_rebalances", "Partition assignments received", registry=r)
        self.windows_rebuilt = Counter(f"{NS}_windows_rebuilt", "Station windows rebuilt from the store", registry=r)
        self.up = Gauge(f"{NS}_ready", "1 when broker, store and model are all available", registry=r)
        self.broker_up = Gauge(f"{NS}_broker_up", "1 while the consumer reaches its Kafka broker (embedded: the "
                               "broker process is serving)", registry=r)
        self.broker_restarts = Counter(f"{NS}_broker_restarts", "Embedded broker restarts after it died "
                                       "(messages it held are lost)", registry=r)
        self.store_up = Gauge(f"{NS}_store_up", "1 while the database answers; 0 during an outage (writes wait)",
                              registry=r)
        self.store_reconnects = Counter(f"{NS}_store_reconnects", "New database connections after a lost one",
                                        registry=r)
        self.store_outages = Counter(f"{NS}_store_outages", "Database outages waited out (connection lost, locked)",
                                     registry=r)
        self.forecasts_expired = Counter(
            f"{NS}_forecasts_expired", "Pending forecasts dropped unscored: their target can no longer get a reading",
            registry=r)
        self.stations_released = Counter(
            f"{NS}_stations_released", "Stations silent for station_idle_s dropped from status and metric labels",
            registry=r)
        # Model lifecycle: champion changes and retraining outcomes.
        self.model_swaps = Counter(f"{NS}_model_swaps", "New champions picked up without restart", registry=r)
        self.rollbacks = Counter(f"{NS}_rollbacks", "Champion rollbacks seen by the service", registry=r)
        self.retrain_runs = Counter(f"{NS}_retrain_runs", "Retraining runs by outcome", ["outcome"], registry=r)
        self.finetune_runs = Counter(f"{NS}_finetune_runs", "Station fine-tunings by outcome", ["outcome"],
                                     registry=r)
        self.station_models = Gauge(f"{NS}_station_models", "Stations served by a fine-tuned model of their own",
                                    registry=r)
        self.stations_served = Gauge(f"{NS}_stations_served", "Stations each cadence's champion serves (model tag, "
                                     "cadence in seconds; fine-tuned stations are counted in station_models)",
                                     ["model", "cadence"], registry=r)
        self.readings_unserved = Counter(f"{NS}_readings_unserved", "Readings of stations at a cadence no champion "
                                         "has: stored, not forecast", registry=r)
        self.stations_unserved = Gauge(f"{NS}_stations_unserved", "Stations reporting at a cadence (detected, "
                                       "seconds) no champion has: stored, not forecast", ["cadence"], registry=r)
        self.retrain_last_success = Gauge(f"{NS}_retrain_last_success_timestamp_seconds",
                                          "Unix time of the last successful retraining (0: none yet)", registry=r)
        for outcome in ("promoted", "rejected", "failed"):
            self.retrain_runs.labels(outcome=outcome)
            self.finetune_runs.labels(outcome=outcome)
        from pipeline.readings import REASONS

        for reason in REASONS:  # every reason exported from the start, so rate() and alerts see a zero
            self.readings_rejected.labels(reason=reason)
        for outcome in ("accepted", "duplicate", "late"):
            self.readings_outcome.labels(outcome=outcome)

    def totals(self) -> dict[str, int]:
        """The service's running totals, read from its counters (public ``collect()``, summed over labels)."""

        def total(metric, sample: str, **labels: str) -> int:
            return int(sum(x.value for family in metric.collect() for x in family.samples
                           if x.name == sample and all(x.labels.get(k) == v for k, v in labels.items())))

        return {
            "consumed": total(self.readings_consumed, f"{NS}_readings_consumed_total"),
            "accepted": total(self.readings_accepted, f"{NS}_readings_accepted_total"),
            "rejected": total(self.readings_rejected, f"{NS}_readings_rejected_total"),
            "duplicates": total(self.readings_outcome, f"{NS}_window_readings_total", outcome="duplicate"),
            "late": total(self.readings_outcome, f"{NS}_window_readings_total", outcome="late"),
            "forecasts": total(self.forecasts, f"{NS}_forecasts_total"),
            "errors_scored": total(self.errors_scored, f"{NS}_errors_scored_total"),
            "not_ready": total(self.windows_not_ready, f"{NS}_windows_not_ready_total"),
            "lag": total(self.lag, f"{NS}_consumer_lag"),
            "batches": total(self.batches, f"{NS}_batches_total"),
        }

    def station_label(self, station: str) -> str | None:
        """The label to use for a station, ``other`` past the cap, None when per-station labels are off."""
        if self.max_station_labels <= 0:
            return None
        with self._lock:
            if station in self._labelled:
                return station
            if len(self._labelled) < self.max_station_labels:
                self._labelled.add(station)
                return station
        return "other"

    def release_stations(self, stations: Sequence[str]) -> None:
        """Free the label slots of stations gone silent: their series leave every per-station metric, and the
        slots go to the next stations that report."""
        with self._lock:
            gone = set(stations) & self._labelled
            self._labelled -= gone
        if not gone:
            return
        for gauge in (self.rolling_mae, self.skill, self.skill_best, self.last_forecast, self.last_actual,
                      self.seconds_since_reading):
            series = {tuple(sample.labels.values()) for family in gauge.collect() for sample in family.samples
                      if sample.labels.get("station") in gone}
            for labels in series:
                with contextlib.suppress(KeyError):  # removed meanwhile
                    gauge.remove(*labels)

    def observe_errors(self, horizons: np.ndarray, model_err: np.ndarray, persistence_err: np.ndarray,
                       diurnal_err: np.ndarray | None = None) -> None:
        """Errors of the model and both baselines, same rows; a row without a diurnal value adds no diurnal
        sample (the histogram holds where the baseline existed)."""
        errors = {"model": model_err, "persistence": persistence_err}
        if diurnal_err is not None:
            ok = ~np.isnan(diurnal_err)
            if ok.any():
                self.abs_error.observe(np.asarray(horizons)[ok], {"diurnal": np.asarray(diurnal_err)[ok]})
        self.abs_error.observe(horizons, errors)

    def set_station_gauges(self, stations: Sequence[str], gauge: Gauge, values: Sequence[float], **labels) -> None:
        for s, v in zip(stations, values, strict=True):
            label = self.station_label(s)
            if label is not None and label != "other":
                gauge.labels(station=label, **labels).set(float(v))


class ErrorHistogram(Collector):
    """A histogram by (horizon, forecaster) filled a whole batch of scored errors at a time with numpy, and
    exposed through prometheus_client's custom-collector API: a tick scores tens of thousands of errors, too
    many for one ``Histogram.observe`` call each. Same series as a ``Histogram`` (``_bucket``, ``_count``,
    ``_sum``), without ``_created``."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self.bounds = np.array([*buckets, np.inf])
        self._les = [_le(b) for b in self.bounds]
        self._counts: dict[tuple[str, str], np.ndarray] = {}
        self._sums: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, horizons: np.ndarray, errors: dict[str, np.ndarray]) -> None:
        """``errors``: forecaster -> absolute errors, each aligned with ``horizons``."""
        keys, code = np.unique(np.asarray(horizons), return_inverse=True)
        nb = len(self.bounds)
        for forecaster, err in errors.items():
            err = np.asarray(err, dtype=np.float64)
            # observe(v) counts v in the first bucket whose upper bound is >= v.
            bucket = np.searchsorted(self.bounds, err, side="left")
            counts = np.bincount(code * nb + bucket, minlength=len(keys) * nb).reshape(len(keys), nb)
            sums = np.bincount(code, weights=err, minlength=len(keys))
            with self._lock:
                for i, h in enumerate(keys.tolist()):
                    key = (str(int(h)), forecaster)
                    if key not in self._counts:
                        self._counts[key] = np.zeros(nb, dtype=np.int64)
                        self._sums[key] = 0.0
                    self._counts[key] += counts[i]
                    self._sums[key] += float(sums[i])

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=["horizon", "forecaster"])
        with self._lock:
            series = [(key, np.cumsum(c), self._sums[key]) for key, c in self._counts.items()]
        for key, cumulative, total in series:
            family.add_metric(list(key), list(zip(self._les, cumulative.astype(float).tolist(), strict=True)), total)
        yield family


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes ``le`` (``0.25``, ``1.0``, ``+Inf``), the same as a ``Histogram``'s."""
    return "+Inf" if bound == np.inf else repr(float(bound))
