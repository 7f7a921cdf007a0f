"""The model-side commands of ``stationcast``: train, evaluate, finetune, models list|promote|rollback.

Registered on the top-level parser by :mod:`pipeline.cli`; nothing here touches Kafka.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

from forecaster import adapt
from forecaster.artifact import ModelCard, load_artifact
from forecaster.cadence_transfer import TRANSFER_LAYERS, fit_transfer, transfer_config
from forecaster.clean import CleanConfig, StationSeries, load_stations, usable_features
from forecaster.data import DataError, file_sha256
from forecaster.dataset import DataConfig, check_long_enough, split_rows
from forecaster.experiment import fit, model_config
from forecaster.models import ANCHORS, LISTING_6_49, MODEL_KINDS, TRAINED_KINDS, ConvLayer, MixedIn, ModelConfig
from forecaster.registry import DEFAULT_REGISTRY, GLOBAL, Registry, default_registry, station_model_name
from forecaster.resample import AGGREGATIONS, RESAMPLE_HELP, CadenceMismatch, cadence_name, conform, describe
from forecaster.scorecard import horizon_label, render, score_on_span
from forecaster.spans import (
    TEST_FRACTION,
    TRAIN_VAL_FRACTION,
    SpanError,
    covered,
    finetune_ranges,
    require_windows,
    resolve,
    train_ranges,
)
from forecaster.table import format_table
from forecaster.train import TrainConfig

# Defaults of the commands' flags are the dataclasses' (one source); the one deliberate difference is below.
D, T = DataConfig(), TrainConfig()
BOOK_DROPOUT = 0.1  # `train`'s dropout, the book's Listing 6.49 rate; ModelConfig's 0.0 is for code building a model


SCHEMA_HELP = ("built-in layout (jena, jena2020, nycflights13) or a YAML schema file (README: \"Your own "
               "stations\"); detected from the header when omitted")
PREFERRED_FEATURES = ("p", "T", "Tdew", "rh", "VPmax", "wv")
REGISTRY_HELP = f"model registry folder (default: $STATIONCAST_REGISTRY, else {DEFAULT_REGISTRY}, the service's)"
SPAN_HELP = (
    "Dates are ISO dates or timestamps in the file's clock; a bare date as an end covers that day. Without "
    f"them the test span is the last {TEST_FRACTION:.0%} of the data's time span, the same for evaluate and finetune."
)


def _horizons(text: str) -> tuple[int, ...]:
    """``24`` -> (24,); ``1-24`` -> (1, ..., 24); ``6,12,24``; ``1-6,12-144/6`` -> 1..6 then every 6th to 144."""
    out: list[int] = []
    for part in text.split(","):
        span, _, every = part.partition("/")
        a, _, b = span.partition("-")
        out += range(int(a), int(b or a) + 1, int(every or 1))
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"horizons must be positive steps, got {text!r}")
    return tuple(sorted(set(out)))


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else []


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(q) for q in text.split(",")) if text else ()


def _conv(text: str) -> tuple[ConvLayer, ...]:
    """``32x5/3,32x5/1`` -> two layers of 32 channels, kernel 5, max-pool 3 then none."""
    layers = []
    for part in text.split(","):
        ck, _, pool = part.partition("/")
        channels, _, kernel = ck.partition("x")
        layers.append(ConvLayer(int(channels), int(kernel), int(pool or 1)))
    return tuple(layers)


def _data_args(p: argparse.ArgumentParser, data_help: str) -> None:
    p.add_argument("--data", required=True, action="append", help=f"station CSV file (.csv or .csv.gz); {data_help}")
    p.add_argument("--schema", help=SCHEMA_HELP)
    p.add_argument("--station", action="append", help="station id in a multi-station file (repeatable)")
    p.add_argument("--max-fill", type=int, default=CleanConfig.max_fill_steps,
                   help="interpolate gaps up to this many steps (default %(default)s)")
    p.add_argument("--resample", metavar="AGG", choices=list(AGGREGATIONS), help=RESAMPLE_HELP)


def _pct(fraction: float) -> str:
    """A fraction for an argparse help string (which %-formats, so the sign is doubled)."""
    return f"{fraction * 100:g}%%"


def _span_args(p: argparse.ArgumentParser, train_until_help: str) -> None:
    g = p.add_argument_group("spans by date", SPAN_HELP)
    g.add_argument("--train-until", metavar="DATE", help=train_until_help)
    g.add_argument("--test-from", metavar="DATE",
                   help=f"start of the test span (default: right after --train-until when given, else the last "
                        f"{_pct(TEST_FRACTION)} of the time span up to --test-until)")
    g.add_argument("--test-until", metavar="DATE",
                   help="end of the test span, inclusive (default: the end of the data)")


def add_commands(sub: argparse._SubParsersAction, seed: Callable[..., object] | None = None) -> None:
    """The model commands; ``seed`` (the shipped-model seeding, injected by :mod:`pipeline.cli`) runs on every
    registry a command reads a champion from, so a fresh install works at once."""
    t = sub.add_parser("train", help="train a model on station files and register it",
                       description="Train a forecaster on the training span, early-stopped on the validation "
                                   "span; report MAE against persistence on the validation and test spans; "
                                   "register it (--promote: make it the champion). The spans are --split "
                                   "fractions of each file's rows (default Chollet's: the first 47.6% train, the "
                                   "next 23.8% validate, the rest tests), or dates: with --train-until / "
                                   "--test-from / --test-until everything before the end of training is used, "
                                   f"its last {TRAIN_VAL_FRACTION:.0%} (in time) validating.")
    _data_args(t, "repeat to train one model on several files")
    t.add_argument("--model", choices=list(MODEL_KINDS), default="conv_gru", help="architecture (default conv_gru)")
    t.add_argument("--features", help="comma-separated sensors (default: those of p,T,Tdew,rh,VPmax,wv the file has)")
    t.add_argument("--target", default=D.target, help="sensor to forecast (default %(default)s)")
    t.add_argument("--lookback", type=int, default=D.lookback,
                   help="input steps at the station cadence (default %(default)s)")
    t.add_argument("--step", type=int, default=D.step, help="sampling step inside the lookback (default %(default)s)")
    t.add_argument("--horizons", type=_horizons, default=D.horizons,
                   help=f"24 | 1-24 | 6,12,24 (steps ahead; default {','.join(map(str, D.horizons))})")
    t.add_argument("--quantiles", type=_floats, default=(), help="e.g. 0.1,0.5,0.9 for an uncertainty band")
    t.add_argument("--time-features", action="store_true", help="add time-of-day and day-of-year encodings")
    t.add_argument("--phase-relative", action="store_true",
                   help="with --time-features: read the time of day relative to each window's warmest hour, so "
                        "stations on local time and on UTC (or in other time zones) look alike")
    t.add_argument("--residual", action="store_true", help="predict the change from the last observation")
    t.add_argument("--anchor", choices=list(ANCHORS),
                   help="what forecasts are relative to: none, last (= --residual), or both: a learned per-horizon "
                        "mix of the last value and the value a day before the target (default: by --residual)")
    t.add_argument("--relative", metavar="SENSORS",
                   help="comma-separated sensors fed as deviations from their window mean (e.g. T,Tdew): the "
                        "station's level is removed so an unseen climate looks familiar")
    t.add_argument("--window-scale", action="store_true",
                   help="with --relative: scale each window by its own temperature spread, so a calm station's "
                        "corrections and bands shrink with its weather (a continental 2 °C is a maritime 1 °C)")
    t.add_argument("--band-offsets", action="store_true",
                   help="predict the outer quantiles as positive offsets around the median (bands never cross)")
    t.add_argument("--conv", type=_conv, default=LISTING_6_49,
                   help="front-end layers CHANNELSxKERNEL/POOL,... (default "
                        f"{','.join(f'{c.channels}x{c.kernel}/{c.pool}' for c in LISTING_6_49)})")
    t.add_argument("--hidden", type=int, default=ModelConfig.gru_hidden, help="GRU units (default %(default)s)")
    t.add_argument("--dropout", type=float, default=BOOK_DROPOUT, help="dropout rate (default %(default)s)")
    t.add_argument("--members", type=_members, default=1,
                   help="train this many copies of the model, each with its own seed, and serve the mean of their "
                        "forecasts: more accurate, at that many times the training and forecasting time "
                        "(default %(default)s)")
    t.add_argument("--mix", type=_mix, action="append", metavar="KIND:UNITSxN",
                   help="add N members of another architecture to the model's mean, e.g. gru:32x3 (three GRU(32) "
                        "over the whole window; inputs, head and dropout as the main architecture's); repeatable. "
                        "Other architectures can err less alike than seeds of one (on Jena hourly it did not pay: "
                        "docs/seed_table.md)")
    t.add_argument("--split", type=_floats, default=None,
                   help="train,validation fractions of each file's rows, the rest tests (default Chollet's "
                        "0.476,0.238); not with dates")
    _span_args(t, "end of the training data, inclusive; its last "
                  f"{_pct(TRAIN_VAL_FRACTION)} (in time) validates (default: the start of the test span)")
    _train_args(t, lr=1e-3, epochs=20, name_help=f"registry name to register under (default {GLOBAL})")
    t.add_argument("--transfer-from", metavar="MODEL",
                   help="start from a coarser-cadence model (a model folder such as pipeline/pretrained_models/global, "
                        "or a registry name): its sensors, architecture and normalization, behind a cadence adapter "
                        "that maps the file's finer steps to its steps; the whole model is then fine-tuned on the "
                        "files. --lookback and --horizons are in the file's steps; the architecture flags must be "
                        "left at their defaults")
    t.add_argument("--transfer-layers", choices=TRANSFER_LAYERS, default=TRANSFER_LAYERS[0],
                   help="with --transfer-from, what trains: the cadence adapter and the head (the base model's "
                        "front-end and GRU stay as learned), or all (default %(default)s)")
    t.add_argument("--promote", action="store_true", help="make the new version the champion")
    t.set_defaults(func=cmd_train, arch_defaults={k: t.get_default(k) for k in TRANSFER_FIXED})

    e = sub.add_parser("evaluate", help="score a registered model on a file's test span against two baselines",
                       description="Score a registered model (default: the champion; a fresh registry is seeded "
                                   "with the shipped model) on the test span of station files: MAE per horizon "
                                   "against persistence (the last reading) and diurnal persistence (the reading "
                                   "24 h before the target), all on the same windows, and the P10-P90 coverage; "
                                   "write forecast-vs-actual and MAE-by-horizon PNGs.")
    _data_args(e, "repeat to score on several files together")
    e.add_argument("--registry", help=REGISTRY_HELP)
    e.add_argument("--name", default=GLOBAL, help=f"registry name of the model (default {GLOBAL})")
    e.add_argument("--version", type=int, help="version number (default: the champion)")
    e.add_argument("--plots", default="runs/plots", help="folder for the PNG figures (default runs/plots)")
    _json_arg(e)
    _span_args(e, "end of the model's training data: the test span starts right after it unless --test-from "
                  "is given; an error if the test span starts before it")
    e.set_defaults(func=cmd_evaluate, registry_seed=seed)

    d = adapt.AdaptConfig()
    f = sub.add_parser("finetune", help="adapt the global model to a station with little history; keep it only if "
                                        "it is better",
                       description="Transfer learning: a copy of the base model (default: the global champion; a "
                                   "fresh registry is seeded with the shipped model) keeps its Conv1D front-end "
                                   "frozen and its GRU and head are re-trained at a lower learning rate on the --days "
                                   "right before the test span. Their last --holdout-days "
                                   f"(default {d.holdout_days:g}) are never trained on: every hourly origin there "
                                   "scores the base model, the fine-tuned one, persistence and diurnal persistence "
                                   "on the same windows, picks the epochs, and decides the normalization (the base "
                                   "model's unless the station's own wins on enough of those days). The fine-tuned "
                                   "model is registered as a candidate (--promote: the station's champion) only "
                                   f"when it beats the base there by --margin (default {d.margin:.0%}); either way "
                                   "both are then scored on the test span, side by side. The service's station job "
                                   "runs the same code with the same settings.")
    _data_args(f, "one station (pass --station for a multi-station file)")
    f.add_argument("--base", default=GLOBAL, help=f"registry name of the model to start from (default {GLOBAL})")
    f.add_argument("--days", type=float, default=30,
                   help="days of the station's history to adapt on, holdout included (default 30)")
    adapt.add_arguments(f, d)
    f.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    f.add_argument("--registry", help=REGISTRY_HELP)
    f.add_argument("--name", help="registry name to register under (default station-<id>)")
    f.add_argument("--plots", default="runs/plots", help="folder for the PNG figures (default runs/plots)")
    f.add_argument("--promote", action="store_true", help="make the new version the station's champion (only "
                                                          "when it is registered)")
    f.add_argument("--no-register", action="store_true", help="score only: register nothing")
    _json_arg(f)
    _span_args(f, "end of the fine-tuning history, inclusive (default: the start of the test span); the test "
                  "span starts right after it unless --test-from is given")
    f.set_defaults(func=cmd_finetune, registry_seed=seed)

    m = sub.add_parser("models", help="list, promote, roll back or retire registered models",
                       description="The model registry: numbered versions per name (global, station-<id>), "
                                   "one champion each. A fresh registry is seeded with the shipped model.")
    msub = m.add_subparsers(dest="models_cmd", required=True, metavar="ACTION")
    ml = msub.add_parser("list", help="every version with status and metrics, then which model serves which station")
    ml.add_argument("--name", help="one model name (default: all)")
    mp = msub.add_parser("promote", help="make a version the champion")
    mp.add_argument("version", type=int, help="version number")
    mr = msub.add_parser("rollback", help="restore the previous champion; the current one is marked rejected")
    mt = msub.add_parser("retire", help="withdraw a station model's champion: the station goes back to global")
    mt.add_argument("--name", required=True, help="station model name, station-<id>")
    ms = msub.add_parser("serving", help="which model serves which station (fine-tuned, else the global one)")
    ms.add_argument("--name", help=f"the fallback model's name (default {GLOBAL})")
    for p in (mp, mr):
        p.add_argument("--name", help=f"model name (default {GLOBAL})")
    for p in (ml, mp, mr, mt, ms):
        p.add_argument("--registry", help=REGISTRY_HELP)
        p.set_defaults(registry_seed=seed)
    ml.set_defaults(func=cmd_models_list)
    mp.set_defaults(func=cmd_models_promote)
    mr.set_defaults(func=cmd_models_rollback)
    mt.set_defaults(func=cmd_models_retire)
    ms.set_defaults(func=cmd_models_serving)


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (model, test_span, windows, mae, skill, horizons; see "
                        "README), everything else on stderr")


def _train_args(p: argparse.ArgumentParser, lr: float, epochs: int, name_help: str) -> None:
    p.add_argument("--optimizer", choices=["rmsprop", "adam"], default=T.optimizer, help="default %(default)s")
    p.add_argument("--lr", type=float, default=lr, help=f"learning rate (default {lr:g})")
    p.add_argument("--epochs", type=int, default=epochs, help=f"most epochs (default {epochs})")
    p.add_argument("--patience", type=int, default=T.patience,
                   help="stop after this many epochs without a better validation loss (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=T.weight_decay,
                   help="decoupled (AdamW) or L2 (RMSprop) weight decay")
    p.add_argument("--ema", type=float, help="validate and keep an exponential moving average of the weights "
                   "with this decay (e.g. 0.998)")
    p.add_argument("--input-noise", type=float, default=T.input_noise,
                   help="std of Gaussian noise on the normalized inputs")
    p.add_argument("--schedule", choices=["constant", "cosine"], default=T.schedule, help="learning-rate schedule")
    p.add_argument("--horizon-weighting", choices=["none", "baseline"], default=T.horizon_weighting,
                   help="baseline: weigh each horizon's loss by 1 / the better naive baseline's MAE there (persistence "
                        "or the value a day before), so short horizons count as much as the day ahead "
                        "(default %(default)s)")
    p.add_argument("--loss", choices=["mae", "mse"], default=T.loss,
                   help="what a point forecast trains on: mae, or mse (squared error, as the book and Darts train; "
                        "smoother gradients that helped multi-horizon models in docs/seed_table.md). Validation and "
                        "early stopping always use MAE; a model with --quantiles trains on the pinball loss "
                        "(default %(default)s)")
    p.add_argument("--batch-size", type=int, default=T.batch_size, help="default %(default)s")
    p.add_argument("--steps-per-epoch", type=int, help="batches per epoch (default: a full pass)")
    p.add_argument("--device", default=T.device, help="auto | cpu | cuda (default %(default)s)")
    p.add_argument("--seed", type=int, default=T.seed, help="random seed (default %(default)s)")
    p.add_argument("--registry", help=REGISTRY_HELP)
    p.add_argument("--name", help=name_help)
    p.add_argument("--plots", default="runs/plots", help="folder for the PNG figures (default runs/plots)")


def _train_cfg(args, quantiles: tuple[float, ...] = ()) -> TrainConfig:
    if args.loss != "mae" and quantiles:
        raise DataError(f"--loss {args.loss} trains a point forecast; this model has quantiles "
                        f"{list(quantiles)} and trains on the pinball loss (drop --loss or --quantiles)")
    return TrainConfig(
        optimizer=args.optimizer, lr=args.lr, epochs=args.epochs, patience=args.patience,
        weight_decay=args.weight_decay, ema=args.ema, input_noise=args.input_noise, schedule=args.schedule,
        horizon_weighting=args.horizon_weighting, loss=args.loss,
        batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch, device=args.device, seed=args.seed,
    )


def _load(args, needs: tuple[str, ...] = (), needed_by: str | None = None):
    """Every station of every --data file (or those named by --station); ``needs``: sensors the model uses."""
    series = []
    cfg = CleanConfig(max_fill_steps=args.max_fill)
    for path in args.data:  # each file read once; with --station, the stations it holds
        loaded = load_stations(path, args.schema, args.station, cfg, missing_ok=len(args.data) > 1, needs=needs,
                               needed_by=needed_by)
        derived = sorted({k.removeprefix("derived_") for s in loaded for k in s.report if k.startswith("derived_")})
        if derived:
            print(f"{path}: derived {', '.join(derived)} (Magnus formula; the file lacks it)", file=sys.stderr)
        series += loaded
    missing = sorted(set(args.station or ()) - {s.station for s in series})
    if missing:
        from forecaster.data import DataError

        raise DataError(f"no station {missing} in {', '.join(map(str, args.data))}")
    return series


def _data_hash(paths: list[str]) -> str:
    return file_sha256(paths[0]) if len(paths) == 1 else ",".join(file_sha256(p)[:16] for p in paths)


def _open_registry(args) -> Registry:
    """The registry the command names (or the shared default), seeded with the shipped model when fresh."""
    registry = Registry(args.registry or default_registry())
    args.registry = str(registry.root)
    seed = getattr(args, "registry_seed", None)
    if seed is not None:
        seed(registry)
        for named in {getattr(args, "name", None), getattr(args, "base", None)} - {None}:
            seed(registry, named)
    return registry


def _check_cadence(series: list[StationSeries], cadence_s: int, tag: str, agg: str | None,
                   registry: Registry | None = None, flag: str = "--name") -> list[StationSeries]:
    """The series at the model's cadence: refused with both cadences named (and the registry's models of the
    data's cadence, if any, as the command's ``flag`` that picks the model) unless ``--resample`` was given, and
    then aggregated, saying how (on stderr, so --json output stays one object)."""
    try:
        out = conform(series, tag, cadence_s, agg)
    except CadenceMismatch as exc:
        others = _champions_at(registry, int(series[0].cadence.total_seconds())) if registry else []
        if not others:
            raise
        raise CadenceMismatch(f"{exc}; or use the model of the data's cadence: {flag} {others[0]}") from None
    for before, after in zip(series, out, strict=True):
        if after is not before:
            print(f"{before.station}: resampled from {describe(before.cadence.total_seconds())} to "
                  f"{describe(cadence_s)} for {tag} (--resample {agg}): each step at time t is {AGGREGATIONS[agg]} "
                  f"in (t - {cadence_s} s, t]; a step missing any reading is missing", file=sys.stderr)
    return out


@contextlib.contextmanager
def _json_mode(args):
    """With --json, stdout carries only the JSON: prints and progress lines made meanwhile go to stderr."""
    if getattr(args, "json", False):
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        yield


def _print_scores(name: str, val: dict, test: dict, cadence_s: int) -> None:
    """Validation and test MAE beside both baselines (diurnal persistence where the lookback holds a day)."""
    def baselines(d: dict) -> str:
        day = f", diurnal persistence {d['diurnal_mae']:.3f}" if "diurnal_mae" in d else ""
        return f"persistence {d['persistence_mae']:.3f}{day}"

    print(f"{name}: validation MAE {val['mae']:.3f} °C ({baselines(val)}), test MAE {test['mae']:.3f} °C "
          f"({baselines(test)}), skill vs persistence {test['skill']:+.1%}")
    if len(test["by_horizon"]) > 1:
        day = "diurnal_mae" in test
        rows = [["horizon", "steps", "test MAE", "persistence", *(["diurnal"] if day else [])]]
        rows += [[horizon_label(h * cadence_s / 60), str(h), f"{v['mae']:.3f}", f"{v['persistence_mae']:.3f}",
                  *([f"{v['diurnal_mae']:.3f}"] if day else [])] for h, v in test["by_horizon"].items()]
        print(format_table(rows, right=[False, *[True] * (len(rows[0]) - 1)], indent="  "))


def _span_line(series: list[StationSeries], ranges: list) -> str:
    parts = []
    for i, label in enumerate(("train", "validation", "test")):
        span = covered(series, [r[i] for r in ranges])
        parts.append(f"{label} {span[0]} to {span[1]}" if span else f"{label}: no rows")
    return "spans: " + ", ".join(parts)


MAX_MEMBERS = 32  # of a model of several, --members and --mix together


def _members(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_MEMBERS:
        raise argparse.ArgumentTypeError(f"expected a whole number of members from 1 to {MAX_MEMBERS}, got {text!r}")
    return n


def _mix(text: str) -> MixedIn:
    kind, _, rest = text.partition(":")
    units, _, count = rest.partition("x")
    if kind not in TRAINED_KINDS or not units.isdigit() or not count.isdigit() \
            or not 1 <= int(units) <= 1024 or not 1 <= int(count) <= MAX_MEMBERS:
        raise argparse.ArgumentTypeError(f"expected KIND:UNITSxN with KIND {', '.join(TRAINED_KINDS[:-1])} or "
                                         f"{TRAINED_KINDS[-1]}, UNITS 1-1024 and N 1-{MAX_MEMBERS} (e.g. gru:32x3), "
                                         f"got {text!r}")
    return MixedIn(kind, int(units), int(count))


def cmd_train(args) -> int:
    if args.transfer_from:
        return _train_transfer(args)
    _train_cfg(args, args.quantiles)  # a contradictory loss is refused before minutes of loading, not after
    total = args.members + sum(m.count for m in args.mix or ())
    if total > MAX_MEMBERS:
        raise DataError(f"{total} members in all (--members and --mix): at most {MAX_MEMBERS}")
    requested = tuple(dict.fromkeys((*args.features.split(","), args.target))) if args.features else ()
    series = _load(args, requested, "--features")
    registry = Registry(args.registry or default_registry())
    name = args.name or GLOBAL
    series = _extend_cadence(series, registry, name, args.resample)
    features = tuple(args.features.split(",")) if args.features else usable_features(series, PREFERRED_FEATURES)
    if args.target not in features:
        features = (*features, args.target)
    data = DataConfig(
        features=features, target=args.target, lookback=args.lookback, step=args.step, horizons=args.horizons,
        time_features=args.time_features, **({"split": tuple(args.split)} if args.split else {}),
    )
    phase = _phase_columns(args, data)
    ranges = _train_spans(args, series, data)
    season = int(86400 // series[0].cadence.total_seconds())
    unknown = sorted(set(_names(args.relative)) - set(features))
    if unknown:
        raise DataError(f"--relative names {unknown}, which are not among the model's sensors {list(features)}")
    arch = model_config(data, args.model, quantiles=args.quantiles, conv=args.conv, gru_hidden=args.hidden,
                        dropout=args.dropout, residual=args.residual, season=season,
                        anchor=args.anchor or ("last" if args.residual else "none"),
                        relative=tuple(features.index(n) for n in _names(args.relative)),
                        band_offsets=args.band_offsets, phase=phase, scale=_window_scale(args),
                        members=args.members, mix=tuple(args.mix or ()))
    trained = fit(series, data, arch, _train_cfg(args, arch.quantiles), label=name, plot_dir=args.plots,
                  ranges=ranges, data_hash=_data_hash(args.data))
    return _register_trained(args, registry, name, trained, "trained on " + ", ".join(Path(p).name for p in args.data))


def _phase_columns(args, data: DataConfig) -> tuple[int, ...]:
    """The (sin, cos) time-of-day input columns for ``--phase-relative``."""
    if not args.phase_relative:
        return ()
    if not args.time_features:
        raise DataError("--phase-relative needs --time-features (it reads the time of day relative to the window)")
    return data.time_of_day_columns


def _window_scale(args) -> bool:
    if args.window_scale and not args.relative:
        raise DataError("--window-scale needs --relative (the window's level is removed before its spread is)")
    return args.window_scale


def _train_spans(args, series: list[StationSeries], data: DataConfig) -> list:
    dated = bool(args.train_until or args.test_from or args.test_until)
    if dated and args.split:
        raise SpanError("--split and --train-until/--test-from/--test-until exclude each other: "
                        "give fractions or dates")
    if dated:
        spans = resolve(series, args.train_until, args.test_from, args.test_until)
        ranges = [train_ranges(s, spans) for s in series]
    else:
        ranges = [split_rows(s, data) for s in series]
    require_windows(series, data, ranges)
    print(_span_line(series, ranges))
    return ranges


def _register_trained(args, registry: Registry, name: str, trained, note: str) -> int:
    _print_scores(name, trained.val, trained.test, trained.card.cadence_s)
    info = registry.register(name, trained.model, trained.card, note=note)
    print(f"registered {info.tag} ({describe(trained.card.cadence_s)}) in {registry.root}; figures in {args.plots}/")
    if args.promote:
        registry.promote(name, info.version, note="--promote")
        print(f"{info.tag} is now the champion")
    return 0


def _champions_at(registry: Registry, cadence_s: int) -> list[str]:
    """The registry's names whose champion reads steps of ``cadence_s``."""
    out = []
    for name in registry.names():
        champion = registry.champion(name)
        if champion is not None and registry.card(name, champion.version).cadence_s == cadence_s:
            out.append(name)
    return sorted(out, key=lambda n: (n.startswith("station-"), n))


