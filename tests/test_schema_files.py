"""Bring your own station files: YAML schema files, derived sensors, time sanity checks and ``stationcast inspect``.

Each fixture is a real record from ../shared/data rewritten into another network's layout (a `;`-separated
German export, a multi-site file with year/month/day/hour columns, a US file in °F, mph and inHg, a wide
file with one column per station and sensor). Read back through a schema file it must give the same
cleaned series as the original file; derived sensors (dew point, humidity) agree to a tolerance.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecaster.clean import CleanConfig, clean_station, load_stations
from forecaster.data import DataError, load_records
from forecaster.dataset import DataConfig, make_splits
from forecaster.inspection import ServingModel, inspect_file
from forecaster.registry import Registry
from forecaster.schema_file import SchemaError, load_schema_file
from pipeline.cli import main
from pipeline.pretrained import ensure_champion
from tests.conftest import shared_file

ROWS = 2200  # about three months of hourly readings: enough for a window, fast to read
NOAA = "noaa_{}_2010_2016_hourly.csv.gz"
JENA_TIME = "%d.%m.%Y %H:%M:%S"


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("stationcast")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]


def stationcast(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*_cli(), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def one_line_error(res: subprocess.CompletedProcess) -> str:
    """The run failed as bad input must: exit 2, a single line on stderr, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert len(lines[0]) < 1000, lines[0][:300]
    return lines[0]


def original(name: str) -> pd.DataFrame:
    """The first ROWS rows of a shared record in its own (Jena) layout, with the time parsed."""
    frame = pd.read_csv(shared_file(name), nrows=ROWS)
    frame["time"] = pd.to_datetime(frame["Date Time"], format=JENA_TIME)
    return frame


def write_original(frame: pd.DataFrame, path: Path) -> Path:
    frame.drop(columns="time").to_csv(path, index=False)
    return path


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_same_series(got, want, derived: dict[str, float] | None = None, atol: float = 1e-9) -> None:
    """Cleaned series equal on the common grid: measured sensors to ``atol``, derived ones to their tolerance."""
    derived = derived or {}
    assert got.cadence == want.cadence
    assert got.frame.index.equals(want.frame.index)
    for name in want.frame.columns:
        if name not in got.frame:
            continue
        a, b = got.frame[name].to_numpy(), want.frame[name].to_numpy()
        assert (np.isnan(a) == np.isnan(b)).all(), name
        assert np.nanmax(np.abs(a - b)) <= derived.get(name, atol), (name, np.nanmax(np.abs(a - b)))
    for name in derived:
        assert name in got.frame and got.report[f"derived_{name}"] > 0.9 * len(got.frame)


# --- the layouts ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def german(tmp_path_factory):
    """`;`-separated, decimal commas, dd.mm.yyyy HH:MM, no dew point (from the Jena hourly record)."""
    d = tmp_path_factory.mktemp("german")
    jena = original("jena_2009_2016_hourly.csv.gz")
    export = pd.DataFrame({
        "Datum": jena["time"].dt.strftime("%d.%m.%Y %H:%M"), "TT_TU": jena["T (degC)"], "RF_TU": jena["rh (%)"],
        "FF": jena["wv (m/s)"], "P": jena["p (mbar)"],
    })
    export.to_csv(d / "export.csv", sep=";", decimal=",", index=False)
    schema = write_yaml(d / "dwd.yaml", """\
name: dwd
station: jena
separator: ";"
decimal: ","
time_column: Datum
time_format: "%d.%m.%Y %H:%M"
sensors: {T: TT_TU, rh: RF_TU, wv: FF, p: P}
""")
    return d / "export.csv", schema, write_original(jena, d / "jena.csv")


