"""Which model forecasts which station: the global champion, or a station's own fine-tuned champion.

Station models are fine-tuned copies of the global model (same features, lookback, cadence, horizons and
quantiles), so every station shares one rolling-window layout and only the forward pass is routed. A station
model that no longer matches the global model's layout (after a retraining changed the architecture) is not
served, and the station falls back to the global model until it is fine-tuned again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from forecaster.artifact import ModelCard
from forecaster.predict import Predictor
from forecaster.registry import Registry, VersionInfo

log = logging.getLogger("stationcast.serving")


@dataclass(frozen=True)
class Served:
    predictor: Predictor
    info: VersionInfo
    card: ModelCard


def mismatch(card: ModelCard, reference: ModelCard) -> str | None:
    """Why a station model cannot share the reference model's windows and outputs (None: it can)."""
    a, b = card.data, reference.data
    for what, mine, theirs in (
        ("features", list(a.features), list(b.features)), ("target", a.target, b.target),
        ("lookback", a.lookback, b.lookback), ("step", a.step, b.step), ("cadence_s", card.cadence_s,
                                                                          reference.cadence_s),
        ("horizons", list(card.model.horizons), list(reference.model.horizons)),
        ("quantiles", list(card.model.quantiles), list(reference.model.quantiles)),
    ):
        if mine != theirs:
            return f"{what} {mine} differs from the global model's {theirs}"
    return None


class ServingModels:
    """The global champion and the station champions, with routing for a batch of windows."""

    def __init__(self, device: str = "auto"):
        self.device = device
        self.fleet: Served | None = None
        self.stations: dict[str, Served] = {}

    def set_fleet(self, served: Served) -> None:
        self.fleet = served
        for station, s in list(self.stations.items()):
            reason = mismatch(s.card, served.card)
            if reason:
                log.warning("station %s falls back to %s: its model %s %s", station, served.info.tag, s.info.tag,
                            reason)
                del self.stations[station]

    def refresh(self, registry: Registry, accept: Callable[[str], bool] | None = None) -> list[str]:
        """Load new station champions and drop withdrawn ones; the station tags that changed. ``accept``: the
        stations this global model serves (the others, on another cadence's champion, are left alone)."""
        champions = registry.station_champions()
        if accept is not None:
            champions = {s: v for s, v in champions.items() if accept(s)}
        changed = []
        for station in [s for s in self.stations if s not in champions]:
            log.info("station %s: its model %s no longer has a champion, back to %s", station,
                     self.stations.pop(station).info.tag, self.fleet.info.tag)
            changed.append(station)
        for station, info in champions.items():
            current = self.stations.get(station)
            if current is not None and current.info.tag == info.tag:
                continue
            try:
                model, card, info = registry.load(info.name, info.version)
            except Exception as exc:  # noqa: BLE001 - a broken artifact must not stop serving
                log.error("station model %s not loaded, station %s stays on %s: %s", info.tag, station,
                          (current or self.fleet).info.tag, exc)
                continue
            reason = mismatch(card, self.fleet.card)
            if reason:
                log.warning("station model %s not served: %s", info.tag, reason)
                continue
            self.stations[station] = Served(Predictor(model, card, self.device), info, card)
            log.info("station %s now served by %s", station, info.tag)
            changed.append(station)
        return changed

    def tag_of(self, station: str) -> str:
        s = self.stations.get(station)
        return (s or self.fleet).info.tag

    def predict(self, stations: np.ndarray, values: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forecasts ``[B, H, Q]`` in degrees and the tag of the model that made each row.

        Stations on the global model share one batched forward pass; each fine-tuned station is one more
        small pass of its own model.
        """
        fleet = self.fleet
        tags = np.full(len(stations), fleet.info.tag, dtype=object)
        if not self.stations:
            return fleet.predictor.predict(values, origin).values, tags
        own = np.fromiter((s in self.stations for s in stations.tolist()), dtype=bool, count=len(stations))
        if not own.any():
            return fleet.predictor.predict(values, origin).values, tags
        cfg = fleet.card.model
        out = np.empty((len(stations), len(cfg.horizons), cfg.n_outputs), dtype=np.float32)
        rest = np.flatnonzero(~own)
        if len(rest):
            out[rest] = fleet.predictor.predict(values[rest], origin[rest]).values
        for i in np.flatnonzero(own).tolist():
            served = self.stations[stations[i]]
            out[i] = served.predictor.predict(values[i : i + 1], origin[i : i + 1]).values[0]
            tags[i] = served.info.tag
        return out, tags
