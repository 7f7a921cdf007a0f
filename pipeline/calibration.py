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

Everything is a function of each station's own newest scores, so the service rebuilds the state exactly
from the stored errors after a restart (the newest ``window`` per station and horizon). Which of the
fleet's scores exist when a new station's first forecasts go out depends on how far the other stations
have got, so those first bands can differ between two runs; a station's own bands cannot.

State: a ring of the last ``window`` scores per (station, horizon) in float32 (24 horizons x 96 scores
are 9 KiB a station; 10,000 stations about 90 MiB); a station's offsets are recomputed once per scored
batch and the fleet's only when a station without enough scores of its own asks, so adjusting a batch of
forecasts is a gather.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CalibrationConfig:
    coverage: float = 0.8  # nominal coverage of the band (P10-P90)
    window: int = 96  # recent scores kept per (station, horizon); 0 disables calibration
    min_scores: int = 48  # a station's own scores needed before they replace the fleet's
    fleet_stations: int = 256  # stations whose scores are pooled for the fleet's offsets
    fleet_min_scores: int = 48  # pooled scores needed before the model's raw band is adjusted at all


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


@dataclass
class _Ring:
    """The last ``size`` scores per horizon: [H, size] with NaN for slots not filled yet."""

    scores: np.ndarray
    head: np.ndarray  # [H] next slot to write
    count: np.ndarray  # [H] scores seen (saturates at size in effect)

    @classmethod
    def empty(cls, n_horizons: int, size: int) -> _Ring:
        return cls(np.full((n_horizons, size), np.nan, dtype=np.float32), np.zeros(n_horizons, np.int64),
                   np.zeros(n_horizons, np.int64))

    def push(self, h_index: np.ndarray, scores: np.ndarray) -> None:
        """Append scores (in arrival order) to their horizons' rings, vectorized over the batch."""
        size = self.scores.shape[1]
        order = np.argsort(h_index, kind="stable")
        hi, sc = h_index[order], scores[order]
        starts = np.r_[0, np.flatnonzero(np.diff(hi)) + 1]
        rank = np.arange(len(hi)) - np.repeat(starts, np.diff(np.r_[starts, len(hi)]))
        n_per = np.bincount(hi, minlength=len(self.head))
        keep = rank >= n_per[hi] - size  # a batch longer than the ring keeps its newest scores only
        slot = (self.head[hi] + rank) % size
        self.scores[hi[keep], slot[keep]] = sc[keep]
        self.head = (self.head + n_per) % size
        self.count += n_per

    def filled(self) -> np.ndarray:
        return np.minimum(self.count, self.scores.shape[1])


@dataclass
class BandCalibrator:
    """Per (station, horizon) band offsets from realized conformity scores (see the module doc)."""

    horizons: tuple[int, ...]
    config: CalibrationConfig = field(default_factory=CalibrationConfig)
    _stations: dict[str, _Ring] = field(default_factory=dict, repr=False)
    _offsets: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # [H], NaN where too few scores
    _fleet_offset: np.ndarray | None = field(default=None, repr=False)  # [H]; None: to recompute

    def __post_init__(self) -> None:
        self._h = np.asarray(self.horizons, dtype=np.int64)

    @property
    def enabled(self) -> bool:
        return self.config.window > 0

    def update(self, station: np.ndarray, horizon: np.ndarray, scores: np.ndarray) -> None:
        """Learn from scored forecasts: ``scores`` are conformity scores against the model's raw band."""
        if not self.enabled:
            return
        scores = np.asarray(scores, dtype=np.float64)
        ok = np.isfinite(scores)
        station, horizon, scores = np.asarray(station, dtype=object)[ok], np.asarray(horizon)[ok], scores[ok]
        hidx = np.searchsorted(self._h, horizon)
        known = (hidx < len(self._h)) & (self._h[np.minimum(hidx, len(self._h) - 1)] == horizon)
        station, hidx, scores = station[known], hidx[known], scores[known]
        if not len(scores):
            return
        cfg = self.config
        self._fleet_offset = None
        codes, names = _factorize(station)
        for c, name in enumerate(names):  # once per station in the batch, not per score
            sel = codes == c
            ring = self._stations.get(name)
            if ring is None:
                ring = self._stations[name] = _Ring.empty(len(self._h), cfg.window)
            ring.push(hidx[sel], scores[sel])
            own = ring.filled() >= min(cfg.min_scores, cfg.window)
            if own.any():
                self._offsets[name] = np.where(own, conformal_quantile(ring.scores, cfg.coverage), np.nan)

    def offsets(self, stations: np.ndarray) -> np.ndarray:
        """[N, H] widening per station and horizon: the station's own where it has enough scores, else the
        fleet's, else 0 (the model's band)."""
        out = np.full((len(stations), len(self._h)), np.nan)
        if not self.enabled:
            return np.zeros_like(out)
        for i, s in enumerate(np.asarray(stations, dtype=object).tolist()):
            own = self._offsets.get(s)
            if own is not None:
                out[i] = own
        missing = np.isnan(out)
        if missing.any():
            out[missing] = np.broadcast_to(np.nan_to_num(self.fleet_offsets(), nan=0.0), out.shape)[missing]
        return out

    def fleet_offsets(self) -> np.ndarray:
        """[H] the conformal quantile of the pooled scores of the sampled stations; NaN where too few."""
        if self._fleet_offset is None:
            cfg = self.config
            pool = sorted(self._stations, key=_sample_rank)[:cfg.fleet_stations]
            out = np.full(len(self._h), np.nan)
            if pool:
                scores = np.stack([self._stations[s].scores for s in pool], axis=1).reshape(len(self._h), -1)
                for j, row in enumerate(scores):  # one partial sort per horizon
                    row = row[~np.isnan(row)]
                    n = len(row)
                    if n >= cfg.fleet_min_scores:
                        k = min(math.ceil((n + 1) * cfg.coverage), n) - 1
                        out[j] = np.partition(row, k)[k]
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
            self._stations.pop(s, None)
            self._offsets.pop(s, None)
        self._fleet_offset = None

    def summary(self) -> dict[int, float]:
        """The fleet offset per horizon (NaN until enough scores), for the status page and metrics."""
        return {int(h): float(q) for h, q in zip(self._h.tolist(), self.fleet_offsets().tolist(), strict=True)}

    @property
    def stations_calibrated(self) -> int:
        return len(self._offsets)


def _sample_rank(station: str) -> int:
    """A stable pseudo-random rank of a station id (the same in every process, unlike ``hash``)."""
    return zlib.crc32(station.encode())


def _factorize(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    uniq, inverse = np.unique(values.astype(str), return_inverse=True)
    return inverse, uniq.tolist()


def band_hits(lo: np.ndarray, hi: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """1.0 where the actual is inside [lo, hi], 0.0 outside, NaN where there was no band."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    inside = ((actual >= lo) & (actual <= hi)).astype(np.float64)
    return np.where(np.isnan(lo) | np.isnan(hi), np.nan, inside)

