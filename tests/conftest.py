"""Shared fixtures: where the real station records live, and a real embedded Kafka broker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file from ../shared/data; under CI it must exist (fail loudly), elsewhere a missing one skips."""
    path = SHARED_DATA / name
    if not path.exists():
        message = f"{path} is missing: tests read the real station records from ../shared/data"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def jena_hourly() -> Path:
    return shared_file("jena_2009_2016_hourly.csv.gz")


@pytest.fixture(scope="session")
def jena_2020() -> Path:
    return shared_file("jena_2020_10min.csv.gz")


@pytest.fixture(scope="session")
def noaa_denver() -> Path:
    return shared_file("noaa_denver_2010_2016_hourly.csv.gz")
