"""What the terminal shows: a normal `stationcast run` is quiet (no ERROR, no Kafka client chatter), tables
stay aligned for long station ids, and every --help renders what it means."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from forecaster.artifact import load_artifact
from forecaster.data import nycflights_weather_path
from forecaster.registry import Registry, station_model_name
from pipeline.cli import build_parser
from pipeline.pretrained import shipped_artifact

ROOT = Path(__file__).resolve().parents[1]
STATIONCAST = str(Path(sys.executable).parent / "stationcast")
LONG_ID = "NEW-YORK-JFK-INTERNATIONAL-AIRPORT-ASOS-STATION-0001"  # longer than any fixed column


def columns_end(header: str, names: list[str]) -> list[int]:
    return [header.index(n) + len(n) for n in names]


def test_run_is_quiet_and_its_summary_is_aligned_for_long_ids(tmp_path):
    weather = pd.read_csv(nycflights_weather_path())
    weather = weather[weather["origin"].isin(["JFK", "LGA"])].replace({"origin": {"JFK": LONG_ID}})
    data = tmp_path / "weather.csv"
    weather.to_csv(data, index=False)
    res = subprocess.run(
        [STATIONCAST, "run", "--data", str(data), "--limit", "1000", "--speedup", "0", "--http-port", "0",
         "--store-url", f"sqlite:///{tmp_path}/store.db", "--registry", str(tmp_path / "registry")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stderr.splitlines()
    assert not [ln for ln in lines if " ERROR " in ln or "Traceback" in ln], res.stderr[-3000:]
    assert not [ln for ln in lines if re.search(r" (INFO|DEBUG) kafka", ln)], res.stderr[-3000:]
    assert any(" INFO stationcast.service: serving global@v1" in ln for ln in lines)  # our own INFO stays
    # The summaries (per station, then per horizon): every row's numbers end where their header ends, whatever
    # the station id's length; the model beside both baselines, skill vs the better one and the band's coverage.
    columns = ["model MAE", "persistence", "diurnal pers.", "skill vs better", "P10-P90 coverage"]
    for first, keys in (("station", sorted([LONG_ID, "LGA"]) + ["all"]), ("horizon", ["+1", "+3", "+6", "+12",
                                                                                      "+24", "all"])):
        start = next(i for i, ln in enumerate(lines) if ln.startswith(first) and "model MAE" in ln)
        header, rows = lines[start], lines[start + 1:start + 1 + len(keys)]
        assert [r.split()[0] for r in rows] == keys, lines[start:]
        ends = columns_end(header, columns)
        for row in rows:
            assert [m.end() for m in re.finditer(r"[-+]?\d+\.\d+ °C|[-+]?\d+%", row)] == ends, (header, row)


@pytest.fixture
def registry_with_long_station(tmp_path) -> str:
    """The shipped model registered as the champion of a station with a long id (as tune-stations does)."""
    registry = Registry(tmp_path / "registry")
    model, card = load_artifact(shipped_artifact("global"))
    card = dataclasses.replace(card, stations=[LONG_ID], metrics={"holdout_mae": 1.5, "base_holdout_mae": 1.7})
    name = station_model_name(LONG_ID)
    info = registry.register(name, model, card, note="fine-tuned")
    registry.promote(name, info.version)
    return str(registry.root)


def test_models_tables_are_aligned_for_long_station_ids(registry_with_long_station, tmp_path):
    res = subprocess.run([STATIONCAST, "models", "list", "--registry", registry_with_long_station],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    listing, serving = res.stdout.split("\n\n")
    head, *rows = listing.splitlines()
    status_at = head.index("status")
    assert {r[status_at:].split()[0] for r in rows} == {"champion"}, listing
    assert {r.split()[0] for r in rows} == {f"{station_model_name(LONG_ID)}@v1", "global@v1"}  # seeded
    arch_at = head.index("architecture")
    assert {r[arch_at:].split()[0] for r in rows} == {"conv_gru"}, listing  # read from each version's card
    head, *rows = serving.splitlines()
    by_at, own_end = head.index("served by"), columns_end(head, ["holdout MAE"])[0]
    assert [r[by_at:].split()[0] for r in rows] == [f"{station_model_name(LONG_ID)}@v1", "global@v1"], serving
    assert rows[0].startswith(LONG_ID + " ") and rows[0][:own_end].endswith("1.500"), serving


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, nested ones (models list, ...) included, by its full name."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = sub
                out |= {f"{name} {k}": v for k, v in _subparsers(sub).items()}
    return out


def test_every_help_renders_without_escapes_and_says_what_the_command_does():
    parser = build_parser()
    helps = {name: sub.format_help() for name, sub in _subparsers(parser).items()}
    helps["stationcast"] = parser.format_help()
    assert {"train", "evaluate", "finetune", "models list", "models serving", "run", "replay"} <= set(helps)
    for name, text in helps.items():
        assert "%%" not in text and "%(" not in text, name
    assert "train one model" not in helps["evaluate"]
    assert "the last 20% of" in helps["finetune"] and "the last 20% of" in helps["evaluate"]
    for name in ("train", "evaluate", "finetune"):
        for flag in ("--train-until", "--test-from", "--test-until"):
            assert flag in helps[name], (name, flag)
    for name in ("evaluate", "finetune"):
        assert "--json" in helps[name] and "var/registry" in helps[name]
    assert "--verbose" in helps["stationcast"]


def test_verbose_counts_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["models", "list"]).verbose == 0
    assert parser.parse_args(["-vv", "models", "list"]).verbose == 2
    assert parser.parse_args(["-v", "run"]).verbose == 1
    assert parser.parse_args(["run", "-v"]).verbose == 1  # `make run ARGS=-v`
    assert parser.parse_args(["models", "list", "-vv"]).verbose == 2
