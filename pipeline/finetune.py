"""Station fine-tuning job: a station's stored history -> a transfer-learned model -> served only if it beats
the global model on that station.

Runs as its own process (``python -m pipeline.finetune [--station ID ...]``, reading the service's settings as the
service does, :mod:`pipeline.jobs`; forecasting is undisturbed) or as a function
(:func:`finetune_stations`). For each station:

1. read its last ``history_days`` of readings from the store and clean them at the global model's cadence;
2. adapt the global champion to it with :func:`forecaster.adapt.adapt_station`, the code ``stationcast finetune``
   runs, with the same :class:`~forecaster.adapt.AdaptConfig` (the same flags and defaults): its last
   ``holdout_days`` are held out, pick epochs and normalization, and score the fine-tuned and the global model on
   the same windows;
3. only an accepted model (better than the global one by ``margin``, and than the station's current model if it
   has one) is registered as ``station-<id>`` and promoted; a rejected attempt is kept in the registry already
   marked rejected, never a candidate, with the numbers that decided it (so the station is retried only once it
   has gathered ``retry_days`` more data).

Without ``--station`` every *eligible* station is fine-tuned (:func:`eligible_stations`): one with at least
``min_history_days`` of stored history and no station model yet, or whose last attempt was rejected and that has
gathered ``retry_days`` more data since. One JSON line per station is printed on stdout
(a :class:`pipeline.challenger.Outcome`).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from forecaster import adapt
from forecaster.artifact import load_artifact
from forecaster.registry import Registry, VersionInfo, station_model_name
from forecaster.spans import holdout_split
from pipeline.cadence import describe, matching, spacing
from pipeline.challenger import DAY, Outcome, beats, holdout_mae, load_series, reject_failed
from pipeline.config import ServiceConfig
from pipeline.jobs import add_store_arguments, job_config, job_main, setting_help
from pipeline.pretrained import cadence_champions
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
    retry_days: float = _SERVICE.finetune_retry_days  # a rejected or failed station is tried again after this long
    adapt: adapt.AdaptConfig = adapt.AdaptConfig()  # holdout, margin, training: the same as `stationcast finetune`
    device: str = _SERVICE.training_device
    max_stations: int = 0  # 0 = no limit per run (the scheduler names its stations, at most finetune_max_stations)
    end_ts: int | None = None  # end of the history window (epoch s, exclusive); default: station's newest reading
    max_fill_steps: int = _SERVICE.max_fill_steps
    torch_threads: int = 1
    progress: bool = True

    @classmethod
    def from_config(cls, cfg: ServiceConfig, adaptation: adapt.AdaptConfig | None = None, **job) -> FinetuneSettings:
        """The service's settings of a fine-tuning run: its ``finetune_holdout_days``, ``finetune_margin`` and
        ``finetune_epochs`` in ``adaptation`` (default: the adaptation's other defaults); ``job`` for the knobs the
        service does not have."""
        adaptation = replace(adaptation or adapt.AdaptConfig(), holdout_days=cfg.finetune_holdout_days,
                             margin=cfg.finetune_margin, epochs=cfg.finetune_epochs)
        return cls(store_url=cfg.store_url, registry=cfg.registry, base=cfg.model_name,
                   min_history_days=cfg.finetune_min_history_days, history_days=cfg.finetune_history_days,
                   retry_days=cfg.finetune_retry_days, adapt=adaptation, device=cfg.training_device,
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


def base_name(registry: Registry, base: str, times: pd.Series) -> str:
    """The champion a station is fine-tuned from: its cadence's (``global`` for hourly stations, ``global-10min``
    for 10-minute ones; see :mod:`pipeline.cadence`), detected from the spacing of its recent readings."""
    every = spacing(times.to_numpy(dtype="datetime64[s]").astype(np.int64))
    champions = cadence_champions(registry, base)
    cadence = matching(every, champions)
    if cadence is None:
        have = ", ".join(f"{describe(c)} ({n})" for c, n in sorted(champions.items()))
        raise ValueError(f"the station reports every {describe(every)}; no champion at that cadence ({have})")
    return champions[cadence]


def finetune_station(s: FinetuneSettings, station: str, registry: Registry) -> Outcome:
    started = time.perf_counter()
    out = Outcome("failed", margin=s.adapt.margin, stations=[station])
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
    with Store.open(s.store_url) as store:
        newest = store.max_ts([station])
        if newest is None:
            raise ValueError(f"the store holds no readings of station {station!r}")
        recent = store.history(newest - 2 * DAY, newest + 1, [station])
    base, card, info = registry.load(base_name(registry, s.base, recent["time"]))
    out.champion = info.tag
    end_ts = newest + 1 if s.end_ts is None else int(s.end_ts)
    start_ts = end_ts - int(s.history_days * DAY)
    series = load_series(s.store_url, start_ts, end_ts, list(card.data.features), card.cadence_s, s.max_fill_steps,
                         stations=[station])
    if not series:
        raise ValueError(f"station {station!r} has no readings in the history window")
    history = slice(0, len(series[0].frame))
    fit_rows, hold_rows = holdout_split(series[0], history, s.adapt.holdout_days)
    if fit_rows.stop - fit_rows.start <= card.data.lookback or hold_rows.stop <= hold_rows.start:
        raise ValueError(f"station {station!r} has too little history before its holdout "
                         f"({fit_rows.stop - fit_rows.start} training rows, lookback {card.data.lookback})")
    a = adapt.adapt_station(base, card, series[0], history, s.adapt, label=f"{name} from {info.tag}",
                            parent=info.tag, device=s.device, progress=s.progress)
    out.challenger_mae, out.champion_mae = a.tuned_mae, a.base_mae
    out.holdout_samples, out.train_span = a.holdout.windows, a.card.training_span
    out.holdout_span = a.holdout.span
    accepted, reason = a.accepted, a.reason
    current = registry.champion(name)
    if accepted and current is not None:  # a station model already serves: the new one must beat it too
        cur_model, cur_card, _ = registry.load(name)
        cur_mae = holdout_mae(cur_model, cur_card, series, [(fit_rows, hold_rows, hold_rows)])
        if not beats(a.tuned_mae, cur_mae, s.adapt.margin):
            accepted, reason = False, f"{reason}; but {current.tag} serving the station has {cur_mae:.3f}"
    if not (math.isfinite(a.tuned_mae) and math.isfinite(a.base_mae)):
        raise FloatingPointError(f"holdout MAE fine-tuned {a.tuned_mae}, base {a.base_mae}")
    note = f"fine-tuned from {info.tag} on {out.train_span[0]} .. {out.train_span[1]}: {reason}"
    new = registry.register(name, a.model, a.card, note=note, status="candidate" if accepted else "rejected")
    out.challenger = new.tag
    load_artifact(registry.path(name, new.version))  # what was written loads back, or the run fails
    if not accepted:
        out.outcome, out.reason = "rejected", f"not registered as a candidate: {reason}"
        log.info("station %s stays on %s, %s kept as rejected: %s", station, info.tag, new.tag, reason)
        return
    registry.promote(name, new.version, note=f"promoted: {note}")
    out.outcome, out.reason = "promoted", f"accepted: {reason}"
    log.info("promoted %s for station %s: %s", new.tag, station, note)


# flag -> the service setting it overrides (its default is that setting's)
SETTING_FLAGS = {"base": "model_name", "min_history_days": "finetune_min_history_days",
                 "history_days": "finetune_history_days", "retry_days": "finetune_retry_days",
                 "holdout_days": "finetune_holdout_days", "margin": "finetune_margin", "epochs": "finetune_epochs"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = FinetuneSettings("", "")
    add_store_arguments(p)
    p.add_argument("--base", help=setting_help("registry name of the model to start from", "model_name"))
    p.add_argument("--station", action="append", default=[], help="station id (repeatable; default: all eligible)")
    p.add_argument("--min-history-days", type=float, help=setting_help(
        "stored history a station needs to be eligible", "finetune_min_history_days"))
    p.add_argument("--history-days", type=float, help=setting_help(
        "at most this many of a station's newest days are read", "finetune_history_days"))
    p.add_argument("--retry-days", type=float, help=setting_help(
        "a rejected station is tried again once it has this many more days", "finetune_retry_days"))
    p.add_argument("--max-stations", type=int, default=d.max_stations,
                   help="stations fine-tuned at most (default %(default)s: no limit)")
    p.add_argument("--end-ts", type=int)
    # The adaptation flags of `stationcast finetune`; the three the service has settings for default to them.
    adapt.add_arguments(p, d.adapt, from_settings={"holdout_days": setting_help("", "finetune_holdout_days"),
                                                   "margin": setting_help("", "finetune_margin"),
                                                   "epochs": setting_help("", "finetune_epochs")})
    p.add_argument("--torch-threads", type=int, default=d.torch_threads, help="default %(default)s")
    p.add_argument("--nice", type=int, default=0, help="lower this process' CPU priority (the service's scheduler "
                                                       "passes its training_nice so forecasting wins contention)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def settings_from_args(args: argparse.Namespace) -> FinetuneSettings:
    """Flags over the service's settings layers (:func:`pipeline.jobs.job_config`)."""
    from pipeline.validation import SettingError

    cfg = job_config(args, {setting: f"--{flag.replace('_', '-')}" for flag, setting in SETTING_FLAGS.items()},
                     **{setting: getattr(args, flag) for flag, setting in SETTING_FLAGS.items()})
    try:
        adaptation = adapt.config_from_args(argparse.Namespace(**{
            **vars(args), "holdout_days": cfg.finetune_holdout_days, "margin": cfg.finetune_margin,
            "epochs": cfg.finetune_epochs}))
    except ValueError as exc:
        raise SettingError(str(exc)) from exc
    return FinetuneSettings.from_config(
        cfg, adaptation, stations=tuple(args.station), max_stations=args.max_stations, end_ts=args.end_ts,
        torch_threads=args.torch_threads, progress=not args.no_progress)


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
