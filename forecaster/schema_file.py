"""A :class:`~forecaster.schema.Schema` written as a YAML file, so a new network's export needs no Python.

Every key is checked: a typo, an unknown sensor or unit, or a value of the wrong type is one error that
names the key and what is allowed (the README's "Your own stations" shows worked files).
"""

from __future__ import annotations

import codecs
import difflib
from pathlib import Path
from typing import Any

import yaml

from forecaster.schema import SENSOR_RANGES, SENSOR_UNITS, TIME_ROLES, Schema

KEYS = (
    "name", "station", "station_column", "stations", "time_column", "time_columns", "time_format", "utc",
    "sensors", "units", "sentinels", "na_values", "encoding", "separator", "decimal",
)
UNIT_ALIASES = {"°C": "degC", "C": "degC", "°F": "degF", "F": "degF", "kn": "knots", "kt": "knots",
                "kph": "km/h", "hpa": "hPa"}
ALL_UNITS = ("degC", "degF", "K", "m/s", "mph", "knots", "km/h", "mbar", "hPa", "inHg", "%", "raw")


class SchemaError(ValueError):
    """A schema file that cannot be used; the message names the file and the key."""


def _allowed(options) -> str:
    return ", ".join(map(str, options))


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Reader:
    def __init__(self, path: Path, doc: dict):
        self.path, self.doc = path, doc

    def fail(self, key: str, message: str) -> SchemaError:
        return SchemaError(f"{self.path}: {key}: {message}")

    def text(self, key: str, value: Any = None) -> str | None:
        value = self.doc.get(key) if value is None else value
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(key, f"expected a text, got {value!r}")
        return str(value)

    def column_map(self, key: str, value: Any) -> dict[str, str]:
        """sensor -> column, sensors from SENSOR_RANGES."""
        if not isinstance(value, dict) or not value:
            raise self.fail(key, f"expected a mapping of sensor to column, e.g. {{T: temp_c}}, got {value!r}")
        out = {}
        for sensor, column in value.items():
            if sensor not in SENSOR_RANGES:
                raise self.fail(f"{key}.{sensor}", f"unknown sensor{_suggest(str(sensor), SENSOR_RANGES)} "
                                                   f"(allowed: {_allowed(SENSOR_RANGES)})")
            out[str(sensor)] = self.text(f"{key}.{sensor}", column)
            if not out[str(sensor)]:
                raise self.fail(f"{key}.{sensor}", "expected a column name")
        return out


def _time_columns(r: _Reader, value: Any) -> dict[str, str]:
    """A list of columns named by their role (``[year, month, day, hour]``) or a mapping role -> column."""
    if isinstance(value, list):
        pairs = {}
        for column in value:
            role = str(column).strip().lower()
            if role not in TIME_ROLES:
                raise r.fail("time_columns", f"{column!r} is not a time role (allowed: {_allowed(TIME_ROLES)}); "
                                             "for other column names use a mapping, e.g. {year: Jahr, month: Monat}")
            pairs[role] = str(column)
    elif isinstance(value, dict):
        pairs = {}
        for role, column in value.items():
            if role not in TIME_ROLES:
                raise r.fail(f"time_columns.{role}", f"unknown time role (allowed: {_allowed(TIME_ROLES)})")
            pairs[role] = r.text(f"time_columns.{role}", column)
    else:
        raise r.fail("time_columns", f"expected a list like [year, month, day, hour] or a mapping, got {value!r}")
    missing = [role for role in ("year", "month", "day") if role not in pairs]
    if missing:
        raise r.fail("time_columns", f"missing {', '.join(missing)} (a timestamp needs year, month and day)")
    return {role: pairs[role] for role in TIME_ROLES if role in pairs}


def _wide_stations(r: _Reader, value: Any, sensors: dict | None) -> dict[str, dict[str, str]]:
    """``{oslo: {T: T_oslo}}``, or a list of ids with ``sensors`` columns containing ``{station}``."""
    if isinstance(value, list):
        if not sensors or not all("{station}" in c for c in sensors.values()):
            raise r.fail("stations", "a list of station ids needs sensors whose columns contain {station}, "
                                     "e.g. sensors: {T: 'T_{station}'}")
        return {str(s): {k: c.replace("{station}", str(s)) for k, c in sensors.items()} for s in value}
    if isinstance(value, dict) and value:
        if sensors:
            raise r.fail("sensors", "give either sensors with {station} patterns and a list of stations, "
                                    "or per-station sensors under stations, not both")
        return {str(s): r.column_map(f"stations.{s}", cols) for s, cols in value.items()}
    raise r.fail("stations", f"expected a mapping station -> {{sensor: column}} or a list of ids, got {value!r}")


