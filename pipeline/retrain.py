"""Retraining job: recent history from the store -> challenger -> champion/challenger on a holdout -> decision.

Runs as its own process (``python -m pipeline.retrain``, reading the service's settings as the service does; the
scheduler passes them in the environment, :mod:`pipeline.jobs`, so a password never shows in ``ps``; forecasting is
undisturbed) or as a function (:func:`retrain`). Steps:

1. read the last ``history_days`` of readings from the store and clean them per station at the champion's
   cadence (same features as the champion);
2. the last ``holdout_days`` are the holdout: never trained on, only scored; the rows before it are split
   into train and validation (early stopping);
3. continue training a copy of the champion (same architecture and features, normalization re-fit on the
   training span) or, with ``from_scratch``, train the same architecture from random weights;
4. score challenger and champion on the same holdout windows; promote the challenger only if its MAE beats
   the champion's by ``margin`` (relative: ``challenger < champion * (1 - margin)``), else register it as
   rejected with both numbers in the note.

Anything that goes wrong (a crash, a NaN loss, an artifact that does not load back) leaves the champion
untouched and reports outcome ``failed`` with the reason. The outcome is printed as one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
from dataclasses import dataclass

import pandas as pd
import torch

from forecaster.experiment import fit
from forecaster.registry import Registry
from forecaster.train import TrainConfig
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

log = logging.getLogger("stationcast.retrain")
_SERVICE = ServiceConfig()


@dataclass(frozen=True)
class RetrainSettings:
    """What one retraining round needs: the service's settings (:meth:`from_config`) plus knobs of the job alone."""

    store_url: str
    registry: str
    name: str = _SERVICE.model_name
    history_days: float = _SERVICE.retrain_history_days
    holdout_days: float = _SERVICE.retrain_holdout_days
    margin: float = _SERVICE.promote_margin  # relative MAE improvement the challenger needs over the champion
    epochs: int = _SERVICE.retrain_epochs
    device: str = _SERVICE.training_device
    max_fill_steps: int = _SERVICE.max_fill_steps
    lr: float = 2e-4
    batch_size: int = 128
    steps_per_epoch: int | None = None
    patience: int = 2
    val_fraction: float = 0.2  # of the rows before the holdout, for early stopping
    from_scratch: bool = False  # train the champion's architecture from random weights instead of continuing it
    end_ts: int | None = None  # end of the history window (epoch s, exclusive); default: newest stored reading
    seed: int = 0
    torch_threads: int = 1
    progress: bool = True

    @classmethod
    def from_config(cls, cfg: ServiceConfig, **job) -> RetrainSettings:
        """The service's settings of a retraining, and ``job`` for the knobs it does not have."""
        return cls(store_url=cfg.store_url, registry=cfg.registry, name=cfg.model_name,
                   history_days=cfg.retrain_history_days, holdout_days=cfg.retrain_holdout_days,
                   margin=cfg.promote_margin, epochs=cfg.retrain_epochs, device=cfg.training_device,
                   max_fill_steps=cfg.max_fill_steps, **job)


def retrain(s: RetrainSettings) -> Outcome:
    """One champion/challenger round; never raises (a failure is an outcome)."""
    started = time.perf_counter()
    out = Outcome("failed", margin=s.margin)
    registry = Registry(s.registry)
    try:
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        _run(s, registry, out)
    except Exception as exc:  # noqa: BLE001 - any failure must leave the champion alone and be reported
        out.outcome = "failed"
        out.reason = f"{type(exc).__name__}: {exc}"
        log.error("retraining failed, champion %s unchanged: %s", out.champion, out.reason)
        reject_failed(registry, s.name, out)
    out.seconds = round(time.perf_counter() - started, 3)
    return out


