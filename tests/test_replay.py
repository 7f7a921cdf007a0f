"""Replaying real station records through the real embedded broker, with and without injected faults."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from forecaster.data import nycflights_weather_path
from pipeline.broker import BrokerConfig, EmbeddedBroker, make_producer
from pipeline.readings import SENSORS, parse_readings
from pipeline.replay import (
    GAP_MEAN_RUN,
    MALFORMED_REASONS,
    Faults,
    ReplayStats,
    _gap_mask,
    _swap_with_next,
    records_for_replay,
    replay,
)
from tests import broker_fixture as kafka_test
from tests.broker_fixture import kafka_broker  # noqa: F401

WEEK_NYC = ("2013-03-01", "2013-03-08")
WEEK_JENA = ("2012-06-01", "2012-06-08")
FAULTS = Faults(jitter_s=120, out_of_order=0.1, duplicates=0.05, gaps=0.05, malformed=0.1, seed=5)


@pytest.fixture(scope="module")
def nyc_records() -> pd.DataFrame:
    return records_for_replay(nycflights_weather_path())


@pytest.fixture(scope="module")
def jena_records(jena_hourly) -> pd.DataFrame:
    return records_for_replay(jena_hourly, rename={"jena_2009_2016_hourly": "jena"})


def _send(bootstrap: str, records: pd.DataFrame, **kwargs) -> tuple[ReplayStats, list]:
    """Replay into a fresh 4-partition topic and read everything back."""
    topic = kafka_test.fresh_topic(bootstrap, partitions=4, prefix="test.replay")
    producer = make_producer(BrokerConfig(), bootstrap)
    try:
        stats = replay(records, producer, topic, progress=False, **kwargs)
    finally:
        producer.close()
    got = kafka_test.consume_topic(bootstrap, topic, expected=stats.sent)
    assert len(got) == stats.sent
    return stats, got


def _parse(got: list):
    return parse_readings(
        [r.value for r in got],
        keys=[r.key for r in got],
        partitions=[r.partition for r in got],
        offsets=[r.offset for r in got],
    )


def _inversions(batch) -> int:
    """Readings earlier than the same station's previous one, in delivery (partition, offset) order."""
    order = np.lexsort((batch.offset, batch.partition))
    frame = pd.DataFrame({"station": batch.station[order], "time": batch.time[order]})
    return int((frame.groupby("station")["time"].diff() < pd.Timedelta(0)).sum())


def test_records_for_replay_renames_a_file_into_a_new_station(noaa_denver) -> None:
    original = "noaa_denver_2010_2016_hourly"
    denver = records_for_replay(noaa_denver, rename={original: "denver"})
    assert set(denver["station"]) == {"denver"}
    assert {"time", "T", "p"} <= set(denver.columns) and len(denver) > 50_000
    prefixed = records_for_replay(noaa_denver, station_prefix="co-", stations=[original])
    assert set(prefixed["station"]) == {f"co-{original}"} and len(prefixed) == len(denver)
    assert records_for_replay(noaa_denver, rename={original: "denver"}, stations=["elsewhere"]).empty