def _extend_cadence(series: list[StationSeries], registry: Registry, name: str, agg: str | None) -> list:
    """A new version of a name whose champion has another cadence would silently change what the name serves:
    refused (both cadences named) unless ``--resample`` aggregates the data to the champion's cadence."""
    champion = registry.champion(name)
    if champion is None:
        if agg:
            raise DataError(f"--resample needs a model cadence to aggregate to; {name} has no champion yet")
        return series
    return _check_cadence(series, registry.card(name, champion.version).cadence_s, champion.tag, agg)


TRANSFER_FIXED = ("model", "features", "target", "quantiles", "time_features", "phase_relative", "residual", "anchor",
                  "relative", "window_scale", "band_offsets", "conv", "hidden", "dropout", "members", "mix", "step")


def _train_transfer(args) -> int:
    """``train --transfer-from``: a finer-cadence model that starts as a coarser one
    (:mod:`forecaster.cadence_transfer`), fine-tuned whole on the files."""
    fixed = [f"--{k.replace('_', '-')}" for k in TRANSFER_FIXED if getattr(args, k) != args.arch_defaults[k]]
    if fixed:
        raise DataError(f"{', '.join(fixed)}: with --transfer-from the sensors and architecture are the base model's")
    if args.resample:
        raise DataError("--resample and --transfer-from exclude each other: transfer keeps the file's own cadence")
    registry = Registry(args.registry or default_registry())
    base_dir = Path(args.transfer_from)
    if base_dir.is_dir():
        base, base_card = load_artifact(base_dir)
        base_tag = base_dir.name
    else:
        base, base_card, info = registry.load(args.transfer_from)
        base_tag = info.tag
    _train_cfg(args, base_card.model.quantiles)
    series = _load(args, (*base_card.data.features, base_card.data.target), f"model {base_tag}")
    cadences = sorted({int(s.cadence.total_seconds()) for s in series})
    if len(cadences) > 1:
        raise DataError(f"the files have several cadences ({', '.join(map(describe, cadences))}): one per model")
    name = args.name or GLOBAL
    _refuse_other_cadence(registry, name, cadences[0])
    arch, data = transfer_config(base_card, cadences[0], args.horizons, args.lookback, args.split)
    print(f"transfer from {base_tag} ({describe(base_card.cadence_s)}) to {describe(cadences[0])}: its sensors "
          f"{', '.join(data.features)}, architecture and normalization; a cadence adapter averaging {arch.adapter} "
          f"readings per {cadence_name(base_card.cadence_s)} step to start; horizons "
          f"{', '.join(horizon_label(h * cadences[0] / 60) for h in data.horizons)}")
    ranges = _train_spans(args, series, data)
    trained = fit_transfer(base, base_card, base_tag, series, arch, data, _train_cfg(args, arch.quantiles), ranges,
                           label=name, plot_dir=args.plots, data_hash=_data_hash(args.data),
                           layers=args.transfer_layers)
    return _register_trained(args, registry, name, trained, f"transferred from {base_tag} to "
                             f"{describe(cadences[0])} on " + ", ".join(Path(p).name for p in args.data))