def _units(r: _Reader, value: Any, sensors: set[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise r.fail("units", f"expected a mapping of sensor to unit, e.g. {{T: degF}}, got {value!r}")
    out = {}
    for sensor, unit in value.items():
        key = f"units.{sensor}"
        if sensor not in sensors:
            raise r.fail(key, f"not a declared sensor (declared: {_allowed(sorted(sensors))})")
        unit = UNIT_ALIASES.get(str(unit), str(unit))
        allowed = (*SENSOR_UNITS.get(sensor, ()), "raw")
        if unit not in allowed:
            what = "unknown unit" if unit not in ALL_UNITS else f"not a unit of {sensor}"
            raise r.fail(key, f"{what} {value[sensor]!r} (allowed for {sensor}: {_allowed(allowed)})")
        out[str(sensor)] = unit
    return out


def _list(r: _Reader, key: str, kind: type | tuple[type, ...]) -> tuple | None:
    value = r.doc.get(key)
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, kind):
            raise r.fail(key, f"expected a list of {'numbers' if kind is not str else 'texts'}, got {item!r}")
    return tuple(items)


def load_schema_file(path: str | Path) -> Schema:
    """Read and check a YAML schema file."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SchemaError(f"{path}: {where}not valid YAML ({getattr(exc, 'problem', None) or exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: cannot read the schema file ({exc.strerror or exc})") from exc
    if not isinstance(doc, dict):
        raise SchemaError(f"{path}: expected a mapping of keys ({_allowed(KEYS)}), got {type(doc).__name__}")
    r = _Reader(path, doc)
    for key in doc:
        if key not in KEYS:
            raise r.fail(str(key), f"unknown key{_suggest(str(key), KEYS)} (allowed: {_allowed(KEYS)})")

    time_column, time_columns = r.text("time_column"), doc.get("time_columns")
    if (time_column is None) == (time_columns is None):
        raise r.fail("time_column", "give exactly one of time_column (one column) or time_columns (several)")
    if time_columns is not None and doc.get("time_format") is not None:
        raise r.fail("time_format", "applies to time_column only; time_columns are read as numbers by role")

    sensors = r.column_map("sensors", doc["sensors"]) if doc.get("sensors") is not None else None
    stations = _wide_stations(r, doc["stations"], sensors) if doc.get("stations") is not None else None
    if stations is None and sensors is None:
        raise r.fail("sensors", "missing: map canonical sensors to columns, e.g. {T: temp_c, rh: humidity}")
    if stations is not None and (doc.get("station") is not None or doc.get("station_column") is not None):
        raise r.fail("stations", "a wide file (stations) takes no station or station_column")
    if doc.get("station") is not None and doc.get("station_column") is not None:
        raise r.fail("station", "give station (one id for the whole file) or station_column, not both")
    declared = set(sensors or ()) | {s for cols in (stations or {}).values() for s in cols}

    separator = r.text("separator") or ","
    if separator.lower() in ("tab", "\\t"):
        separator = "\t"
    if len(separator) != 1 or separator in "\"\r\n":
        raise r.fail("separator", f"expected one character such as ',' ';' or tab, got {separator!r}")
    decimal = r.text("decimal") or "."
    if decimal not in (".", ","):
        raise r.fail("decimal", f"expected '.' or ',', got {decimal!r}")
    if decimal == separator:
        raise r.fail("decimal", f"cannot be the separator {separator!r}")
    encoding = r.text("encoding") or "latin-1"
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise r.fail("encoding", f"unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    utc = doc.get("utc", False)
    if not isinstance(utc, bool):
        raise r.fail("utc", f"expected true or false, got {utc!r}")

    sentinels = _list(r, "sentinels", (int, float))
    na_values = _list(r, "na_values", (str, int, float))
    return Schema(
        name=r.text("name") or path.stem,
        time_column=time_column,
        time_columns=_time_columns(r, time_columns) if time_columns is not None else None,
        time_format=r.text("time_format"),
        utc=utc,
        station=r.text("station"),
        station_column=r.text("station_column"),
        sensors=sensors if stations is None else {},
        stations=stations,
        units=_units(r, doc.get("units"), declared),
        **({"sentinels": tuple(float(s) for s in sentinels)} if sentinels is not None else {}),
        **({"na_values": tuple(str(v) for v in na_values)} if na_values is not None else {}),
        encoding=encoding,
        separator=separator,
        decimal=decimal,
    )
