"""Station fine-tuning job: a station's stored history -> a transfer-learned model -> served only if it beats
the global model on that station.

Runs as its own process (``python -m pipeline.finetune [--station ID ...]``, reading the service's settings as the
service does, :mod:`pipeline.jobs`; forecasting is undisturbed) or as a function
(:func:`finetune_stations`). For each station:

1. read its last ``history_days`` of readings from the store and clean them at the global model's cadence;
2. the last ``holdout_days`` are the holdout, the rows before it train (and validate, for early stopping);
3. fine-tune a copy of the global champion (:func:`forecaster.transfer.finetune`: frozen Conv1D front-end,
   the station's own normalization, GRU and head at a lower learning rate);
4. score it and the global champion on the same holdout windows; register it as ``station-<id>`` and promote
   it only if it beats the global model there by ``margin`` (relative), else keep it marked rejected.

Without ``--station`` every *eligible* station is fine-tuned (:func:`eligible_stations`): one with at least
``min_history_days`` of stored history and no station model yet, or whose last attempt was rejected and that has
gathered ``retry_days`` more data since. One JSON line per station is printed on stdout
(a :class:`pipeline.challenger.Outcome`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch

from forecaster.registry import Registry, VersionInfo, station_model_name
from forecaster.train import TrainConfig
from forecaster.transfer import finetune
from pipeline.challenger import (
    DAY,
    Outcome,
    beats,
    holdout_mae,
    load_series,
    record_holdout,
    register_challenger,
    reject_failed,
    split_ranges,
)
from pipeline.config import ServiceConfig
from pipeline.jobs import add_store_arguments, job_config, job_main, setting_help
from pipeline.store import Store

log = logging.getLogger("stationcast.finetune")
_SERVICE = ServiceConfig()


@dataclass(frozen=True)
class FinetuneSettings:
    """What one fine-tuning run needs: the service's settings (:meth:`from_config`) plus knobs of the job alone."""

    store_url: str
    registry: str
    base: str = _SERVICE.model_name  # registry name of the model every station model starts from
    stations: tuple[str, ...] = ()  # () = every eligible station
    min_history_days: float = _SERVICE.finetune_min_history_days  # stored history needed before fine-tuning
    history_days: float = _SERVICE.finetune_history_days  # at most this much of its newest history is read
    holdout_days: float = _SERVICE.finetune_holdout_days
    margin: float = _SERVICE.finetune_margin  # relative holdout-MAE gain over the global model needed to serve it
    retry_days: float = _SERVICE.finetune_retry_days  # a rejected or failed station is tried again after this long
    epochs: int = _SERVICE.finetune_epochs
    device: str = _SERVICE.training_device
    max_fill_steps: int = _SERVICE.max_fill_steps
    lr: float = 2e-4
    batch_size: int = 64
    patience: int = 5
    val_fraction: float = 0.2
    freeze_frontend: bool = True
    max_stations: int = 0  # 0 = no limit per run (the scheduler names its stations, at most finetune_max_stations)
    end_ts: int | None = None  # end of the history window (epoch s, exclusive); default: station's newest reading
    seed: int = 0
    torch_threads: int = 1
    progress: bool = True

    @classmethod
    def from_config(cls, cfg: ServiceConfig, **job) -> FinetuneSettings:
        """The service's settings of a fine-tuning run, and ``job`` for the knobs it does not have."""
        return cls(store_url=cfg.store_url, registry=cfg.registry, base=cfg.model_name,
                   min_history_days=cfg.finetune_min_history_days, history_days=cfg.finetune_history_days,
                   holdout_days=cfg.finetune_holdout_days, margin=cfg.finetune_margin,
                   retry_days=cfg.finetune_retry_days, epochs=cfg.finetune_epochs, device=cfg.training_device,
                   max_fill_steps=cfg.max_fill_steps, **job)


