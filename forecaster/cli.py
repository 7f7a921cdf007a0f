"""The model-side commands of ``stationcast``: train, evaluate, finetune, models list|promote|rollback.

Registered on the top-level parser by :mod:`pipeline.cli`; nothing here touches Kafka.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from forecaster.clean import CleanConfig, load_stations, usable_features
from forecaster.data import file_sha256
from forecaster.dataset import DataConfig, make_splits
from forecaster.evaluate import predict_windows, score
from forecaster.experiment import fit, model_config
from forecaster.models import MODEL_KINDS, ConvLayer
from forecaster.plots import forecast_vs_actual, mae_by_horizon
from forecaster.registry import GLOBAL, Registry, station_model_name
from forecaster.train import TrainConfig
from forecaster.transfer import few_shot_ranges, finetune

DEFAULT_REGISTRY = "runs/registry"
SCHEMA_HELP = ("built-in layout (jena, jena2020, nycflights13) or a YAML schema file (README: \"Your own "
               "stations\"); detected from the header when omitted")
PREFERRED_FEATURES = ("p", "T", "Tdew", "rh", "VPmax", "wv")


def _horizons(text: str) -> tuple[int, ...]:
    """``24`` -> (24,); ``1-24`` -> (1, ..., 24); ``6,12,24`` -> (6, 12, 24)."""
    if "-" in text:
        a, b = text.split("-", 1)
        return tuple(range(int(a), int(b) + 1))
    return tuple(int(h) for h in text.split(","))


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


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, action="append",
                   help="station CSV file (.csv or .csv.gz); repeat to train one model on several files")
    p.add_argument("--schema", help=SCHEMA_HELP)
    p.add_argument("--station", action="append", help="station id in a multi-station file (repeatable)")
    p.add_argument("--max-fill", type=int, default=3, help="interpolate gaps up to this many steps (default 3)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a model on a station file and register it",
                       description="Train a forecaster on the chronological train split, early-stop on validation, "
                                   "report MAE vs persistence, register it (and optionally promote it).")
    _data_args(t)
    t.add_argument("--model", choices=list(MODEL_KINDS), default="conv_gru")
    t.add_argument("--features", help="comma-separated sensors (default: those of p,T,Tdew,rh,VPmax,wv the file has)")
    t.add_argument("--target", default="T")
    t.add_argument("--lookback", type=int, default=240, help="input steps at the station cadence (default 240)")
    t.add_argument("--step", type=int, default=1, help="sampling step inside the lookback")
    t.add_argument("--horizons", type=_horizons, default=(24,), help="24 | 1-24 | 6,12,24 (steps ahead)")
    t.add_argument("--quantiles", type=_floats, default=(), help="e.g. 0.1,0.5,0.9 for an uncertainty band")
    t.add_argument("--time-features", action="store_true", help="add time-of-day and day-of-year encodings")
    t.add_argument("--residual", action="store_true", help="predict the change from the last observation")
    t.add_argument("--conv", type=_conv, default=(ConvLayer(32, 5, 3), ConvLayer(32, 5, 1)),
                   help="front-end layers CHANNELSxKERNEL/POOL,... (default 32x5/3,32x5/1)")
    t.add_argument("--hidden", type=int, default=32, help="GRU units")
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--split", type=_floats, default=None, help="train,validation fractions (default Chollet's)")
    _train_args(t, lr=1e-3, epochs=20)
    t.add_argument("--promote", action="store_true", help="make the new version the champion")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="MAE per horizon vs persistence of a registered model on a file")
    _data_args(e)
    e.add_argument("--registry", default=DEFAULT_REGISTRY)
    e.add_argument("--name", default=GLOBAL)
    e.add_argument("--version", type=int, help="default: the champion")
    e.add_argument("--plots", default="runs/plots", help="folder for the PNG figures")
    e.set_defaults(func=cmd_evaluate)

    f = sub.add_parser("finetune", help="fine-tune the global model to a station with little history",
                       description="Transfer learning: frozen Conv1D front-end, the station's own normalization, "
                                   "GRU and head re-trained at a lower learning rate on the last --days before "
                                   "the test span (the last 20%% of the record).")
    _data_args(f)
    f.add_argument("--base", default=GLOBAL, help="registry name of the model to start from")
    f.add_argument("--days", type=float, default=30, help="days of the station's history to train on")
    f.add_argument("--no-freeze", action="store_true", help="also train the Conv1D front-end")
    _train_args(f, lr=2e-4, epochs=30)
    f.add_argument("--promote", action="store_true")
    f.set_defaults(func=cmd_finetune)

    m = sub.add_parser("models", help="list, promote or roll back registered models")
    msub = m.add_subparsers(dest="models_cmd", required=True)
    ml = msub.add_parser("list", help="every version with status and metrics")
    mp = msub.add_parser("promote", help="make a version the champion")
    mp.add_argument("version", type=int)
    mr = msub.add_parser("rollback", help="restore the previous champion")
    mt = msub.add_parser("retire", help="withdraw a champion (a station model: the station goes back to global)")
    ms = msub.add_parser("serving", help="which model serves which station (fine-tuned, else the global one)")
    for p in (ml, mp, mr, mt, ms):
        p.add_argument("--registry", default=DEFAULT_REGISTRY)
        p.add_argument("--name", help=f"model name (default: all for list, {GLOBAL} otherwise)")
    ml.set_defaults(func=cmd_models_list)
    mp.set_defaults(func=cmd_models_promote)
    mr.set_defaults(func=cmd_models_rollback)
    mt.set_defaults(func=cmd_models_retire)
    ms.set_defaults(func=cmd_models_serving)


def _train_args(p: argparse.ArgumentParser, lr: float, epochs: int) -> None:
    p.add_argument("--optimizer", choices=["rmsprop", "adam"], default="rmsprop")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--weight-decay", type=float, default=0.0, help="decoupled (AdamW) or L2 (RMSprop) weight decay")
    p.add_argument("--ema", type=float, help="validate and keep an exponential moving average of the weights "
                   "with this decay (e.g. 0.998)")
    p.add_argument("--input-noise", type=float, default=0.0, help="std of Gaussian noise on the normalized inputs")
    p.add_argument("--schedule", choices=["constant", "cosine"], default="constant", help="learning-rate schedule")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps-per-epoch", type=int, help="batches per epoch (default: a full pass)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--registry", default=DEFAULT_REGISTRY)
    p.add_argument("--name", help="registry name to register under")
    p.add_argument("--plots", default="runs/plots", help="folder for the PNG figures")


def _train_cfg(args) -> TrainConfig:
    return TrainConfig(
        optimizer=args.optimizer, lr=args.lr, epochs=args.epochs, patience=args.patience,
        weight_decay=args.weight_decay, ema=args.ema, input_noise=args.input_noise, schedule=args.schedule,
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


def _print_scores(name: str, val: dict, test: dict) -> None:
    print(f"{name}: validation MAE {val['mae']:.3f} °C (persistence {val['persistence_mae']:.3f}), "
          f"test MAE {test['mae']:.3f} °C (persistence {test['persistence_mae']:.3f}), skill {test['skill']:+.1%}")
    if len(test["by_horizon"]) > 1:
        print("  horizon  test MAE  persistence")
        for h, v in test["by_horizon"].items():
            print(f"  {h:>7}  {v['mae']:8.3f}  {v['persistence_mae']:11.3f}")


def cmd_train(args) -> int:
    requested = (*args.features.split(","), args.target) if args.features else ()
    series = _load(args, requested, "--features")
    features = tuple(args.features.split(",")) if args.features else usable_features(series, PREFERRED_FEATURES)
    if args.target not in features:
        features = (*features, args.target)
    data = DataConfig(
        features=features, target=args.target, lookback=args.lookback, step=args.step, horizons=args.horizons,
        time_features=args.time_features, **({"split": tuple(args.split)} if args.split else {}),
    )
    season = int(86400 // series[0].cadence.total_seconds())
    arch = model_config(data, args.model, quantiles=args.quantiles, conv=args.conv, gru_hidden=args.hidden,
                        dropout=args.dropout, residual=args.residual, season=season)
    name = args.name or GLOBAL
    trained = fit(series, data, arch, _train_cfg(args), label=name, plot_dir=args.plots,
                  data_hash=_data_hash(args.data))
    _print_scores(name, trained.val, trained.test)
    note = "trained on " + ", ".join(Path(p).name for p in args.data)
    info = Registry(args.registry).register(name, trained.model, trained.card, note=note)
    print(f"registered {info.tag} in {args.registry}; figures in {args.plots}/")
    if args.promote:
        Registry(args.registry).promote(name, info.version, note="--promote")
        print(f"{info.tag} is now the champion")
    return 0


def cmd_evaluate(args) -> int:
    registry = Registry(args.registry)
    model, card, info = registry.load(args.name, args.version)
    series = _load(args, (*card.data.features, card.data.target), f"model {info.tag}")
    data = card.data
    splits = make_splits(series, data, normalizer=card.normalizer)
    val = score(predict_windows(model, splits.val, card.normalizer, data.target), data.horizons)
    test_p = predict_windows(model, splits.test, card.normalizer, data.target)
    test = score(test_p, data.horizons)
    _print_scores(info.tag, val, test)
    plots = Path(args.plots)
    h = data.horizons[-1]
    n_first = int((test_p.origins < len(series[0].frame)).sum())
    out = forecast_vs_actual(test_p, series[0].times, data.horizons, h, plots / f"{info.name}_v{info.version}_test.png",
                             f"{info.tag} on {series[0].station}: +{h} steps", length=min(24 * 14, n_first),
                             quantiles=card.model.quantiles)
    if len(data.horizons) > 1:
        mae_by_horizon({info.tag: test}, plots / f"{info.name}_v{info.version}_by_horizon.png", "test MAE by horizon")
    print(f"figures in {out.parent}/")
    return 0


def cmd_finetune(args) -> int:
    registry = Registry(args.registry)
    base, card, info = registry.load(args.base)
    series = _load(args, (*card.data.features, card.data.target), f"model {info.tag}")
    if len(series) != 1:
        print("finetune takes one station: pass --station")
        return 2
    s = series[0]
    steps = int(args.days * 86400 // card.cadence_s)
    ranges = few_shot_ranges(s, steps)
    name = args.name or station_model_name(s.station)
    t = finetune(base, card, s, ranges, _train_cfg(args), freeze_frontend=not args.no_freeze, label=name,
                 plot_dir=args.plots, parent=info.tag)
    print(f"base {info.tag} fine-tuned on {args.days:g} days of {s.station}")
    _print_scores(name, t.val, t.test)
    new = registry.register(name, t.model, t.card, note=f"fine-tuned from {info.tag} on {args.days:g} days")
    print(f"registered {new.tag}")
    if args.promote:
        registry.promote(name, new.version, note="--promote")
        print(f"{new.tag} is now the champion for station {s.station}")
    return 0


def cmd_models_list(args) -> int:
    registry = Registry(args.registry)
    names = [args.name] if args.name else registry.names()
    if not names:
        print(f"no models in {args.registry}")
        return 0
    print(f"{'model':<28} {'status':<10} {'created':<26} {'val MAE':>8} {'test MAE':>9}  note")
    for name in names:
        for v in registry.versions(name):
            m = v.metrics
            val = f"{m['val_mae']:.3f}" if "val_mae" in m else "-"
            test = f"{m['test_mae']:.3f}" if "test_mae" in m else "-"
            print(f"{v.tag:<28} {v.status:<10} {v.created_at:<26} {val:>8} {test:>9}  {v.note}")
    if not args.name:
        print()
        cmd_models_serving(args)
    return 0


def cmd_models_retire(args) -> int:
    if not args.name:
        raise SystemExit("models retire needs --name (e.g. station-<id>); the global model can only be replaced")
    info = Registry(args.registry).retire(args.name, note="by command")
    print(f"retired {info.tag}: {args.name} has no champion now")
    return 0


def cmd_models_serving(args) -> int:
    """Station -> serving model: fine-tuned station champions first, then the global fallback."""
    registry = Registry(args.registry)
    base = args.name or GLOBAL
    fallback = registry.champion(base)
    stations = registry.station_champions()
    print(f"{'station':<28} {'served by':<28} {'holdout MAE':>11} {'base MAE':>9}")
    for station, info in sorted(stations.items()):
        m = info.metrics
        own = f"{m['holdout_mae']:.3f}" if "holdout_mae" in m else "-"
        ref = f"{m['base_holdout_mae']:.3f}" if "base_holdout_mae" in m else "-"
        print(f"{station:<28} {info.tag:<28} {own:>11} {ref:>9}")
    print(f"{'every other station':<28} {fallback.tag if fallback else '(no champion yet)':<28}")
    return 0


def cmd_models_promote(args) -> int:
    info = Registry(args.registry).promote(args.name or GLOBAL, args.version, note="by command")
    print(f"{info.tag} is now the champion")
    return 0


def cmd_models_rollback(args) -> int:
    info = Registry(args.registry).rollback(args.name or GLOBAL, note="by command")
    print(f"rolled back: {info.tag} is the champion again")
    return 0