def _refuse_other_cadence(registry: Registry, name: str, cadence_s: int) -> None:
    champion = registry.champion(name)
    if champion is not None:
        own = registry.card(name, champion.version).cadence_s
        if own != cadence_s:
            raise CadenceMismatch(f"{name}'s champion {champion.tag} is {describe(own)}, the data is "
                                  f"{describe(cadence_s)}: register the new model under another --name")


def cmd_evaluate(args) -> int:
    registry = _open_registry(args)
    model, card, info = registry.load(args.name, args.version)
    series = _load(args, (*card.data.features, card.data.target), f"model {info.tag}")
    series = _check_cadence(series, card.cadence_s, info.tag, args.resample, registry)
    check_long_enough(series, card.data)
    spans = resolve(series, args.train_until, args.test_from, args.test_until)
    with _json_mode(args):
        scored = score_on_span(model, info.tag, card, series, spans)
        if not args.json:
            print(render(scored.card))
        _evaluation_plots(scored.predictions, series, card, info, Path(args.plots))
    if args.json:
        print(json.dumps(scored.card, indent=2))
    return 0


def _evaluation_plots(p, series: list[StationSeries], card: ModelCard, info, plots: Path) -> None:
    from forecaster.plots import forecast_vs_actual, mae_by_horizon

    data = card.data
    h = data.horizons[-1]
    n_first = int((p.origins < len(series[0].frame)).sum())
    out = forecast_vs_actual(p, series[0].times, data.horizons, h, plots / f"{info.name}_v{info.version}_test.png",
                             f"{info.tag} on {series[0].station}: +{h} steps", length=min(24 * 14, n_first),
                             quantiles=card.model.quantiles)
    if len(data.horizons) > 1:
        from forecaster.evaluate import score

        mae_by_horizon({info.tag: score(p, data.horizons)}, plots / f"{info.name}_v{info.version}_by_horizon.png",
                       "test MAE by horizon")
    print(f"figures in {out.parent}/")


