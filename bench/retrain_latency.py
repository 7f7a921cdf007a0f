"""Reading-to-forecast latency while a retraining runs, against idle (the service keeps serving undisturbed).

A real service (embedded broker, SQLite store, the shipped model, one inference thread) serves a fleet of
``--stations`` stations fed one reading per station per tick. After ``--history-days`` of backlog fill the
store, ticks arrive every ``--tick-s`` seconds: first idle, then while the scheduler's retraining command
(``python -m pipeline.retrain``, the exact command and environment the scheduler runs, as a subprocess) trains
a challenger on that history, then idle again. Per tick two latencies are recorded:

* service: the poll that brought the tick returned -> its forward pass done (what the
  ``stationcast_reading_to_forecast_seconds`` histogram observes), read from the step's result through the
  service's ``observers`` seam;
* end to end: the first reading of the tick sent by the producer -> its forward pass done.

Target (issue 4): p99 during retraining within 1.5x of idle.

    python -m bench.retrain_latency          # about 10 minutes
    python -m bench.retrain_latency --render # the page again from docs/results/retrain_latency.json

Writes docs/retrain_latency.md, docs/results/retrain_latency.json and docs/figures/retrain_latency.png.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import DOCS, Benchmark, markdown_table  # noqa: E402
from bench.fleet import fleet_values, new_topic, stamps_of, start_broker, tick_messages  # noqa: E402
from pipeline.broker import make_producer  # noqa: E402
from pipeline.challenger import Outcome  # noqa: E402
from pipeline.config import ServiceConfig  # noqa: E402
from pipeline.jobs import job_env  # noqa: E402
from pipeline.run import build_service  # noqa: E402
from pipeline.scheduler import LifecycleScheduler, run_subprocess  # noqa: E402
from pipeline.step import StepResult  # noqa: E402


class Ticks:
    """Per forecast tick (issue time): when its first reading was sent and when its forecasts were made."""

    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.rows: list[tuple[int, float, float, float]] = []  # issue_ts, made_at, service_s, end_to_end_s

    def observe(self, out: StepResult) -> None:
        """A service observer: each stored step's forward passes, with the issue time they forecast."""
        for p in out.passes:
            issue = int(p.issue_ts[0])
            sent = self.sent.get(issue)
            if sent is not None:
                self.rows.append((issue, p.done_at, p.done_at - out.arrived, p.done_at - sent))


