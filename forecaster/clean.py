"""Turning one station's raw readings into a regular series with its gaps marked.

Real records repeat timestamps, skip readings and drift off their grid. Models need a fixed cadence,
so readings are snapped to the station's grid, short gaps are interpolated (bounded) and long gaps
split the series into segments that no training window may span.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from forecaster.schema import SENSOR_RANGES


@dataclass(frozen=True)
class CleanConfig:
    cadence: pd.Timedelta | None = None  # None: the most common spacing between readings
    max_fill_steps: int = 3  # gaps up to this many missing steps are interpolated linearly


@dataclass
class StationSeries:
    """A regular series for one station: ``frame`` is indexed by the cadence grid, NaN where missing."""

    station: str
    cadence: pd.Timedelta
    frame: pd.DataFrame
    report: dict[str, int] = field(default_factory=dict)

    @property
    def times(self) -> pd.DatetimeIndex:
        return self.frame.index

    def segments(self, features: list[str]) -> np.ndarray:
        """Per row, the id of the contiguous run where ``features`` are all present; -1 in long gaps."""
        return segments_from_valid(~self._columns(features).isna().any(axis=1).to_numpy())

    def values(self, features: list[str]) -> np.ndarray:
        return self._columns(features).to_numpy(dtype=np.float32)

    def _columns(self, features: list[str]) -> pd.DataFrame:
        """The named sensors; one that the station lacks is a DataError naming it, not a KeyError."""
        missing = [f for f in features if f not in self.frame.columns]
        if missing:
            from forecaster.data import DataError

            raise DataError(f"station {self.station!r} has no sensor {', '.join(missing)} (it has "
                            f"{', '.join(map(str, self.frame.columns))}; the model uses {', '.join(features)})")
        return self.frame[list(features)]


def infer_cadence(times: pd.Series | pd.DatetimeIndex) -> pd.Timedelta:
    diffs = pd.Series(np.diff(np.asarray(times, dtype="datetime64[ns]")))
    diffs = diffs[diffs > pd.Timedelta(0)]
    if diffs.empty:
        raise ValueError("cannot infer a cadence from fewer than two distinct timestamps")
    return pd.Timedelta(diffs.mode().iloc[0])


def grid_origin(times: np.ndarray, cadence: pd.Timedelta) -> np.datetime64:
    """The grid point at or before the first reading whose phase is the circular mean of all phases.

    Sampled records drift in phase after gaps (the Jena hourly file has readings at :10, :30, :40 and
    :50); anchoring the grid at the mean phase keeps every reading within half a step of one slot.
    """
    step = cadence.to_timedelta64().astype("timedelta64[ns]").astype(np.int64)
    ns = times.astype("datetime64[ns]").astype(np.int64)
    angle = 2 * np.pi * (ns % step) / step
    mean = np.arctan2(np.sin(angle).mean(), np.cos(angle).mean()) % (2 * np.pi)
    phase = int(round(mean / (2 * np.pi) * step / 60e9) * 60e9) % step  # whole minutes
    first = ns[0] - ((ns[0] - phase) % step)
    if ns[0] - first > step // 2:
        first += step
    return np.datetime64(int(first), "ns")


def segments_from_valid(valid: np.ndarray) -> np.ndarray:
    """Label contiguous runs of True with 0, 1, 2, ... and everything else with -1 (vectorized)."""
    starts = valid & ~np.concatenate([[False], valid[:-1]])
    seg = np.cumsum(starts) - 1
    return np.where(valid, seg, -1).astype(np.int64)


def clean_station(
    records: pd.DataFrame, config: CleanConfig = CleanConfig(), station: str | None = None
) -> StationSeries:
    """Regularize one station's readings (columns ``time`` + sensors, as from ``load_records``)."""
    if station is not None:
        records = records[records["station"] == station]
    if records.empty:
        raise ValueError(f"no readings for station {station!r}")
    station = station if station is not None else str(records["station"].iloc[0])
    sensors = [c for c in records.columns if c not in ("station", "time")]
    report: dict[str, int] = {"readings": len(records)}

    values = records[sensors].to_numpy(dtype=np.float64, copy=True)
    out_of_range = np.zeros_like(values, dtype=bool)
    for j, name in enumerate(sensors):
        if name in SENSOR_RANGES:
            lo, hi = SENSOR_RANGES[name]
            out_of_range[:, j] = (values[:, j] < lo) | (values[:, j] > hi)
    values[out_of_range] = np.nan
    report["out_of_range_values"] = int(out_of_range.sum())

    times = records["time"].to_numpy(dtype="datetime64[ns]")
    cadence = config.cadence or infer_cadence(times)
    origin = grid_origin(times, cadence)
    slot = np.rint((times - origin) / cadence).astype(np.int64)
    frame = pd.DataFrame(values, columns=sensors)
    frame["slot"] = slot
    deduped = frame.groupby("slot", sort=True).first()  # first reading of a repeated timestamp wins
    report["duplicates_dropped"] = len(frame) - len(deduped)

    n_slots = int(deduped.index[-1]) + 1
    grid = pd.DatetimeIndex(origin + np.arange(n_slots) * np.asarray(cadence.to_timedelta64()), name="time")
    regular = pd.DataFrame(np.nan, index=grid, columns=sensors)
    regular.iloc[deduped.index.to_numpy()] = deduped.to_numpy()
    missing_rows = ~np.isin(np.arange(n_slots), deduped.index.to_numpy())
    report["missing_steps"] = int(missing_rows.sum())

    if config.max_fill_steps > 0:
        filled = regular.interpolate(method="linear", limit_area="inside")
        # interpolate() fills any run length; keep its values only inside short runs of NaN.
        nan = regular.isna().to_numpy()
        run_len = _nan_run_lengths(nan)
        short = nan & (run_len <= config.max_fill_steps)
        regular = regular.mask(short, filled)
        report["filled_values"] = int(short.sum())
    valid = ~regular.isna().any(axis=1).to_numpy()
    report["segments_all_sensors"] = int(segments_from_valid(valid).max() + 1) if valid.any() else 0
    report["incomplete_steps"] = int((~valid).sum())
    for name in records.attrs.get("derived", {}):  # computed by load_records, e.g. Tdew from T and rh
        if name in regular:
            report[f"derived_{name}"] = int(regular[name].notna().sum())
    return StationSeries(station=station, cadence=cadence, frame=regular, report=report)


