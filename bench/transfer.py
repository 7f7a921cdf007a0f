"""Transfer learning: a global model pretrained on Jena, moved to four NOAA stations with 30 days of history.

Pretrains a Conv1D+GRU (time features, residual) on Jena hourly (Chollet's split), registers it in
runs/registry-transfer, then for each NOAA station takes only the 30 days right before the station's test
span (the last 20 % of its record; ``forecaster.transfer.few_shot_ranges``) and compares on that test span:

* persistence,
* zero-shot: the global model as is, only the normalization re-fit on the station's 30 days (no training),
* from scratch: the same architecture trained from random weights on the same 30 days,
* fine-tuned: the global model with its Conv1D front-end frozen, station normalization, lower learning rate.

Writes docs/transfer.md, docs/results/transfer.json and docs/figures/transfer_*.png.

    python -m bench.transfer             # full run (about 6 min on 2 CPU cores)
    python -m bench.transfer --reuse     # skip pretraining: take the latest model in runs/registry-transfer
    python -m bench.transfer --quick     # plumbing only (tiny budgets)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from bench.common import DOCS, ROOT, markdown_table, shared_file, write_results
from forecaster.clean import StationSeries, clean_station, load_stations
from forecaster.data import file_sha256, load_records
from forecaster.dataset import DataConfig, split_rows
from forecaster.experiment import fit, model_config
from forecaster.models import ConvLayer
from forecaster.plots import bars, forecast_vs_actual, learning_curve
from forecaster.registry import GLOBAL, Registry
from forecaster.train import TrainConfig
from forecaster.transfer import few_shot_ranges, finetune, scratch_baseline

JENA = "jena_2009_2016_hourly.csv.gz"
# NOAA ISD timestamps are UTC (the mean daily maximum falls at 19-21 UTC); Jena's are local (maximum at 15).
# Shifting each station to its local standard time gives the time-of-day features the meaning they had in Jena.
NOAA = {
    "noaa_chicago_ohare_2010_2016_hourly.csv.gz": ("Chicago O'Hare", -6),
    "noaa_denver_2010_2016_hourly.csv.gz": ("Denver", -7),
    "noaa_great_falls_2010_2016_hourly.csv.gz": ("Great Falls", -7),
    "noaa_rapid_city_2010_2016_hourly.csv.gz": ("Rapid City", -7),
}
HISTORY_DAYS = 30
DATA = DataConfig(features=("p", "T", "Tdew", "rh", "VPmax", "wv"), target="T", lookback=120, horizons=(24,),
                  time_features=True)
ARCH = {"kind": "conv_gru", "conv": (ConvLayer(32, 5, 3), ConvLayer(32, 5, 1)), "gru_hidden": 64,
        "dropout": 0.2, "residual": True}
PRETRAIN = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=1e-4, batch_size=128, epochs=10, patience=3)
SCRATCH = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=1e-4, batch_size=128, epochs=60, patience=8,
                      progress=False)
FINETUNE = TrainConfig(optimizer="adam", lr=3e-4, weight_decay=1e-4, batch_size=128, epochs=60, patience=8,
                       progress=False)
ZERO_SHOT = TrainConfig(epochs=0, progress=False)
FIGURES = DOCS / "figures"
REGISTRY = ROOT / "runs" / "registry-transfer"


def load_noaa(name: str, offset_h: int) -> StationSeries:
    s = load_stations(shared_file(name))[0]
    s.frame.index = s.frame.index + pd.Timedelta(hours=offset_h)  # UTC -> local standard time
    return s


def pretrain(args) -> tuple:
    path = shared_file(JENA)
    jena = clean_station(load_records(path))
    cfg = replace(PRETRAIN, epochs=1, steps_per_epoch=20) if args.quick else PRETRAIN
    print("== pretraining the global model on Jena hourly ==", flush=True)
    start = time.perf_counter()
    ranges = None
    if args.quick:  # short validation and test slices: plumbing only
        tr, va, te = split_rows(jena, DATA)
        ranges = [(tr, slice(va.start, va.start + 2000), slice(te.start, te.start + 2000))]
    t = fit([jena], DATA, model_config(DATA, **ARCH), cfg, label="transfer global (Jena)", ranges=ranges,
            data_hash=file_sha256(path))
    wall = time.perf_counter() - start
    _, std = t.splits.normalizer.scale_of("T")
    learning_curve(t.result.history, FIGURES / "transfer_pretrain_learning_curve.png",
                   "Global Conv1D+GRU pretrained on Jena hourly", std)
    print(f"global: Jena val {t.val['mae']:.3f}  test {t.test['mae']:.3f} °C  ({wall:.0f} s)", flush=True)
    info = None
    if not args.quick:
        info = Registry(REGISTRY).register(GLOBAL, t.model, t.card, note="bench.transfer: pretrained on Jena hourly")
        print(f"registered {info.tag} in {REGISTRY}", flush=True)
    return t.model, t.card, (info.tag if info else None), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 short pretraining epoch, 3 epochs per station model")
    ap.add_argument("--reuse", action="store_true", help="load the latest global model from runs/registry-transfer")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per station for scratch and fine-tuning (mean)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = 1 if args.quick else args.seeds
    scratch_cfg, ft_cfg = SCRATCH, FINETUNE
    if args.quick:
        scratch_cfg, ft_cfg = replace(SCRATCH, epochs=3), replace(FINETUNE, epochs=3)

    t0 = time.perf_counter()
    if args.reuse:
        reg = Registry(REGISTRY)
        version = reg.versions(GLOBAL)[-1].version
        base, card, info = reg.load(GLOBAL, version)
        tag, pre_wall = info.tag, 0.0
        print(f"reusing {tag} from {REGISTRY}", flush=True)
    else:
        base, card, tag, pre_wall = pretrain(args)
    base = base.cpu()

    stations, rows, results = [], [], {}
    for name, (station, offset) in NOAA.items():
        s = load_noaa(name, offset)
        r = few_shot_ranges(s, HISTORY_DAYS * 24)
        if args.quick:
            r = (r[0], r[1], slice(r[2].start, r[2].start + 2000))
        print(f"== {station}: train rows {r[0].start}-{r[0].stop}, val {r[1].start}-{r[1].stop}, "
              f"test {r[2].start}-{r[2].stop} ({s.times[r[0].start]:%Y-%m-%d} .. {s.times[r[2].stop - 1]:%Y-%m-%d}) ==",
              flush=True)
        zs = finetune(base, card, s, r, ZERO_SHOT, label=f"{station} zero-shot")
        zs_jena = finetune(base, card, s, r, ZERO_SHOT, refit_normalization=False, label=f"{station} zero-shot")
        sc_runs, ft_runs = [], []
        for seed in range(seeds):
            sc_runs.append(scratch_baseline(s, card, r, replace(scratch_cfg, seed=seed), label=f"{station} scratch"))
            ft_runs.append(finetune(base, card, s, r, replace(ft_cfg, seed=seed), label=f"{station} fine-tuned",
                                    parent=tag))
        sc_test = [t.test["mae"] for t in sc_runs]
        ft_test = [t.test["mae"] for t in ft_runs]
        res = {
            "history_rows": [r[0].start, r[1].stop],
            "history_span": [str(s.times[r[0].start]), str(s.times[r[1].stop - 1])],
            "train_samples": len(ft_runs[0].splits.train), "val_samples": ft_runs[0].val["samples"],
            "test_samples": zs.test["samples"],
            "persistence_mae": zs.test["persistence_mae"], "zero_shot_mae": zs.test["mae"],
            "zero_shot_jena_normalization_mae": zs_jena.test["mae"],
            "scratch_mae": float(np.mean(sc_test)), "scratch_mae_seeds": sc_test,
            "finetuned_mae": float(np.mean(ft_test)), "finetuned_mae_seeds": ft_test,
            "val": {"persistence": zs.val["persistence_mae"], "zero_shot": zs.val["mae"],
                    "scratch": float(np.mean([t.val["mae"] for t in sc_runs])),
                    "finetuned": float(np.mean([t.val["mae"] for t in ft_runs]))},
            "scratch_best_epochs": [t.result.best_epoch for t in sc_runs],
            "finetuned_best_epochs": [t.result.best_epoch for t in ft_runs],
        }
        res["beats_persistence"] = res["finetuned_mae"] < res["persistence_mae"]
        res["beats_scratch"] = res["finetuned_mae"] < res["scratch_mae"]
        res["finetuned_beats_scratch_every_seed"] = all(f < c for f in ft_test for c in sc_test)
        results[station] = res
        stations.append(station)
        rows.append([station, res["train_samples"], res["persistence_mae"], res["zero_shot_jena_normalization_mae"],
                     res["zero_shot_mae"], res["scratch_mae"], res["finetuned_mae"],
                     "met" if res["beats_persistence"] and res["beats_scratch"] else "**not met**"])
        print(f"{station}: persistence {res['persistence_mae']:.3f}  zero-shot {res['zero_shot_mae']:.3f} "
              f"(Jena norm {res['zero_shot_jena_normalization_mae']:.3f})  scratch {res['scratch_mae']:.3f} "
              f"{[round(v, 3) for v in sc_test]}  fine-tuned {res['finetuned_mae']:.3f} "
              f"{[round(v, 3) for v in ft_test]}",
              flush=True)
        forecast_vs_actual(ft_runs[0].test_predictions, s.times, DATA.horizons, 24,
                           FIGURES / f"transfer_{station.split()[0].lower()}_forecast_vs_actual.png",
                           f"{station}: fine-tuned global model, test forecasts +24 h")
    wall = time.perf_counter() - t0

    keys = [("persistence", "persistence_mae"), ("zero-shot", "zero_shot_mae"),
            ("from scratch", "scratch_mae"), ("fine-tuned", "finetuned_mae")]
    bars(stations, {k: [results[s][v] for s in stations] for k, v in keys}, FIGURES / "transfer_mae.png",
         f"24 h-ahead T on each station's test span, {HISTORY_DAYS} days of station history", "test MAE (°C)")
    all_met = all(r["beats_persistence"] and r["beats_scratch"] for r in results.values())

    body = markdown_table(
        ["station", "training windows", "persistence", "zero-shot, Jena normalization",
         "zero-shot, station normalization",
         f"from scratch (mean of {seeds})", f"fine-tuned (mean of {seeds})", "target"], rows)
    per_seed = "\n".join(
        f"| {s} | {' / '.join(f'{v:.3f}' for v in results[s]['scratch_mae_seeds'])} | "
        f"{' / '.join(f'{v:.3f}' for v in results[s]['finetuned_mae_seeds'])} | "
        f"{'yes' if results[s]['finetuned_beats_scratch_every_seed'] else 'no'} |" for s in stations)
    val_rows = "\n".join(
        f"| {s} | {results[s]['val']['persistence']:.3f} | {results[s]['val']['zero_shot']:.3f} | "
        f"{results[s]['val']['scratch']:.3f} | {results[s]['val']['finetuned']:.3f} |" for s in stations)
    m = card.metrics
    nan = float("nan")
    pre_note = f"pretraining took {pre_wall:.0f} s" if pre_wall else "reused from the registry"
    body = f"""Test MAE in °C of temperature 24 h ahead on each station's test span (last 20 % of its record,
