"""A real embedded Kafka broker (Tansu) for the tests, and helpers to read topics back from it.

Import the fixture into a test module with ``from tests.broker_fixture import kafka_broker  # noqa: F401``.
The broker is session-scoped and shared: every test uses its own topic (:func:`fresh_topic`), and tests
that restart a broker start their own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from pipeline.broker import BrokerConfig, EmbeddedBroker, ensure_topics

# Short group timeouts: the first group assignment takes about session_timeout_ms / 2 against Tansu.
CONSUMER_SETTINGS: dict[str, Any] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker().start()
    try:
        yield broker
    finally:
        broker.stop()


def fresh_topic(bootstrap: str, partitions: int = 4, prefix: str = "test") -> str:
    """A new, uniquely named topic with ``partitions`` partitions (tests share the session broker)."""
    name = f"{prefix}.{uuid.uuid4().hex[:12]}"
    ensure_topics(BrokerConfig(), bootstrap, {name: partitions})
    return name


def make_consumer(bootstrap: str, **overrides: Any) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **{**CONSUMER_SETTINGS, **overrides}
    )


def consume_topic(
    bootstrap: str, topic: str, expected: int | None = None, timeout_s: float = 30.0
) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning, in (partition, offset) order.

    Done when ``expected`` records arrived, or else when every partition is read up to the high-water mark
    the consumer saw while fetching (``end_offsets()`` is wrong on Tansu).
    """
    consumer = make_consumer(bootstrap)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300, max_records=50_000).values():
                records.extend(batch)
            if expected is not None:
                if len(records) >= expected:
                    break
            elif all(
                consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp)
                for tp in tps
            ):
                break
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()
