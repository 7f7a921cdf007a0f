"""Scoring forecasts against the readings that later arrive for their target times.

Pending forecasts are held as flat numpy columns keyed by ``(station, target_ts)``; a batch of actuals is
matched with one ``np.isin``/``searchsorted`` pass, never a Python loop per reading. Each match yields the
model's absolute error and the persistence forecast's, so skill against persistence is always visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

_COLUMNS = ("station", "issue_ts", "horizon", "target_ts", "model_version", "value", "persistence")


@dataclass
class RollingSkill:
    """Exponentially weighted MAE of the model and of persistence, per station and for the fleet."""

    halflife: float = 2000.0  # errors (all horizons of about 80 hourly forecasts of one station)
    station_model: dict[str, float] = field(default_factory=dict)
    station_persistence: dict[str, float] = field(default_factory=dict)
    station_count: dict[str, int] = field(default_factory=dict)
    fleet_model: float = float("nan")
    fleet_persistence: float = float("nan")
    count: int = 0

    @property
    def alpha(self) -> float:
        return 1 - 0.5 ** (1 / self.halflife)

    def update(self, errors: pd.DataFrame) -> None:
        if errors.empty:
            return
        a = self.alpha
        # The fleet EWMA over a batch in arrival order, in closed form: weights (1-a)^(n-1-i) * a.
        n = len(errors)
        w = a * (1 - a) ** np.arange(n - 1, -1, -1)
        decay = (1 - a) ** n
        for attr, col in (("fleet_model", "abs_error"), ("fleet_persistence", "persistence_abs_error")):
            prev = getattr(self, attr)
            x = errors[col].to_numpy()
            value = float((w * x).sum() + (decay * prev if not np.isnan(prev) else 0.0))
            if np.isnan(prev):
                value /= 1 - decay
            setattr(self, attr, value)
        grouped = errors.groupby("station", sort=False).agg(
            m=("abs_error", "mean"), p=("persistence_abs_error", "mean"), n=("abs_error", "size"))
        weight = 1 - (1 - a) ** grouped["n"].to_numpy()  # n errors at once weigh as n single updates
        for station, m, p, w, k in zip(grouped.index, grouped["m"], grouped["p"], weight, grouped["n"],
                                       strict=True):
            self.station_count[station] = self.station_count.get(station, 0) + int(k)
            old_m = self.station_model.get(station)
            old_p = self.station_persistence.get(station)
            self.station_model[station] = m if old_m is None else old_m + w * (m - old_m)
            self.station_persistence[station] = p if old_p is None else old_p + w * (p - old_p)
        self.count += n

    def skill(self, station: str | None = None) -> float:
        m, p = ((self.fleet_model, self.fleet_persistence) if station is None
                else (self.station_model.get(station, np.nan), self.station_persistence.get(station, np.nan)))
        return float(1 - m / p) if p and not np.isnan(p) else float("nan")


class Scoreboard:
    """Forecasts waiting for their actuals."""

    def __init__(self) -> None:
        self._cols: dict[str, np.ndarray] = {c: np.empty(0, dtype=_dtype(c)) for c in (*_COLUMNS, "key")}
        self._codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._cols["station"])

    def _keys(self, station: np.ndarray, ts: np.ndarray, register: bool) -> np.ndarray:
        """One int64 per (station, time): a small station code in the high bits, epoch seconds below."""
        uniq, inverse = np.unique(station.astype(object), return_inverse=True)
        codes = np.empty(len(uniq), dtype=np.int64)
        for i, s in enumerate(uniq.tolist()):  # once per distinct station in the batch
            code = self._codes.get(s)
            if code is None:
                code = len(self._codes) if register else -1
                if register:
                    self._codes[s] = code
            codes[i] = code
        return (codes[inverse] << 34) | ts.astype(np.int64)

    def add(self, forecasts: pd.DataFrame) -> None:
        """Track forecast rows (one per station, issue time and horizon) until their target arrives."""
        if forecasts.empty:
            return
        new = {c: forecasts[c].to_numpy(dtype=_dtype(c)) for c in _COLUMNS}
        new["key"] = self._keys(new["station"], new["target_ts"], register=True)
        self._cols = {c: np.concatenate([self._cols[c], new[c]]) for c in self._cols}

    def match(self, station: np.ndarray, target_ts: np.ndarray, actual: np.ndarray) -> pd.DataFrame:
        """Errors for every pending forecast whose (station, target time) got an actual; those leave the board.

        ``target_ts`` must be the reading's slot time on the station grid, as forecasts name them.
        """
        ok = ~np.isnan(actual)
        if not ok.any() or not len(self):
            return _empty_errors()
        keys_new = self._keys(station[ok], target_ts[ok], register=False)
        hit = np.isin(self._cols["key"], keys_new)
        if not hit.any():
            return _empty_errors()
        order = np.argsort(keys_new, kind="stable")
        pos = order[np.searchsorted(keys_new, self._cols["key"][hit], sorter=order)]
        act = actual[ok][pos]
        rows = {c: v[hit] for c, v in self._cols.items()}
        errors = pd.DataFrame({
            "station": rows["station"], "issue_ts": rows["issue_ts"], "horizon": rows["horizon"],
            "target_ts": rows["target_ts"], "model_version": rows["model_version"], "actual": act,
            "abs_error": np.abs(rows["value"] - act), "persistence_abs_error": np.abs(rows["persistence"] - act),
        })
        self._cols = {c: v[~hit] for c, v in self._cols.items()}
        return errors

    def expire(self, before_ts: int) -> int:
        """Forget forecasts whose target passed long ago without an actual (a station gone silent)."""
        keep = self._cols["target_ts"] >= before_ts
        dropped = int((~keep).sum())
        if dropped:
            self._cols = {c: v[keep] for c, v in self._cols.items()}
        return dropped

    def expire_stations(self, stations: np.ndarray, before_ts: np.ndarray) -> int:
        """Per station, forget forecasts whose target is before its time: once a station's newest slot is past
        a target by more than the lateness allowance, a reading for it would be late and never scored, so
        pending forecasts stay bounded by stations x (horizons + lateness) even when actuals never arrive."""
        if not len(self) or not len(stations):
            return 0
        codes = self._keys(np.asarray(stations, dtype=object), np.zeros(len(stations), np.int64), False) >> 34
        floor = np.full(len(self._codes) + 1, np.iinfo(np.int64).min, dtype=np.int64)  # last slot: unknown ids
        floor[codes] = np.maximum(floor[codes], np.asarray(before_ts, dtype=np.int64))
        floor[-1] = np.iinfo(np.int64).min
        keep = self._cols["target_ts"] >= floor[self._cols["key"] >> 34]
        dropped = int(len(keep) - keep.sum())
        if dropped:
            self._cols = {c: v[keep] for c, v in self._cols.items()}
        return dropped

    def drop_stations(self, stations: np.ndarray) -> None:
        keep = ~np.isin(self._cols["station"], np.asarray(stations, dtype=object))
        self._cols = {c: v[keep] for c, v in self._cols.items()}


def _dtype(column: str):
    return object if column in ("station", "model_version") else (
        np.float64 if column in ("value", "persistence") else np.int64)


def _empty_errors() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in (
        ("station", object), ("issue_ts", np.int64), ("horizon", np.int64), ("target_ts", np.int64),
        ("model_version", object), ("actual", float), ("abs_error", float), ("persistence_abs_error", float))})
