"""Scoring forecasts against the readings that later arrive for their target times.

Pending forecasts are held as flat numpy columns keyed by ``(station, target_ts)``; a batch of actuals is
matched with one ``np.isin``/``searchsorted`` pass, never a Python loop per reading. Each match yields the
model's absolute error and those of the two naive baselines on the same row (persistence: the last value at
issue time; diurnal persistence: the value 24 h before the target time), so skill is always measured against
the better of the two. With a band, it also yields whether the actual fell inside the published band and the
conformity score against the model's raw band (what :mod:`pipeline.calibration` learns from).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from forecaster.evaluate import diurnal_offsets, steps_per_day
from pipeline.calibration import band_hits, conformity_scores

_COLUMNS = ("station", "issue_ts", "horizon", "target_ts", "model_version", "value", "persistence", "diurnal",
            "lo", "hi", "band_offset")
_FLOATS = ("value", "persistence", "diurnal", "lo", "hi", "band_offset")
# Rolling-MAE trackers: name -> the errors column they follow.
TRACKED = {"model": "abs_error", "persistence": "persistence_abs_error", "diurnal": "diurnal_abs_error"}


def season_of(card) -> int | None:
    """Steps per day of a model card: the model's own ``season`` when it has one, else from the cadence."""
    season = getattr(card.model, "season", None)
    return int(season) if season else steps_per_day(card.cadence_s)


def diurnal_baseline(target: np.ndarray, horizons: np.ndarray, season: int | None) -> np.ndarray:
    """[N, H] diurnal persistence from windows of the target ([N, L], newest last): the value one day before
    each target time (whole days back for horizons beyond a day, as ``stationcast evaluate`` does); NaN
    where the window does not reach back that far or no whole number of steps makes a day."""
    n, length = target.shape
    if not season:
        return np.full((n, len(horizons)), np.nan)
    idx = length - 1 + diurnal_offsets(tuple(int(h) for h in horizons), season)
    ok = idx >= 0
    out = np.full((n, len(horizons)), np.nan)
    out[:, ok] = target[:, idx[ok]]
    return out


def skill_vs_best(model: np.ndarray | float, persistence: np.ndarray | float,
                  diurnal: np.ndarray | float) -> np.ndarray | float:
    """1 - MAE(model) / MAE(better baseline); a baseline with no score (NaN) is left out; NaN when neither."""
    best = np.fmin(persistence, diurnal)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(best > 0, 1 - np.asarray(model, dtype=np.float64) / best, np.nan)
    return float(out) if np.ndim(out) == 0 else out


def _ewma_batch(prev: float, x: np.ndarray, a: float) -> float:
    """An EWMA advanced over a batch in arrival order, in closed form: weights (1-a)^(n-1-i) * a. NaN skipped."""
    x = x[~np.isnan(x)]
    n = len(x)
    if not n:
        return prev
    w = a * (1 - a) ** np.arange(n - 1, -1, -1)
    decay = (1 - a) ** n
    value = float((w * x).sum() + (decay * prev if not np.isnan(prev) else 0.0))
    return value / (1 - decay) if np.isnan(prev) else value


def _column(errors: pd.DataFrame, col: str) -> np.ndarray:
    return errors[col].to_numpy(dtype=np.float64) if col in errors else np.full(len(errors), np.nan)


@dataclass
class RollingSkill:
    """Exponentially weighted MAE of the model, persistence and diurnal persistence, per station and fleet."""

    halflife: float = 2000.0  # errors (all horizons of about 80 hourly forecasts of one station)
    station_model: dict[str, float] = field(default_factory=dict)
    station_persistence: dict[str, float] = field(default_factory=dict)
    station_diurnal: dict[str, float] = field(default_factory=dict)
    station_count: dict[str, int] = field(default_factory=dict)
    fleet_model: float = float("nan")
    fleet_persistence: float = float("nan")
    fleet_diurnal: float = float("nan")
    count: int = 0

    @property
    def alpha(self) -> float:
        return 1 - 0.5 ** (1 / self.halflife)

    def update(self, errors: pd.DataFrame) -> None:
        if errors.empty:
            return
        a = self.alpha
        cols = {name: _column(errors, col) for name, col in TRACKED.items()}
        for name, x in cols.items():
            setattr(self, f"fleet_{name}", _ewma_batch(getattr(self, f"fleet_{name}"), x, a))
        frame = pd.DataFrame({"station": errors["station"].to_numpy(), **cols})
        grouped = frame.groupby("station", sort=False)
        means, counts = grouped.mean(), grouped.count()  # both skip NaN: a baseline missing on a row is left out
        for name in TRACKED:
            table = getattr(self, f"station_{name}")
            weight = 1 - (1 - a) ** counts[name].to_numpy()  # n errors at once weigh as n single updates
            for station, m, w, k in zip(means.index, means[name], weight, counts[name], strict=True):
                if not k:
                    continue
                old = table.get(station)
                table[station] = m if old is None else old + w * (m - old)
        for station, k in zip(counts.index, counts["model"], strict=True):
            self.station_count[station] = self.station_count.get(station, 0) + int(k)
        self.count += len(errors)

    def maes(self, station: str | None = None) -> tuple[float, float, float]:
        """(model, persistence, diurnal) rolling MAE of a station, or of the fleet."""
        if station is None:
            return self.fleet_model, self.fleet_persistence, self.fleet_diurnal
        return tuple(getattr(self, f"station_{n}").get(station, np.nan) for n in TRACKED)  # type: ignore[return-value]

    def skill(self, station: str | None = None) -> float:
        """Skill against the better of persistence and diurnal persistence."""
        return float(skill_vs_best(*self.maes(station)))

    def skill_vs_persistence(self, station: str | None = None) -> float:
        m, p, _ = self.maes(station)
        return float(1 - m / p) if p and not np.isnan(p) else float("nan")

    def forget(self, stations: list[str]) -> None:
        for table in (*(getattr(self, f"station_{n}") for n in TRACKED), self.station_count):
            for s in stations:
                table.pop(s, None)


