"""Stations at their own cadence: one lane (a :class:`pipeline.step.Step` with its own ring, champion, scores and
band calibration) per cadence a champion exists for, and the routing of each polled batch to the lanes.

    router = CadenceRouter({3600: hourly_step, 600: ten_minute_step}, StepConfig)
    out = router(values, keys, partitions, offsets)   # one StepResult for the whole batch

A station's readings are held back (not put in any window) until its cadence is known
(:class:`pipeline.cadence.CadenceDetector`: declared, or the median spacing of its first readings); then all of
them go, in time order, to the lane of its cadence, whose grid is the station's own. A station whose cadence no
champion has is *unserved*: its readings are still stored (nothing accepted is lost), it is logged once, listed on
the status page and counted in the metrics, and no model forecasts it. Each lane batches its own forward passes,
so the hourly and the 10-minute stations never share a pass or a grid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from pipeline.cadence import DETECT_READINGS, CadenceDetector, describe, matching
from pipeline.step import T_INDEX, Step, StepConfig, StepResult, parse_batch

log = logging.getLogger("stationcast.lanes")
_BUFFER = 4 * DETECT_READINGS  # readings held per undetected station (repeats of one time stamp included)


class CadenceRouter:
    """The lanes and, per station, the lane it belongs to."""

    def __init__(self, lanes: dict[int, Step], cfg: StepConfig, detector: CadenceDetector | None = None):
        if not lanes:
            raise ValueError("no lane: the service needs at least one champion")
        self.lanes, self.cfg = lanes, cfg
        self.detector = detector or CadenceDetector()
        self.lane_of: dict[str, int] = {}  # station -> cadence of its lane
        self.unserved: dict[str, float] = {}  # station -> detected spacing no champion has
        self._held: dict[str, list[tuple[int, np.ndarray]]] = {}  # readings of stations not detected yet

    @property
    def cadences(self) -> list[int]:
        return sorted(self.lanes)

    def step_of(self, station: str) -> Step | None:
        c = self.lane_of.get(station)
        return None if c is None else self.lanes[c]

    def assign(self, station: str, cadence_s: int) -> None:
        """A station whose cadence is known otherwise (its stored readings after a restart)."""
        self.detector.cadence[station] = float(cadence_s)
        self.lane_of[station] = cadence_s

    def __call__(self, values: Sequence, keys: Sequence, partitions: np.ndarray, offsets: np.ndarray,
                 arrived: float | None = None, now=None) -> StepResult:
        out = parse_batch(values, keys, partitions, offsets, self.cfg.max_future_s, arrived, now)
        batch = out.readings
        if len(batch):
            self.feed(batch.station, batch.time.astype("datetime64[s]").astype(np.int64), batch.values, out)
        return out

    def feed(self, station: np.ndarray, ts: np.ndarray, values: np.ndarray, out: StepResult) -> None:
        """Readings (``values`` in SENSORS order) to their stations' lanes; those of undetected stations wait."""
        station = np.asarray(station, dtype=object)
        names, inverse = np.unique(station, return_inverse=True)  # a lookup per station, not per reading
        lane = np.array([self.lane_of.get(s, 0) for s in names.tolist()], dtype=np.int64)[inverse]
        waiting = np.flatnonzero(lane == 0)
        if len(waiting):
            self._hold(station[waiting], ts[waiting], values[waiting], out)
        for cadence, step in self.lanes.items():
            sel = np.flatnonzero(lane == cadence)
            if len(sel):
                step.feed(station[sel], ts[sel], values[sel], out)

    def _hold(self, station: np.ndarray, ts: np.ndarray, values: np.ndarray, out: StepResult) -> None:
        """Readings of stations without a lane: detection sees their times; a station detected now gets its held
        readings and all of this batch's in its lane; the others' wait (the last :data:`_BUFFER` per station)."""
        unserved = np.fromiter((s in self.unserved for s in station.tolist()), dtype=bool, count=len(station))
        out.unserved += int(unserved.sum())
        keep = np.flatnonzero(~unserved)
        station, ts, values = station[keep], ts[keep], values[keep]
        if len(station):  # the status page shows a station from its first reading, before its lane is known
            out.actual_parts.append((station, ts, values[:, T_INDEX]))
        # Declared stations (a cadence known before any reading) are routed at their first reading.
        detected = set(self.detector.observe(station, ts)) | (set(self.detector.declared) & set(station.tolist()))
        now = np.fromiter((s in detected for s in station.tolist()), dtype=bool, count=len(station))
        for i in np.flatnonzero(~now).tolist():
            held = self._held.setdefault(station[i], [])
            held.append((int(ts[i]), values[i]))
            del held[:-_BUFFER]
        routed: dict[int, list[np.ndarray]] = {}
        for s in detected:
            cadence = self._route(s, out)
            if cadence is not None:
                routed.setdefault(cadence, []).append(s)
            else:
                out.unserved += int(np.count_nonzero(station == s))
        for cadence, names in routed.items():
            held = [(s, t, v) for s in names for t, v in self._held.pop(s, [])]
            mine = np.flatnonzero(np.isin(station, np.asarray(names, dtype=object)))
            st = np.concatenate([np.array([h[0] for h in held], dtype=object), station[mine]])
            tt = np.concatenate([np.array([h[1] for h in held], dtype=np.int64), ts[mine]])
            vv = np.concatenate([np.stack([h[2] for h in held]) if held else values[:0], values[mine]])
            self.lanes[cadence].feed(st, tt, vv, out)

    def _route(self, station: str, out: StepResult) -> int | None:
        """The lane of a station just detected (None: its cadence has no champion)."""
        spacing = self.detector.cadence[station]
        cadence = matching(spacing, self.lanes)
        if cadence is None:
            self.unserved[station] = spacing
            out.unserved += len(self._held.pop(station, []))
            log.warning("station %s reports every %s: no champion serves that cadence (champions: %s); its readings "
                        "are stored but not forecast", station, describe(spacing),
                        ", ".join(describe(c) for c in self.cadences))
            return None
        self.lane_of[station] = cadence
        log.info("station %s reports every %s: served at that cadence", station, describe(cadence))
        return cadence

    def forget(self, stations: np.ndarray) -> None:
        """Stations that moved to another replica: their state leaves every lane (and detection restarts)."""
        for cadence, step in self.lanes.items():
            mine = np.array([s for s in stations.tolist() if self.lane_of.get(s) == cadence], dtype=object)
            if len(mine):
                step.forget(mine)
        for s in stations.tolist():
            self.lane_of.pop(s, None)
            self._held.pop(s, None)
            self.unserved.pop(s, None)
            self.detector.forget(s)

    def release(self, stations: list[str]) -> None:
        for cadence, step in self.lanes.items():
            mine = [s for s in stations if self.lane_of.get(s) == cadence]
            if mine:
                step.release(mine)

    def served(self) -> dict[int, list[str]]:
        """The stations of each lane."""
        out: dict[int, list[str]] = {c: [] for c in self.lanes}
        for s, c in self.lane_of.items():
            out[c].append(s)
        return out
