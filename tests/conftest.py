"""Shared fixtures: where the real station records live, and a real embedded Kafka broker."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PG_URL = os.environ.get("STATIONCAST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def pg_url() -> str:
    """The test PostgreSQL server's URL; under CI an unreachable server fails the test, elsewhere it skips."""
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any failure means "no server here"
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_URL} is needed under CI: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    return PG_URL


@pytest.fixture(params=["sqlite", "postgres"])
def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """(url, namespace) of a store no one has opened yet: an SQLite file in a not-yet-existing folder, or
    PostgreSQL under a fresh namespace that is dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/nested/store.db", None
        return
    from pipeline.store import Store

    url, namespace = pg_url(), f"t_{uuid.uuid4().hex[:12]}"
    yield url, namespace
    with Store.open(url, namespace=namespace) as store:
        store.drop()


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
