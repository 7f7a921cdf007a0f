"""The transfer-learning story told by the running system.

A service whose global model was trained on Jena only (Germany) receives the four NOAA US stations as new
stations, streamed in time order from 2014-01-01 through the embedded Kafka broker. The scheduler fine-tunes a
station model as soon as a station has ``--min-history-days`` of stored history (frozen Conv1D front-end, the
station's own normalization, lower learning rate), promotes it only if it beats the global model on the
station's last ``--holdout-days`` and the service hot-swaps it in. Afterwards every scored forecast is read
back from the store: the rolling MAE before and after the swap against persistence, and, for the forecasts the
station model made, what the global model would have forecast on exactly the same windows.

    python -m bench.lifecycle_transfer          # about 6 minutes on 2 CPU cores (3 of them training on Jena)

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

from bench.common import DOCS, ROOT, markdown_table, shared_file, write_results
from forecaster.artifact import read_card
from forecaster.clean import clean_station
from forecaster.data import load_records
from forecaster.experiment import fit
from forecaster.registry import Registry
from forecaster.train import TrainConfig
from pipeline.broker import BrokerConfig, EmbeddedBroker, ensure_topics, make_producer
from pipeline.config import ServiceConfig
from pipeline.pretrained import shipped_artifact
from pipeline.replay import records_for_replay, replay
from pipeline.service import Service
from pipeline.shadow import shadow_errors
from pipeline.store import Store

WORK = ROOT / "var" / "bench" / "lifecycle_transfer"
JENA_REGISTRY = ROOT / "var" / "bench" / "jena_global"
STATIONS = {
    "chicago_ohare": "noaa_chicago_ohare_2010_2016_hourly.csv.gz",
    "denver": "noaa_denver_2010_2016_hourly.csv.gz",
    "great_falls": "noaa_great_falls_2010_2016_hourly.csv.gz",
    "rapid_city": "noaa_rapid_city_2010_2016_hourly.csv.gz",
}
log = logging.getLogger("bench.lifecycle_transfer")


def jena_global(retrain: bool) -> Registry:
    """A global model with the shipped model's layout and architecture, trained on Jena only (cached)."""
    registry = Registry(JENA_REGISTRY)
    if registry.champion("global") is not None and not retrain:
        return registry
    shutil.rmtree(JENA_REGISTRY, ignore_errors=True)
    card = read_card(shipped_artifact("global"))
    jena = clean_station(load_records(shared_file("jena_2009_2016_hourly.csv.gz")))
    cfg = TrainConfig(optimizer="adam", lr=1e-3, epochs=12, steps_per_epoch=400, patience=3, seed=0)
    trained = fit([jena], card.data, card.model, cfg, label="jena global")
    info = registry.register("global", trained.model, trained.card, note="Jena 2009-2016 only")
    registry.promote("global", info.version, note="benchmark base")
    return registry


def station_records(start: pd.Timestamp, days: int) -> pd.DataFrame:
    parts = []
    for name, file in STATIONS.items():
        rec = records_for_replay(shared_file(file))
        rec = rec[(rec["time"] >= start) & (rec["time"] < start + pd.Timedelta(days=days))]
        parts.append(rec.assign(station=name))
    return pd.concat(parts).sort_values(["time", "station"], kind="stable").reset_index(drop=True)


def stream(records: pd.DataFrame, cfg: ServiceConfig, bootstrap: str, seconds_per_day: float) -> Service:
    """Replay the records at a pace of ``seconds_per_day`` through a running service; return it stopped."""
    service = Service(cfg, bootstrap)
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


