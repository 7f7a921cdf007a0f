"""Online conformal calibration of the forecast band (conformalized quantile regression, CQR).

The model's P10-P90 band is only as honest as its training: on a station it never saw, or after the
weather changes regime, it covers more or less than 80 % of actuals. Each scored forecast yields a
conformity score ``max(lo - y, y - hi)`` against the model's raw band (negative inside it, the distance
outside otherwise). The next band of the same station and horizon is widened (or narrowed, when the
quantile is negative) by the finite-sample ``coverage`` quantile of that station's recent scores, so
its coverage converges to ``coverage`` whatever the model's band was. Until a station has
``min_scores`` of its own, the fleet's scores at that horizon are used (pooled from the rings of up to
``fleet_stations`` stations, a fixed pseudo-random sample by a hash of their ids), and before the pool
holds ``fleet_min_scores`` the model's band is published as is.

What remains is a shortfall where misses come in runs (a cold spell): the quantile of a finite window of
autocorrelated scores covers less than its level on average, and most at the stations whose weather persists.
So the level itself follows each station's own record (``feedback``): it is the nominal coverage plus
``feedback`` times how far the station's published band fell short of it over the same ring's forecasts
(lowered where it covered more), bounded to ``[min_level, max_level]`` and rounded to ``level_step``.

Everything is a function of each station's own newest scores and hits, so the service rebuilds the state
exactly from the stored errors (``band_score``, ``covered``) after a restart (the newest
:attr:`BandCalibrator.history` per station and horizon). Which of the fleet's scores exist when a new station's
first forecasts go out depends on how far the other stations have got, so those first bands can differ between
two runs; a station's own bands cannot, which is why only hits of bands certainly its own are counted.

Why 480 scores (20 days of an hourly station) and a feedback of 3 by default (docs/loso.md): replayed over the
unseen stations' years before their test spans, 240 scores covered 79.1 %, 480 covered 79.7 %, but a station
just joined still fell below 77 % at some horizon in 118 of 192 station-horizons (a piece of 55 days); with the
feedback 45 at a gain of 1, 8 at 3 (and at 4; 11 at 5), and the mean coverage 80.0 %. Weighting recent scores
more (a half-life of 120 or 240 scores) moved coverage by 0.05 points or less, so scores weigh equally.

State: a ring of the last ``window`` scores per (station, horizon) in float32 beside a ring of its hits in int8
(24 horizons x 480 forecasts are 56 KiB a station; 10,000 stations about 550 MiB) and a running tally of those
hits; the offsets of the (station, horizon) pairs a batch scored are recomputed by one sort of their rings, the
fleet's only when a station without enough scores of its own asks, so adjusting a batch of forecasts is a
gather.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class CalibrationConfig:
    """The calibrator's settings and their defaults; the service's ``band_*`` settings default to these."""

    coverage: float = 0.8  # nominal coverage of the band (P10-P90)
    window: int = 480  # recent scores kept per (station, horizon); 0 disables calibration (docs/loso.md: why 480)
    min_scores: int = 48  # a station's own scores needed before they replace the fleet's
    fleet_stations: int = 256  # stations whose scores are pooled for the fleet's offsets
    fleet_min_scores: int = 48  # pooled scores needed before the model's raw band is adjusted at all
    feedback: float = 3.0  # gain on a station's own published-band miss rate; 0: the plain conformal quantile
    min_level: float = 0.6  # bounds of the quantile level feedback may ask for
    max_level: float = 0.97
    level_step: float = 0.005  # levels are rounded to this (from when rings were grouped by level for partial sorts;
    # the defaults were chosen with it, docs/loso.md)


def conformity_scores(lo: np.ndarray, hi: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """CQR's score: how far the actual lies outside [lo, hi] (negative: how deep inside); NaN without a band."""
    return np.maximum(np.asarray(lo, dtype=np.float64) - actual, actual - np.asarray(hi, dtype=np.float64))


