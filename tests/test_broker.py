"""The embedded broker and connection helpers, against a real Tansu broker (no Kafka mocks)."""

from __future__ import annotations

import socket
import time

import pytest
from kafka import TopicPartition

from pipeline import broker as broker_module
from pipeline.broker import BrokerConfig, BrokerError, EmbeddedBroker, connect, ensure_topics, make_producer
from tests import broker_fixture as kafka_test
from tests.broker_fixture import kafka_broker  # noqa: F401


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_embedded_broker_runs_on_a_free_port(kafka_broker: EmbeddedBroker) -> None:  # noqa: F811
    assert kafka_broker.alive
    assert kafka_broker.port != 9092
    assert kafka_broker.bootstrap == f"127.0.0.1:{kafka_broker.port}"
    assert _accepts(kafka_broker.port)
    assert "tansu" in kafka_broker.log_tail().lower()


def test_topics_get_the_requested_partition_count(kafka_broker: EmbeddedBroker) -> None:  # noqa: F811
    config = BrokerConfig()
    topics = {"test.parts3.a": 3, "test.parts1.b": 1, "test.parts7.c": 7}
    ensure_topics(config, kafka_broker.bootstrap, topics)
    ensure_topics(config, kafka_broker.bootstrap, topics)  # idempotent: already-exists is fine
    consumer = kafka_test.make_consumer(kafka_broker.bootstrap)
    try:
        for name, n in topics.items():
            assert consumer.partitions_for_topic(name) == set(range(n))
    finally:
        consumer.close()


def test_produce_consume_round_trip_keeps_keys_on_one_partition(kafka_broker: EmbeddedBroker) -> None:  # noqa: F811
    topic = kafka_test.fresh_topic(kafka_broker.bootstrap, partitions=4)
    producer = make_producer(BrokerConfig(), kafka_broker.bootstrap)
    sent = {(f"st{i % 5}".encode(), f"reading {i}".encode()) for i in range(200)}
    for key, value in sorted(sent, key=lambda kv: int(kv[1].split()[1])):
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    records = kafka_test.consume_topic(kafka_broker.bootstrap, topic, expected=len(sent))
    assert {(r.key, r.value) for r in records} == sent
    partitions_of_key: dict[bytes, set[int]] = {}
    for r in records:
        partitions_of_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in partitions_of_key.values())
    # Per key, order of production is kept.
    for key in partitions_of_key:
        numbers = [int(r.value.split()[1]) for r in records if r.key == key]
        assert numbers == sorted(numbers)


def test_consumer_group_reads_with_short_session_timeout(kafka_broker: EmbeddedBroker) -> None:  # noqa: F811
    topic = kafka_test.fresh_topic(kafka_broker.bootstrap, partitions=2)
    producer = make_producer(BrokerConfig(), kafka_broker.bootstrap)
    for i in range(20):
        producer.send(topic, key=b"k%d" % (i % 3), value=b"%d" % i)
    producer.flush()
    producer.close()
    consumer = kafka_test.make_consumer(
        kafka_broker.bootstrap, group_id=f"g-{topic}", auto_offset_reset="earliest"
    )
    try:
        consumer.subscribe([topic])
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < 20 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                got.extend(r.value for r in batch)
        assert sorted(got, key=int) == [b"%d" % i for i in range(20)]
        tp = TopicPartition(topic, 0)
        assert consumer.highwater(tp) is not None
    finally:
        consumer.close()


def test_restart_keeps_serving_on_the_same_port() -> None:
    config = BrokerConfig()
    with EmbeddedBroker() as broker:
        port = broker.port
        topic = "test.restart"
        ensure_topics(config, broker.bootstrap, {topic: 2})
        old = make_producer(config, broker.bootstrap)
        old.send(topic, key=b"a", value=b"before").get(timeout=10)

        broker.restart()
        assert broker.alive and broker.port == port
        ensure_topics(config, broker.bootstrap, {topic: 2})  # memory storage: the topic is gone
        new = make_producer(config, broker.bootstrap)
        new.send(topic, key=b"a", value=b"after, new producer").get(timeout=10)
        # A non-idempotent producer survives the restart too.
        old.send(topic, key=b"a", value=b"after, old producer").get(timeout=20)
        new.close()
        old.close()
        values = {r.value for r in kafka_test.consume_topic(broker.bootstrap, topic, expected=2)}
        assert values == {b"after, new producer", b"after, old producer"}
    assert not broker.alive
    assert not _accepts(port)


def test_connect_with_bootstrap_servers_does_not_start_a_broker(
    kafka_broker: EmbeddedBroker,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_embedded(*args: object, **kwargs: object) -> None:
        raise AssertionError("connect() started an embedded broker although bootstrap_servers was set")

    monkeypatch.setattr(broker_module.EmbeddedBroker, "start", no_embedded)
    config = BrokerConfig(
        bootstrap_servers=kafka_broker.bootstrap,
        readings_topic="test.ext.readings",
        forecasts_topic="test.ext.forecasts",
        deadletter_topic="test.ext.deadletter",
        partitions=3,
    )
    with connect(config) as bootstrap:
        assert bootstrap == kafka_broker.bootstrap
        consumer = kafka_test.make_consumer(bootstrap)
        try:
            for topic in config.topics():
                assert consumer.partitions_for_topic(topic) == {0, 1, 2}
        finally:
            consumer.close()
    assert kafka_broker.alive  # not ours to stop


def test_connect_without_bootstrap_runs_an_embedded_broker() -> None:
    config = BrokerConfig(partitions=2)
    with connect(config) as bootstrap:
        port = int(bootstrap.rsplit(":", 1)[1])
        assert _accepts(port)
        consumer = kafka_test.make_consumer(bootstrap)
        try:
            for topic in (config.readings_topic, config.forecasts_topic, config.deadletter_topic):
                assert consumer.partitions_for_topic(topic) == {0, 1}
        finally:
            consumer.close()
    assert not _accepts(port)


def test_start_failure_reports_the_broker_log() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        port = squatter.getsockname()[1]  # bound, not listening: Tansu cannot bind it
        broker = EmbeddedBroker(port=port)
        with pytest.raises(BrokerError, match="did not become ready") as err:
            broker.start(timeout_s=2)
    assert "broker log" in str(err.value)
    assert not broker.alive


def test_client_kwargs_only_has_what_is_set() -> None:
    assert BrokerConfig(bootstrap_servers="k:9092").client_kwargs() == {"bootstrap_servers": "k:9092"}
    secure = BrokerConfig(
        bootstrap_servers="k:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password="p",
        ssl_cafile="/ca.pem",
    )
    assert secure.client_kwargs("other:1") == {
        "bootstrap_servers": "other:1",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
        "ssl_cafile": "/ca.pem",
    }
    with pytest.raises(ValueError, match="bootstrap"):
        BrokerConfig().client_kwargs()
