"""Ingest throughput: the full consume -> validate -> store -> window path against a bare Kafka poll loop.

One embedded Tansu broker, one topic with 4 partitions, N readings of many stations pre-published (synthetic
station ids, values replayed from the real NOAA hourly records in ../shared/data, messages built by
``pipeline.replay.replay``). In the same run, on the same messages, it measures

* bare: a kafka-python ``KafkaConsumer`` poll loop that only touches ``msg.value``;
* full ingest path: the same poll loop + ``parse_readings`` + ``Store.add_readings`` (SQLite, WAL, temp dir)
  + ``RollingWindows.add``, per poll batch, as ``Service.process`` does them (components built directly);
* ``Service.process``: the whole per-batch path of the service (also scoring, forecasting the windows that
  became ready, publishing and persisting forecasts), fed with the same polled batches: extra work, labelled
  separately.

Targets (issue "Streaming pipeline"): the full ingest path at least half the bare rate, and at least
50,000 readings/s in one process. Writes docs/ingest.md and docs/results/ingest.json.

    python -m bench.ingest            # 300,000 readings of 1,000 stations (about 2 min on 2 busy cores)
    python -m bench.ingest --quick    # 30,000 readings of 100 stations: plumbing only
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
import uuid
from pathlib import Path
from statistics import median

import numpy as np
import pandas as pd
import torch
from kafka import KafkaConsumer, TopicPartition

from bench.common import SHARED_DATA, markdown_table, write_results
from forecaster.data import load_records
from pipeline.broker import BrokerConfig, EmbeddedBroker, ensure_topics, make_producer
from pipeline.config import ServiceConfig
from pipeline.readings import SENSOR_INDEX, SENSORS, parse_readings
from pipeline.replay import replay
from pipeline.ring import RollingWindows, WindowConfig
from pipeline.service import flatten_poll
from pipeline.store import Store

FEATURES = ("T", "Tdew", "rh", "wv")  # the shipped model's inputs, in card order
LOOKBACK = 168
PARTITIONS = 4
MAX_BATCH = 10_000  # ServiceConfig.max_batch
CONSUME_DEADLINE_S = 120.0


# ---------------------------------------------------------------------------------------------- data


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


# ---------------------------------------------------------------------------------------------- loops


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


def bare_run(cfg: BrokerConfig, bootstrap: str, expected: int) -> dict:
    nbytes = [0]

    def touch(records: dict) -> None:
        total = 0
        for msgs in records.values():
            for m in msgs:
                total += len(m.value)
        nbytes[0] += total

    c = consumer(cfg, bootstrap)
    cpu0 = time.process_time()
    try:
        seconds, polls, _ = consume(c, expected, touch)
    finally:
        c.close()
    cpu = time.process_time() - cpu0
    return {"seconds": seconds, "readings_per_s": expected / seconds, "cpu_s": cpu, "polls": polls,
            "bytes": nbytes[0]}


def full_run(cfg: BrokerConfig, bootstrap: str, expected: int, tmp: Path, label: str) -> dict:
    """Consume + parse + store + windows; per-stage seconds (``poll`` is the time outside the handler).
    The store is opened and fed as ``Service`` does: background WAL checkpoints, all of ``SENSORS``, poll order."""
    store = Store.open(f"sqlite:///{tmp}/ingest-{label}.db", checkpoint_every_s=ServiceConfig().store_checkpoint_s)
    windows = RollingWindows(WindowConfig(lookback=LOOKBACK, n_sensors=len(FEATURES), cadence_s=3600))
    fidx = np.array([SENSOR_INDEX[f] for f in FEATURES])
    stage = dict.fromkeys(("flatten", "parse", "store", "windows"), 0.0)
    counts = {"accepted": 0, "dead": 0, "stored": 0, "window_accepted": 0}

    def handle(records: dict) -> None:
        t0 = time.perf_counter()
        raw, keys, parts, offsets = flatten_poll(records)
        t1 = time.perf_counter()
        batch, dead = parse_readings(raw, keys, parts, offsets)
        t2 = time.perf_counter()
        ts = batch.time.astype("datetime64[s]").astype(np.int64)
        if len(batch):
            counts["stored"] += store.add_readings(batch.station, ts, batch.values, SENSORS, batch.partition,
                                                   batch.offset)
        t3 = time.perf_counter()
        if len(batch):
            counts["window_accepted"] += windows.add(batch.station, ts, batch.values[:, fidx]).accepted
        t4 = time.perf_counter()
        counts["accepted"] += len(batch)
        counts["dead"] += len(dead)
        for k, a, b in (("flatten", t0, t1), ("parse", t1, t2), ("store", t2, t3), ("windows", t3, t4)):
            stage[k] += b - a

    c = consumer(cfg, bootstrap)
    cpu0 = time.process_time()
    try:
        seconds, polls, _ = consume(c, expected, handle)
    finally:
        c.close()
        store.close()
    cpu = time.process_time() - cpu0
    stage["poll"] = seconds - sum(stage.values())
    return {"seconds": seconds, "readings_per_s": expected / seconds, "cpu_s": cpu, "polls": polls,
            "stage_s": stage,
            **counts, "stations": windows.n_stations}


def service_run(cfg: BrokerConfig, bootstrap: str, expected: int, tmp: Path, budget_s: float) -> dict:
    """``Service.process`` on every polled batch (the run loop minus commit/lag/model checks); stops polling
    once ``budget_s`` has passed."""
    from pipeline.service import Service

    scfg = ServiceConfig(
        broker=cfg, store_url=f"sqlite:///{tmp}/service.db", registry=str(tmp / "registry"),
        group_id=f"bench.{uuid.uuid4().hex[:8]}", http_port=0, device="cpu",
    )
    service = Service(scfg, bootstrap)
    per_batch: list[tuple[int, int, float]] = []  # readings, forecasts issued, seconds

    def handle(records: dict) -> None:
        n = sum(len(m) for m in records.values())
        before = service.totals.forecasts
        t0 = time.perf_counter()
        service.process(records)
        per_batch.append((n, service.totals.forecasts - before, time.perf_counter() - t0))

    c = consumer(cfg, bootstrap)
    try:
        seconds, polls, got = consume(c, expected, handle, budget_s)
    finally:
        c.close()
        service.close()
    arr = np.array(per_batch, dtype=np.float64).reshape(-1, 3)
    warm, fc = arr[arr[:, 1] == 0], arr[arr[:, 1] > 0]

    def rate(a: np.ndarray) -> float | None:
        return float(a[:, 0].sum() / a[:, 2].sum()) if len(a) and a[:, 2].sum() > 0 else None

    t = service.totals
    return {
        "seconds": seconds, "readings": got, "complete": got >= expected, "readings_per_s": got / seconds,
        "polls": polls, "process_s": float(arr[:, 2].sum()),
        "no_forecast_batches": {"batches": len(warm), "readings": int(warm[:, 0].sum()), "readings_per_s": rate(warm)},
        "forecast_batches": {"batches": len(fc), "readings": int(fc[:, 0].sum()), "forecasts": int(fc[:, 1].sum()),
                             "readings_per_s": rate(fc),
                             "seconds_per_1000_forecasts": float(fc[:, 2].sum() / fc[:, 1].sum() * 1000)
                             if len(fc) else None},
        "accepted": t.accepted, "rejected": t.rejected, "forecasts": t.forecasts, "errors_scored": t.errors_scored,
    }


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="30,000 readings of 100 stations, one repeat")
    ap.add_argument("--stations", type=int, help="stations (default 1,000; quick 100)")
    ap.add_argument("--readings", type=int, help="readings published (default 300,000; quick 30,000)")
    ap.add_argument("--repeats", type=int, help="runs of each ingest variant, alternated (default 3; quick 1)")
    ap.add_argument("--service-budget", type=float, help="seconds of Service.process polling (default 40; quick 20)")
    ap.add_argument("--no-service", action="store_true", help="skip the Service.process measurement")
    args = ap.parse_args()
    stations = args.stations or (100 if args.quick else 1000)
    readings = args.readings or (30_000 if args.quick else 300_000)
    repeats = args.repeats or (1 if args.quick else 3)
    budget = args.service_budget or (20.0 if args.quick else 40.0)
    ticks = readings // stations
    torch.set_num_threads(1)  # what the service does (ServiceConfig.torch_threads)
    wall0 = time.perf_counter()
    load0 = os.getloadavg()

    records = fleet_records(stations, ticks)
    print(f"{len(records):,} readings of {stations:,} stations x {ticks} hours built", flush=True)
    runs: dict[str, list[dict]] = {"bare": [], "full": []}
    with start_broker() as broker, tempfile.TemporaryDirectory(prefix="stationcast-ingest-") as tmpdir:
        tmp = Path(tmpdir)
        cfg = new_topic(broker.bootstrap, "ingest")
        producer = make_producer(cfg, broker.bootstrap)
        try:
            stats = replay(records, producer, cfg.readings_topic, progress=False)
        finally:
            producer.close()
        if stats.failed:
            raise SystemExit(f"{stats.failed} messages not delivered")
        n = stats.sent  # Tansu's end_offsets() is wrong: the count we published is the truth
        print(f"published {n:,} messages in {stats.elapsed_s:.1f} s ({n / stats.elapsed_s:,.0f}/s)", flush=True)
        for r in range(repeats):
            runs["bare"].append(bare_run(cfg, broker.bootstrap, n))
            runs["full"].append(full_run(cfg, broker.bootstrap, n, tmp, f"r{r}"))
            print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]['readings_per_s']:,.0f}/s" for k, v in runs.items()),
                  flush=True)
        service = None
        if not args.no_service:
            service = service_run(cfg, broker.bootstrap, n, tmp, budget)
            print(f"Service.process: {service['readings']:,} readings at {service['readings_per_s']:,.0f}/s, "
                  f"{service['forecasts']:,} forecasts", flush=True)
    load1 = os.getloadavg()
    wall = time.perf_counter() - wall0

    rate = {k: median(r["readings_per_s"] for r in v) for k, v in runs.items()}
    secs = {k: median(r["seconds"] for r in v) for k, v in runs.items()}
    cpu_rate = {k: median(n / r["cpu_s"] for r in v) for k, v in runs.items()}
    bare, full = rate["bare"], rate["full"]
    ratio = full / bare
    met_ratio, met_rate = ratio >= 0.5, full >= 50_000

    def mid(k: str) -> dict:
        return sorted(runs[k], key=lambda r: r["readings_per_s"])[len(runs[k]) // 2]

    rows = [
        ["bare poll loop (touch msg.value)", n, secs["bare"], bare, 1.0, cpu_rate["bare"]],
        ["**full ingest path** (poll + parse + store + windows), store as the service calls it", n, secs["full"],
         full, ratio, cpu_rate["full"]],
    ]
    if service:
        rows.append([f"whole Service.process (incl. forecasting; {budget:g} s budget, see below)",
                     service["readings"], service["seconds"], service["readings_per_s"],
                     service["readings_per_s"] / bare, "-"])
    body = markdown_table(["path", "readings", "seconds (median)", "readings/s (median)", "/ bare",
                           "readings per CPU-second of this process"], rows)
    body += "\n\nPer repeat, readings/s (bare, full; ratio): " + ", ".join(
        f"({b['readings_per_s']:,.0f}, {f['readings_per_s']:,.0f}; {f['readings_per_s'] / b['readings_per_s']:.3f})"
        for b, f in zip(runs["bare"], runs["full"], strict=True)
    ) + ".\n\n"
    m_full = mid("full")
    stage_rows = [[k, a, a / m_full["seconds"], n / a if a else "-"] for k, a in m_full["stage_s"].items()]
    body += "Where the full path's time goes (median repeat; `poll` = time outside the handler):\n\n" + markdown_table(
        ["stage", "seconds", "share", "readings/s if alone"], stage_rows,
    )
    body += (
        f"\n\n**Targets.** Full path at least half the bare rate: {ratio:.2f} x bare, "
        f"**{'met' if met_ratio else 'not met'}**. At least 50,000 readings/s in one process: "
        f"{full:,.0f}/s, **{'met' if met_rate else 'not met'}**. "
        "\n\n`Store.add_readings` sorts a poll's rows into primary-key (station, ts) order and skips sensor "
        "columns without a value in the batch; SQLite runs with a 64 MiB page cache, and WAL checkpoints run on "
        f"a background thread every {ServiceConfig().store_checkpoint_s:g} s (`store_checkpoint_s`, as in the "
        "service) instead of inside the commit that crosses the 1,000-page threshold.\n"
    )
    if service:
        w, f = service["no_forecast_batches"], service["forecast_batches"]
        done = "all" if service["complete"] else f"the first {service['readings']:,} (time budget)"
        body += (
            "\n**Whole `Service.process` (extra work, not the target's path).** The same polled batches "
            f"({done} of them) through the service's per-batch path: parse, store, windows, scoring, a batched "
            "forecast of every window that became ready, publishing forecasts to Kafka, persisting forecasts and "
            f"errors. {service['accepted']:,} readings accepted, {service['forecasts']:,} forecasts issued, "
            f"{service['errors_scored']:,} errors scored.\n\n" + markdown_table(
                ["batches", "count", "readings", "readings/s"],
                [["no forecast issued (windows not ready yet)", w["batches"], w["readings"],
                  w["readings_per_s"] or "-"],
                 ["with forecasts", f["batches"], f["readings"], f["readings_per_s"] or "-"]],
            )
        )
        if f["seconds_per_1000_forecasts"]:
            body += (f"\n\nBatches with forecasts cost {f['seconds_per_1000_forecasts']:.3f} s per 1,000 forecasts "
                     "issued. A backlog poll holds up to 10,000 readings of one partition (about a quarter of the "
                     "stations, many hours each), and the service runs one round (score, forward pass, publish) "
                     "per hour in it; see docs/forecast_batch.md for the live (one reading per station) case.\n")
    body += (
        f"\n**Setup.** {stations:,} synthetic stations x {ticks} hourly readings = {n:,} messages "
        f"(mean {runs['bare'][0]['bytes'] / n:.0f} bytes; 6 sensors, values replayed from real NOAA hourly records "
        "`../shared/data/noaa_*_hourly.csv.gz`, a random gap-free run per station), built by `pipeline.replay.replay` "
        f"and published before any measurement ({n / stats.elapsed_s:,.0f} msg/s) to one topic with {PARTITIONS} "
        "partitions on the embedded Tansu broker. Consumers: kafka-python, `group_id=None` with `assign()` of all "
        f"partitions, `max_poll_records={MAX_BATCH:,}`, `max_partition_fetch_bytes=8 MiB`, `fetch_max_bytes=64 MiB`, "
        "from the beginning; time runs from the first poll to the last message handled (counted against the "
        f"published total, not Tansu's `end_offsets()`). The two ingest variants alternate, {repeats} runs each; "
        "every full run writes a fresh SQLite file (WAL, `synchronous=NORMAL`) in a temp dir and fresh windows "
        f"(lookback {LOOKBACK}, features {', '.join(FEATURES)}). `torch.set_num_threads(1)` as in the service. "
        f"Load average {load0[0]:.2f} before, {load1[0]:.2f} after, on 2 cores: other work shared them, so the "
        "wall-clock rates are lower bounds (the CPU-second column is the rate one uncontended core would give, "
        f"the broker's own CPU not counted). Total wall time {wall:.0f} s.\n"
    )
    if args.quick:
        body = "**Quick plumbing run (small fleet, one repeat): not a result.**\n\n" + body
    data = {
        "quick": args.quick, "stations": stations, "ticks": ticks, "readings": n,
        "publish": {"seconds": stats.elapsed_s, "messages_per_s": n / stats.elapsed_s},
        "runs": runs, "service_process": service, "median_readings_per_s": rate,
        "median_readings_per_cpu_s": cpu_rate, "ratio": ratio,
        "targets": {"full_at_least_half_bare": "met" if met_ratio else "not met",
                    "full_at_least_50000_per_s": "met" if met_rate else "not met"},
        "loadavg_before": load0, "loadavg_after": load1, "wall_s": wall,
    }
    md = write_results("ingest", "Ingest throughput: full path vs bare Kafka consumer", body, data)
    print(md.read_text())


if __name__ == "__main__":
    main()