def _nan_run_lengths(nan: np.ndarray) -> np.ndarray:
    """For each cell, the length of the run of NaN (down its column) it lies in; 0 where not NaN."""
    out = np.zeros(nan.shape, dtype=np.int64)
    for j in range(nan.shape[1]):
        col = nan[:, j]
        if not col.any():
            continue
        seg = segments_from_valid(col)
        counts = np.bincount(seg[seg >= 0])
        out[col, j] = counts[seg[col]]
    return out


def split_by_fraction(n: int, fractions: tuple[float, float]) -> tuple[slice, slice, slice]:
    """Chronological train/validation/test row ranges from the first two fractions."""
    a = int(round(n * fractions[0]))
    b = int(round(n * (fractions[0] + fractions[1])))
    return slice(0, a), slice(a, b), slice(b, n)


# Chollet's split on the Jena record: 200,000 / 100,000 / rest of 420,551 rows.
CHOLLET_FRACTIONS = (200_000 / 420_551, 100_000 / 420_551)


def load_stations(
    path, schema=None, stations: list[str] | None = None, config: CleanConfig = CleanConfig(),
    missing_ok: bool = False, needs: tuple[str, ...] = (), needed_by: str | None = None,
) -> list[StationSeries]:
    """Load a station file and clean each station in it (all of them unless ``stations`` names some).
    A named station the file lacks is an error, or skipped with ``missing_ok`` (several files, one list).
    ``needs``/``needed_by``: the sensors a model uses, see :func:`forecaster.data.load_records`."""
    from forecaster.data import DataError, load_records

    records = load_records(path, schema, needs=needs, needed_by=needed_by)
    have = list(dict.fromkeys(records["station"]))
    wanted = stations or have
    unknown = sorted(set(wanted) - set(have))
    if unknown and not missing_ok:
        raise DataError(f"{path}: no station {unknown} in the file (it has {have})")
    return [clean_station(records, config, station=s) for s in wanted if s in have]


def usable_features(
    series: list[StationSeries], preferred: tuple[str, ...], max_missing: float = 0.05
) -> tuple[str, ...]:
    """The preferred sensors that every station actually measures (missing at most ``max_missing``)."""
    return tuple(
        f for f in preferred
        if all(f in s.frame and s.frame[f].isna().mean() <= max_missing for s in series)
    )
