"""Harness of the chaos test (tests/test_chaos.py): the pieces a hostile operator would use, as small helpers.

A :class:`Run` owns one Tansu broker that outlives the service (the test starts it, kills it, restarts it on
the same port), ``stationcast serve`` as a real process that can be killed with SIGKILL, a station gateway
that (re)publishes its whole source, and the store the service writes. :func:`dump_store` reads every table
of a store as it is on disk, and :func:`compare_stores` says row for row how two stores differ.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from pipeline.broker import BrokerConfig, EmbeddedBroker, ensure_topics, free_port, make_producer
from pipeline.replay import ReplayStats, records_for_replay, replay
from tests.broker_fixture import consume_topic

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("STATIONCAST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
# The default topics and partition count (every run has a broker of its own). The partition count must stay
# Tansu's default: after a broker restart the service's clients may create the topics before the test does.
TOPICS = BrokerConfig()
PARTITIONS = TOPICS.partitions

# Columns that legitimately differ between a run with faults and one without, and why.
IGNORED_COLUMNS: dict[str, dict[str, str]] = {
    # Where on the broker the first stored copy of a reading sat: the chaos run's republished topic also holds
    # the poison message ahead of that partition's readings, so its offsets there are one higher.
    "readings": {"kafka_offset": "broker coordinates of the delivery that was stored first"},
    "schema_version": {"applied_ts": "wall-clock time the migration ran"},
}
# Model outputs may differ in their last float32 bits (never more than this, in °C): the CPU kernels take other
# code paths for other batch sizes (measured: up to 9e-6 °C between one station per forward pass and several),
# and which stations share a forward pass depends on poll timing, restarts and rebuilds. Readings are exact.
FLOAT_TOLERANCE: dict[str, float] = {"forecasts": 1e-4, "errors": 1e-4}


# The published band: calibrated from the station's own scores and hits once it has enough (rebuilt exactly from the
# store after a restart), from the fleet's before; which fleet scores exist then depends on how far the other stations
# have got, which differs between two runs, restarts or not.
BAND = ["lo", "hi", "band_offset"]


def own_band(forecasts: pd.DataFrame, errors: pd.DataFrame, cfg) -> np.ndarray:
    """Forecast rows issued when their station had enough scores of its own at that horizon (targets observed up
    to the issue time; a margin of the lateness allowance for readings scored late)."""
    need = min(cfg.band_min_scores, cfg.band_window) + cfg.lateness_steps
    key = ["station", "horizon"]
    scored = errors.sort_values("target_ts")[[*key, "target_ts"]]
    out = np.zeros(len(forecasts), dtype=bool)
    for (station, horizon), rows in forecasts.groupby(key, sort=False):
        targets = scored.loc[(scored["station"] == station) & (scored["horizon"] == horizon), "target_ts"]
        out[rows.index] = np.searchsorted(targets.to_numpy(), rows["issue_ts"].to_numpy(), side="right") >= need
    return out


# ---------------------------------------------------------------------------------------------- data


def pseudo_stations(files: dict[str, Path], per_file: int, hours: int, start: str) -> pd.DataFrame:
    """``per_file`` stations from each real station file, each ``hours`` consecutive hourly records of its own
    stretch of that file's years, re-timed onto one clock starting at ``start`` (a network's stations report the
    same hours). Stretches are spread over each file's years and seasons; only gap-free ones are used."""
    t0 = np.datetime64(start, "ns")
    clock = t0 + np.arange(hours) * np.timedelta64(1, "h")
    parts = []
    for name, path in files.items():
        rec = records_for_replay(path).sort_values("time", kind="stable").reset_index(drop=True)
        times = rec["time"].to_numpy(dtype="datetime64[ns]")
        step_ok = np.r_[np.diff(times) == np.timedelta64(1, "h"), False]
        bad_before = np.r_[0, np.cumsum(~step_ok)]  # bad steps in [0, i)
        starts = np.arange(0, len(rec) - hours + 1, hours)
        whole = starts[bad_before[starts + hours - 1] - bad_before[starts] == 0]
        if len(whole) < per_file:
            raise ValueError(f"{path}: only {len(whole)} gap-free stretches of {hours} h, {per_file} wanted")
        picks = whole[np.linspace(0, len(whole) - 1, per_file).round().astype(int)]
        for j, s in enumerate(picks.tolist()):
            parts.append(rec.iloc[s : s + hours].assign(station=f"{name}-{j:03d}", time=clock))
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------------- stores


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def create_pg_database(prefix: str) -> str:
    """A fresh PostgreSQL database (the service cannot be pointed at a namespace): its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return PG_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def terminate_pg_connections(url: str) -> int:
    """What an operator's `pg_terminate_backend` (or a failover) does to the service: every connection to the
    store's database is dropped. Returns how many were."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return sum(bool(r[0]) for r in rows)