def _run(s: RetrainSettings, registry: Registry, out: Outcome) -> None:
    champion, card, info = registry.load(s.name)
    out.champion = info.tag
    features = list(card.data.features)
    if s.end_ts is None:
        with Store.open(s.store_url) as store:
            newest = store.max_ts()
        if newest is None:
            raise ValueError("the store holds no readings yet")
        end_ts = newest + 1
    else:
        end_ts = int(s.end_ts)
    start_ts = end_ts - int(s.history_days * DAY)
    holdout_start = pd.Timestamp(end_ts - int(s.holdout_days * DAY), unit="s")
    log.info("retraining %s: history %s .. %s, holdout from %s, champion %s", s.name,
             pd.Timestamp(start_ts, unit="s"), pd.Timestamp(end_ts, unit="s"), holdout_start, info.tag)
    series = load_series(s.store_url, start_ts, end_ts, features, card.cadence_s, s.max_fill_steps)
    if not series:
        raise ValueError("no readings in the history window")
    own_end = int(max(x.times[-1] for x in series).timestamp()) + 1
    if s.end_ts is None and own_end < end_ts:  # the window ends at the newest reading of this cadence's stations
        end_ts, start_ts = own_end, own_end - int(s.history_days * DAY)
        holdout_start = pd.Timestamp(end_ts - int(s.holdout_days * DAY), unit="s")
        log.info("%s's stations end at %s: history %s .. %s", s.name, pd.Timestamp(end_ts, unit="s"),
                 pd.Timestamp(start_ts, unit="s"), pd.Timestamp(end_ts, unit="s"))
        series = load_series(s.store_url, start_ts, end_ts, features, card.cadence_s, s.max_fill_steps)
    ranges = [split_ranges(x, holdout_start, s.val_fraction) for x in series]
    keep = [i for i, r in enumerate(ranges) if r[0].stop > 0 and r[2].stop > r[2].start]
    series, ranges = [series[i] for i in keep], [ranges[i] for i in keep]
    out.stations = [x.station for x in series]
    if not series:
        raise ValueError("no station has both training rows and holdout rows")
    log.info("%d stations, %s rows", len(series), sum(len(x.frame) for x in series))

    train_cfg = TrainConfig(lr=s.lr, epochs=s.epochs, batch_size=s.batch_size, steps_per_epoch=s.steps_per_epoch,
                            patience=s.patience, seed=s.seed, device=s.device, progress=s.progress)
    start_model = None if s.from_scratch else copy.deepcopy(champion).cpu()
    # normalizer=None: re-fit on the training rows of the window (make_splits inside fit).
    trained = fit(series, card.data, card.model, train_cfg, label=f"challenger of {info.tag}", ranges=ranges,
                  model=start_model, parent=None if s.from_scratch else info.tag)
    challenger_mae = record_holdout(out, trained, holdout_start, max(x.times[-1] for x in series))
    champion_mae = holdout_mae(champion, card, series, ranges)  # exactly the same holdout windows
    out.champion_mae = champion_mae
    note = (f"retrained on {out.train_span[0]} .. {out.train_span[1]}; holdout MAE {challenger_mae:.4f} "
            f"vs champion {info.tag} {champion_mae:.4f} (margin {s.margin:+.1%})")
    new = register_challenger(registry, s.name, trained, out, {"champion_holdout_mae": champion_mae}, note)
    if not beats(challenger_mae, champion_mae, s.margin):
        registry.reject(s.name, new.version, note=f"rejected: {note}")
        out.outcome, out.reason = "rejected", f"challenger did not beat the champion by {s.margin:.1%}"
        log.info("rejected %s: %s", new.tag, note)
        return
    current = registry.champion(s.name)
    if current is None or current.version != info.version:  # someone promoted/rolled back meanwhile
        registry.reject(s.name, new.version, note=f"champion changed during retraining; {note}")
        out.outcome, out.reason = "rejected", f"champion changed during retraining (now {current and current.tag})"
        return
    registry.promote(s.name, new.version, note=f"promoted: {note}")
    out.outcome, out.reason = "promoted", f"challenger beat the champion by more than {s.margin:.1%}"
    log.info("promoted %s over %s: %s", new.tag, info.tag, note)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.retrain", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


# flag -> the service setting it overrides (its default is that setting's)
SETTING_FLAGS = {"name": "model_name", "history_days": "retrain_history_days",
                 "holdout_days": "retrain_holdout_days", "margin": "promote_margin", "epochs": "retrain_epochs"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = RetrainSettings("", "")
    add_store_arguments(p)
    p.add_argument("--name", help=setting_help("registry name of the model", "model_name"))
    p.add_argument("--history-days", type=float,
                   help=setting_help("days of stored history read, holdout included", "retrain_history_days"))
    p.add_argument("--holdout-days", type=float, help=setting_help(
        "last days, never trained on, that score challenger and champion", "retrain_holdout_days"))
    p.add_argument("--margin", type=float, help=setting_help("relative MAE gain needed to promote", "promote_margin"))
    p.add_argument("--epochs", type=int, help=setting_help("most epochs", "retrain_epochs"))
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    p.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch, help="default: a full pass")
    p.add_argument("--patience", type=int, default=d.patience, help="default %(default)s")
    p.add_argument("--from-scratch", action="store_true", help="random weights instead of continuing the champion")
    p.add_argument("--end-ts", type=int, help="end of the history window (epoch s); default newest reading")
    p.add_argument("--seed", type=int, default=d.seed, help="default %(default)s")
    p.add_argument("--torch-threads", type=int, default=d.torch_threads, help="default %(default)s")
    p.add_argument("--nice", type=int, default=0, help="lower this process' CPU priority (the service's scheduler "
                                                       "passes its training_nice so forecasting wins contention)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def settings_from_args(args: argparse.Namespace) -> RetrainSettings:
    """Flags over the service's settings layers (:func:`pipeline.jobs.job_config`)."""
    cfg = job_config(args, {setting: f"--{flag.replace('_', '-')}" for flag, setting in SETTING_FLAGS.items()},
                     **{setting: getattr(args, flag) for flag, setting in SETTING_FLAGS.items()})
    return RetrainSettings.from_config(
        cfg, lr=args.lr, batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch, patience=args.patience,
        from_scratch=args.from_scratch, end_ts=args.end_ts, seed=args.seed, torch_threads=args.torch_threads,
        progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    return job_main("python -m pipeline.retrain", build_parser().parse_args(argv), run_from_args)


def run_from_args(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if getattr(args, "nice", 0):
        os.nice(args.nice)
    outcome = retrain(settings)
    log.info("outcome: %s", outcome.to_json())
    print(outcome.to_json(), flush=True)
    return 1 if outcome.outcome == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