def percentiles(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1e3
    return {"ticks": len(a), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max())}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stations", type=int, default=300)
    p.add_argument("--history-days", type=int, default=28)
    p.add_argument("--tick-s", type=float, default=0.5, help="wall seconds between ticks (one hour of data each)")
    p.add_argument("--idle-ticks", type=int, default=300)
    p.add_argument("--epochs", type=int, default=8)
    return p


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)

    hist = args.history_days * 24
    max_ticks = hist + args.idle_ticks * 2 + 2000
    names, times, sensors, values = fleet_values(args.stations, max_ticks, seed=5)
    stamps = stamps_of(times)
    ticks = Ticks()
    with start_broker() as broker, tempfile.TemporaryDirectory(prefix="stationcast-rl-") as tmpdir:
        tmp = Path(tmpdir)
        bcfg = new_topic(broker.bootstrap, "rl")
        cfg = ServiceConfig(broker=bcfg, store_url=f"sqlite:///{tmp}/store.db", registry=str(tmp / "registry"),
                            group_id=f"bench.{uuid.uuid4().hex[:8]}", http_port=0, device="cpu",
                            retrain_history_days=args.history_days, retrain_holdout_days=2,
                            retrain_epochs=args.epochs, promote_margin=0.02)
        service = build_service(cfg, broker.bootstrap)
        service.observers.append(ticks.observe)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        producer = make_producer(bcfg, broker.bootstrap)
        print(f"filling {args.history_days} days of history for {args.stations} stations", flush=True)
        for k in range(hist):
            for m, s in zip(tick_messages(names, stamps[k], sensors, values[k]), names.tolist(), strict=True):
                producer.send(bcfg.readings_topic, key=s.encode(), value=m)
        producer.flush()
        while service.totals.consumed < hist * args.stations:
            time.sleep(0.5)
        print(f"history stored: {service.totals.forecasts:,} forecasts; live ticks every {args.tick_s} s", flush=True)

        k = hist
        phases: list[tuple[str, int, int]] = []  # (phase, first tick index, last tick index)

        def run_ticks(n: int | None, until: threading.Event | None = None) -> tuple[int, int]:
            nonlocal k
            first = k
            nxt = time.monotonic()
            while (n is not None and k < first + n) or (until is not None and not until.is_set()):
                if k >= max_ticks:
                    raise SystemExit("ran out of prepared ticks: raise max_ticks")
                issue = int(times[k].astype("datetime64[s]").astype(np.int64))
                ticks.sent[issue] = time.time()
                for m, s in zip(tick_messages(names, stamps[k], sensors, values[k]), names.tolist(), strict=True):
                    producer.send(bcfg.readings_topic, key=s.encode(), value=m)
                producer.flush()
                k += 1
                nxt += args.tick_s
                time.sleep(max(0.0, nxt - time.monotonic()))
                if k % 20 == 0:
                    print(f"  tick {k - hist:4d} | forecasts {service.totals.forecasts:,} | lag {service.totals.lag}",
                          flush=True)
            return first, k - 1

        phases.append(("idle", *run_ticks(args.idle_ticks)))
        command = LifecycleScheduler(cfg, service.metrics, service).command()  # the scheduler's (not started)
        result: dict = {}
        done = threading.Event()

        def retrain() -> None:
            t0 = time.time()
            rc, out, err = run_subprocess(command, 3600, settings=job_env(cfg))
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            result.update(rc=rc, seconds=time.time() - t0, started=t0,
                          outcome=Outcome.from_json(lines[-1]).__dict__ if lines else {"reason": err[-800:]})
            done.set()

        print("retraining: " + " ".join(command), flush=True)
        trainer = threading.Thread(target=retrain)
        trainer.start()
        phases.append(("retraining", *run_ticks(None, until=done)))
        trainer.join()
        phases.append(("idle after", *run_ticks(args.idle_ticks)))
        time.sleep(2)
        producer.close()
        service.stop()
        thread.join(timeout=60)

    issue_of = {int(times[i].astype("datetime64[s]").astype(np.int64)): i for i in range(max_ticks)}
    by_phase: dict[str, dict] = {}
    for name, a, b in phases:
        rows = [r for r in ticks.rows if a <= issue_of[r[0]] <= b]
        if name != "retraining":
            rows = rows[5:]  # the first ticks of a phase settle the pacing
        by_phase[name] = {"service": percentiles([r[2] for r in rows]),
                          "end_to_end": percentiles([r[3] for r in rows])}
    # Idle before and after, pooled: the reference brackets the retraining in time, so drift of the machine
    # (WAL growth, page cache) during the run does not count for or against it.
    idle_rows = [r for name, a, b in phases if name != "retraining" for r in ticks.rows
                 if a + 5 <= issue_of[r[0]] <= b]
    by_phase["idle, before and after"] = {"service": percentiles([r[2] for r in idle_rows]),
                                          "end_to_end": percentiles([r[3] for r in idle_rows])}
    idle = by_phase["idle, before and after"]
    during = by_phase["retraining"]
    ratio = during["end_to_end"]["p99_ms"] / idle["end_to_end"]["p99_ms"]
    ratio_service = during["service"]["p99_ms"] / idle["service"]["p99_ms"]

    fig, ax = plt.subplots(figsize=(11, 4))
    t0 = ticks.rows[0][1]
    ax.plot([r[1] - t0 for r in ticks.rows], [r[3] * 1e3 for r in ticks.rows], ".", ms=3, label="end to end")
    ax.plot([r[1] - t0 for r in ticks.rows], [r[2] * 1e3 for r in ticks.rows], ".", ms=3, label="service")
    ax.axvspan(result["started"] - t0, result["started"] + result["seconds"] - t0, color="tab:orange", alpha=0.15,
               label="retraining subprocess running")
    ax.set_xlabel("seconds")
    ax.set_ylabel("reading -> forecast, ms")
    ax.set_yscale("log")
    ax.set_title(f"Reading-to-forecast latency per tick of {args.stations} stations, idle vs during a retraining")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    figure = DOCS / "figures" / "retrain_latency.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    plt.close(fig)

    return {"phases": by_phase, "ratio_p99_end_to_end": ratio, "ratio_p99_service": ratio_service,
            "retraining": {k: v for k, v in result.items() if k != "started"}, "stations": args.stations,
            "history_days": args.history_days, "epochs": args.epochs, "command": " ".join(command[1:]),
            "ticks": [{"issue_ts": r[0], "made_at": r[1], "service_s": r[2], "end_to_end_s": r[3]}
                      for r in ticks.rows],
            "tick_s": args.tick_s}