def cmd_finetune(args) -> int:
    cfg = adapt.config_from_args(args)
    registry = _open_registry(args)
    base, card, info = registry.load(args.base)
    series = _load(args, (*card.data.features, card.data.target), f"model {info.tag}")
    if len(series) != 1:
        raise DataError(f"finetune takes one station, the data has {len(series)}: pass --station "
                        f"({', '.join(s.station for s in series)})")
    series = _check_cadence(series, card.cadence_s, info.tag, args.resample, registry, flag="--base")
    s = series[0]
    check_long_enough(series, card.data)
    spans = resolve(series, args.train_until, args.test_from, args.test_until)
    ranges = finetune_ranges(s, spans, args.days, cfg.holdout_days)
    require_windows(series, card.data, [ranges])
    name = args.name or station_model_name(s.station)
    with _json_mode(args):
        print(_span_line(series, [ranges]).replace("validation", "holdout"))
        a = adapt.adapt_station(base, card, s, slice(ranges[0].start, ranges[1].stop), cfg, label=name,
                                parent=info.tag, device=args.device)
        tuned = score_on_span(a.model, name, a.card, series, spans).card
        based = score_on_span(base, info.tag, card, series, spans).card
        registered = promoted = False
        if a.accepted and not args.no_register:
            new = registry.register(name, a.model, a.card,
                                    note=f"fine-tuned from {info.tag} on {args.days:g} days: {a.reason}")
            tuned["model"], registered = new.tag, True
            if args.promote:
                registry.promote(name, new.version, note="--promote")
                promoted = True
        out = {**tuned, "base": based, "served": tuned["model"] if a.accepted else info.tag,
               "registered": registered, "promoted": promoted, "days": args.days, "adaptation": a.to_dict()}
        if not args.json:
            print(f"{info.tag} fine-tuned on {args.days:g} days of {s.station} "
                  f"({a.normalization} normalization, best epoch {a.trained.result.best_epoch})")
            print(render_holdout(a))
            print(render(tuned, title=f"{name} on the test span", base=based))
            if registered:
                print(f"registered {tuned['model']} in {registry.root} as a candidate: {a.reason}"
                      + (f"; now the champion for station {s.station}" if promoted else ""))
            elif a.accepted:
                print(f"not registered (--no-register): {a.reason}")
            else:
                print(f"not registered: {a.reason}; station {s.station} stays on {info.tag}")
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


