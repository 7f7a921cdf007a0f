"""Per-station rolling windows for the streaming forecaster, kept in one preallocated ring buffer.

Readings arrive from Kafka in batches: unordered, sometimes repeated, sometimes late. Appending to a pandas
frame per message does not keep up with thousands of stations, so every station owns one row of a numpy
ring ``[stations, capacity, n_sensors]`` and a whole batch is applied with a handful of vectorized steps
(sort by station row and slot, group, scatter); ``add`` has no Python loop per reading or per station.

Time grid. A station's grid is fixed by its first reading (the first one received; inside a batch, the
first in input order): ``phase = ts % cadence_s`` and ``slot = round((ts - phase) / cadence_s)`` with
halves rounded up, so slot ``k`` is the time ``phase + k * cadence_s`` (see ``slot_time``). Hourly readings
at :10 or :50 therefore get their own grid instead of being pulled onto the hour.

Outcomes, exact and per reading. A batch is applied per station in slot order, so out-of-order readings
inside one batch behave as if they had arrived in slot order:

- ``LATE``: slot < newest - lateness_steps, with the newest slot as it was before the batch (in slot order no
  reading of the batch can make another one late). Not inserted; the caller still stores it.
- ``DUPLICATE``: the slot already holds a reading, from an earlier batch or from earlier in this batch's
  input order (the first reading of a slot wins, as in ``forecaster.clean``). Ignored.
- ``ACCEPTED``: everything else: a reading that moves the newest slot forward, or fills an empty slot within
  lateness (also a slot that was only interpolated: the real reading replaces the interpolation).

Gaps and readiness. The ring holds the raw readings (float32, what the model consumes; slots without a
reading are NaN) and the state is a function of the accepted readings only. As in ``forecaster.clean``, a run
of missing values of one sensor (no reading in the slot, or a NaN value) that has values on both sides and
is at most ``max_fill_steps`` long is filled by linear interpolation, so a short gap is filled as soon as
the next reading arrives (or a late reading splits a long gap into short ones). A step is valid when every
``required`` sensor has a value or a fill. A station is ready when its last ``lookback`` slots are all
valid: after a longer gap (or a NaN in a required sensor of the newest reading, which has no right
neighbour yet) it is not ready until ``lookback`` consecutive valid steps exist again. Slots before a
station's first reading are invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import pandas as pd

_NONE = np.iinfo(np.int64).min  # "no slot" marker
_BIG = np.iinfo(np.int64).max // 4  # farther than any real distance between slots


class Outcome(IntEnum):
    """What ``RollingWindows.add`` did with one reading (stored as int8)."""

    ACCEPTED = 0
    DUPLICATE = 1
    LATE = 2


@dataclass(frozen=True)
class WindowConfig:
    """Shape of the rolling windows and the rules for late, missing and repeated readings."""

    lookback: int  # steps the model needs
    n_sensors: int
    cadence_s: int  # grid step in seconds, e.g. 3600
    lateness_steps: int = 3  # how far behind the newest slot a reading may land in its slot
    max_fill_steps: int = 3  # missing runs up to this long are interpolated once bounded on both sides
    required: tuple[int, ...] | None = None  # sensors that make a step valid; None: all of them
    capacity: int | None = None  # ring length; None: lookback + lateness_steps + max_fill_steps + 2
    initial_stations: int = 64  # rows allocated up front; doubles when new stations appear

    def __post_init__(self) -> None:
        if self.lookback < 1 or self.n_sensors < 1 or self.cadence_s < 1 or self.initial_stations < 1:
            raise ValueError("lookback, n_sensors, cadence_s and initial_stations must be positive")
        if self.lateness_steps < 0 or self.max_fill_steps < 0:
            raise ValueError("lateness_steps and max_fill_steps must not be negative")
        req = self.required_sensors
        if not req or len(set(req)) != len(req) or min(req) < 0 or max(req) >= self.n_sensors:
            raise ValueError(f"required must be distinct sensor indices in [0, {self.n_sensors}), got {req}")
        if self.capacity is not None and self.capacity < self.min_capacity:
            raise ValueError(f"capacity {self.capacity} < {self.min_capacity}, the least these settings need")

    @property
    def required_sensors(self) -> tuple[int, ...]:
        return tuple(range(self.n_sensors)) if self.required is None else tuple(self.required)

    @property
    def min_capacity(self) -> int:
        """The window plus the fill context before it, and late slots plus their fill neighbours."""
        return max(self.lookback + self.max_fill_steps + 1, self.lateness_steps + self.max_fill_steps + 2)

    @property
    def ring_length(self) -> int:
        if self.capacity is not None:
            return self.capacity
        return max(self.lookback + self.lateness_steps + self.max_fill_steps + 2, self.min_capacity)


@dataclass(frozen=True)
class AddResult:
    """What one batch did. ``outcome`` is aligned with the input; the counts are exact.

    ``advanced``: stations whose newest slot moved forward in this batch and that are ready after it, i.e.
    due for a forecast (a late fill of an older slot never puts a station here). ``not_ready``: stations
    that moved forward but are not ready. ``gaps_filled``: slots without a reading that became
    interpolated in this batch (a missing slot counts once, when a run of at most ``max_fill_steps``
    missing slots gets readings on both sides).
    """

    outcome: np.ndarray  # int8, Outcome per input reading
    accepted: int
    duplicate: int
    late: int
    advanced: np.ndarray  # station ids (object)
    not_ready: int
    gaps_filled: int


class RollingWindows:
    """The newest ``capacity`` slots of every station in one ring; see the module docstring for semantics."""

    def __init__(self, config: WindowConfig) -> None:
        self.config = config
        self._cap = config.ring_length
        self._req = np.asarray(config.required_sensors, dtype=np.intp)
        self._row_of: dict[object, int] = {}  # the registry
        # A hashed snapshot of the registry for vectorized lookups; ids registered since it was taken are
        # looked up in the dict (few), and it is retaken once they are many or when stations are dropped.
        self._snapshot = pd.Index([], dtype=object)
        self._snapshot_rows = np.full(1, -1, dtype=np.int64)  # rows of the snapshot's ids, then -1
        self._free: list[int] = []  # rows of dropped stations, reused first
        self._used = 0  # rows handed out at least once
        n, cap = config.initial_stations, self._cap
        self._values = np.full((n, cap, config.n_sensors), np.nan, dtype=np.float32)
        self._held = np.zeros((n, cap), dtype=bool)  # slot holds a reading (a NaN value still counts)
        self._newest = np.zeros(n, dtype=np.int64)
        self._phase = np.zeros(n, dtype=np.int64)
        # Latest invalid slot; exact when it is inside the window, else any value <= newest - lookback.
        self._last_bad = np.zeros(n, dtype=np.int64)
        self._first = np.zeros(n, dtype=np.int64)  # earliest slot ever accepted (no valid slot lies before it)
        self._started = np.zeros(n, dtype=bool)  # has had a reading (phase and newest are set)
        self._names = np.empty(n, dtype=object)

    # ------------------------------------------------------------------ stations

    @property
    def n_stations(self) -> int:
        return len(self._row_of)

    @property
    def n_ready(self) -> int:
        """How many stations are ready (see :meth:`ready`), over all rows at once."""
        ok = self._started & (self._newest - self._last_bad >= self.config.lookback)
        return int(np.count_nonzero(ok))

    @property
    def capacity(self) -> int:
        """Ring length in slots."""
        return self._cap

    def memory_bytes(self) -> int:
        """Bytes held by the numpy buffers (all allocated rows; ids and the id dict not counted)."""
        arrays = (
            self._values,
            self._held,
            self._newest,
            self._phase,
            self._last_bad,
            self._first,
            self._started,
            self._names,
        )
        return int(sum(a.nbytes for a in arrays))

    def station_index(self, names: np.ndarray) -> np.ndarray:
        """Rows of ``names`` in the buffers; unknown ids are registered (the buffers grow by doubling)."""
        codes, urows = self._lookup(names, register=True)
        return urows[codes]

    def drop(self, stations: np.ndarray) -> int:
        """Forget stations (their partition moved away); rows are reused. Returns how many were known."""
        _, urows = self._lookup(stations, register=False)
        rows = np.unique(urows[urows >= 0])
        for row in rows.tolist():
            del self._row_of[self._names[row]]
            self._free.append(row)
        self._reset(rows)
        if len(rows):
            self._take_snapshot()
        return len(rows)

    def rebuild(self, station: np.ndarray, ts: np.ndarray, values: np.ndarray) -> AddResult:
        """Replace the stations' state by their stored history (after a restart or a partition move).

        The same as dropping them and ``add`` of the history in time order: the grid phase comes from the
        earliest reading, and readings that were late when streamed are placed if they fit in the ring.
        """
        station = _as_ids(station)
        ts = np.asarray(ts, dtype=np.int64)
        self.drop(station)
        order = np.argsort(ts, kind="stable")
        return self.add(station[order], ts[order], np.asarray(values, dtype=np.float64)[order])

    def may_become_ready(self, station: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Per reading: whether its station's window could be ready at any point while these readings are added.
        False is certain: from the station's earliest reading to its newest one, these included, there are too few
        slots to fill a lookback (a valid slot never lies before the earliest held one). Callers add such readings
        all at once instead of one time step at a time, since no forecast can be due among them."""
        cad = self.config.cadence_s
        codes, uniq = pd.factorize(_as_ids(station))
        ts = np.asarray(ts, dtype=np.int64).reshape(-1)
        lo = np.full(len(uniq), np.iinfo(np.int64).max)
        hi = np.full(len(uniq), np.iinfo(np.int64).min)
        np.minimum.at(lo, codes, ts)
        np.maximum.at(hi, codes, ts)
        rows = self._rows_or_missing(np.asarray(uniq, dtype=object))
        known = rows >= 0
        known[known] = self._started[rows[known]]
        r = rows[known]
        lo[known] = np.minimum(lo[known], self._phase[r] + self._first[r] * cad)
        hi[known] = np.maximum(hi[known], self._phase[r] + self._newest[r] * cad)
        span = (hi - lo) // cad + 2  # slots, one more for rounding onto the grid
        return (span >= self.config.lookback)[codes]

    def slot_of(self, stations: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Grid slot of each timestamp on its station's grid (stations must have had a reading)."""
        rows = self._known_rows(stations)
        cad = self.config.cadence_s
        return (np.asarray(ts, dtype=np.int64) - self._phase[rows] + cad // 2) // cad

    def slot_time(self, station: np.ndarray | str, slot: np.ndarray | int) -> np.ndarray:
        """Epoch seconds of a slot on the station's grid: ``phase + slot * cadence_s``."""
        rows = self._known_rows(station)
        return self._phase[rows] + np.asarray(slot, dtype=np.int64) * self.config.cadence_s

    # ------------------------------------------------------------------ queries

    def ready(self, stations: np.ndarray) -> np.ndarray:
        """Whether each station's last ``lookback`` steps are all valid (unknown stations: False)."""
        rows = self._rows_or_missing(stations)
        ok = rows >= 0
        r = rows[ok]
        out = np.zeros(len(rows), dtype=bool)
        out[ok] = self._started[r] & (self._newest[r] - self._last_bad[r] >= self.config.lookback)
        return out

    def windows(self, stations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The last ``lookback`` steps ``[B, lookback, n_sensors]`` (float32, oldest first, short gaps filled,
        NaN where invalid) and the origin (newest slot) times in epoch seconds ``[B]``.

        One fancy-index gather over the ring; the fill context before the window comes in the same gather.
        """
        cfg = self.config
        rows = self._known_rows(stations)
        lb, width = cfg.lookback, cfg.lookback + cfg.max_fill_steps + 1
        newest = self._newest[rows]
        slots = newest[:, None] + np.arange(1 - width, 1, dtype=np.int64)
        raw = self._gather(rows, slots % self._cap)  # [B, width, F]
        out = raw[:, width - lb :].copy()
        obs = ~np.isnan(raw)
        b, j = np.nonzero(~obs[:, width - lb :].all(axis=1))  # (station, sensor) columns that may need fills
        if b.size:
            col = obs[b, :, j]  # [columns, width]
            prev, nxt = _bounds(col)
            fill = ~col & (prev >= 0) & (nxt < width) & (nxt - prev - 1 <= cfg.max_fill_steps)
            c, i = np.nonzero(fill[:, width - lb :])
            b, j, k = b[c], j[c], i + (width - lb)
            lo, hi = prev[c, k], nxt[c, k]
            a, z = raw[b, lo, j].astype(np.float64), raw[b, hi, j].astype(np.float64)
            out[b, i, j] = a + (z - a) * ((k - lo) / (hi - lo))
        return out, self._phase[rows] + newest * cfg.cadence_s

    def newest_time(self, stations: np.ndarray) -> np.ndarray:
        """Epoch seconds of each station's newest slot (int64 min for stations without a reading)."""
        rows = self._rows_or_missing(stations)
        out = np.full(len(rows), _NONE, dtype=np.int64)
        ok = rows >= 0
        ok[ok] = self._started[rows[ok]]
        r = rows[ok]
        out[ok] = self._phase[r] + self._newest[r] * self.config.cadence_s
        return out

    def latest(self, stations: np.ndarray, sensor: int) -> np.ndarray:
        """The newest reading's value of ``sensor`` (float64; NaN if missing or the station is unknown)."""
        rows = self._rows_or_missing(stations)
        out = np.full(len(rows), np.nan)
        ok = rows >= 0
        ok[ok] = self._started[rows[ok]]
        r = rows[ok]
        out[ok] = self._values[r, self._newest[r] % self._cap, sensor]
        return out

    def value_at(self, stations: np.ndarray, ts: np.ndarray, sensor: int) -> np.ndarray:
        """The reading of ``sensor`` in the slot of ``ts`` (float64). NaN where the slot holds no reading
        (interpolated values are not observations), is outside the ring, or the station is unknown."""
        rows = self._rows_or_missing(stations)
        ts = np.broadcast_to(np.asarray(ts, dtype=np.int64), rows.shape)
        out = np.full(len(rows), np.nan)
        ok = rows >= 0
        ok[ok] = self._started[rows[ok]]
        r, cad = rows[ok], self.config.cadence_s
        slot = (ts[ok] - self._phase[r] + cad // 2) // cad
        pos = slot % self._cap
        newest = self._newest[r]
        held = (slot <= newest) & (slot > newest - self._cap) & self._held[r, pos]
        out[np.flatnonzero(ok)[held]] = self._values[r[held], pos[held], sensor]
        return out

    # ------------------------------------------------------------------ updates

    def add(self, station: np.ndarray, ts: np.ndarray, values: np.ndarray) -> AddResult:
        """Apply a batch of readings (any order, several per station); see the module docstring."""
        cfg, cap = self.config, self._cap
        station = _as_ids(station)
        ts = np.asarray(ts, dtype=np.int64).reshape(-1)
        values = np.asarray(values, dtype=np.float64)
        n = len(ts)
        if station.shape != (n,) or values.shape != (n, cfg.n_sensors):
            raise ValueError(
                f"need station [N], ts [N], values [N, {cfg.n_sensors}]; got "
                f"{station.shape}, {ts.shape}, {values.shape}"
            )
        if n == 0:
            return AddResult(np.zeros(0, np.int8), 0, 0, 0, np.empty(0, dtype=object), 0, 0)

        codes, urows = self._lookup(station, register=True)
        rows = urows[codes]
        fresh = ~self._started[urows]
        if fresh.any():  # the grid phase comes from a station's first reading in input order
            _, first = np.unique(codes, return_index=True)
            self._phase[urows[fresh]] = ts[first[fresh]] % cfg.cadence_s
        slot = (ts - self._phase[rows] + cfg.cadence_s // 2) // cfg.cadence_s

        # Per station in slot order; lexsort is stable, so equal slots keep input order (first one wins).
        order = np.lexsort((slot, rows))
        r, s = rows[order], slot[order]
        start = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        count = np.diff(np.r_[start, n])
        g_rows = r[start]
        g_new = ~self._started[g_rows]
        n0 = np.where(g_new, s[start] - 1, self._newest[g_rows])  # a new station starts just before its first
        n0_r = np.repeat(n0, count)
        pos = s % cap

        late = s < n0_r - cfg.lateness_steps
        repeat = np.r_[False, (r[1:] == r[:-1]) & (s[1:] == s[:-1])]
        dup = ~late & (repeat | ((s <= n0_r) & self._held[r, pos]))
        acc = ~late & ~dup
        sorted_outcome = np.full(n, Outcome.ACCEPTED, dtype=np.int8)
        sorted_outcome[dup] = Outcome.DUPLICATE
        sorted_outcome[late] = Outcome.LATE
        outcome = np.empty(n, dtype=np.int8)
        outcome[order] = sorted_outcome

        n1 = np.maximum(n0, s[start + count - 1])  # the last of a group has its largest slot
        gaps_filled = self._count_fills(r[acc], s[acc], n0_r[acc])

        # Slots the newest moves over start empty (their ring cells held slots a ring length older).
        adv = n1 > n0
        if adv.any():
            lo, length = n0[adv] + 1, np.minimum(n1[adv] - n0[adv], cap)
            grp = np.repeat(np.arange(len(lo)), length)
            cleared = (np.arange(len(grp)) - np.repeat(np.cumsum(length) - length, length) + lo[grp]) % cap
            self._values[g_rows[adv][grp], cleared] = np.nan
            self._held[g_rows[adv][grp], cleared] = False
        write = acc & (s > np.repeat(n1, count) - cap)  # older accepted slots already left the ring
        self._values[r[write], pos[write]] = values[order[write]]
        self._held[r[write], pos[write]] = True
        self._newest[g_rows] = n1
        self._started[g_rows] = True
        self._last_bad[g_rows[g_new]] = n0[g_new]

        touched = np.add.reduceat(acc, start) > 0
        first_acc = np.minimum.reduceat(np.where(acc, s, _BIG), start)
        t = np.flatnonzero(touched)
        self._first[g_rows[t]] = np.where(g_new[t], first_acc[t], np.minimum(self._first[g_rows[t]], first_acc[t]))
        self._refresh_ready(g_rows[t], n0[t], n1[t], first_acc[t], g_new[t])

        ready = self._newest[g_rows] - self._last_bad[g_rows] >= cfg.lookback
        return AddResult(
            outcome=outcome,
            accepted=int(acc.sum()),
            duplicate=int(dup.sum()),
            late=int(late.sum()),
            advanced=self._names[g_rows[adv & ready]],
            not_ready=int((adv & ~ready).sum()),
            gaps_filled=gaps_filled,
        )

    # ------------------------------------------------------------------ internals

    def _count_fills(self, ra: np.ndarray, sa: np.ndarray, n0a: np.ndarray) -> int:
        """Missing slots that become interpolated by the accepted readings (slot order per station).

        Needs the ring as it was before the batch. New gaps all end at an accepted slot ``c``; the one on
        its left ends at the nearest earlier reading (old or in this batch), the one on its right at the next
        old reading unless another accepted slot comes first (then that slot counts it). A gap counts only
        if the old gap around ``c`` was not short already (then its slots were filled before).
        """
        mf, cap = self.config.max_fill_steps, self._cap
        if mf == 0 or ra.size == 0:
            return 0
        d = np.arange(1, mf + 2, dtype=np.int64)
        back, fwd = sa[:, None] - d, sa[:, None] + d
        old_prev = (back <= n0a[:, None]) & self._held[ra[:, None], back % cap]
        old_next = (fwd <= n0a[:, None]) & self._held[ra[:, None], fwd % cap]
        has_p, has_q = old_prev.any(1), old_next.any(1)
        dp = np.where(has_p, old_prev.argmax(1) + 1, _BIG)
        dq = np.where(has_q, old_next.argmax(1) + 1, _BIG)
        was_short = has_p & has_q & (dp + dq - 1 <= mf)
        same_prev = np.r_[False, ra[1:] == ra[:-1]]
        same_next = np.r_[ra[:-1] == ra[1:], False]
        dp_batch = np.where(same_prev, sa - np.r_[sa[:1], sa[:-1]], _BIG)
        dq_batch = np.where(same_next, np.r_[sa[1:], sa[-1:]] - sa, _BIG)
        left = np.minimum(dp, dp_batch) - 1
        right = np.where(dq < dq_batch, dq - 1, 0)
        n_left = np.where(~was_short & (left >= 1) & (left <= mf), left, 0)
        n_right = np.where(~was_short & (right >= 1) & (right <= mf), right, 0)
        return int(n_left.sum() + n_right.sum())

    def _refresh_ready(
        self, rows: np.ndarray, n0: np.ndarray, n1: np.ndarray, first_acc: np.ndarray, new: np.ndarray
    ) -> None:
        """Update the latest invalid slot of stations that took readings.

        Validity only changes within ``max_fill_steps`` of a changed slot, and a slot that existed before can
        only turn valid, so scanning from ``min(first accepted, n0 + 1) - max_fill_steps`` to the newest slot
        is enough unless the old latest invalid slot lies in that range and turned valid: then the whole
        window is rescanned. A new station scans from its first slot (``n0 + 1``; the slot before it stays
        invalid). Stations are scanned in groups of similar width (powers of two).
        """
        if rows.size == 0:
            return
        lb, mf = self.config.lookback, self.config.max_fill_steps
        old = self._last_bad[rows]
        scan_from = np.maximum(np.where(new, n0 + 1, np.minimum(first_acc, n0 + 1) - mf), n1 - lb + 1)
        full = old >= scan_from
        scan_from[full] = n1[full] - lb + 1
        length = n1 - scan_from + 1
        width = np.minimum(2 ** np.ceil(np.log2(length + mf + 1)).astype(np.int64), lb + mf + 1)
        width = np.maximum(width, length + mf + 1)
        found = np.full(len(rows), _NONE)
        for w in np.unique(width).tolist():
            sel = np.flatnonzero(width == w)
            found[sel] = self._latest_invalid(rows[sel], n1[sel], length[sel], w)
        self._last_bad[rows] = np.where(found != _NONE, found, np.where(full, n1 - lb, old))

    def _latest_invalid(
        self, rows: np.ndarray, newest: np.ndarray, length: np.ndarray, width: int
    ) -> np.ndarray:
        """Latest invalid slot among each station's newest ``length`` slots (``_NONE`` if all valid), judged
        with ``width - length >= max_fill_steps + 1`` slots of context before them."""
        found = np.full(len(rows), _NONE)
        pos = (newest[:, None] + np.arange(1 - width, 1, dtype=np.int64)) % self._cap
        raw = self._gather(rows, pos)
        if len(self._req) < self.config.n_sensors:
            raw = raw[:, :, self._req]
        obs = ~np.isnan(raw)
        gappy = np.flatnonzero(~obs.all(axis=(1, 2)))  # usually few: skip the run search for the others
        if gappy.size == 0:
            return found
        obs = obs[gappy]
        prev, nxt = _bounds(obs)
        valid = obs | ((prev >= 0) & (nxt < width) & (nxt - prev - 1 <= self.config.max_fill_steps))
        bad = ~valid.all(axis=2) & (np.arange(width) >= (width - length[gappy])[:, None])
        last = width - 1 - np.argmax(bad[:, ::-1], axis=1)
        found[gappy] = np.where(bad.any(axis=1), newest[gappy] - (width - 1 - last), _NONE)
        return found

    def _gather(self, rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """``values[rows[:, None], pos]`` as one take over the flattened ring (several times faster)."""
        flat = self._values.reshape(-1, self.config.n_sensors)
        return np.take(flat, rows[:, None] * self._cap + pos, axis=0)

    def _lookup(self, names: np.ndarray, register: bool) -> tuple[np.ndarray, np.ndarray]:
        """Factorize ids (hashing, no per-reading Python loop): codes per id and a row per distinct id
        (-1 for unknown ones unless ``register``)."""
        codes, uniques = pd.factorize(_as_ids(names), use_na_sentinel=True)
        if (codes < 0).any():
            raise ValueError("station ids must not be missing")
        urows = self._snapshot_rows[self._snapshot.get_indexer(uniques)]
        miss = np.flatnonzero(urows < 0)
        if miss.size and len(self._row_of) > len(self._snapshot):
            get = self._row_of.get
            urows[miss] = np.fromiter((get(u, -1) for u in uniques[miss]), dtype=np.int64, count=miss.size)
            miss = miss[urows[miss] < 0]
        if register and miss.size:
            urows[miss] = self._register(uniques[miss])
            if len(self._row_of) - len(self._snapshot) > 64 + len(self._snapshot) // 4:
                self._take_snapshot()
        return codes, urows

    def _take_snapshot(self) -> None:
        self._snapshot = pd.Index(list(self._row_of), dtype=object)
        self._snapshot_rows = np.r_[np.fromiter(self._row_of.values(), np.int64, len(self._row_of)), -1]

    def _register(self, names: np.ndarray) -> np.ndarray:
        n_new = len(names)
        reuse = [self._free.pop() for _ in range(min(n_new, len(self._free)))]
        fresh = np.arange(self._used, self._used + n_new - len(reuse), dtype=np.int64)
        self._used += len(fresh)
        self._grow(self._used)
        rows = np.concatenate([np.asarray(reuse, dtype=np.int64), fresh])
        self._names[rows] = names
        self._row_of.update(zip(names.tolist(), rows.tolist(), strict=True))
        return rows

    def _grow(self, need: int) -> None:
        size = len(self._newest)
        if need <= size:
            return
        while size < need:
            size *= 2
        extra = size - len(self._newest)
        cap, f = self._cap, self.config.n_sensors
        self._values = np.concatenate([self._values, np.full((extra, cap, f), np.nan, dtype=np.float32)])
        self._held = np.concatenate([self._held, np.zeros((extra, cap), dtype=bool)])
        for name in ("_newest", "_phase", "_last_bad", "_first"):
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(extra, dtype=np.int64)]))
        self._started = np.concatenate([self._started, np.zeros(extra, dtype=bool)])
        self._names = np.concatenate([self._names, np.empty(extra, dtype=object)])

    def _reset(self, rows: np.ndarray) -> None:
        self._values[rows] = np.nan
        self._held[rows] = False
        self._started[rows] = False
        self._names[rows] = None

    def _rows_or_missing(self, stations: np.ndarray | str) -> np.ndarray:
        codes, urows = self._lookup(stations, register=False)
        return urows[codes]

    def _known_rows(self, stations: np.ndarray | str) -> np.ndarray:
        rows = self._rows_or_missing(stations)
        bad = (rows < 0) | ~self._started[np.maximum(rows, 0)]
        if bad.any():
            raise KeyError(f"stations without readings: {list(_as_ids(stations)[bad][:5])}")
        return rows


def _as_ids(names: np.ndarray | str) -> np.ndarray:
    """Station ids as a 1-D object array (a single id becomes a batch of one)."""
    arr = np.asarray(names, dtype=object)
    return arr.reshape(-1) if arr.ndim else arr.reshape(1)


def _bounds(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Along axis 1, the index of the nearest observed cell at or before each cell (-1: none) and at or
    after it (``obs.shape[1]``: none). A missing cell's run is ``nxt - prev - 1`` long."""
    n = obs.shape[1]
    idx = np.arange(n, dtype=np.int32).reshape((1, n) + (1,) * (obs.ndim - 2))
    prev = np.maximum.accumulate(np.where(obs, idx, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(obs, idx, n)[:, ::-1], axis=1)[:, ::-1]
    return prev, nxt
