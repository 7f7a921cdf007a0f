"""Cadence as part of the contract: naming cadences, and aggregating a finer series to a model's coarser one.

A model reads its steps as its card's ``cadence_s``; a file at another cadence is refused (one line naming both)
unless the user asks for ``--resample AGG``. Aggregation is explicit and documented: each coarse step at time
``t`` aggregates the readings in ``(t - cadence, t]`` (right-closed, labelled at its end, so a forecast never sees
a reading after its origin), on the station's own phase (the last reading of each bin keeps the station's
timestamp, e.g. Jena's ``HH:10``), and a bin missing any reading is missing (never a mean of what is left).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from forecaster.clean import StationSeries

AGGREGATIONS = {
    "mean": "the mean of the readings",
    "median": "the median of the readings",
    "last": "the last reading",
    "min": "the smallest reading",
    "max": "the largest reading",
    "sum": "the sum of the readings",
}
RESAMPLE_HELP = (
    "aggregate a finer-cadence file to the model's cadence, every sensor with AGG: "
    + ", ".join(f"{k} ({v})" for k, v in AGGREGATIONS.items())
    + "; mean suits temperature-like sensors, last matches an instantaneous hourly sample, sum accumulating "
    "ones such as rain. Each step at time t aggregates the readings in (t - cadence, t], ending on the file's last "
    "reading; a step missing any reading is missing. Without --resample a file whose cadence differs from the "
    "model's is refused"
)


class CadenceMismatch(ValueError):
    """A file or station whose cadence is not the model's, with no ``--resample`` asked."""


def cadence_name(seconds: float) -> str:
    """600 -> '10-minute', 3600 -> 'hourly', 86400 -> 'daily', 90 -> '90-second'."""
    s = int(seconds)
    if s == 3600:
        return "hourly"
    if s == 86400:
        return "daily"
    if s % 3600 == 0:
        return f"{s // 3600}-hour"
    if s % 60 == 0:
        return f"{s // 60}-minute"
    return f"{s}-second"


def describe(seconds: float) -> str:
    """'10-minute (600 s)'."""
    return f"{cadence_name(seconds)} ({int(seconds)} s)"


def mismatch_message(data_s: float, model_tag: str, model_s: float) -> str:
    """The one line a user reads when the cadences differ, with what to do about it."""
    head = f"data is {describe(data_s)}, model {model_tag} is {describe(model_s)}"
    if model_s > data_s and model_s % data_s == 0:
        return f"{head}: pass --resample mean to aggregate to the model's cadence (see --help for the aggregations)"
    return (f"{head}: a file can only be aggregated to a coarser cadence that is a whole multiple of its own; "
            "use a model of the data's cadence")


def conform(series: list[StationSeries], model_tag: str, model_s: int, agg: str | None) -> list[StationSeries]:
    """``series`` at the model's cadence: unchanged when they already are, aggregated with ``agg`` when asked,
    else :class:`CadenceMismatch` naming both cadences."""
    out = []
    for s in series:
        data_s = int(s.cadence.total_seconds())
        if data_s == model_s:
            out.append(s)
            continue
        if agg is None or not (model_s > data_s and model_s % data_s == 0):
            raise CadenceMismatch(f"station {s.station}: " + mismatch_message(data_s, model_tag, model_s))
        out.append(resample_series(s, pd.Timedelta(seconds=model_s), agg))
    return out


def resample_series(s: StationSeries, cadence: pd.Timedelta, agg: str) -> StationSeries:
    """``s`` aggregated to ``cadence`` with ``agg`` (module docstring for the bins and missing readings)."""
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {agg!r}; choose from {', '.join(AGGREGATIONS)}")
    factor = cadence / s.cadence
    if factor < 1 or factor != int(factor):
        raise CadenceMismatch(f"station {s.station}: cannot aggregate {describe(s.cadence.total_seconds())} "
                              f"readings to {describe(cadence.total_seconds())}: not a whole multiple")
    frame = s.frame
    # Bins end on the station's phase: the grid point at or after the first reading that is a whole number of
    # coarse steps from the last one.
    end = frame.index[-1]
    first_end = end - ((end - frame.index[0]) // cadence) * cadence
    bins = frame.resample(cadence, closed="right", label="right", origin=first_end - cadence)
    values = bins.agg(agg) if agg != "sum" else bins.sum(min_count=1)
    complete = bins.count() >= int(factor)
    values = values.where(complete, np.nan).astype(frame.dtypes.to_dict())
    report = {**s.report, "resampled_from_s": int(s.cadence.total_seconds()), f"resampled_{agg}": int(factor)}
    return replace(s, cadence=cadence, frame=values, report=report)