@pytest.fixture(scope="module")
def multisite(tmp_path_factory):
    """year/month/day/hour columns, a station column, no humidity (two NOAA stations stacked)."""
    d = tmp_path_factory.mktemp("multisite")
    parts, originals = [], {}
    for site, key in (("chicago", "chicago_ohare"), ("denver", "denver")):
        noaa = original(NOAA.format(key))
        originals[site] = write_original(noaa, d / f"{site}.csv")
        t = noaa["time"]
        parts.append(pd.DataFrame({
            "No": range(1, len(noaa) + 1), "year": t.dt.year, "month": t.dt.month, "day": t.dt.day, "hour": t.dt.hour,
            "TEMP": noaa["T (degC)"], "PRES": noaa["p (mbar)"], "DEWP": noaa["Tdew (degC)"],
            "WSPM": noaa["wv (m/s)"], "station": site,
        }))
    pd.concat(parts).to_csv(d / "multisite.csv", index=False)
    schema = write_yaml(d / "sites.yaml", """\
station_column: station
time_columns: [year, month, day, hour]
sensors: {T: TEMP, Tdew: DEWP, p: PRES, wv: WSPM}
""")
    return d / "multisite.csv", schema, originals


@pytest.fixture(scope="module")
def imperial(tmp_path_factory):
    """°F, mph and inHg with ISO UTC times (NOAA Denver), to be converted back."""
    d = tmp_path_factory.mktemp("imperial")
    noaa = original(NOAA.format("denver"))
    export = pd.DataFrame({
        "DATE": noaa["time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "TMP_F": (noaa["T (degC)"] * 9 / 5 + 32).round(3), "DEWP_F": (noaa["Tdew (degC)"] * 9 / 5 + 32).round(3),
        "RHUM": noaa["rh (%)"], "WSPD_MPH": (noaa["wv (m/s)"] / 0.44704).round(3),
        "SLP_INHG": (noaa["p (mbar)"] / 33.8639).round(4),
    })
    export.to_csv(d / "us.csv", index=False)
    schema = write_yaml(d / "us.yaml", """\
station: denver
time_column: DATE
utc: true
sensors: {T: TMP_F, Tdew: DEWP_F, rh: RHUM, wv: WSPD_MPH, p: SLP_INHG}
units: {T: degF, Tdew: °F, wv: mph, p: inHg}
""")
    return d / "us.csv", schema, write_original(noaa, d / "denver.csv")


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """One column per station and sensor (Great Falls and Rapid City side by side), no dew point."""
    d = tmp_path_factory.mktemp("wide")
    frames, originals = [], {}
    for site, key in (("greatfalls", "great_falls"), ("rapidcity", "rapid_city")):
        noaa = original(NOAA.format(key))
        originals[site] = write_original(noaa, d / f"{site}.csv")
        frames.append(noaa.set_index("time")[["T (degC)", "rh (%)", "wv (m/s)"]].rename(
            columns={"T (degC)": f"T_{site}", "rh (%)": f"rh_{site}", "wv (m/s)": f"ff_{site}"}))
    joined = pd.concat(frames, axis=1).sort_index()
    joined.index = joined.index.strftime("%Y-%m-%d %H:%M")
    joined.rename_axis("time").to_csv(d / "wide.csv")
    schema = write_yaml(d / "wide.yaml", """\
time_column: time
stations: [greatfalls, rapidcity]
sensors: {T: "T_{station}", rh: "rh_{station}", wv: "ff_{station}"}
""")
    return d / "wide.csv", schema, originals


# --- each layout loads from the CLI and from Python, same series as the original ------------------------------


def _inspect_json(tmp_path: Path, *args) -> dict:
    res = stationcast("inspect", "--json", "--registry", tmp_path / "empty-registry", *args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    return json.loads(res.stdout)


def _reference(path: Path) -> dict:
    """The original file's report, in process (the CLI prints the same function's output)."""
    return inspect_file(path)["stations"][0]


def _same_report(got: dict, want: dict) -> None:
    for key in ("readings", "span", "cadence_s", "steps", "missing_steps", "gaps", "out_of_range"):
        assert got[key] == want[key], key


def test_semicolon_export_without_dew_point(german, tmp_path):
    export, schema, reference = german
    got = load_stations(export, schema)[0]
    want = clean_station(load_records(reference))
    assert_same_series(got, want, derived={"Tdew": 0.15})
    report = _inspect_json(tmp_path, "--schema", schema, export)
    assert report["derived"] == {"Tdew": "from T and rh (Magnus)"} and inspect_file(reference)["derived"] == {}
    assert report["rows"] == ROWS and report["stations"][0]["station"] == "jena"
    _same_report(report["stations"][0], _reference(reference))
    assert report["can_forecast"], report["stations"][0]["why_not"]


def test_year_month_day_hour_columns_without_humidity(multisite, tmp_path):
    export, schema, originals = multisite
    records = load_records(export, schema)
    assert records.attrs["derived"] == {"rh": "from T and Tdew (Magnus)"}
    by_role = write_yaml(export.parent / "by-role.yaml", schema.read_text().replace(
        "time_columns: [year, month, day, hour]", "time_columns: {hour: hour, day: day, month: month, year: year}"))
    pd.testing.assert_frame_equal(load_records(export, by_role), records)
    report = _inspect_json(tmp_path, "--schema", schema, export)
    assert [s["station"] for s in report["stations"]] == list(originals)
    for site, path in originals.items():
        assert_same_series(clean_station(records, station=site), clean_station(load_records(path)),
                           derived={"rh": 0.2})
        _same_report(next(s for s in report["stations"] if s["station"] == site), _reference(path))


def test_fahrenheit_mph_inhg(imperial, tmp_path):
    export, schema, reference = imperial
    got = load_stations(export, schema)[0]
    want = clean_station(load_records(reference))
    for name, tol in {"T": 1e-3, "Tdew": 1e-3, "wv": 1e-3, "p": 2e-3, "rh": 1e-9}.items():
        assert np.nanmax(np.abs(got.frame[name] - want.frame[name])) <= tol, name
    assert got.frame.index.equals(want.frame.index)
    report = _inspect_json(tmp_path, "--schema", schema, export)
    _same_report(report["stations"][0], _reference(reference))
    assert report["derived"] == {}


def test_wide_multi_station_file(wide, tmp_path):
    export, schema, originals = wide
    report = _inspect_json(tmp_path, "--schema", schema, export)
    assert [s["station"] for s in report["stations"]] == list(originals)
    assert report["derived"] == {"Tdew": "from T and rh (Magnus)"}
    for site, path in originals.items():
        got = load_stations(export, schema, stations=[site])[0]
        assert_same_series(got, clean_station(load_records(path)), derived={"Tdew": 0.15})
        _same_report(next(s for s in report["stations"] if s["station"] == site), _reference(path))
    # The same file declared station by station (the mapping form) reads the same.
    mapping = write_yaml(tmp_path / "wide-map.yaml", "time_column: time\nstations:\n" + "".join(
        f"  {s}: {{T: T_{s}, rh: rh_{s}, wv: ff_{s}}}\n" for s in originals))
    a, b = load_records(export, schema), load_records(export, mapping)
    pd.testing.assert_frame_equal(a, b)


def test_builtin_jena_layout_needs_only_what_the_model_uses(tmp_path):
    """The Jena layout without VPmax, p and Tdew: loads, Tdew derived, the shipped model can forecast it."""
    jena = original("jena_2009_2016_hourly.csv.gz")
    slim = write_original(jena[["Date Time", "T (degC)", "rh (%)", "wv (m/s)", "time"]], tmp_path / "slim.csv")
    got = load_stations(slim)[0]
    want = clean_station(load_records(write_original(jena, tmp_path / "full.csv")))
    assert_same_series(got, want, derived={"Tdew": 0.15})
    assert "p" not in got.frame and "VPmax" not in got.frame
    report = _inspect_json(tmp_path, slim)
    assert report["can_forecast"], report["stations"][0]["why_not"]


# --- errors: one line, exit 2 ---------------------------------------------------------------------------------


BAD_SCHEMAS = {
    "unknown key": ("station: x\ntime_column: Datum\nseperator: ';'\nsensors: {T: TT_TU}\n",
                    ["seperator", "did you mean 'separator'", "allowed:"]),
    "unknown sensor": ("station: x\nseparator: ';'\ntime_column: Datum\nsensors: {temp: TT_TU}\n",
                       ["sensors.temp", "unknown sensor", "allowed:", "Tdew"]),
    "unknown unit": ("station: x\nseparator: ';'\ntime_column: Datum\nsensors: {T: TT_TU}\nunits: {T: celsius}\n",
                     ["units.T", "unknown unit 'celsius'", "degF"]),
    "missing column": ("station: x\nseparator: ';'\ntime_column: Datum\nsensors: {T: TEMP_C}\n",
                       ["column 'TEMP_C'", "sensors.T", "TT_TU"]),
}
MORE_BAD_SCHEMAS = {
    "unit of another quantity": ("station: x\nseparator: ';'\ntime_column: Datum\nsensors: {T: TT_TU}\n"
                                 "units: {T: mph}\n", ["units.T", "not a unit of T", "degC"]),
    "missing time column": ("station: x\nseparator: ';'\ntime_column: Zeit\nsensors: {T: TT_TU}\n",
                            ["'Zeit'", "time_column"]),
    "sensors not a mapping": ("station: x\nseparator: ';'\ntime_column: Datum\nsensors: [T, rh]\n",
                              ["sensors", "mapping"]),
    "bad type": ("station: x\nseparator: ';'\ntime_column: Datum\nutc: yes please\nsensors: {T: TT_TU}\n",
                 ["utc", "true or false"]),
    "unknown time role": ("station: x\nseparator: ';'\ntime_columns: [year, month, dag]\nsensors: {T: TT_TU}\n",
                          ["time_columns", "'dag'", "year, month, day, hour"]),
    "no time": ("station: x\nseparator: ';'\nsensors: {T: TT_TU}\n", ["time_column", "exactly one"]),
    "not YAML": ("station: [x\n", ["line 2", "not valid YAML"]),
    "bad separator": ("station: x\nseparator: ';;'\ntime_column: Datum\nsensors: {T: TT_TU}\n",
                      ["separator", "one character"]),
    "units of an undeclared sensor": ("station: x\nseparator: ';'\ntime_column: Datum\nsensors: {T: TT_TU}\n"
                                      "units: {wv: mph}\n", ["units.wv", "not a declared sensor"]),
}


def test_bad_schema_is_one_line_from_every_command(german, tmp_path, capsys):
    """Each bad schema from the real console script; the commands that read station files all refuse it."""
    export, _, _ = german
    registry = tmp_path / "registry"
    ensure_champion(Registry(registry), "global")
    for i, (text, expected) in enumerate(BAD_SCHEMAS.values()):
        schema = write_yaml(tmp_path / f"bad{i}.yaml", text)
        line = one_line_error(stationcast("inspect", export, "--schema", schema, cwd=tmp_path))
        assert all(word in line for word in expected), (expected, line)
    # The other commands that read station files take the same --schema (in process: the same main()).
    commands = {
        "train": ["--data", export, "--epochs", "1"],
        "evaluate": ["--data", export, "--registry", registry],
        "finetune": ["--data", export, "--registry", registry],
        "replay": ["--data", export, "--bootstrap-servers", "127.0.0.1:1"],
        "run": ["--data", export, "--registry", registry, "--store-url", f"sqlite:///{tmp_path}/s.db"],
    }
    capsys.readouterr()  # seeding the registry above may have logged (when an earlier test configured logging)
    for command, args in commands.items():
        assert main([command, *map(str, args), "--schema", str(tmp_path / "bad0.yaml")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"stationcast {command}: error:") and "seperator" in err and "\n" not in err, err


@pytest.mark.parametrize("case", list(MORE_BAD_SCHEMAS))
def test_more_bad_schemas_in_process(german, tmp_path, capsys, case):
    export, _, _ = german
    text, expected = MORE_BAD_SCHEMAS[case]
    schema = write_yaml(tmp_path / "bad.yaml", text)
    assert main(["inspect", str(export), "--schema", str(schema), "--registry", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and all(word in err for word in expected), (expected, err)


def test_time_column_year_on_hourly_data_is_refused(multisite, tmp_path):
    export, _, _ = multisite
    schema = write_yaml(tmp_path / "year.yaml",
                        "station_column: station\ntime_column: year\nsensors: {T: TEMP, Tdew: DEWP}\n")
    line = one_line_error(stationcast("inspect", "--schema", schema, export, cwd=tmp_path))
    assert "repeated timestamps" in line and "'year'" in line and "line 3: '2010'" in line
    with pytest.raises(DataError, match="repeated timestamps"):
        load_records(export, schema)


def test_cadence_over_a_day_and_backwards_time_are_refused(tmp_path, capsys):
    jena = original("jena_2009_2016_hourly.csv.gz")
    weekly = write_original(jena.iloc[::168], tmp_path / "weekly.csv")
    line = one_line_error(stationcast("inspect", weekly, cwd=tmp_path))
    assert "more than a day" in line and "7 days" in line and "line 2" in line
    # Rows in no time order (a spreadsheet sorted by temperature): the time column cannot be right.
    scrambled = write_original(jena.sort_values("T (degC)", kind="stable"), tmp_path / "scrambled.csv")
    assert main(["inspect", str(scrambled)]) == 2
    err = capsys.readouterr().err.strip()
    assert "goes back and forth" in err and "e.g. line" in err and "\n" not in err
    # Newest first is an order, not an error: the same series as oldest first.
    newest_first = write_original(jena.iloc[::-1], tmp_path / "newest_first.csv")
    reference = write_original(jena, tmp_path / "oldest_first.csv")
    assert_same_series(clean_station(load_records(newest_first)), clean_station(load_records(reference)))


def test_too_short_series(tmp_path):
    jena = original("jena_2009_2016_hourly.csv.gz")
    short = write_original(jena.iloc[:100], tmp_path / "short.csv")
    registry = tmp_path / "registry"
    champion = ensure_champion(Registry(registry), "global")
    report = inspect_file(short, model=ServingModel(champion.tag, Registry(registry).card("global", champion.version)))
    card = Registry(registry).card("global", champion.version)
    window = card.data.lookback + max(card.data.horizons)
    assert report["stations"][0]["why_not"] == [f"too short: 100 steps, one window needs {window}"]
    line = one_line_error(stationcast("evaluate", "--registry", registry, "--data", short, "--plots",
                                      tmp_path / "plots", cwd=tmp_path))
    assert "shorter than one window" in line and "100 steps" in line
    with pytest.raises(DataError, match="shorter than one window"):
        make_splits([clean_station(load_records(short))], card.data)


def test_missing_sensor_names_it_and_the_model(tmp_path, capsys):
    jena = original("jena_2009_2016_hourly.csv.gz")
    only_t = write_original(jena[["Date Time", "T (degC)", "wv (m/s)", "time"]], tmp_path / "t.csv")
    registry = tmp_path / "registry"
    champion = ensure_champion(Registry(registry), "global")
    line = one_line_error(stationcast("evaluate", "--registry", registry, "--data", only_t, cwd=tmp_path))
    assert f"model {champion.tag}" in line and "Tdew (can be derived from T and rh)" in line and "rh" in line
    report = inspect_file(only_t, model=ServingModel(champion.tag, Registry(registry).card("global", 1)))
    assert not report["can_forecast"]
    assert any("missing sensor Tdew" in r for r in report["stations"][0]["why_not"])
    capsys.readouterr()  # what seeding the registry logged above
    assert main(["train", "--data", str(only_t), "--features", "T,rh", "--registry", str(registry)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--features" in err and "rh" in err and "\n" not in err
    # run checks the serving model's sensors from the header before it starts anything.
    assert main(["run", "--data", str(only_t), "--registry", str(registry), "--store-url",
                 f"sqlite:///{tmp_path}/run.db", "--http-port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"model {champion.tag}" in err and "no sensor Tdew" in err and "\n" not in err
    assert not (tmp_path / "run.db").exists()


def test_missing_dew_point_through_the_api_is_not_a_key_error(tmp_path):
    jena = original("jena_2009_2016_hourly.csv.gz")
    only_t = clean_station(load_records(write_original(jena[["Date Time", "T (degC)", "time"]], tmp_path / "t.csv")))
    with pytest.raises(DataError, match="no sensor Tdew"):
        make_splits([only_t], DataConfig(features=("T", "Tdew"), lookback=48))
    with pytest.raises(DataError, match="Tdew.*needs"):
        load_records(tmp_path / "t.csv", needs=("T", "Tdew"), needed_by="my model")


def test_over_long_csv_field_is_one_line(tmp_path):
    """A field over the csv module's 131,072-character limit: file, line and column, no traceback."""
    jena = original("jena_2009_2016_hourly.csv.gz").iloc[:300]
    path = write_original(jena, tmp_path / "long.csv")
    text = path.read_text().splitlines()
    header = text[0].split(",")
    header[3] = "x" * 200_000
    (tmp_path / "long_header.csv").write_text("\n".join([",".join(header), *text[1:]]) + "\n")
    line = one_line_error(stationcast("inspect", "--schema", "jena", tmp_path / "long_header.csv", cwd=tmp_path))
    assert "long_header.csv: line 1, column 4" in line
    row = text[5].split(",")
    row[2] = "9" * 200_000
    text[5] = ",".join(row)
    (tmp_path / "long_row.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"long_row.csv: line 6, column 3 .*200,000 characters") as err:
        load_records(tmp_path / "long_row.csv")
    assert len(str(err.value)) < 300


def test_schema_file_api_errors_name_the_file(tmp_path):
    with pytest.raises(SchemaError, match="cannot read"):
        load_schema_file(tmp_path / "missing.yaml")
    bad = write_yaml(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(SchemaError, match="list.yaml: expected a mapping"):
        load_schema_file(bad)


def test_inspect_reports_what_it_finds(tmp_path, capsys):
    """Sentinels, out-of-range values, gaps and duplicates planted in a real record are all counted."""
    jena = original("jena_2009_2016_hourly.csv.gz").iloc[:1000].reset_index(drop=True)
    jena.loc[[10, 20, 30], "wv (m/s)"] = -9999.0  # sentinels
    jena.loc[[40, 50], "rh (%)"] = 140.0  # out of range
    gap = list(range(500, 512))  # 12 hours without a reading
    dup = jena.iloc[[700]]
    planted = pd.concat([jena.drop(index=gap), dup]).sort_index(kind="stable")
    path = write_original(planted, tmp_path / "planted.csv")
    report = _inspect_json(tmp_path, path)
    s = report["stations"][0]
    assert report["rows"] == len(planted) and s["readings"] == len(planted)
    assert report["sentinels"] == {"wv": 3}
    assert s["out_of_range"] == {"rh": 2}
    assert s["duplicates_dropped"] == 1
    assert s["gaps"] == 1 and s["longest_gap_s"] == 12 * 3600
    assert s["missing_steps"] == 12
    assert s["span"] == [str(jena["time"].iloc[0]), str(jena["time"].iloc[-1])]
    assert s["cadence_s"] == 3600
    assert main(["inspect", "--registry", str(tmp_path / "empty"), str(path)]) == 0
    text = capsys.readouterr().out
    assert "sentinels   wv: 3" in text and "rh: 2" in text and "can forecast" in text


def test_readme_schema_files_load_their_example_rows(tmp_path):
    """The README's worked schema files parse and read the example rows printed above them."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Your own stations", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")
    yamls = [b.removeprefix("yaml\n") for b in blocks[1::2] if b.startswith("yaml\n")]
    samples = [b.strip("\n") for b in blocks[1::2] if not b.startswith(("yaml", "bash")) and "," in b and "$" not in b]
    assert len(yamls) == 2 and len(samples) == 2
    for text, sample in zip(yamls, samples, strict=True):
        schema = load_schema_file(write_yaml(tmp_path / "s.yaml", text))
        data = tmp_path / "sample.csv"
        data.write_text(sample + "\n")
        records = load_records(data, schema)
        assert len(records) == len(sample.splitlines()) - 1
        assert {"T", "Tdew", "rh"} <= set(records.columns) and records.attrs["derived"]


def test_inspect_says_why_the_model_cannot_forecast(tmp_path):
    """Another cadence than the model's, and a file too gappy for one complete window, are named."""
    champion = ensure_champion(Registry(tmp_path / "registry"), "global")
    card = Registry(tmp_path / "registry").card("global", champion.version)
    model = ServingModel(champion.tag, card)
    ten_min = pd.read_csv(shared_file("jena_2020_10min.csv.gz"), nrows=3000, encoding="latin-1")
    ten_min.to_csv(tmp_path / "ten_min.csv", index=False, encoding="latin-1")
    report = inspect_file(tmp_path / "ten_min.csv", model=model)
    hours = card.cadence_s // 3600
    assert report["stations"][0]["why_not"] == [f"cadence 10min differs from the model's {hours}h"]
    jena = original("jena_2009_2016_hourly.csv.gz")
    gappy = jena.drop(index=jena.index[::100])  # a reading missing every 100 hours: runs of 99 complete steps
    no_fill = CleanConfig(max_fill_steps=0)
    report = inspect_file(write_original(gappy, tmp_path / "gappy.csv"), model=model, config=no_fill)
    window = card.data.lookback + max(card.data.horizons)
    assert report["stations"][0]["why_not"] == [f"too gappy: the longest complete stretch is 99 steps, one window "
                                                f"needs {window}"]


def test_inspect_judges_each_station_by_the_champion_of_its_cadence(tmp_path):
    """A 10-minute file is judged by the 10-minute champion, as the service routes it (it was judged by the hourly
    model alone and called unforecastable); a cadence no champion serves is named with the ones served."""
    ten_min = pd.read_csv(shared_file("jena_2020_10min.csv.gz"), nrows=3000, encoding="latin-1")
    ten_min.to_csv(tmp_path / "ten_min.csv", index=False, encoding="latin-1")
    report = _inspect_json(tmp_path, tmp_path / "ten_min.csv")
    assert [m["cadence_s"] for m in report["models"]] == [3600, 600]
    station = report["stations"][0]
    assert station["cadence_s"] == 600 and station["model"] == "the shipped global-10min"
    assert station["can_forecast"] and report["can_forecast"], station["why_not"]
    half_hourly = ten_min.iloc[::3]
    half_hourly.to_csv(tmp_path / "half_hourly.csv", index=False, encoding="latin-1")
    station = _inspect_json(tmp_path, tmp_path / "half_hourly.csv")["stations"][0]
    assert station["why_not"] == ["cadence 30min: no model here serves it (they serve 1h, 10min)"]
    text = stationcast("inspect", "--registry", tmp_path / "empty-registry", tmp_path / "ten_min.csv",
                       cwd=tmp_path).stdout
    assert "can forecast (by the shipped global-10min)" in text
    # The file's unit characters are UTF-8 (stored as U+FFFD); the report shows them as written, not as mojibake.
    assert "SWDR <- 'SWDR (W/m\ufffd)'" in text and "\u00ef" not in text
