"""A station's cadence: how it is detected, how it is named, and how a file is resampled to another one.

Cadence is part of the serving contract: a model trained on hourly steps forecasts 24 *steps*, which are 24 hours
only for an hourly station. Every station is therefore served by the champion of its own cadence, and a file or a
station whose cadence no champion has is refused (or resampled when asked), never snapped onto another grid.

Detection. A station's cadence is the median spacing of its first :data:`DETECT_READINGS` distinct timestamps (so
``DETECT_READINGS - 1`` spacings; a missing reading or two, or one repeated, does not change the median). It matches
a champion's cadence when within :data:`TOLERANCE` of it (replay jitter, readings stamped a few seconds late).

Names. The hourly champion keeps the registry name ``global`` (existing registries keep working); a champion of
another cadence is ``global-<label>`` (``global-10min``, ``global-1min``, ``global-3h``), shipped in
``pipeline/pretrained_models/global_<label>``. The card's ``cadence_s`` is what counts; the name only finds it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from forecaster.resample import AGGREGATIONS as TRAINING_AGGREGATIONS

HOURLY = 3600
DETECT_READINGS = 6  # distinct timestamps a station's cadence is detected from
TOLERANCE = 0.1  # a detected spacing within 10% of a champion's cadence matches it
AGGREGATIONS = tuple(TRAINING_AGGREGATIONS)  # the same choices as train/evaluate/finetune --resample

_UNITS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


def cadence_label(cadence_s: int) -> str:
    """``600`` -> ``10min``, ``3600`` -> ``1h``: the largest unit that divides it."""
    for unit, size in _UNITS:
        if cadence_s % size == 0:
            return f"{cadence_s // size}{unit}"
    raise ValueError(f"cadence {cadence_s} s is not a whole number of seconds")


def parse_label(label: str) -> int | None:
    """The inverse of :func:`cadence_label` (None: not a cadence label)."""
    m = re.fullmatch(r"(\d+)(d|h|min|s)", label)
    if not m or int(m.group(1)) == 0:
        return None
    return int(m.group(1)) * dict(_UNITS)[m.group(2)]


def parse_declared(text: str | None) -> dict[str, int]:
    """Declared cadences, ``station=cadence`` comma-separated (``EWR=1h,jena=10min,KDEN=3600``): the stations whose
    cadence is known up front. A bad entry raises ValueError naming it."""
    out: dict[str, int] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        station, sep, value = (x.strip() for x in entry.partition("="))
        cadence = (int(value) if value.isdigit() and int(value) > 0 else parse_label(value)) if sep else None
        if not station or cadence is None:
            raise ValueError(f"{entry.strip()!r} is not station=cadence (a cadence is seconds or a label such as "
                             "10min or 1h)")
        out[station] = cadence
    return out


def describe(cadence_s: float) -> str:
    """A cadence or horizon for people: ``10 min``, ``1 h``, ``24 h``, ``37 s``."""
    c = int(round(cadence_s))
    for unit, size in (("h", 3600), ("min", 60)):
        if c >= size and c % size == 0:
            return f"{c // size} {unit}"
    return f"{c} s"


def horizon_label(steps: int, cadence_s: int) -> str:
    """A horizon in time: 1 step at 600 s is ``+10 min``, 6 steps is ``+1 h``."""
    return "+" + describe(steps * cadence_s)


def champion_name(base: str, cadence_s: int) -> str:
    """The registry name of the champion for ``cadence_s`` (``base`` itself for hourly)."""
    return base if cadence_s == HOURLY else f"{base}-{cadence_label(cadence_s)}"


def shipped_dir(name: str) -> str:
    """The folder of pipeline/pretrained_models that ships ``name`` (``global-10min`` -> ``global_10min``)."""
    return name.replace("-", "_")


def cadence_of_name(base: str, name: str) -> int | None:
    """The cadence a registry (or shipped) name stands for under ``base`` (None: not one of base's champions)."""
    if name == base:
        return HOURLY
    for sep in ("-", "_"):
        if name.startswith(base + sep):
            return parse_label(name[len(base) + 1:])
    return None


def matching(detected_s: float, cadences: Iterable[int]) -> int | None:
    """The served cadence a detected spacing matches (None: none)."""
    for c in sorted(cadences):
        if abs(detected_s - c) <= TOLERANCE * c:
            return c
    return None


def spacing(ts: np.ndarray) -> float:
    """Median spacing in seconds of the distinct, sorted times ``ts`` (int seconds); NaN with fewer than two."""
    u = np.unique(ts)
    return float(np.median(np.diff(u))) if len(u) > 1 else float("nan")


def file_cadences(records: pd.DataFrame) -> pd.Series:
    """Per station of a loaded file (``station``, ``time``), the median spacing of its readings in seconds."""
    ts = records["time"].to_numpy(dtype="datetime64[s]").astype(np.int64)
    frame = pd.DataFrame({"station": records["station"].to_numpy(), "ts": ts}).drop_duplicates()
    frame = frame.sort_values(["station", "ts"], kind="stable")
    gaps = frame.groupby("station", sort=True)["ts"].diff()
    return gaps.groupby(frame["station"]).median().dropna()


def resample(records: pd.DataFrame, cadence_s: int, agg: str) -> pd.DataFrame:
    """Readings of every station aggregated onto a ``cadence_s`` grid, as the training side's ``--resample`` does:
    each step at time ``t`` is the ``agg`` of the readings in ``(t - cadence, t]`` (a value is never stamped before
    it was measured), on the station's own phase (the bins end on its last reading's time, so Jena's ``HH:10``
    stays ``HH:10``), and a step missing any of its readings is missing (never an aggregate of what is left).
    ``cadence_s`` must be a whole multiple of each station's spacing."""
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {agg!r}; one of {', '.join(AGGREGATIONS)}")
    value_cols = [c for c in records.columns if c not in ("station", "time")]
    cadence = pd.Timedelta(seconds=cadence_s)
    every = file_cadences(records)
    parts = []
    for station, part in records.groupby("station", sort=False):
        factor = cadence_s / every[station]
        if factor < 1 or factor != int(factor):
            raise ValueError(f"station {station}: cannot aggregate readings every {describe(every[station])} to "
                             f"every {describe(cadence_s)}: not a whole multiple")
        frame = part.drop_duplicates("time").set_index("time")[value_cols].sort_index()
        end = frame.index[-1]
        first_end = end - ((end - frame.index[0]) // cadence) * cadence
        bins = frame.resample(cadence, closed="right", label="right", origin=first_end - cadence)
        values = bins.sum(min_count=1) if agg == "sum" else bins.agg(agg)
        values = values.where(bins.count() >= int(factor))
        parts.append(values.dropna(how="all").reset_index().assign(station=station))
    merged = pd.concat(parts, ignore_index=True)[["station", "time", *value_cols]]
    return merged.sort_values(["time", "station"], kind="stable").reset_index(drop=True)


class CadenceDetector:
    """Per station, its first readings' times until :data:`DETECT_READINGS` distinct ones are known, then its cadence.

    ``declared`` fixes a station's cadence up front (the ``station_cadences`` setting), skipping detection."""

    def __init__(self, n: int = DETECT_READINGS, declared: dict[str, int] | None = None):
        if n < 2:
            raise ValueError("cadence detection needs at least 2 readings")
        self.n = n
        self.declared: dict[str, int] = dict(declared or {})
        self.cadence: dict[str, float] = {k: float(v) for k, v in self.declared.items()}
        self._seen: dict[str, set[int]] = {}

    def forget(self, station: str) -> None:
        """Detection starts again for a station that moved away; a declared cadence stays."""
        self._seen.pop(station, None)
        if station in self.declared:
            self.cadence[station] = float(self.declared[station])
        else:
            self.cadence.pop(station, None)

    def observe(self, station: np.ndarray, ts: np.ndarray) -> list[str]:
        """Note the times of readings of stations not detected yet; the stations detected by this call."""
        known = self.cadence
        todo = np.fromiter((s not in known for s in station.tolist()), dtype=bool, count=len(station))
        done = []
        for s, t in zip(station[todo].tolist(), ts[todo].tolist(), strict=True):
            seen = self._seen.setdefault(s, set())
            if len(seen) < self.n:
                seen.add(int(t))
                if len(seen) == self.n:
                    done.append(s)
        for s in done:
            known[s] = spacing(np.fromiter(self._seen.pop(s), dtype=np.int64))
        return done

    def pending(self) -> int:
        return len(self._seen)
