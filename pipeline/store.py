"""Persistence of accepted readings, forecasts and realized errors: SQLite by default, PostgreSQL by URL.

One code path for both engines: the DDL and every query are the same SQL text (written with ``?``
placeholders, rewritten to ``%s`` for psycopg). Only connection setup and the bulk-load transport differ:
SQLite takes ``executemany`` of ``INSERT ... ON CONFLICT DO NOTHING``; PostgreSQL streams a binary COPY
into a per-connection temp table and then runs ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, about
2x faster there than a pipelined ``executemany``.

Every ``add_*``/``put_state`` runs in one transaction and has committed when it returns, so a consumer
may commit its Kafka offsets afterwards. Inserts are idempotent (conflicts on the primary key are skipped
and not counted), so replaying a partition after a crash is harmless. With SQLite the file is in WAL mode
with ``synchronous=NORMAL``: a commit survives a process crash, but a power loss or OS crash can roll
back the last few commits.

Column conventions: times are epoch seconds UTC (BIGINT); sensor columns are named exactly as the
canonical sensors of :data:`forecaster.schema.SENSOR_RANGES` (double-quoted in SQL, so in psql write
``"T"``), NULL when absent; ``offset`` is stored as ``kafka_offset`` (reserved in PostgreSQL).

Migrations are literal DDL, frozen once released: a database created today and one created a year ago by
the same migrations are the same, whatever the live dictionaries say since. :data:`SENSORS` lists the sensor
columns they create, and the store reads and writes only those. A sensor added to ``SENSOR_RANGES`` later
gets its column from a new migration, appended to ``_MIGRATIONS`` (never edit a released one), e.g.::

    ('ALTER TABLE {p}readings ADD COLUMN "X" DOUBLE PRECISION',),  # migration 2: sensor X

and ``"X"`` appended to :data:`SENSORS`. Both engines run the same text (``{p}`` is the namespace prefix);
a step that ever needs engine-specific SQL must branch on the engine in :func:`_migrations`. Until then,
readings that carry the new sensor are refused by :meth:`Store.add_readings` rather than losing it.

``namespace`` prefixes every table and index (``Store.open(url, namespace="t_abc")`` -> ``t_abc_readings``
...), so tests or tenants can share one database; :meth:`Store.drop` removes a namespace's tables.

A Store wraps one connection and is not thread-safe: open one Store per thread (SQLite enforces it).

Outages. A write transaction or query that fails because the connection dropped (PostgreSQL restarted, the
backend terminated, the network cut, the disk full) or because SQLite stayed locked beyond ``busy_timeout``
(or its disk is full) is retried, on a new connection where there is one, with backoff for up to ``retry_s``
seconds (the service: until it stops). A caller never sees a half-written batch: every write is one
transaction and idempotent by primary key. ``on_outage`` hears when the store goes down and comes back.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd

from forecaster.schema import SENSOR_RANGES
from pipeline.store_url import parse_store_url

# The sensor columns of the readings table, as the migrations below create them (see the module doc).
SENSORS: tuple[str, ...] = (
    "T", "Tdew", "Tpot", "Tlog", "p", "rh", "VPmax", "VPact", "VPdef", "sh", "H2OC", "rho", "wv", "max_wv", "wd",
    "rain", "raining", "SWDR", "PAR", "max_PAR", "OT",
)
TABLES: tuple[str, ...] = ("readings", "forecasts", "errors", "station_state")

Kind = Literal["text", "int", "bigint", "float"]
_COPY_TYPE: dict[str, str] = {"text": "text", "int": "int4", "bigint": "int8", "float": "float8"}

# (name, kind, NOT NULL) per table, in column order, as the migrations create them. Sensor names are quoted.
_COLUMNS: dict[str, list[tuple[str, Kind, bool]]] = {
    "readings": [
        ("station", "text", True),
        ("ts", "bigint", True),
        *[(s, "float", False) for s in SENSORS],
        ("partition", "int", False),
        ("kafka_offset", "bigint", False),
    ],
    "forecasts": [
        ("station", "text", True),
        ("issue_ts", "bigint", True),
        ("horizon", "int", True),
        ("target_ts", "bigint", True),
        ("model_version", "text", True),
        ("value", "float", True),
        ("lo", "float", False),
        ("hi", "float", False),
        ("persistence", "float", False),
        ("diurnal", "float", False),  # migration 2
        ("band_offset", "float", False),  # migration 2
    ],
    "errors": [
        ("station", "text", True),
        ("issue_ts", "bigint", True),
        ("horizon", "int", True),
        ("target_ts", "bigint", True),
        ("model_version", "text", True),
        ("actual", "float", True),
        ("abs_error", "float", True),
        ("persistence_abs_error", "float", False),
        ("diurnal_abs_error", "float", False),  # migration 2
        ("covered", "float", False),  # migration 2
        ("band_score", "float", False),  # migration 2
    ],
}
_KIND: dict[str, dict[str, Kind]] = {t: {n: k for n, k, _ in cols} for t, cols in _COLUMNS.items()}
_REQUIRED: dict[str, list[str]] = {t: [n for n, _, nn in cols if nn] for t, cols in _COLUMNS.items()}

log = logging.getLogger("stationcast.store")
_NAMESPACE = re.compile(r"[a-z][a-z0-9_]{0,39}")
APPLICATION_NAME = "stationcast"  # PostgreSQL's pg_stat_activity.application_name, unless the URL sets one
_CHUNK = 5000  # stations per statement when each brings parameters (SQLite allows 32,766; PostgreSQL 65,535)



_DTYPES = {"text": object, "int": np.int64, "bigint": np.int64, "float": np.float64}


def _frame(spec: Sequence[tuple[str, str, bool]], rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Query rows as a frame with one typed column per ``spec`` entry (empty columns when there are no rows)."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(spec)
    return pd.DataFrame({c: np.array(v, dtype=_DTYPES[k]) for (c, k, _), v in zip(spec, cols, strict=True)})

class StoreUnavailable(RuntimeError):
    """The database stayed unreachable for longer than the store's ``retry_s`` (or the caller gave up)."""


