"""The service side of the model lifecycle: hot swap on request, rollbacks seen, and automatic rollback.

Everything here runs in the service's loop thread (:meth:`Lifecycle.on_loop`, :meth:`Lifecycle.on_errors`), with
the service's collaborators handed in (registry, metrics, rolling skill, the serving model and a swap function), not
the service itself; other threads (the scheduler) only set a flag through :meth:`request_swap`.

Automatic rollback: when a *promoted* model starts serving, the predecessor's live rolling MAE is recorded.
Once the new model's own forecasts have ``rollback_min_errors`` scored errors, their MAE is compared with it;
if it is worse by more than ``rollback_margin`` (relative), the registry is rolled back and the service swaps
back to the predecessor. ``rollback_min_errors = 0`` disables the check.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from forecaster.registry import Registry, RegistryError, VersionInfo
from pipeline.config import ServiceConfig
from pipeline.metrics import Metrics
from pipeline.scoring import RollingSkill

log = logging.getLogger("stationcast.lifecycle")


@dataclass
class Probation:
    """A newly promoted model under watch."""

    tag: str
    version: int
    predecessor: str
    predecessor_mae: float
    n: int = 0
    total: float = 0.0

    @property
    def mae(self) -> float:
        return self.total / self.n if self.n else math.nan


class Lifecycle:
    def __init__(self, cfg: ServiceConfig, registry: Registry, metrics: Metrics, skill: RollingSkill,
                 serving: Callable[[], VersionInfo], swap: Callable[[], bool]):
        """``serving``: the version the service serves now; ``swap``: make the service load the registry's
        champions now (True when something changed)."""
        self.cfg, self.registry, self.metrics, self.skill = cfg, registry, metrics, skill
        self._serving, self._swap = serving, swap
        self.rollback_margin = float(cfg.rollback_margin)
        self.rollback_min_errors = int(cfg.rollback_min_errors)
        self._swap_requested = threading.Event()
        info = serving()
        self._version, self._tag = info.version, info.tag
        self.probation: Probation | None = None
        self.decisions: list[dict] = []  # what the lifecycle decided, newest last (tests and status read it)
        self.scheduler = None  # the scheduled jobs, when pipeline.run attached them; stopped with the lifecycle

    # ------------------------------------------------------------------ any thread

    def request_swap(self) -> None:
        """Ask the loop thread to check the registry now (after a promotion or rollback)."""
        self._swap_requested.set()

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    # ------------------------------------------------------------------ loop thread

    def on_loop(self) -> None:
        if self._swap_requested.is_set():
            self._swap_requested.clear()
            self._swap()
        self._note_swap()
        self._check_probation()

    def _note_swap(self) -> None:
        info = self._serving()
        if info.version != self._version:
            self._swapped(self._tag, info.version, info.tag)

    def on_errors(self, errors: pd.DataFrame) -> None:
        p = self.probation
        if p is None or errors.empty:
            return
        mine = errors["abs_error"].to_numpy()[errors["model_version"].to_numpy() == p.tag]
        p.n += len(mine)
        p.total += float(mine.sum())

    def _swapped(self, old_tag: str, version: int, tag: str) -> None:
        last = _last_event(self.registry, self.cfg.model_name, version)
        action = last.get("action") if last else None
        self._version, self._tag = version, tag
        if action == "rollback":
            self.metrics.rollbacks.inc()
            self.probation = None
            self._decide("rolled_back", f"now serving {tag} again (was {old_tag}): {last.get('note', '')}")
            return
        predecessor_mae = self.skill.fleet_model
        if self.rollback_min_errors > 0 and math.isfinite(predecessor_mae):
            self.probation = Probation(tag, version, old_tag, predecessor_mae)
            self._decide("probation", f"{tag} replaces {old_tag}; predecessor live MAE {predecessor_mae:.4f}, "
                                      f"rollback if worse by {self.rollback_margin:.0%} over "
                                      f"{self.rollback_min_errors} errors")
        else:
            self.probation = None
            self._decide("swapped", f"now serving {tag} (was {old_tag})")

    def _check_probation(self) -> None:
        p = self.probation
        if p is None or p.n < self.rollback_min_errors:
            return
        self.probation = None
        if p.mae <= p.predecessor_mae * (1 + self.rollback_margin):
            self._decide("kept", f"{p.tag} live MAE {p.mae:.4f} over {p.n} errors vs predecessor {p.predecessor} "
                                 f"{p.predecessor_mae:.4f}: kept")
            return
        champion = self.registry.champion(self.cfg.model_name)
        if champion is None or champion.version != p.version:
            self._decide("kept", f"{p.tag} is no longer the champion; no rollback")
            return
        note = (f"auto rollback: {p.tag} live MAE {p.mae:.4f} over {p.n} errors worse than {p.predecessor} "
                f"{p.predecessor_mae:.4f} by more than {self.rollback_margin:.0%}")
        try:
            self.registry.rollback(self.cfg.model_name, note=note)
        except RegistryError as exc:
            self._decide("rollback_failed", f"{note}; {exc}")
            return
        log.warning(note)
        self._swap()
        self._note_swap()  # counted as a rollback: the registry's last event for the version is the rollback

    def _decide(self, decision: str, detail: str) -> None:
        log.info("lifecycle: %s: %s", decision, detail)
        self.decisions.append({"decision": decision, "detail": detail})


def _last_event(registry, name: str, version: int) -> dict | None:
    """The newest registry event that made ``version`` the champion (promote or rollback)."""
    try:
        events = registry.events(name)
    except Exception:  # noqa: BLE001 - a missing/unreadable index must not break the loop
        return None
    for e in reversed(events):
        if e.get("version") == version and e.get("action") in ("promote", "rollback"):
            return e
    return None
