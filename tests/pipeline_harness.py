"""Helpers for the end-to-end pipeline tests: real broker, real store, real station records."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from forecaster.artifact import ModelCard
from forecaster.clean import CleanConfig, clean_station
from forecaster.data import nycflights_weather_path
from forecaster.registry import Registry
from pipeline.broker import BrokerConfig, ensure_topics, make_producer
from pipeline.config import ServiceConfig
from pipeline.pretrained import ensure_champion
from pipeline.replay import Faults, records_for_replay, replay
from pipeline.run import build_service
from pipeline.service import Service

ROOT = Path(__file__).resolve().parents[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def month_of_records(days: int = 30, copies: int = 1) -> pd.DataFrame:
    """The first ``days`` of 2013 for the three New York airports; ``copies`` > 1 replays them again under new
    station ids (EWR-1, ...), so tests get more stations spread over the partitions."""
    base = records_for_replay(nycflights_weather_path())
    base = base[base["time"] < base["time"].min() + pd.Timedelta(days=days)]
    if copies == 1:
        return base.reset_index(drop=True)
    parts = [base.assign(station=base["station"] + f"-{i}") for i in range(copies)]
    return pd.concat(parts).sort_values(["time", "station"], kind="stable").reset_index(drop=True)


@dataclass
class Setup:
    cfg: ServiceConfig
    bootstrap: str
    card: ModelCard


def make_setup(bootstrap: str, tmp: Path, store_url: str | None = None, partitions: int = 4) -> Setup:
    """A service config with its own topics, group, store and registry (seeded with the shipped model)."""
    tag = uuid.uuid4().hex[:8]
    broker = BrokerConfig(
        bootstrap_servers=bootstrap, readings_topic=f"readings.{tag}", forecasts_topic=f"forecasts.{tag}",
        deadletter_topic=f"deadletter.{tag}", partitions=partitions,
    )
    ensure_topics(broker, bootstrap, broker.topics())
    cfg = ServiceConfig(
        broker=broker, store_url=store_url or f"sqlite:///{tmp}/store.db", registry=str(tmp / "registry"),
        group_id=f"group.{tag}", http_port=0, session_timeout_ms=6000, heartbeat_interval_ms=1000,
        max_station_labels=20, device="cpu",
    )
    registry = Registry(cfg.registry)
    info = ensure_champion(registry, cfg.model_name)
    return Setup(cfg, bootstrap, registry.card(info.name, info.version))


def publish(setup: Setup, records: pd.DataFrame, faults: Faults | None = None):
    producer = make_producer(setup.cfg.broker, setup.bootstrap)
    try:
        return replay(records, producer, setup.cfg.broker.readings_topic, faults=faults, progress=False)
    finally:
        producer.close()


class FakeView:
    """What the scheduler sees of a service (:class:`pipeline.scheduler.ServingView`), for unit tests of its jobs:
    a real rolling skill the test feeds, a champion card's validation MAE and no station models."""

    def __init__(self, skill, val_mae: float, other_lanes: dict | None = None):
        """``other_lanes``: other cadences' champions, ``{name: (rolling skill, val_mae)}``."""
        self.skill = skill
        self._lanes = {"global": (skill, SimpleNamespace(metrics={"val_mae": val_mae}))}
        for name, (lane_skill, lane_val) in (other_lanes or {}).items():
            self._lanes[name] = (lane_skill, SimpleNamespace(metrics={"val_mae": lane_val}))
        self.swaps_requested = 0

    def lanes(self):
        return dict(self._lanes)

    def station_card(self, station: str):
        return None

    def request_swap(self) -> None:
        self.swaps_requested += 1


class ServiceThread:
    """The service in this process (composed as ``stationcast serve`` does), on a thread (for tests that need no
    process kill)."""

    def __init__(self, setup: Setup):
        self.service = build_service(setup.cfg, setup.bootstrap)
        self.thread = threading.Thread(target=self.service.run, daemon=True)

    def __enter__(self) -> Service:
        self.thread.start()
        return self.service

    def __exit__(self, *exc) -> None:
        self.service.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "service did not stop within 30 s"


def start_service_process(setup: Setup, log: Path, **env_settings: str) -> subprocess.Popen:
    """``stationcast serve`` as a real process (so it can be killed with SIGKILL)."""
    c = setup.cfg
    cmd = [
        sys.executable, "-m", "pipeline.cli", "serve", "--bootstrap-servers", setup.bootstrap,
        "--store-url", c.store_url, "--registry", c.registry, "--group-id", c.group_id, "--http-port", "0",
        "--device", "cpu",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "STATIONCAST_READINGS_TOPIC": c.broker.readings_topic,
           "STATIONCAST_FORECASTS_TOPIC": c.broker.forecasts_topic,
           "STATIONCAST_DEADLETTER_TOPIC": c.broker.deadletter_topic,
           "STATIONCAST_SESSION_TIMEOUT_MS": str(c.session_timeout_ms),
           "STATIONCAST_HEARTBEAT_INTERVAL_MS": str(c.heartbeat_interval_ms),
           **{f"STATIONCAST_{k.upper()}": v for k, v in env_settings.items()}}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def expected_origins(records: pd.DataFrame, card: ModelCard, max_fill: int = 3) -> pd.DataFrame:
    """Issue times the streaming windows must forecast at, computed the batch way: every real reading whose
    features are all present and whose lookback is valid after short gaps are filled."""
    features = list(card.data.features)
    out = []
    for station, rec in records.groupby("station", sort=True):
        s = clean_station(rec, CleanConfig(cadence=pd.Timedelta(seconds=card.cadence_s), max_fill_steps=max_fill))
        seg = s.segments(features)
        lb = card.data.lookback
        t = np.arange(lb - 1, len(seg))
        ok = (seg[t - lb + 1] >= 0) & (seg[t - lb + 1] == seg[t])
        raw = rec.dropna(subset=features)
        real = s.times.isin(pd.DatetimeIndex(raw["time"]))
        origins = s.times[t[ok & real[t]]]
        out.append(pd.DataFrame({"station": station, "issue_ts": origins.astype("datetime64[s]").astype(np.int64)}))
    return pd.concat(out, ignore_index=True)


def stored_forecasts(url: str) -> pd.DataFrame:
    """Every forecast row in the store, ordered by station, issue time and horizon."""
    from pipeline.store import Store

    with Store.open(url) as s:
        return s._table_frame("forecasts", "1 = 1", [], order="station, issue_ts, horizon")


def metric(service: Service, name: str, labels: dict | None = None) -> float:
    """A sample of the service's Prometheus registry (0 when absent)."""
    v = service.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


def fast_cfg(setup: Setup, **changes) -> Setup:
    return replace(setup, cfg=replace(setup.cfg, **changes))
