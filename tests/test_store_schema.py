"""The store's schema is frozen: migration 1 is literal DDL that no later change of the sensor list can alter,
and a database created today has exactly the released tables, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forecaster.schema import SENSOR_RANGES
from pipeline.store import SENSORS, Store, _migrations

ROOT = Path(__file__).resolve().parents[1]

# Migration 1 as released ({p} is the namespace prefix). A copy, not an import: it must never change.
RELEASED_V1 = [
    'CREATE TABLE IF NOT EXISTS {p}readings (station TEXT NOT NULL, ts BIGINT NOT NULL, "T" DOUBLE PRECISION, '
    '"Tdew" DOUBLE PRECISION, "Tpot" DOUBLE PRECISION, "Tlog" DOUBLE PRECISION, "p" DOUBLE PRECISION, '
    '"rh" DOUBLE PRECISION, "VPmax" DOUBLE PRECISION, "VPact" DOUBLE PRECISION, "VPdef" DOUBLE PRECISION, '
    '"sh" DOUBLE PRECISION, "H2OC" DOUBLE PRECISION, "rho" DOUBLE PRECISION, "wv" DOUBLE PRECISION, '
    '"max_wv" DOUBLE PRECISION, "wd" DOUBLE PRECISION, "rain" DOUBLE PRECISION, "raining" DOUBLE PRECISION, '
    '"SWDR" DOUBLE PRECISION, "PAR" DOUBLE PRECISION, "max_PAR" DOUBLE PRECISION, "OT" DOUBLE PRECISION, '
    "partition INT, kafka_offset BIGINT, PRIMARY KEY (station, ts))",
    "CREATE TABLE IF NOT EXISTS {p}forecasts (station TEXT NOT NULL, issue_ts BIGINT NOT NULL, horizon INT NOT NULL, "
    "target_ts BIGINT NOT NULL, model_version TEXT NOT NULL, value DOUBLE PRECISION NOT NULL, lo DOUBLE PRECISION, "
    "hi DOUBLE PRECISION, persistence DOUBLE PRECISION, PRIMARY KEY (station, issue_ts, horizon))",
    "CREATE TABLE IF NOT EXISTS {p}errors (station TEXT NOT NULL, issue_ts BIGINT NOT NULL, horizon INT NOT NULL, "
    "target_ts BIGINT NOT NULL, model_version TEXT NOT NULL, actual DOUBLE PRECISION NOT NULL, "
    "abs_error DOUBLE PRECISION NOT NULL, persistence_abs_error DOUBLE PRECISION, "
    "PRIMARY KEY (station, issue_ts, horizon))",
    "CREATE TABLE IF NOT EXISTS {p}station_state (station TEXT PRIMARY KEY, json TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS {p}readings_ts ON {p}readings (ts)",
    "CREATE INDEX IF NOT EXISTS {p}forecasts_issue ON {p}forecasts (issue_ts)",
    "CREATE INDEX IF NOT EXISTS {p}errors_target ON {p}errors (target_ts)",
]

# Migration 2 as released: the diurnal-persistence baseline and the calibrated band (issue #11).
RELEASED_V2 = [
    "ALTER TABLE {p}forecasts ADD COLUMN diurnal DOUBLE PRECISION",
    "ALTER TABLE {p}forecasts ADD COLUMN band_offset DOUBLE PRECISION",
    "ALTER TABLE {p}errors ADD COLUMN diurnal_abs_error DOUBLE PRECISION",
    "ALTER TABLE {p}errors ADD COLUMN covered DOUBLE PRECISION",
    "ALTER TABLE {p}errors ADD COLUMN band_score DOUBLE PRECISION",
]

D = "DOUBLE PRECISION"
_SENSOR_COLUMNS = [(s, D, False) for s in (
    "T", "Tdew", "Tpot", "Tlog", "p", "rh", "VPmax", "VPact", "VPdef", "sh", "H2OC", "rho", "wv", "max_wv", "wd",
    "rain", "raining", "SWDR", "PAR", "max_PAR", "OT",
)]
# What a database has after migration 1 (as the store created it before migrations were frozen, on both engines):
# table -> ([(column, type, NOT NULL)], primary key, {index: column}).
RELEASED_SCHEMA = {
    "readings": (
        [("station", "TEXT", True), ("ts", "BIGINT", True), *_SENSOR_COLUMNS, ("partition", "INT", False),
         ("kafka_offset", "BIGINT", False)],
        ("station", "ts"), {"readings_ts": "ts"},
    ),
    "forecasts": (
        [("station", "TEXT", True), ("issue_ts", "BIGINT", True), ("horizon", "INT", True),
         ("target_ts", "BIGINT", True), ("model_version", "TEXT", True), ("value", D, True), ("lo", D, False),
         ("hi", D, False), ("persistence", D, False)],
        ("station", "issue_ts", "horizon"), {"forecasts_issue": "issue_ts"},
    ),
    "errors": (
        [("station", "TEXT", True), ("issue_ts", "BIGINT", True), ("horizon", "INT", True),
         ("target_ts", "BIGINT", True), ("model_version", "TEXT", True), ("actual", D, True), ("abs_error", D, True),
         ("persistence_abs_error", D, False)],
        ("station", "issue_ts", "horizon"), {"errors_target": "target_ts"},
    ),
    "station_state": ([("station", "TEXT", True), ("json", "TEXT", True)], ("station",), {}),
    "schema_version": ([("version", "INT", True), ("applied_ts", "BIGINT", False)], ("version",), {}),
}


def _after(schema: dict, added: dict[str, list[str]]) -> dict:
    """``schema`` with nullable DOUBLE PRECISION columns appended to tables (what ALTER TABLE ADD COLUMN does)."""
    out = dict(schema)
    for table, columns in added.items():
        cols, pk, idx = out[table]
        out[table] = ([*cols, *[(c, D, False) for c in columns]], pk, idx)
    return out


# What a database has after migration 2, created new or migrated from 1.
CURRENT_SCHEMA = _after(RELEASED_SCHEMA, {"forecasts": ["diurnal", "band_offset"],
                                          "errors": ["diurnal_abs_error", "covered", "band_score"]})

# A sensor someone adds to forecaster.schema later, in a fresh interpreter, before the store is imported.
_NEW_SENSOR = """
import json, sys
import numpy as np
from forecaster import schema
schema.SENSOR_RANGES["X_new"] = (0.0, 1.0)
"""


@pytest.fixture
def db(store_db: tuple[str, str | None]) -> tuple[str, str | None]:
    """(url, namespace) of a database no store has touched yet."""
    return store_db


def _schema(url: str, namespace: str | None) -> dict:
    """The database's tables as RELEASED_SCHEMA describes them, read from the engine's own catalog."""
    p = f"{namespace}_" if namespace else ""
    out = {}
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                info = conn.execute(f"PRAGMA table_info({table})").fetchall()
                pk = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
                columns = [(r[1], r[2], bool(r[3]) or r[1] in pk) for r in info]  # SQLite: a PK may hold NULL
                indexes = {}
                for _, name, _, origin, _ in conn.execute(f"PRAGMA index_list({table})").fetchall():
                    if origin == "c":  # made by CREATE INDEX, not by the primary key
                        (col,) = [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
                        indexes[name.removeprefix(p)] = col
                out[table.removeprefix(p)] = (columns, pk, indexes)
        finally:
            conn.close()
        return out
    import psycopg

    names = {"text": "TEXT", "bigint": "BIGINT", "integer": "INT", "double precision": "DOUBLE PRECISION"}
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_name LIKE %s", (f"{p}%",))]
        for table in tables:
            columns = [(c, names[t], n == "NO") for c, t, n in conn.execute(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position", (table,))]
            pk = tuple(r[0] for r in conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
                "ORDER BY array_position(i.indkey, a.attnum)", (table,)))
            indexes = {}
            for name, definition in conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s "
                "AND indexname <> %s", (table, f"{table}_pkey")):
                indexes[name.removeprefix(p)] = re.search(r"\((\w+)\)$", definition).group(1)
            out[table.removeprefix(p)] = (columns, pk, indexes)
    return out


def _python(script: str, *args: str) -> Any:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_migrations_are_the_released_ddl():
    for p in ("", "t_abc_"):
        assert _migrations(p)[0] == [s.replace("{p}", p) for s in RELEASED_V1]
        assert _migrations(p)[1] == [s.replace("{p}", p) for s in RELEASED_V2]


def test_new_database_has_the_released_schema(db):
    url, namespace = db
    Store.open(url, namespace=namespace).close()
    assert _schema(url, namespace) == CURRENT_SCHEMA
    readings = [c for c, _, _ in RELEASED_SCHEMA["readings"][0]]
    assert readings[2:-2] == list(SENSORS), "store.SENSORS must list the readings table's sensor columns"


def test_every_canonical_sensor_has_a_store_column():
    """Fails when a sensor is added to forecaster.schema without its migration (see pipeline/store.py)."""
    assert set(SENSOR_RANGES) <= set(SENSORS)


def test_adding_a_sensor_does_not_change_migration_1(db):
    url, namespace = db
    got = _python(_NEW_SENSOR + textwrap.dedent("""
        from pipeline.store import Store, _migrations
        Store.open(sys.argv[1], namespace=sys.argv[2] or None).close()
        print(json.dumps(_migrations("")))
    """), url, namespace or "")
    assert got[0] == [s.replace("{p}", "") for s in RELEASED_V1]
    assert _schema(url, namespace) == CURRENT_SCHEMA


def test_store_keeps_working_on_a_database_older_than_a_new_sensor(db):
    """A database created before a sensor was added: the service's calls still work on the columns it has, and a
    reading that really carries the new sensor is refused with the reason (not half-stored)."""
    url, namespace = db
    with Store.open(url, namespace=namespace) as store:
        store.add_readings("A", np.array([1_600_000_000]), np.array([[5.0, 1000.0]]), ["T", "p"])
    got = _python(_NEW_SENSOR + textwrap.dedent("""
        from pipeline.readings import SENSORS
        from pipeline.store import Store
        with Store.open(sys.argv[1], namespace=sys.argv[2] or None) as store:
            values = np.full((1, len(SENSORS)), np.nan)
            values[0, SENSORS.index("T")] = 7.0
            added = store.add_readings("B", np.array([1_600_003_600]), values, SENSORS, partition=0, offset=1)
            history = store.history(0, 2_000_000_000)
            values[0, SENSORS.index("X_new")] = 0.5
            try:
                store.add_readings("C", np.array([1_600_007_200]), values, SENSORS)
                refused = None
            except ValueError as exc:
                refused = str(exc)
            print(json.dumps({"added": added, "stations": history["station"].tolist(), "T": history["T"].tolist(),
                              "rows": store.count("readings"), "refused": refused}))
    """), url, namespace or "")
    assert got["added"] == 1 and got["stations"] == ["A", "B"] and got["T"] == [5.0, 7.0]
    assert got["rows"] == 2
    assert got["refused"] is not None and "X_new" in got["refused"] and "migration" in got["refused"]


def _create_v1(url: str, namespace: str | None) -> None:
    """A database as a release with only migration 1 left it, with one forecast and its scored error."""
    p = f"{namespace}_" if namespace else ""
    statements = [x.replace("{p}", p) for x in RELEASED_V1] + [
        f"CREATE TABLE IF NOT EXISTS {p}schema_version (version INT PRIMARY KEY, applied_ts BIGINT)",
        f"INSERT INTO {p}schema_version (version, applied_ts) VALUES (1, 0)",
        f"INSERT INTO {p}forecasts VALUES ('OLD', 0, 1, 3600, 'global@v1', 5.0, 4.0, 6.0, 4.5)",
        f"INSERT INTO {p}errors VALUES ('OLD', 0, 1, 3600, 'global@v1', 5.5, 0.5, 1.0)",
    ]
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path)
        try:
            for statement in statements:
                conn.execute(statement)
            conn.commit()
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_a_version_1_database_is_migrated_and_keeps_its_rows(db):
    """An existing database gains the baseline and band columns in place: its old rows read back with NULL (NaN)
    there, new rows keep their values, and the schema equals a new database's."""
    url, namespace = db
    _create_v1(url, namespace)
    with Store.open(url, namespace=namespace) as store:
        store.add_forecasts({"station": "NEW", "issue_ts": 0, "horizon": 1, "target_ts": 3600,
                             "model_version": "global@v2", "value": 5.0, "lo": 4.0, "hi": 6.0, "persistence": 4.5,
                             "diurnal": 3.0, "band_offset": 0.25})
        store.add_errors({"station": "NEW", "issue_ts": 0, "horizon": 1, "target_ts": 3600,
                          "model_version": "global@v2", "actual": 5.5, "abs_error": 0.5,
                          "persistence_abs_error": 1.0, "diurnal_abs_error": 2.5, "covered": 1.0,
                          "band_score": -0.75})
        errors = store.errors().set_index("station")
        pending = store.pending_forecasts(0)
        versions = [r[0] for r in store._query(f"SELECT version FROM {store._p}schema_version ORDER BY version")]
    assert versions == [1, 2]
    assert _schema(url, namespace) == CURRENT_SCHEMA
    assert errors.loc["OLD", "abs_error"] == 0.5 and np.isnan(errors.loc["OLD", "diurnal_abs_error"])
    assert errors.loc["NEW", ["diurnal_abs_error", "covered", "band_score"]].tolist() == [2.5, 1.0, -0.75]
    assert pending.empty  # both forecasts have their error
    Store.open(url, namespace=namespace).close()  # opening again migrates nothing twice
    assert _schema(url, namespace) == CURRENT_SCHEMA
