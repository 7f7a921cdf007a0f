"""Ingest throughput: the service's own per-batch path against a bare Kafka poll loop.

One embedded Tansu broker, one topic with 4 partitions, N readings of many stations pre-published (synthetic
station ids, values replayed from the real NOAA hourly records in ../shared/data, messages built by
``pipeline.replay.replay``). In the same run, on the same messages, it measures

* bare: a kafka-python ``KafkaConsumer`` poll loop that only touches ``msg.value``;
* full ingest path: the same poll loop handing each poll to ``Service.process`` (the adapter: the pure step
  parses and windows the readings, the store keeps them, dead letters are published, metrics set), on the first
  ``lookback - 1`` hours of every station, so no window is ready yet and no forecast runs: exactly the ingest
  work. Stage seconds are the service's own ``stationcast_stage_seconds`` histogram;
* ``Service.process`` on every message: the whole per-batch path including scoring, forecasting the windows that
  became ready, publishing and storing forecasts: extra work, labelled separately.

Targets (issue "Streaming pipeline"): the full ingest path at least half the bare rate, and at least
50,000 readings/s in one process. Writes docs/ingest.md and docs/results/ingest.json.

    python -m bench.ingest            # 300,000 readings of 1,000 stations (about 2 min on 2 busy cores)
    python -m bench.ingest --quick    # 30,000 readings of 100 stations: plumbing only
    python -m bench.ingest --render   # the page again from docs/results/ingest.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path
from statistics import median

import numpy as np
import pandas as pd
import torch

from bench.common import Benchmark, markdown_table
from bench.fleet import (
    MAX_BATCH,
    PARTITIONS,
    consume,
    consumer,
    fleet_records,
    new_topic,
    start_broker,
)
from pipeline.broker import BrokerConfig, make_producer
from pipeline.config import ServiceConfig
from pipeline.replay import replay
from pipeline.run import build_service
from pipeline.step import STAGES

LOOKBACK = 168  # the shipped model's
SERVICE_STAGES = (*STAGES, "store_readings", "publish", "store_forecasts")


def _service(cfg: BrokerConfig, bootstrap: str, tmp: Path, label: str):
    scfg = ServiceConfig(
        broker=cfg, store_url=f"sqlite:///{tmp}/{label}.db", registry=str(tmp / "registry"),
        group_id=f"bench.{uuid.uuid4().hex[:8]}", http_port=0, device="cpu",
    )
    return build_service(scfg, bootstrap)


def stage_sums(service) -> dict[str, float]:
    """Seconds so far per stage, from the service's ``stationcast_stage_seconds`` histogram."""
    get = service.metrics.registry.get_sample_value
    return {s: get("stationcast_stage_seconds_sum", {"stage": s}) or 0.0 for s in SERVICE_STAGES}


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
    """``Service.process`` on every poll of the first ``expected`` messages (no window ready yet: ingest only),
    a fresh service (store, ring) per run; per-stage seconds from its histogram (``poll``: outside it)."""
    service = _service(cfg, bootstrap, tmp, f"ingest-{label}")
    c = consumer(cfg, bootstrap)
    cpu0 = time.process_time()
    try:
        seconds, polls, _ = consume(c, expected, service.process)
    finally:
        c.close()
        service.close()
    cpu = time.process_time() - cpu0
    t = service.totals
    stage = {k: v for k, v in stage_sums(service).items() if v}
    stage["poll and the rest"] = seconds - sum(stage.values())
    return {"seconds": seconds, "readings_per_s": expected / seconds, "cpu_s": cpu, "polls": polls,
            "stage_s": stage, "accepted": t.accepted, "dead": t.rejected, "forecasts": t.forecasts,
            "stations": service.windows.n_stations}


def service_run(cfg: BrokerConfig, bootstrap: str, expected: int, tmp: Path, budget_s: float) -> dict:
    """``Service.process`` on every polled batch (the run loop minus commit/lag/model checks); stops polling
    once ``budget_s`` has passed."""
    service = _service(cfg, bootstrap, tmp, "service")
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
        "stage_s": stage_sums(service),
    }


# ---------------------------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="30,000 readings of 100 stations, one repeat")
    ap.add_argument("--stations", type=int, help="stations (default 1,000; quick 100)")
    ap.add_argument("--readings", type=int, help="readings published (default 300,000; quick 30,000)")
    ap.add_argument("--repeats", type=int, help="runs of each ingest variant, alternated (default 3; quick 1)")
    ap.add_argument("--service-budget", type=float, help="seconds of Service.process polling (default 40; quick 20)")
    ap.add_argument("--no-service", action="store_true", help="skip the whole Service.process measurement")
    return ap


def _publish(cfg: BrokerConfig, bootstrap: str, records: pd.DataFrame):
    producer = make_producer(cfg, bootstrap)
    try:
        stats = replay(records, producer, cfg.readings_topic, progress=False)
    finally:
        producer.close()
    if stats.failed:
        raise SystemExit(f"{stats.failed} messages not delivered")
    return stats


