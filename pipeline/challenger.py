"""Champion/challenger bookkeeping shared by the retraining and station fine-tuning jobs.

Both jobs read stored history (:func:`load_series`), hold its last days out (:func:`split_ranges`), score the
challenger and the model it would replace on exactly the same holdout windows (:func:`holdout_mae`), register the
challenger with both numbers in its card (:func:`register_challenger`) and apply one promotion rule
(:func:`beats`); each reports an :class:`Outcome` as one JSON line, which the scheduler reads.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import orjson
import pandas as pd

from forecaster.artifact import load_artifact
from forecaster.clean import CleanConfig, StationSeries, clean_station
from forecaster.dataset import make_splits
from forecaster.evaluate import evaluate
from forecaster.registry import Registry
from pipeline.cadence import describe, matching, spacing
from pipeline.store import Store

log = logging.getLogger("stationcast.challenger")
DAY = 86_400


@dataclass
class Outcome:
    outcome: str  # promoted | rejected | failed
    reason: str = ""
    champion: str | None = None  # the champion compared against (unchanged unless promoted)
    challenger: str | None = None  # the registered challenger tag, if one was registered
    champion_mae: float | None = None
    challenger_mae: float | None = None
    margin: float | None = None
    stations: list[str] = field(default_factory=list)
    train_span: tuple[str, str] | None = None
    holdout_span: tuple[str, str] | None = None
    holdout_samples: int = 0
    seconds: float = 0.0

    def to_json(self) -> str:
        d = asdict(self)
        for k in ("champion_mae", "challenger_mae"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = None
        return orjson.dumps(d).decode()

    @classmethod
    def from_json(cls, line: str) -> Outcome:
        d = orjson.loads(line)
        for k in ("train_span", "holdout_span"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def beats(challenger_mae: float, champion_mae: float, margin: float) -> bool:
    """The promotion rule: the challenger must beat the champion's holdout MAE by ``margin`` (relative)."""
    return (math.isfinite(challenger_mae) and math.isfinite(champion_mae)
            and challenger_mae < champion_mae * (1.0 - margin))


def load_series(store_url: str, start_ts: int, end_ts: int, features: list[str], cadence_s: int,
                max_fill_steps: int = 3, stations: list[str] | None = None) -> list[StationSeries]:
    """Readings in ``[start_ts, end_ts)`` (of ``stations``, default all) cleaned per station onto the model's
    cadence grid; only stations that report at that cadence (:func:`pipeline.cadence.matching`): a champion per
    cadence trains on its own stations, never on another cadence's readings snapped to its grid."""
    with Store.open(store_url) as store:
        records = store.history(start_ts, end_ts, stations)
    if records.empty:
        return []
    records = records[["station", "time", *features]]
    cfg = CleanConfig(cadence=pd.Timedelta(seconds=cadence_s), max_fill_steps=max_fill_steps)
    series = []
    for station in sorted(records["station"].unique()):
        rec = records[records["station"] == station]
        if rec["time"].nunique() < 2:
            continue
        every = spacing(rec["time"].to_numpy(dtype="datetime64[s]").astype(np.int64))
        if matching(every, [cadence_s]) is None:
            log.info("station %s reports every %s, not at the model's %s: left out", station, describe(every),
                     describe(cadence_s))
            continue
        series.append(clean_station(rec, cfg, station=station))
    return series


def holdout_mae(model, card, series: list[StationSeries], ranges: list) -> float:
    """A registered model's MAE on the holdout windows of ``ranges``, with its own normalization, as it serves."""
    test = make_splits(series, card.data, card.normalizer, ranges).test
    return float(evaluate(model, test, card.normalizer, card.data.target, card.data.horizons)["mae"])


def record_holdout(out: Outcome, trained, holdout_start: pd.Timestamp, last: pd.Timestamp) -> float:
    """Copy a trained challenger's holdout score and spans into the outcome; its holdout MAE."""
    out.challenger_mae = float(trained.test["mae"])
    out.holdout_samples = int(trained.test["samples"])
    out.train_span = trained.card.training_span
    out.holdout_span = (str(holdout_start), str(last))
    return out.challenger_mae


def register_challenger(registry: Registry, name: str, trained, out: Outcome, reference: dict, note: str):
    """Register a scored challenger (its holdout numbers and ``reference`` MAEs in the card) as a candidate and
    check that what was written loads back; a NaN score is refused before anything is written."""
    if not math.isfinite(out.challenger_mae):
        raise FloatingPointError(f"challenger holdout MAE is {out.challenger_mae}")
    trained.card.metrics |= {"holdout_mae": out.challenger_mae, **reference, "holdout_samples": out.holdout_samples,
                             "holdout_span": list(out.holdout_span)}
    new = registry.register(name, trained.model, trained.card, note=note)
    out.challenger = new.tag
    load_artifact(registry.path(name, new.version))
    return new


def reject_failed(registry: Registry, name: str, out: Outcome) -> None:
    """A challenger registered before the run failed must never stay a candidate."""
    if out.challenger is None:
        return
    try:
        registry.reject(name, int(out.challenger.rpartition("@v")[2]), note=f"failed: {out.reason}")
    except Exception as exc:  # noqa: BLE001 - reporting the first failure matters more
        log.error("could not mark %s rejected: %s", out.challenger, exc)


def split_ranges(series: StationSeries, holdout_start: pd.Timestamp,
                 val_fraction: float) -> tuple[slice, slice, slice]:
    """Train, validation and holdout rows of a station: the holdout starts at ``holdout_start``; the last
    ``val_fraction`` of the rows before it validate (early stopping)."""
    n = len(series.frame)
    hold = int(np.searchsorted(series.times.to_numpy(), holdout_start.to_datetime64()))
    val = hold - int(round(hold * val_fraction))
    return slice(0, val), slice(val, hold), slice(hold, n)
