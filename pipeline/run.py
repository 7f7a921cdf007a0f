"""Process entry points: ``serve`` (the service alone) and ``run`` (the main job: embedded broker, replay of
real station records, the service, its HTTP endpoints and a live line in the terminal)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd

from forecaster.table import format_table
from pipeline.broker import EmbeddedBroker, make_producer, open_broker
from pipeline.cadence import HOURLY, describe, horizon_label
from pipeline.config import ServiceConfig
from pipeline.contract import enforce, served_cadences
from pipeline.http import HttpServer
from pipeline.redact import redact_url
from pipeline.replay import Faults, ReplayStats, records_for_replay, replay
from pipeline.scheduler import LifecycleScheduler, enabled
from pipeline.scoring import error_summary, skill_vs_best
from pipeline.service import Service
from pipeline.store_url import parse_store_url

log = logging.getLogger("stationcast")
SHOWN_S = (3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)  # horizons the run summary shows (plus one step)


def _prepare_paths(cfg: ServiceConfig) -> None:
    db = parse_store_url(cfg.store_url).file
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.registry).mkdir(parents=True, exist_ok=True)


def build_service(cfg: ServiceConfig, bootstrap: str, broker: EmbeddedBroker | None = None) -> Service:
    """The service, and its scheduled lifecycle jobs when configured: the scheduler sees the service only as a
    :class:`pipeline.scheduler.ServingView` and is stopped with it."""
    service = Service(cfg, bootstrap, broker=broker)
    if enabled(cfg):
        scheduler = LifecycleScheduler(cfg, service.metrics, service)
        service.lifecycle.scheduler = scheduler
        scheduler.start()
    return service


def _on_signals(stop) -> None:
    def handler(signum, _frame) -> None:
        log.info("%s received: finishing the batch, committing and closing", signal.Signals(signum).name)
        stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def serve(cfg: ServiceConfig) -> int:
    """Run the service until SIGTERM/SIGINT; exit 0 after a clean shutdown."""
    _prepare_paths(cfg)
    with open_broker(cfg.broker) as (bootstrap, broker):
        service = build_service(cfg, bootstrap, broker=broker)
        http = HttpServer(cfg.http_host, cfg.http_port, service.metrics.registry, lambda: service.alive,
                          lambda: service.ready, service.status).start()
        log.info("service up: broker %s, store %s, status page %s/status, metrics %s/metrics",
                 bootstrap, redact_url(cfg.store_url), http.url, http.url)
        _on_signals(service.stop)
        try:
            service.run()
        except Exception:
            log.exception("the service loop died; exiting with status 1 (a supervisor should restart it)")
            return 1
        finally:
            http.stop()
    return 0


class LiveLine:
    """One self-rewriting terminal line (a plain line every few seconds when not a terminal)."""

    def __init__(self, service: Service, stream=sys.stderr):
        self.service, self.stream = service, stream
        self.tty = stream.isatty()
        self._last = (time.monotonic(), 0)
        self._printed = 0.0

    def text(self) -> str:
        s = self.service
        t = s.totals  # the service's counters, updated once per stored batch
        consumed, forecasts, rejected, lag, scored = t.consumed, t.forecasts, t.rejected, t.lag, t.errors_scored
        now = time.monotonic()
        rate = (consumed - self._last[1]) / max(now - self._last[0], 1e-6)
        self._last = (now, consumed)
        lanes = s.router.lanes
        parts = []
        for cadence in sorted(lanes):  # one rolling score per cadence served (their horizons differ)
            mae, pers, day = lanes[cadence].skill.maes()
            best = skill_vs_best(mae, pers, day)
            if not (np.isfinite(mae) and np.isfinite(best)):
                continue
            diurnal = f", diurnal {day:.2f}" if np.isfinite(day) else ""
            every = f" (every {describe(cadence)})" if len(lanes) > 1 else ""  # the lane, not a horizon
            parts.append(f"MAE{every} {mae:.2f} °C vs persistence {pers:.2f}{diurnal} (skill vs better {best:+.0%})")
        skill = " | ".join(parts) or "MAE: waiting for actuals"
        return (f"readings {consumed:,} ({rate:,.0f}/s) | forecasts {forecasts:,} | scored {scored:,} | {skill} | "
                f"lag {lag:,} | dead letters {rejected:,}")

    def update(self, force: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.text())
            self.stream.flush()
        elif force or time.monotonic() - self._printed > 5:
            self.stream.write(self.text() + "\n")  # the rate spans the lines printed, not the last tick
            self.stream.flush()
            self._printed = time.monotonic()

    def close(self) -> None:
        self.update(force=True)
        if self.tty:
            self.stream.write("\n")


def run_main_job(cfg: ServiceConfig, data: str | None, schema: str | None, stations: list[str] | None,
                 speedup: float, faults: Faults, limit: int | None, keep_serving: bool,
                 resample: str | None = None) -> int:
    """The README's first command: everything on one machine, no external service, real data. ``resample``: the
    aggregation for stations whose cadence no champion has (None: such a file is refused, see
    :mod:`pipeline.contract`)."""
    from forecaster.data import nycflights_weather_path

    _prepare_paths(cfg)
    data = data or str(nycflights_weather_path())
    records = records_for_replay(data, schema, stations)
    records = enforce(records, data, served_cadences(str(cfg.registry), cfg.model_name), resample)
    _make_room(cfg, records)
    stop = threading.Event()
    _on_signals(stop.set)
    with ExitStack() as stack:
        bootstrap, broker = stack.enter_context(open_broker(cfg.broker))
        service = build_service(cfg, bootstrap, broker=broker)
        http = HttpServer(cfg.http_host, cfg.http_port, service.metrics.registry, lambda: service.alive,
                          lambda: service.ready, service.status).start()
        stack.callback(http.stop)
        died: list[BaseException] = []

        def serve_loop() -> None:
            try:
                service.run()
            except BaseException as exc:  # reported below: the process must not exit 0 without its service
                died.append(exc)
                log.exception("the service loop died")

        worker = threading.Thread(target=serve_loop, name="service", daemon=True)
        worker.start()
        print(f"stationcast: broker {bootstrap} (embedded)" if not cfg.broker.bootstrap_servers
              else f"stationcast: broker {bootstrap}", file=sys.stderr)
        serving = ", ".join(f"{tag} (every {describe(c)})" for c, tag in sorted(service.lane_tags().items()))
        print(f"stationcast: serving {serving}; status page {http.url}/status, metrics {http.url}/metrics",
              file=sys.stderr)
        print(f"stationcast: replaying {len(records):,} readings of {records['station'].nunique()} station(s) "
              f"from {data} at {'full speed' if not speedup else f'{speedup:g}x'}", file=sys.stderr)
        result: dict[str, ReplayStats] = {}

        def publish() -> None:
            producer = make_producer(cfg.broker, bootstrap)
            try:
                result["stats"] = replay(records, producer, cfg.broker.readings_topic, speedup=speedup,
                                         faults=faults, limit=limit, progress=False)
            finally:
                producer.close()

        replayer = threading.Thread(target=publish, name="replay", daemon=True)
        replayer.start()
        live = LiveLine(service)
        idle_since = None
        while not stop.is_set() and worker.is_alive():
            time.sleep(0.5)
            live.update()
            if replayer.is_alive() or keep_serving:
                continue
            sent = result["stats"].sent if "stats" in result else 0
            done = service.totals.consumed >= sent and service.totals.lag == 0
            idle_since = (idle_since or time.monotonic()) if done else None
            if idle_since and time.monotonic() - idle_since > 2:
                break
        live.close()
        service.stop()
        worker.join(timeout=30)
        _summary(service, cfg)
    if died:
        print(f"stationcast run: error: the service stopped: {died[0]!r} (see the log above)", file=sys.stderr)
        return 1
    return 0


def already_stored(store_url: str, records: pd.DataFrame) -> int:
    """How many of ``records`` are no newer than their station's newest stored reading: the service skips those
    (a restart must not forecast twice from the same readings), so replaying them again shows nothing."""
    from pipeline.store import Store

    file = parse_store_url(store_url).file
    if file is not None and not file.exists():
        return 0
    with Store.open(store_url) as store:
        newest = store.newest_by_station(records["station"].unique().tolist())
    if not newest:
        return 0
    ts = records["time"].to_numpy("datetime64[s]").astype(np.int64)
    last = records["station"].map(newest).to_numpy(dtype=np.float64)  # NaN: a station with nothing stored
    return int((ts <= last).sum())


def _make_room(cfg: ServiceConfig, records: pd.DataFrame) -> None:
    """The main job run again on the same store would replay readings the store already holds and forecast
    nothing: an SQLite file is moved aside (kept, under a dated name) for an empty one; another store is refused
    (ValueError: exit 2). A partly stored replay goes ahead, said in one line."""
    stored, where = already_stored(cfg.store_url, records), redact_url(cfg.store_url)
    if not stored:
        return
    if stored < len(records):
        print(f"stationcast: {stored:,} of the {len(records):,} readings are already in {where} (an earlier run); "
              "the service skips them", file=sys.stderr)
        return
    file = parse_store_url(cfg.store_url).file
    if file is None:
        raise ValueError(f"{where} already holds every reading of this replay (an earlier run), so replaying it "
                         "again would forecast nothing: point --store-url at an empty database")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = file.with_name(f"{file.stem}-{stamp}{file.suffix}")
    size = 0
    for suffix in ("", "-wal", "-shm", "-journal"):  # SQLite's side files travel with the database
        part = Path(f"{file}{suffix}")
        if part.exists():
            size += part.stat().st_size
            part.rename(f"{kept}{suffix}")
    print(f"stationcast: {file} already held every reading of this replay (an earlier run), so replaying it "
          f"again would forecast nothing: moved it to {kept} ({size / 2**20:,.0f} MiB; delete it when done with "
          "it) and starting with an empty store", file=sys.stderr)


def _summary(service: Service, cfg: ServiceConfig) -> None:
    from pipeline.store import Store

    with Store.open(cfg.store_url) as store:
        errors = store.errors()
        counts = {t: store.count(t) for t in ("readings", "forecasts", "errors")}
    print(f"\nstored: {counts['readings']:,} readings, {counts['forecasts']:,} forecast rows, "
          f"{counts['errors']:,} scored errors in {redact_url(cfg.store_url)}", file=sys.stderr)
    if errors.empty:
        print("no forecast was scored yet (replay longer than the model's lookback plus horizon)", file=sys.stderr)
        return
    print(_score_table(error_summary(errors, "station"), "station"), file=sys.stderr)
    cadence = errors["station"].map(lambda s: service.model_of(s)[1]).to_numpy()
    for c in sorted({int(x) for x in cadence if x is not None and x == x}):
        part = errors[cadence == c]
        by_h = error_summary(part, "horizon")
        shown = sorted({t // c for t in SHOWN_S if t % c == 0} | {1})
        shown = [h for h in shown if h in by_h.index]
        models = sorted({service.model_of(s)[0] for s in part["station"].unique()})
        print(f"\nper horizon, stations every {describe(c)} ({', '.join(models)}):", file=sys.stderr)
        print(_score_table(by_h.loc[[*shown, "all"]], "horizon", c), file=sys.stderr)


def _score_table(table, label: str, cadence_s: int = HOURLY) -> str:
    """Model MAE beside both baselines, skill against the better one and the P10-P90 band's coverage; horizons in
    time (steps of ``cadence_s``)."""
    rows = [(label, "model MAE", "persistence", "diurnal pers.", "skill vs better", "P10-P90 coverage")]
    for key, r in table.iterrows():
        name = horizon_label(int(key), cadence_s) if label == "horizon" and key != "all" else str(key)
        rows.append((name, _deg(r["mae"]),
                     _deg(r["persistence_mae"]), _deg(r["diurnal_mae"]), _pct(r["skill"], "+.0%"),
                     _pct(r["coverage"], ".0%")))
    return format_table(rows, right=[False, True, True, True, True, True])


def _deg(x: float) -> str:
    return f"{x:.2f} °C" if np.isfinite(x) else "-"


def _pct(x: float, spec: str) -> str:
    return format(x, spec) if np.isfinite(x) else "-"
