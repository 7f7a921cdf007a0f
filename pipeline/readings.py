"""The readings message schema and its validation: Kafka bytes in, a columnar batch and dead letters out.

A message on the readings topic is keyed by the station id (UTF-8 bytes) and holds a JSON object::

    {"station": "EWR", "time": "2013-01-01T06:00:00Z", "values": {"T": 3.9, "rh": 59.37, "p": 1012.0}}

- ``station``: non-empty string (no control characters, at most :data:`MAX_STATION_LEN` characters).
- ``time``: ISO-8601 text (no offset means UTC; ``Z``/``+hh:mm`` offsets are converted to UTC) or epoch
  seconds (a JSON number). Times before :data:`MIN_TIME` or more than ``max_future`` ahead are rejected.
- ``values``: object of canonical sensor name (see :data:`SENSORS`) -> JSON number, or ``null`` for "not
  measured". Unknown sensor names are ignored and counted in :attr:`ReadingBatch.unknown_sensors`.

Stations send garbage: every message that is not a valid reading becomes a :class:`DeadLetter` with one of
the :data:`REASONS` (the first failing check, in the order listed there); nothing raises. This runs on the
hot path, so the per-message Python work is one ``orjson.loads`` and a few type checks; timestamps are
parsed and ranges checked for the whole batch at once with pandas/numpy.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pandas as pd

from forecaster.schema import SENSOR_RANGES

SENSORS: tuple[str, ...] = tuple(SENSOR_RANGES)
SENSOR_INDEX: dict[str, int] = {name: i for i, name in enumerate(SENSORS)}
_LO = np.array([SENSOR_RANGES[s][0] for s in SENSORS], dtype=np.float64)
_HI = np.array([SENSOR_RANGES[s][1] for s in SENSORS], dtype=np.float64)

MAX_STATION_LEN = 128
# Earlier timestamps are station clocks reset to the epoch, not readings (historical replays start in 2009+).
MIN_TIME = np.datetime64("1990-01-01T00:00:00", "us")
# Latest time representable as datetime64[ns] with margin.
_MAX_TIME = np.datetime64("2262-01-01T00:00:00", "us")
# Dead-letter records stay far below any producer's max_request_size (1 MiB by default), whatever came in.
DEADLETTER_EXCERPT_BYTES = 4096
DEADLETTER_KEY_BYTES = 1024
DEADLETTER_DETAIL_CHARS = 1000
_MAX_UNKNOWN_NAMES = 1000  # distinct unknown sensor names tracked; the rest count under "<other>"

# Dead-letter reasons, in the order the checks run (a message gets the first one that fails).
REASONS: dict[str, str] = {
    "not_json": "payload is not UTF-8 JSON (or is empty / a tombstone)",
    "not_an_object": "JSON value is not an object (list, string, number, null, ...)",
    "missing_station": "station absent, null, empty or only whitespace",
    "bad_station": "station not a string, with surrounding whitespace or control characters, or too long",
    "missing_time": "time absent or null",
    "non_numeric": "a known sensor's value is not a JSON number or null (string, bool, list, object)",
    "no_values": "values absent or not an object, or no known sensor with a non-null value",
    "bad_time": "time not ISO-8601 text or finite epoch seconds, or before MIN_TIME / after 2262 (ns limit)",
    "future_time": "time is more than max_future ahead of now",
    "not_finite": "a value is NaN or +-Infinity (non-standard JSON literals, or a number beyond float64)",
    "out_of_range": "a value outside forecaster.schema.SENSOR_RANGES for its sensor",
}
_REASON_LIST = tuple(REASONS)
_CODE = {r: i + 1 for i, r in enumerate(_REASON_LIST)}  # 0 = valid


@dataclass
class ReadingBatch:
    """Valid readings of one poll, columnar: row i is one message.

    ``values`` is float64 [N, len(SENSORS)] in :data:`SENSORS` order, NaN where a sensor was not sent or null.
    ``partition``/``offset`` give each row's Kafka provenance when the caller passed them.
    """

    station: np.ndarray
    time: np.ndarray
    values: np.ndarray
    partition: np.ndarray | None = None
    offset: np.ndarray | None = None
    unknown_sensors: dict[str, int] = field(default_factory=dict)
    key_mismatch: int = 0  # accepted messages whose Kafka key was not the station id

    def __len__(self) -> int:
        return len(self.station)

    @classmethod
    def empty(cls) -> ReadingBatch:
        return cls(
            station=np.empty(0, dtype=object),
            time=np.empty(0, dtype="datetime64[ns]"),
            values=np.empty((0, len(SENSORS)), dtype=np.float64),
        )

    def to_frame(self) -> pd.DataFrame:
        """The long layout of :func:`forecaster.data.load_records`: station, time, one column per sensor."""
        frame = pd.DataFrame(self.values, columns=list(SENSORS))
        frame.insert(0, "time", self.time)
        frame.insert(0, "station", self.station)
        return frame


@dataclass
class DeadLetter:
    """A rejected message, why, its original bytes and provenance: so it can be inspected or replayed.

    On the topic the record is bounded (:data:`DEADLETTER_EXCERPT_BYTES` of the payload, a short key and
    detail, plus the original's size and sha256): a payload near the broker's size limit would otherwise
    grow by a third in base64, be refused by the producer and stop the partition.
    """

    reason: str
    detail: str
    raw: bytes
    key: bytes | None = None
    partition: int | None = None
    offset: int | None = None
    size: int = -1  # of the original payload; -1: len(raw)
    sha256: str = ""  # of the original payload; "": computed from raw

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.raw)
        if not self.sha256:
            self.sha256 = hashlib.sha256(self.raw).hexdigest()

    @property
    def record_key(self) -> bytes | None:
        """The key to publish under: the original one, cut to :data:`DEADLETTER_KEY_BYTES`."""
        return None if self.key is None else self.key[:DEADLETTER_KEY_BYTES]

    def to_message(self) -> bytes:
        """JSON for the dead-letter topic; key and payload excerpt are base64 so any bytes survive.

        ``truncated`` says whether ``raw`` holds the whole original (``size`` bytes, ``sha256``) or its start.
        """
        excerpt = self.raw[:DEADLETTER_EXCERPT_BYTES]
        return orjson.dumps(
            {
                "reason": self.reason,
                "detail": _short_text(self.detail, DEADLETTER_DETAIL_CHARS),
                "key": None if self.key is None else base64.b64encode(self.record_key).decode("ascii"),
                "key_size": None if self.key is None else len(self.key),
                "raw": base64.b64encode(excerpt).decode("ascii"),
                "size": self.size,
                "sha256": self.sha256,
                "truncated": len(excerpt) < self.size,
                "partition": self.partition,
                "offset": self.offset,
            }
        )

    @classmethod
    def from_message(cls, data: bytes) -> DeadLetter:
        """Inverse of :meth:`to_message` (``raw`` is only the excerpt when the record says ``truncated``)."""
        obj = orjson.loads(data)
        key = obj.get("key")
        return cls(
            reason=obj["reason"],
            detail=obj["detail"],
            raw=base64.b64decode(obj["raw"]),
            key=None if key is None else base64.b64decode(key),
            partition=obj.get("partition"),
            offset=obj.get("offset"),
            size=obj.get("size", -1),
            sha256=obj.get("sha256", ""),
        )


_NOT_JSON = object()
_NUMERIC_TYPES = frozenset((float, int))


def _known_values(values: dict, unknown: dict[str, int]) -> tuple[list[int], list[float], str | None]:
    """Per-value path for unknown sensor names, nulls or non-numbers: (columns, values, bad name)."""
    cols: list[int] = []
    vals: list[float] = []
    for name, v in values.items():
        j = SENSOR_INDEX.get(name)
        if j is None:
            if name in unknown or len(unknown) < _MAX_UNKNOWN_NAMES:
                unknown[name] = unknown.get(name, 0) + 1
            else:
                unknown["<other>"] = unknown.get("<other>", 0) + 1
        elif type(v) is float or type(v) is int:
            cols.append(j)
            vals.append(v)
        elif v is not None:
            return cols, vals, name
    return cols, vals, None


def _lenient_loads(payload: object) -> object:
    """Cold path after orjson failed: accept only what stdlib json adds (NaN/Infinity, overflowing numbers).

    Those parse to non-finite floats so the message is rejected as ``not_finite`` rather than ``not_json``:
    Python stations using ``json.dumps`` send exactly that for a failed sensor.
    """
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes | bytearray | memoryview) else payload
        return json.loads(text, parse_int=float) if isinstance(text, str) else _NOT_JSON
    except (ValueError, RecursionError, TypeError, UnicodeDecodeError):
        return _NOT_JSON


def _short_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_bytes(payload: object) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    return bytes(payload)  # type: ignore[arg-type]


def _parse_iso(texts: list[str]) -> np.ndarray:
    """ISO-8601 strings -> int64 microseconds since the epoch (UTC), NaT (int64 min) where unparseable."""
    arr = np.array(texts, dtype=object)
    try:
        idx = pd.to_datetime(arr, format="ISO8601", utc=True, errors="coerce")
        return idx.tz_convert(None).as_unit("us").asi8.copy()
    except (ValueError, TypeError, OverflowError):  # pandas refuses the batch as a whole: one by one (cold)
        out = np.full(len(texts), np.iinfo(np.int64).min, dtype=np.int64)
        for i, text in enumerate(texts):
            try:
                ts = pd.Timestamp(text)
                ts = ts.tz_convert(None) if ts.tzinfo is not None else ts
                out[i] = ts.as_unit("us").value
            except (ValueError, TypeError, OverflowError):
                pass
        return out


def _epoch_us(seconds: list[float]) -> np.ndarray:
    """Epoch seconds -> int64 microseconds, NaT where not finite or beyond datetime64[ns]."""
    arr = np.array(seconds, dtype=np.float64)
    ok = np.isfinite(arr) & (np.abs(arr) < 9.2e9)
    out = np.full(len(arr), np.iinfo(np.int64).min, dtype=np.int64)
    out[ok] = np.round(arr[ok] * 1e6).astype(np.int64)
    return out


def _now_us(now: np.datetime64 | datetime | None) -> np.int64:
    if now is None:
        return np.datetime64(datetime.now(UTC).replace(tzinfo=None), "us").astype(np.int64)
    return np.datetime64(now, "us").astype(np.int64)


def parse_readings(
    raw: Sequence[bytes],
    keys: Sequence[bytes | None] | None = None,
    partitions: Sequence[int] | np.ndarray | None = None,
    offsets: Sequence[int] | np.ndarray | None = None,
    now: np.datetime64 | datetime | None = None,
    max_future: timedelta = timedelta(hours=1),
    min_time: np.datetime64 = MIN_TIME,
) -> tuple[ReadingBatch, list[DeadLetter]]:
    """Validate a batch of readings messages; return the valid ones columnar and the rest as dead letters.

    ``now`` (UTC-naive, default: the wall clock) and ``max_future`` bound how far ahead a timestamp may be:
    clocks drift, but a reading from tomorrow is a broken clock. Never raises on message content.
    """
    loads = orjson.loads
    index_get = SENSOR_INDEX.get
    numeric = _NUMERIC_TYPES
    decode_error = orjson.JSONDecodeError
    rejected: list[tuple[int, str, str]] = []
    unknown: dict[str, int] = {}
    msg_idx: list[int] = []  # raw index of each candidate (passed the per-message checks)
    stations: list[str] = []
    t_str_pos: list[int] = []
    t_str: list[str] = []
    t_num_pos: list[int] = []
    t_num: list[float] = []
    counts: list[int] = []  # known non-null values per candidate
    v_col: list[int] = []
    v_val: list[float] = []

    for i, payload in enumerate(raw):
        try:
            obj = loads(payload)
        except (decode_error, TypeError) as exc:
            obj = _lenient_loads(payload)
            if obj is _NOT_JSON:
                rejected.append((i, "not_json", str(exc)[:200] if payload else "empty payload"))
                continue
        if type(obj) is not dict:
            rejected.append((i, "not_an_object", f"JSON {type(obj).__name__}"))
            continue
        station = obj.get("station")
        if type(station) is str:
            if not station.strip():
                rejected.append((i, "missing_station", f"station {station!r}"))
                continue
            if len(station) > MAX_STATION_LEN or not station.isprintable() or station.strip() != station:
                rejected.append((i, "bad_station", f"station {_short(station)}"))
                continue
        elif station is None:
            rejected.append(
                (i, "missing_station", "no station" if "station" not in obj else "station is null")
            )
            continue
        else:
            rejected.append((i, "bad_station", f"station is a {type(station).__name__}: {_short(station)}"))
            continue
        t = obj.get("time")
        if t is None:
            rejected.append((i, "missing_time", "no time" if "time" not in obj else "time is null"))
            continue
        values = obj.get("values")
        if type(values) is not dict:
            what = "no values" if values is None else f"values is a {type(values).__name__}"
            rejected.append((i, "no_values", what))
            continue
        cols = list(map(index_get, values))
        vals = list(values.values())
        if None in cols or not numeric.issuperset(map(type, vals)):  # unknown names or nulls: slow path
            cols, vals, bad = _known_values(values, unknown)
            if bad is not None:
                rejected.append((i, "non_numeric", f"{bad}={_short(values[bad])}"))
                continue
        if not cols:
            rejected.append((i, "no_values", f"no known sensor with a value (got {_short(list(values))})"))
            continue
        tt = type(t)
        if tt is str:
            t_str_pos.append(len(msg_idx))
            t_str.append(t)
        elif tt is float or tt is int:
            t_num_pos.append(len(msg_idx))
            t_num.append(t)
        else:
            rejected.append((i, "bad_time", f"time is a {tt.__name__}: {_short(t)}"))
            continue
        msg_idx.append(i)
        stations.append(station)
        counts.append(len(cols))
        v_col.extend(cols)
        v_val.extend(vals)

    m = len(msg_idx)
    code = np.zeros(m, dtype=np.int8)

    # Timestamps, whole batch at once.
    t_us = np.empty(m, dtype=np.int64)
    if t_str:
        t_us[np.array(t_str_pos, dtype=np.intp)] = _parse_iso(t_str)
    if t_num:
        t_us[np.array(t_num_pos, dtype=np.intp)] = _epoch_us(t_num)
    lo_us = np.datetime64(min_time, "us").astype(np.int64)
    future_us = _now_us(now) + np.int64(max_future // timedelta(microseconds=1))
    code[(t_us < lo_us) | (t_us > _MAX_TIME.astype(np.int64))] = _CODE["bad_time"]
    code[(code == 0) & (t_us > future_us)] = _CODE["future_time"]

    # Values: non-finite, then physically impossible, checked over the whole batch.
    vals = np.array(v_val, dtype=np.float64)
    pos = np.repeat(np.arange(m, dtype=np.intp), np.array(counts, dtype=np.intp))
    col = np.array(v_col, dtype=np.intp)
    finite = np.isfinite(vals)
    out_of_range = finite & ((vals < _LO[col]) | (vals > _HI[col]))
    first_bad: dict[int, int] = {}
    for reason, mask in (("not_finite", ~finite), ("out_of_range", out_of_range)):
        if mask.any():
            where = np.flatnonzero(mask)
            msgs, first = np.unique(pos[where], return_index=True)
            fresh = code[msgs] == 0
            code[msgs[fresh]] = _CODE[reason]
            first_bad.update(zip(msgs[fresh].tolist(), where[first[fresh]].tolist(), strict=True))

    ok = code == 0
    for p in np.flatnonzero(~ok).tolist():
        reason = _REASON_LIST[code[p] - 1]
        i = msg_idx[p]
        if reason in ("bad_time", "future_time"):
            detail = f"time {_short(_time_of(raw[i]))}"
            if reason == "bad_time":
                detail += f" is not ISO-8601/epoch seconds within [{min_time}, {_MAX_TIME})"
            else:
                detail += f" is more than {max_future} ahead of now"
        else:
            k = first_bad[p]
            name = SENSORS[col[k]]
            lo, hi = SENSOR_RANGES[name]
            detail = f"{name}={float(vals[k])!r}" + (
                f" outside [{lo}, {hi}]" if reason == "out_of_range" else ""
            )
        rejected.append((i, reason, detail))

    # Columnar output of the valid messages.
    n_ok = int(ok.sum())
    row_of = np.cumsum(ok) - 1
    keep = ok[pos]
    matrix = np.full((n_ok, len(SENSORS)), np.nan, dtype=np.float64)
    matrix[row_of[pos[keep]], col[keep]] = vals[keep]
    src = np.array(msg_idx, dtype=np.intp)[ok]
    station_arr = np.array(stations, dtype=object)[ok] if m else np.empty(0, dtype=object)
    batch = ReadingBatch(
        station=station_arr,
        time=(t_us[ok] * 1000).view("datetime64[ns]"),
        values=matrix,
        partition=None if partitions is None else np.asarray(partitions, dtype=np.int64)[src],
        offset=None if offsets is None else np.asarray(offsets, dtype=np.int64)[src],
        unknown_sensors=unknown,
    )
    if keys is not None and n_ok:
        batch.key_mismatch = sum(
            keys[i] is not None and keys[i] != s.encode("utf-8")
            for i, s in zip(src.tolist(), station_arr.tolist(), strict=True)
        )

    rejected.sort(key=lambda r: r[0])
    dead = [
        DeadLetter(
            reason=reason,
            detail=detail,
            raw=_as_bytes(raw[i]),
            key=None if keys is None or keys[i] is None else bytes(keys[i]),
            partition=None if partitions is None else int(partitions[i]),
            offset=None if offsets is None else int(offsets[i]),
        )
        for i, reason, detail in rejected
    ]
    return batch, dead


def _time_of(payload: object) -> object:
    """The ``time`` field of a message already known to be an object (cold path, for dead-letter details)."""
    try:
        obj = orjson.loads(payload)  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, TypeError):
        obj = _lenient_loads(payload)
    return obj.get("time") if isinstance(obj, dict) else None