def conformal_quantile(scores: np.ndarray, coverage: float, axis: int = -1) -> np.ndarray:
    """The finite-sample conformal quantile along ``axis`` ignoring NaN: the ceil((n+1) * coverage)-th smallest
    score (the largest when that exceeds n), which guarantees ``coverage`` on exchangeable data."""
    s = np.sort(np.asarray(scores, dtype=np.float64), axis=axis)  # NaN sort last
    n = (~np.isnan(s)).sum(axis=axis)
    k = np.clip(np.ceil((n + 1) * coverage).astype(np.int64), 1, np.maximum(n, 1)) - 1
    out = np.take_along_axis(s, np.expand_dims(k, axis), axis=axis).squeeze(axis)
    return np.where(n > 0, out, np.nan)


def quantile_by_count(rows: np.ndarray, filled: np.ndarray, coverage: float | np.ndarray) -> np.ndarray:
    """:func:`conformal_quantile` of each row (NaN last, ``filled`` values each) at ``coverage``, one level or one
    per row. One sort of all rows: numpy's vectorized sort of float32 rows is faster than partial sorts, even a
    single one (24,000 rings of 480 scores: 20 ms, partitioned at one rank 25 ms, at 30 distinct ranks 32 ms)."""
    filled = np.asarray(filled, dtype=np.int64)
    level = np.broadcast_to(np.asarray(coverage, dtype=np.float64), filled.shape)
    rank = np.clip(np.minimum(np.ceil((filled + 1) * level).astype(np.int64), filled) - 1, 0, None)
    out = np.take_along_axis(np.sort(rows, axis=1), rank[:, None], axis=1)[:, 0].astype(np.float64)
    return np.where(filled > 0, out, np.nan)


