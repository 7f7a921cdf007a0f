"""Which rows train, validate and test, by date: one definition shared by ``train``, ``evaluate`` and ``finetune``.

Without dates the test span is the last :data:`TEST_FRACTION` of the data's time span, so ``evaluate`` and
``finetune`` score the same period of a file. Bounds are half-open ``[start, end)`` in the series' clock
(UTC-naive); a bare date given as an end (``--train-until 2015-12-31``) covers that whole day.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from forecaster.clean import StationSeries
from forecaster.dataset import DataConfig, Ranges
from forecaster.windows import valid_origins

TEST_FRACTION = 0.2  # default test span: the last 20 % of the time span
TRAIN_VAL_FRACTION = 0.25  # `train` with dates: the last quarter of the time before the test span validates

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class SpanError(ValueError):
    """A date that does not parse, or spans that leave nothing to train or test on."""


def parse_when(text: str, flag: str, end: bool = False) -> pd.Timestamp:
    """An ISO date or timestamp as a UTC-naive bound; as an ``end``, an inclusive one turned exclusive."""
    try:
        ts = pd.Timestamp(text.strip())
    except (ValueError, TypeError):
        ts = pd.NaT
    if pd.isna(ts):
        raise SpanError(f"{flag} {text!r} is not an ISO date or timestamp (e.g. 2016-01-31 or 2016-01-31T12:00)")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    ts = ts.as_unit("ns")  # so the nanosecond that makes an end inclusive is kept
    if not end:
        return ts
    return ts + pd.Timedelta(days=1) if _DATE_ONLY.match(text.strip()) else ts + pd.Timedelta(1, "ns")


@dataclass(frozen=True)
class Spans:
    """Resolved bounds: training (and validation) rows before ``train_end``, test rows in ``[test_start, test_end)``."""

    data_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    dated: bool  # True when the user named at least one date


def _bounds(series: Sequence[StationSeries]) -> tuple[pd.Timestamp, pd.Timestamp]:
    return (min(s.times[0] for s in series).as_unit("ns"), max(s.times[-1] for s in series).as_unit("ns"))


def resolve(series: Sequence[StationSeries], train_until: str | None = None, test_from: str | None = None,
            test_until: str | None = None) -> Spans:
    """The spans the flags name; what they leave open follows the shared defaults (module docstring)."""
    first, last = _bounds(series)
    data_end = last + pd.Timedelta(1, "ns")
    test_end = parse_when(test_until, "--test-until", end=True) if test_until else data_end
    train_end = parse_when(train_until, "--train-until", end=True) if train_until else None
    if test_from:
        test_start = parse_when(test_from, "--test-from")
    elif train_end is not None:
        test_start = train_end  # "train until X" alone: test on what follows
    else:
        test_start = default_test_start(first, min(test_end, data_end))
    if train_end is None:
        train_end = test_start
    if test_end <= test_start:
        raise SpanError(f"the test span is empty: it starts at {_iso(test_start)} and ends before it")
    if train_end > test_start:
        raise SpanError(f"--train-until {_iso(train_end)} reaches into the test span, which starts at "
                        f"{_iso(test_start)}: training rows would be scored")
    return Spans(first, train_end, test_start, test_end, bool(train_until or test_from or test_until))


def default_test_start(first: pd.Timestamp, end: pd.Timestamp) -> pd.Timestamp:
    """The shared default: the test span is the last :data:`TEST_FRACTION` of ``[first, end)``."""
    return first + (end - first) * (1 - TEST_FRACTION)


def rows(series: StationSeries, start: pd.Timestamp, end: pd.Timestamp) -> slice:
    """Row positions of ``series`` whose times lie in ``[start, end)``."""
    times = series.times.to_numpy(dtype="datetime64[ns]")  # whatever the index's unit, bounds are in ns
    bounds = np.array([pd.Timestamp(t).as_unit("ns").to_datetime64() for t in (start, end)])
    a, b = np.searchsorted(times, bounds, side="left")
    return slice(int(a), int(b))


def test_rows(series: StationSeries, spans: Spans) -> slice:
    return rows(series, spans.test_start, spans.test_end)


def train_ranges(series: StationSeries, spans: Spans, val_fraction: float = TRAIN_VAL_FRACTION) -> Ranges:
    """``train`` by date: everything before ``train_end``, its last ``val_fraction`` (in time) validating."""
    split = spans.data_start + (spans.train_end - spans.data_start) * (1 - val_fraction)
    return (rows(series, spans.data_start, split), rows(series, split, spans.train_end), test_rows(series, spans))


def holdout_split(series: StationSeries, history: slice, holdout_days: float) -> tuple[slice, slice]:
    """The last ``holdout_days`` (in time) of the ``history`` rows, held out, and the rows before them."""
    start, stop, _ = history.indices(len(series.frame))
    if stop <= start:
        return slice(start, start), slice(start, start)
    end = series.times[stop - 1] + series.cadence
    split = min(max(rows(series, end - pd.Timedelta(days=holdout_days), end).start, start), stop)
    return slice(start, split), slice(split, stop)


def finetune_ranges(series: StationSeries, spans: Spans, days: float, holdout_days: float) -> Ranges:
    """``finetune``: only the ``days`` before ``train_end``, their last ``holdout_days`` held out (training rows,
    holdout rows, test rows)."""
    start = max(spans.train_end - pd.Timedelta(days=days), spans.data_start)
    fit, hold = holdout_split(series, rows(series, start, spans.train_end), holdout_days)
    return fit, hold, test_rows(series, spans)


def require_windows(series: Sequence[StationSeries], data: DataConfig, ranges: Sequence[Ranges]) -> None:
    """Training, validation and test must each hold a full window: else one error naming the span."""
    spec = data.spec
    need = spec.lookback + spec.max_horizon
    for i, label in enumerate(("training", "validation", "test")):
        n = 0
        for s, r in zip(series, ranges, strict=True):
            start, stop, _ = r[i].indices(len(s.frame))
            origins = valid_origins(s.segments(list(data.features)), spec, r[0].start, stop)
            n += int((origins >= start).sum())
        if n == 0:
            span = covered(series, [r[i] for r in ranges])
            where = f"from {span[0]} to {span[1]}" if span else "with no rows"
            cadence = series[0].cadence
            raise SpanError(
                f"the {label} span ({where}) holds no full window: one needs {need} gap-free steps "
                f"({(need * cadence).total_seconds() / 3600:g} h) of lookback and horizon; widen it or move the dates"
            )


def covered(series: Sequence[StationSeries], row_slices: Sequence[slice]) -> tuple[str, str] | None:
    """First and last time of the rows actually in a span (over every series), or None when it holds none."""
    times = [s.times[r] for s, r in zip(series, row_slices, strict=True) if r.stop > r.start]
    if not times:
        return None
    return _iso(min(t[0] for t in times)), _iso(max(t[-1] for t in times))


def _iso(ts: pd.Timestamp | np.datetime64) -> str:
    return pd.Timestamp(ts).isoformat(timespec="seconds")