def headline(d: dict) -> str:
    idle, during = d["phases"]["idle, before and after"], d["phases"]["retraining"]
    return (f"reading-to-forecast p99 during a retraining vs idle: end to end {during['end_to_end']['p99_ms']:.0f} vs "
            f"{idle['end_to_end']['p99_ms']:.0f} ms ({d['ratio_p99_end_to_end']:.2f}x), in the service "
            f"{during['service']['p99_ms']:.0f} vs {idle['service']['p99_ms']:.0f} ms ({d['ratio_p99_service']:.2f}x)")


def render(d: dict) -> str:
    by_phase, ratio, ratio_service = d["phases"], d["ratio_p99_end_to_end"], d["ratio_p99_service"]
    result, stations, days = d["retraining"], d["stations"], d["history_days"]
    table = markdown_table(
        ["phase", "ticks", "service p50 ms", "service p99 ms", "end-to-end p50 ms", "end-to-end p99 ms",
         "end-to-end max ms"],
        [[name, p["end_to_end"]["ticks"], p["service"]["p50_ms"], p["service"]["p99_ms"], p["end_to_end"]["p50_ms"],
          p["end_to_end"]["p99_ms"], p["end_to_end"]["max_ms"]] for name, p in by_phase.items()])
    o, nan = result["outcome"], float("nan")
    verdict = "met" if ratio <= 1.5 and ratio_service <= 1.5 else "not met"
    return f"""
{stations} stations, one reading each per tick, a tick every {d['tick_s']} s (each tick is the next hour of
real NOAA records); the service runs the shipped model with one inference thread on this 2-core machine. The
retraining is the scheduler's own command with its environment (the service's settings, `OMP_NUM_THREADS=1`), on
{days} days of the stored history ({stations * days * 24:,} readings), {d['epochs']} epochs:
`{d['command']}`. It ran {result['seconds']:.0f} s and ended `{o.get('outcome')}`
(challenger holdout MAE {o.get('challenger_mae') or nan:.3f} vs champion {o.get('champion_mae') or nan:.3f}).

{table}

**Target: p99 during retraining within 1.5x of idle: {verdict}** (against the pooled idle ticks before and
after: end to end {ratio:.2f}x, service {ratio_service:.2f}x). Training runs in its own process with one
thread at `nice 10`, so it never holds the service's GIL and yields the CPU to forecasting on this 2-core machine.
The p99 of a phase of a few hundred ticks is its third or fourth slowest tick; the plot shows every tick.

![latency per tick](figures/retrain_latency.png)
"""


BENCH = Benchmark("retrain_latency", "Reading-to-forecast latency during a retraining", measure, render, parser(),
                  headline=headline)

if __name__ == "__main__":
    BENCH.main()
