"""Restarts with partitions caught up unevenly: after kill -9s (or a SIGTERM) of the real ``stationcast serve``
process, the store's readings, forecasts and errors equal a run without restarts, row for row.

The fleet: one NOAA station's hourly record (Chicago O'Hare) cut into 24 pseudo-stations of 420 hours on the same
clock, spread over 4 partitions. The stations of two partitions publish their whole backlog at once, the others
only their first 55 % (a gateway that is behind), so when the service restarts some stations are hundreds of
hours ahead of others.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kafka.partitioner.default import murmur2

from pipeline.replay import records_for_replay
from pipeline.store import Store
from tests.broker_fixture import kafka_broker  # noqa: F401
from tests.chaos_harness import BAND, own_band
from tests.conftest import shared_file
from tests.pipeline_harness import Setup, expected_origins, make_setup, publish, start_service_process, wait_until

STATIONS, HOURS, PARTITIONS = 24, 420, 4
AHEAD_PARTITIONS = {0, 1}  # these publish their whole backlog first; the others 55 % of it
BATCH = "400"  # small polls: many batches and commits, so kills land in all phases of a batch
TABLES = {"readings": "station, ts", "forecasts": "station, issue_ts, horizon", "errors": "station, issue_ts, horizon"}


def _partition(station: str) -> int:
    return (murmur2(station.encode()) & 0x7FFFFFFF) % PARTITIONS


@pytest.fixture(scope="module")
def fleet() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(first publication, second publication): real hourly records as 24 stations on one clock."""
    base = records_for_replay(shared_file("noaa_chicago_ohare_2010_2016_hourly.csv.gz"))
    base = base.iloc[: STATIONS * HOURS].reset_index(drop=True)
    chunk = np.arange(len(base)) // HOURS
    start = base["time"].iloc[0]
    shift = base["time"].to_numpy() - base["time"].to_numpy()[chunk * HOURS]  # each chunk from the same start
    records = base.assign(station=[f"ORD-{c:02d}" for c in chunk], time=start + shift)
    ahead = records["station"].map(_partition).isin(AHEAD_PARTITIONS).to_numpy()
    assert 0 < ahead.sum() < len(records), "both groups need stations"
    hour = (records["time"] - start).dt.total_seconds().to_numpy() // 3600
    first = ahead | (hour < int(0.55 * HOURS))
    return records[first].reset_index(drop=True), records[~first].reset_index(drop=True)


def _counts(url: str) -> dict[str, int]:
    try:
        with Store.open(url) as s:
            return {t: s.count(t) for t in TABLES}
    except sqlite3.OperationalError:  # the service holds the write lock for a moment
        return {t: -1 for t in TABLES}


def _tables(url: str) -> dict[str, pd.DataFrame]:
    with Store.open(url) as s:
        out = {t: pd.DataFrame(s._query(f"SELECT * FROM {t} ORDER BY {key}")) for t, key in TABLES.items()}
        cols = {t: [d[0] for d in s._conn.execute(f"SELECT * FROM {t} LIMIT 0").description] for t in TABLES}
    return {t: f.set_axis(cols[t], axis=1) if len(f) else pd.DataFrame(columns=cols[t]) for t, f in out.items()}


class Runner:
    """One service setup: its topics, store and the ``stationcast serve`` process of the moment."""

    def __init__(self, setup: Setup, log: Path):
        self.setup, self.log, self.proc = setup, log, None
        self.url = setup.cfg.store_url

    def start(self) -> None:
        self.proc = start_service_process(self.setup, self.log, max_batch=BATCH)

    def stop(self, sig: signal.Signals) -> None:
        os.killpg(self.proc.pid, sig)
        code = self.proc.wait(timeout=60)
        if sig == signal.SIGTERM:
            assert code == 0, self.log.read_text()[-3000:]

    def wait(self, check, timeout: float, what: str) -> None:
        def ok() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"service exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            return check(_counts(self.url))

        wait_until(ok, timeout, what, interval=0.05)

    def wait_done(self, readings: int, forecasts: int, timeout: float = 300) -> None:
        # Errors are stored before forecasts in each batch: once the last forecast is in, so are its errors.
        self.wait(lambda c: c["readings"] >= readings and c["forecasts"] >= forecasts, timeout,
                  f"{readings} readings and {forecasts} forecast rows")


def _expected(setup: Setup, records: pd.DataFrame) -> int:
    return len(expected_origins(records, setup.card)) * len(setup.card.data.horizons)


