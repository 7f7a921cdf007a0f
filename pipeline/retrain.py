"""Retraining job: recent history from the store -> challenger -> champion/challenger on a holdout -> decision.

Runs as its own process (``python -m pipeline.retrain --registry ...``, the store from ``STATIONCAST_STORE_URL``
as the scheduler passes it, so a password never shows in ``ps``; forecasting is undisturbed) or as a function
(:func:`retrain`). Steps:

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
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import orjson
import pandas as pd
import torch

from forecaster.artifact import load_artifact
from forecaster.clean import CleanConfig, StationSeries, clean_station
from forecaster.dataset import make_splits
from forecaster.evaluate import evaluate
from forecaster.experiment import fit
from forecaster.registry import Registry
from forecaster.train import TrainConfig
from pipeline.store import Store

log = logging.getLogger("stationcast.retrain")
DAY = 86_400


@dataclass(frozen=True)
class RetrainSettings:
    store_url: str
    registry: str
    name: str = "global"
    history_days: float = 30.0
    holdout_days: float = 3.0
    margin: float = 0.02  # relative MAE improvement the challenger needs over the champion
    epochs: int = 3
    lr: float = 2e-4
    batch_size: int = 128
    steps_per_epoch: int | None = None
    patience: int = 2
    val_fraction: float = 0.2  # of the rows before the holdout, for early stopping
    from_scratch: bool = False  # train the champion's architecture from random weights instead of continuing it
    end_ts: int | None = None  # end of the history window (epoch s, exclusive); default: newest stored reading
    max_fill_steps: int = 3
    seed: int = 0
    torch_threads: int = 1
    progress: bool = True


@dataclass
class Outcome:
    outcome: str  # promoted | rejected | failed
    reason: str = ""
    champion: str | None = None  # the champion compared against (unchanged unless promoted)
    challenger: str | None = None  # the registered challenger tag, if one was registered
    champion_mae: float | None = None
    challenger_mae: float | None = None
    margin: float | None = None
    stations: list[str] = field(default_factory=list)
    train_span: tuple[str, str] | None = None
    holdout_span: tuple[str, str] | None = None
    holdout_samples: int = 0
    seconds: float = 0.0

    def to_json(self) -> str:
        d = asdict(self)
        for k in ("champion_mae", "challenger_mae"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = None
        return orjson.dumps(d).decode()

    @classmethod
    def from_json(cls, line: str) -> Outcome:
        d = orjson.loads(line)
        for k in ("train_span", "holdout_span"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def beats(challenger_mae: float, champion_mae: float, margin: float) -> bool:
    """The promotion rule: the challenger must beat the champion's holdout MAE by ``margin`` (relative)."""
    return (math.isfinite(challenger_mae) and math.isfinite(champion_mae)
            and challenger_mae < champion_mae * (1.0 - margin))


def load_series(store_url: str, start_ts: int, end_ts: int, features: list[str], cadence_s: int,
                max_fill_steps: int = 3, stations: list[str] | None = None) -> list[StationSeries]:
    """Readings in ``[start_ts, end_ts)`` (of ``stations``, default all) cleaned per station onto the model's
    cadence grid."""
    with Store.open(store_url) as store:
        records = store.history(start_ts, end_ts, stations)
    if records.empty:
        return []
    records = records[["station", "time", *features]]
    cfg = CleanConfig(cadence=pd.Timedelta(seconds=cadence_s), max_fill_steps=max_fill_steps)
    series = []
    for station in sorted(records["station"].unique()):
        rec = records[records["station"] == station]
        if rec["time"].nunique() < 2:
            continue
        series.append(clean_station(rec, cfg, station=station))
    return series


def holdout_mae(model, card, series: list[StationSeries], ranges: list) -> float:
    """A registered model's MAE on the holdout windows of ``ranges``, with its own normalization, as it serves."""
    test = make_splits(series, card.data, card.normalizer, ranges).test
    return float(evaluate(model, test, card.normalizer, card.data.target, card.data.horizons)["mae"])


def record_holdout(out: Outcome, trained, holdout_start: pd.Timestamp, last: pd.Timestamp) -> float:
    """Copy a trained challenger's holdout score and spans into the outcome; its holdout MAE."""
    out.challenger_mae = float(trained.test["mae"])
    out.holdout_samples = int(trained.test["samples"])
    out.train_span = trained.card.training_span
    out.holdout_span = (str(holdout_start), str(last))
    return out.challenger_mae


def register_challenger(registry: Registry, name: str, trained, out: Outcome, reference: dict, note: str):
    """Register a scored challenger (its holdout numbers and ``reference`` MAEs in the card) as a candidate and
    check that what was written loads back; a NaN score is refused before anything is written."""
    if not math.isfinite(out.challenger_mae):
        raise FloatingPointError(f"challenger holdout MAE is {out.challenger_mae}")
    trained.card.metrics |= {"holdout_mae": out.challenger_mae, **reference, "holdout_samples": out.holdout_samples,
                             "holdout_span": list(out.holdout_span)}
    new = registry.register(name, trained.model, trained.card, note=note)
    out.challenger = new.tag
    load_artifact(registry.path(name, new.version))
    return new


