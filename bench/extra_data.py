"""Does more in-domain training data close the seed table's gap? A study, not a seed-table row.

The seed table trains on the hourly Jena file: every 6th 10-minute reading, so one sixth of the training
windows Chollet's setup draws from the full 10-minute archive (which `make data` downloads where the internet is
reachable). The only other Jena data here is ``jena_2020_10min.csv.gz`` (same roof station, 2020). This study
adds its six hourly phases (readings at :00, :10, ..., :50 of each hour, each its own hourly series) as extra
*training* windows to two seed-table recipes and scores them exactly as the seed table does (Chollet's split of
the 2009-2016 file, validation selects, test reported). 2020 lies after the test years, so these rows are not
eligible for the seed table's targets; they say how far more data of the same station would go.

    python -m bench.extra_data        # about 8 minutes on 2 CPU cores

Writes docs/archive/extra_data.md (superseded) and docs/results/extra_data.json.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import pandas as pd
import torch

from bench.common import Benchmark, markdown_table, shared_file
from bench.recipes import BOOK, FRONT_BOOK, FRONT_POOL2, HORIZON, TF, TRIAL
from forecaster.clean import CleanConfig, StationSeries, clean_station
from forecaster.data import load_records
from forecaster.dataset import split_rows
from forecaster.experiment import fit, model_config

RECIPES = {
    "Conv1D+GRU regularized (seed-table row)": (BOOK, {"kind": "conv_gru", "conv": FRONT_POOL2, "gru_hidden": 32,
                                                       "dropout": 0.3, "residual": True}, TRIAL),
    "best (seed-table row)": (TF, {"kind": "conv_gru", "conv": FRONT_BOOK, "gru_hidden": 64, "dropout": 0.2,
                                   "residual": True}, replace(TRIAL, lr=1e-3, weight_decay=1e-4)),
}
SUPERSEDED = ("`docs/accuracy_floor.md` and `docs/seed_table.md` (longer training budgets and the recipes the seed "
              "table uses now; this page's recipes and budget are older). Its finding stands: six hourly phases of "
              "Jena 2020 added as training windows did not move validation MAE")


def phases_2020() -> list[StationSeries]:
    """The 2020 10-minute file as six hourly series, one per minute-of-hour phase."""
    rec = load_records(shared_file("jena_2020_10min.csv.gz"))
    minute = rec["time"].dt.minute
    cfg = CleanConfig(cadence=pd.Timedelta(hours=1))
    return [clean_station(rec[minute == m].assign(station=f"jena2020:{m:02d}"), cfg) for m in range(0, 60, 10)]


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    jena = clean_station(load_records(shared_file("jena_2009_2016_hourly.csv.gz")))
    extra = phases_2020()
    rows = []
    for name, (data, arch, train) in RECIPES.items():
        tr, va, te = split_rows(jena, data)
        for with_extra in (False, True):
            series, ranges = [jena], [(tr, va, te)]
            if with_extra:
                for s in extra:
                    n = len(s.frame)
                    series.append(s)
                    ranges.append((slice(0, n), slice(n, n), slice(n, n)))  # training windows only
            started = time.perf_counter()
            t = fit(series, data, model_config(data, **arch), replace(train, epochs=12, patience=4),
                    label=f"extra {name} {'+2020' if with_extra else ''}", ranges=ranges)
            rows.append({
                "recipe": name, "training data": "2009-2012 hourly + 2020 (6 phases)" if with_extra else
                "2009-2012 hourly (seed table)", "train windows": len(t.splits.train),
                "val_mae": t.val["by_horizon"][HORIZON]["mae"], "test_mae": t.test["by_horizon"][HORIZON]["mae"],
                "test_persistence": t.test["by_horizon"][HORIZON]["persistence_mae"], "best_epoch": t.result.best_epoch,
                "wall_s": time.perf_counter() - started,
            })
            print(rows[-1], flush=True)
    return {"rows": rows}


def render(d: dict) -> str:
    rows = d["rows"]
    table = markdown_table(
        ["recipe", "training data", "train windows", "val MAE °C", "test MAE °C", "test / persistence", "best epoch"],
        [[r["recipe"], r["training data"], r["train windows"], r["val_mae"], r["test_mae"],
          r["test_mae"] / r["test_persistence"], r["best_epoch"]] for r in rows])
    body = f"""
Jena hourly 2009-2016 with Chollet's split (train 2009-2012, validation, test), 240 h lookback, temperature
24 h ahead, as in `docs/seed_table.md`; each recipe trained twice with the same settings (150 batches of 128 per
epoch, up to 12 epochs, early-stopped on validation with patience 4): on the seed table's training span alone,
and with the six hourly phases of `jena_2020_10min.csv.gz` added as training windows (normalization still from
the 2009-2012 training span). Validation and test windows are the seed table's.

{table}

Targets of the seed table (Conv1D+GRU ≤ 2.30 °C test, best ≤ 2.25 °C test) are judged there, on the seed
table's own training data; 2020 lies after the test years, so the "+ 2020" rows do not count for them.
"""
    return body


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    return p


def headline(d: dict) -> str:
    return "val MAE °C without / with Jena 2020: " + ", ".join(
        f"{a['recipe']} {a['val_mae']:.3f} / {b['val_mae']:.3f}" for a, b in zip(d["rows"][::2], d["rows"][1::2],
                                                                               strict=True))


BENCH = Benchmark("extra_data", "More in-domain data: Jena 2020 added to the seed table's training span", measure,
                  render, parser(), superseded_by=SUPERSEDED, headline=headline)

if __name__ == "__main__":
    BENCH.main()