def test_replay_without_faults_keeps_keys_values_and_time_order(
    kafka_broker: EmbeddedBroker,  # noqa: F811
    nyc_records: pd.DataFrame,
) -> None:
    stats, got = _send(kafka_broker.bootstrap, nyc_records, start=WEEK_NYC[0], end=WEEK_NYC[1])
    assert stats.stations == ["EWR", "JFK", "LGA"]
    assert stats.rows == stats.sent > 450 and stats.dropped == stats.duplicates == stats.malformed_total == 0
    assert stats.first_time >= WEEK_NYC[0] and stats.last_time < WEEK_NYC[1]
    # Keyed by station, so one station's readings share a partition.
    assert all(r.key == r.value.split(b'"station":"')[1][:3] for r in got)
    assert all(len({r.partition for r in got if r.key == k}) == 1 for k in (b"EWR", b"JFK", b"LGA"))

    batch, dead = _parse(got)
    assert dead == [] and len(batch) == stats.rows
    assert _inversions(batch) == 0
    # Interleaved in time order: delivery order within each partition is time order.
    for p in set(batch.partition.tolist()):
        times = batch.time[batch.partition == p][np.argsort(batch.offset[batch.partition == p])]
        assert (np.diff(times) >= np.timedelta64(0)).all()
    # The values are the records' (NaN omitted, so absent sensors come back NaN).
    sent = batch.to_frame().sort_values(["station", "time"]).reset_index(drop=True)
    week = nyc_records[(nyc_records["time"] >= WEEK_NYC[0]) & (nyc_records["time"] < WEEK_NYC[1])]
    week = week.sort_values(["station", "time"]).reset_index(drop=True)
    assert sent["station"].tolist() == week["station"].tolist()
    assert (sent["time"].to_numpy() == week["time"].to_numpy().astype("datetime64[ns]")).all()
    for sensor in [s for s in SENSORS if s in week.columns]:
        np.testing.assert_allclose(sent[sensor].to_numpy(), week[sensor].to_numpy(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("source", ["jena", "nycflights"])
def test_injected_faults_match_what_the_validator_rejects(
    kafka_broker: EmbeddedBroker,  # noqa: F811
    source: str,
    request: pytest.FixtureRequest,
) -> None:
    records = request.getfixturevalue("jena_records" if source == "jena" else "nyc_records")
    start, end = WEEK_JENA if source == "jena" else WEEK_NYC
    stats, got = _send(kafka_broker.bootstrap, records, start=start, end=end, faults=FAULTS)

    assert stats.dropped > 0 and stats.duplicates > 0 and stats.reordered > 0 and stats.malformed_total > 0
    assert stats.sent == stats.rows - stats.dropped + stats.duplicates
    batch, dead = _parse(got)
    expected = Counter()
    for kind, n in stats.malformed.items():
        expected[MALFORMED_REASONS[kind]] += n
    expected["out_of_range"] += stats.source_invalid
    assert Counter(d.reason for d in dead) == +expected
    assert len(dead) == stats.expected_rejected and len(batch) == stats.expected_valid
    assert batch.key_mismatch == 0

    # Duplicates arrive right after their original (same key, same partition).
    by_partition: dict[int, list] = {}
    for r in got:
        by_partition.setdefault(r.partition, []).append(r)
    repeats = sum(
        a.value == b.value
        for rs in by_partition.values()
        for a, b in zip(rs, rs[1:], strict=False)  # consecutive offsets
    )
    assert repeats == stats.duplicates
    # Swapped readings show up as time going backwards for their station.
    assert 0 < _inversions(batch) <= stats.reordered
    # Jittered clocks: off the 10-minute grid by at most jitter_s.
    grid = np.timedelta64(600, "s")
    off = (batch.time - np.datetime64("2000-01-01", "ns") + grid // 2) % grid - grid // 2
    seconds = np.abs(off / np.timedelta64(1, "s"))
    assert seconds.max() <= FAULTS.jitter_s and (seconds > 0).mean() > 0.9


def test_faults_are_reproducible_from_the_seed(
    kafka_broker: EmbeddedBroker,  # noqa: F811
    nyc_records: pd.DataFrame,
) -> None:
    day = {"start": "2013-07-01", "end": "2013-07-03"}
    runs = [_send(kafka_broker.bootstrap, nyc_records, faults=FAULTS, **day) for _ in range(2)]
    other = _send(kafka_broker.bootstrap, nyc_records, faults=replace(FAULTS, seed=6), **day)

    def fingerprint(stats: ReplayStats) -> dict:
        return {k: v for k, v in stats.to_dict().items() if k != "elapsed_s"}

    assert fingerprint(runs[0][0]) == fingerprint(runs[1][0]) != fingerprint(other[0])
    # Same messages (future-time ones carry the wall clock, so compare the rest).
    same = [[r.value for r in got if b"2013-" in r.value] for _, got in runs]
    assert sorted(same[0]) == sorted(same[1])


def test_limit_station_filter_and_speedup(
    kafka_broker: EmbeddedBroker,  # noqa: F811
    nyc_records: pd.DataFrame,
) -> None:
    began = time.monotonic()
    # 20 hourly readings at 72000x: 19 h of data time in about 0.95 s of wall time.
    stats, got = _send(kafka_broker.bootstrap, nyc_records, stations=["JFK"], limit=20, speedup=72_000)
    elapsed = time.monotonic() - began
    assert stats.rows == stats.sent == 20 and stats.stations == ["JFK"]
    assert {r.key for r in got} == {b"JFK"}
    assert stats.elapsed_s >= 0.85 and elapsed < 10


def test_gaps_drop_runs_per_station() -> None:
    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(4), 25_000)[rng.permutation(100_000)]
    dropped = _gap_mask(codes, len(codes), 0.1, rng)
    assert 0.07 < dropped.mean() < 0.12
    # Runs per station, in that station's order.
    for c in range(4):
        mine = dropped[codes == c].astype(np.int8)
        starts = np.sum(np.diff(mine) == 1) + mine[0]
        assert mine.sum() / starts > GAP_MEAN_RUN * 0.7


def test_out_of_order_swaps_with_the_same_stations_next_reading() -> None:
    rng = np.random.default_rng(1)
    codes = np.tile(np.arange(3), 1000)
    seq, swaps = _swap_with_next(codes, 0.2, rng)
    assert sorted(seq.tolist()) == list(range(len(codes)))  # a permutation
    assert (codes[seq] == codes).all()  # every slot keeps its station
    moved = np.flatnonzero(seq != np.arange(len(codes)))
    assert len(moved) == 2 * swaps and 0.1 < swaps / len(codes) < 0.2
    assert (np.abs(seq[moved] - moved) == 3).all()  # with the station's next reading