def measure(args: argparse.Namespace) -> dict:
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
    # The ingest path reads a topic of each station's first lookback - 1 hours: no window can be ready in it, so no
    # forecast runs (a poll that ran ahead into later hours would forecast). The whole path reads every hour.
    first = records["time"].min()
    early = records[records["time"] < first + pd.Timedelta(hours=LOOKBACK - 1)]
    with start_broker() as broker, tempfile.TemporaryDirectory(prefix="stationcast-ingest-") as tmpdir:
        tmp = Path(tmpdir)
        cfg = new_topic(broker.bootstrap, "ingest")
        all_cfg = new_topic(broker.bootstrap, "ingest-all")
        stats = _publish(all_cfg, broker.bootstrap, records)
        early_stats = _publish(cfg, broker.bootstrap, early)
        n, ingest_n = stats.sent, early_stats.sent  # Tansu's end_offsets() is wrong: the counts we published are
        print(f"published {n:,} + {ingest_n:,} messages in {stats.elapsed_s + early_stats.elapsed_s:.1f} s "
              f"({n / stats.elapsed_s:,.0f}/s)", flush=True)
        for r in range(repeats):
            runs["bare"].append(bare_run(cfg, broker.bootstrap, ingest_n))
            runs["full"].append(full_run(cfg, broker.bootstrap, ingest_n, tmp, f"r{r}"))
            print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]['readings_per_s']:,.0f}/s" for k, v in runs.items()),
                  flush=True)
        service = None
        if not args.no_service:
            service = service_run(all_cfg, broker.bootstrap, n, tmp, budget)
            print(f"Service.process: {service['readings']:,} readings at {service['readings_per_s']:,.0f}/s, "
                  f"{service['forecasts']:,} forecasts", flush=True)
    load1 = os.getloadavg()
    rate = {k: median(r["readings_per_s"] for r in v) for k, v in runs.items()}
    ratio = rate["full"] / rate["bare"]
    return {
        "quick": args.quick, "stations": stations, "ticks": ticks, "readings": n, "ingest_readings": ingest_n,
        "repeats": repeats, "service_budget_s": budget, "lookback": LOOKBACK,
        "publish": {"seconds": stats.elapsed_s, "messages_per_s": n / stats.elapsed_s},
        "runs": runs, "service_process": service, "median_readings_per_s": rate,
        "median_seconds": {k: median(r["seconds"] for r in v) for k, v in runs.items()},
        "median_readings_per_cpu_s": {k: median(ingest_n / r["cpu_s"] for r in v) for k, v in runs.items()},
        "ratio": ratio,
        "targets": {"full_at_least_half_bare": "met" if ratio >= 0.5 else "not met",
                    "full_at_least_50000_per_s": "met" if rate["full"] >= 50_000 else "not met"},
        "loadavg_before": load0, "loadavg_after": load1, "wall_s": time.perf_counter() - wall0,
    }


def headline(d: dict) -> str:
    return (f"full ingest path (Service.process, no forecast due) {d['median_readings_per_s']['full']:,.0f} "
            f"readings/s, {d['ratio']:.2f}x a bare poll loop ({d['median_readings_per_s']['bare']:,.0f}/s)")


