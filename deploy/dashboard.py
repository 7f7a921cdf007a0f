"""The stationcast Grafana dashboard, built in plain Python.

    python deploy/dashboard.py           # writes deploy/grafana/dashboards/stationcast.json
    python deploy/dashboard.py --check   # exit 1 when the committed JSON is not what this file builds

:func:`build` returns the dashboard dict (Grafana schema 39, one Prometheus datasource chosen by the
``datasource`` variable); :func:`all_queries` lists every PromQL expression in it (panel targets and
annotations), with the Grafana variables replaced by concrete values so that each one runs as is against a
Prometheus server. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "stationcast.json"
UID = "stationcast"
DS = {"type": "prometheus", "uid": "${datasource}"}
JOB = 'job=~"$job"'
RATE = "$__rate_interval"

# What all_queries() puts in place of each Grafana variable (longest names first when substituting).
SUBSTITUTIONS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${horizon}": "1",
    "$horizon": "1",
    "$station": ".*",
    "$job": ".*",
}

_GRID_W = 24


class _Layout:
    """Places panels left to right, wrapping at 24 columns; rows start a new line."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > _GRID_W:
            self.newline()
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x = 0
        self.row_h = 0


def _target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool = False) -> dict:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend or "__auto"}
    if instant:
        t["instant"] = True
        t["range"] = False
    else:
        t["range"] = True
    if table:
        t["format"] = "table"
    return t


def _targets(*specs: tuple) -> list[dict]:
    """(expr, legend[, kwargs]) tuples; refIds A, B, C, ..."""
    out = []
    for i, spec in enumerate(specs):
        expr, legend, *rest = spec
        out.append(_target(expr, legend, ref=chr(ord("A") + i), **(rest[0] if rest else {})))
    return out


class Builder:
    def __init__(self) -> None:
        self.layout = _Layout()
        self.panels: list[dict] = []

    def row(self, title: str) -> None:
        self.layout.newline()
        self.panels.append({"type": "row", "title": title, "id": self.layout.id(), "collapsed": False,
                            "gridPos": self.layout.place(_GRID_W, 1), "panels": []})
        self.layout.newline()

    def add(self, kind: str, title: str, targets: list[dict], w: int = 8, h: int = 8, unit: str | None = None,
            description: str = "", defaults: dict | None = None, overrides: list | None = None,
            options: dict | None = None, **extra: Any) -> dict:
        field_defaults: dict[str, Any] = {"unit": unit} if unit else {}
        field_defaults.update(defaults or {})
        panel = {
            "type": kind,
            "title": title,
            "id": self.layout.id(),
            "gridPos": self.layout.place(w, h),
            "datasource": DS,
            "targets": targets,
            "fieldConfig": {"defaults": field_defaults, "overrides": overrides or []},
            "options": options or {},
        }
        if description:
            panel["description"] = description
        panel.update(extra)
        self.panels.append(panel)
        return panel

    def timeseries(self, title: str, targets: list[dict], unit: str | None = None, legend_table: bool = False,
                   custom: dict | None = None, **kw: Any) -> dict:
        defaults = {"custom": {"lineWidth": 1, "fillOpacity": 8, "showPoints": "never", "spanNulls": True,
                               **(custom or {})}}
        defaults.update(kw.pop("defaults", {}))
        legend = {"displayMode": "table" if legend_table else "list", "placement": "bottom", "showLegend": True}
        if legend_table:
            legend["calcs"] = ["lastNotNull", "mean", "max"]
        options = {"legend": legend, "tooltip": {"mode": "multi", "sort": "desc"}}
        return self.add("timeseries", title, targets, unit=unit, defaults=defaults, options=options, **kw)

    def stat(self, title: str, targets: list[dict], unit: str | None = None, thresholds: list | None = None,
             w: int = 4, h: int = 4, **kw: Any) -> dict:
        defaults: dict[str, Any] = {"color": {"mode": "thresholds"}}
        if thresholds:
            defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
        defaults.update(kw.pop("defaults", {}))
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "value", "graphMode": "area", "textMode": "auto", "justifyMode": "auto"}
        options.update(kw.pop("options", {}))
        return self.add("stat", title, targets, w=w, h=h, unit=unit, defaults=defaults, options=options, **kw)