@dataclass
class BandCalibrator:
    """Per (station, horizon) band offsets from realized conformity scores (see the module doc).

    The rings of all stations live in one array [stations, horizons, window] (grown by doubling; a forgotten
    station's row is reused), so a batch of scores is pushed and the touched offsets recomputed with numpy."""

    horizons: tuple[int, ...]
    config: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        self._h = np.asarray(self.horizons, dtype=np.int64)
        self._index: dict[str, int] = {}
        self._free: list[int] = []
        self._grow(64)
        self._fleet_offset: np.ndarray | None = None  # [H]; None: to recompute
        self._calibrated = 0
        self._pool: list[int] | None = None  # rows pooled for the fleet; None: to recompute

    def _grow(self, capacity: int) -> None:
        h, w = len(self._h), max(self.config.window, 1)
        old = getattr(self, "_scores", None)
        # float32: float16 would round two runs' scores, a few float32 ulps apart, to different steps (0.008 °C).
        scores = np.full((capacity, h, w), np.nan, dtype=np.float32)
        hits = np.full((capacity, h, w), -1, dtype=np.int8)  # 1/0: inside/outside the published band; -1: unknown
        tally = np.zeros((capacity, h, 2), np.int64)  # per ring: hits, and hits + misses (known)
        head, count = np.zeros((capacity, h), np.int64), np.zeros((capacity, h), np.int64)
        offset = np.full((capacity, h), np.nan)
        if old is not None:
            n = len(old)
            scores[:n], hits[:n], tally[:n] = old, self._hits, self._tally
            head[:n], count[:n], offset[:n] = self._head, self._count, self._offset
            self._free += list(range(capacity - 1, n - 1, -1))
        else:
            self._free = list(range(capacity - 1, -1, -1))
        self._scores, self._hits, self._tally = scores, hits, tally
        self._head, self._count, self._offset = head, count, offset

    def _rows(self, stations: np.ndarray, register: bool) -> np.ndarray:
        """Row of each station (-1: unknown and not registered); one dict lookup per distinct station."""
        inverse, uniq = pd.factorize(np.asarray(stations, dtype=object))
        rows = np.empty(len(uniq), dtype=np.int64)
        for i, s in enumerate(uniq.tolist()):
            row = self._index.get(s)
            if row is None and register:
                if not self._free:
                    self._grow(2 * len(self._scores))
                row = self._index[s] = self._free.pop()
                self._pool = None
            rows[i] = -1 if row is None else row
        return rows[inverse]

    @property
    def hits_after(self) -> int:
        """A (station, horizon)'s first scores whose hits are not counted: until the station had its own band.
        Its forecast for horizon h was issued h steps before it was scored, when up to h fewer of its scores had
        been learnt (and a late reading may be learnt a step or two after its slot); twice the longest horizon
        covers both."""
        return min(self.config.min_scores, self.config.window) + 2 * int(self._h.max())

    @property
    def history(self) -> int:
        """The newest scores per (station, horizon) that rebuild its state exactly: its ring and, before that,
        enough to know which of the ring's hits count (:attr:`hits_after`)."""
        return self.config.window + self.hits_after

    @property
    def enabled(self) -> bool:
        return self.config.window > 0

    def update(self, station: np.ndarray, horizon: np.ndarray, scores: np.ndarray,
               hits: np.ndarray | None = None) -> None:
        """Learn from scored forecasts, in arrival order: ``scores`` are conformity scores against the model's
        raw band, ``hits`` whether each actual fell inside the band published then (1/0; NaN or None: unknown).
        A batch longer than the window keeps each ring's newest scores."""
        if not self.enabled:
            return
        scores = np.asarray(scores, dtype=np.float64)
        hits = np.full(len(scores), np.nan) if hits is None else np.asarray(hits, dtype=np.float64)
        hits = np.where(np.isnan(hits), -1, hits > 0).astype(np.int8)
        horizon = np.asarray(horizon)
        hidx = np.searchsorted(self._h, horizon)
        ok = np.isfinite(scores) & (hidx < len(self._h))
        ok[ok] = self._h[hidx[ok]] == horizon[ok]
        if not ok.any():
            return
        n_h, w = len(self._h), self.config.window
        rows = self._rows(np.asarray(station, dtype=object)[ok], register=True)
        key = rows * n_h + hidx[ok]
        order = np.argsort(key, kind="stable")
        key, sc, hit = key[order], scores[ok][order], hits[ok][order]
        ukeys, starts, counts = np.unique(key, return_index=True, return_counts=True)
        rank = np.arange(len(key)) - np.repeat(starts, counts)
        keep = rank >= np.repeat(counts, counts) - w
        flat_scores, flat_hits = self._scores.reshape(-1, w), self._hits.reshape(-1, w)
        head, count = self._head.reshape(-1), self._count.reshape(-1)
        slot = (head[key] + rank) % w
        flat_scores[key[keep], slot[keep]] = sc[keep]
        # A hit counts only where the band was certainly the station's own (enough of its scores learnt before the
        # forecast was issued): a band borrowed from the fleet depends on the other stations' progress, and the
        # station's own bands must not (restarts rebuild them exactly).
        hit[count[key] + rank < self.hits_after] = -1
        kk, ks, new = key[keep], slot[keep], hit[keep]
        old = flat_hits[kk, ks]
        np.add.at(self._tally.reshape(-1, 2), kk, np.c_[(new == 1).astype(np.int64) - (old == 1),
                                                          (new >= 0).astype(np.int64) - (old >= 0)])
        flat_hits[kk, ks] = new
        head[ukeys] = (head[ukeys] + counts) % w
        count[ukeys] += counts
        filled = np.minimum(count[ukeys], w)
        own = ukeys[filled >= min(self.config.min_scores, w)]
        offset = self._offset.reshape(-1)
        offset[ukeys] = np.nan
        levels = self._levels(self._tally.reshape(-1, 2)[own])
        offset[own] = quantile_by_count(flat_scores[own], np.minimum(count[own], w), levels)
        self._fleet_offset = None
        self._count_calibrated()

    def _levels(self, tally: np.ndarray) -> np.ndarray:
        """The quantile level of each ring (``tally``: its hits and known forecasts): the nominal coverage plus
        ``feedback`` times how far the station's published band fell short of it over the ring's forecasts (once
        ``min_scores`` of them are known), bounded and rounded. The plain quantile leaves a shortfall where scores
        come in runs (docs/loso.md)."""
        cfg = self.config
        level = np.full(len(tally), cfg.coverage)
        use = tally[:, 1] >= min(cfg.min_scores, cfg.window)
        if cfg.feedback and use.any():
            rate = tally[use, 0] / tally[use, 1]
            level[use] = cfg.coverage + cfg.feedback * (cfg.coverage - rate)
            level = np.clip(np.round(level / cfg.level_step) * cfg.level_step, cfg.min_level, cfg.max_level)
        return level

    def offsets(self, stations: np.ndarray) -> np.ndarray:
        """[N, H] widening per station and horizon: the station's own where it has enough scores, else the
        fleet's, else 0 (the model's band)."""
        if not self.enabled:
            return np.zeros((len(stations), len(self._h)))
        rows = self._rows(stations, register=False)
        out = np.where((rows >= 0)[:, None], self._offset[np.maximum(rows, 0)], np.nan)
        missing = np.isnan(out)
        if missing.any():
            out[missing] = np.broadcast_to(np.nan_to_num(self.fleet_offsets(), nan=0.0), out.shape)[missing]
        return out

    def fleet_offsets(self) -> np.ndarray:
        """[H] the conformal quantile of the pooled scores of the sampled stations; NaN where too few."""
        if self._fleet_offset is None:
            cfg = self.config
            if self._pool is None:
                self._pool = [self._index[s] for s in sorted(self._index, key=_sample_rank)[:cfg.fleet_stations]]
            out = np.full(len(self._h), np.nan)
            if self._pool:
                pooled = self._scores[self._pool].transpose(1, 0, 2).reshape(len(self._h), -1)
                for j, row in enumerate(pooled):  # one partial sort per horizon
                    row = row[~np.isnan(row)]
                    if len(row) >= cfg.fleet_min_scores:
                        out[j] = quantile_by_count(row[None, :], np.array([len(row)]), cfg.coverage)[0]
            self._fleet_offset = out
        return self._fleet_offset

    def adjust(self, stations: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
        """Calibrated ``lo``, ``hi`` ([N, H] each, horizons as constructed) and the offsets applied. A negative
        offset narrows the band, never past its midpoint."""
        q = self.offsets(stations)
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        q = np.maximum(q, -(hi - lo) / 2)
        return lo - q, hi + q, q

    def forget(self, stations: list[str]) -> None:
        for s in stations:
            row = self._index.pop(s, None)
            if row is None:
                continue
            self._scores[row], self._hits[row], self._tally[row] = np.nan, -1, 0
            self._head[row], self._count[row], self._offset[row] = 0, 0, np.nan
            self._free.append(row)
            self._pool = self._fleet_offset = None
        self._count_calibrated()

    def summary(self) -> dict[int, float]:
        """The fleet offset per horizon (NaN until enough scores), for the status page and metrics."""
        return {int(h): float(q) for h, q in zip(self._h.tolist(), self.fleet_offsets().tolist(), strict=True)}

    @property
    def stations_calibrated(self) -> int:
        """Stations whose band uses their own scores at one horizon at least (kept current by the loop thread, so
        the status page reads it without touching the arrays)."""
        return self._calibrated

    def _count_calibrated(self) -> None:
        self._calibrated = int((~np.isnan(self._offset)).any(axis=1).sum())


def _sample_rank(station: str) -> int:
    """A stable pseudo-random rank of a station id (the same in every process, unlike ``hash``)."""
    return zlib.crc32(station.encode())


def band_hits(lo: np.ndarray, hi: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """1.0 where the actual is inside [lo, hi], 0.0 outside, NaN where there was no band."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    inside = ((actual >= lo) & (actual <= hi)).astype(np.float64)
    return np.where(np.isnan(lo) | np.isnan(hi), np.nan, inside)