def render(d: dict) -> str:
    runs, n, rate, service = d["runs"], d["ingest_readings"], d["median_readings_per_s"], d["service_process"]
    secs, cpu_rate, ratio = d["median_seconds"], d["median_readings_per_cpu_s"], d["ratio"]
    bare, full = rate["bare"], rate["full"]
    met_ratio, met_rate = d["targets"]["full_at_least_half_bare"], d["targets"]["full_at_least_50000_per_s"]
    rows = [
        ["bare poll loop (touch msg.value)", n, secs["bare"], bare, 1.0, cpu_rate["bare"]],
        ["**full ingest path**: poll + `Service.process` (step, store, dead letters, metrics), no forecast due", n,
         secs["full"], full, ratio, cpu_rate["full"]],
    ]
    if service:
        rows.append([f"whole Service.process incl. forecasting, all {d['readings']:,} messages "
                     f"({d['service_budget_s']:g} s budget, see below)", service["readings"], service["seconds"],
                     service["readings_per_s"], service["readings_per_s"] / bare, "-"])
    body = markdown_table(["path", "readings", "seconds (median)", "readings/s (median)", "/ bare",
                           "readings per CPU-second of this process"], rows)
    body += "\n\nPer repeat, readings/s (bare, full; ratio): " + ", ".join(
        f"({b['readings_per_s']:,.0f}, {f['readings_per_s']:,.0f}; {f['readings_per_s'] / b['readings_per_s']:.3f})"
        for b, f in zip(runs["bare"], runs["full"], strict=True)
    ) + ".\n\n"
    m_full = sorted(runs["full"], key=lambda r: r["readings_per_s"])[len(runs["full"]) // 2]
    stage_rows = [[k, a, a / m_full["seconds"], n / a if a else "-"] for k, a in m_full["stage_s"].items()]
    body += ("Where the full path's time goes (median repeat; the service's `stationcast_stage_seconds` histogram; "
             "`poll and the rest` = the poll loop, flattening the poll, metrics and status bookkeeping):\n\n"
             + markdown_table(["stage", "seconds", "share", "readings/s if alone"], stage_rows))
    body += (
        f"\n\n**Targets.** Full path at least half the bare rate: {ratio:.2f} x bare, **{met_ratio}**. At least "
        f"50,000 readings/s in one process: {full:,.0f}/s, **{met_rate}**."
        "\n\nThe full path is the service's own code: `Service.process` runs the pure step (`pipeline/step.py`: "
        "parse, ring, scoring, forecasting, here with nothing due) and stores what it accepted, publishes dead "
        "letters, then sets the metrics. `Store.add_readings` sorts a poll's rows into primary-key (station, ts) "
        "order and skips sensor columns without a value in the batch; SQLite runs with a 64 MiB page cache, and WAL "
        "checkpoints run on a background thread every 1 s (`store_checkpoint_s`).\n"
    )
    if service:
        w, f = service["no_forecast_batches"], service["forecast_batches"]
        done = "all" if service["complete"] else f"the first {service['readings']:,} (time budget)"
        body += (
            "\n**Whole `Service.process` (extra work, not the target's path).** The same broker topic, all its "
            f"messages ({done} of them), polled and handed to the service: parse, ring, scoring, a batched "
            "forecast of every window that became ready, publishing forecasts to Kafka, storing readings, forecasts "
            f"and errors. {service['accepted']:,} readings accepted, {service['forecasts']:,} forecasts issued, "
            f"{service['errors_scored']:,} errors scored.\n\n" + markdown_table(
                ["batches", "count", "readings", "readings/s"],
                [["no forecast issued (windows not ready yet)", w["batches"], w["readings"],
                  w["readings_per_s"] or "-"],
                 ["with forecasts", f["batches"], f["readings"], f["readings_per_s"] or "-"]],
            )
        )
        if service.get("stage_s"):
            body += "\n\nIts stage seconds (the histogram): " + ", ".join(
                f"{k} {v:.2f}" for k, v in service["stage_s"].items() if v) + "."
        if f["seconds_per_1000_forecasts"]:
            body += (f"\n\nBatches with forecasts cost {f['seconds_per_1000_forecasts']:.3f} s per 1,000 "
                     "forecasts issued. A backlog poll holds up to 10,000 readings of one partition (about a quarter "
                     "of the stations, many hours each), and the step runs one round (score, forward pass) per hour "
                     "in it; see docs/forecast_batch.md for the live (one reading per station) case.\n")
    body += (
        f"\n**Setup.** {d['stations']:,} synthetic stations x {d['ticks']} hourly readings = {d['readings']:,} "
        f"messages in one topic (mean {runs['bare'][0]['bytes'] / n:.0f} bytes; 6 sensors, values replayed from "
        "real NOAA hourly records `../shared/data/noaa_*_hourly.csv.gz`, a random gap-free run per station), built by "
        f"`pipeline.replay.replay` and published before any measurement ({d['publish']['messages_per_s']:,.0f} "
        f"msg/s) with {PARTITIONS} partitions on the embedded Tansu broker; the ingest rows read a second topic of "
        f"the first {d['lookback'] - 1} hours of every station ({n:,} messages), before the shipped model's "
        f"{d['lookback']}-hour lookback can be full (forecasts issued in those runs: "
        f"{', '.join(str(r['forecasts']) for r in runs['full'])}). Consumers: kafka-python, `group_id=None` with "
        f"`assign()` of all partitions, `max_poll_records={MAX_BATCH:,}`, `max_partition_fetch_bytes=8 MiB`, "
        "`fetch_max_bytes=64 MiB`, "
        "from the beginning; time runs from the first poll to the last message handled (counted against the "
        f"published total, not Tansu's `end_offsets()`). The two ingest variants alternate, {d['repeats']} runs "
        "each; every full run is a fresh service (fresh SQLite file, WAL, `synchronous=NORMAL`, fresh ring). "
        f"`torch.set_num_threads(1)` as in the service. Load average {d['loadavg_before'][0]:.2f} before, "
        f"{d['loadavg_after'][0]:.2f} after, on 2 cores: other work shared them, so the wall-clock rates are lower "
        "bounds (the CPU-second column is the rate one uncontended core would give, the broker's own CPU not "
        f"counted). Total wall time {d['wall_s']:.0f} s.\n"
    )
    if d["quick"]:
        body = "**Quick plumbing run (small fleet, one repeat): not a result.**\n\n" + body
    return body


BENCH = Benchmark("ingest", "Ingest throughput: the service's path vs bare Kafka consumer", measure, render,
                  parser(), headline=headline)

if __name__ == "__main__":
    BENCH.main()