@contextlib.contextmanager
def _connect(url: str) -> Iterator[tuple[object, bool]]:
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)
        try:
            yield conn, False
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        yield conn, True


def _tables(conn, pg: bool) -> list[str]:
    if pg:
        sql = ("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
               "AND table_type = 'BASE TABLE' ORDER BY table_name")
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    return [r[0] for r in conn.execute(sql).fetchall()]


def store_counts(url: str) -> dict[str, int]:
    """Rows per table; {} while the store does not exist yet or cannot be reached."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return {}
    try:
        with _connect(url) as (conn, pg):
            return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in _tables(conn, pg)}
    except Exception:  # noqa: BLE001 (a dropped connection, a locked or half-created file: ask again later)
        return {}


def newest_by_partition(url: str) -> dict[int, int]:
    """The newest stored reading time (epoch s) per Kafka partition: how far each partition has been worked."""
    try:
        with _connect(url) as (conn, _pg):
            rows = conn.execute("SELECT partition, MAX(ts) FROM readings GROUP BY partition").fetchall()
    except Exception:  # noqa: BLE001 (not created yet, or the connection was dropped: ask again later)
        return {}
    return {int(p): int(t) for p, t in rows if p is not None}


def dump_store(url: str) -> dict[str, pd.DataFrame]:
    """Every table of the store (whatever the schema holds, not a list kept here), every column, sorted by its
    non-float columns (for the store's tables, these include the primary key)."""
    out = {}
    with _connect(url) as (conn, pg):
        for table in _tables(conn, pg):
            cur = conn.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cur.description]
            frame = pd.DataFrame(cur.fetchall(), columns=columns)
            keys = [c for c in columns if frame[c].dtype.kind != "f"] or columns
            out[table] = frame.sort_values(keys, kind="stable", ignore_index=True) if len(frame) else frame
    return out