def render_holdout(a: adapt.Adaptation) -> str:
    """The decision's evidence: every model and baseline per horizon on the holdout windows."""
    h = a.holdout
    ev = a.normalization_evidence
    if ev["candidate"]:
        why = (f"the station's own won {ev['station_wins']} of {ev['days']} days, needs {ev['needed']}; "
               f"{ev['station_mae']:.3f} vs {ev['base_mae']:.3f} °C")
    else:
        why = (f"{ev['training_days']:g} training days, the station's own needs {ev['needed_days']:g} to be tried")
    lines = [f"holdout {h.span[0]} to {h.span[1]}, {h.windows:,} windows over {h.days} days: base {a.base_mae:.3f}, "
             f"fine-tuned {a.tuned_mae:.3f} °C; normalization {a.normalization} ({why})"]
    rows = [["horizon", "base", "fine-tuned", "persistence", "diurnal"]]
    for i, step in enumerate(h.horizons):
        rows.append([f"+{step}", f"{h.base[i]:.3f}", f"{h.tuned[i]:.3f}", f"{h.persistence[i]:.3f}",
                     "-" if h.diurnal is None else f"{h.diurnal[i]:.3f}"])
    lines.append(format_table(rows, right=[False] + [True] * 4, indent="  "))
    return "\n".join(lines)


