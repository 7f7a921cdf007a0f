"""Scheduled model lifecycle jobs inside the service process (APScheduler's BackgroundScheduler).

* ``retrain``: every ``retrain_interval_s`` seconds or on the ``retrain_cron`` crontab, run
  ``python -m pipeline.retrain`` as a *subprocess* (training never competes with the forecasting loop for the
  GIL) and act on its one-line JSON outcome: export metrics, log the decision, and after a promotion ask the
  loop thread to hot-swap (:meth:`ServingView.request_swap`; the scheduler never touches the service itself).
* ``finetune``: every ``finetune_interval_s`` seconds run ``python -m pipeline.finetune`` as a subprocess for
  the stations that have gathered ``finetune_min_history_days`` of history and have no model of their own yet
  (transfer learning from the global champion); a promoted station model is hot-swapped in like a champion.
* ``drift``: every ``drift_check_s`` seconds compare the fleet's live rolling MAE with the champion card's
  validation MAE (times ``1 + drift_tolerance``) and with the better of its two baselines (persistence, diurnal
  persistence); drift that lasts ``drift_for_s`` seconds moves the next retraining to now. A single station whose
  rolling MAE falls behind its better baseline (or behind its own model's holdout MAE) that long is queued for
  fine-tuning, and the fine-tuning runs now.

The scheduler sees the service only through :class:`ServingView` (rolling skill, the champion's and stations'
cards, a swap request), composed in :mod:`pipeline.run`. Training jobs take turns (one training subprocess at a
time), so the serving process keeps its core. A job reads the service's own settings, handed over in its environment
(:func:`pipeline.jobs.job_env`), never on its command line, which ``ps`` shows to every user.

Jobs never overlap with themselves (``max_instances=1``), missed runs coalesce into one, and each job's last
run time is persisted in a small JSON file next to the store (``<db>.schedule.json``; in the registry folder
for PostgreSQL), so a restart in the middle of an interval waits for the rest of it instead of running again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import Gauge, Histogram

from forecaster.artifact import ModelCard, atomic_write
from forecaster.registry import Registry
from pipeline.challenger import Outcome
from pipeline.config import ServiceConfig
from pipeline.finetune import eligible_stations
from pipeline.jobs import job_env, job_flags
from pipeline.metrics import NS, Metrics
from pipeline.pretrained import cadence_champions
from pipeline.redact import redact_text
from pipeline.scoring import RollingSkill
from pipeline.store import Store
from pipeline.store_url import parse_store_url

log = logging.getLogger("stationcast.scheduler")
ROOT = Path(__file__).resolve().parents[1]
RETRAIN_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
Runner = Callable[[list[str], float], tuple[int, str, str]]


class ServingView(Protocol):
    """What the scheduler may see of the service, from its own thread: plain reads and one request."""

    def lanes(self) -> dict[str, tuple[RollingSkill, ModelCard]]:
        """Per cadence served, its champion's name (the hourly one first), the lane's live rolling MAEs (floats
        and dicts read without a lock, as a snapshot) and the champion's card."""
        ...

    def station_card(self, station: str) -> ModelCard | None: ...

    def request_swap(self) -> None: ...


def enabled(cfg: ServiceConfig) -> bool:
    """Whether any scheduled job is configured (the defaults keep the scheduler off)."""
    return bool(cfg.retrain_interval_s or cfg.retrain_cron or cfg.drift_check_s or cfg.finetune_interval_s)


def state_path(cfg: ServiceConfig) -> Path:
    """Where the schedule state lives: next to a SQLite store, else in the registry folder."""
    explicit = cfg.schedule_state_path
    if explicit:
        return Path(explicit)
    db = parse_store_url(cfg.store_url).file
    if db is not None:
        return db.with_name(db.name + ".schedule.json")
    return Path(cfg.registry) / f"{cfg.model_name}.schedule.json"