def _green_red(threshold: float, low_is_bad: bool = False) -> list[dict]:
    if low_is_bad:
        return [{"color": "red", "value": None}, {"color": "green", "value": threshold}]
    return [{"color": "green", "value": None}, {"color": "red", "value": threshold}]


def _mae(forecaster: str, by: str, window: str, extra: str = "") -> str:
    """MAE from the abs-error histogram: rate (increase over the whole range) of _sum over that of _count."""
    fn = "increase" if window == "$__range" else "rate"
    sel = f'{{forecaster="{forecaster}", {extra}{JOB}}}'
    return (f"sum by ({by}) ({fn}(stationcast_abs_error_celsius_sum{sel}[{window}]))"
            f" / sum by ({by}) ({fn}(stationcast_abs_error_celsius_count{sel}[{window}]))")


def _best_baseline_mae(by: str, window: str, extra: str = "") -> str:
    """Per ``by``, the MAE of the better of persistence and diurnal persistence (from the same histogram)."""
    fn = "increase" if window == "$__range" else "rate"
    sel = f'{{forecaster=~"persistence|diurnal", {extra}{JOB}}}'
    return (f"min by ({by}) (sum by ({by}, forecaster) ({fn}(stationcast_abs_error_celsius_sum{sel}[{window}]))"
            f" / sum by ({by}, forecaster) ({fn}(stationcast_abs_error_celsius_count{sel}[{window}])))")


def _variables() -> list[dict]:
    def query_var(name: str, label: str, query: str, multi: bool, include_all: bool, current: dict) -> dict:
        return {
            "name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query, "query": {"query": query, "refId": f"{name}-var"},
            "refresh": 2, "sort": 3, "multi": multi, "includeAll": include_all,
            "allValue": ".*" if include_all else None, "current": current, "options": [], "hide": 0,
        }

    all_current = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
        query_var("job", "Job", "label_values(stationcast_ready, job)", True, True, all_current),
        query_var("station", "Station", 'label_values(stationcast_actual_celsius{job=~"$job"}, station)',
                  True, True, all_current),
        query_var("horizon", "Horizon (h)", 'label_values(stationcast_forecast_celsius{job=~"$job"}, horizon)',
                  False, False, {}),
    ]