def _architecture(registry: Registry, name: str, version: int) -> str:
    """A version's architecture from its card (``conv_gru x3 + gru:32x3``); "?" where the card cannot be read."""
    try:
        return registry.card(name, version).model.summary
    except (OSError, KeyError, TypeError, ValueError):  # ArtifactError is a ValueError
        return "?"


def cmd_models_list(args) -> int:
    registry = _open_registry(args)
    names = [args.name] if args.name else registry.names()
    if not names:
        print(f"no models in {registry.root}")
        return 0
    rows = [("model", "status", "architecture", "created", "val MAE", "test MAE", "note")]
    for name in names:
        for v in registry.versions(name):
            m = v.metrics
            val = f"{m['val_mae']:.3f}" if "val_mae" in m else "-"
            test = f"{m['test_mae']:.3f}" if "test_mae" in m else "-"
            rows.append((v.tag, v.status, _architecture(registry, name, v.version), v.created_at, val, test, v.note))
    print(format_table(rows, right=[False, False, False, False, True, True, False]))
    if not args.name:
        print()
        cmd_models_serving(args)
    return 0


def cmd_models_retire(args) -> int:
    info = _open_registry(args).retire(args.name, note="by command")
    print(f"retired {info.tag}: {args.name} has no champion now")
    return 0


def cmd_models_serving(args) -> int:
    """Station -> serving model: fine-tuned station champions first, then the global fallback."""
    registry = _open_registry(args)
    base = args.name or GLOBAL
    fallback = registry.champion(base)
    rows = [("station", "served by", "holdout MAE", "base MAE")]
    for station, info in sorted(registry.station_champions().items()):
        m = info.metrics
        own = f"{m['holdout_mae']:.3f}" if "holdout_mae" in m else "-"
        ref = f"{m['base_holdout_mae']:.3f}" if "base_holdout_mae" in m else "-"
        rows.append((station, info.tag, own, ref))
    rows.append(("every other station", fallback.tag if fallback else "(no champion yet)", "", ""))
    print(format_table(rows, right=[False, False, True, True]))
    return 0


def cmd_models_promote(args) -> int:
    info = _open_registry(args).promote(args.name or GLOBAL, args.version, note="by command")
    print(f"{info.tag} is now the champion")
    return 0


def cmd_models_rollback(args) -> int:
    info = _open_registry(args).rollback(args.name or GLOBAL, note="by command")
    print(f"rolled back: {info.tag} is the champion again")
    return 0
