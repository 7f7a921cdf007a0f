"""One streaming step: a batch of polled messages in, what should happen out. No Kafka, no SQL, no metrics.

    step = Step(models, StepConfig.of(service_config))   # holds only the rolling state
    out = step(values, keys, partitions, offsets)         # -> StepResult

The state is the per-station ring of recent readings (:mod:`pipeline.ring`), the forecasts waiting for their
actuals (:class:`pipeline.scoring.Scoreboard`), the rolling skill (overall and per horizon) and the band
calibration (:mod:`pipeline.calibration`). A step parses the messages (valid readings
and dead letters), puts the readings in the ring, scores the pending forecasts they complete, forecasts every
station whose window advanced (beside persistence and diurnal persistence, its P10-P90 band conformally
calibrated), and drops pending forecasts that can no longer be scored. Its result says what the
service must store, publish and count: readings, dead letters, forecast rows and messages, scored errors, counts
and the seconds each stage took. The service (:mod:`pipeline.service`) is the adapter around it: poll -> step ->
store -> publish -> commit. Unit tests and benchmarks run a step without a broker or a database.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pandas as pd

from forecaster.artifact import ModelCard
from forecaster.predict import Forecast
from pipeline.calibration import BandCalibrator, CalibrationConfig
from pipeline.readings import SENSOR_INDEX, DeadLetter, ReadingBatch, parse_readings
from pipeline.ring import Outcome, RollingWindows, WindowConfig
from pipeline.scoring import HorizonSkill, RollingSkill, Scoreboard, diurnal_baseline, season_of
from pipeline.serving import ServingModels

T_INDEX = SENSOR_INDEX["T"]
NO_TIME = np.iinfo(np.int64).min
STAGES = ("parse", "ring", "score", "forecast")  # the step's stages; the service adds store and publish


@dataclass(frozen=True)
class StepConfig:
    """The step's settings, always taken from :class:`pipeline.config.ServiceConfig` (:meth:`of`), which holds
    their defaults and their meaning; no copy of them here."""

    lateness_steps: int
    max_fill_steps: int
    max_future_s: int
    band_window: int
    band_min_scores: int
    band_feedback: float

    @classmethod
    def of(cls, cfg) -> StepConfig:
        """The step's part of a :class:`pipeline.config.ServiceConfig`."""
        return cls(cfg.lateness_steps, cfg.max_fill_steps, cfg.max_future_s, cfg.band_window, cfg.band_min_scores,
                   cfg.band_feedback)

    def calibration(self) -> CalibrationConfig:
        """The band calibrator's settings (the service's and the benchmarks' replay of it)."""
        return CalibrationConfig(window=self.band_window, min_scores=self.band_min_scores,
                                 feedback=self.band_feedback)


@dataclass
class ForwardPass:
    """One batched forward pass: the stations it forecast and their issue times, the forecast, how long it took
    and when it ended (wall clock)."""

    stations: np.ndarray
    issue_ts: np.ndarray
    forecast: Forecast
    seconds: float
    done_at: float
    cadence_s: int = 3600


@dataclass
class StepResult:
    """What one step decided. ``readings`` is None for a replay of readings the store already holds."""

    arrived: float
    readings: ReadingBatch | None = None
    dead: list[DeadLetter] = field(default_factory=list)
    consumed: int = 0
    ring: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "duplicate": 0, "late": 0})
    not_ready: int = 0
    unserved: int = 0  # readings of stations whose cadence no champion serves (stored, not forecast)
    expired: int = 0
    forecast_frames: list[pd.DataFrame] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)  # one per station forecast, keyed by its "station"
    passes: list[ForwardPass] = field(default_factory=list)
    error_frames: list[pd.DataFrame] = field(default_factory=list)
    actual_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # station, ts, T
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def accepted(self) -> int:
        return 0 if self.readings is None else len(self.readings)

    @property
    def forecasts(self) -> pd.DataFrame:
        """Forecast rows (one per station, issue time and horizon), as the store keeps them."""
        return pd.concat(self.forecast_frames, ignore_index=True) if self.forecast_frames else pd.DataFrame()

    @property
    def errors(self) -> pd.DataFrame:
        return pd.concat(self.error_frames, ignore_index=True) if self.error_frames else pd.DataFrame()

    @property
    def actuals(self) -> pd.DataFrame:
        """Station, ts and T of the readings the ring accepted (the status page's recent actuals)."""
        if not self.actual_parts:
            return pd.DataFrame({"station": [], "ts": [], "T": []})
        st, ts, t = (np.concatenate(c) for c in zip(*self.actual_parts, strict=True))
        return pd.DataFrame({"station": st, "ts": ts, "T": t})