def _annotations() -> list[dict]:
    base = {"datasource": DS, "enable": True, "hide": False, "step": "60s", "useValueForTime": False}
    return [
        {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
         "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
        {**base, "name": "Model changes", "iconColor": "#8F3BB8",
         "expr": f"changes(stationcast_model_version{{{JOB}}}[2m]) > 0",
         "titleFormat": "Champion changed", "textFormat": "{{model}} ({{instance}})"},
        {**base, "name": "Rollbacks", "iconColor": "#F2495C",
         "expr": f"increase(stationcast_rollbacks_total{{{JOB}}}[2m]) > 0",
         "titleFormat": "Model rolled back", "textFormat": "{{instance}}"},
        {**base, "name": "Retraining", "iconColor": "#FADE2A",
         "expr": f"sum by (outcome) (increase(stationcast_retrain_runs_total{{{JOB}}}[2m])) > 0",
         "titleFormat": "Retraining {{outcome}}", "textFormat": "retraining run {{outcome}}"},
    ]


def build() -> dict[str, Any]:
    b = Builder()

    # --- fleet overview --------------------------------------------------------------------------------
    b.row("Fleet")
    b.stat("Ready", _targets((f"min(stationcast_ready{{{JOB}}})", "ready")), thresholds=_green_red(1, True),
           description="1 when broker, store and model are all available (minimum over replicas).",
           defaults={"mappings": [{"type": "value", "options": {"0": {"text": "NOT READY"}, "1": {"text": "READY"}}}]},
           w=3)
    b.stat("Readings / s", _targets((f"sum(rate(stationcast_readings_consumed_total{{{JOB}}}[{RATE}]))", "consumed")),
           unit="reqps", w=3)
    b.stat("Forecasts / s", _targets((f"sum(rate(stationcast_forecasts_total{{{JOB}}}[{RATE}]))", "forecasts")),
           unit="reqps", w=3)
    b.stat("Consumer lag", _targets((f"sum(stationcast_consumer_lag{{{JOB}}})", "lag")), unit="short",
           thresholds=_green_red(1000), w=3)
    b.stat("Dead-lettered", _targets((
        f"sum(rate(stationcast_readings_rejected_total{{{JOB}}}[{RATE}]))"
        f" / sum(rate(stationcast_readings_consumed_total{{{JOB}}}[{RATE}]))", "rejected")),
        unit="percentunit", thresholds=_green_red(0.05), w=3)
    b.stat("Skill vs better baseline",
           _targets((f'avg by (station) (stationcast_skill_vs_best_baseline{{station=~"all(@.+)?", {JOB}}})',
                     "{{station}}")),
           unit="percentunit", thresholds=_green_red(0, True), w=3,
           options={"textMode": "value_and_name", "graphMode": "none"},
           description="1 - MAE(model) / MAE(better of persistence and diurnal persistence) over each cadence's "
                       "fleet's rolling window (all: the hourly stations, all@10min: the 10-minute ones); above 0 "
                       "the model beats both.")
    b.stat("Stations ready", _targets((f"sum(stationcast_stations_ready{{{JOB}}})", "ready"),
                                      (f"sum(stationcast_stations{{{JOB}}})", "held")), w=3,
           options={"textMode": "value_and_name", "graphMode": "none"})
    b.stat("Champion", _targets((f"max by (model) (stationcast_model_version{{{JOB}}})", "{{model}}")), w=3,
           options={"textMode": "value_and_name", "graphMode": "none"}, defaults={"decimals": 0, "unit": "none"},
           description="Version number of the champion model serving forecasts.")

    # --- forecast vs actual, one panel per station ------------------------------------------------------
    b.row("Forecast vs actual")
    fsel = f'{{station=~"$station", horizon="$horizon", {JOB}}}'
    b.timeseries(
        "$station: actual and +$horizon h forecast",
        _targets(
            (f'stationcast_actual_celsius{{station=~"$station", {JOB}}}', "actual"),
            (f"quantile by (station) (0.5, stationcast_forecast_celsius{fsel})", "forecast (latest, for +$horizon h)"),
            (f"min by (station) (stationcast_forecast_celsius{fsel})", "band lo"),
            (f"max by (station) (stationcast_forecast_celsius{fsel})", "band hi"),
            (f"quantile by (station) (0.5, stationcast_forecast_celsius{fsel} offset ${{horizon}}h)",
             "forecast for now (issued $horizon h ago)"),
        ),
        unit="celsius", w=8, h=9, repeat="station", repeatDirection="h", maxPerRow=3,
        description=("Latest observation, the latest forecast for +$horizon h (its median and the band between "
                     "the lowest and highest quantile) plotted at issue time, and the forecast issued $horizon h "
                     "ago for the current time (wall clock: empty during fast replays; the status page aligns "
                     "forecasts by target time)."),
        overrides=[
            {"matcher": {"id": "byName", "options": "actual"},
             "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#E0E0E0"}},
                            {"id": "custom.lineWidth", "value": 2}]},
            {"matcher": {"id": "byName", "options": "band hi"},
             "properties": [{"id": "custom.fillBelowTo", "value": "band lo"},
                            {"id": "custom.fillOpacity", "value": 25},
                            {"id": "custom.lineWidth", "value": 0},
                            {"id": "color", "value": {"mode": "fixed", "fixedColor": "#5794F2"}},
                            {"id": "custom.hideFrom", "value": {"legend": True, "tooltip": False, "viz": False}}]},
            {"matcher": {"id": "byName", "options": "band lo"},
             "properties": [{"id": "custom.lineWidth", "value": 0},
                            {"id": "color", "value": {"mode": "fixed", "fixedColor": "#5794F2"}},
                            {"id": "custom.hideFrom", "value": {"legend": True, "tooltip": False, "viz": False}}]},
            {"matcher": {"id": "byRegexp", "options": "^forecast \\(latest.*"},
             "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#5794F2"}},
                            {"id": "custom.lineWidth", "value": 2}]},
            {"matcher": {"id": "byRegexp", "options": "^forecast for now.*"},
             "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#FF9830"}},
                            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]},
        ],
    )

    # --- forecast quality -------------------------------------------------------------------------------
    b.row("Forecast quality")
    b.add(
        "barchart", "MAE by horizon over the time range: model vs persistence and diurnal persistence",
        _targets((_mae("model", "horizon", "$__range"), "model", {"instant": True, "table": True}),
                 (_mae("persistence", "horizon", "$__range"), "persistence", {"instant": True, "table": True}),
                 (_mae("diurnal", "horizon", "$__range"), "diurnal", {"instant": True, "table": True})),
        w=12, h=9, unit="celsius",
        description="Mean absolute error of scored forecasts per horizon (hours), from stationcast_abs_error_celsius.",
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True},
                                           "renameByName": {"Value #A": "model", "Value #B": "persistence",
                                                            "Value #C": "diurnal persistence"}}},
            {"id": "convertFieldType", "options": {"conversions": [{"targetField": "horizon",
                                                                     "destinationType": "number"}]}},
            {"id": "sortBy", "options": {"sort": [{"field": "horizon", "desc": False}]}},
            {"id": "convertFieldType", "options": {"conversions": [{"targetField": "horizon",
                                                                     "destinationType": "string"}]}},
        ],
        options={"xField": "horizon", "orientation": "vertical", "groupWidth": 0.7, "barWidth": 0.9,
                 "showValue": "never", "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                 "tooltip": {"mode": "multi"}},
        overrides=[{"matcher": {"id": "byName", "options": "persistence"},
                    "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#8E8E8E"}}]},
                   {"matcher": {"id": "byName", "options": "diurnal persistence"},
                    "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#C4A35A"}}]},
                   {"matcher": {"id": "byName", "options": "model"},
                    "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#5794F2"}}]}],
    )
    b.timeseries(
        "MAE over time at +$horizon h",
        _targets((_mae("model", "horizon", RATE, 'horizon="$horizon", '), "model +{{horizon}} h"),
                 (_mae("persistence", "horizon", RATE, 'horizon="$horizon", '), "persistence +{{horizon}} h"),
                 (_mae("diurnal", "horizon", RATE, 'horizon="$horizon", '), "diurnal persistence +{{horizon}} h")),
        unit="celsius", w=12, h=9,
        overrides=[{"matcher": {"id": "byRegexp", "options": "^(diurnal )?persistence.*"},
                    "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#8E8E8E"}},
                                   {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}],
    )
    b.timeseries(
        "Rolling MAE by station",
        _targets((f'stationcast_rolling_mae_celsius{{station=~"$station", {JOB}}}', "{{station}} {{forecaster}}")),
        unit="celsius", w=8, h=9, legend_table=True,
        overrides=[{"matcher": {"id": "byRegexp", "options": ".* (persistence|diurnal)$"},
                    "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}],
    )
    b.timeseries(
        "Skill vs better baseline by station",
        _targets((f'stationcast_skill_vs_best_baseline{{station=~"$station", {JOB}}}', "{{station}}")),
        unit="percentunit", w=8, h=9, legend_table=True,
        description="1 - MAE(model)/MAE(better of persistence and diurnal persistence), rolling; below 0 the "
                    "model is worse than a naive forecast there (stationcast_skill_vs_persistence: persistence "
                    "alone).",
        defaults={"custom": {"lineWidth": 1, "fillOpacity": 0, "showPoints": "never", "spanNulls": True,
                             "thresholdsStyle": {"mode": "line"}},
                  "thresholds": {"mode": "absolute", "steps": _green_red(0, True)}},
    )
    b.add(
        "bargauge", "Skill vs better baseline by horizon over the time range",
        _targets((f'1 - ({_mae("model", "horizon", "$__range")}) / ({_best_baseline_mae("horizon", "$__range")})',
                  "+{{horizon}} h", {"instant": True})),
        w=8, h=9, unit="percentunit",
        description="1 - MAE(model)/MAE(better of persistence and diurnal persistence) at each horizon.",
        defaults={"min": -0.5, "max": 1, "thresholds": {"mode": "absolute", "steps": _green_red(0, True)}},
        options={"orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
                 "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    )
    b.timeseries(
        "P10-P90 band coverage by horizon",
        _targets((f'max by (horizon) (stationcast_band_coverage{{horizon=~"1|3|6|12|24|all", {JOB}}})',
                  "+{{horizon}} h")),
        unit="percentunit", w=24, h=8,
        description="Rolling fraction of actuals inside the published band (calibrated online per station from its "
                    "realized errors); nominal 80 %, green between 77 % and 83 %.",
        defaults={"custom": {"lineWidth": 1, "fillOpacity": 0, "showPoints": "never", "spanNulls": True,
                             "thresholdsStyle": {"mode": "area"}},
                  "thresholds": {"mode": "absolute", "steps": [
                      {"color": "transparent", "value": None}, {"color": "green", "value": 0.77},
                      {"color": "transparent", "value": 0.83}]}},
    )

    # --- throughput and lag -----------------------------------------------------------------------------
    b.row("Throughput and lag")
    b.timeseries(
        "Throughput",
        _targets(
            (f"sum(rate(stationcast_readings_consumed_total{{{JOB}}}[{RATE}]))", "consumed"),
            (f"sum(rate(stationcast_readings_accepted_total{{{JOB}}}[{RATE}]))", "accepted"),
            (f"sum(rate(stationcast_readings_rejected_total{{{JOB}}}[{RATE}]))", "rejected"),
            (f"sum(rate(stationcast_forecasts_total{{{JOB}}}[{RATE}]))", "forecasts"),
            (f"sum(rate(stationcast_errors_scored_total{{{JOB}}}[{RATE}]))", "errors scored"),
        ),
        unit="reqps", w=8, h=8,
        overrides=[{"matcher": {"id": "byName", "options": "rejected"},
                    "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#F2495C"}}]}],
    )
    b.timeseries(
        "Window outcomes of accepted readings",
        _targets((f"sum by (outcome) (rate(stationcast_window_readings_total{{{JOB}}}[{RATE}]))", "{{outcome}}"),
                 (f"sum(rate(stationcast_windows_not_ready_total{{{JOB}}}[{RATE}]))", "window not ready"),
                 (f"sum(rate(stationcast_windows_rebuilt_total{{{JOB}}}[{RATE}]))", "window rebuilt")),
        unit="reqps", w=8, h=8,
    )
    b.timeseries(
        "Consumer lag by partition",
        _targets((f"sum by (partition) (stationcast_consumer_lag{{{JOB}}})", "partition {{partition}}"),
                 (f"sum(rate(stationcast_rebalances_total{{{JOB}}}[{RATE}])) * 60", "rebalances / min")),
        unit="short", w=8, h=8, custom={"stacking": {"mode": "none"}},
    )
    b.timeseries(
        "Silence: seconds since the last reading",
        _targets((f'stationcast_seconds_since_reading{{station=~"$station", {JOB}}}', "{{station}}"),
                 (f"max(stationcast_max_seconds_since_reading{{{JOB}}})", "longest (all stations)")),
        unit="s", w=12, h=8, legend_table=True,
    )
    b.timeseries(
        "Dead letters by reason",
        _targets((f"sum by (reason) (rate(stationcast_readings_rejected_total{{{JOB}}}[{RATE}]))", "{{reason}}"),
                 (f"sum(rate(stationcast_deadletter_published_total{{{JOB}}}[{RATE}]))", "published to DLQ")),
        unit="reqps", w=12, h=8, custom={"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 40},
        overrides=[{"matcher": {"id": "byName", "options": "published to DLQ"},
                    "properties": [{"id": "custom.stacking", "value": {"mode": "none"}},
                                   {"id": "custom.fillOpacity", "value": 0},
                                   {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}],
    )

    # --- latency ----------------------------------------------------------------------------------------
    b.row("Latency")
    for title, metric in (("Inference (batched forward pass)", "stationcast_inference_seconds"),
                          ("Reading to forecast published", "stationcast_reading_to_forecast_seconds")):
        b.timeseries(
            title,
            _targets(*[(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{JOB}}}[{RATE}])))", f"p{p}")
                       for q, p in ((0.5, "50"), (0.95, "95"), (0.99, "99"))]),
            unit="s", w=9, h=8,
        )
    b.timeseries(
        "Stations per forward pass",
        _targets((f"sum(rate(stationcast_inference_batch_stations_sum{{{JOB}}}[{RATE}]))"
                  f" / sum(rate(stationcast_inference_batch_stations_count{{{JOB}}}[{RATE}]))", "mean"),
                 (f"sum(rate(stationcast_batches_total{{{JOB}}}[{RATE}]))", "consumer batches / s")),
        unit="short", w=6, h=8,
    )

    # --- model and retraining ---------------------------------------------------------------------------
    b.row("Model and retraining")
    b.add(
        "table", "Serving model",
        _targets((f"stationcast_model_info{{{JOB}}}", "", {"instant": True, "table": True})),
        w=8, h=7, description="Labels of stationcast_model_info, one row per replica.",
        transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True,
                                                                           "__name__": True}}}],
        options={"showHeader": True, "cellHeight": "sm"},
    )
    b.timeseries(
        "Champion version",
        _targets((f"max by (model) (stationcast_model_version{{{JOB}}})", "{{model}}")),
        unit="none", w=5, h=7, defaults={"decimals": 0},
        custom={"drawStyle": "line", "lineInterpolation": "stepAfter"},
    )
    b.timeseries(
        "Retraining runs and rollbacks",
        _targets((f"sum by (outcome) (increase(stationcast_retrain_runs_total{{{JOB}}}[{RATE}]))",
                  "retrain {{outcome}}"),
                 (f"sum(increase(stationcast_rollbacks_total{{{JOB}}}[{RATE}]))", "rollbacks")),
        unit="short", w=7, h=7, custom={"drawStyle": "bars", "fillOpacity": 80},
        overrides=[{"matcher": {"id": "byName", "options": "retrain failed"},
                    "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#F2495C"}}]},
                   {"matcher": {"id": "byName", "options": "rollbacks"},
                    "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#FF9830"}}]}],
    )
    b.stat("Since last successful retraining",
           _targets((f"time() - max(stationcast_retrain_last_success_timestamp_seconds{{{JOB}}} > 0)", "age")),
           unit="s", thresholds=_green_red(2 * 86400), w=4, h=7, options={"graphMode": "none"})
    b.layout.newline()
    b.timeseries(
        "Stations on their own fine-tuned model",
        _targets((f"sum(stationcast_station_models{{{JOB}}})", "station models")),
        unit="none", w=8, h=7, defaults={"decimals": 0},
        description="Stations served by a fine-tuned model of their own; every other station uses the global model.",
    )
    b.timeseries(
        "Station fine-tunings",
        _targets((f"sum by (outcome) (increase(stationcast_finetune_runs_total{{{JOB}}}[{RATE}]))",
                  "fine-tune {{outcome}}")),
        unit="short", w=8, h=7, custom={"drawStyle": "bars", "fillOpacity": 80},
        description="promoted: the station now has its own model; rejected: it did not beat the global model on "
                    "the station's holdout (kept, retried later); failed: see the service log.",
        overrides=[{"matcher": {"id": "byName", "options": "fine-tune failed"},
                    "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#F2495C"}}]}],
    )

    return {
        "uid": UID,
        "title": "stationcast",
        "description": "Streaming station forecasts: quality vs persistence, throughput, lag, latency, lifecycle.",
        "tags": ["stationcast", "forecasting", "kafka"],
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "links": [],
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "templating": {"list": _variables()},
        "annotations": {"list": _annotations()},
        "panels": b.panels,
    }