def eligible_stations(store: Store, registry: Registry, min_history_days: float, retry_days: float) -> list[str]:
    """Stations with enough stored history that have no station model, or whose last attempt was rejected or
    failed and that have gathered ``retry_days`` more data since (data time, so a replayed backlog retries as
    live traffic would)."""
    spans = store.spans()
    spans = spans[(spans["last_ts"] - spans["first_ts"]) >= min_history_days * DAY]
    names = set(registry.names())
    out = []
    for station, last_ts in zip(spans["station"].tolist(), spans["last_ts"].tolist(), strict=True):
        name = station_model_name(station)
        versions = registry.versions(name) if name in names else []
        retry = bool(versions) and all(v.status != "champion" for v in versions) and \
            last_ts - _last_attempt_ts(versions) >= retry_days * DAY
        if not versions or retry:
            out.append(station)
    return out


def _last_attempt_ts(versions: Sequence[VersionInfo]) -> int:
    """The newest data time an earlier attempt saw (its holdout's end; its creation time if unknown)."""
    ends = [(v.metrics.get("holdout_span") or [None, None])[1] or v.created_at for v in versions]
    return max(int(pd.Timestamp(when).timestamp()) for when in ends)  # naive stamps are UTC


def finetune_stations(s: FinetuneSettings) -> list[Outcome]:
    """Fine-tune the requested (or every eligible) station; never raises (a failure is an outcome)."""
    if s.torch_threads:
        torch.set_num_threads(s.torch_threads)
    registry = Registry(s.registry)
    stations = list(s.stations)
    if not stations:
        with Store.open(s.store_url) as store:
            stations = eligible_stations(store, registry, s.min_history_days, s.retry_days)
    if s.max_stations:
        stations = stations[: s.max_stations]
    log.info("fine-tuning %d station(s) from %s: %s", len(stations), s.base, ", ".join(stations) or "-")
    return [finetune_station(replace(s, stations=(st,)), st, registry) for st in stations]


def finetune_station(s: FinetuneSettings, station: str, registry: Registry) -> Outcome:
    started = time.perf_counter()
    out = Outcome("failed", margin=s.margin, stations=[station])
    name = station_model_name(station)
    try:
        _run(s, station, name, registry, out)
    except Exception as exc:  # noqa: BLE001 - a failure must leave the station on the global model and be reported
        out.outcome, out.reason = "failed", f"{type(exc).__name__}: {exc}"
        log.error("fine-tuning %s failed, it stays on %s: %s", station, out.champion or s.base, out.reason)
        reject_failed(registry, name, out)
    out.seconds = round(time.perf_counter() - started, 3)
    return out


def _run(s: FinetuneSettings, station: str, name: str, registry: Registry, out: Outcome) -> None:
    base, card, info = registry.load(s.base)
    out.champion = info.tag
    with Store.open(s.store_url) as store:
        newest = store.max_ts([station])
    if newest is None:
        raise ValueError(f"the store holds no readings of station {station!r}")
    end_ts = newest + 1 if s.end_ts is None else int(s.end_ts)
    start_ts = end_ts - int(s.history_days * DAY)
    holdout_start = pd.Timestamp(end_ts - int(s.holdout_days * DAY), unit="s")
    series = load_series(s.store_url, start_ts, end_ts, list(card.data.features), card.cadence_s, s.max_fill_steps,
                         stations=[station])
    if not series:
        raise ValueError(f"station {station!r} has no readings in the history window")
    ranges = split_ranges(series[0], holdout_start, s.val_fraction)
    if ranges[0].stop <= card.data.lookback or ranges[2].stop <= ranges[2].start:
        raise ValueError(f"station {station!r} has too little history before its holdout "
                         f"({ranges[0].stop} training rows, lookback {card.data.lookback})")
    train_cfg = TrainConfig(lr=s.lr, epochs=s.epochs, batch_size=s.batch_size, patience=s.patience, seed=s.seed,
                            device=s.device, progress=s.progress)
    trained = finetune(base, card, series[0], ranges, train_cfg, freeze_frontend=s.freeze_frontend,
                       label=f"{name} from {info.tag}", parent=info.tag)
    tuned_mae = record_holdout(out, trained, holdout_start, series[0].times[-1])
    base_mae = holdout_mae(base, card, series, [ranges])  # the global model on the same holdout windows
    out.champion_mae = base_mae
    note = (f"fine-tuned from {info.tag} on {out.train_span[0]} .. {out.train_span[1]}; holdout MAE "
            f"{tuned_mae:.4f} vs {info.tag} {base_mae:.4f} (margin {s.margin:+.1%})")
    new = register_challenger(registry, name, trained, out, {"base_holdout_mae": base_mae}, note)
    current = registry.champion(name)
    if current is not None:  # a station model already serves: the new one must beat it too
        cur_model, cur_card, _ = registry.load(name)
        base_mae = min(base_mae, holdout_mae(cur_model, cur_card, series, [ranges]))
    if not beats(tuned_mae, base_mae, s.margin):
        registry.reject(name, new.version, note=f"rejected: {note}")
        out.outcome, out.reason = "rejected", f"fine-tuned model did not beat the serving model by {s.margin:.1%}"
        log.info("rejected %s: %s", new.tag, note)
        return
    registry.promote(name, new.version, note=f"promoted: {note}")
    out.outcome, out.reason = "promoted", f"fine-tuned model beat {info.tag} on the station by more than {s.margin:.1%}"
    log.info("promoted %s for station %s: %s", new.tag, station, note)