def _transient(exc: BaseException) -> bool:
    """A failure that a new connection (or waiting) can cure, rather than a bug or a constraint violation."""
    if isinstance(exc, sqlite3.OperationalError):  # locked beyond busy_timeout, or disk full: wait, then retry
        text = str(exc).lower()
        return "locked" in text or "busy" in text or "full" in text
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _q(column: str) -> str:
    """Quote sensor columns (case-sensitive data-defined names); fixed columns stay bare for psql users."""
    return f'"{column}"' if column in SENSORS else column


# Ordered schema steps, literal SQL with {p} for the namespace prefix; step i brings the schema to version
# i + 1. Append, never edit: a released step is what every existing database has run.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1
        'CREATE TABLE IF NOT EXISTS {p}readings (station TEXT NOT NULL, ts BIGINT NOT NULL, "T" DOUBLE PRECISION, '
        '"Tdew" DOUBLE PRECISION, "Tpot" DOUBLE PRECISION, "Tlog" DOUBLE PRECISION, "p" DOUBLE PRECISION, '
        '"rh" DOUBLE PRECISION, "VPmax" DOUBLE PRECISION, "VPact" DOUBLE PRECISION, "VPdef" DOUBLE PRECISION, '
        '"sh" DOUBLE PRECISION, "H2OC" DOUBLE PRECISION, "rho" DOUBLE PRECISION, "wv" DOUBLE PRECISION, '
        '"max_wv" DOUBLE PRECISION, "wd" DOUBLE PRECISION, "rain" DOUBLE PRECISION, "raining" DOUBLE PRECISION, '
        '"SWDR" DOUBLE PRECISION, "PAR" DOUBLE PRECISION, "max_PAR" DOUBLE PRECISION, "OT" DOUBLE PRECISION, '
        'partition INT, kafka_offset BIGINT, PRIMARY KEY (station, ts))',
        "CREATE TABLE IF NOT EXISTS {p}forecasts (station TEXT NOT NULL, issue_ts BIGINT NOT NULL, "
        "horizon INT NOT NULL, target_ts BIGINT NOT NULL, model_version TEXT NOT NULL, "
        "value DOUBLE PRECISION NOT NULL, lo DOUBLE PRECISION, hi DOUBLE PRECISION, persistence DOUBLE PRECISION, "
        "PRIMARY KEY (station, issue_ts, horizon))",
        "CREATE TABLE IF NOT EXISTS {p}errors (station TEXT NOT NULL, issue_ts BIGINT NOT NULL, "
        "horizon INT NOT NULL, target_ts BIGINT NOT NULL, model_version TEXT NOT NULL, "
        "actual DOUBLE PRECISION NOT NULL, abs_error DOUBLE PRECISION NOT NULL, "
        "persistence_abs_error DOUBLE PRECISION, PRIMARY KEY (station, issue_ts, horizon))",
        "CREATE TABLE IF NOT EXISTS {p}station_state (station TEXT PRIMARY KEY, json TEXT NOT NULL)",
        # Cross-station time-range scans (history for retraining, pending/errors since a time).
        "CREATE INDEX IF NOT EXISTS {p}readings_ts ON {p}readings (ts)",
        "CREATE INDEX IF NOT EXISTS {p}forecasts_issue ON {p}forecasts (issue_ts)",
        "CREATE INDEX IF NOT EXISTS {p}errors_target ON {p}errors (target_ts)",
    ),
    (  # 2: the diurnal-persistence baseline and the calibrated band (issue #11); NULL on older rows
        "ALTER TABLE {p}forecasts ADD COLUMN diurnal DOUBLE PRECISION",  # the value 24 h before the target
        "ALTER TABLE {p}forecasts ADD COLUMN band_offset DOUBLE PRECISION",  # lo/hi = model's band -/+ this
        "ALTER TABLE {p}errors ADD COLUMN diurnal_abs_error DOUBLE PRECISION",
        "ALTER TABLE {p}errors ADD COLUMN covered DOUBLE PRECISION",  # 1: actual inside [lo, hi]; 0: outside
        "ALTER TABLE {p}errors ADD COLUMN band_score DOUBLE PRECISION",  # max(lo - y, y - hi), model's raw band
    ),
)


