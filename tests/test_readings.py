"""Validation of readings messages: every accepted format parses, every kind of garbage is dead-lettered."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import orjson
import pytest

from forecaster.schema import SENSOR_RANGES
from pipeline.readings import REASONS, SENSORS, DeadLetter, parse_readings

NOW = np.datetime64("2024-06-01T12:00:00")
T = SENSORS.index("T")
RH = SENSORS.index("rh")
P = SENSORS.index("p")


def msg(
    station: object = "EWR", time: object = "2013-01-01T06:00:00Z", values: object = None, **extra: object
):
    body = {"station": station, "time": time, "values": {"T": 3.9, "rh": 59.37} if values is None else values}
    return orjson.dumps({**body, **extra})


def test_sensor_columns_follow_the_schema() -> None:
    assert tuple(SENSOR_RANGES) == SENSORS
    assert len(REASONS) == len(set(REASONS)) == 11


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2013-01-01T06:00:00Z", "2013-01-01T06:00:00"),
        ("2013-01-01T06:00:00", "2013-01-01T06:00:00"),  # naive means UTC
        ("2013-01-01 06:00:00", "2013-01-01T06:00:00"),
        ("2013-01-01T08:00:00+02:00", "2013-01-01T06:00:00"),
        ("2013-01-01T01:00:00-05:00", "2013-01-01T06:00:00"),
        ("2013-01-01T11:30:00+05:30", "2013-01-01T06:00:00"),
        ("2013-01-01T06:00:00.250Z", "2013-01-01T06:00:00.250"),
        ("2013-01-01T06:00:00.000000+00:00", "2013-01-01T06:00:00"),
        (1357020000, "2013-01-01T06:00:00"),  # epoch seconds
        (1357020000.5, "2013-01-01T06:00:00.500"),
    ],
)
def test_accepted_time_formats(stamp: object, expected: str) -> None:
    batch, dead = parse_readings([msg(time=stamp)], now=NOW)
    assert dead == []
    assert batch.time.dtype == np.dtype("datetime64[ns]")
    assert batch.time[0] == np.datetime64(expected, "ns")


def test_time_formats_mixed_in_one_batch() -> None:
    stamps = ["2013-01-01T06:00:00Z", 1357023600, "2013-01-01T09:00:00+02:00", "2013-01-01T08:00:00"]
    batch, dead = parse_readings([msg(time=s) for s in stamps], now=NOW)
    assert dead == []
    hours = (batch.time - np.datetime64("2013-01-01T06:00:00", "ns")) // np.timedelta64(1, "h")
    assert hours.tolist() == [0, 1, 1, 2]


def test_values_are_columnar_with_nan_for_absent_or_null() -> None:
    raw = [
        msg(values={"T": 3.9, "rh": 59.37, "p": None, "mystery": 1, "also_unknown": "x"}),
        msg(station="JFK", values={"p": 1012, "Tdew": -3.3}),
    ]
    batch, dead = parse_readings(raw, keys=[b"EWR", b"LGA"], partitions=[2, 3], offsets=[10, 11], now=NOW)
    assert dead == []
    assert len(batch) == 2
    assert batch.values.shape == (2, len(SENSORS))
    assert batch.values.dtype == np.float64
    assert batch.station.tolist() == ["EWR", "JFK"]
    assert batch.values[0, T] == 3.9 and batch.values[0, RH] == 59.37 and np.isnan(batch.values[0, P])
    assert batch.values[1, P] == 1012.0 and np.isnan(batch.values[1, T])
    assert np.isnan(batch.values).sum() == 2 * len(SENSORS) - 4
    assert batch.partition.tolist() == [2, 3] and batch.offset.tolist() == [10, 11]
    assert batch.unknown_sensors == {"mystery": 1, "also_unknown": 1}
    assert batch.key_mismatch == 1  # JFK's reading keyed as LGA
    frame = batch.to_frame()
    assert list(frame.columns[:2]) == ["station", "time"] and frame.shape == (2, 2 + len(SENSORS))


def test_range_edges_are_valid() -> None:
    lo = {name: r[0] for name, r in SENSOR_RANGES.items()}
    hi = {name: r[1] for name, r in SENSOR_RANGES.items()}
    batch, dead = parse_readings([msg(values=lo), msg(values=hi)], now=NOW)
    assert dead == [] and not np.isnan(batch.values).any()


def test_future_bound_uses_now_and_max_future() -> None:
    soon, late = "2024-06-01T12:30:00Z", "2024-06-01T14:00:00Z"
    batch, dead = parse_readings([msg(time=soon), msg(time=late)], now=NOW)
    assert len(batch) == 1 and [d.reason for d in dead] == ["future_time"]
    batch, dead = parse_readings([msg(time=late)], now=NOW, max_future=timedelta(hours=3))
    assert len(batch) == 1 and dead == []
    _, dead = parse_readings([msg(time="2200-01-01T00:00:00Z")])  # default now: the wall clock
    assert [d.reason for d in dead] == ["future_time"]


def test_empty_batch() -> None:
    batch, dead = parse_readings([])
    assert len(batch) == 0 and dead == [] and batch.values.shape == (0, len(SENSORS))


def _fuzz_cases(rng: np.random.Generator) -> list[tuple[bytes, str | None]]:
    """(message, expected dead-letter reason or None for valid); one of every kind, then random mixes."""
    good = {"T": 3.9, "rh": 59.37, "p": 1012.0}
    fixed: list[tuple[bytes, str | None]] = [
        (msg(values=good), None),
        (msg(time=1357020000, values={"wv": 0, "wd": 360}), None),
        (msg(values={"T": None, "rh": 50.0}), None),
        (b"\xff" + rng.bytes(30), "not_json"),
        (b"", "not_json"),
        (msg(values=good)[:-7], "not_json"),  # truncated
        (b'{"station": "EWR", "time": ', "not_json"),
        (b"{'station': 'EWR'}", "not_json"),
        (b'{"station":"EWR","time":"2013-01-01T06:00:00Z","values":{"T":3.9,}}', "not_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'"EWR"', "not_an_object"),
        (b"42", "not_an_object"),
        (b"null", "not_an_object"),
        (b"true", "not_an_object"),
        (orjson.dumps([{"station": "EWR"}]), "not_an_object"),
        (orjson.dumps({"time": "2013-01-01T06:00:00Z", "values": good}), "missing_station"),
        (msg(station=None), "missing_station"),
        (msg(station=""), "missing_station"),
        (msg(station="   "), "missing_station"),
        (msg(station=17), "bad_station"),
        (msg(station=["EWR"]), "bad_station"),
        (msg(station=True), "bad_station"),
        (msg(station="EWR\n"), "bad_station"),
        (msg(station=" EWR"), "bad_station"),
        (msg(station="x" * 500), "bad_station"),
        (
            b'{"station":"\\ud800","time":1357020000,"values":{"T":1,"p":NaN}}',
            "bad_station",
        ),  # lone surrogate
        (orjson.dumps({"station": "EWR", "values": good}), "missing_time"),
        (msg(time=None), "missing_time"),
        (msg(time=True), "bad_time"),
        (msg(time=[2013, 1, 1]), "bad_time"),
        (msg(time={"iso": "2013-01-01"}), "bad_time"),
        (msg(time="yesterday"), "bad_time"),
        (msg(time="2013-02-30T00:00:00Z"), "bad_time"),
        (msg(time="2013-01-01T25:00:00"), "bad_time"),
        (msg(time=""), "bad_time"),
        (msg(time="1357020000"), "bad_time"),
        (msg(time=0), "bad_time"),  # clock reset to the epoch
        (msg(time=-5.0), "bad_time"),
        (msg(time=1e300), "bad_time"),
        (msg(time="3000-01-01T00:00:00Z"), "bad_time"),  # beyond datetime64[ns]
        (msg(time="2030-01-01T00:00:00Z"), "future_time"),
        (msg(time=2_000_000_000), "future_time"),
        (orjson.dumps({"station": "EWR", "time": "2013-01-01T06:00:00Z"}), "no_values"),
        (msg(values={}), "no_values"),
        (msg(values=[3.9, 59.37]), "no_values"),
        (msg(values="T=3.9"), "no_values"),
        (msg(values={"temperature": 3.9, "humidity": 50}), "no_values"),
        (msg(values={"T": None, "rh": None}), "no_values"),
        (msg(values={"T": "3.9"}), "non_numeric"),
        (msg(values={"T": True}), "non_numeric"),
        (msg(values={"rh": 50.0, "T": False}), "non_numeric"),
        (msg(values={"T": [3.9]}), "non_numeric"),
        (msg(values={"T": {"v": 3.9}}), "non_numeric"),
        (msg(values={"T": "NaN"}), "non_numeric"),
        (b'{"station":"EWR","time":"2013-01-01T06:00:00Z","values":{"T":NaN}}', "not_finite"),
        (b'{"station":"EWR","time":"2013-01-01T06:00:00Z","values":{"T":3.9,"p":Infinity}}', "not_finite"),
        (b'{"station":"EWR","time":"2013-01-01T06:00:00Z","values":{"T":-Infinity}}', "not_finite"),
        (b'{"station":"EWR","time":"2013-01-01T06:00:00Z","values":{"p":1e999}}', "not_finite"),
        (
            json.dumps({"station": "EWR", "time": 1357020000, "values": {"rh": float("nan")}}).encode(),
            "not_finite",
        ),
        (msg(values={"T": -9999}), "out_of_range"),
        (msg(values={"T": -9999.0, "rh": 50}), "out_of_range"),
        (msg(values={"wv": -999.0}), "out_of_range"),
        (msg(values={"rh": 101.0}), "out_of_range"),
        (msg(values={"p": 0}), "out_of_range"),
        (msg(values={"T": 1e308}), "out_of_range"),
        (b'{"station":"EWR","time":1357020000,"values":{"T":99999999999999999999999}}', "out_of_range"),
        # Precedence: the first failing check names the message.
        (msg(station="", time="garbage", values={"T": "x"}), "missing_station"),
        (msg(time="garbage", values={"T": "x"}), "non_numeric"),
        (msg(time="garbage", values={"T": -9999}), "bad_time"),
        (b'{"station":"EWR","time":"2030-01-01T00:00:00Z","values":{"T":NaN}}', "future_time"),
        (b'{"station":"EWR","time":"2013-01-01T06:00:00Z","values":{"T":-9999,"p":NaN}}', "not_finite"),
    ]
    cases = list(fixed)
    # A random mix of valid readings and the kinds above, in random order.
    for i in range(3000):
        if rng.random() < 0.5:
            values = {
                str(s): round(float(rng.uniform(*SENSOR_RANGES[s])), 3) for s in rng.choice(SENSORS, size=4)
            }
            stamp = "2013-01-01T06:00:00Z" if i % 2 else int(1357020000 + i * 600)
            cases.append((msg(station=f"st{i % 17}", time=stamp, values=values), None))
        else:
            cases.append(fixed[int(rng.integers(len(fixed)))])
    order = rng.permutation(len(cases))
    return [cases[k] for k in order]


def test_fuzzed_batch_every_message_accounted_for_with_the_right_reason() -> None:
    rng = np.random.default_rng(7)
    cases = _fuzz_cases(rng)
    raw = [c[0] for c in cases]
    offsets = np.arange(len(raw)) + 1000
    batch, dead = parse_readings(
        raw, keys=[b"k"] * len(raw), partitions=[0] * len(raw), offsets=offsets, now=NOW
    )

    assert len(batch) + len(dead) == len(raw)
    got = {d.offset - 1000: d for d in dead}
    for i, (payload, reason) in enumerate(cases):
        if reason is None:
            assert i not in got, (payload, got.get(i))
        else:
            assert i in got, payload
            assert got[i].reason == reason, (payload, got[i].reason, got[i].detail)
            assert got[i].raw == payload and got[i].key == b"k" and got[i].partition == 0
            assert got[i].detail
    assert {d.reason for d in dead} == set(REASONS)
    assert all(DeadLetter.from_message(d.to_message()) == d for d in dead)
    valid = [i for i, (_, reason) in enumerate(cases) if reason is None]
    assert (batch.offset - 1000).tolist() == valid
    finite = batch.values[~np.isnan(batch.values)]
    assert np.isfinite(finite).all()
    lo = np.array([SENSOR_RANGES[s][0] for s in SENSORS])
    hi = np.array([SENSOR_RANGES[s][1] for s in SENSORS])
    with np.errstate(invalid="ignore"):
        assert not ((batch.values < lo) | (batch.values > hi)).any()


def test_random_corruption_never_raises() -> None:
    rng = np.random.default_rng(11)
    base = [msg(station=f"s{i}", time=1357020000 + i, values={"T": 1.5, "p": 1000.0}) for i in range(500)]
    raw: list[object] = []
    for payload in base:
        buf = bytearray(payload)
        for _ in range(int(rng.integers(1, 4))):
            buf[int(rng.integers(len(buf)))] = int(rng.integers(256))
        raw.append(bytes(buf))
    raw += [None, b"\x00" * 10, rng.bytes(1000), b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000]
    batch, dead = parse_readings(raw, now=NOW)
    assert len(batch) + len(dead) == len(raw)
    assert all(d.reason in REASONS for d in dead)


def test_dead_letter_message_round_trips_the_original_bytes() -> None:
    rng = np.random.default_rng(3)
    raw = [rng.bytes(64), b'{"station":"EWR","time":"2013-01-01T06:00:00Z","values":{"T":NaN}}', b""]
    _, dead = parse_readings(
        raw, keys=[b"\x00\xffbinary", None, b"EWR"], partitions=[1, 2, 3], offsets=[7, 8, 9]
    )
    assert [d.reason for d in dead] == ["not_json", "not_finite", "not_json"]
    for letter in dead:
        message = letter.to_message()
        decoded = orjson.loads(message)
        assert decoded["reason"] == letter.reason and decoded["detail"] == letter.detail
        assert DeadLetter.from_message(message) == letter
    assert dead[0].raw == raw[0] and dead[0].key == b"\x00\xffbinary" and dead[1].key is None
    assert (dead[2].partition, dead[2].offset) == (3, 9)