2015-2016), with only {HISTORY_DAYS} days of the station's history for training and validation.

{body}

## Target

Fine-tuned beats both persistence and from-scratch on every station: **{'met' if all_met else 'not met'}**
({sum(r['beats_persistence'] for r in results.values())}/4 stations beat persistence,
{sum(r['beats_scratch'] for r in results.values())}/4 beat from-scratch on the seed mean).

Per seed (test MAE, seeds 0..{seeds - 1}):

| station | from scratch | fine-tuned | fine-tuned better than scratch for every seed pair |
|---|---|---|---|
{per_seed}

Validation MAE (the {results[stations[0]]['val_samples']} windows of the last 6 days of the 30; early stopping uses
them):

| station | persistence | zero-shot | from scratch | fine-tuned |
|---|---|---|---|---|
{val_rows}

## Setup

- Global model `{tag or '(quick run: not registered)'}` in `runs/registry-transfer` (reuse it with `--reuse`):
  Conv1D+GRU(64) (Listing 6.49 front-end), time features, residual, dropout 0.2, trained on Jena hourly
  (Chollet's split; AdamW lr 1e-3, wd 1e-4, full passes, up to {PRETRAIN.epochs} epochs, patience {PRETRAIN.patience}).
  Jena: validation {m.get('val_mae', nan):.3f} °C, test {m.get('test_mae', nan):.3f} °C
  (persistence {m.get('val_persistence_mae', nan):.3f} / {m.get('test_persistence_mae', nan):.3f}),
  best epoch {m.get('best_epoch')}; {pre_note}.
- Features `p, T, Tdew, rh, VPmax, wv` + 4 time encodings. All six are kept: NOAA's `p` is sea-level
  pressure (about 1,015 mbar) where Jena's is station pressure (about 989 mbar), but every station model
  uses normalization statistics fitted on the station's own rows, which removes the offset; the
  pressure *changes* the model reads are comparable. `VPmax` is a function of `T` at both sources.
- NOAA timestamps are UTC (mean daily maximum at 19-21 UTC); they are shifted to local standard time
  (Chicago UTC-6, the others UTC-7) so that the time-of-day encodings mean what they meant in Jena.
- Lookback {DATA.lookback} h (5 days), not 240 h: with {HISTORY_DAYS} days = 720 rows of history, of which
  `few_shot_ranges` keeps the last 20 % (144 rows) for validation, a 240 h lookback leaves 576 - 239 - 24 = 313
  training windows (the first 10 of the 30 days would only ever be input), 120 h leaves 433; the
  global model is pretrained with the same 120 h lookback.
- Zero-shot: the global weights untouched, evaluated with the normalization re-fit on the station's 24
  training days (`finetune(..., TrainConfig(epochs=0))`); the "Jena normalization" column keeps Jena's
  statistics instead (diagnostic: the sea-level pressure offset then shows).
- From scratch (`scratch_baseline`): same architecture, AdamW lr {scratch_cfg.lr:g}, wd {scratch_cfg.weight_decay:g},
  up to {scratch_cfg.epochs} full passes (about 4 batches of 128 each), patience {scratch_cfg.patience},
  station normalization.
- Fine-tuned (`finetune`): front-end frozen, station normalization, AdamW lr {ft_cfg.lr:g}, wd {ft_cfg.weight_decay:g},
  same epochs and patience as from scratch. Both are run with seeds 0..{seeds - 1}; the table shows the mean.
- Whole run: {wall:.0f} s (including pretraining).

Figures: `docs/figures/transfer_mae.png` (bar chart of the table),
`docs/figures/transfer_pretrain_learning_curve.png`, `docs/figures/transfer_<station>_forecast_vs_actual.png`
(two weeks of fine-tuned test forecasts, seed 0).
"""
    if args.quick:
        body = "**Quick plumbing run (tiny budgets): not a result.**\n\n" + body
    write_results("transfer", f"Transfer: Jena-pretrained model on NOAA stations with {HISTORY_DAYS} days of history",
                  body, {"stations": results, "global_model": tag, "global_metrics": m, "data_config": DATA.to_dict(),
                         "arch": {**ARCH, "conv": [vars(c) for c in ARCH["conv"]]},
                         "pretrain": PRETRAIN.to_dict(), "scratch": scratch_cfg.to_dict(),
                         "finetune": ft_cfg.to_dict(), "seeds": seeds, "all_targets_met": all_met,
                         "quick": args.quick, "wall_seconds": wall})
    print((DOCS / "transfer.md").read_text())


if __name__ == "__main__":
    main()