def _migrations(p: str) -> list[list[str]]:
    """The migrations' statements for the namespace prefix ``p`` (``""`` or ``"name_"``)."""
    return [[statement.replace("{p}", p) for statement in step] for step in _MIGRATIONS]


def _check_columns(sensors: Iterable[str]) -> None:
    """Refuse canonical sensors the schema has no column for yet (they need a migration, see the module doc)."""
    missing = [s for s in sensors if s not in SENSORS]
    if missing:
        raise ValueError(f"the store has no column for sensors {missing}: a sensor added to "
                         "forecaster.schema.SENSOR_RANGES needs a store migration (see pipeline.store)")


def _epoch(values: Any, n: int, name: str) -> list[int]:
    """Integer (or datetime64) column -> Python ints; datetimes become epoch seconds UTC."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = np.broadcast_to(arr, (n,))
    if arr.dtype.kind == "M":
        arr = arr.astype("datetime64[s]").astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers or datetime64, got {arr.dtype}")
    return arr.astype(np.int64, copy=False).tolist()


def _floats(values: Any, n: int) -> list[float | None]:
    """Float column -> Python floats with NaN as None, so both engines store NULL (PG keeps NaN else)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.broadcast_to(arr, (n,))
    out = arr.tolist()
    for i in np.flatnonzero(np.isnan(arr)).tolist():
        out[i] = None
    return out


def _texts(values: Any, n: int) -> list[str]:
    if isinstance(values, str):
        return [values] * n
    return np.asarray(values, dtype=object).tolist()  # numpy/pandas strings -> str; None stays (NOT NULL)


def _column(kind: Kind, values: Any, n: int, name: str) -> list[Any]:
    if values is None:
        return [None] * n
    if kind == "text":
        return _texts(values, n)
    if kind == "float":
        return _floats(values, n)
    return _epoch(values, n, name)


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


_NO_END = 2**62  # an issue time later than any (BIGINT)


def _since_values(stations: list[str], since: Mapping[str, int]) -> tuple[str, list[Any]]:
    """A ``VALUES`` list of (station, time) rows and its parameters, typed for both engines."""
    values = ", ".join(["(CAST(? AS TEXT), CAST(? AS BIGINT))"] * len(stations))
    return values, [x for s in stations for x in (s, int(since[s]))]


def _times(ts: np.ndarray) -> np.ndarray:
    return ts.astype("datetime64[s]").astype("datetime64[ns]")


