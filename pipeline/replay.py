"""Publish real station records as live readings, optionally with the faults real station networks have.

Replaying recorded observations through Kafka exercises the whole pipeline on real weather without a
station network: readings of all stations are interleaved in time order, keyed by station id, in the
:mod:`pipeline.readings` message schema. :class:`Faults` injects clock jitter, out-of-order delivery,
duplicates, outages (gaps) and malformed messages, chosen reproducibly (seeded) and vectorized with numpy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from tqdm import tqdm

from forecaster.data import load_records
from forecaster.schema import SENSOR_RANGES, Schema
from pipeline.readings import SENSORS

# Kinds of malformed message :class:`Faults` injects, and the dead-letter reason each one must get.
MALFORMED_REASONS: dict[str, str] = {
    "not_json": "not_json",  # the message truncated mid-object
    "missing_station": "missing_station",  # station key absent or ""
    "nan_value": "not_finite",  # a sensor sent as the NaN literal (what Python's json.dumps writes)
    "impossible_value": "out_of_range",  # a sensor sent as the -9999 sentinel
    "future_time": "future_time",  # timestamp 30 days after the wall clock
    "non_numeric": "non_numeric",  # a sensor sent as a string
}
MALFORMED_KINDS: tuple[str, ...] = tuple(MALFORMED_REASONS)
GAP_MEAN_RUN = 6  # mean length (readings) of an injected outage
_PROGRESS_EVERY = 1024


@dataclass(frozen=True)
class Faults:
    """Faults to inject while replaying; fractions of the replayed readings, reproducible from ``seed``.

    ``jitter_s``: uniform clock error in [-jitter_s, +jitter_s] added to each reported time.
    ``out_of_order``: readings delivered after the same station's next reading (swapped with it).
    ``duplicates``: readings delivered twice in a row (at-least-once redelivery).
    ``gaps``: readings dropped, in per-station runs of about :data:`GAP_MEAN_RUN` (station outages).
    ``malformed``: readings replaced by a malformed message of a random kind from :data:`MALFORMED_KINDS`.
    """

    jitter_s: float = 0.0
    out_of_order: float = 0.0
    duplicates: float = 0.0
    gaps: float = 0.0
    malformed: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("out_of_order", "duplicates", "gaps", "malformed"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Faults.{name} must be a fraction in [0, 1], got {getattr(self, name)}")
        if self.jitter_s < 0:
            raise ValueError(f"Faults.jitter_s must be >= 0, got {self.jitter_s}")


@dataclass
class ReplayStats:
    """What a replay sent, so a consumer's counts can be checked against it.

    ``rows``: records selected (after station/time filters and ``limit``, rows without any sensor skipped).
    ``sent``: messages produced, duplicates and malformed ones included.
    ``dropped``: readings left out as gaps.
    ``duplicates``/``reordered``: extra copies sent / swaps with the station's next reading.
    ``malformed``: per kind (see :data:`MALFORMED_REASONS` for the dead-letter reason each must get).
    ``source_invalid``: messages of real readings with a value outside SENSOR_RANGES (real sensor faults
    that the validator rejects as ``out_of_range``), duplicates included.
    ``failed``: messages the producer reported as not delivered.
    """

    rows: int = 0
    sent: int = 0
    dropped: int = 0
    duplicates: int = 0
    reordered: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    skipped_empty: int = 0
    source_invalid: int = 0
    failed: int = 0
    stations: list[str] = field(default_factory=list)
    first_time: str | None = None
    last_time: str | None = None
    elapsed_s: float = 0.0

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    @property
    def expected_rejected(self) -> int:
        """Messages a validator must dead-letter: injected malformed plus real out-of-range readings."""
        return self.malformed_total + self.source_invalid

    @property
    def expected_valid(self) -> int:
        return self.sent - self.expected_rejected

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "expected_rejected": self.expected_rejected}


def records_for_replay(
    path: str | Path,
    schema: Schema | str | None = None,
    stations: Sequence[str] | None = None,
    rename: dict[str, str] | None = None,
    station_prefix: str | None = None,
) -> pd.DataFrame:
    """Load a station file for :func:`replay`, optionally under new station ids.

    ``rename`` maps file station ids to new ones (a single-station file is named after the file, e.g.
    ``{"noaa_denver_2010_2016_hourly": "denver"}``); ``station_prefix`` is prepended to every id, so the same
    file can be replayed as several distinct stations. ``stations`` keeps rows whose original or new id is
    listed.
    """
    records = load_records(path, schema)
    original = records["station"].astype(str)
    new = original.map(rename).fillna(original) if rename else original
    if station_prefix:
        new = station_prefix + new
    if stations is not None:
        wanted = set(stations)
        keep = (original.isin(wanted) | new.isin(wanted)).to_numpy()
        records, new = records.loc[keep], new.loc[keep]
    records = records.assign(station=new.to_numpy())
    return records.reset_index(drop=True)


def _gap_mask(st_code: np.ndarray, n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Drop runs of readings per station (outages): True where dropped, in the caller's row order."""
    dropped = np.zeros(n, dtype=bool)
    if fraction <= 0 or n == 0:
        return dropped
    order = np.lexsort((np.arange(n), st_code))  # by station, then replay (time) order
    sorted_codes = st_code[order]
    group_end = np.searchsorted(sorted_codes, sorted_codes, side="right")
    starts = np.flatnonzero(rng.random(n) < fraction / GAP_MEAN_RUN)
    lengths = rng.geometric(1.0 / GAP_MEAN_RUN, size=len(starts))
    ends = np.minimum(starts + lengths, group_end[starts])
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, starts, 1)
    np.add.at(diff, ends, -1)
    dropped[order] = np.cumsum(diff[:n]) > 0
    return dropped


