"""The synthetic station fleet the streaming benchmarks share: real NOAA hourly values under synthetic station ids,
turned into the messages a poll brings, and the broker plumbing to publish and read them back."""

from __future__ import annotations

import functools
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from kafka import KafkaConsumer, TopicPartition

from bench.common import SHARED_DATA
from forecaster.data import load_records
from pipeline.broker import BrokerConfig, EmbeddedBroker, ensure_topics
from pipeline.readings import SENSORS

FEATURES = ("T", "Tdew", "rh", "wv")  # the shipped model's inputs, in card order
PARTITIONS = 4
MAX_BATCH = 10_000  # ServiceConfig.max_batch
CONSUME_DEADLINE_S = 120.0


def source_files() -> list[Path]:
    files = sorted(SHARED_DATA.glob("noaa_*_hourly.csv.gz"))
    if not files:
        raise SystemExit(f"benchmark needs the real NOAA records {SHARED_DATA}/noaa_*_hourly.csv.gz; none found")
    return files


@functools.cache
def _source(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A NOAA record: its sensors, epoch seconds [N] and values [N, sensors] (loaded once per process)."""
    rec = load_records(path)
    sensors = [s for s in SENSORS if s in rec.columns]
    return sensors, rec["time"].to_numpy().astype("datetime64[s]").astype(np.int64), rec[sensors].to_numpy(np.float64)


def fleet_values(
    n_stations: int, n_ticks: int, seed: int = 0, end: pd.Timestamp | None = None
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """``n_stations`` synthetic stations (``st00000``...) x ``n_ticks`` hourly readings of real values:
    (station ids [S], tick times datetime64[s] [T], sensor names [F], values [T, S, F]).

    Each station replays a contiguous, gap-free run of real hourly records of one NOAA station (T, Tdew, rh
    and wv all present) starting at a random row with the same hour of day as the first tick; the last tick
    is ``end`` (default: the current hour, so no reading is in the future)."""
    rng = np.random.default_rng(seed)
    end = (pd.Timestamp.now("UTC").tz_localize(None) if end is None else end).floor("h")
    start = end - pd.Timedelta(hours=n_ticks - 1)
    sources = []
    for path in source_files():
        sensors, t, vals = _source(path)
        bad = np.isnan(vals[:, [sensors.index(f) for f in FEATURES]]).any(axis=1)
        n = len(t)
        last = np.arange(n - n_ticks + 1)
        contiguous = t[last + n_ticks - 1] - t[last] == (n_ticks - 1) * 3600
        no_nan = np.convolve(bad, np.ones(n_ticks, dtype=int), "valid") == 0
        same_hour = (t[last] // 3600) % 24 == start.hour
        starts = np.flatnonzero(contiguous & no_nan & same_hour)
        if len(starts):
            sources.append((sensors, vals, starts))
    if not sources:
        raise SystemExit(f"no gap-free run of {n_ticks} hourly records in {source_files()}")
    sensors = sources[0][0]
    values = np.empty((n_ticks, n_stations, len(sensors)))
    for i in range(n_stations):
        s_sensors, vals, starts = sources[i % len(sources)]
        s0 = int(rng.choice(starts))
        values[:, i] = vals[s0 : s0 + n_ticks][:, [s_sensors.index(s) for s in sensors]]
    names = np.array([f"st{i:05d}" for i in range(n_stations)], dtype=object)
    times = pd.date_range(start, periods=n_ticks, freq="h").to_numpy().astype("datetime64[s]")
    return names, times, sensors, values


def fleet_records(n_stations: int, n_ticks: int, seed: int = 0, end: pd.Timestamp | None = None) -> pd.DataFrame:
    """:func:`fleet_values` in the ``load_records`` layout, ordered by time then station (one reading per
    station per hour, like live traffic)."""
    names, times, sensors, values = fleet_values(n_stations, n_ticks, seed, end)
    frame = pd.DataFrame(values.reshape(-1, len(sensors)), columns=sensors)
    frame.insert(0, "time", np.repeat(times.astype("datetime64[ns]"), n_stations))
    frame.insert(0, "station", np.tile(names, n_ticks))
    return frame


def start_broker() -> EmbeddedBroker:
    return EmbeddedBroker().start()


def new_topic(bootstrap: str, prefix: str, partitions: int = PARTITIONS) -> BrokerConfig:
    tag = uuid.uuid4().hex[:8]
    cfg = BrokerConfig(
        bootstrap_servers=bootstrap, readings_topic=f"{prefix}.readings.{tag}",
        forecasts_topic=f"{prefix}.forecasts.{tag}", deadletter_topic=f"{prefix}.deadletter.{tag}",
        partitions=partitions,
    )
    ensure_topics(cfg, bootstrap, cfg.topics())
    return cfg


def consumer(cfg: BrokerConfig, bootstrap: str) -> KafkaConsumer:
    """No group (``assign``: no join delay), reading from the beginning, big polls and fetches."""
    c = KafkaConsumer(
        **cfg.client_kwargs(bootstrap), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        max_poll_records=MAX_BATCH, max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
    )
    c.assign([TopicPartition(cfg.readings_topic, p) for p in range(cfg.partitions)])
    c.seek_to_beginning()
    return c


def vm_rss_bytes() -> int:
    """This process' resident memory (VmRSS of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tick_messages(names: np.ndarray, stamp: str, sensors: list[str], values: np.ndarray) -> list[bytes]:
    """One tick's messages, built like ``pipeline.replay.replay`` builds them."""
    dumps = orjson.dumps
    return [dumps({"station": s, "time": stamp, "values": dict(zip(sensors, v, strict=True))})
            for s, v in zip(names.tolist(), values.tolist(), strict=True)]


def stamps_of(times: np.ndarray) -> list[str]:
    return np.char.add(np.datetime_as_string(times, unit="s"), "Z").tolist()


def consume(c: KafkaConsumer, expected: int, handle, budget_s: float | None = None) -> tuple[float, int, int]:
    """Poll until ``expected`` messages arrived (or ``budget_s`` passed), calling ``handle(records)`` per poll;
    (seconds, polls, messages)."""
    got = polls = 0
    began = time.perf_counter()
    deadline = began + CONSUME_DEADLINE_S
    while got < expected and (budget_s is None or time.perf_counter() - began < budget_s):
        if time.perf_counter() > deadline:
            raise SystemExit(f"only {got:,} of {expected:,} messages consumed within {CONSUME_DEADLINE_S:g} s")
        records = c.poll(timeout_ms=500, max_records=MAX_BATCH)
        if not records:
            continue
        polls += 1
        got += sum(len(m) for m in records.values())
        handle(records)
    return time.perf_counter() - began, polls, got
