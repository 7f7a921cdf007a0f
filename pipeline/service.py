"""The streaming service: the adapter around the pure step (:mod:`pipeline.step`), one batch at a time.

    records = consumer.poll()          # Kafka
    out = step(*flatten_poll(records)) # readings -> ring -> scores -> forecasts, no I/O
    store readings, publish, store forecasts and errors, then commit the offsets  (process, below)

Each poll is processed as one batch and its offsets are committed only after the batch is durably
stored, so delivery is at-least-once; the store's primary keys and the windows' duplicate detection
make redelivery harmless (no duplicate reading, forecast or error). Partitions that arrive in a
rebalance get their stations' windows and pending forecasts rebuilt from the store first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson
import pandas as pd
import torch
from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import CommitFailedError, KafkaError

from forecaster.artifact import ModelCard
from forecaster.predict import Predictor
from forecaster.registry import Registry, VersionInfo
from pipeline.broker import EmbeddedBroker, make_producer
from pipeline.cadence import CadenceDetector, describe, horizon_label, matching, parse_declared, spacing
from pipeline.calibration import BandCalibrator
from pipeline.config import ServiceConfig
from pipeline.lanes import CadenceRouter
from pipeline.lifecycle import Lifecycle
from pipeline.metrics import Metrics
from pipeline.pretrained import cadence_champions, ensure_champion
from pipeline.readings import SENSORS, DeadLetter
from pipeline.ring import RollingWindows
from pipeline.scoring import TRACKED, HorizonSkill, RollingSkill, skill_vs_best
from pipeline.serving import Served, ServingModels
from pipeline.step import Step, StepConfig, StepResult, rank_within_station
from pipeline.step_metrics import export_step
from pipeline.store import Store, StoreUnavailable

log = logging.getLogger("stationcast.service")
_NO_TIME = np.iinfo(np.int64).min


@dataclass
class Totals:
    """What the live line, the status page and tests read: a snapshot of the service's Prometheus counters
    (:meth:`Metrics.totals`), which are updated once per batch, after it is stored."""

    consumed: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    late: int = 0
    forecasts: int = 0
    errors_scored: int = 0
    not_ready: int = 0
    lag: int = 0
    batches: int = 0
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class Service:
    def __init__(self, cfg: ServiceConfig, bootstrap: str, metrics: Metrics | None = None,
                 broker: EmbeddedBroker | None = None):
        """``broker``: the embedded broker when the service runs on one (its health is part of readiness)."""
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.broker = broker
        self._disconnected_since: float | None = None
        self._connection_checked = 0.0
        self._reconnecting = False  # the embedded broker was restarted and the consumer is not back yet
        if cfg.torch_threads:
            # Small per-batch forward passes gain nothing from more threads, and OpenMP threads that
            # spin-wait beside Kafka's I/O thread can slow inference a hundredfold on a busy machine.
            torch.set_num_threads(cfg.torch_threads)
        self.metrics = metrics or Metrics(cfg.max_station_labels)
        self._stop = threading.Event()
        self.store = Store.open(cfg.store_url, checkpoint_every_s=cfg.store_checkpoint_s)
        # A database outage is waited out (the batch is neither lost nor committed) until the service stops.
        self.store.retry_s = float("inf")
        self.store.stopping = self._stop
        self.store.on_outage = self._on_store_outage
        self._reconnects_seen = 0
        self.metrics.store_up.set(1.0)
        self.registry = Registry(cfg.registry)
        self._lock = threading.Lock()  # guards what the HTTP thread reads
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.step: Step | None = None  # the hourly lane (the global champion's)
        self.router: CadenceRouter | None = None  # every lane: one champion and one Step per cadence
        self.lane_models: dict[int, ServingModels] = {}  # the champions of the other cadences
        self._unserved_labels: set[str] = set()
        self._served_labels: set[tuple[str, str]] = set()
        self.observers: list[Callable[[StepResult], None]] = []  # called with each stored step's result
        self._latest_forecast: dict[str, dict] = {}
        self._last_seen: dict[str, float] = {}
        self._recent: dict[str, deque] = {}
        self._last_loop = time.time()
        self._swept = time.time()
        self._rebalances: deque[tuple[str, list[int]]] = deque()  # filled by the listener, drained by the loop
        self.models = ServingModels(cfg.device)
        self._load_model(ensure_champion(self.registry, cfg.model_name))
        self._load_lanes()
        if cfg.station_models:
            self.metrics.station_models.set(len(self.models.refresh(self.registry)))
        self.producer = make_producer(cfg.broker, bootstrap)
        self.consumer = KafkaConsumer(
            **cfg.broker.client_kwargs(bootstrap),
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            max_poll_records=cfg.max_batch,
            max_partition_fetch_bytes=8 << 20,
        )
        self.consumer.subscribe([cfg.broker.readings_topic], listener=_Rebalance(self))
        self.metrics.broker_up.set_function(lambda: float(self.broker_reachable))
        if broker is not None:
            broker.on_restart(self._broker_restarted)
        # Model lifecycle: swap requests and rollbacks (the scheduled jobs are attached by pipeline.run).
        self.lifecycle = Lifecycle(cfg, self.registry, self.metrics, self.lane_champions,
                                   swap=lambda: self.maybe_swap_model(force=True))

    # ------------------------------------------------------------------ model

    def _load_model(self, info: VersionInfo) -> None:
        model, card, info = self.registry.load(info.name, info.version)
        predictor = Predictor(model, card, self.cfg.device)
        served = Served(predictor, info, card)
        if self.step is None:
            self.models.set_fleet(served)
            # Rows for every station the store knows, so a big fleet is not grown by doubling copies.
            self.step = Step(self.models, StepConfig.of(self.cfg), initial_stations=max(64, self.store.n_stations()))
        else:
            try:
                self.step.use(card)
            except ValueError as exc:
                raise ValueError(f"new champion {info.tag}: {exc}") from None
            self.models.set_fleet(served)
        self.predictor, self.model_info, self.card = predictor, info, card
        self._model_checked = time.monotonic()
        self.metrics.model_info.info({"tag": info.tag, "kind": card.model.kind, "created_at": card.created_at,
                                      "device": str(predictor.device)})
        self.metrics.model_version.labels(model=info.name).set(info.version)
        log.info("serving %s (%s, %d features, lookback %d, horizons %s) on %s", info.tag, card.model.summary,
                 len(card.data.features), card.data.lookback, list(card.data.horizons), predictor.device)

    def _load_lanes(self) -> None:
        """A lane per cadence with a champion besides the hourly one (``global-10min``, ...; see
        :mod:`pipeline.cadence`), seeded from the shipped models like the hourly one."""
        lanes = {self.card.cadence_s: self.step}
        for cadence, name in cadence_champions(self.registry, self.cfg.model_name).items():
            if name == self.cfg.model_name:
                continue
            info = ensure_champion(self.registry, name)
            model, card, info = self.registry.load(info.name, info.version)
            if card.cadence_s != cadence or cadence in lanes:
                log.error("champion %s not served: its card's cadence is %s, its name says %s", info.tag,
                          describe(card.cadence_s), describe(cadence))
                continue
            models = ServingModels(self.cfg.device)
            models.set_fleet(Served(Predictor(model, card, self.cfg.device), info, card))
            self.lane_models[cadence] = models
            lanes[cadence] = Step(models, StepConfig.of(self.cfg))
            self.metrics.model_version.labels(model=info.name).set(info.version)
            log.info("serving %s for stations every %s (lookback %d steps, horizons %s .. %s)", info.tag,
                     describe(cadence), card.data.lookback, horizon_label(min(card.data.horizons), cadence),
                     horizon_label(max(card.data.horizons), cadence))
        self.router = CadenceRouter(lanes, StepConfig.of(self.cfg),
                                    CadenceDetector(declared=parse_declared(self.cfg.station_cadences)))

    def _swap_lanes(self) -> int:
        """New champions of the other cadences, between batches."""
        swapped = 0
        for cadence, models in self.lane_models.items():
            current = models.fleet.info
            champion = self.registry.champion(current.name)
            if champion is None or champion.version == current.version:
                continue
            try:
                model, card, info = self.registry.load(champion.name, champion.version)
                self.router.lanes[cadence].use(card)
                models.set_fleet(Served(Predictor(model, card, self.cfg.device), info, card))
                self.metrics.model_version.labels(model=info.name).set(info.version)
                swapped += 1
            except Exception as exc:  # keep serving the current one
                log.error("new champion %s not loaded, still serving %s: %s", champion.tag, current.tag, exc)
        return swapped

    def lane_tags(self) -> dict[int, str]:
        """The champion tag of every cadence served."""
        return {c: step.models.fleet.info.tag for c, step in self.router.lanes.items()}

    def lane_cards(self) -> dict[int, ModelCard]:
        """The champion card of every cadence served."""
        return {c: step.card for c, step in self.router.lanes.items()}

    def model_of(self, station: str) -> tuple[str | None, int | None]:
        """The tag of the model serving ``station`` and its cadence (None: not routed yet, or unserved)."""
        step = self.router.step_of(station)
        if step is None:
            return None, None
        return step.models.tag_of(station), step.card.cadence_s

    @property
    def skill(self) -> RollingSkill:
        return self.step.skill

    @property
    def windows(self) -> RollingWindows:
        return self.step.ring

    @property
    def horizon_skill(self) -> HorizonSkill:
        return self.step.horizon_skill

    @property
    def calibrator(self) -> BandCalibrator:
        return self.step.calibrator

    @property
    def totals(self) -> Totals:
        return Totals(**self.metrics.totals(), started_at=self.started_at)

    def maybe_swap_model(self, force: bool = False) -> bool:
        """Pick up new champions (global and per station) between batches: no forecast is dropped or made
        twice across the swap."""
        if not force and time.monotonic() - self._model_checked < self.cfg.model_check_s:
            return False
        self._model_checked = time.monotonic()
        swapped = 0
        champion = self.registry.champion(self.cfg.model_name)
        if champion is not None and champion.version != self.model_info.version:
            try:
                self._load_model(champion)
                swapped += 1
            except Exception as exc:  # a broken artifact must not stop the service: keep the current model
                log.error("new champion %s not loaded, still serving %s: %s", champion.tag, self.model_info.tag, exc)
        swapped += self._swap_lanes()
        if self.cfg.station_models:
            lane_of, hourly = self.router.lane_of, self.card.cadence_s
            swapped += len(self.models.refresh(self.registry, accept=lambda s: lane_of.get(s, hourly) == hourly))
            for cadence, models in self.lane_models.items():
                swapped += len(models.refresh(self.registry, accept=lambda s, c=cadence: lane_of.get(s) == c))
            self.metrics.station_models.set(len(self.models.stations) + sum(
                len(m.stations) for m in self.lane_models.values()))
        self.metrics.model_swaps.inc(swapped)
        return swapped > 0

    # ------------------------------------------------------------------ what the scheduler sees (ServingView)

    def _steps(self) -> list[Step]:
        """Every lane's step, the hourly one first."""
        return [self.step, *(st for st in self.router.lanes.values() if st is not self.step)]

    def lanes(self) -> dict[str, tuple[RollingSkill, ModelCard]]:
        """Per cadence served: its champion's name, its lane's rolling skill and card (the hourly one first)."""
        return {st.models.fleet.info.name: (st.skill, st.card) for st in self._steps()}

    def lane_champions(self) -> dict[str, tuple[VersionInfo, RollingSkill]]:
        """Per cadence served: the champion version serving its stations and its lane's rolling skill (the
        lifecycle's view: a promotion in any lane goes on probation against that lane's live MAE)."""
        return {st.models.fleet.info.name: (st.models.fleet.info, st.skill) for st in self._steps()}

    def station_card(self, station: str) -> ModelCard | None:
        step = (self.router.step_of(station) if self.router is not None else None) or self.step
        own = step.models.stations.get(station)
        return own.card if own is not None else None

    def request_swap(self) -> None:
        """Any thread: the loop checks the registry for new champions before its next batch."""
        self.lifecycle.request_swap()

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        """Poll, process, commit until :meth:`stop`; then finish the batch, commit, flush and close."""
        try:
            while not self._stop.is_set():
                try:
                    records = self.consumer.poll(timeout_ms=self.cfg.poll_timeout_ms,
                                                 max_records=self.cfg.max_batch)
                except KafkaError as exc:  # broker gone or restarting: kafka-python reconnects by itself
                    log.warning("poll failed, retrying: %s", exc)
                    self._stop.wait(1.0)
                    continue
                self._last_loop = time.time()
                self._check_connection()
                self._apply_rebalances()
                if records:
                    self.process(records)
                    self._commit()
                self._update_lag()
                self._release_idle()
                self.maybe_swap_model()
                self.lifecycle.on_loop()
                self.metrics.up.set(1.0 if self.ready else 0.0)
        except StoreUnavailable:  # raised only once a stop was asked for while the database was away
            if not self._stop.is_set():
                raise
            log.warning("stopped while the store was unavailable: the batch in hand is not committed and will be "
                        "redelivered")
        finally:
            self.close()

    def _commit(self) -> None:
        """Commit the batch's offsets; if the group moved on (rebalance, broker restart) the batch will be
        redelivered to whoever owns it now, and the store's keys make that harmless."""
        try:
            self.consumer.commit()
        except (CommitFailedError, KafkaError) as exc:
            log.warning("offset commit failed, the batch will be redelivered and deduplicated: %s", exc)
            self.metrics.commit_failures.inc()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        try:
            if getattr(self, "lifecycle", None) is not None:
                self.lifecycle.close()
            self.producer.flush(timeout=10)
            self.producer.close(timeout=5)
        finally:
            self.consumer.close()
            self.store.close()
            self.metrics.up.set(0.0)

    @property
    def ready(self) -> bool:
        """Serving: partitions assigned, a model, a broker and the store. False while still starting: the store
        may report an outage (and its end) while the models load, before the consumer exists."""
        if getattr(self, "consumer", None) is None:
            return False
        return (bool(self.consumer.assignment()) and self.predictor is not None and self.broker_reachable
                and self.store.up)

    @property
    def broker_reachable(self) -> bool:
        """The embedded broker is serving, and the consumer has not been without any broker connection for
        a session timeout (the assignment alone stays set while the broker is gone)."""
        if self.broker is not None and (self._reconnecting or not self.broker.healthy):
            return False
        since = self._disconnected_since
        return since is None or time.monotonic() - since < self.cfg.session_timeout_ms / 1000

    def _broker_restarted(self) -> None:
        """Called by the embedded broker's supervisor: not ready until the consumer has reconnected."""
        self._reconnecting = True
        self._connection_checked = 0.0
        self.metrics.broker_restarts.inc()

    def _check_connection(self) -> None:
        """Note when the consumer lost its last broker connection (kafka-python's connection-count metric)."""
        now = time.monotonic()
        if now - self._connection_checked < 1.0:
            return
        self._connection_checked = now
        try:
            count = (self.consumer.metrics() or {}).get("consumer-metrics", {}).get("connection-count")
        except Exception:  # an unstable interface upstream: unknown counts as connected
            count = None
        if count is None or count > 0:
            self._disconnected_since = None
            self._reconnecting = False
        elif self._disconnected_since is None:
            self._disconnected_since = now
            log.warning("the consumer has no connection to the Kafka broker %s", self.bootstrap)

    @property
    def alive(self) -> bool:
        """The loop turns, or it waits for the database (a restart would not bring the database back)."""
        return not self.store.up or time.time() - self._last_loop < max(30.0, 5 * self.cfg.session_timeout_ms / 1000)

    def _on_store_outage(self, up: bool, cause: BaseException | None) -> None:
        """Called by the store (in the loop thread) when the database goes away and when it answers again."""
        m = self.metrics
        m.store_up.set(1.0 if up else 0.0)
        if up:
            m.store_reconnects.inc(self.store.reconnects - self._reconnects_seen)
            self._reconnects_seen = self.store.reconnects
            m.up.set(1.0 if self.ready else 0.0)
        else:
            m.store_outages.inc()
            m.up.set(0.0)

    def process(self, records: dict) -> None:
        """One batch: step, then store, publish, store, observe. The caller commits the offsets after this."""
        out = self.router(*flatten_poll(records), arrived=time.time())
        self._store_readings(out)  # first: a reading accepted is never lost, whatever fails next
        self._publish(out)
        self._store_outcomes(out)
        self._observe(out, batch=True)

    def _store_readings(self, out: StepResult) -> None:
        batch = out.readings
        if batch is not None and len(batch):
            t0 = time.perf_counter()
            ts = batch.time.astype("datetime64[s]").astype(np.int64)
            self.store.add_readings(batch.station, ts, batch.values, SENSORS, batch.partition, batch.offset)
            self.metrics.stage_seconds.labels(stage="store_readings").observe(time.perf_counter() - t0)

    def _publish(self, out: StepResult) -> None:
        """Dead letters, then one message per station forecast; flushed before anything of the batch is stored,
        so a crash in between re-issues forecasts on restart (at-least-once on the topic), whereas stored-first
        could lose a message the store says was sent."""
        t0 = time.perf_counter()
        self._dead_letter(out.dead)
        topic = self.cfg.broker.forecasts_topic
        for msg in out.messages:
            self.producer.send(topic, key=msg["station"].encode(), value=orjson.dumps(msg))
        self.producer.flush()
        self.metrics.stage_seconds.labels(stage="publish").observe(time.perf_counter() - t0)

    def _store_outcomes(self, out: StepResult) -> None:
        """Errors before forecasts: after a crash between the two, the batch's readings are newer than the station's
        last stored forecast and are replayed on restart, which re-issues the forecasts; the other way round, the
        rebuild would take those readings as done and their errors would be lost."""
        t0 = time.perf_counter()
        if out.error_frames:
            self.store.add_errors(out.errors)
        if out.forecast_frames:
            self.store.add_forecasts(out.forecasts)
        if out.error_frames or out.forecast_frames:
            self.metrics.stage_seconds.labels(stage="store_forecasts").observe(time.perf_counter() - t0)

    def _observe(self, out: StepResult, batch: bool) -> None:
        """The stored batch seen by everyone else: the lifecycle, the status page, the metrics and the observers.
        ``batch``: a polled batch (False: stored readings replayed after a rebalance)."""
        errors = out.errors
        if not errors.empty:
            self.lifecycle.on_errors(errors)
        with self._lock:
            for msg in out.messages:
                self._latest_forecast[msg["station"]] = msg
        self._note_readings(out.actuals, out.arrived)
        export_step(self.metrics, out, self.step, batch=batch, lanes=self.router)
        for observer in self.observers:
            observer(out)

    def _dead_letter(self, dead: Sequence[DeadLetter]) -> None:
        """Publish rejected messages; one that cannot be published is counted and logged, never raised: a
        message that cannot even be dead-lettered must not stop its partition (the batch is still stored)."""
        failed = 0
        for d in dead:
            try:
                future = self.producer.send(self.cfg.broker.deadletter_topic, key=d.record_key, value=d.to_message())
            except Exception as exc:  # too large, buffer full, broker unreachable for max_block_ms, ...
                failed += 1
                log.error("dead letter of partition %s offset %s (%s, %d bytes) not published: %r",
                          d.partition, d.offset, d.reason, d.size, exc)
                continue
            future.add_errback(self._dead_letter_lost, d)
        self.metrics.deadletter_published.inc(len(dead) - failed)
        self.metrics.deadletter_failures.inc(failed)

    def _dead_letter_lost(self, d: DeadLetter, exc: Exception) -> None:
        """The producer gave up delivering a dead letter (called on its I/O thread)."""
        self.metrics.deadletter_failures.inc()
        log.error("dead letter of partition %s offset %s (%s, %d bytes) not delivered: %r",
                  d.partition, d.offset, d.reason, d.size, exc)

    def _note_readings(self, actuals: pd.DataFrame, arrived: float) -> None:
        """Recent actuals of the status page (the newest ``status_history`` per station) and the last-actual gauges."""
        if actuals.empty:
            return
        codes, names = pd.factorize(actuals["station"].to_numpy(dtype=object))
        order = np.lexsort((actuals["ts"].to_numpy(), codes))
        c = codes[order]
        bounds = np.flatnonzero(np.r_[True, c[1:] != c[:-1], True])
        ts, temp = actuals["ts"].to_numpy()[order].tolist(), actuals["T"].to_numpy()[order].tolist()
        keep = self.cfg.status_history
        stations, latest = names[c[bounds[:-1]]].tolist(), []
        with self._lock:
            for s, a, b in zip(stations, bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                a = max(a, b - keep)
                points = self._recent.setdefault(s, deque(maxlen=keep))
                # A station's first readings are shown while its cadence is detected, then reach its lane again.
                shown = {p[0] for p in points}
                points.extend((t, v) for t, v in zip(ts[a:b], temp[a:b], strict=True) if t not in shown)
                self._last_seen[s] = arrived
                latest.append(temp[b - 1])
        self.metrics.set_station_gauges(stations, self.metrics.last_actual, latest)

    def _update_lag(self) -> None:
        total = 0
        for tp in list(self.consumer.assignment()):
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            try:
                lag = max(0, high - self.consumer.position(tp))
            except Exception:  # partition being revoked
                continue
            self.metrics.lag.labels(partition=str(tp.partition)).set(lag)
            total += lag
        now = time.time()
        with self._lock:
            silent = {s: now - t for s, t in self._last_seen.items()}
        if silent:
            self.metrics.max_seconds_since_reading.set(max(silent.values()))
            self.metrics.set_station_gauges(list(silent), self.metrics.seconds_since_reading, list(silent.values()))
        lanes = self.router.lanes.values()
        self.metrics.stations.set(sum(step.ring.n_stations for step in lanes))
        self.metrics.stations_ready.set(sum(step.ring.n_ready for step in lanes))
        self._export_served()

    def _export_served(self) -> None:
        """Which model serves how many stations, per cadence (one series per model, never per station), and how
        many stations report at a cadence no champion has."""
        m, router = self.metrics, self.router
        served = dict.fromkeys(self._served_labels, 0)  # a replaced champion's series goes back to 0
        for cadence, stations in router.served().items():
            step = router.lanes[cadence]
            own = step.models.stations
            served[(step.models.fleet.info.tag, str(cadence))] = sum(1 for s in stations if s not in own)
        for (tag, cadence), n in served.items():
            m.stations_served.labels(model=tag, cadence=cadence).set(n)
        self._served_labels = set(served)
        unserved: dict[str, int] = dict.fromkeys(self._unserved_labels, 0)  # a cadence gone back to 0
        for seconds in router.unserved.values():
            key = str(int(round(seconds)))
            unserved[key] = unserved.get(key, 0) + 1
        for key, n in unserved.items():
            m.stations_unserved.labels(cadence=key).set(n)
        self._unserved_labels = set(unserved)

    # ------------------------------------------------------------------ rebalance

    def rebuild(self, partitions: Sequence[int]) -> list[str]:
        """Restore the windows and pending forecasts of the stations on ``partitions`` from the store.

        Per station, since partitions catch up unevenly: readings up to its last stored forecast (or to the
        start of its catch-up window, when that is later) rebuild its window directly; its stored readings
        after it (accepted before a crash, but never forecast) are replayed through the normal rounds, so
        every due window gets its forecast exactly once and nothing is issued twice. Its pending forecasts
        are the unscored ones whose target a reading could still fill.
        """
        stations = self.store.stations_in_partitions(partitions)
        if not stations:
            return []
        done = []
        for cadence, mine in self._stations_by_cadence(stations).items():
            done += self._rebuild_lane(self.router.lanes[cadence], mine, partitions)
        return done

    def _stations_by_cadence(self, stations: list[str]) -> dict[int, list[str]]:
        """The lane of each stored station: its declared cadence, else the spacing of its newest stored readings (as
        the live stream would detect it); a station with too few readings, or at a cadence no champion has, is
        detected again live."""
        router = self.router
        declared = router.detector.declared
        newest_of = self.store.newest_by_station(stations)
        reach = (router.detector.n + 1) * max(router.cadences)
        recent = self.store.latest_readings(stations, {s: newest_of[s] - reach for s in stations})
        ts = recent["time"].to_numpy(dtype="datetime64[s]").astype(np.int64)
        out: dict[int, list[str]] = {}
        for s, idx in pd.Series(np.arange(len(recent))).groupby(recent["station"].to_numpy()).groups.items():
            tail = np.unique(ts[np.asarray(idx)])[-router.detector.n:]
            if s in declared:
                cadence = matching(declared[s], router.lanes)
            elif len(tail) < router.detector.n:
                continue
            else:
                cadence = matching(spacing(tail), router.lanes)
            if cadence is not None:
                router.assign(s, cadence)
                out.setdefault(cadence, []).append(s)
        return out

    def _rebuild_lane(self, step: Step, stations: list[str], partitions: Sequence[int]) -> list[str]:
        card = step.card
        cad = card.cadence_s
        names = np.asarray(stations, dtype=object)
        newest_of = self.store.newest_by_station(stations)
        last_of = self.store.last_issue(stations)
        newest = np.array([newest_of[s] for s in stations], dtype=np.int64)
        last = np.array([last_of.get(s, _NO_TIME) for s in stations], dtype=np.int64)
        cut = np.maximum(last, newest - self.cfg.max_catchup_steps * cad)
        span = (step.ring.capacity + 2) * cad
        history = self.store.latest_readings(stations, dict(zip(stations, (cut - span).tolist(), strict=True)))
        ts = history["time"].to_numpy(dtype="datetime64[s]").astype(np.int64)
        st = history["station"].to_numpy(dtype=object)
        # A reading belongs to the slot its time rounds to (halves up), so the forecast's own reading, which
        # may be stamped up to half a step after the slot time, is part of the head.
        head = ts < cut[pd.Index(names).get_indexer(st)] + (cad - cad // 2)
        features = history[list(card.data.features)].to_numpy(dtype=np.float64)
        lateness = self.cfg.lateness_steps * cad
        max_h = max(card.data.horizons) * cad
        since = dict(zip(stations, (cut - lateness).tolist(), strict=True))
        step.restore(names, st[head], ts[head], features[head], self.store.pending_since(since, max_h))
        tail = np.flatnonzero(~head)
        rank = rank_within_station(st[tail], ts[tail])
        scored_later = self._rebuild_calibration(step, stations, newest, cut, st[tail], ts[tail], rank)
        out = step.replay(st[tail], ts[tail], history[list(SENSORS)].to_numpy(dtype=np.float64)[tail],
                               restored=names, band_scores=scored_later)
        self._publish(out)
        self._store_outcomes(out)
        self._observe(out, batch=False)
        self.metrics.windows_rebuilt.inc(len(stations))
        log.info("rebuilt %d station windows for partitions %s (%d stored readings not yet forecast)",
                 len(stations), sorted(partitions), len(tail))
        return stations

    def _rebuild_calibration(self, step: Step, stations: list[str], newest: np.ndarray, cut: np.ndarray,
                             tail_station: np.ndarray, tail_ts: np.ndarray,
                             tail_rank: np.ndarray) -> dict[int, pd.DataFrame]:
        """The band calibration of ``stations`` (just forgotten by the restore) from their stored scores: per horizon
        the newest ``calibrator.history`` up to each one's cut (within four times that) and all after it, so that after
        a restart or rebalance every band is what it would have been without one. Scores up to each station's cut
        are learnt now; those of targets among the readings still to be replayed (stored before a crash, with their
        forecasts lost) are returned by replay round (-1: after the last), to be learnt just before that round
        forecasts, as they were."""
        if not step.calibrator.enabled:
            return {}
        history = step.calibrator.history
        cad, half = step.card.cadence_s, step.card.cadence_s - step.card.cadence_s // 2
        # Forecasts issued after the cut (stored scores of forecasts lost in a crash between storing a batch's errors
        # and its forecasts) are issued and scored again by the replay: learning their stored scores too would count
        # them twice. Of the rest, per horizon: the newest ``history`` up to the cut and the few after it.
        since = dict(zip(stations, (cut - 4 * history * cad).tolist(), strict=True))
        max_h = max(step.card.data.horizons)
        scored = self.store.recent_errors(since, max_h * cad, history + max_h,
                                          issued_until=dict(zip(stations, cut.tolist(), strict=True)))
        code = pd.Index(stations).get_indexer(scored["station"].to_numpy())
        target = scored["target_ts"].to_numpy()
        now = target < cut[code] + half
        step.learn_band(scored[now])
        later = scored[~now]
        if later.empty:
            return {}
        # The replay round whose reading scores each target: the station's first replayed reading in its slot.
        rounds = np.full(len(later), -1, dtype=np.int64)
        if len(tail_ts):
            keys = (pd.Index(stations).get_indexer(tail_station).astype(np.int64) << 32) | tail_ts
            order = np.argsort(keys, kind="stable")
            keys, ranks = keys[order], tail_rank[order]
            code_later = code[~now].astype(np.int64)
            pos = np.searchsorted(keys, (code_later << 32) | (target[~now] - half), side="left")
            ok = pos < len(keys)
            ok[ok] = (keys[pos[ok]] >> 32) == code_later[ok]
            rounds[ok] = ranks[pos[ok]]
        return {int(k): frame for k, frame in later.groupby(rounds, sort=False)}

    def _apply_rebalances(self) -> None:
        """Rebuild/forget in the loop thread, before the records of newly assigned partitions are processed."""
        while self._rebalances:
            action, partitions = self._rebalances.popleft()
            log.info("partitions %s: %s", action, sorted(partitions))
            if action == "assigned":
                self.rebuild(partitions)
            else:
                self.forget(partitions)

    def forget(self, partitions: Sequence[int]) -> None:
        stations = self.store.stations_in_partitions(partitions)
        if stations:
            self.router.forget(np.asarray(stations, dtype=object))

    # ------------------------------------------------------------------ status

    def status(self, query: Mapping[str, str] | None = None) -> dict:
        """The JSON behind the status page (see pipeline/static/status.html): the service's totals, a summary
        over all its stations, and one page of stations, worst skill first (stations without a score yet after
        them, by id). ``query``: ``q`` (id contains, any case), ``limit`` (default 50, at most 500), ``offset``.
        Only the page's stations are detailed, so a request stays small and fast at any fleet size."""
        q, limit, offset = _page(query or {})
        t = self.totals
        with self._lock:
            service = {
                "started_at": t.started_at, "ready": self.ready, "model": self.model_info.tag, "lag": t.lag,
                "readings": t.consumed, "accepted": t.accepted, "rejected": t.rejected, "forecasts": t.forecasts,
                "errors_scored": t.errors_scored, "store_up": self.store.up, **self._skill_status(self._main_lane()),
                "models": self._models_status(),
                "unserved": [{"station": st, "cadence_s": round(c), "reason": self._unserved_reason(c)}
                             for st, c in sorted(self.router.unserved.items())],
            }
            names = np.asarray(list(self._recent), dtype=object)
        router = self.router
        lanes = [router.step_of(s) for s in names.tolist()]
        m, pm, dm = (np.array([np.nan if lane is None else getattr(lane.skill, f"station_{n}").get(s, np.nan)
                               for s, lane in zip(names.tolist(), lanes, strict=True)], dtype=np.float64)
                     for n in TRACKED)
        skill = skill_vs_best(m, pm, dm)
        with np.errstate(divide="ignore", invalid="ignore"):
            skill_p = np.where(pm > 0, 1 - m / pm, np.nan)
        ready = np.zeros(len(names), dtype=bool)
        lane_ids = np.array([id(lane) for lane in lanes], dtype=np.int64)
        for step in router.lanes.values():  # one vectorized call per lane
            idx = np.flatnonzero(lane_ids == id(step))
            if len(idx):
                ready[idx] = step.ring.ready(names[idx])
        match = np.ones(len(names), dtype=bool)
        if q:
            match = pd.Series(names, dtype=object).str.contains(q, case=False, regex=False).to_numpy(dtype=bool)
        scored = ~np.isnan(skill)
        # Worst first: skill ascending; unscored stations after the scored ones, by id.
        idx = np.flatnonzero(match)
        order = idx[np.lexsort((names[idx].astype(str), np.where(scored[idx], skill[idx], np.inf)))]
        page = order[offset:offset + limit]
        summary = {
            "stations": len(names), "ready": int(ready.sum()), "scored": int(scored.sum()),
            "behind_persistence": int((skill_p < 0).sum()), "behind_baseline": int((skill < 0).sum()),
            "matched": len(idx), "q": q, "offset": offset,
            "limit": limit,
        }
        with self._lock:
            recent = {s: list(self._recent.get(s, ())) for s in names[page].tolist()}
            latest = {s: self._latest_forecast.get(s) for s in names[page].tolist()}
        stations = []
        for i in page.tolist():
            s = names[i]
            points, fc = recent[s], latest[s]
            tag, cadence = self.model_of(s)
            stations.append({
                "station": s, "cadence_s": cadence, "model": tag, "ready": bool(ready[i]),
                "last_reading_ts": int(points[-1][0]) if points else None,
                "model_version": fc["model_version"] if fc else None,
                "recent": {"ts": [int(p[0]) for p in points], "T": [_num(p[1]) for p in points]},
                "forecast": None if fc is None else {
                    "issue_ts": fc["issue_ts"], "target_ts": fc["target_ts"], "value": fc["values"],
                    "lo": fc.get("lo"), "hi": fc.get("hi"),
                },
                "mae": _num(m[i]), "persistence_mae": _num(pm[i]), "diurnal_mae": _num(dm[i]),
                "skill": _num(skill[i]), "skill_vs_persistence": _num(skill_p[i]),
            })
        return {"service": service, "summary": summary, "stations": stations}

    def _models_status(self) -> list[dict]:
        """Per cadence served: its champion, its horizons in time and how many stations it serves."""
        out = []
        for cadence, stations in sorted(self.router.served().items()):
            step = self.router.lanes[cadence]
            own = step.models.stations
            out.append({
                "cadence_s": cadence, "cadence": describe(cadence), "model": step.models.fleet.info.tag,
                "horizons": [horizon_label(int(h), cadence) for h in step.card.model.horizons],
                "stations": sum(1 for s in stations if s not in own),
                "station_models": sum(1 for s in stations if s in own),
                "scores": self._skill_status(step),
            })
        return out

    def _unserved_reason(self, seconds: float) -> str:
        have = ", ".join(describe(c) for c in self.router.cadences)
        return f"reports every {describe(seconds)}; no champion at that cadence (served: {have})"

    def _main_lane(self) -> Step:
        """The lane whose scores head the status page: the hourly one, unless it serves no station and another
        lane does (a replay of 10-minute stations only)."""
        served = self.router.served()
        if served.get(self.card.cadence_s) or not any(served.values()):
            return self.step
        return self.router.lanes[max(served, key=lambda c: len(served[c]))]

    def _skill_status(self, step: Step) -> dict:
        """Fleet rolling MAE of the model and both baselines, skill against the better one, and per horizon the
        same with the band's coverage (the status page's scores table), of one lane (each lane's are under
        ``models``: horizons of different cadences are different forecasts; the top is :meth:`_main_lane`'s)."""
        sk, hs, cadence = step.skill, step.horizon_skill, step.card.cadence_s
        m, p, d = sk.maes()
        horizons = []
        for h in hs.horizons():
            hm, hp, hd = (hs.mae[n].get(h, np.nan) for n in TRACKED)
            horizons.append({"horizon": h, "minutes": h * cadence // 60, "label": horizon_label(h, cadence),
                             "mae": _num(hm), "persistence_mae": _num(hp), "diurnal_mae": _num(hd),
                             "skill": _num(skill_vs_best(hm, hp, hd)), "coverage": _num(hs.coverage.get(h))})
        return {
            "rolling_mae": _num(m), "rolling_persistence_mae": _num(p), "rolling_diurnal_mae": _num(d),
            "best_baseline": None if np.isnan(np.fmin(p, d)) else ("diurnal" if d < p else "persistence"),
            "skill": _num(sk.skill()), "skill_vs_persistence": _num(sk.skill_vs_persistence()),
            "band_coverage": _num(hs.coverage_all), "band_nominal": step.calibrator.config.coverage,
            "band_calibrated_stations": step.calibrator.stations_calibrated, "horizons": horizons,
        }

    def _release_idle(self) -> None:
        """Stations silent for ``station_idle_s`` (wall clock) leave the status page and free their metric
        label slots and rolling scores, so ids that came once (or stations retired) do not hold them forever.
        Their windows stay: a station that comes back continues where it stopped."""
        idle_s = self.cfg.station_idle_s
        now = time.time()
        if idle_s <= 0 or now - self._swept < min(60.0, idle_s / 4):
            return
        self._swept = now
        with self._lock:
            idle = [s for s, seen in self._last_seen.items() if now - seen > idle_s]
            for s in idle:
                self._last_seen.pop(s, None)
                self._recent.pop(s, None)
                self._latest_forecast.pop(s, None)
        if not idle:
            return
        self.router.release(idle)
        self.metrics.release_stations(idle)
        self.metrics.stations_released.inc(len(idle))
        log.info("%d stations silent for %.0f s released from the status page and metric labels", len(idle), idle_s)


STATUS_PAGE_MAX = 500


def _page(query: Mapping[str, str]) -> tuple[str, int, int]:
    """``q``, ``limit``, ``offset`` of a status request; a bad value raises ValueError (HTTP 400)."""
    q = str(query.get("q", "")).strip()[:200]
    try:
        limit = int(query.get("limit", 50))
        offset = int(query.get("offset", 0))
    except (TypeError, ValueError) as exc:
        raise ValueError("limit and offset must be integers") from exc
    if limit < 1 or offset < 0:
        raise ValueError("limit must be >= 1 and offset >= 0")
    return q, min(limit, STATUS_PAGE_MAX), offset


def flatten_poll(records: dict) -> tuple[list, list, np.ndarray, np.ndarray]:
    """A kafka-python poll result as flat values, keys, partitions and offsets, in partition order."""
    raw, keys, parts, offsets = [], [], [], []
    for tp, msgs in records.items():
        raw += [m.value for m in msgs]
        keys += [m.key for m in msgs]
        parts += [tp.partition] * len(msgs)
        offsets += [m.offset for m in msgs]
    return raw, keys, np.asarray(parts), np.asarray(offsets)


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


class _Rebalance(ConsumerRebalanceListener):
    """Called by kafka-python (possibly on its own I/O thread): only queues the change for the loop."""

    def __init__(self, service: Service):
        self.service = service

    def on_partitions_revoked(self, revoked) -> None:
        if revoked:
            self.service._rebalances.append(("revoked", [tp.partition for tp in revoked]))

    def on_partitions_assigned(self, assigned) -> None:
        self.service.metrics.rebalances.inc()
        if assigned:
            self.service._rebalances.append(("assigned", [tp.partition for tp in assigned]))
