"""Chaos: the service works through a backlog of real station data while it is killed, its broker restarted,
poisoned and its database connection dropped; in the end the store equals a run without faults, row for row.

Both runs use the same data, service settings and code; each has a Tansu broker of its own that outlives the
service (the test starts it, and in the chaos run kills it and starts a new one on the same port) and a store
of its own (an SQLite file, or a fresh PostgreSQL database: the service cannot be given a namespace). Faults
are placed at seeded fractions of the backlog, measured by stored readings, so they land mid-work on any
machine. ``CHAOS_FAULTS`` (comma-separated subset of kill, broker, poison, pgdrop; ``none``) narrows the faults
when hunting a failure; the default is all of them.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from pipeline.config import ServiceConfig
from tests.chaos_harness import (
    PARTITIONS,
    Run,
    compare_stores,
    create_pg_database,
    drop_pg_database,
    dump_store,
    metric,
    own_band,
    partition_lags,
    pseudo_stations,
    sqlite_url,
    terminate_pg_connections,
    wait_for,
)
from tests.conftest import shared_file

SEED = 20261130
STATIONS_PER_FILE = 12  # x 5 files = 60 stations
HOURS = 440  # per station: 168 h of lookback, then forecasts; long enough for partitions to drift 200+ h apart
START = "2024-03-01T00:00"  # the common clock of the pseudo-stations (in the past: no future_time rejects)
FILES = {
    "jena": "jena_2009_2016_hourly.csv.gz",
    "chicago": "noaa_chicago_ohare_2010_2016_hourly.csv.gz",
    "denver": "noaa_denver_2010_2016_hourly.csv.gz",
    "greatfalls": "noaa_great_falls_2010_2016_hourly.csv.gz",
    "rapidcity": "noaa_rapid_city_2010_2016_hourly.csv.gz",
}
# Short group timeouts (a killed member's partitions move after ~1.5 x session timeout); one inference thread;
# polls of 1,000 readings, so progress (and the faults placed by it) moves in steps of 4 % of the backlog.
SETTINGS = {"session_timeout_ms": "3000", "heartbeat_interval_ms": "500", "torch_threads": "1", "max_batch": "1000"}
POISON = b"x" * 800_000  # under Kafka's 1 MB default: a real cluster accepts it
POISON_KEY = b"poison"
ALL_FAULTS = ("kill", "broker", "poison", "pgdrop")
WAIT_S = 300  # generous: the machine running CI may be small and busy


@functools.cache
def _source_cached() -> pd.DataFrame:
    return pseudo_stations({k: shared_file(v) for k, v in FILES.items()}, STATIONS_PER_FILE, HOURS, START)


def source() -> pd.DataFrame:
    for name in FILES.values():
        shared_file(name)  # skip (or fail under CI) with the file's name when the data is missing
    return _source_cached()


def faults_wanted() -> set[str]:
    raw = os.environ.get("CHAOS_FAULTS", ",".join(ALL_FAULTS)).strip()
    wanted = set() if raw == "none" else {f.strip() for f in raw.split(",") if f.strip()}
    unknown = wanted - set(ALL_FAULTS)
    assert not unknown, f"CHAOS_FAULTS: unknown faults {sorted(unknown)}; known: {ALL_FAULTS} or none"
    return wanted


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request, tmp_path: Path):
    """(backend, control store URL, chaos store URL)."""
    if request.param == "sqlite":
        yield "sqlite", sqlite_url(tmp_path / "control" / "store.db"), sqlite_url(tmp_path / "chaos" / "store.db")
        return
    try:
        urls = [create_pg_database("chaos_control"), create_pg_database("chaos_run")]
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is needed under CI: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    try:
        yield "postgres", *urls
    finally:
        for url in urls:
            drop_pg_database(url)


def _control(tmp_path: Path, url: str, records: pd.DataFrame) -> int:
    """The same data and settings without any fault: what the store must hold. Returns the readings stored."""
    with Run(tmp_path / "control", url, records, SETTINGS) as run:
        stats = run.publish()
        run.service.start()
        quiet = run.wait_quiet(stats.expected_valid, WAIT_S)
        _assert_healthy(run, quiet.samples)
        assert run.service.terminate() == 0, run.service.log_tail()
        print(f"control run:\n{run.history()}")
    return stats.expected_valid


def _chaos(tmp_path: Path, url: str, records: pd.DataFrame, backend: str, faults: set[str]) -> Run:
    rng = np.random.default_rng(SEED)
    # The first kill and the broker restart land at seeded fractions of the backlog (readings stored). A backlog
    # is consumed one partition after the other, in an order that varies from run to run, so partitions drift
    # hundreds of hours apart: the second and third kills wait for that state, a partition done and another (a
    # different one the second time) a seeded 180-265 h into its stations' records: forecasts and pending
    # forecasts exist there, far behind the newest reading, the case a restart must cope with. When the order of
    # consumption leaves no partition that can still get there, the kill comes at once.
    first_kill, broker_at, pgdrop_at = rng.uniform(0.05, 0.20), rng.uniform(0.50, 0.56), rng.uniform(0.80, 0.90)
    behind = [(rng.uniform(180, 195), 265.0), (rng.uniform(180, 195), 265.0)]
    lagging: set[int] = set()
    first_ts, last_ts = (int(t.timestamp()) for t in (records["time"].min(), records["time"].max()))
    run = Run(tmp_path / "chaos", url, records, SETTINGS)
    with run:
        stats = run.publish()
        n = stats.expected_valid
        run.service.start()
        if "kill" in faults:
            run.wait_readings(int(first_kill * n), WAIT_S, "before the kill it was waiting for")
            run.kill_service()
            run.service.start()
            lagging.add(_kill_uneven(run, behind[0], first_ts, last_ts, set()))
            run.service.start()
        if "broker" in faults or "poison" in faults:
            run.wait_readings(int(broker_at * n), WAIT_S, "before the broker restart")
        if "broker" in faults:
            # The group's offsets die with the memory-only broker; the service must rejoin before the gateway
            # republishes, else it would resume at its old positions in the new topic (a real Kafka never
            # restarts its offsets at 0, so this wait is Tansu's, not the service's).
            wait_for(lambda: run.rebalances() >= 1, WAIT_S, "the service to join its group",
                     run.guard("before the broker restart"), status=run.status)
            before = run.rebalances()
            run.restart_broker()
            wait_for(lambda: run.rebalances() > before, WAIT_S, "the service to rejoin the new broker",
                     run.guard("after the broker restart"), status=run.status)
        if "poison" in faults:
            run.publish_raw(POISON_KEY, POISON)  # ahead of its partition's republished readings
        if "broker" in faults:
            run.publish()  # the gateway sends its source again after the outage; (station, time) dedupes it
        if "kill" in faults:
            _kill_uneven(run, behind[1], first_ts, last_ts, lagging)
            run.service.start()
        if "pgdrop" in faults and backend == "postgres":  # SQLite has no connection to drop: skipped there
            run.wait_readings(int(pgdrop_at * n), WAIT_S, "before the PostgreSQL connection drop")
            wait_for(lambda: terminate_pg_connections(url) > 0, 30, "a service connection to terminate")
            run.note("PostgreSQL connections of the service terminated")
        quiet = run.wait_quiet(n, WAIT_S)
        _assert_healthy(run, quiet.samples)
        if "poison" in faults:
            poison = [r for r in run.deadletters() if r.key == POISON_KEY]
            assert poison, "no dead-letter record for the poison message"
            for r in poison:
                assert len(r.value) < 64 * 1024, f"dead-letter record of {len(r.value):,} bytes: not bounded"
                assert orjson.loads(r.value)["reason"] == "not_json"
        assert run.service.terminate() == 0, run.service.log_tail()
        print(f"chaos run:\n{run.history()}")
    return run


def _kill_uneven(run: Run, behind_h: tuple[float, float], first_ts: int, last_ts: int, exclude: set[int]) -> int:
    partition = run.wait_uneven(behind_h, first_ts, last_ts, WAIT_S, exclude)
    run.kill_service("" if partition is not None else ": no partition can lag that far any more, killed at once")
    return -1 if partition is None else partition


def _card(registry: Path):
    from forecaster.registry import Registry

    reg = Registry(registry)
    info = reg.champion("global")
    return reg.card(info.name, info.version)


def _assert_healthy(run: Run, samples: dict) -> None:
    assert run.service.alive, run.service.died_message("at the end")
    for path in ("/healthz", "/readyz"):
        got = run.service.get(path)
        assert got is not None and got[0] == 200, f"{path}: {got}"
    lags = partition_lags(samples)
    assert len(lags) == PARTITIONS and not any(lags.values()), f"lag per partition: {lags}"
    assert metric(samples, "stationcast_ready") == 1.0


@pytest.mark.slow
def test_store_survives_chaos(stores, tmp_path: Path):
    """Kill -9s mid-backlog, a broker restart, a poison message and (PostgreSQL) a dropped connection: the
    service stays up and stores exactly what a run without faults stores."""
    backend, control_url, chaos_url = stores
    records = source()
    faults = faults_wanted()
    readings = _control(tmp_path, control_url, records)
    run = _chaos(tmp_path, chaos_url, records, backend, faults)
    control, chaos = dump_store(control_url), dump_store(chaos_url)
    # The control itself is complete: every reading stored, a forecast for every full window, every forecast
    # horizon whose actual arrived scored (the pseudo-stations have no gaps).
    card = _card(tmp_path / "control" / "registry")
    lookback, horizons = card.data.lookback, np.asarray(card.data.horizons)
    issues = np.arange(lookback - 1, HOURS)
    n_stations = records["station"].nunique()
    assert len(control["readings"]) == readings == len(records)
    assert len(control["forecasts"]) == n_stations * len(issues) * len(horizons)
    assert len(control["errors"]) == n_stations * int((issues[:, None] + horizons[None, :] < HOURS).sum())
    # The band is calibrated from the fleet's scores until a station has enough of its own; which fleet scores
    # exist then depends on how far the other stations have got, which differs between any two runs.
    own = own_band(control["forecasts"], control["errors"], ServiceConfig())
    assert own.mean() > 0.3, f"only {own.mean():.0%} of forecasts had their station's own band: too few to check"
    problems = compare_stores(control, chaos, own)
    assert not problems, "\n".join(["the store after chaos differs from the control run:", *problems,
                                    "what the test did:", run.history()])