@dataclass
class HorizonSkill:
    """Per horizon, exponentially weighted MAE of the model and both baselines, and band coverage (the rolling
    fraction of actuals inside the published band): what the per-horizon gauges and the status page show. Each
    horizon gets 1/H of the errors, so its half-life is ``halflife`` / H errors: the table spans the same recent
    time as :class:`RollingSkill`'s fleet figures beside it."""

    halflife: float = RollingSkill.halflife  # errors over all horizons, as RollingSkill's
    mae: dict[str, dict[int, float]] = field(default_factory=lambda: {n: {} for n in TRACKED})
    coverage: dict[int, float] = field(default_factory=dict)
    coverage_all: float = float("nan")

    def update(self, errors: pd.DataFrame) -> None:
        if errors.empty:
            return
        horizon = errors["horizon"].to_numpy()
        covered = _column(errors, "covered")
        self.coverage_all = _ewma_batch(self.coverage_all, covered, 1 - 0.5 ** (1 / self.halflife))
        n_h = max(len(self.mae["model"]), len(np.unique(horizon)))
        a = 1 - 0.5 ** (n_h / self.halflife)
        cols = {name: _column(errors, col) for name, col in TRACKED.items()}
        order = np.argsort(horizon, kind="stable")  # per horizon, still in arrival order
        h_sorted = horizon[order]
        starts = np.r_[0, np.flatnonzero(np.diff(h_sorted)) + 1]
        for lo, hi in zip(starts.tolist(), np.r_[starts[1:], len(order)].tolist(), strict=True):
            h, rows = int(h_sorted[lo]), order[lo:hi]
            for name, x in cols.items():
                self.mae[name][h] = _ewma_batch(self.mae[name].get(h, np.nan), x[rows], a)
            self.coverage[h] = _ewma_batch(self.coverage.get(h, np.nan), covered[rows], a)

    def horizons(self) -> list[int]:
        return sorted(self.mae["model"])

    def skill(self, horizon: int) -> float:
        return float(skill_vs_best(*(self.mae[n].get(horizon, np.nan) for n in TRACKED)))


def error_summary(errors: pd.DataFrame, by: str = "horizon") -> pd.DataFrame:
    """Scored errors summarized per ``by`` (horizon or station) plus an ``all`` row, on the same rows for every
    forecaster: MAE of the model, persistence and diurnal persistence, skill against the better baseline, the
    P10-P90 band's coverage (NaN without a band) and the number of errors. Each baseline's MAE is over the rows
    where it exists (diurnal persistence needs a day of history in the window)."""
    cols = {"mae": "abs_error", "persistence_mae": "persistence_abs_error", "diurnal_mae": "diurnal_abs_error",
            "coverage": "covered"}
    frame = pd.DataFrame({k: _column(errors, c) for k, c in cols.items()} | {by: errors[by].to_numpy()})
    table = frame.groupby(by).mean()
    table["n"] = frame.groupby(by).size()
    table.index = table.index.astype(object)
    table.loc["all"] = [*frame[list(cols)].mean().tolist(), len(frame)]
    table["skill"] = skill_vs_best(table["mae"].to_numpy(), table["persistence_mae"].to_numpy(),
                                   table["diurnal_mae"].to_numpy())
    return table[["mae", "persistence_mae", "diurnal_mae", "skill", "coverage", "n"]]


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
        n = len(forecasts)
        new = {c: forecasts[c].to_numpy(dtype=_dtype(c)) if c in forecasts else np.full(n, np.nan)
               for c in _COLUMNS}
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
            "diurnal_abs_error": np.abs(rows["diurnal"] - act),
            "covered": band_hits(rows["lo"], rows["hi"], act),
            # Against the model's raw band: the published one widened by band_offset (none: 0).
            "band_score": conformity_scores(rows["lo"], rows["hi"], act) + np.nan_to_num(rows["band_offset"]),
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

    def has_pending(self, stations: np.ndarray) -> np.ndarray:
        """Per station (any order, repeats allowed): whether a forecast of it waits for an actual."""
        stations = np.asarray(stations, dtype=object)
        if not len(self) or not len(stations):
            return np.zeros(len(stations), dtype=bool)
        codes = self._keys(stations, np.zeros(len(stations), np.int64), register=False) >> 34
        return np.isin(codes, np.unique(self._cols["key"] >> 34)) & (codes >= 0)

    def drop_stations(self, stations: np.ndarray) -> None:
        keep = ~np.isin(self._cols["station"], np.asarray(stations, dtype=object))
        self._cols = {c: v[keep] for c, v in self._cols.items()}


def _dtype(column: str):
    return object if column in ("station", "model_version") else (
        np.float64 if column in _FLOATS else np.int64)


def _empty_errors() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in (
        ("station", object), ("issue_ts", np.int64), ("horizon", np.int64), ("target_ts", np.int64),
        ("model_version", object), ("actual", float), ("abs_error", float), ("persistence_abs_error", float),
        ("diurnal_abs_error", float), ("covered", float), ("band_score", float))})
