"""Store against both real engines: an SQLite file and the PostgreSQL server (namespaced per test)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from pipeline.store import SENSORS, Store, _migrations


@pytest.fixture
def url(store_db: tuple[str, str | None]) -> tuple[str, str | None]:
    return store_db


@pytest.fixture
def store(url: tuple[str, str | None]) -> Iterator[Store]:
    with Store.open(*url) as s:
        yield s


def _readings(n: int, stations: tuple[str, ...] = ("A", "B"), sensors=("T", "p", "rh"), seed: int = 0):
    rng = np.random.default_rng(seed)
    station = np.array(stations)[np.arange(n) % len(stations)]
    ts = 1_600_000_000 + (np.arange(n) // len(stations)).astype(np.int64) * 600
    values = rng.normal(10.0, 5.0, size=(n, len(sensors)))
    values[rng.random(values.shape) < 0.2] = np.nan
    return station, ts, values, list(sensors)


def _forecasts(station: str, issue_ts: int, horizons=(1, 2, 3)) -> pd.DataFrame:
    h = np.array(horizons, dtype=np.int64)
    return pd.DataFrame(
        {
            "station": station,
            "issue_ts": issue_ts,
            "horizon": h,
            "target_ts": issue_ts + h * 3600,
            "model_version": "gru-1",
            "value": 10.0 + h,
            "lo": np.where(h == 2, np.nan, 8.0 + h),
            "hi": 12.0 + h,
            "persistence": 9.5,
        }
    )


def test_readings_round_trip_with_nans(store: Store) -> None:
    station, ts, values, sensors = _readings(40)
    order = np.random.default_rng(1).permutation(40)  # arrival order is not time order
    assert store.add_readings(station[order], ts[order], values[order], sensors, partition=3, offset=order) == 40

    got = store.readings("A")
    assert list(got.columns) == ["station", "time", *SENSORS]
    assert got["time"].dtype == np.dtype("datetime64[ns]")
    mine = station == "A"
    expected_time = pd.to_datetime(ts[mine], unit="s").astype("datetime64[ns]")
    np.testing.assert_array_equal(got["time"].to_numpy(), expected_time.to_numpy())
    np.testing.assert_array_equal(got[sensors].to_numpy(), values[mine])  # exact, NaN where absent
    assert got.drop(columns=["station", "time", *sensors]).isna().all().all()  # never-sent sensors NULL
    assert (got["station"] == "A").all()

    only = store.readings("B", sensors=["rh", "T"])
    assert list(only.columns) == ["station", "time", "rh", "T"]
    np.testing.assert_array_equal(only[["rh", "T"]].to_numpy(), values[station == "B"][:, [2, 0]])

    null_count = store._query(f'SELECT COUNT(*) FROM {store._p}readings WHERE "T" IS NULL')[0][0]
    assert null_count == np.isnan(values[:, 0]).sum()  # NaN is stored as NULL, not as a float NaN
    meta = store._query(f"SELECT MIN(partition), MAX(kafka_offset) FROM {store._p}readings")[0]
    assert tuple(meta) == (3, 39)


def test_reinsert_is_idempotent(store: Store) -> None:
    station, ts, values, sensors = _readings(100)
    assert store.add_readings(station, ts, values, sensors) == 100
    assert store.add_readings(station, ts, values, sensors) == 0
    assert store.count("readings") == 100
    # Overlapping batch with an in-batch duplicate: only the genuinely new keys count.
    s2, t2, v2, _ = _readings(120, seed=5)
    s2, t2, v2 = np.r_[s2, s2[-1:]], np.r_[t2, t2[-1:]], np.r_[v2, v2[-1:]]
    assert store.add_readings(s2, t2, v2, sensors) == 20
    assert store.count("readings") == 120
    # First write wins: the replayed overlap did not overwrite stored values.
    np.testing.assert_array_equal(store.readings("A")[sensors].to_numpy()[:50], values[station == "A"])
    assert store.add_readings(station[:0], ts[:0], values[:0], sensors) == 0


def test_forecasts_errors_idempotent_and_pending(store: Store) -> None:
    t0 = 1_700_000_000
    frames = [_forecasts("A", t0), _forecasts("B", t0), _forecasts("A", t0 + 3600)]
    for frame in frames:
        assert store.add_forecasts(frame) == 3
    assert store.add_forecasts(pd.concat(frames)) == 0
    assert store.count("forecasts") == 9

    scored = frames[0].iloc[:2]
    err = {
        "station": scored["station"],
        "issue_ts": scored["issue_ts"],
        "horizon": scored["horizon"],
        "target_ts": scored["target_ts"],
        "model_version": "gru-1",
        "actual": np.array([11.5, 11.0]),
        "abs_error": np.array([0.5, 1.0]),
        "persistence_abs_error": np.array([2.0, np.nan]),
    }
    assert store.add_errors(err) == 2
    assert store.add_errors(err) == 0
    assert store.count("errors") == 2

    pending = store.pending_forecasts(t0)
    assert len(pending) == 7
    keys = set(zip(pending["station"], pending["issue_ts"], pending["horizon"], strict=True))
    assert ("A", t0, 1) not in keys and ("A", t0, 2) not in keys and ("A", t0, 3) in keys
    assert pending["target_ts"].is_monotonic_increasing
    row = pending[(pending["station"] == "B") & (pending["horizon"] == 2)].iloc[0]
    assert np.isnan(row["lo"]) and row["hi"] == 14.0 and row["persistence"] == 9.5
    assert row["model_version"] == "gru-1" and row["value"] == 12.0
    assert len(store.pending_forecasts(t0 + 1)) == 3
    assert set(store.pending_forecasts(t0, stations=["B"])["station"]) == {"B"}
    assert store.pending_forecasts(t0, stations=[]).empty

    errors = store.errors("A")
    assert errors["abs_error"].tolist() == [0.5, 1.0] and np.isnan(errors["persistence_abs_error"].iloc[1])
    assert len(store.errors(since_ts=t0 + 2 * 3600)) == 1
    assert store.errors("B").empty and list(store.errors("B").columns) == list(errors.columns)

    with pytest.raises(ValueError, match="needs columns"):
        store.add_forecasts({"station": "A", "issue_ts": t0})


def test_range_queries(store: Store) -> None:
    station, ts, values, sensors = _readings(60, stations=("A", "B", "C"))
    store.add_readings(station, ts, values, sensors)
    t0 = int(ts.min())
    assert store.stations() == ["A", "B", "C"]

    window = store.readings("A", start_ts=t0 + 600, end_ts=t0 + 3000)  # [start, end): 4 steps of 600 s
    assert len(window) == 4
    assert window["time"].iloc[0] == pd.Timestamp(t0 + 600, unit="s")
    assert store.readings("A", start_ts=t0 + 10**6).empty
    assert len(store.readings("A", end_ts=t0 + 1)) == 1

    latest = store.latest_readings(["A", "C"], since_ts=t0 + 15 * 600)
    assert sorted(set(latest["station"])) == ["A", "C"] and len(latest) == 10
    assert store.latest_readings([], since_ts=0).empty

    hist = store.history(t0, t0 + 10 * 600)
    assert len(hist) == 30 and list(hist.columns) == ["station", "time", *SENSORS]
    assert hist["station"].is_monotonic_increasing
    assert len(store.history(t0, t0 + 10 * 600, stations=["B"])) == 10


def test_state_get_put(store: Store) -> None:
    assert store.get_state("A") is None
    store.put_state("A", {"model": "gru-1", "weights": [1, 2.5], "since": 1_700_000_000})
    assert store.get_state("A") == {"model": "gru-1", "weights": [1, 2.5], "since": 1_700_000_000}
    store.put_state("A", {"model": "gru-2"})
    assert store.get_state("A") == {"model": "gru-2"}
    assert store.count("station_state") == 1


def test_reopen_keeps_data(url: tuple[str, str | None]) -> None:
    station, ts, values, sensors = _readings(30)
    with Store.open(*url) as store:
        store.add_readings(station, ts, values, sensors)
        store.add_forecasts(_forecasts("A", 1_700_000_000))
        store.put_state("A", {"model": "gru-1"})
    reopen_url = url[0].replace("postgresql://", "postgres://")  # both spellings accepted
    with Store.open(reopen_url, namespace=url[1]) as store:  # migrations are idempotent
        assert store.count("readings") == 30 and store.count("forecasts") == 3
        assert store.get_state("A") == {"model": "gru-1"}
        versions = store._query(f"SELECT COUNT(*) FROM {store._p}schema_version")[0][0]
        assert versions == len(_migrations(""))  # each applied once
        np.testing.assert_array_equal(store.readings("B")[sensors].to_numpy(), values[station == "B"])


def test_bulk_insert_200k(store: Store) -> None:
    n = 200_000
    station, ts, values, _ = _readings(n, stations=tuple(f"st{i:02d}" for i in range(20)), sensors=SENSORS[:6])
    sensors = list(SENSORS[:6])
    start = time.perf_counter()
    assert store.add_readings(station, ts, values, sensors, partition=0, offset=np.arange(n)) == n
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    assert store.add_readings(station, ts, values, sensors, partition=0, offset=np.arange(n)) == 0
    replay = time.perf_counter() - start
    engine = "postgres" if store._pg else "sqlite"
    print(f"\n{engine}: insert {n / elapsed:,.0f} rows/s, replay (all conflicts) {n / replay:,.0f} rows/s")
    assert store.count("readings") == n


def test_memory_url_and_validation() -> None:
    with Store.open("sqlite:///:memory:") as store:
        station, ts, values, sensors = _readings(4)
        assert store.add_readings(station, ts, values, sensors) == 4
        with pytest.raises(ValueError, match="canonical"):
            store.add_readings(station, ts, values, ["T", "p", "nope"])
        with pytest.raises(ValueError, match="values must be"):
            store.add_readings(station, ts, values[:, :2], sensors)
        with pytest.raises(TypeError, match="ts must be integers"):
            store.add_readings(station, ts.astype(float), values, sensors)
        with pytest.raises(ValueError, match="only removes namespaced"):
            store.drop()
    with pytest.raises(ValueError, match="unsupported store URL"):
        Store.open("mysql://x")
    with pytest.raises(ValueError, match="namespace"):
        Store.open("sqlite:///:memory:", namespace="Bad; DROP")


def test_background_wal_checkpoints(tmp_path) -> None:
    """With ``checkpoint_every_s`` the WAL is moved into the database file by the background thread (the
    commit-time threshold is raised far above what these writes reach), and close() stops the thread."""
    db = tmp_path / "bg.db"
    store = Store.open(f"sqlite:///{db}", checkpoint_every_s=1.0)
    n = 20_000
    values = np.full((n, len(SENSORS)), np.nan)
    values[:, :4] = np.random.default_rng(0).normal(size=(n, 4))
    size0 = db.stat().st_size
    store.add_readings(np.repeat([f"s{i}" for i in range(20)], n // 20), np.tile(np.arange(n // 20) * 3600, 20),
                       values, SENSORS)
    assert (tmp_path / "bg.db-wal").stat().st_size > 1_000_000  # the batch sits in the WAL after its commit,
    assert db.stat().st_size < size0 + 1_000_000  # not checkpointed by the commit itself
    deadline = time.monotonic() + 10
    while db.stat().st_size <= size0 + 1_000_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.stat().st_size > size0 + 1_000_000, "no background checkpoint wrote the pages back"
    thread = store._checkpointer
    store.close()
    assert not thread.is_alive()
    with Store.open(f"sqlite:///{db}") as again:
        assert again.count("readings") == n
