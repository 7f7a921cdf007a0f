"""The book's table on Jena hourly: persistence, Conv1D (6.47), GRU, Conv1D+GRU (6.49) and our best.

Chollet's split (first 200,000/420,551 of the rows train, next 100,000/420,551 validate, the rest
test), 10-day lookback, temperature 24 h ahead. After the book's rows come three recipes selected by
bench/accuracy_floor.py, an ensemble of two of them, the shipped model's anchored recipe (issue #11) over
several seeds, and a Darts-style GRU(32) (the peers' BlockRNNModel: plain GRU over the window, Adam, no time
features). Writes docs/seed_table.md, PNG figures in docs/figures/ and the best single model into the registry
given by --registry (default: runs/registry). With --only, rows not rerun are carried over from the last
docs/results/seed_table.json and marked with the date they were measured.

    python -m bench.seed_table            # full run (about 40 min on 2 CPU cores)
    python -m bench.seed_table --only "Conv1D+GRU(64), anchored" "Darts-style"   # rerun some rows
    python -m bench.seed_table --render   # rewrite docs/seed_table.md from docs/results/seed_table.json only
    python -m bench.seed_table --quick    # 2 epochs each, to check the plumbing
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import orjson

from bench.common import DOCS, ROOT, Benchmark, markdown_table, shared_file
from bench.recipes import FRONT_POOL2, HORIZON, ensemble_mae, trials
from forecaster.clean import clean_station
from forecaster.data import file_sha256, load_records
from forecaster.dataset import DataConfig
from forecaster.evaluate import predict_windows, score
from forecaster.experiment import Trained, fit, model_config
from forecaster.models import ConvLayer, MixedIn, single_models
from forecaster.registry import GLOBAL, Registry
from forecaster.train import TrainConfig

BOOK = DataConfig(lookback=240, horizons=(24,))  # 10 days of hourly rows, 24 h ahead
# Recipes selected on validation by bench/accuracy_floor.py (docs/accuracy_floor.md), by trial name.
STUDY_ROWS = {
    "Conv1D+GRU, regularized": "cg-ema",  # the book's inputs; pool 2, dropout 0.3, residual head, weight average
    "Conv1D+GRU(64), time features": "best-wd",
    "GRU(32), time features": "gru-full",
}
ENSEMBLE = ("GRU(32), time features", "Conv1D+GRU, regularized")  # the study's best pair on validation
ENSEMBLE_LABEL = "ensemble: mean of " + " and ".join(ENSEMBLE)
ANCHORED = "Conv1D+GRU(64), anchored"  # the shipped model's recipe (#11) on the book's task, one row per seed
ANCHORED_SEEDS = (0, 1, 2)
DARTS = "Darts-style GRU(32)"
# The regularized Conv1D+GRU trained as the book and Darts train: squared error over all 24 hourly outputs.
REG_MSE = "Conv1D+GRU, regularized, 24 outputs, squared error"
H24 = tuple(range(1, 25))
# The book's front-end pooled by 2 instead of 3 (114 steps to the GRU, not 74) on the `best-wd` recipe, one row per
# seed, and the mean of the seeds' forecasts.
POOL2 = "Conv1D+GRU(64), pool 2, time features"
POOL2_SEEDS = (0, 1, 2)
POOL2_ENSEMBLE = f"ensemble: mean of the {len(POOL2_SEEDS)} seeds of {POOL2}"
# The same recipe as one model of several members (`stationcast train --members`): what the product can serve. 10
# was added after 5 reached 2.302 °C test; which count answers the targets is picked on validation like every row.
MEMBER_COUNTS = (5, 10)
# Members of two architectures in one served model (`--members 3 --mix gru:32x3`): three of the pool-2 recipe and
# three GRU(32) reading all 240 steps (`gru-full`'s architecture). Declared before it was run, its only mix.
MIXED = "mixed: 3 Conv1D+GRU(64), pool 2 and 3 GRU(32), time features"
TARGETS = {"conv_gru": 2.35, "best": 2.30}


def members_label(n: int) -> str:
    return f"{POOL2}, {n} members"


def configurations() -> list[tuple[str, DataConfig, dict, TrainConfig]]:
    book_train = TrainConfig(optimizer="rmsprop", lr=1e-3, batch_size=128, epochs=20, patience=4)
    study = {t.name: t for t in trials()}
    return [
        ("persistence", BOOK, {"kind": "persistence"}, book_train),
        ("seasonal (same time yesterday)", BOOK, {"kind": "seasonal"}, book_train),
        ("Conv1D (6.47)", BOOK, {"kind": "conv"}, book_train),
        ("GRU(32)", BOOK, {"kind": "gru", "gru_hidden": 32}, book_train),
        (
            "Conv1D+GRU (6.49)", BOOK,
            {"kind": "conv_gru", "conv": (ConvLayer(32, 5, 3), ConvLayer(32, 5, 1)), "gru_hidden": 32,
             "dropout": 0.1},
            book_train,
        ),
    ] + [(label, study[name].data, study[name].arch, study[name].train) for label, name in STUDY_ROWS.items()] + [
        (REG_MSE, replace(study["cg-ema"].data, horizons=H24), study["cg-ema"].arch,
         replace(study["cg-ema"].train, loss="mse")),
    ] + [
        # Anchored head and level-removed T/Tdew inputs as in the shipped model; at +24 h the value a day before
        # the target is the last value, so the anchor is persistence here and the mix has nothing to choose.
        (f"{ANCHORED}, seed {seed}", study["best-wd"].data,
         {**study["best-wd"].arch, "residual": False, "anchor": "both", "relative": (1, 2),
          "phase": study["best-wd"].data.time_of_day_columns},  # read from the warmest hour, as shipped
         replace(study["best-wd"].train, seed=seed))
        for seed in ANCHORED_SEEDS
    ] + [
        (f"{POOL2}, seed {seed}", study["best-wd"].data, {**study["best-wd"].arch, "conv": FRONT_POOL2},
         replace(study["best-wd"].train, epochs=24, seed=seed))
        for seed in POOL2_SEEDS
    ] + [
        (members_label(n), study["best-wd"].data, {**study["best-wd"].arch, "conv": FRONT_POOL2, "members": n},
         replace(study["best-wd"].train, epochs=24))
        for n in MEMBER_COUNTS
    ] + [
        (MIXED, study["best-wd"].data,
         {**study["best-wd"].arch, "conv": FRONT_POOL2, "members": 3, "mix": (MixedIn("gru", 32, 3),)},
         replace(study["best-wd"].train, epochs=24)),
    ] + [
        # BlockRNNModel's defaults: output_chunk_length 24 (all 24 hours out, scored at +24 h), MSE, batch 32.
        (DARTS, replace(BOOK, horizons=H24), {"kind": "gru", "gru_hidden": 32, "dropout": 0.0},
         TrainConfig(optimizer="adam", lr=1e-3, batch_size=32, epochs=20, patience=4, loss="mse")),
    ]


def servable(label: str, row: dict) -> bool:
    """A trained row the product can train and serve: not a baseline, and not a mean of rows taken here after the
    fact (``ensemble:`` rows, benchmark-only findings; a model of several members is servable)."""
    return bool(row.get("parameters")) and not label.startswith("ensemble")


def picks(results: dict[str, dict]) -> list[tuple[str, str, float, float]]:
    """(target, row picked on validation, its test MAE, the limit) for the two targets, and for the best single
    model against the second. Only servable rows compete: a benchmark-only mean is a finding, not a headline."""
    trained = [k for k in results if servable(k, results[k])]
    cg = [k for k in trained if k.startswith("Conv1D+GRU")]
    single = [k for k in trained if results[k].get("n_members", 1) == 1]
    goals = ((f"Conv1D+GRU at most {TARGETS['conv_gru']:.2f} °C test", cg, TARGETS["conv_gru"]),
             (f"best configuration at most {TARGETS['best']:.2f} °C test", trained, TARGETS["best"]),
             (f"the same, best single model at most {TARGETS['best']:.2f} °C test", single, TARGETS["best"]))
    out = []
    for target, pool, limit in goals:
        if pool:
            row = min(pool, key=lambda k: results[k]["val_mae"])
            out.append((target, row, results[row]["test_mae"], limit))
    return out


def verdicts(results: dict[str, dict]) -> str:
    """The targets, judged on test MAE; which row answers each is picked on validation."""
    lines = ["| target | row (picked on validation) | test MAE °C | verdict |", "|---|---|---|---|"]
    for target, row, mae, limit in picks(results):
        lines.append(f"| {target} | {row} | {mae:.3f} | **{'met' if mae <= limit else 'not met'}** |")
    former = [k for k in results if results[k].get("parameters") or k.startswith("ensemble")]  # means included
    if former:
        before = min(former, key=lambda k: results[k]["val_mae"])
        if before not in [row for _, row, _, _ in picks(results)]:
            lines.append(f"\nUntil 2026-12-01 the benchmark-only means competed too; by that rule the pick would be "
                         f"{before}, at {results[before]['test_mae']:.3f} °C test.")
    for name in (POOL2, ANCHORED):
        seeds = [results[k]["test_mae"] for k in results if k.startswith(name) and ", seed " in k]
        if seeds:
            lines.append(f"\n{name} over {len(seeds)} seed(s): test MAE {min(seeds):.3f} to {max(seeds):.3f} °C "
                         f"(mean {sum(seeds) / len(seeds):.3f}).")
    lines.append("\nPeers on exactly this split and windows (issue #11): Darts BlockRNNModel GRU(32) 2.319 / 2.348 / "
                 "2.354 over three seeds, LightGBM on lag features 2.380 at best, Darts N-HiTS 2.55.")
    return "\n".join(lines)


def _carried(only: list[str] | None) -> dict:
    """Rows of the last run that this one does not retrain (``--only``), each marked with when it was measured."""
    path = DOCS / "results" / "seed_table.json"
    if not only or not path.exists():
        return {}
    old = orjson.loads(path.read_bytes())
    when = old.get("measured_at", "?")[:10]
    return {k: {"measured": when, **v} for k, v in old["rows"].items() if not any(k.startswith(o) for o in only)}


def _best_epoch(r: dict) -> int | str:
    hist = r.get("history") or []
    return min(hist, key=lambda h: h["val_loss"])["epoch"] if hist else "-"


def measure(args: argparse.Namespace) -> dict:
    path = shared_file("jena_2009_2016_hourly.csv.gz")
    series = clean_station(load_records(path))
    data_hash = file_sha256(path)
    figures = DOCS / "figures"
    results = _carried(args.only)
    trained, best, best_val = {}, None, float("inf")
    for label, data, arch, train_cfg in configurations():
        if args.only and not any(label.startswith(o) for o in args.only):
            continue
        if args.quick:
            train_cfg = replace(train_cfg, epochs=2, steps_per_epoch=50)
        t = fit([series], data, model_config(data, **arch), train_cfg, label=label.split(":")[0],
                plot_dir=figures if arch["kind"] not in ("persistence", "seasonal") else None, data_hash=data_hash)
        val, test = (t.val["by_horizon"][HORIZON], t.test["by_horizon"][HORIZON])  # the +24 h column
        results[label] = {"val_mae": val["mae"], "test_mae": test["mae"],
                          "val_persistence": val["persistence_mae"], "test_persistence": test["persistence_mae"],
                          "seconds_per_epoch": t.result.seconds_per_epoch, "parameters": t.n_parameters,
                          "best_epoch": t.result.best_epoch, "history": t.result.history,
                          "n_members": t.card.model.n_members}
        if t.card.model.n_members > 1:
            results[label] |= _members_alone(t)
        trained[label] = t
        competes = label in STUDY_ROWS or label.startswith((ANCHORED, POOL2, MIXED))
        if competes and (best is None or val["mae"] < best_val):
            best, best_val = t, val["mae"]  # the best configuration on validation goes into the registry
        print(f"{label}: val {val['mae']:.3f}  test {test['mae']:.3f} °C (+24 h)", flush=True)

    pool2 = [f"{POOL2}, seed {s}" for s in POOL2_SEEDS]
    for label, members in ((ENSEMBLE_LABEL, list(ENSEMBLE)), (POOL2_ENSEMBLE, pool2)):
        if all(m in trained for m in members):  # every member trained in this run, on the same windows
            ens = {split: ensemble_mae([trained[m] for m in members], split) for split in ("val", "test")}
            results[label] = {"val_mae": ens["val"], "test_mae": ens["test"], "members": members,
                              "parameters": sum(results[m]["parameters"] for m in members)}
    if best is not None and not args.quick:
        reg = Registry(args.registry)
        info = reg.register(GLOBAL, best.model, best.card, note="bench.seed_table best configuration")
        print(f"registered {info.tag} in {args.registry}")
    return {"quick": args.quick, "rows": results}


def _members_alone(t: Trained) -> dict:
    """Each member's +24 h MAE on validation and test, scored alone on the model's windows."""
    out = {"member_kind": [m.cfg.kind for m in single_models(t.model)]}
    for split, windows in (("val", t.splits.val), ("test", t.splits.test)):
        out[f"member_{split}"] = []
        for m in single_models(t.model):
            p = predict_windows(m, windows, t.splits.normalizer, t.card.data.target)
            out[f"member_{split}"].append(score(p, t.card.data.horizons)["by_horizon"][HORIZON]["mae"])
    return out


def render(d: dict) -> str:
    results = d["rows"]
    rows, carried = [], sorted({r["measured"] for r in results.values() if "measured" in r})
    for k, r in results.items():
        pers = r.get("test_persistence") or results[r["members"][0]]["test_persistence"]
        rows.append([k + (f" ({r['measured']} run)" if "measured" in r else ""), r["val_mae"], r["test_mae"],
                     r["test_mae"] / pers, r.get("seconds_per_epoch") or "-", r.get("parameters", "-"),
                     r.get("best_epoch") or _best_epoch(r)])
    body = markdown_table(
        ["model", "val MAE °C", "test MAE °C", "test / persistence", "s / epoch", "parameters", "best epoch"], rows
    )
    marks = " and ".join(f"({c} run)" for c in carried)
    body += "\n\n" + verdicts(results) + (
        (f"\n\nRows marked {marks} were not retrained in this run: their figures are carried over from "
         "that run's docs/results/seed_table.json." if carried else "") + (
        "\n\nPersistence reference: 2.46 °C validation, 2.59 °C test; the book's best model reaches 2.45 °C test. "
        "The book rows train with RMSprop 1e-3 as in the book. The three rows after them use the recipes "
        "bench/accuracy_floor.py selected on validation (docs/accuracy_floor.md; trials "
        + ", ".join(f"`{n}`" for n in STUDY_ROWS.values()) + "): AdamW 1e-3, the exponential moving average of "
        "the weights validated and kept, residual head; the regularized Conv1D+GRU keeps the book's inputs "
        "(front-end 32x5 pool 2, 32x5; dropout 0.3), the other two add time-of-day and day-of-year inputs "
        "(weight decay 0.05; the Conv1D+GRU(64) front-end pools 3, the GRU reads all 240 steps). Every trained "
        "row runs full passes (259 batches of 128), early-stopped on validation (patience 4), best weights "
        "restored; s / epoch is the training time of one pass (of every member, for a model of several). Rows "
        "named \"ensemble: mean of ...\" average other rows' 24 h forecasts after the fact, in this script only: "
        "they are findings, not counted in the verdicts, because the product cannot serve them (a benchmark runs "
        "the product's code path). \"Our best configuration\" is whichever servable trained row (a model of several "
        f"members included) has the lowest validation MAE; it is registered. Machine: {d['machine']}.\n\n"
        "Figures: `docs/figures/*_learning_curve.png` (training vs validation MAE per epoch) and "
        "`docs/figures/*_forecast_vs_actual.png` (two weeks of test forecasts). Why 2.30 °C is hard to reach on "
        "these data: docs/accuracy_floor.md (a study of 2026-11-29, before the pool-2 rows).\n"
        f"\n{ANCHORED}: the shipped model's head (issue #11: forecasts relative to a learned mix of the last value and "
        "the value a day before the target; at +24 h both are the last value) with T and Tdew fed as deviations "
        "from their window mean and the time of day read relative to each window's warmest hour (`--phase-relative`), "
        "on the `best-wd` recipe (time features, AdamW wd 0.05, EMA), one row per seed. "
        f"{DARTS}: a plain GRU(32) over the 240 normalized steps, last hidden state to a linear head for all 24 "
        "hours ahead (scored at +24 h), squared-error loss, Adam 1e-3, batch 32, no time features, no residual, as "
        "Darts' BlockRNNModel(GRU, 32) with output_chunk_length 24 and its defaults (early-stopped on validation, "
        "patience 4). Trained before as one +24 h output on MAE with batch 128, the same GRU reached 2.286 / 2.460 °C "
        "(val / test, 2026-11-30); in single-seed trials the 24 outputs and the squared error took it to 2.257 / "
        "2.389 °C at batch 128, batch 32 to the row above. What still separates it from the peers' 2.319-2.354 (a "
        "different input scaling: Darts' Scaler defaults to min-max; seeds) was not measured. "
        f"{REG_MSE}: the regularized Conv1D+GRU (`cg-ema`) with the same two changes (`stationcast train --horizons "
        "1-24 --loss mse`), scored at +24 h. In single-seed trials the same two changes did not help the anchored "
        "recipe (2.393 °C test against 2.386) or the Conv1D+GRU(64) with time features (2.391 against 2.370). "
        f"{POOL2}: the `best-wd` recipe (time features, GRU(64), dropout 0.2, residual head, AdamW wd 0.05, EMA) "
        "with the regularized row's front-end, pooling by 2 instead of 3 (the GRU reads 114 steps, not 74), up to "
        "24 passes, one row per seed; `stationcast train --model conv_gru --conv 32x5/2,32x5/1 --hidden 64 --dropout "
        "0.2 --residual --time-features --optimizer adam --weight-decay 0.05 --ema 0.998 --epochs 24`. It is the "
        "first Conv1D+GRU here to match the GRU that reads all 240 steps: the coarser pooling, not the front-end, "
        "cost the accuracy docs/accuracy_floor.md attributes to pooling. "
        f"{POOL2_ENSEMBLE}: the mean of those seeds' +24 h forecasts, taken here. {POOL2}, N members: the same "
        "recipe trained as the product trains it, one model of N members (`stationcast train ... --members N`): "
        "member i trained on its own with seed i (its batch order; the initial weights follow one seeded stream) "
        "and early-stopped on its own validation loss, the model forecasting their mean; the service, `evaluate` "
        "and `finetune` load and serve it like any model, at N times the compute. Its first member trains exactly "
        "as the seed-0 row does (tests/test_ensemble.py checks that on one machine); runs on different days did "
        "not reproduce bit for bit here. The 10-member row was added after the 5-member row came to 2.302 °C test; "
        "which answers the targets is picked on validation, as for every row. "
        f"{MIXED}: one model of 6 members of two architectures (the pool-2 command above with `--members 3 --mix "
        "gru:32x3`): three pool-2 Conv1D+GRU(64) members (seeds 0-2) and three GRU(32) reading all 240 steps "
        "(`gru-full`'s architecture, seeds 3-5), each trained on its own, the model forecasting the mean of the six. "
        "Why: in docs/accuracy_floor.md's study means across architectures gained more over their members (gru-full "
        "+ cg-ema: 2.326 °C test against 2.343 and 2.396 alone) than the seeds of one recipe do here (5 members: "
        "2.302 against 2.306-2.351); that study shows test figures, so the choice of this mix was informed by them. "
        "It was declared before it was run and is the only mix tried; it competes for the best-configuration target "
        "only (half its members have no Conv1D front-end)." + _member_spread(results) + "\n"
    ))
    if d.get("quick"):
        body = "**Quick plumbing run (2 short epochs per model): not a result.**\n\n" + body
    return body


_KIND_NAMES = {"conv_gru": "Conv1D+GRU", "gru": "GRU", "conv": "Conv1D"}


def _member_spread(results: dict[str, dict]) -> str:
    parts = []
    for k, r in results.items():
        kinds = r.get("member_kind") or ["model"] * len(r.get("member_test", ()))
        groups = {kind: [m for m, c in zip(r.get("member_test", ()), kinds, strict=True) if c == kind]
                  for kind in dict.fromkeys(kinds)}
        alone = "; ".join(f"{'' if len(groups) == 1 else _KIND_NAMES.get(kind, kind) + ' '}members alone "
                          f"{min(t):.3f} to {max(t):.3f} °C test (mean {sum(t) / len(t):.3f})"
                          for kind, t in groups.items())
        if alone:
            parts.append(f"{k}: its {alone}, their mean {r['test_mae']:.3f}")
    seed0 = results.get(f"{POOL2}, seed 0", {})
    for k, r in results.items():
        first = [h["seconds"] for h in r.get("history") or [] if h.get("member") == 0]
        if first and seed0.get("seconds_per_epoch") and not r.get("measured"):
            parts.append(f"per pass, the first member of {k} took {sum(first) / len(first):.1f} s in this run, "
                         f"the seed-0 row {seed0['seconds_per_epoch']:.1f} s in its own: compare s / epoch within a "
                         "run only")
            break
    return (" " + "; ".join(parts) + ".") if parts else ""


def headline(d: dict) -> str:
    rows = d["rows"]
    picked = [f"{row} {mae:.3f} ({'met' if mae <= limit else 'not met'}: {target.split(' at most')[0]} "
              f"<= {limit:.2f})".replace("the same, ", "") for target, row, mae, limit in picks(rows)]
    return (f"test MAE °C, persistence {rows['persistence']['test_mae']:.3f}; picked on validation: "
            + "; ".join(picked))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 epochs of 50 steps per model")
    ap.add_argument("--registry", default=str(ROOT / "runs" / "registry"))
    ap.add_argument("--only", nargs="*", help="run only the rows whose label starts with one of these")
    return ap


BENCH = Benchmark("seed_table", "Seed table: Jena hourly, 10-day lookback, 24 h ahead", measure, render, parser(),
                  headline=headline)

if __name__ == "__main__":
    BENCH.main()