class Store:
    """Readings, forecasts, errors and small per-station state in one SQL database (see module doc)."""

    def __init__(self, conn: Any, postgres: bool, namespace: str | None = None) -> None:
        """Wrap an open connection; use :meth:`open` instead, which also sets it up and migrates."""
        if namespace is not None and not _NAMESPACE.fullmatch(namespace):
            raise ValueError(f"namespace must match {_NAMESPACE.pattern}, got {namespace!r}")
        self._conn = conn
        self._pg = postgres
        self.namespace = namespace
        self._p = f"{namespace}_" if namespace else ""
        self._staged: set[str] = set()
        self._connect: Callable[[], Any] | None = None  # set by open(): how to get a new connection
        self._broken = False
        self.retry_s = 30.0  # how long an outage is waited out before StoreUnavailable
        self.stopping: threading.Event = threading.Event()  # set it to give up waiting at once
        self.on_outage: Callable[[bool, BaseException | None], None] | None = None  # (up, cause) on changes
        self.up = True
        self.reconnects = 0
        self._migrate()

    @classmethod
    def open(cls, url: str, namespace: str | None = None, checkpoint_every_s: float = 0.0) -> Store:
        """``sqlite:///rel.db``, ``sqlite:////abs.db``, ``sqlite:///:memory:`` or ``postgres[ql]://...``.

        ``checkpoint_every_s`` > 0 (SQLite files): WAL checkpoints run on a background thread with its own
        connection instead of inside the commit that crosses SQLite's 1,000-page threshold, which otherwise
        stalls the writer for a quarter of its insert time (a backstop threshold stays, much higher)."""
        parsed = parse_store_url(url)
        if parsed.kind == "sqlite":
            path = parsed.path
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Explicit BEGIN/COMMIT below. A Store may be opened in one thread and used in another, but
            # never by two threads at once (the service hands it to its loop thread).
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            if path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")  # wait for another process' writer, don't fail
            conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: the readings indexes outgrow the 2 MiB default
            store = cls(conn, postgres=False, namespace=namespace)
            if checkpoint_every_s > 0 and path != ":memory:":
                store._start_checkpointer(path, checkpoint_every_s)
            return store
        if parsed.kind == "postgresql":
            import psycopg  # only needed for PostgreSQL
            from psycopg.conninfo import conninfo_to_dict

            extra = {} if "application_name" in conninfo_to_dict(url) else {"application_name": APPLICATION_NAME}

            def connect() -> Any:
                return psycopg.connect(url, autocommit=True, connect_timeout=10, **extra)

            store = cls(connect(), postgres=True, namespace=namespace)
            store._connect = connect
            return store
        raise AssertionError(parsed.kind)

    def close(self) -> None:
        checkpointer = getattr(self, "_checkpointer", None)
        if checkpointer is not None:
            self._checkpoint_stop.set()
            checkpointer.join(timeout=30)
        self._conn.close()

    def _start_checkpointer(self, path: str, every_s: float) -> None:
        self._conn.execute("PRAGMA wal_autocheckpoint=20000")  # backstop (~80 MiB) should the thread fall behind
        self._checkpoint_stop = threading.Event()

        def run() -> None:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=10000")
            failing = False  # logged once per run of failures (a full disk fails it every second)
            try:
                while not self._checkpoint_stop.wait(every_s):
                    try:  # PASSIVE never blocks the writer or readers; SQLite runs without the GIL meanwhile
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error as exc:
                        if not failing:
                            log.warning("background WAL checkpoint failed (retrying every %g s): %s", every_s, exc)
                        failing = True
                    else:
                        if failing:
                            log.info("background WAL checkpoints work again")
                        failing = False
            finally:
                conn.close()

        self._checkpointer = threading.Thread(target=run, name="sqlite-checkpoint", daemon=True)
        self._checkpointer.start()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self._pg else sql

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One write transaction, committed on exit; SQLite takes the write lock up front (IMMEDIATE)."""
        if self._pg:
            with self._conn.transaction():
                yield self._conn.cursor()
            return
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            if self._conn.in_transaction:
                cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            cur = self._conn.cursor()
            cur.execute(self._sql(sql), tuple(params))
            return cur.fetchall()

        return self._retrying(run)

    def _retrying(self, work: Callable[[], Any]) -> Any:
        """Run one transaction (or query), waiting out a lost connection or a long lock: reconnect with
        backoff and run it again, which is safe since every write is one idempotent transaction."""
        delay, since = 0.2, None
        while True:
            try:
                if self._broken:
                    self._reconnect()
                result = work()
            except Exception as exc:  # noqa: BLE001 - only transient ones are retried, the rest re-raised
                if not _transient(exc):
                    raise
                if since is None:
                    since = time.monotonic()
                    log.warning("store unavailable, retrying: %s", (str(exc).strip().splitlines() or [repr(exc)])[0])
                    self._set_up(False, exc)
                self._broken = self._connect is not None
                waited = time.monotonic() - since
                if waited >= self.retry_s or self.stopping.is_set():
                    raise StoreUnavailable(f"store unavailable for {waited:.0f}s: {exc}") from exc
                self.stopping.wait(min(delay, max(0.0, self.retry_s - waited)))
                delay = min(delay * 2, 5.0)
                continue
            if since is not None:
                log.warning("store available again after %.1fs", time.monotonic() - since)
                self._set_up(True, None)
            return result

    def _reconnect(self) -> None:
        with contextlib.suppress(Exception):  # the old connection is dead already
            self._conn.close()
        self._conn = self._connect()
        self._staged.clear()  # temp staging tables belong to the old session
        self._broken = False
        self.reconnects += 1

    def _set_up(self, up: bool, cause: BaseException | None) -> None:
        self.up = up
        if self.on_outage is not None:
            self.on_outage(up, cause)

    def _migrate(self) -> None:
        """Apply missing migrations under a lock, so concurrent openers do not race on CREATE."""
        p = self._p
        with self._tx() as cur:
            if self._pg:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"stationcast-store:{p}",))
            cur.execute(f"CREATE TABLE IF NOT EXISTS {p}schema_version (version INT PRIMARY KEY, applied_ts BIGINT)")
            cur.execute(f"SELECT COALESCE(MAX(version), 0) FROM {p}schema_version")
            current = cur.fetchone()[0]
            for version, statements in enumerate(_migrations(p), start=1):
                if version <= current:
                    continue
                for statement in statements:
                    cur.execute(statement)
                cur.execute(
                    self._sql(f"INSERT INTO {p}schema_version (version, applied_ts) VALUES (?, ?)"),
                    (version, int(time.time())),
                )

    def _insert(self, table: str, columns: dict[str, list[Any]]) -> int:
        """Insert column lists with ON CONFLICT DO NOTHING in one committed transaction; rows inserted."""
        names = list(columns)
        n = len(columns[names[0]])
        if n == 0:
            return 0
        target = f"{self._p}{table}"
        collist = ", ".join(_q(c) for c in names)
        rows = list(zip(*columns.values(), strict=True))  # a list: a retried transaction sends them again
        if not self._pg:
            marks = ", ".join("?" * len(names))

            def sqlite_tx() -> int:
                before = self._conn.total_changes
                with self._tx() as cur:
                    cur.executemany(f"INSERT INTO {target} ({collist}) VALUES ({marks}) ON CONFLICT DO NOTHING", rows)
                return self._conn.total_changes - before

            return self._retrying(sqlite_tx)
        stage = f"stage_{target}"  # temp tables shadow same-named ones: keep the name distinct

        def pg_tx() -> int:
            with self._tx() as cur:
                if stage not in self._staged:
                    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {target}) ON COMMIT DELETE ROWS")
                with cur.copy(f"COPY {stage} ({collist}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types([_COPY_TYPE[_KIND[table][c]] for c in names])
                    for row in rows:
                        copy.write_row(row)
                cur.execute(f"INSERT INTO {target} ({collist}) SELECT {collist} FROM {stage} ON CONFLICT DO NOTHING")
                inserted = cur.rowcount
            self._staged.add(stage)  # only once the CREATE is committed
            return inserted

        return self._retrying(pg_tx)

    def _add_frame(self, table: str, data: pd.DataFrame | Mapping[str, Any]) -> int:
        """Columns by name from a frame or mapping; scalars broadcast; unknown names are ignored."""
        present = [c for c, _, _ in _COLUMNS[table] if c in data]
        missing = [c for c in _REQUIRED[table] if c not in data]
        if missing:
            raise ValueError(f"{table} needs columns {missing}")
        lengths = {np.size(data[c]) for c in present if np.ndim(data[c]) > 0}
        if len(lengths) > 1:
            raise ValueError(f"{table} columns have different lengths: {sorted(lengths)}")
        n = lengths.pop() if lengths else 1
        return self._insert(table, {c: _column(_KIND[table][c], data[c], n, c) for c in present})

    def _readings_frame(self, rows: list[tuple[Any, ...]], sensors: Sequence[str]) -> pd.DataFrame:
        cols = list(zip(*rows, strict=True)) if rows else [()] * (2 + len(sensors))
        frame = {"station": np.array(cols[0], dtype=object), "time": _times(np.array(cols[1], dtype=np.int64))}
        for i, s in enumerate(sensors):
            frame[s] = np.array(cols[2 + i], dtype=np.float64)  # None -> NaN
        return pd.DataFrame(frame)

    def _select_readings(
        self, where: str, params: Sequence[Any], sensors: Sequence[str] | None = None, order: str = "station, ts"
    ) -> pd.DataFrame:
        sensors = list(SENSORS if sensors is None else sensors)
        unknown = [s for s in sensors if s not in SENSOR_RANGES]
        if unknown:
            raise ValueError(f"unknown sensors {unknown}; canonical names are {SENSORS}")
        _check_columns(sensors)
        cols = ", ".join(["station", "ts", *(_q(s) for s in sensors)])
        rows = self._query(f"SELECT {cols} FROM {self._p}readings WHERE {where} ORDER BY {order}", params)
        return self._readings_frame(rows, sensors)

    def _table_frame(self, table: str, where: str, params: Sequence[Any], order: str) -> pd.DataFrame:
        spec = _COLUMNS[table]
        rows = self._query(
            f"SELECT {', '.join(c for c, _, _ in spec)} FROM {self._p}{table} WHERE {where} ORDER BY {order}", params
        )
        return _frame(spec, rows)

    # -- writes -------------------------------------------------------------------------------------------

    def add_readings(
        self,
        station: np.ndarray | str,
        ts: np.ndarray,
        values: np.ndarray,
        sensors: Sequence[str],
        partition: np.ndarray | int | None = None,
        offset: np.ndarray | int | None = None,
    ) -> int:
        """Insert N readings (``values`` [N, len(sensors)], NaN = absent); committed; returns rows new."""
        values = np.asarray(values, dtype=np.float64)
        sensors = list(sensors)
        unknown = [s for s in sensors if s not in SENSOR_RANGES]
        if unknown or len(set(sensors)) != len(sensors):
            raise ValueError(f"sensors must be distinct canonical names {SENSORS}, got {sensors}")
        if values.ndim != 2 or values.shape[1] != len(sensors):
            raise ValueError(f"values must be [N, {len(sensors)}], got shape {values.shape}")
        n = values.shape[0]
        if np.ndim(ts) != 1 or len(ts) != n or (np.ndim(station) and len(station) != n):
            raise ValueError(f"station and ts must have {n} entries like values")
        # Primary-key order (stable: the first of equal keys still wins): a poll's inserts, time-major over many
        # stations, then walk the B-trees in order instead of jumping between stations.
        st = np.broadcast_to(np.asarray(station, dtype=object), (n,))
        order = np.lexsort((np.broadcast_to(np.asarray(ts), (n,)), pd.factorize(st, sort=True)[0]))

        def sort(col: Any) -> Any:
            return col if col is None or np.ndim(col) == 0 else np.asarray(col)[order]

        columns: dict[str, list[Any]] = {"station": _texts(st[order], n), "ts": _epoch(sort(ts), n, "ts")}
        for j, s in enumerate(sensors):
            if not np.isnan(values[:, j]).all():  # a sensor none of the batch has: its column stays NULL anyway
                _check_columns([s])
                columns[s] = _floats(values[order, j], n)
        if partition is not None:
            columns["partition"] = _epoch(sort(partition), n, "partition")
        if offset is not None:
            columns["kafka_offset"] = _epoch(sort(offset), n, "offset")
        return self._insert("readings", columns)

    def add_forecasts(self, data: pd.DataFrame | Mapping[str, Any]) -> int:
        """Insert forecasts (station, issue_ts, horizon, target_ts, model_version, value; optional lo, hi,
        persistence, diurnal, band_offset); committed; returns rows new. Re-issuing the same (station, issue_ts,
        horizon) is a no-op.
        """
        return self._add_frame("forecasts", data)

    def add_errors(self, data: pd.DataFrame | Mapping[str, Any]) -> int:
        """Insert realized errors (station, issue_ts, horizon, target_ts, model_version, actual, abs_error;
        optional persistence_abs_error, diurnal_abs_error, covered, band_score); committed; returns rows new.
        """
        return self._add_frame("errors", data)

    def put_state(self, station: str, state: Mapping[str, Any]) -> None:
        """Replace the station's small JSON state (e.g. model assignment); committed on return."""

        def tx() -> None:
            with self._tx() as cur:
                cur.execute(
                    self._sql(
                        f"INSERT INTO {self._p}station_state (station, json) VALUES (?, ?) "
                        "ON CONFLICT (station) DO UPDATE SET json = excluded.json"
                    ),
                    (station, orjson.dumps(state).decode()),
                )

        self._retrying(tx)

    def drop(self) -> None:
        """Drop this namespace's tables (test teardown); refused without a namespace to protect real data."""
        if not self.namespace:
            raise ValueError("drop() only removes namespaced stores")
        with self._tx() as cur:
            for table in (*TABLES, "schema_version"):
                cur.execute(f"DROP TABLE IF EXISTS {self._p}{table}")

    # -- reads --------------------------------------------------------------------------------------------

    def readings(
        self, station: str, start_ts: int | None = None, end_ts: int | None = None, sensors: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """One station's readings in [start_ts, end_ts): columns station, time (UTC-naive ns), sensors."""
        where, params = ["station = ?"], [station]
        if start_ts is not None:
            where.append("ts >= ?")
            params.append(int(start_ts))
        if end_ts is not None:
            where.append("ts < ?")
            params.append(int(end_ts))
        return self._select_readings(" AND ".join(where), params, sensors, order="ts")

    def latest_readings(self, stations: Sequence[str], since_ts: int | Mapping[str, int]) -> pd.DataFrame:
        """All readings of ``stations`` with ts >= since_ts (rebuild rolling windows after a restart).

        ``since_ts`` may be one time for all or a time per station (stations caught up unevenly); each
        station's readings come in time order."""
        stations = list(stations)
        if not stations:
            return self._readings_frame([], SENSORS)
        if not isinstance(since_ts, Mapping):
            marks = ", ".join("?" * len(stations))
            return self._select_readings(f"station IN ({marks}) AND ts >= ?", [*stations, int(since_ts)])
        cols = ", ".join(["r.station", "r.ts", *(f"r.{_q(s)}" for s in SENSORS)])
        rows: list[tuple[Any, ...]] = []
        for chunk in _chunks(stations):
            values, params = _since_values(chunk, since_ts)
            rows += self._query(
                f"WITH s (station, since) AS (VALUES {values}) SELECT {cols} FROM s JOIN {self._p}readings r "
                "ON r.station = s.station AND r.ts >= s.since ORDER BY r.station, r.ts", params)
        return self._readings_frame(rows, SENSORS)

    def history(self, start_ts: int, end_ts: int, stations: Sequence[str] | None = None) -> pd.DataFrame:
        """All readings in [start_ts, end_ts), optionally of some stations, ordered by station, time."""
        where, params = "ts >= ? AND ts < ?", [int(start_ts), int(end_ts)]
        if stations is not None:
            stations = list(stations)
            if not stations:
                return self._readings_frame([], SENSORS)
            where += f" AND station IN ({', '.join('?' * len(stations))})"
            params += stations
        return self._select_readings(where, params)

    def stations(self) -> list[str]:
        """Stations with at least one stored reading, sorted."""
        return [r[0] for r in self._query(f"SELECT DISTINCT station FROM {self._p}readings ORDER BY station")]

    def n_stations(self) -> int:
        """How many stations have stored readings."""
        return int(self._query(f"SELECT COUNT(DISTINCT station) FROM {self._p}readings")[0][0])

    def spans(self) -> pd.DataFrame:
        """Per station: first and last reading time (epoch s) and the number of readings."""
        rows = self._query(f"SELECT station, MIN(ts), MAX(ts), COUNT(*) FROM {self._p}readings "
                           "GROUP BY station ORDER BY station")
        frame = pd.DataFrame(rows, columns=["station", "first_ts", "last_ts", "n"])
        return frame.astype({"first_ts": "int64", "last_ts": "int64", "n": "int64"})

    def stations_in_partitions(self, partitions: Sequence[int]) -> list[str]:
        """Stations whose readings arrived on these Kafka partitions (what a new partition owner rebuilds)."""
        partitions = [int(x) for x in partitions]
        if not partitions:
            return []
        marks = ", ".join("?" * len(partitions))
        sql = f"SELECT DISTINCT station FROM {self._p}readings WHERE partition IN ({marks}) ORDER BY station"
        return [r[0] for r in self._query(sql, partitions)]

    def max_ts(self, stations: Sequence[str] | None = None) -> int | None:
        """The newest reading time (epoch s) over ``stations`` (all when None)."""
        sql, params = f"SELECT MAX(ts) FROM {self._p}readings", []
        if stations is not None:
            stations = list(stations)
            if not stations:
                return None
            sql += f" WHERE station IN ({', '.join('?' * len(stations))})"
            params = stations
        value = self._query(sql, params)[0][0]
        return None if value is None else int(value)

    def newest_by_station(self, stations: Sequence[str]) -> dict[str, int]:
        """The newest reading time (epoch s) of each of ``stations`` that has readings (one index scan each)."""
        out: dict[str, int] = {}
        for chunk in _chunks(list(stations)):
            sql = (f"SELECT station, MAX(ts) FROM {self._p}readings "
                   f"WHERE station IN ({', '.join('?' * len(chunk))}) GROUP BY station")
            out |= {r[0]: int(r[1]) for r in self._query(sql, chunk)}
        return out

    def last_issue(self, stations: Sequence[str]) -> dict[str, int]:
        """The newest forecast issue time (epoch s) per station that has forecasts."""
        stations = list(stations)
        if not stations:
            return {}
        sql = (f"SELECT station, MAX(issue_ts) FROM {self._p}forecasts "
               f"WHERE station IN ({', '.join('?' * len(stations))}) GROUP BY station")
        return {r[0]: int(r[1]) for r in self._query(sql, stations)}

    def pending_forecasts(self, since_issue_ts: int, stations: Sequence[str] | None = None) -> pd.DataFrame:
        """Forecasts issued at/after since_issue_ts with no error row yet (rebuild the scoring state)."""
        p = self._p
        where = (
            f"issue_ts >= ? AND NOT EXISTS (SELECT 1 FROM {p}errors e WHERE e.station = {p}forecasts.station"
            f" AND e.issue_ts = {p}forecasts.issue_ts AND e.horizon = {p}forecasts.horizon)"
        )
        params: list[Any] = [int(since_issue_ts)]
        if stations is not None:
            stations = list(stations)
            where += f" AND station IN ({', '.join('?' * len(stations))})" if stations else " AND 1 = 0"
            params += stations
        return self._table_frame("forecasts", where, params, order="target_ts, station, horizon")

    def pending_since(self, since_target_ts: Mapping[str, int], max_lead_s: int) -> pd.DataFrame:
        """Per station: forecasts with target_ts >= its time and no error row yet (the scoring state of stations
        caught up unevenly). ``max_lead_s`` (the longest horizon) bounds the issue times scanned."""
        p, spec = self._p, _COLUMNS["forecasts"]
        cols = ", ".join(f"f.{c}" for c, _, _ in spec)
        rows: list[tuple[Any, ...]] = []
        for chunk in _chunks(list(since_target_ts)):
            values, params = _since_values(chunk, since_target_ts)
            rows += self._query(
                f"WITH s (station, since) AS (VALUES {values}) SELECT {cols} FROM s JOIN {p}forecasts f "
                "ON f.station = s.station AND f.issue_ts >= s.since - ? AND f.target_ts >= s.since "
                f"WHERE NOT EXISTS (SELECT 1 FROM {p}errors e WHERE e.station = f.station "
                "AND e.issue_ts = f.issue_ts AND e.horizon = f.horizon)", [*params, int(max_lead_s)])
        return _frame(spec, rows)

    def errors(self, station: str | None = None, since_ts: int | None = None) -> pd.DataFrame:
        """Realized errors, optionally of one station and with target_ts >= since_ts, by target_ts."""
        where, params = ["1 = 1"], []
        if station is not None:
            where.append("station = ?")
            params.append(station)
        if since_ts is not None:
            where.append("target_ts >= ?")
            params.append(int(since_ts))
        return self._table_frame("errors", " AND ".join(where), params, order="target_ts, station, horizon")

    def recent_errors(self, since_target_ts: Mapping[str, int], max_lead_s: int, per_horizon: int,
                      issued_until: Mapping[str, int] | None = None) -> pd.DataFrame:
        """Per station, its newest ``per_horizon`` errors at each horizon with target_ts >= its time, by target_ts
        (rebuild rolling state after a restart); ``issued_until``: only forecasts issued up to the station's time.
        ``max_lead_s`` (the longest horizon) bounds the issue times scanned, so the primary key's range serves the
        scan."""
        p, spec = self._p, _COLUMNS["errors"]
        cols = ", ".join(c for c, _, _ in spec)
        rows: list[tuple[Any, ...]] = []
        for chunk in _chunks(list(since_target_ts)):
            values = ", ".join(["(CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT))"] * len(chunk))
            params = [x for st in chunk for x in (st, int(since_target_ts[st]),
                                                   int(issued_until[st]) if issued_until else _NO_END)]
            rows += self._query(
                f"WITH s (station, since, until) AS (VALUES {values}) SELECT {cols} FROM (SELECT e.*, ROW_NUMBER() "
                "OVER (PARTITION BY e.station, e.horizon ORDER BY e.target_ts DESC) AS newest FROM s JOIN "
                f"{p}errors e ON e.station = s.station AND e.issue_ts >= s.since - ? AND e.issue_ts <= s.until "
                "AND e.target_ts >= s.since) x WHERE newest <= ? ORDER BY target_ts, station, horizon",
                [*params, int(max_lead_s), int(per_horizon)])
        return _frame(spec, rows)

    def count(self, table: str) -> int:
        """Rows in one of :data:`TABLES`."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; one of {TABLES}")
        return int(self._query(f"SELECT COUNT(*) FROM {self._p}{table}")[0][0])

    def get_state(self, station: str) -> dict[str, Any] | None:
        """The station's JSON state, or None if never put."""
        rows = self._query(f"SELECT json FROM {self._p}station_state WHERE station = ?", (station,))
        return orjson.loads(rows[0][0]) if rows else None