def _swap_with_next(st_code: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Emission order where chosen readings come after the same station's next one; (order, swaps)."""
    n = len(st_code)
    seq = np.arange(n)
    if fraction <= 0 or n < 2:
        return seq, 0
    order = np.lexsort((seq, st_code))
    same = st_code[order[1:]] == st_code[order[:-1]]
    nxt = np.full(n, -1)
    nxt[order[:-1][same]] = order[1:][same]
    chosen = (rng.random(n) < fraction) & (nxt >= 0)
    taken = np.zeros(n, dtype=bool)
    taken[nxt[chosen]] = True  # a reading already moving as someone's "next" is not moved again
    chosen &= ~taken
    a = np.flatnonzero(chosen)
    b = nxt[a]
    seq[a], seq[b] = b, a
    return seq, len(a)


def _malformed(
    kind: str, station: str, stamp: str, values: dict[str, float], rng: np.random.Generator
) -> bytes:
    """One malformed message of ``kind`` derived from a real reading."""
    sensor = list(values)[int(rng.integers(len(values)))]
    if kind == "not_json":
        good = orjson.dumps({"station": station, "time": stamp, "values": values})
        return good[: max(1, int(len(good) * rng.uniform(0.2, 0.9)))]
    if kind == "missing_station":
        msg: dict[str, Any] = {"time": stamp, "values": values}
        if rng.random() < 0.5:
            msg = {"station": "", **msg}
        return orjson.dumps(msg)
    if kind == "nan_value":
        return json.dumps(
            {"station": station, "time": stamp, "values": {**values, sensor: float("nan")}}
        ).encode()
    if kind == "impossible_value":
        return orjson.dumps({"station": station, "time": stamp, "values": {**values, sensor: -9999.0}})
    if kind == "future_time":
        future = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return orjson.dumps({"station": station, "time": future, "values": values})
    if kind == "non_numeric":
        return orjson.dumps(
            {"station": station, "time": stamp, "values": {**values, sensor: str(values[sensor])}}
        )
    raise ValueError(f"unknown malformed kind {kind!r}")


def replay(
    records: pd.DataFrame,
    producer: Any,
    topic: str,
    speedup: float = 0.0,
    stations: Sequence[str] | None = None,
    faults: Faults | None = None,
    limit: int | None = None,
    start: str | datetime | pd.Timestamp | None = None,
    end: str | datetime | pd.Timestamp | None = None,
    progress: bool = True,
) -> ReplayStats:
    """Send ``records`` (the :func:`forecaster.data.load_records` layout) to ``topic`` as readings messages.

    ``speedup`` 0 sends as fast as the producer takes them; otherwise data time advances ``speedup`` x wall
    time (3600: an hour of readings per second). ``start``/``end`` filter on time (end exclusive); ``limit``
    caps the number of readings. NaN sensor values are omitted from ``values``; rows without any value are
    skipped. ``producer`` is a kafka-python producer taking bytes keys and values; it is flushed at the end.
    """
    faults = faults or Faults()
    began = time.monotonic()
    rng = np.random.default_rng(faults.seed)
    stats = ReplayStats(malformed=dict.fromkeys(MALFORMED_KINDS, 0))

    frame = records
    if stations is not None:
        frame = frame[frame["station"].isin(list(stations))]
    if start is not None:
        frame = frame[frame["time"] >= pd.Timestamp(start)]
    if end is not None:
        frame = frame[frame["time"] < pd.Timestamp(end)]
    sensors = [s for s in SENSORS if s in frame.columns]
    values = frame[sensors].to_numpy(dtype=np.float64)
    has_value = ~np.isnan(values).all(axis=1)
    stats.skipped_empty = int((~has_value).sum())
    frame, values = frame[has_value], values[has_value]
    order = np.lexsort((frame["station"].to_numpy(dtype=object).astype(str), frame["time"].to_numpy()))
    if limit is not None:
        order = order[:limit]
    frame, values = frame.iloc[order], values[order]
    n = len(frame)
    stats.rows = n
    station_names = frame["station"].to_numpy(dtype=object).astype(str)
    uniq, st_code = np.unique(station_names, return_inverse=True)
    stats.stations = uniq.tolist()
    times = frame["time"].to_numpy().astype("datetime64[ns]")
    if n:
        stats.first_time = str(times[0].astype("datetime64[s]"))
        stats.last_time = str(times[-1].astype("datetime64[s]"))

    # Faults, chosen for all readings at once.
    dropped = _gap_mask(st_code, n, faults.gaps, rng)
    stats.dropped = int(dropped.sum())
    kept = np.flatnonzero(~dropped)
    seq, stats.reordered = _swap_with_next(st_code[kept], faults.out_of_order, rng)
    rows = kept[seq]  # record row of each reading, in emission order
    m = len(rows)
    kind = np.where(rng.random(m) < faults.malformed, rng.integers(len(MALFORMED_KINDS), size=m), -1)
    dup = (rng.random(m) < faults.duplicates) & (kind < 0)
    stats.duplicates = int(dup.sum())
    emit = np.repeat(np.arange(m), 1 + dup)  # positions into rows/kind; a duplicate follows its original
    for k, c in zip(*np.unique(kind[kind >= 0], return_counts=True), strict=True):
        stats.malformed[MALFORMED_KINDS[k]] = int(c)

    # Real readings outside the physical ranges: the validator will reject them too.
    lo = np.array([SENSOR_RANGES[s][0] for s in sensors])
    hi = np.array([SENSOR_RANGES[s][1] for s in sensors])
    with np.errstate(invalid="ignore"):
        impossible = ((values < lo) | (values > hi)).any(axis=1)
    stats.source_invalid = int((impossible[rows[emit]] & (kind[emit] < 0)).sum())

    if faults.jitter_s > 0:
        offset_ms = np.round(rng.uniform(-faults.jitter_s, faults.jitter_s, size=n) * 1000).astype(np.int64)
        stamped = times.astype("datetime64[ms]") + offset_ms.astype("timedelta64[ms]")
        stamps = np.char.add(np.datetime_as_string(stamped, unit="ms"), "Z").tolist()
    else:
        stamps = np.char.add(np.datetime_as_string(times, unit="s"), "Z").tolist()
    keys = [s.encode("utf-8") for s in uniq.tolist()]
    value_rows = values.tolist()
    data_ns = times.astype(np.int64)

    def failed(_exc: BaseException) -> None:
        stats.failed += 1

    bar = tqdm(total=len(emit), desc=f"replay -> {topic}", unit="msg", disable=not progress)
    wall0 = time.monotonic()
    data0 = int(data_ns[rows[0]]) if m else 0
    last_pos, last_msg = -1, b""
    for count, p in enumerate(emit.tolist()):
        r = int(rows[p])
        if speedup > 0:
            ahead = (data_ns[r] - data0) / 1e9 / speedup - (time.monotonic() - wall0)
            if ahead > 0.002:
                time.sleep(ahead)
        if p != last_pos:  # a duplicate reuses its original's bytes
            station = station_names[r]
            reading = {c: v for c, v in zip(sensors, value_rows[r], strict=True) if v == v}
            if kind[p] < 0:
                last_msg = orjson.dumps({"station": station, "time": stamps[r], "values": reading})
            else:
                last_msg = _malformed(MALFORMED_KINDS[kind[p]], station, stamps[r], reading, rng)
            last_pos = p
        producer.send(topic, key=keys[st_code[r]], value=last_msg).add_errback(failed)
        if count % _PROGRESS_EVERY == _PROGRESS_EVERY - 1:
            bar.update(_PROGRESS_EVERY)
    producer.flush()
    stats.sent = len(emit)
    bar.update(stats.sent - bar.n)
    bar.close()
    stats.elapsed_s = time.monotonic() - began
    return stats