def compare_stores(control: dict[str, pd.DataFrame], chaos: dict[str, pd.DataFrame],
                   own: np.ndarray | None = None) -> list[str]:
    """Differences, one line per table that differs: rows missing, extra, or with other values.

    Rows are matched on their non-float columns (for the store's tables, these include the primary key);
    float columns must be equal (NaN equal to NaN), bit for bit or within :data:`FLOAT_TOLERANCE`; the columns
    of :data:`IGNORED_COLUMNS` are left out. ``own`` (see :func:`own_band`, one flag per control forecast row):
    the calibrated band, and whether an actual fell in it, are compared only where the station's own scores
    calibrated it.
    """
    if own is not None:
        control, chaos = _band_where_own(control, own), _band_where_own(chaos, None, control["forecasts"], own)
    problems = []
    if set(control) != set(chaos):
        problems.append(f"tables differ: control {sorted(control)}, chaos {sorted(chaos)}")
    for table in sorted(set(control) & set(chaos)):
        a, b = control[table], chaos[table]
        if list(a.columns) != list(b.columns):
            problems.append(f"{table}: columns differ: {list(a.columns)} vs {list(b.columns)}")
            continue
        cols = [c for c in a.columns if c not in IGNORED_COLUMNS.get(table, {})]
        a, b = a[cols], b[cols]
        floats = [c for c in cols if a[c].dtype.kind == "f" or b[c].dtype.kind == "f"]
        keys = [c for c in cols if c not in floats]
        if not keys:  # nothing to match on: compare as sorted lists
            same = len(a) == len(b) and np.allclose(a.to_numpy(np.float64), b.to_numpy(np.float64), rtol=0,
                                                    atol=FLOAT_TOLERANCE.get(table, 0.0), equal_nan=True)
            if not same:
                problems.append(f"{table}: {len(a):,} rows vs {len(b):,}, contents differ")
            continue
        if len(a) == len(b) and a[keys].equals(b[keys]):  # the usual case, fast: same keys in the same order
            matched = a.join(b[floats].add_suffix("__chaos"))
            missing = extra = matched.iloc[:0]
        else:
            both = a.merge(b, on=keys, how="outer", suffixes=("", "__chaos"), indicator=True)
            missing = both[both["_merge"] == "left_only"]
            extra = both[both["_merge"] == "right_only"]
            matched = both[both["_merge"] == "both"]
        differ = np.zeros(len(matched), dtype=bool)
        tolerance, worst = FLOAT_TOLERANCE.get(table, 0.0), 0.0
        for c in floats:
            x = matched[c].to_numpy(dtype=np.float64)
            y = matched[f"{c}__chaos"].to_numpy(dtype=np.float64)
            gap = np.abs(x - y)
            differ |= ~((gap <= tolerance) | (np.isnan(x) & np.isnan(y)))
            worst = max(worst, float(np.nanmax(gap, initial=0.0)))
        shown = keys + [f"{c}{suffix}" for c in floats for suffix in ("", "__chaos")]
        dup = int(a.duplicated(keys).sum() + b.duplicated(keys).sum())
        if len(missing) or len(extra) or differ.any() or dup:
            problems.append(
                f"{table}: control {len(a):,} rows, chaos {len(b):,}: {len(missing):,} missing from chaos"
                f"{_sample(missing, keys)}, {len(extra):,} extra{_sample(extra, keys)}, "
                f"{int(differ.sum()):,} with other values (largest difference {worst:.3g})"
                f"{_sample(matched[differ], shown)}"
                + (f", {dup} duplicated keys" if dup else "")
            )
    return problems


def _band_where_own(tables: dict[str, pd.DataFrame], own: np.ndarray | None, reference: pd.DataFrame | None = None,
                    reference_own: np.ndarray | None = None) -> dict[str, pd.DataFrame]:
    """The tables with the band columns blanked (NaN) on forecasts not calibrated from their station's own scores;
    ``own`` flags ``tables["forecasts"]`` rows, or is looked up by key in ``reference`` / ``reference_own``."""
    key = ["station", "issue_ts", "horizon"]
    if own is None:
        flags = reference[key].assign(own=reference_own)
        own = tables["forecasts"][key].merge(flags, on=key, how="left")["own"].fillna(False).to_numpy(dtype=bool)
    flags = tables["forecasts"][key].assign(own=own)
    out = dict(tables)
    out["forecasts"] = tables["forecasts"].astype({c: float for c in BAND})
    out["forecasts"].loc[~own, BAND] = np.nan
    errors = tables["errors"].astype({"covered": float})
    mine = errors[key].merge(flags, on=key, how="left")["own"].fillna(False).to_numpy(dtype=bool)
    errors.loc[~mine, "covered"] = np.nan
    out["errors"] = errors
    return out


def _sample(frame: pd.DataFrame, cols: list[str]) -> str:
    if frame.empty:
        return ""
    by_station = f" over {frame['station'].nunique()} stations" if "station" in frame else ""
    return f"{by_station} (first: {frame[cols].head(2).to_dict('records')})"


# ---------------------------------------------------------------------------------------------- waiting


class ServiceDied(AssertionError):
    """The service exited although nobody killed it."""


def wait_for(check: Callable[[], bool], timeout: float, what: str, guard: Callable[[], None] | None = None,
             interval: float = 0.2, status: Callable[[], str] | None = None) -> None:
    """Poll ``check`` until it holds; ``guard`` raises early when waiting is pointless (the service died)."""
    deadline = time.monotonic() + timeout
    while True:
        if guard is not None:
            guard()
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f"; {status()}" if status else ""))
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------- service


def service_command() -> list[str]:
    """The console script a user runs; ``python -m pipeline.cli`` where the venv has none."""
    script = Path(sys.executable).with_name("stationcast")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]