def summarize(store_url: str, records: pd.DataFrame, registry: Registry, base_tag: str) -> tuple[list[dict], dict]:
    model, card, _ = registry.load("global")
    rows, daily = [], {}
    with Store.open(store_url) as store:
        for station in STATIONS:
            err = store.errors(station)
            own = err[err["model_version"] != base_tag]
            before = err[err["model_version"] == base_tag]
            swap_ts = int(own["issue_ts"].min()) if len(own) else None
            rec = records[records["station"] == station]
            shadow = shadow_errors(model, card, rec, own) if len(own) else np.empty(0)
            first_ts = int(rec["time"].min().timestamp())
            tag = own["model_version"].iloc[0] if len(own) else None
            name_info = registry.station_champions().get(station) if tag else None
            m = name_info.metrics if name_info else {}
            rows.append({
                "station": station, "model": tag or "(none promoted)",
                "swap_day": None if swap_ts is None else round((swap_ts - first_ts) / 86_400, 1),
                "holdout_mae": m.get("holdout_mae"), "holdout_global_mae": m.get("base_holdout_mae"),
                "before_mae": float(before["abs_error"].mean()),
                "before_persistence": float(before["persistence_abs_error"].mean()),
                "after_mae": float(own["abs_error"].mean()) if len(own) else None,
                "after_global_same_windows": float(shadow.mean()) if len(shadow) else None,
                "after_persistence": float(own["persistence_abs_error"].mean()) if len(own) else None,
                "errors_before": len(before), "errors_after": len(own),
            })
            frame = err.assign(day=(err["issue_ts"] - first_ts) // 86_400)  # a day's forecasts, all horizons
            if len(own):
                frame.loc[own.index, "shadow"] = shadow
            daily[station] = {
                "swap_day": rows[-1]["swap_day"],
                "model": frame.groupby("day")["abs_error"].mean(),
                "persistence": frame.groupby("day")["persistence_abs_error"].mean(),
                "shadow": frame.dropna(subset=["shadow"]).groupby("day")["shadow"].mean() if len(own) else None,
            }
    return rows, daily


def chart(daily: dict, path: Path, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(daily), 1, figsize=(11, 2.6 * len(daily)), sharex=True)
    for ax, (station, d) in zip(np.atleast_1d(axes), daily.items(), strict=True):
        roll = {k: v.rolling(window, min_periods=1).mean() for k, v in d.items() if isinstance(v, pd.Series)}
        ax.plot(roll["persistence"].index, roll["persistence"], color="0.55", lw=1.2, label="persistence")
        ax.plot(roll["model"].index, roll["model"], color="tab:blue", lw=1.8, label="served model (live)")
        if "shadow" in roll:
            ax.plot(roll["shadow"].index, roll["shadow"], color="tab:red", lw=1.2, ls="--",
                    label="global (Jena) model on the same windows")
        if d["swap_day"] is not None:
            ax.axvline(d["swap_day"], color="k", lw=1, ls=":")
            ax.text(d["swap_day"], ax.get_ylim()[1] * 0.95, " fine-tuned model serves", va="top", fontsize=8)
        ax.set_title(station, fontsize=10, loc="left")
        ax.set_ylabel(f"MAE °C ({window}-day mean)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("days since the station's first reading (forecast issue time)")
    fig.suptitle("New NOAA stations on a Jena-trained service: rolling MAE before and after the automatic fine-tune")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--start", default="2014-01-01")
    p.add_argument("--days", type=int, default=100)
    p.add_argument("--seconds-per-day", type=float, default=1.5, help="replay pace (wall seconds per data day)")
    p.add_argument("--min-history-days", type=float, default=30.0)
    p.add_argument("--holdout-days", type=float, default=7.0)
    p.add_argument("--retrain-base", action="store_true", help="retrain the cached Jena global model")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("stationcast.scheduler").setLevel(logging.INFO)
    torch.set_num_threads(1)

    print("1/3 the global model, trained on Jena only", file=sys.stderr)
    base_registry = jena_global(args.retrain_base)
    base = base_registry.champion("global")
    base_card = base_registry.card("global", base.version)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    shutil.copytree(JENA_REGISTRY, WORK / "registry")
    records = station_records(pd.Timestamp(args.start), args.days)

    print(f"2/3 streaming {len(records):,} readings of {len(STATIONS)} NOAA stations ({args.days} days) "
          "through the embedded broker", file=sys.stderr)
    broker = EmbeddedBroker(log_path=WORK / "broker.log").start()
    try:
        tag = uuid.uuid4().hex[:8]
        bcfg = BrokerConfig(bootstrap_servers=broker.bootstrap, readings_topic=f"readings.{tag}",
                            forecasts_topic=f"forecasts.{tag}", deadletter_topic=f"deadletter.{tag}")
        ensure_topics(bcfg, broker.bootstrap, bcfg.topics())
        cfg = ServiceConfig(
            broker=bcfg, store_url=f"sqlite:///{WORK}/store.db", registry=str(WORK / "registry"),
            group_id=f"bench.{tag}", http_port=0, device="cpu", model_check_s=3600.0,
            finetune_interval_s=3.0, finetune_min_history_days=args.min_history_days, finetune_history_days=60.0,
            finetune_holdout_days=args.holdout_days,
        )
        started = time.perf_counter()
        service = stream(records, cfg, broker.bootstrap, args.seconds_per_day)
        wall = time.perf_counter() - started
    finally:
        broker.stop()
    outcomes = service.lifecycle.scheduler.finetune_outcomes

    print("3/3 reading the scored forecasts back from the store", file=sys.stderr)
    rows, daily = summarize(cfg.store_url, records, Registry(cfg.registry), base.tag)
    figure = DOCS / "figures" / "lifecycle_transfer.png"
    chart(daily, figure, window=7)
    table = markdown_table(
        ["station", "served by", "fine-tuned at day", "holdout MAE: fine-tuned", "global", "before: global live MAE",
         "persistence", "after: fine-tuned live MAE", "global, same windows", "persistence", "after vs global"],
        [[r["station"], r["model"], r["swap_day"] if r["swap_day"] is not None else "-",
          r["holdout_mae"] if r["holdout_mae"] is not None else "-",
          r["holdout_global_mae"] if r["holdout_global_mae"] is not None else "-",
          r["before_mae"], r["before_persistence"],
          r["after_mae"] if r["after_mae"] is not None else "-",
          r["after_global_same_windows"] if r["after_global_same_windows"] is not None else "-",
          r["after_persistence"] if r["after_persistence"] is not None else "-",
          f"{(1 - r['after_mae'] / r['after_global_same_windows']):+.1%}" if r["after_mae"] else "-"]
         for r in rows])
    decisions = markdown_table(
        ["station", "outcome", "model", "holdout MAE", "global holdout MAE", "reason"],
        [[",".join(o.stations), o.outcome, o.challenger or "-", o.challenger_mae if o.challenger_mae else "-",
          o.champion_mae if o.champion_mae else "-", o.reason] for o in outcomes])
    improved = [r for r in rows if r["after_mae"] is not None and r["after_mae"] < r["after_global_same_windows"]]
    beat_pers = [r for r in rows if r["after_mae"] is not None and r["after_mae"] < r["after_persistence"]]
    body = f"""
The global model: `{base.tag}` trained on Jena 2009-2016 only (features {', '.join(base_card.data.features)} and
time encodings, lookback {base_card.data.lookback} h, horizons 1-{max(base_card.data.horizons)} h, P10/P50/P90),
Jena validation MAE {base_card.metrics['val_mae']:.3f} °C. The four NOAA stations are new to it: they were
streamed from {args.start} for {args.days} days ({len(records):,} readings) at {args.seconds_per_day} s per data day
through the embedded broker into `stationcast`'s service with the station fine-tuning job every 3 s
(`finetune_min_history_days={args.min_history_days:g}`, `finetune_holdout_days={args.holdout_days:g}`, 30 epochs
early-stopped, lr 2e-4, frozen front-end); {wall:.0f} s wall.

All numbers are MAE in °C over every scored horizon (+1 h ... +24 h), read back from the service's store:
"before" is every forecast of the global model for the station, "after" every forecast its fine-tuned model made.
"global, same windows" re-runs the global model offline on exactly the windows and targets the fine-tuned model
was scored on (`pipeline/shadow.py`), so the last column compares the two models on identical forecasts.

{table}

**{len(improved)} of {len(rows)} stations** ended up with a fine-tuned model that beats the global model on the
same live windows; {len(beat_pers)} of {len(rows)} beat persistence after the swap.

![rolling MAE before and after the fine-tune](figures/lifecycle_transfer.png)

The fine-tuning runs the scheduler made (each a `python -m pipeline.finetune` subprocess; a station is promoted
only if its holdout MAE beats the global model's by 2 %):

{decisions}
"""
    write_results("lifecycle_transfer", "Transfer learning in the running service: new NOAA stations on a Jena model",
                  body, {"rows": rows, "outcomes": [o.__dict__ for o in outcomes], "days": args.days,
                         "start": args.start, "wall_s": wall, "base": base.tag})
    print((DOCS / "lifecycle_transfer.md").read_text())


if __name__ == "__main__":
    main()