def reject_failed(registry: Registry, name: str, out: Outcome) -> None:
    """A challenger registered before the run failed must never stay a candidate."""
    if out.challenger is None:
        return
    try:
        registry.reject(name, int(out.challenger.rpartition("@v")[2]), note=f"failed: {out.reason}")
    except Exception as exc:  # noqa: BLE001 - reporting the first failure matters more
        log.error("could not mark %s rejected: %s", out.challenger, exc)


def _ranges(series: StationSeries, holdout_start: pd.Timestamp, val_fraction: float) -> tuple[slice, slice, slice]:
    n = len(series.frame)
    hold = int(np.searchsorted(series.times.to_numpy(), holdout_start.to_datetime64()))
    val = hold - int(round(hold * val_fraction))
    return slice(0, val), slice(val, hold), slice(hold, n)


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
    ranges = [_ranges(x, holdout_start, s.val_fraction) for x in series]
    keep = [i for i, r in enumerate(ranges) if r[0].stop > 0 and r[2].stop > r[2].start]
    series, ranges = [series[i] for i in keep], [ranges[i] for i in keep]
    out.stations = [x.station for x in series]
    if not series:
        raise ValueError("no station has both training rows and holdout rows")
    log.info("%d stations, %s rows", len(series), sum(len(x.frame) for x in series))

    train_cfg = TrainConfig(lr=s.lr, epochs=s.epochs, batch_size=s.batch_size, steps_per_epoch=s.steps_per_epoch,
                            patience=s.patience, seed=s.seed, device="cpu", progress=s.progress)
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = RetrainSettings("", "")
    add_store_arguments(p)
    p.add_argument("--name", default=d.name, help="registry name of the model (default %(default)s)")
    p.add_argument("--history-days", type=float, default=d.history_days,
                   help="days of stored history read, holdout included (default %(default)s)")
    p.add_argument("--holdout-days", type=float, default=d.holdout_days,
                   help="last days, never trained on, that score challenger and champion (default %(default)s)")
    p.add_argument("--margin", type=float, default=d.margin, help="relative MAE gain needed to promote")
    p.add_argument("--epochs", type=int, default=d.epochs, help="most epochs (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--from-scratch", action="store_true", help="random weights instead of continuing the champion")
    p.add_argument("--end-ts", type=int, help="end of the history window (epoch s); default newest reading")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--torch-threads", type=int, default=d.torch_threads)
    p.add_argument("--nice", type=int, default=0, help="lower this process' CPU priority (the service's scheduler "
                                                       "passes its training_nice so forecasting wins contention)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_store_arguments(p: argparse.ArgumentParser) -> None:
    """Where a job reads and writes; resolved by :func:`job_store` like the service's own settings."""
    p.add_argument("--config", help="YAML file of settings (store_url and registry are read from it)")
    p.add_argument("--store-url", help="default: STATIONCAST_STORE_URL, else store_url in --config, else "
                                       "sqlite:///var/stationcast.db; a password belongs in the variable or the file, "
                                       "not here (ps shows it)")
    p.add_argument("--registry", help="default: STATIONCAST_REGISTRY, else registry in --config, else var/registry")


def job_store(args: argparse.Namespace) -> tuple[str, str]:
    """(store URL, registry) of a job: flags, else ``STATIONCAST_*`` variables, else ``--config``, else the
    defaults (:func:`pipeline.config.load_config`, as the service). The scheduler hands the store URL over in
    the job's environment, never on its command line. The store must already exist: a job reads history, it
    never creates a database."""
    from pipeline.config import load_config
    from pipeline.preflight import check_store, warn_password_on_command_line

    cfg = load_config(args.config, store_url=args.store_url, registry=args.registry)
    check_store(cfg.store_url, must_exist=True)
    warn_password_on_command_line(args.store_url)
    return cfg.store_url, cfg.registry


def job_main(prog: str, args: argparse.Namespace, run) -> int:
    """``python -m`` entry of a job: logging on stderr, and a bad setting is one line and exit code 2."""
    from pipeline.validation import SettingError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return run(args)
    except SettingError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return job_main("python -m pipeline.retrain", build_parser().parse_args(argv), run_from_args)


def run_from_args(args: argparse.Namespace) -> int:
    store_url, registry = job_store(args)
    if getattr(args, "nice", 0):
        os.nice(args.nice)
    settings = RetrainSettings(
        store_url=store_url, registry=registry, name=args.name, history_days=args.history_days,
        holdout_days=args.holdout_days, margin=args.margin, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch, patience=args.patience,
        from_scratch=args.from_scratch, end_ts=args.end_ts, seed=args.seed, torch_threads=args.torch_threads,
        progress=not args.no_progress,
    )
    outcome = retrain(settings)
    log.info("outcome: %s", outcome.to_json())
    print(outcome.to_json(), flush=True)
    return 1 if outcome.outcome == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
