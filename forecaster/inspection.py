"""What a station file holds and whether a model can forecast it, before anything is trained or streamed.

``stationcast inspect`` prints this report; it reads the file exactly as every other command does, so a
file that inspects cleanly loads everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from forecaster.artifact import ModelCard
from forecaster.clean import CleanConfig, StationSeries, clean_station, segments_from_valid
from forecaster.data import load_records, resolve_schema
from forecaster.derive import DERIVABLE
from forecaster.schema import SENSOR_RANGES, Schema


@dataclass(frozen=True)
class ServingModel:
    """The model a report is judged against: its tag (or where it comes from) and its card."""

    tag: str
    card: ModelCard
    name: str = ""  # short, for a station's verdict (default: the tag)

    @property
    def short(self) -> str:
        return self.name or self.tag

    @property
    def needs(self) -> list[str]:
        return list(dict.fromkeys((*self.card.data.features, self.card.data.target)))

    @property
    def window(self) -> int:
        return self.card.data.lookback + self.card.data.spec.max_horizon


def _duration(td: pd.Timedelta) -> str:
    """``1h``, ``10min``, ``3d 2h10min``: short, for tables."""
    total = int(td.total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}min" if minutes else "",
             f"{seconds}s" if seconds else ""]
    text = "".join(p for p in parts[1:] if p)
    return " ".join(p for p in (parts[0], text) if p) or "0s"


def _gaps(times: np.ndarray, cadence: pd.Timedelta) -> tuple[int, pd.Timedelta]:
    """Stretches without a reading longer than 1.5 steps: how many, and the longest."""
    diffs = np.diff(np.unique(times))
    big = diffs[diffs > cadence.to_timedelta64() * 1.5]
    return len(big), pd.Timedelta(big.max() - cadence.to_timedelta64()) if len(big) else pd.Timedelta(0)


def _verdict(series: StationSeries, model: ServingModel) -> list[str]:
    """Why ``model`` cannot forecast this station; empty when it can."""
    reasons = []
    missing = [f for f in model.needs if f not in series.frame.columns]
    for name in missing:
        inputs = DERIVABLE.get(name)
        how = f" (derivable from {' and '.join(inputs)}, which the file lacks)" if inputs else ""
        reasons.append(f"missing sensor {name}{how}")
    if int(series.cadence.total_seconds()) != model.card.cadence_s:
        reasons.append(f"cadence {_duration(series.cadence)} differs from the model's "
                       f"{_duration(pd.Timedelta(seconds=model.card.cadence_s))}")
    if len(series.frame) < model.window:
        reasons.append(f"too short: {len(series.frame):,} steps, one window needs {model.window:,}")
    elif not missing:
        seg = segments_from_valid(series.frame[model.needs].notna().all(axis=1).to_numpy())
        longest = int(np.bincount(seg[seg >= 0]).max()) if (seg >= 0).any() else 0
        if longest < model.window:
            reasons.append(f"too gappy: the longest complete stretch is {longest:,} steps, one window needs "
                           f"{model.window:,}")
    return reasons


def _judge(series: StationSeries, models: list[ServingModel]) -> tuple[ServingModel | None, list[str]]:
    """The model that would serve this station (the one at its cadence, else the first) and why it cannot."""
    if not models:
        return None, ["no model to judge against"]
    cadence = int(series.cadence.total_seconds())
    model = next((m for m in models if m.card.cadence_s == cadence), models[0])
    reasons = _verdict(series, model)
    if len(models) > 1 and model.card.cadence_s != cadence:
        served = ", ".join(_duration(pd.Timedelta(seconds=m.card.cadence_s)) for m in models)
        reasons = [f"cadence {_duration(series.cadence)}: no model here serves it (they serve {served})"
                   if r.startswith("cadence ") else r for r in reasons]
    return model, reasons


def inspect_file(path: str | Path, schema: Schema | str | Path | None = None,
                 model: ServingModel | list[ServingModel] | None = None, config: CleanConfig = CleanConfig()) -> dict:
    """A JSON-ready report on ``path`` read through ``schema`` (see ``stationcast inspect``). ``model``: the
    serving model, or the champions of every cadence served (the first is the default one), so that each station
    is judged by the model at its own cadence as the service would route it."""
    models = [] if model is None else [model] if isinstance(model, ServingModel) else list(model)
    path = Path(path)
    schema = resolve_schema(schema, path)
    records = load_records(path, schema)
    sensors = [c for c in records.columns if c not in ("station", "time")]
    derived = records.attrs.get("derived", {})
    stations = []
    for sid in dict.fromkeys(records["station"]):
        rows = records[records["station"] == sid]
        series = clean_station(rows, config)
        n_gaps, longest = _gaps(rows["time"].to_numpy(), series.cadence)
        values = rows[sensors]
        out_of_range = {
            name: int(((values[name] < lo) | (values[name] > hi)).sum())
            for name, (lo, hi) in SENSOR_RANGES.items() if name in values
        }
        judge, reasons = _judge(series, models)
        stations.append({
            "station": str(sid),
            "readings": len(rows),
            "span": [str(rows["time"].iloc[0]), str(rows["time"].iloc[-1])],
            "cadence_s": int(series.cadence.total_seconds()),
            "steps": len(series.frame),
            "missing_steps": series.report["missing_steps"],
            "duplicates_dropped": series.report["duplicates_dropped"],
            "gaps": n_gaps,
            "longest_gap_s": int(longest.total_seconds()),
            "out_of_range": {k: v for k, v in out_of_range.items() if v},
            "missing_values": {k: int(v) for k, v in values.isna().sum().items() if v},
            "model": judge.short if judge else None,
            "can_forecast": not reasons,
            "why_not": reasons,
        })
    return {
        "file": str(path),
        "schema": schema.name,
        "rows": records.attrs.get("rows", len(records)),
        "stations": stations,
        "sensors": {name: (records.attrs.get("columns", {}).get("*", {}).get(name) or "per station")
                    for name in sensors if name not in derived},
        "derived": derived,
        "sentinels": records.attrs.get("sentinels", {}),
        "model": _describe(models[0]) if models else None,
        "models": [_describe(m) for m in models],
        "can_forecast": bool(stations) and all(s["can_forecast"] for s in stations),
    }


def _describe(model: ServingModel) -> dict:
    return {"tag": model.tag, "features": model.needs, "cadence_s": model.card.cadence_s,
            "window_steps": model.window}


def _legible(header: str) -> str:
    """A header read as latin-1 (every byte decodes) but written as UTF-8, shown as written: Jena 2020's unit
    characters are stored as U+FFFD and read as three latin-1 characters of mojibake otherwise."""
    try:
        return header.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return header


def format_report(report: dict) -> str:
    """The report as aligned text for a terminal."""
    lines = [f"file        {report['file']} (schema {report['schema']})",
             f"rows        {report['rows']:,}, {len(report['stations'])} station(s)",
             "sensors     " + (", ".join(f"{k} <- {_legible(v)!r}" for k, v in report["sensors"].items()) or "none")]
    if report["derived"]:
        lines.append("derived     " + ", ".join(f"{k} {how}" for k, how in report["derived"].items()))
    if report["sentinels"]:
        lines.append("sentinels   " + ", ".join(f"{k}: {n:,}" for k, n in report["sentinels"].items()))
    width = max(len("station"), *(len(s["station"]) for s in report["stations"]))
    lines.append("")
    lines.append(f"{'station':<{width}}  {'readings':>9}  {'first':<19}  {'last':<19}  {'cadence':>8}  "
                 f"{'missing':>8}  {'gaps':>5}  {'longest gap':>16}  out of range")
    for s in report["stations"]:
        oor = ", ".join(f"{k}: {n:,}" for k, n in s["out_of_range"].items()) or "none"
        longest = _duration(pd.Timedelta(seconds=s["longest_gap_s"])) if s["gaps"] else "-"
        lines.append(f"{s['station']:<{width}}  {s['readings']:>9,}  {s['span'][0]:<19}  {s['span'][1]:<19}  "
                     f"{_duration(pd.Timedelta(seconds=s['cadence_s'])):>8}  {s['missing_steps']:>8,}  "
                     f"{s['gaps']:>5,}  {longest:>16}  {oor}")
    lines.append("")
    models = report.get("models") or ([report["model"]] if report["model"] else [])
    if not models:
        lines.append("model       none found: cannot say whether it can be forecast")
        return "\n".join(lines)
    label = "models" if len(models) > 1 else "model"
    for i, model in enumerate(models):
        lines.append(f"{label if i == 0 else '':<12}{model['tag']}: uses {', '.join(model['features'])}, cadence "
                     f"{_duration(pd.Timedelta(seconds=model['cadence_s']))}, window {model['window_steps']:,} steps")
    for s in report["stations"]:
        verdict = "can forecast" if s["can_forecast"] else "cannot forecast: " + "; ".join(s["why_not"])
        by = f" (by {s['model']})" if len(models) > 1 and s["can_forecast"] and s.get("model") else ""
        lines.append(f"  {s['station']:<{width}}  {verdict}{by}")
    return "\n".join(lines)
