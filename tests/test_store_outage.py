"""A lost PostgreSQL connection does not stop the service: the real ``stationcast serve`` process against the real
broker and PostgreSQL, its backend terminated with ``pg_terminate_backend`` and the database made unreachable
(through a TCP relay the test cuts), while real readings keep coming."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import urllib.error
import urllib.request
import uuid

import pytest

from pipeline.store import Store
from tests.broker_fixture import kafka_broker  # noqa: F401
from tests.conftest import PG_URL, pg_url
from tests.pipeline_harness import make_setup, month_of_records, publish, start_service_process, wait_until


class Relay:
    """A TCP relay to PostgreSQL that can be cut: open connections are dropped and new ones refused."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._socks: list[socket.socket] = []
        self._server: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> Relay:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the relay's thread
        self._server.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()




@pytest.fixture
def schema():
    """A PostgreSQL schema of its own (the service's tables are not namespaced), dropped after."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metric(base: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", _get(f"{base}/metrics")[1], re.M)
    return float(m.group(1)) if m else float("nan")


def test_service_rides_out_a_lost_postgres_connection(kafka_broker, schema, tmp_path):  # noqa: F811
    import psycopg

    app = f"stationcast-test-{schema}"
    relay = Relay(("127.0.0.1", 5432)).start()
    url = f"postgresql://postgres@127.0.0.1:{relay.port}/test?application_name={app}&options=-csearch_path%3D{schema}"
    direct = f"{PG_URL}?options=-csearch_path%3D{schema}"
    setup = make_setup(kafka_broker.bootstrap, tmp_path, store_url=url)
    records = month_of_records(days=12)
    parts = [records[records["time"] < "2013-01-05"],
             records[(records["time"] >= "2013-01-05") & (records["time"] < "2013-01-09")],
             records[records["time"] >= "2013-01-09"]]
    log = tmp_path / "service.log"
    proc = start_service_process(setup, log)

    def stored() -> int:
        with Store.open(direct) as s:
            return s.count("readings")

    def alive() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the service exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        return True

    try:
        wait_until(lambda: alive() and "status page http" in log.read_text(), 120, "the service's HTTP endpoints")
        base = re.search(r"status page (http://[0-9.:]+)/status", log.read_text()).group(1)
        sent = publish(setup, parts[0]).expected_valid
        wait_until(lambda: alive() and stored() >= sent, 120, "the first readings stored")
        # 1. The backend is terminated (an operator, a failover, an idle-connection reaper).
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            killed = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                                  (app,)).fetchall()
        assert killed == [(True,)], "the service holds one connection, named by the URL's application_name"
        sent += publish(setup, parts[1]).expected_valid
        wait_until(lambda: alive() and stored() >= sent, 120, "readings stored after the backend was terminated")
        wait_until(lambda: _metric(base, "stationcast_store_reconnects_total") >= 1, 30, "the reconnect counted")
        assert _metric(base, "stationcast_store_up") == 1.0 and _get(f"{base}/readyz")[0] == 200
        # 2. The database refuses connections for a while: not ready, readings wait, nothing is lost.
        relay.cut()
        sent += publish(setup, parts[2]).expected_valid
        wait_until(lambda: alive() and _get(f"{base}/readyz")[0] == 503, 60, "/readyz to report the outage")
        assert _metric(base, "stationcast_store_up") == 0.0 and _metric(base, "stationcast_ready") == 0.0
        assert _get(f"{base}/healthz")[0] == 200, "waiting for the database is not a stalled loop"
        relay.start()
        wait_until(lambda: alive() and stored() >= sent, 120, "readings stored after the database came back")
        wait_until(lambda: _get(f"{base}/readyz")[0] == 200, 60, "ready again")
        assert _metric(base, "stationcast_store_reconnects_total") >= 2
        assert _metric(base, "stationcast_store_outages_total") >= 2
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            names = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,))
            assert names.fetchone()[0] == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
        relay.cut()
    assert code == 0, log.read_text()[-3000:]
    assert stored() == sent
    with Store.open(direct) as s:
        assert s.count("forecasts") > 0 and s.count("errors") > 0


def test_postgres_connections_are_named_for_operators(schema):
    """Without an application_name in the URL the service's connection shows as ``stationcast``."""
    with Store.open(f"{PG_URL}?options=-csearch_path%3D{schema}") as store:
        pid = store._conn.info.backend_pid
        assert store._query("SELECT application_name FROM pg_stat_activity WHERE pid = ?", (pid,)) == [
            ("stationcast",)]


def test_sqlite_write_waits_out_a_lock_held_beyond_busy_timeout(tmp_path):
    """Another process holding SQLite's write lock longer than busy_timeout delays a batch; it does not fail it."""
    import sqlite3
    import time

    import numpy as np

    path = tmp_path / "store.db"
    events: list[bool] = []
    with Store.open(f"sqlite:///{path}") as store:
        store._conn.execute("PRAGMA busy_timeout=200")  # the default 10 s would only make the test slow
        store.on_outage = lambda up, _cause: events.append(up)
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # e.g. a backup or a manual edit holding the write lock
        release = threading.Timer(1.5, lambda: other.execute("COMMIT"))
        release.start()
        started = time.monotonic()
        added = store.add_readings(np.array(["A", "A"], dtype=object), np.array([0, 3600]), np.ones((2, 1)), ["T"])
        waited = time.monotonic() - started
        release.join()
        other.close()
        assert added == 2 and store.count("readings") == 2
        assert waited >= 1.0 and events == [False, True]