class ServiceProcess:
    """``stationcast serve --bootstrap-servers ...`` in its own session, so SIGKILL reaches all of it."""

    def __init__(self, bootstrap: str, store_url: str, workdir: Path, settings: dict[str, str]):
        self.bootstrap, self.store_url, self.workdir = bootstrap, store_url, workdir
        self.http_port = free_port()
        self.settings = settings
        self.log = workdir / "service.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.alive, "already running"
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATIONCAST_")}
        env |= {"PYTHONUNBUFFERED": "1", **{f"STATIONCAST_{k.upper()}": v for k, v in self.settings.items()}}
        cmd = [*service_command(), "serve", "--bootstrap-servers", self.bootstrap, "--store-url", self.store_url,
               "--registry", str(self.workdir / "registry"), "--http-port", str(self.http_port), "--device", "cpu"]
        with open(self.log, "ab") as log:
            log.write(f"\n===== chaos harness: start #{self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def kill9(self) -> None:
        """SIGKILL, as the OOM killer or a node failure would: nothing is flushed, nothing is closed."""
        assert self.alive, self.died_message("before the kill")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait: the exit code of a graceful shutdown."""
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_quietly()
            raise AssertionError(f"service did not stop within {timeout:.0f} s of SIGTERM") from None

    def kill_quietly(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def died_message(self, when: str) -> str:
        code = None if self.proc is None else self.proc.poll()
        return f"service exited by itself (code {code}) {when}; its log ends:\n{self.log_tail()}"

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes] | None:
        """(status, body) of an HTTP GET to the service; None when it does not answer."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (OSError, urllib.error.URLError):
            return None

    def metrics(self) -> dict[tuple[str, tuple], float] | None:
        """Every sample of /metrics as {(name, sorted labels): value}; None when it does not answer."""
        got = self.get("/metrics")
        if got is None or got[0] != 200:
            return None
        out = {}
        for family in text_string_to_metric_families(got[1].decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


def metric(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def partition_lags(samples: dict) -> dict[str, float]:
    return {dict(k[1])["partition"]: v for k, v in samples.items() if k[0] == "stationcast_consumer_lag"}


# ---------------------------------------------------------------------------------------------- one run


@dataclass
class Quiet:
    """What the store and the service looked like once nothing changed any more."""

    counts: dict[str, int]
    samples: dict


class Run:
    """One run of the service against a broker of its own: publish, start, kill, restart, wait, inspect."""

    def __init__(self, workdir: Path, store_url: str, records: pd.DataFrame, settings: dict[str, str]):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.store_url, self.records = workdir, store_url, records
        self.broker = EmbeddedBroker(log_path=workdir / "tansu.log")
        self.service = ServiceProcess(self.broker.bootstrap, store_url, workdir, settings)
        self.events: list[str] = []  # what was done when, for the failure message
        self._t0 = time.monotonic()

    def __enter__(self) -> Run:
        self.broker.start()
        ensure_topics(TOPICS, self.broker.bootstrap, TOPICS.topics())
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.kill_quietly()
        self.broker.stop()

    def note(self, event: str) -> None:
        counts = store_counts(self.store_url)
        first = int(self.records["time"].min().timestamp())
        hours = {p: (t - first) // 3600 for p, t in sorted(newest_by_partition(self.store_url).items())}
        self.events.append(f"{time.monotonic() - self._t0:6.1f}s {event} (store: {counts}; hours stored per "
                           f"partition: {hours})")

    def history(self) -> str:
        return "\n".join(self.events)

    # -- the station gateway ---------------------------------------------------------------------------

    def publish(self) -> ReplayStats:
        """The gateway sends its whole source (again, after a broker outage)."""
        producer = make_producer(TOPICS, self.broker.bootstrap)
        try:
            stats = replay(self.records, producer, TOPICS.readings_topic, progress=False)
        finally:
            producer.close()
        assert stats.failed == 0, f"{stats.failed} readings not delivered to the broker"
        self.note(f"published {stats.sent:,} readings")
        return stats

    def publish_raw(self, key: bytes, value: bytes) -> None:
        producer = make_producer(TOPICS, self.broker.bootstrap, max_request_size=2 << 20)
        try:
            producer.send(TOPICS.readings_topic, key=key, value=value).get(timeout=30)
        finally:
            producer.close()
        self.note(f"published a {len(value):,}-byte message keyed {key!r}")

    def deadletters(self) -> list:
        return consume_topic(self.broker.bootstrap, TOPICS.deadletter_topic)

    # -- faults ----------------------------------------------------------------------------------------

    def kill_service(self, why: str = "") -> None:
        self.service.kill9()
        self.note(f"service killed with SIGKILL (start #{self.service.starts}){why}")

    def restart_broker(self) -> None:
        """SIGKILL the broker and start a new one on the same port: topics, messages, offsets are gone."""
        self.broker.stop()
        self.note("broker killed with SIGKILL")
        self.broker.start()
        ensure_topics(TOPICS, self.broker.bootstrap, TOPICS.topics())
        self.note("new broker on the same port, topics created")

    def rebalances(self) -> float:
        samples = self.service.metrics()
        return -1.0 if samples is None else metric(samples, "stationcast_rebalances_total") or 0.0

    # -- waiting ---------------------------------------------------------------------------------------

    def status(self) -> str:
        return f"store {store_counts(self.store_url)}; what the test did:\n{self.history()}"

    def guard(self, when: str) -> Callable[[], None]:
        """Raise :class:`ServiceDied` (with what the test did) as soon as the service has exited by itself."""
        def check() -> None:
            if not self.service.alive:
                raise ServiceDied(f"{self.service.died_message(when)}\nwhat the test did:\n{self.history()}")
        return check

    def wait_readings(self, n: int, timeout: float, when: str) -> None:
        """Until at least ``n`` readings are stored (how the test places faults mid-backlog)."""
        wait_for(lambda: store_counts(self.store_url).get("readings", 0) >= n, timeout,
                 f"{n:,} stored readings", self.guard(when), interval=0.05, status=self.status)

    def wait_uneven(self, behind_h: tuple[float, float], first_ts: int, last_ts: int, timeout: float,
                    exclude: set[int] = frozenset()) -> int | None:
        """Until a partition is worked to the end of the backlog while another one (not in ``exclude``) is only
        ``behind_h`` hours (from, to) into it: the unevenly caught-up state a backlog is consumed in. Returns that
        partition, or None as soon as no partition can reach the state any more (consumed in another order)."""
        found: list[int | None] = []

        def uneven() -> bool:
            newest = newest_by_partition(self.store_url)
            hours = {p: (newest[p] - first_ts) / 3600 if p in newest else -1.0 for p in range(PARTITIONS)}
            done = [p for p in hours if newest.get(p, first_ts) >= last_ts]
            open_ = [p for p in hours if p not in exclude and p not in done]
            behind = [p for p in open_ if behind_h[0] <= hours[p] <= behind_h[1]]
            if done and behind:
                found[:] = behind[:1]
                return True
            if not behind and all(hours[p] > behind_h[1] for p in open_):
                found[:] = [None]
                return True
            return False

        wait_for(uneven, timeout, f"a partition done and another {behind_h[0]:.0f}-{behind_h[1]:.0f} h in",
                 self.guard("before the kill it was waiting for"), interval=0.05, status=self.status)
        return found[0]

    def wait_quiet(self, readings: int, timeout: float, settle_s: float = 5.0) -> Quiet:
        """Until every reading is stored, every partition's lag is 0, no batch ran for ``settle_s`` and the
        store's row counts held still for ``settle_s``."""
        state: dict = {"counts": None, "since": 0.0, "samples": None}

        def quiet() -> bool:
            samples = self.service.metrics()
            counts = store_counts(self.store_url)
            now = time.monotonic()
            if counts != state["counts"]:
                state.update(counts=counts, since=now)
            if samples is None or counts.get("readings", 0) < readings:
                return False
            state["samples"] = samples
            lags = partition_lags(samples)
            last_batch = metric(samples, "stationcast_last_batch_timestamp_seconds") or 0.0
            return (len(lags) == PARTITIONS and not any(lags.values()) and time.time() - last_batch > settle_s
                    and now - state["since"] > settle_s)

        wait_for(quiet, timeout, f"quiescence with {readings:,} readings stored",
                 self.guard("while the test waited for it to finish the backlog"), interval=0.5,
                 status=self.status)
        self.note("quiescent")
        return Quiet(state["counts"], state["samples"])
