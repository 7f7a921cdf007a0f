"""The service side of the model lifecycle: hot swap on request, rollbacks seen, and automatic rollback.

Everything here runs in the service's loop thread (:meth:`Lifecycle.on_loop`, :meth:`Lifecycle.on_errors`), with
the service's collaborators handed in (registry, metrics, rolling skill, the serving model and a swap function), not
the service itself; other threads (the scheduler) only set a flag through :meth:`request_swap`.

Automatic rollback, per cadence's champion (``global``, ``global-10min``, ...): when a *promoted* model starts
serving, the predecessor's live rolling MAE over that cadence's stations is recorded.
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
    def __init__(self, cfg: ServiceConfig, registry: Registry, metrics: Metrics,
                 champions: Callable[[], dict[str, tuple[VersionInfo, RollingSkill]]], swap: Callable[[], bool]):
        """``champions``: per cadence served, the champion name, the version serving it now and the lane's
        rolling skill (the hourly one first); ``swap``: make the service load the registry's champions now (True
        when something changed)."""
        self.cfg, self.registry, self.metrics = cfg, registry, metrics
        self._champions, self._swap = champions, swap
        self.rollback_margin = float(cfg.rollback_margin)
        self.rollback_min_errors = int(cfg.rollback_min_errors)
        self._swap_requested = threading.Event()
        self._serving = {name: (info.version, info.tag) for name, (info, _) in champions().items()}
        self.probations: dict[str, Probation] = {}  # champion name -> its newly promoted version under watch
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
        self._note_swaps()
        for name in list(self.probations):
            self._check_probation(name)

    def _note_swaps(self) -> None:
        for name, (info, skill) in self._champions().items():
            version, tag = self._serving.get(name, (None, None))
            if info.version != version:
                self._swapped(name, skill, tag, info.version, info.tag)

    def on_errors(self, errors: pd.DataFrame) -> None:
        if not self.probations or errors.empty:
            return
        versions = errors["model_version"].to_numpy()
        abs_error = errors["abs_error"].to_numpy()
        for p in self.probations.values():
            mine = abs_error[versions == p.tag]
            p.n += len(mine)
            p.total += float(mine.sum())

    def _swapped(self, name: str, skill: RollingSkill, old_tag: str | None, version: int, tag: str) -> None:
        last = _last_event(self.registry, name, version)
        action = last.get("action") if last else None
        self._serving[name] = (version, tag)
        self.probations.pop(name, None)
        if action == "rollback":
            self.metrics.rollbacks.inc()
            self._decide("rolled_back", f"now serving {tag} again (was {old_tag}): {last.get('note', '')}")
            return
        predecessor_mae = skill.fleet_model
        if old_tag is not None and self.rollback_min_errors > 0 and math.isfinite(predecessor_mae):
            self.probations[name] = Probation(tag, version, old_tag, predecessor_mae)
            self._decide("probation", f"{tag} replaces {old_tag}; predecessor live MAE {predecessor_mae:.4f}, "
                                      f"rollback if worse by {self.rollback_margin:.0%} over "
                                      f"{self.rollback_min_errors} errors")
        else:
            self._decide("swapped", f"now serving {tag} (was {old_tag})")

    def _check_probation(self, name: str) -> None:
        p = self.probations[name]
        if p.n < self.rollback_min_errors:
            return
        del self.probations[name]
        if p.mae <= p.predecessor_mae * (1 + self.rollback_margin):
            self._decide("kept", f"{p.tag} live MAE {p.mae:.4f} over {p.n} errors vs predecessor {p.predecessor} "
                                 f"{p.predecessor_mae:.4f}: kept")
            return
        champion = self.registry.champion(name)
        if champion is None or champion.version != p.version:
            self._decide("kept", f"{p.tag} is no longer the champion; no rollback")
            return
        note = (f"auto rollback: {p.tag} live MAE {p.mae:.4f} over {p.n} errors worse than {p.predecessor} "
                f"{p.predecessor_mae:.4f} by more than {self.rollback_margin:.0%}")
        try:
            self.registry.rollback(name, note=note)
        except RegistryError as exc:
            self._decide("rollback_failed", f"{note}; {exc}")
            return
        log.warning(note)
        self._swap()
        self._note_swaps()  # counted as a rollback: the registry's last event for the version is the rollback

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