@pytest.fixture(scope="module")
def control(kafka_broker, fleet, tmp_path_factory) -> dict[str, pd.DataFrame]:  # noqa: F811
    """The same publications through one service that is never stopped."""
    tmp = tmp_path_factory.mktemp("control")
    run = Runner(make_setup(kafka_broker.bootstrap, tmp, partitions=PARTITIONS), tmp / "service.log")
    first, second = fleet
    s1, s2 = publish(run.setup, first), publish(run.setup, second)
    run.start()
    try:
        run.wait_done(s1.expected_valid + s2.expected_valid, _expected(run.setup, pd.concat([first, second])))
    finally:
        run.stop(signal.SIGTERM)
    return _tables(run.url)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_restarts_with_partitions_caught_up_unevenly_lose_nothing(kafka_broker, fleet, control, tmp_path, sig):  # noqa: F811
    first, second = fleet
    run = Runner(make_setup(kafka_broker.bootstrap, tmp_path, partitions=PARTITIONS), tmp_path / "service.log")
    s1 = publish(run.setup, first)
    done1 = _expected(run.setup, first)
    run.start()
    try:
        # 1. Mid-backlog, at whatever point a batch is in.
        run.wait(lambda c: c["readings"] > 0.3 * s1.expected_valid, 180, "the service to be mid-backlog")
        run.stop(signal.SIGKILL)
        assert _counts(run.url)["readings"] < s1.expected_valid, "stopped too late to test a restart mid-stream"
        # 2. Caught up on what was published: two partitions' stations are 189 hours ahead of the others.
        run.start()
        run.wait_done(s1.expected_valid, done1)
        run.stop(sig)
        # 3. The lagging stations' backlog arrives while the service is down; stopped again in the middle of it.
        s2 = publish(run.setup, second)
        run.start()
        run.wait(lambda c: c["readings"] > s1.expected_valid + 0.3 * s2.expected_valid, 180, "mid second backlog")
        run.stop(sig)
        run.start()
        run.wait_done(s1.expected_valid + s2.expected_valid, _expected(run.setup, pd.concat([first, second])))
    finally:
        if run.proc.poll() is None:
            run.stop(signal.SIGTERM)
    got = _tables(run.url)
    own = own_band(control["forecasts"], control["errors"], run.setup.cfg)
    assert own.mean() > 0.5, "too few forecasts with a station's own band to check its rebuild"
    for table, want in control.items():
        have = got[table]
        assert len(have) == len(want), f"{table}: {len(have)} rows, {len(want)} without restarts"
        if table == "forecasts":  # the band: the same (within float noise) once the station calibrates it (own_band)
            gap = np.abs(have[BAND].to_numpy(float) - want[BAND].to_numpy(float)).max(axis=1)
            bad = own & ~(gap <= BAND_TOLERANCE)
            assert not bad.any(), (f"{int(bad.sum()):,} of {int(own.sum()):,} own-band forecasts differ, by up to "
                                   f"{gap[bad].max():.3g}:\n"
                                   + have[bad].head(8).to_string() + "\n" + want[bad].head(8).to_string()
                                   + "\nstations " + str(sorted(set(have.loc[bad, 'station'])))[:300]
                                   + "\nhorizons " + str(sorted(set(have.loc[bad, 'horizon']))))
            assert (have["lo"] <= have["hi"]).all()
        if table == "errors":
            flags = control["forecasts"].assign(own=own)[["station", "issue_ts", "horizon", "own"]]
            mine = want.merge(flags, on=["station", "issue_ts", "horizon"], how="left")["own"].to_numpy(dtype=bool)
            assert mine.any() and np.array_equal(have.loc[mine, "covered"], want.loc[mine, "covered"])
        floats = [c for c in want.columns if c in COMPUTED]
        exact = [c for c in want.columns if c not in COMPUTED | set(BAND) | {"covered"}]
        pd.testing.assert_frame_equal(have[exact].reset_index(drop=True), want[exact].reset_index(drop=True),
                                      check_dtype=False, obj=table)
        diff = np.nanmax(np.abs(have[floats].to_numpy(float) - want[floats].to_numpy(float)), initial=0.0)
        assert diff <= FLOAT_TOLERANCE, f"{table}: values differ by up to {diff:.3g}"


# Forecasts are computed in float32 by batched forward passes, and how many stations share a pass depends on how
# the polls fall, which differs between any two runs: the same window can come out a few float32 ulps apart
# (measured: at most 4.3e-6 °C over 226,000 forecast values, 2 ulps at 30 °C). Everything else is exact.
FLOAT_TOLERANCE = 1e-5
# A band edge is a model quantile (float32 noise as above) moved by an offset that is itself a quantile of scores
# carrying that noise: twice the noise, and a little more where a score's rank changes by a few ulps.
BAND_TOLERANCE = 4 * FLOAT_TOLERANCE
# Model outputs and what derives from them. The conformity score is against the model's own band, so the same.
COMPUTED = {"value", "abs_error", "persistence_abs_error", "diurnal_abs_error", "band_score"}
