"""Poison messages and a dying service loop, with the real broker, store and ``stationcast`` processes.

A message that cannot even be dead-lettered as it came (800 KB of junk: its base64 copy is over the
producer's 1 MiB limit) must cost one bounded dead-letter record, not the partition; a loop that dies of
something it cannot handle must take the process down with a non-zero status so a supervisor restarts it.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from pipeline.broker import EmbeddedBroker, make_producer
from pipeline.readings import DeadLetter
from pipeline.store import Store
from tests.broker_fixture import CONSUMER_SETTINGS, consume_topic, kafka_broker  # noqa: F401
from tests.pipeline_harness import (
    ROOT,
    ServiceThread,
    Setup,
    make_setup,
    metric,
    month_of_records,
    publish,
    start_service_process,
    wait_until,
)

POISON = b"x" * 800_000
BOUND = 16 << 10  # a dead-letter record far below any producer's request limit


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _service_url(proc: subprocess.Popen, log: Path, timeout: float = 180) -> str:
    """The HTTP address ``serve`` logs once it is up (it was started with --http-port 0)."""
    found: list[str] = []

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        found[:] = re.findall(r"metrics (http://[\d.]+:\d+)/metrics", log.read_text())
        return bool(found)

    wait_until(up, timeout, "the service to start")
    return found[0]


def _committed(setup: Setup, partition: int) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=setup.bootstrap, group_id=setup.cfg.group_id,
                             enable_auto_commit=False, **CONSUMER_SETTINGS)
    try:
        return consumer.committed(TopicPartition(setup.cfg.broker.readings_topic, partition))
    finally:
        consumer.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_an_800kb_poison_message_is_dead_lettered_bounded_and_the_partition_goes_on(
    kafka_broker: EmbeddedBroker,  # noqa: F811
    tmp_path: Path,
) -> None:
    setup = make_setup(kafka_broker.bootstrap, tmp_path)
    records = month_of_records(days=3)
    log = tmp_path / "serve.log"
    proc = start_service_process(setup, log)
    try:
        base = _service_url(proc, log)
        wait_until(lambda: _get(f"{base}/readyz")[0] == 200, 120, "partitions assigned")
        producer = make_producer(setup.cfg.broker, setup.bootstrap)
        try:  # the poison first, on a station's partition, then that station's (and the others') readings
            sent = producer.send(setup.cfg.broker.readings_topic, key=b"EWR", value=POISON).get(timeout=30)
        finally:
            producer.close()
        stats = publish(setup, records)

        def stored() -> int:
            assert proc.poll() is None, f"serve died:\n{log.read_text()[-4000:]}"
            with Store.open(setup.cfg.store_url) as store:
                return store.count("readings")

        wait_until(lambda: stored() == stats.sent, 180, "the valid readings behind the poison to be stored")
        wait_until(lambda: (_committed(setup, sent.partition) or 0) > sent.offset, 60,
                   "the group's offset to move past the poison message")

        dead = consume_topic(setup.bootstrap, setup.cfg.broker.deadletter_topic, expected=1)
        assert len(dead) == 1
        assert len(dead[0].value) < BOUND
        letter = DeadLetter.from_message(dead[0].value)
        assert letter.reason == "not_json"
        assert (letter.size, letter.sha256) == (len(POISON), hashlib.sha256(POISON).hexdigest())
        assert POISON.startswith(letter.raw) and 0 < len(letter.raw) < BOUND
        assert (letter.partition, letter.offset, letter.key) == (sent.partition, sent.offset, b"EWR")
        assert _get(f"{base}/healthz")[0] == 200
        metrics = _get(f"{base}/metrics")[1].decode()
        assert "stationcast_deadletter_published_total 1.0" in metrics
        assert "stationcast_deadletter_failures_total 0.0" in metrics
        assert proc.poll() is None
    finally:
        _stop(proc)
    assert proc.returncode == 0, log.read_text()[-4000:]


def test_a_dead_letter_the_producer_refuses_is_counted_and_the_batch_still_stored(
    kafka_broker: EmbeddedBroker,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A real producer that refuses records over 2000 bytes: that dead letter fails, nothing else does."""
    setup = make_setup(kafka_broker.bootstrap, tmp_path)
    records = month_of_records(days=1).head(12)  # fewer readings than a window: no forecast to publish
    junk = [b"{not json", b"[1, 2]", b"y" * 5000]
    runner = ServiceThread(setup)
    with runner as service:
        service.producer.close()
        service.producer = make_producer(setup.cfg.broker, setup.bootstrap, max_request_size=2000)
        producer = make_producer(setup.cfg.broker, setup.bootstrap)
        try:
            for value in junk:
                producer.send(setup.cfg.broker.readings_topic, key=b"JFK", value=value)
            producer.flush()
        finally:
            producer.close()
        stats = publish(setup, records)
        wait_until(lambda: service.totals.consumed == stats.sent + len(junk), 120, "every message consumed")
        with Store.open(setup.cfg.store_url) as store:
            assert store.count("readings") == stats.sent
        failures = metric(service, "stationcast_deadletter_failures_total")
        published = metric(service, "stationcast_deadletter_published_total")
        assert failures == 1 and published == 2  # only the 5000-byte one's excerpt is over 2000 bytes
        assert runner.thread.is_alive()


def _trigger_refusing_readings(url: str) -> None:
    """A store that fails in a way the service cannot handle: every insert of a reading is aborted."""
    Store.open(url).close()  # the real schema
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON readings BEGIN SELECT RAISE(ABORT, 'refused'); END")
    conn.commit()
    conn.close()


def test_serve_exits_non_zero_when_its_loop_dies(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:  # noqa: F811
    setup = make_setup(kafka_broker.bootstrap, tmp_path)
    _trigger_refusing_readings(setup.cfg.store_url)
    log = tmp_path / "serve.log"
    proc = start_service_process(setup, log)
    try:
        base = _service_url(proc, log)
        wait_until(lambda: _get(f"{base}/readyz")[0] == 200, 120, "partitions assigned")
        publish(setup, month_of_records(days=1).head(3))
        proc.wait(timeout=120)
    finally:
        _stop(proc)
    text = log.read_text()
    assert proc.returncode == 1, text[-4000:]
    assert "the service loop died" in text and "refused" in text


@pytest.mark.slow
def test_run_keep_serving_exits_non_zero_when_its_service_dies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    _trigger_refusing_readings(url)
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--keep-serving", "--limit", "50", "--http-port", "0",
           "--store-url", url, "--registry", str(tmp_path / "registry"), "--device", "cpu"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 1, res.stderr[-4000:]
    assert "stationcast run: error: the service stopped" in res.stderr