def _walk_exprs(dashboard: dict) -> list[str]:
    exprs = [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            exprs.append(t["expr"])
    return exprs


def substitute(expr: str) -> str:
    """Replace Grafana variables by concrete values (see :data:`SUBSTITUTIONS`)."""
    for var in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(var, SUBSTITUTIONS[var])
    if "$" in expr:
        raise ValueError(f"unsubstituted Grafana variable in {expr!r}")
    return expr


def all_queries(raw: bool = False) -> list[str]:
    """Every PromQL expression of the dashboard (targets and annotations), deduplicated, in order.

    By default Grafana variables are substituted (``$__rate_interval`` -> 5m, ``$station`` -> .*, ...) so each
    expression runs against Prometheus as is; ``raw=True`` returns them as written in the dashboard.
    """
    seen: dict[str, None] = {}
    for e in _walk_exprs(build()):
        seen.setdefault(e if raw else substitute(e), None)
    return list(seen)


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--check", action="store_true", help="fail when the file differs from what this builds")
    p.add_argument("--queries", action="store_true", help="print every PromQL expression, one per line")
    args = p.parse_args(argv)
    if args.queries:
        print("\n".join(all_queries()))
        return 0
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run python deploy/dashboard.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(build()['panels'])} panels, {len(all_queries())} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