# flag -> the service setting it overrides (its default is that setting's)
SETTING_FLAGS = {"base": "model_name", "min_history_days": "finetune_min_history_days",
                 "history_days": "finetune_history_days", "holdout_days": "finetune_holdout_days",
                 "margin": "finetune_margin", "retry_days": "finetune_retry_days", "epochs": "finetune_epochs"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = FinetuneSettings("", "")
    add_store_arguments(p)
    p.add_argument("--base", help=setting_help("registry name of the model to start from", "model_name"))
    p.add_argument("--station", action="append", default=[], help="station id (repeatable; default: all eligible)")
    p.add_argument("--min-history-days", type=float, help=setting_help(
        "stored history a station needs to be eligible", "finetune_min_history_days"))
    p.add_argument("--history-days", type=float, help=setting_help(
        "at most this many of a station's newest days are read", "finetune_history_days"))
    p.add_argument("--holdout-days", type=float, help=setting_help(
        "last days, never trained on, that score it against the base model", "finetune_holdout_days"))
    p.add_argument("--margin", type=float, help=setting_help("relative MAE gain needed to serve the station",
                                                             "finetune_margin"))
    p.add_argument("--retry-days", type=float, help=setting_help(
        "a rejected station is tried again once it has this many more days", "finetune_retry_days"))
    p.add_argument("--epochs", type=int, help=setting_help("most epochs", "finetune_epochs"))
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate (default %(default)s)")
    p.add_argument("--patience", type=int, default=d.patience, help="default %(default)s")
    p.add_argument("--max-stations", type=int, default=d.max_stations,
                   help="stations fine-tuned at most (default %(default)s: no limit)")
    p.add_argument("--no-freeze", action="store_true", help="also train the Conv1D front-end")
    p.add_argument("--end-ts", type=int)
    p.add_argument("--seed", type=int, default=d.seed, help="default %(default)s")
    p.add_argument("--torch-threads", type=int, default=d.torch_threads, help="default %(default)s")
    p.add_argument("--nice", type=int, default=0, help="lower this process' CPU priority (the service's scheduler "
                                                       "passes its training_nice so forecasting wins contention)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def settings_from_args(args: argparse.Namespace) -> FinetuneSettings:
    """Flags over the service's settings layers (:func:`pipeline.jobs.job_config`)."""
    cfg = job_config(args, {setting: f"--{flag.replace('_', '-')}" for flag, setting in SETTING_FLAGS.items()},
                     **{setting: getattr(args, flag) for flag, setting in SETTING_FLAGS.items()})
    return FinetuneSettings.from_config(
        cfg, stations=tuple(args.station), lr=args.lr, patience=args.patience, max_stations=args.max_stations,
        freeze_frontend=not args.no_freeze, end_ts=args.end_ts, seed=args.seed, torch_threads=args.torch_threads,
        progress=not args.no_progress)


def run_from_args(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if getattr(args, "nice", 0):
        os.nice(args.nice)
    outcomes = finetune_stations(settings)
    for o in outcomes:
        print(o.to_json(), flush=True)
    return 1 if any(o.outcome == "failed" for o in outcomes) else 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.finetune", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return job_main("python -m pipeline.finetune", p.parse_args(argv), run_from_args)


if __name__ == "__main__":
    sys.exit(main())