def parse_batch(values: Sequence, keys: Sequence, partitions: np.ndarray, offsets: np.ndarray, max_future_s: float,
                arrived: float | None = None, now=None) -> StepResult:
    """The parse stage every step starts with: readings and dead letters of one polled batch, timed."""
    out = StepResult(arrived=time.time() if arrived is None else arrived, consumed=len(values))
    started = time.perf_counter()
    out.readings, out.dead = parse_readings(values, keys, partitions, offsets, now=now,
                                            max_future=timedelta(seconds=max_future_s))
    out.stages["parse"] += time.perf_counter() - started
    return out


class Step:
    """The rolling state of the data path and the function that advances it by one batch."""

    def __init__(self, models: ServingModels, cfg: StepConfig, initial_stations: int = 64):
        self.models, self.cfg = models, cfg
        self.skill = RollingSkill()
        self.horizon_skill = HorizonSkill()
        self.calibrator: BandCalibrator | None = None  # set by use() (it needs the card's horizons)
        self.scoreboard = Scoreboard()
        self.ring: RollingWindows | None = None
        self._initial_stations = initial_stations
        self.use(models.fleet.card)

    def use(self, card: ModelCard) -> None:
        """Serve ``card``'s layout: the first call builds the ring; a later one (a new champion) must fit it."""
        features = list(card.data.features)
        unknown = [f for f in features if f not in SENSOR_INDEX]
        if unknown:
            raise ValueError(f"the model uses sensors {unknown} that readings cannot carry")
        wcfg = WindowConfig(
            lookback=card.data.lookback, n_sensors=len(features), cadence_s=card.cadence_s,
            lateness_steps=self.cfg.lateness_steps, max_fill_steps=self.cfg.max_fill_steps,
            initial_stations=self.ring.config.initial_stations if self.ring is not None else self._initial_stations,
        )
        if self.ring is not None and self.ring.config != wcfg:
            raise ValueError(f"needs different windows ({wcfg}); restart the service")
        if self.ring is None:
            self.ring = RollingWindows(wcfg)
        self.card = card
        self.feature_index = np.array([SENSOR_INDEX[f] for f in features])
        self.season = season_of(card)
        horizons = tuple(int(h) for h in card.model.horizons)
        if self.calibrator is None or self.calibrator.horizons != horizons:  # a new champion keeps the scores
            self.calibrator = BandCalibrator(horizons, self.cfg.calibration())

    # ------------------------------------------------------------------ the step

    def __call__(self, values: Sequence, keys: Sequence, partitions: np.ndarray, offsets: np.ndarray,
                 arrived: float | None = None, now=None) -> StepResult:
        """One polled batch: message values, keys, partitions and offsets (in poll order). ``now``: the wall clock
        that readings from the future are judged by (default: the real one)."""
        out = parse_batch(values, keys, partitions, offsets, self.cfg.max_future_s, arrived, now)
        batch = out.readings
        if len(batch):
            self._rounds(batch.station, batch.time.astype("datetime64[s]").astype(np.int64), batch.values, out)
        return out

    def feed(self, station: np.ndarray, ts: np.ndarray, values: np.ndarray, out: StepResult) -> None:
        """Parsed readings (``values`` in :data:`SENSORS` order, ``ts`` in seconds) through the rounds, into
        ``out``: how :class:`pipeline.lanes.CadenceRouter` hands a lane its stations' readings."""
        if len(station):
            self._rounds(station, ts, values, out)

    def replay(self, station: np.ndarray, ts: np.ndarray, values: np.ndarray, restored: np.ndarray | None = None,
               band_scores: Mapping[int, pd.DataFrame] | None = None, arrived: float | None = None) -> StepResult:
        """Readings the store already holds (``values`` in :data:`SENSORS` order) through the same rounds: after a
        restart, the ones accepted before a crash but never forecast. ``restored``: stations just restored, whose
        pending forecasts are checked for expiry too. ``band_scores``: stored band scores learnt just before the
        round (of :func:`rank_within_station` over these readings; -1: after the last) that scored them live."""
        out = StepResult(arrived=time.time() if arrived is None else arrived)
        band_scores = band_scores or {}
        if len(station):
            self._rounds(station, ts, values, out, band_scores)
        self.learn_band(band_scores.get(-1))
        if restored is not None:
            out.expired += self._expire(restored)
        return out

    def _rounds(self, station: np.ndarray, ts: np.ndarray, values: np.ndarray, out: StepResult,
                band_scores: Mapping[int, pd.DataFrame] | None = None) -> None:
        # A backlog brings many readings per station in one poll; every one of them is a due window. Round k holds
        # each station's k-th reading in time order, so a station advances at most once per round and all
        # stations due in a round share one forward pass (live traffic: a single round). Stations that cannot
        # have a window ready anywhere in the batch, nor a forecast waiting, skip the rounds: nothing is due.
        expire = pd.unique(station)
        rank = rank_within_station(station, ts)  # of every reading: stored band scores are keyed by it
        rounds = int(rank.max()) + 1
        quiet = ~self.ring.may_become_ready(station, ts)
        if quiet.any() and len(self.scoreboard):
            quiet &= ~self.scoreboard.has_pending(station)
        if quiet.any():
            self._quiet(station[quiet], ts[quiet], values[quiet], out)
            station, ts, values, rank = station[~quiet], ts[~quiet], values[~quiet], rank[~quiet]
        for k in range(rounds):
            if band_scores:
                self.learn_band(band_scores.get(k))
            sel = np.flatnonzero(rank == k)
            if len(sel):
                self._round(station[sel], ts[sel], values[sel], out)
        started = time.perf_counter()
        out.expired += self._expire(expire)
        out.stages["score"] += time.perf_counter() - started

    def _quiet(self, station: np.ndarray, ts: np.ndarray, values: np.ndarray, out: StepResult) -> None:
        """Readings of stations that no forecast can come from in this batch, into the ring at once, in time order
        per station (so outcomes match the rounds: the earliest reading of a slot wins, and the grid phase comes
        from the earliest one). Every accepted reading past the newest slot is a window advanced but not ready."""
        t0 = time.perf_counter()
        order = np.lexsort((ts, pd.factorize(station)[0]))
        station, ts, values = station[order], ts[order], values[order]
        newest = self.ring.newest_time(station)
        result = self.ring.add(station, ts, values[:, self.feature_index])
        out.ring["accepted"] += result.accepted
        out.ring["duplicate"] += result.duplicate
        out.ring["late"] += result.late
        fresh = result.outcome == Outcome.ACCEPTED
        slot_ts = self.ring.slot_time(station[fresh], self.ring.slot_of(station[fresh], ts[fresh]))
        out.not_ready += int((slot_ts > newest[fresh]).sum())
        if fresh.any():
            out.actual_parts.append((station[fresh], ts[fresh], values[fresh, T_INDEX]))
        out.stages["ring"] += time.perf_counter() - t0

    def _round(self, station: np.ndarray, ts: np.ndarray, values: np.ndarray, out: StepResult) -> None:
        t0 = time.perf_counter()
        result = self.ring.add(station, ts, values[:, self.feature_index])
        out.ring["accepted"] += result.accepted
        out.ring["duplicate"] += result.duplicate
        out.ring["late"] += result.late
        out.not_ready += result.not_ready
        fresh = result.outcome == Outcome.ACCEPTED
        if fresh.any():
            out.actual_parts.append((station[fresh], ts[fresh], values[fresh, T_INDEX]))
        t1 = time.perf_counter()
        self._score(station[fresh], ts[fresh], values[fresh, T_INDEX], out)
        t2 = time.perf_counter()
        self._forecast(np.asarray(result.advanced, dtype=object), out)
        t3 = time.perf_counter()
        out.stages["ring"] += t1 - t0
        out.stages["score"] += t2 - t1
        out.stages["forecast"] += t3 - t2

    def _score(self, station: np.ndarray, ts: np.ndarray, actual: np.ndarray, out: StepResult) -> None:
        if not len(station) or not len(self.scoreboard):
            return
        slot_ts = self.ring.slot_time(station, self.ring.slot_of(station, ts))
        errors = self.scoreboard.match(station, slot_ts, actual)
        if errors.empty:
            return
        self.skill.update(errors)
        self.horizon_skill.update(errors)
        self.calibrator.update(errors["station"].to_numpy(), errors["horizon"].to_numpy(),
                               errors["band_score"].to_numpy(), errors["covered"].to_numpy())
        out.error_frames.append(errors)

    def learn_band(self, scored: pd.DataFrame | None) -> None:
        """Stored band scores (a rebuild after a restart or rebalance) into the calibration."""
        if scored is not None and len(scored):
            self.calibrator.update(scored["station"].to_numpy(), scored["horizon"].to_numpy(),
                                   scored["band_score"].to_numpy(), scored["covered"].to_numpy())

    def _forecast(self, stations: np.ndarray, out: StepResult) -> None:
        """One batched forward pass for every station whose window advanced."""
        if not len(stations):
            return
        values, origin = self.ring.windows(stations)
        started = time.perf_counter()
        raw, tags = self.models.predict(stations, values, origin)
        seconds = time.perf_counter() - started
        card = self.card
        fc = Forecast(raw, card.model.horizons, card.model.quantiles, card.model.median_index)
        horizons = np.asarray(fc.horizons, dtype=np.int64)
        n, h = len(stations), len(horizons)
        target = values[:, :, list(card.data.features).index(card.data.target)].astype(np.float64)
        persistence = target[:, -1]
        diurnal = diurnal_baseline(target, horizons, self.season)
        lo = hi = offset = None
        if fc.quantiles:  # the published band: the model's outer quantiles, conformally calibrated per station
            lo, hi, offset = self.calibrator.adjust(stations, fc.values[..., 0], fc.values[..., -1])
            fc.values[..., 0], fc.values[..., -1] = lo, hi  # the exported quantile gauges show the same band
        targets = origin[:, None] + horizons[None, :] * card.cadence_s
        columns = {
            "station": np.repeat(stations, h),
            "issue_ts": np.repeat(origin, h),
            "horizon": np.tile(horizons, n),
            "target_ts": targets.reshape(-1),
            "model_version": np.repeat(tags, h),
            "value": fc.point.reshape(-1).astype(np.float64),
            "persistence": np.repeat(persistence, h),
            "diurnal": diurnal.reshape(-1),
        }
        if lo is not None:
            columns |= {"lo": lo.reshape(-1), "hi": hi.reshape(-1), "band_offset": offset.reshape(-1)}
        frame = pd.DataFrame(columns)
        quantiles = list(fc.quantiles)
        for i, station in enumerate(stations.tolist()):  # one message per station forecast
            msg = {
                "station": station, "issue_ts": int(origin[i]), "model_version": tags[i], "cadence_s": card.cadence_s,
                "horizons": horizons.tolist(), "target_ts": targets[i].tolist(), "values": fc.point[i].tolist(),
                "persistence": float(persistence[i]), "diurnal": diurnal[i].tolist(),  # NaN: null
            }
            if quantiles:
                msg |= {"quantiles": quantiles, "lo": lo[i].tolist(), "hi": hi[i].tolist()}
            out.messages.append(msg)
        self.scoreboard.add(frame)
        out.forecast_frames.append(frame)
        out.passes.append(ForwardPass(stations, origin, fc, seconds, time.time(), card.cadence_s))

    def _expire(self, stations: np.ndarray) -> int:
        """Pending forecasts of ``stations`` whose target can no longer be scored leave the scoreboard."""
        if not len(stations):
            return 0
        floor = self.ring.newest_time(stations) - self.cfg.lateness_steps * self.card.cadence_s
        known = floor > NO_TIME // 2
        return self.scoreboard.expire_stations(stations[known], floor[known])

    # ------------------------------------------------------------------ state moves (rebalances)

    def forget(self, stations: np.ndarray) -> None:
        """Stations whose partitions went to another replica: their windows, pending forecasts and band scores go
        (a rebuild restores them from the store)."""
        self.ring.drop(stations)
        self.scoreboard.drop_stations(stations)
        self.calibrator.forget(list(stations))

    def release(self, stations: list[str]) -> None:
        """Stations silent for long: their rolling scores and band scores go; their windows stay (a station that
        comes back continues where it stopped)."""
        self.skill.forget(stations)
        self.calibrator.forget(stations)

    def restore(self, stations: np.ndarray, station: np.ndarray, ts: np.ndarray, features: np.ndarray,
                pending: pd.DataFrame) -> None:
        """Stations arriving in a rebalance: windows from stored readings (``features`` in the model's feature
        order, readings up to the last forecast) and the pending forecasts a reading could still score."""
        self.forget(stations)
        self.ring.rebuild(station, ts, features)
        self.scoreboard.add(pending)


def rank_within_station(station: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """For each reading, how many readings of the same station come before it in time within the batch."""
    codes, _ = pd.factorize(station)
    order = np.lexsort((ts, codes))
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - group_start
    return rank

