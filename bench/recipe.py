"""Which recipe the shipped model uses, chosen on validation data only: zero-shot on stations the candidate never saw.

Each candidate trains with the product's ``fit`` on Jena, Chicago and Great Falls (their rows before the default test
span), then is scored zero-shot on Denver, Rapid City and EWR, on their rows BEFORE the default test span (the last
20 % stays untouched for bench/loso.py). Per horizon against persistence and diurnal persistence on the same windows.

    python -m bench.recipe [--epochs 8]     # measure, write docs/results/recipe.json and docs/recipe.md
    python -m bench.recipe --render         # rewrite docs/recipe.md from the saved JSON only
"""

from __future__ import annotations

import argparse

import numpy as np
import orjson
import pandas as pd

from bench.common import ROOT, Benchmark, markdown_table
from bench.stations import station
from forecaster.dataset import DataConfig
from forecaster.experiment import fit, model_config
from forecaster.models import ConvLayer
from forecaster.plots import slug
from forecaster.scorecard import score_on_span
from forecaster.spans import Spans, default_test_start, rows
from forecaster.train import TrainConfig

TRAIN = ("jena", "chicago", "great_falls")
VALIDATE = ("denver", "rapid_city", "EWR")
DATA = DataConfig(features=("T", "Tdew", "rh", "wv"), lookback=168, horizons=tuple(range(1, 25)), time_features=True)
ARCH = {"quantiles": (0.1, 0.5, 0.9), "conv": (ConvLayer(32, 5, 3), ConvLayer(32, 5, 2)), "gru_hidden": 64,
        "dropout": 0.2, "season": 24}
CACHE = ROOT / "var" / "bench" / "recipe"
CANDIDATES = {
    "both + relative T,Tdew": {"anchor": "both", "band_offsets": True, "relative": (0, 1)},
    "last (shipped before)": {"anchor": "last"},
}


def pre_test(name: str) -> Spans:
    s = station(name)
    first, last = s.times[0], s.times[-1] + pd.Timedelta(1, "ns")
    end = default_test_start(first, last)
    return Spans(first, end, first, end, True)


def train_ranges(name: str):
    s, sp = station(name), pre_test(name)
    split = sp.data_start + (sp.train_end - sp.data_start) * 0.75
    val = rows(s, split, sp.train_end)
    return rows(s, sp.data_start, split), val, val


def measure(args: argparse.Namespace) -> dict:
    cfg = TrainConfig(optimizer="adam", lr=1e-3, epochs=args.epochs, steps_per_epoch=400, patience=3)
    series = [station(n) for n in TRAIN]
    ranges = [train_ranges(n) for n in TRAIN]
    results: dict[str, dict] = {}
    for label, extra in CANDIDATES.items():
        cached = CACHE / f"{slug(label)}.json"
        if cached.exists():  # a candidate measured by an earlier run with the same settings
            results[label] = orjson.loads(cached.read_bytes())
            continue
        arch = model_config(DATA, "conv_gru", **ARCH, **extra)
        t = fit(series, DATA, arch, cfg, label=label, ranges=ranges)
        per = {n: score_on_span(t.model, label, t.card, [station(n)], pre_test(n)).card for n in VALIDATE}
        results[label] = {"val_loss": t.result.best_val_loss, "best_epoch": t.result.best_epoch, "stations": per}
        CACHE.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(orjson.dumps(results[label]))
        print(label, {n: (round(c["mae"], 3), round(c["skill"], 4), min(h["skill"] for h in c["horizons"]),
                          round(c["coverage"] or 0, 3)) for n, c in per.items()}, flush=True)
    return {"train": list(TRAIN), "validate": list(VALIDATE), "epochs": args.epochs, "results": results}


def render(d: dict) -> str:
    rows_md = []
    for label, r in d["results"].items():
        for n, c in r["stations"].items():
            worst = min(c["horizons"], key=lambda h: h["skill"])
            cov = [h["coverage"] for h in c["horizons"]]
            rows_md.append([label, n, c["mae"], f"{c['skill']:+.1%}", f"{worst['skill']:+.1%} (+{worst['horizon']} h)",
                            f"{np.min(cov):.0%}-{np.max(cov):.0%}"])
    return (
        "Candidates trained on " + ", ".join(d["train"]) + " (rows before their default test span), scored zero-shot "
        "on " + ", ".join(d["validate"]) + " before their test span: the test spans are never looked at here.\n\n"
        + markdown_table(["recipe", "validation station", "MAE °C", "mean skill", "worst horizon skill",
                          "P10-P90 coverage per horizon"], rows_md)
    )


def headline(d: dict) -> str:
    def maes(r: dict) -> str:
        return " / ".join(f"{r['stations'][n]['mae']:.3f}" for n in d["validate"])

    return f"zero-shot MAE °C on {' / '.join(d['validate'])} (validation stations): " + ", ".join(
        f"{name} {maes(r)}" for name, r in d["results"].items())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    return p


BENCH = Benchmark("recipe", "Recipe selection on validation stations", measure, render, parser(), headline=headline)

if __name__ == "__main__":
    BENCH.main()
