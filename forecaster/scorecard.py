"""A model scored on a test span against both baselines: what ``evaluate`` and ``finetune`` print, and the
``--json`` contract scripts read.

Contract (stable; keys are only ever added)::

    {"model": "global@v1", "stations": ["jena"], "cadence_s": 3600,
     "test_span": {"from": "2015-05-27T11:10:00", "until": "2016-12-31T23:10:00"},
     "windows": 13825, "mae": 1.61, "persistence_mae": 1.93, "diurnal_mae": 2.35, "skill": 0.21,
     "coverage": 0.79, "band": [0.1, 0.9],
     "horizons": [{"horizon": 1, "minutes": 60, "mae": 0.41, "persistence_mae": 0.55, "diurnal_mae": 2.35,
                   "skill": 0.25, "coverage": 0.83}, ...]}

``skill`` per horizon is ``1 - mae / min(persistence_mae, diurnal_mae)`` (the better baseline at that
horizon); the top-level ``skill`` is its mean over horizons and ``mae`` the mean MAE over horizons.
``coverage`` is the fraction of actuals inside the band between the lowest and highest quantile (``band``,
P10-P90 for the shipped model), null for a model without quantiles; ``diurnal_mae`` is null when a day is
not a whole number of steps at the station's cadence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from forecaster.artifact import ModelCard
from forecaster.clean import StationSeries
from forecaster.evaluate import Predictions, predict_windows, score, steps_per_day
from forecaster.spans import SpanError, Spans, covered, test_rows
from forecaster.table import format_table
from forecaster.windows import Windows, windows_for


@dataclass
class Scored:
    card: dict  # the --json contract
    predictions: Predictions


def test_windows(series: Sequence[StationSeries], card: ModelCard, spans: Spans) -> tuple[Windows, list[slice]]:
    """Windows whose origin and targets lie in the test span, each with a day of history before it (for the
    diurnal baseline); the lookback may reach before the span, as inputs known at forecast time."""
    data = card.data
    season = steps_per_day(card.cadence_s) or 0
    rows = [test_rows(s, spans) for s in series]
    parts = [
        windows_for(s, data.features, data.target, data.spec, card.normalizer, data.time_features, r, 0, season)
        for s, r in zip(series, rows, strict=True)
    ]
    windows = parts[0] if len(parts) == 1 else Windows.concat(parts)
    if len(windows) == 0:
        need = max(data.lookback, season) + data.spec.max_horizon
        raise SpanError(
            f"the test span {_span_text(spans)} holds no full window: one needs {need} gap-free steps "
            f"({_duration(need * card.cadence_s)}) of history and horizon"
        )
    return windows, rows


def score_on_span(model: nn.Module, tag: str, card: ModelCard, series: Sequence[StationSeries],
                  spans: Spans) -> Scored:
    windows, rows = test_windows(series, card, spans)
    season = steps_per_day(card.cadence_s)
    p = predict_windows(model, windows, card.normalizer, card.data.target, season=season, band=card.calibration)
    raw = score(p, card.data.horizons)
    first, last = covered(series, rows)
    return Scored(contract(tag, raw, card, [s.station for s in series], first, last), p)


def contract(tag: str, raw: dict, card: ModelCard, stations: list[str], first: str, last: str) -> dict:
    """``score()``'s result in the --json shape (module docstring)."""
    horizons = []
    for h, v in raw["by_horizon"].items():
        baseline = min(v["persistence_mae"], v.get("diurnal_mae", np.inf))
        horizons.append({
            "horizon": int(h), "minutes": _minutes(h * card.cadence_s), "mae": v["mae"],
            "persistence_mae": v["persistence_mae"], "diurnal_mae": v.get("diurnal_mae"),
            "skill": float(1 - v["mae"] / baseline) if baseline > 0 else None, "coverage": v.get("coverage"),
        })
    skills = [h["skill"] for h in horizons if h["skill"] is not None]
    quantiles = card.model.quantiles
    return {
        "model": tag,
        "stations": stations,
        "cadence_s": card.cadence_s,
        "test_span": {"from": first, "until": last},
        "windows": raw["samples"],
        "mae": float(np.mean([h["mae"] for h in horizons])),
        "persistence_mae": raw["persistence_mae"],
        "diurnal_mae": raw.get("diurnal_mae"),
        "skill": float(np.mean(skills)) if skills else None,
        "coverage": raw.get("band_coverage"),
        "band": [quantiles[0], quantiles[-1]] if len(quantiles) > 1 else None,
        "horizons": horizons,
    }


def horizon_label(minutes: float) -> str:
    """+10 min, +1 h, +1 h 30 min, +24 h."""
    hours, mins = divmod(int(round(minutes)), 60)
    return "+" + " ".join(([f"{hours} h"] if hours else []) + ([f"{mins} min"] if mins or not hours else []))


def render(card: dict, title: str | None = None, base: dict | None = None) -> str:
    """The human-readable form: a summary, then a row per horizon in time and in steps (``base``: the model a
    fine-tuned one started from, scored on the same windows, as one more column)."""
    span = card["test_span"]
    band = card["band"]
    lines = [
        f"{title or card['model']}: test span {span['from']} to {span['until']}, {card['windows']:,} windows",
        f"  MAE {card['mae']:.3f} °C"
        + (f" (base {base['model']}: {base['mae']:.3f})" if base else "")
        + f", persistence {card['persistence_mae']:.3f}, diurnal persistence {_num(card['diurnal_mae'], '.3f')}, "
        f"skill {_num(card['skill'], '+.1%')}"
        + (f", P{band[0] * 100:g}-P{band[1] * 100:g} coverage {card['coverage']:.0%}" if band else ""),
    ]
    header = ["horizon", "steps", "MAE", *(["base MAE"] if base else []), "persistence", "diurnal", "skill"]
    rows = [header + (["coverage"] if band else [])]
    base_by = {h["horizon"]: h for h in base["horizons"]} if base else {}
    for h in card["horizons"]:
        row = [horizon_label(h["minutes"]), str(h["horizon"]), f"{h['mae']:.3f}"]
        if base:
            row.append(_num(base_by.get(h["horizon"], {}).get("mae"), ".3f"))
        row += [f"{h['persistence_mae']:.3f}", _num(h["diurnal_mae"], ".3f"), _num(h["skill"], "+.1%")]
        rows.append(row + ([_num(h["coverage"], ".0%")] if band else []))
    lines.append(format_table(rows, right=[False] + [True] * (len(rows[0]) - 1), indent="  "))
    return "\n".join(lines)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _minutes(seconds: float) -> int | float:
    m = seconds / 60
    return int(m) if m == int(m) else m


def _duration(seconds: float) -> str:
    return f"{seconds / 86400:g} days" if seconds >= 86400 else f"{seconds / 3600:g} h"


def _span_text(spans: Spans) -> str:
    return f"[{spans.test_start.isoformat()}, {spans.test_end.isoformat()})"