class ScheduleState:
    """``{job_id: {"last_run": iso, ...}}`` in a JSON file, written atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def last_run(self, job: str) -> datetime | None:
        raw = self.read().get(job, {}).get("last_run")
        return datetime.fromisoformat(raw) if raw else None

    def record(self, job: str, when: datetime, **extra) -> None:
        with self._lock:
            state = self.read()
            state[job] = {**state.get(job, {}), "last_run": when.isoformat(), **extra}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(state, indent=2).encode())


def first_run_time(trigger, last_run: datetime | None, now: datetime) -> datetime:
    """When a job should next run given its persisted last run: a restart mid-interval waits for the rest
    of the interval; a run missed while the service was down runs once, now (coalesced)."""
    if last_run is None:
        return trigger.get_next_fire_time(None, now)
    if isinstance(trigger, IntervalTrigger):
        nxt = last_run + trigger.interval
    else:
        nxt = trigger.get_next_fire_time(None, last_run + timedelta(microseconds=1))
    return max(nxt, now)


def run_subprocess(cmd: list[str], timeout: float, holder: dict | None = None,
                   settings: dict[str, str] | None = None) -> tuple[int, str, str]:
    env = {**os.environ, **(settings or {}), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    if holder is not None:
        holder["proc"] = proc
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return -9, out, (err or "") + f"\nkilled after {timeout:.0f} s"
    finally:
        if holder is not None:
            holder.pop("proc", None)
    return proc.returncode, out, err


class LifecycleScheduler:
    def __init__(self, cfg: ServiceConfig, metrics: Metrics, view: ServingView, runner: Runner | None = None):
        self.cfg, self.metrics, self.view = cfg, metrics, view
        self.state = ScheduleState(state_path(self.cfg))
        self._proc: dict = {}
        self.runner: Runner = runner or (
            lambda cmd, timeout: run_subprocess(cmd, timeout, self._proc, job_env(self.cfg)))
        self.outcomes: list[Outcome] = []
        self._drift_since: dict[str, float] = {}  # champion name -> when its fleet began to drift
        self._station_drift_since: dict[str, float] = {}
        self._finetune_queue: set[str] = set()
        self._training = threading.Lock()  # one training subprocess at a time
        self.finetune_outcomes: list[Outcome] = []
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0
        grace = int(self.cfg.retrain_misfire_grace_s)
        self.scheduler = BackgroundScheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": grace,
        })
        r = metrics.registry
        self.retrain_seconds = Histogram(f"{NS}_retrain_seconds", "Wall time of a retraining run",
                                         buckets=RETRAIN_BUCKETS, registry=r)
        self.holdout_mae = Gauge(f"{NS}_retrain_holdout_mae_celsius",
                                 "Holdout MAE of the last retraining's challenger and champion", ["model"], registry=r)
        self.drift = Gauge(f"{NS}_drift_detected", "1 while the live MAE drifts beyond the champion's", registry=r)
        self.next_retrain = Gauge(f"{NS}_retrain_next_timestamp_seconds", "Unix time of the next retraining",
                                  registry=r)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        now = datetime.now(UTC)
        trigger = self._retrain_trigger()
        if trigger is not None:
            when = first_run_time(trigger, self.state.last_run("retrain"), now)
            self.scheduler.add_job(self._tracked(self.run_retrain), trigger, id="retrain", name="retrain",
                                   next_run_time=when)
            self.next_retrain.set(when.timestamp())
            log.info("retraining scheduled (%s), next run %s", trigger, when.isoformat(timespec="seconds"))
        finetune_s = float(self.cfg.finetune_interval_s)
        if finetune_s > 0:
            trigger = IntervalTrigger(seconds=finetune_s)
            when = first_run_time(trigger, self.state.last_run("finetune"), now)
            self.scheduler.add_job(self._tracked(self.run_finetune), trigger, id="finetune", name="finetune",
                                   next_run_time=when)
            log.info("station fine-tuning scheduled every %.0f s, next run %s", finetune_s,
                     when.isoformat(timespec="seconds"))
        drift_s = float(self.cfg.drift_check_s)
        if drift_s > 0:
            self.scheduler.add_job(self._tracked(self.drift_checks), IntervalTrigger(seconds=drift_s), id="drift",
                                   name="drift")
        self.scheduler.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Kill a running training subprocess, stop the scheduler and wait for jobs in flight to return.

        ``shutdown(wait=True)`` would hold APScheduler's job-store lock while waiting, and a job that
        reads or moves its own schedule (``get_job``, ``modify``) at that moment would never return."""
        self._stopping.set()
        proc = self._proc.get("proc")
        if proc is not None and proc.poll() is None:
            log.info("stopping the running training subprocess %d", proc.pid)
            proc.kill()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        with self._idle:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                log.warning("%d scheduled job(s) still running after %.0f s", self._in_flight, timeout)

    def _tracked(self, job: Callable):
        """``job`` counted while it runs, so :meth:`stop` can wait for it."""
        def run(*args, **kwargs):
            with self._idle:
                self._in_flight += 1
            try:
                return job(*args, **kwargs)
            finally:
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()
        run.__name__ = getattr(job, "__name__", "job")
        return run

    def _retrain_trigger(self):
        cron = self.cfg.retrain_cron
        if cron:
            return CronTrigger.from_crontab(cron, timezone=UTC)
        interval = float(self.cfg.retrain_interval_s)
        return IntervalTrigger(seconds=interval) if interval > 0 else None

    def job(self, job_id: str):
        return self.scheduler.get_job(job_id)

    def retrain_now(self, reason: str) -> bool:
        """Move the next retraining to now (drift); False when retraining is not scheduled."""
        job = None if self._stopping.is_set() else self.scheduler.get_job("retrain")
        if job is None:
            return False
        log.info("early retraining: %s", reason)
        job.modify(next_run_time=datetime.now(UTC))
        return True

    # ------------------------------------------------------------------ jobs

    def command(self, name: str | None = None) -> list[str]:
        """The retraining subprocess: its settings are the service's, in its environment (:func:`job_env`);
        ``name``: the champion of another cadence than the hourly one (``global-10min``)."""
        cmd = [sys.executable, "-m", "pipeline.retrain", *job_flags(self.cfg)]
        return cmd if name is None or name == self.cfg.model_name else [*cmd, "--name", name]

    def run_retrain(self) -> Outcome | None:
        """One round per cadence's champion (the hourly one first); the hourly round's outcome is returned."""
        if self._stopping.is_set():
            return None
        with self._training:
            names = list(cadence_champions(Registry(self.cfg.registry), self.cfg.model_name).values())
            first = self._retrain()
            for name in names[1:]:
                if self._stopping.is_set():
                    break
                if Registry(self.cfg.registry).champion(name) is not None:
                    self._retrain(name)
            return first

    def _retrain(self, name: str | None = None) -> Outcome:
        started_at = datetime.now(UTC)
        self.state.record("retrain", started_at, status="running")
        m = self.metrics
        t0 = time.perf_counter()
        cmd = self.command(name)
        log.info("retraining: %s", redact_text(" ".join(cmd)))
        try:
            rc, out, err = self.runner(cmd, float(self.cfg.retrain_timeout_s))
            lines = [ln for ln in out.splitlines() if ln.strip().startswith("{")]
            if lines:
                outcome = Outcome.from_json(lines[-1])
            else:
                reason = redact_text(f"retraining exited {rc} without an outcome: {err[-500:]}")
                outcome = Outcome("failed", reason=reason)
        except Exception as exc:  # noqa: BLE001 - a job must never kill the scheduler
            outcome = Outcome("failed", reason=f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - t0
        if self._stopping.is_set():
            return outcome
        self.retrain_seconds.observe(seconds)
        m.retrain_runs.labels(outcome=outcome.outcome).inc()
        if outcome.outcome != "failed":
            m.retrain_last_success.set(time.time())
        for model, value in (("challenger", outcome.challenger_mae), ("champion", outcome.champion_mae)):
            if value is not None and math.isfinite(value):
                self.holdout_mae.labels(model=model).set(value)
        self.state.record("retrain", started_at, status=outcome.outcome, seconds=round(seconds, 1),
                          challenger=outcome.challenger, reason=outcome.reason)
        self.outcomes.append(outcome)
        log.info("retraining %s in %.1f s: champion %s, challenger %s, holdout MAE %s vs %s; %s", outcome.outcome,
                 seconds, outcome.champion, outcome.challenger, _fmt(outcome.challenger_mae),
                 _fmt(outcome.champion_mae), outcome.reason)
        if outcome.outcome == "promoted":
            self.view.request_swap()
        job = self.scheduler.get_job("retrain")
        if job is not None and job.next_run_time is not None:
            self.next_retrain.set(job.next_run_time.timestamp())
        return outcome

    def finetune_command(self, stations: list[str]) -> list[str]:
        """The fine-tuning subprocess for ``stations``; its settings are the service's, in its environment."""
        cmd = [sys.executable, "-m", "pipeline.finetune", *job_flags(self.cfg)]
        for station in stations:
            cmd += ["--station", station]
        return cmd

    def run_finetune(self) -> list[Outcome]:
        """Fine-tune the stations queued by the drift check, else every eligible station."""
        if self._stopping.is_set():
            return []
        with self._training:
            stations = sorted(self._finetune_queue)
            self._finetune_queue.difference_update(stations)
            if not stations:
                stations = self._eligible()
                if not stations:
                    log.debug("fine-tuning: no station is ready")
                    return []
            return self._finetune(stations[: max(1, int(self.cfg.finetune_max_stations))])

    def _eligible(self) -> list[str]:
        """Stations ready for their first (or a retried) fine-tuning, checked here so that no subprocess
        starts when there is nothing to do."""
        c = self.cfg
        try:
            with Store.open(c.store_url) as store:
                return eligible_stations(store, Registry(c.registry), c.finetune_min_history_days,
                                         c.finetune_retry_days)
        except Exception as exc:  # noqa: BLE001 - a job must never kill the scheduler
            log.error("fine-tuning: could not list eligible stations: %s", redact_text(str(exc)))
            return []

    def _finetune(self, stations: list[str]) -> list[Outcome]:
        started_at = datetime.now(UTC)
        self.state.record("finetune", started_at, status="running")
        m = self.metrics
        cmd = self.finetune_command(stations)
        log.info("fine-tuning: %s", redact_text(" ".join(cmd)))
        t0 = time.perf_counter()
        try:
            rc, out, err = self.runner(cmd, float(self.cfg.finetune_timeout_s))
            outcomes = [Outcome.from_json(ln) for ln in out.splitlines() if ln.strip().startswith("{")]
            if rc != 0 and not outcomes:
                reason = redact_text(f"fine-tuning exited {rc} without an outcome: {err[-500:]}")
                outcomes = [Outcome("failed", reason=reason, stations=stations)]
        except Exception as exc:  # noqa: BLE001 - a job must never kill the scheduler
            outcomes = [Outcome("failed", reason=f"{type(exc).__name__}: {exc}", stations=stations)]
        seconds = time.perf_counter() - t0
        if self._stopping.is_set():  # killed by the shutdown: not an outcome of the job
            return []
        for o in outcomes:
            m.finetune_runs.labels(outcome=o.outcome).inc()
            log.info("fine-tuning %s %s: %s holdout MAE %s vs %s %s; %s", ",".join(o.stations), o.outcome,
                     o.challenger, _fmt(o.challenger_mae), o.champion, _fmt(o.champion_mae), o.reason)
        self.state.record("finetune", started_at, status="done", seconds=round(seconds, 1),
                          outcomes={",".join(o.stations): o.outcome for o in outcomes})
        self.finetune_outcomes += outcomes
        if any(o.outcome == "promoted" for o in outcomes):
            self.view.request_swap()
        return outcomes

    def finetune_now(self, stations: list[str], reason: str) -> bool:
        """Queue stations for fine-tuning and move the next fine-tuning run to now."""
        job = None if self._stopping.is_set() else self.scheduler.get_job("finetune")
        if job is None:
            return False
        log.info("early fine-tuning of %s: %s", ", ".join(stations), reason)
        self._finetune_queue.update(stations)
        job.modify(next_run_time=datetime.now(UTC))
        return True

    def drift_checks(self) -> None:
        self.check_drift()
        self.check_station_drift()

    def check_station_drift(self) -> list[str]:
        """Stations whose rolling MAE has fallen behind the better of their baselines (or behind their own model's
        holdout MAE) for ``drift_for_s``; they are queued for fine-tuning."""
        c = self.cfg
        min_errors = int(c.drift_station_min_errors)
        tolerance = float(c.drift_tolerance)
        hold = float(c.drift_for_s)
        now = time.monotonic()
        due = []
        scored = [(st, mae, lane) for lane, _ in list(self.view.lanes().values())
                  for st, mae in list(lane.station_model.items())]
        for station, mae, skill in scored:
            if skill.station_count.get(station, 0) < min_errors:
                continue
            best = better_baseline(skill.station_persistence.get(station, math.nan),
                                   skill.station_diurnal.get(station, math.nan))
            own = self.view.station_card(station)
            reference = (own.metrics or {}).get("holdout_mae") if own is not None else None
            drifting = (math.isfinite(best) and mae > best) or (
                reference is not None and mae > float(reference) * (1 + tolerance))
            if not drifting:
                self._station_drift_since.pop(station, None)
                continue
            since = self._station_drift_since.setdefault(station, now)
            if now - since >= hold:
                due.append(station)
                self._station_drift_since.pop(station, None)
        if due:
            self.state.record("station_drift", datetime.now(UTC), stations=due)
            self.finetune_now(due, "rolling MAE behind the better baseline or the station model's holdout MAE")
        return due

    def check_drift(self) -> bool:
        """True when drift in the fleet of a cadence served (its champion's stations) has lasted ``drift_for_s``
        and an early retraining was requested (a retraining runs a round for every cadence's champion)."""
        c, now = self.cfg, time.monotonic()
        tolerance, min_errors = float(c.drift_tolerance), int(c.drift_min_errors)
        checked = drifting = False
        due: list[str] = []
        for name, (skill, card) in list(self.view.lanes().items()):
            live, pers, diurnal = skill.fleet_model, skill.fleet_persistence, skill.fleet_diurnal  # plain reads
            if not math.isfinite(live) or skill.count < min_errors:
                continue
            checked = True
            best = better_baseline(pers, diurnal)
            reference = (card.metrics or {}).get("val_mae")
            worse_than_card = reference is not None and live > float(reference) * (1 + tolerance)
            worse_than_baseline = math.isfinite(best) and live > best
            if not (worse_than_card or worse_than_baseline):
                self._drift_since.pop(name, None)
                continue
            drifting = True
            if now - self._drift_since.setdefault(name, now) >= float(c.drift_for_s):
                self._drift_since.pop(name)
                due.append(f"{name}: live MAE {live:.3f} vs card val MAE {_fmt(reference)} (+{tolerance:.0%}) "
                           f"and the better baseline {best:.3f} (persistence {pers:.3f}, diurnal {diurnal:.3f})")
        if checked:
            self.drift.set(1.0 if drifting else 0.0)
        if not due:
            return False
        reason = "; ".join(due)
        self.state.record("drift", datetime.now(UTC), reason=reason)
        return self.retrain_now(reason)


def better_baseline(persistence: float, diurnal: float) -> float:
    """The lower of the two baseline MAEs (the one a forecast must beat); NaN when neither is known."""
    known = [x for x in (persistence, diurnal) if math.isfinite(x)]
    return min(known) if known else math.nan


def _fmt(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4f}"
