"""Scheduled model lifecycle jobs inside the service process (APScheduler's BackgroundScheduler).

* ``retrain``: every ``retrain_interval_s`` seconds or on the ``retrain_cron`` crontab, run
  ``python -m pipeline.retrain`` as a *subprocess* (training never competes with the forecasting loop for the
  GIL) and act on its one-line JSON outcome: export metrics, log the decision, and after a promotion ask the
  loop thread to hot-swap (:meth:`Lifecycle.request_swap`; the scheduler never touches the service itself).
* ``drift``: every ``drift_check_s`` seconds compare the fleet's live rolling MAE with the champion card's
  validation MAE (times ``1 + drift_tolerance``) and with persistence; drift that lasts ``drift_for_s``
  seconds moves the next retraining to now.

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
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import Gauge, Histogram

from forecaster.artifact import _atomic_write
from pipeline.metrics import NS
from pipeline.retrain import Outcome

if TYPE_CHECKING:
    from pipeline.lifecycle import Lifecycle
    from pipeline.service import Service

log = logging.getLogger("stationcast.scheduler")
ROOT = Path(__file__).resolve().parents[1]
RETRAIN_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
Runner = Callable[[list[str], float], tuple[int, str, str]]


def state_path(cfg) -> Path:
    """Where the schedule state lives: next to a SQLite store, else in the registry folder."""
    explicit = getattr(cfg, "schedule_state_path", None)
    if explicit:
        return Path(explicit)
    url = cfg.store_url
    if url.startswith("sqlite:///") and ":memory:" not in url:
        db = Path(url.removeprefix("sqlite:///"))
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
            _atomic_write(self.path, json.dumps(state, indent=2).encode())


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


def run_subprocess(cmd: list[str], timeout: float, holder: dict | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
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
    def __init__(self, service: Service, lifecycle: Lifecycle, runner: Runner | None = None):
        self.service, self.lifecycle, self.cfg = service, lifecycle, service.cfg
        self.state = ScheduleState(state_path(self.cfg))
        self._proc: dict = {}
        self.runner: Runner = runner or (lambda cmd, timeout: run_subprocess(cmd, timeout, self._proc))
        self.outcomes: list[Outcome] = []
        self._drift_since: float | None = None
        self._stopping = threading.Event()
        grace = int(getattr(self.cfg, "retrain_misfire_grace_s", 3600))
        self.scheduler = BackgroundScheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": grace,
        })
        r = service.metrics.registry
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
            self.scheduler.add_job(self.run_retrain, trigger, id="retrain", name="retrain", next_run_time=when)
            self.next_retrain.set(when.timestamp())
            log.info("retraining scheduled (%s), next run %s", trigger, when.isoformat(timespec="seconds"))
        drift_s = float(getattr(self.cfg, "drift_check_s", 0) or 0)
        if drift_s > 0:
            self.scheduler.add_job(self.check_drift, IntervalTrigger(seconds=drift_s), id="drift", name="drift")
        self.scheduler.start()

    def stop(self) -> None:
        self._stopping.set()
        proc = self._proc.get("proc")
        if proc is not None and proc.poll() is None:
            log.info("stopping the running retraining subprocess %d", proc.pid)
            proc.kill()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)

    def _retrain_trigger(self):
        cron = getattr(self.cfg, "retrain_cron", None)
        if cron:
            return CronTrigger.from_crontab(cron, timezone=UTC)
        interval = float(getattr(self.cfg, "retrain_interval_s", 0) or 0)
        return IntervalTrigger(seconds=interval) if interval > 0 else None

    def job(self, job_id: str):
        return self.scheduler.get_job(job_id)

    def retrain_now(self, reason: str) -> bool:
        """Move the next retraining to now (drift); False when retraining is not scheduled."""
        job = self.scheduler.get_job("retrain")
        if job is None:
            return False
        log.info("early retraining: %s", reason)
        job.modify(next_run_time=datetime.now(UTC))
        return True

    # ------------------------------------------------------------------ jobs

    def command(self) -> list[str]:
        c = self.cfg
        return [
            sys.executable, "-m", "pipeline.retrain", "--store-url", c.store_url, "--registry", c.registry,
            "--name", c.model_name, "--history-days", str(c.retrain_history_days),
            "--holdout-days", str(c.retrain_holdout_days), "--margin", str(c.promote_margin),
            "--epochs", str(getattr(c, "retrain_epochs", 3)), "--torch-threads", "1", "--no-progress",
        ]

    def run_retrain(self) -> Outcome | None:
        if self._stopping.is_set():
            return None
        started_at = datetime.now(UTC)
        self.state.record("retrain", started_at, status="running")
        m = self.service.metrics
        t0 = time.perf_counter()
        cmd = self.command()
        log.info("retraining: %s", " ".join(cmd))
        try:
            rc, out, err = self.runner(cmd, float(getattr(self.cfg, "retrain_timeout_s", 3600)))
            lines = [ln for ln in out.splitlines() if ln.strip().startswith("{")]
            if lines:
                outcome = Outcome.from_json(lines[-1])
            else:
                outcome = Outcome("failed", reason=f"retraining exited {rc} without an outcome: {err[-500:]}")
        except Exception as exc:  # noqa: BLE001 - a job must never kill the scheduler
            outcome = Outcome("failed", reason=f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - t0
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
            self.lifecycle.request_swap()
        job = self.scheduler.get_job("retrain")
        if job is not None and job.next_run_time is not None:
            self.next_retrain.set(job.next_run_time.timestamp())
        return outcome

    def check_drift(self) -> bool:
        """True when drift has lasted ``drift_for_s`` and an early retraining was requested."""
        s, c = self.service, self.cfg
        live, pers = s.skill.fleet_model, s.skill.fleet_persistence  # plain float reads
        reference = (s.card.metrics or {}).get("val_mae")
        tolerance = float(getattr(c, "drift_tolerance", 0.25))
        min_errors = int(getattr(c, "drift_min_errors", 500))
        if not math.isfinite(live) or s.skill.count < min_errors:
            return False
        worse_than_card = reference is not None and live > float(reference) * (1 + tolerance)
        worse_than_persistence = math.isfinite(pers) and live > pers
        drifting = worse_than_card or worse_than_persistence
        self.drift.set(1.0 if drifting else 0.0)
        now = time.monotonic()
        if not drifting:
            self._drift_since = None
            return False
        self._drift_since = self._drift_since or now
        if now - self._drift_since < float(getattr(c, "drift_for_s", 3600)):
            return False
        self._drift_since = None
        reason = (f"live MAE {live:.3f} vs card val MAE {_fmt(reference)} (+{tolerance:.0%}) "
                  f"and persistence {pers:.3f}")
        self.state.record("drift", datetime.now(UTC), reason=reason)
        return self.retrain_now(reason)


def _fmt(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4f}"
