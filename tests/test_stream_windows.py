"""RollingWindows against a naive reference (dicts, Python loops) on random streams, plus targeted cases."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from pipeline.ring import AddResult, Outcome, RollingWindows, WindowConfig

HOUR = 3600
T0 = 1_700_000_000 - 1_700_000_000 % HOUR  # an hour boundary


class NaiveWindows:
    """Obviously-correct model of the semantics: all accepted readings kept forever, one at a time."""

    def __init__(self, cfg: WindowConfig) -> None:
        self.cfg = cfg
        self.phase: dict[str, int] = {}
        self.held: dict[str, dict[int, np.ndarray]] = {}
        self.newest: dict[str, int] = {}
        self.filled: dict[str, set[int]] = {}

    def slot(self, st: str, ts: int) -> int:
        cad = self.cfg.cadence_s
        return (ts - self.phase[st] + cad // 2) // cad

    def add(self, stations, ts, values) -> dict:
        cfg = self.cfg
        stations = [str(x) for x in stations]
        ts = [int(t) for t in ts]
        for st, t in zip(stations, ts, strict=True):  # phase: first reading received
            if st not in self.phase:
                self.phase[st] = t % cfg.cadence_s
                self.held[st] = {}
                self.filled[st] = set()
        slots = [self.slot(st, t) for st, t in zip(stations, ts, strict=True)]
        before = dict(self.newest)
        outcome = [None] * len(ts)
        # per station in slot order, ties in input order, one reading at a time
        for i in sorted(range(len(ts)), key=lambda i: (stations[i], slots[i])):
            st, sl = stations[i], slots[i]
            newest = self.newest.get(st)
            if newest is not None and sl < newest - cfg.lateness_steps:
                outcome[i] = Outcome.LATE
            elif sl in self.held[st]:
                outcome[i] = Outcome.DUPLICATE
            else:
                outcome[i] = Outcome.ACCEPTED
                self.held[st][sl] = np.asarray(values[i], dtype=np.float32)
                self.newest[st] = sl if newest is None else max(newest, sl)
        gaps_filled = 0
        for st in set(stations):
            now = self.filled_slots(st)
            gaps_filled += len(now - self.filled[st])
            self.filled[st] = now
        moved = [st for st in sorted(set(stations)) if self.newest[st] > before.get(st, -math.inf)]
        return {
            "outcome": np.array([int(o) for o in outcome], dtype=np.int8),
            "advanced": {st for st in moved if self.ready(st)},
            "not_ready": sum(not self.ready(st) for st in moved),
            "gaps_filled": gaps_filled,
        }

    def filled_slots(self, st: str) -> set[int]:
        keys = sorted(self.held[st])
        out = set()
        for a, b in zip(keys, keys[1:], strict=False):
            if 1 <= b - a - 1 <= self.cfg.max_fill_steps:
                out.update(range(a + 1, b))
        return out

    def raw(self, st: str, sl: int, j: int) -> float:
        v = self.held[st].get(sl)
        return math.nan if v is None else float(v[j])

    def cell(self, st: str, sl: int, j: int) -> float:
        v = self.raw(st, sl, j)
        if not math.isnan(v):
            return v
        mf = self.cfg.max_fill_steps
        a = next((a for a in range(sl - 1, sl - mf - 2, -1) if not math.isnan(self.raw(st, a, j))), None)
        b = next(
            (
                b
                for b in range(sl + 1, min(sl + mf + 2, self.newest[st] + 1))
                if not math.isnan(self.raw(st, b, j))
            ),
            None,
        )
        if a is None or b is None or b - a - 1 > mf:
            return math.nan
        va, vb = self.raw(st, a, j), self.raw(st, b, j)
        return va + (vb - va) * ((sl - a) / (b - a))

    def window(self, st: str) -> np.ndarray:
        n, lb, f = self.newest[st], self.cfg.lookback, self.cfg.n_sensors
        return np.array(
            [[self.cell(st, s, j) for j in range(f)] for s in range(n - lb + 1, n + 1)], np.float32
        )

    def ready(self, st: str) -> bool:
        if st not in self.newest:
            return False
        n = self.newest[st]
        return all(
            not math.isnan(self.cell(st, s, j))
            for s in range(n - self.cfg.lookback + 1, n + 1)
            for j in self.cfg.required_sensors
        )


def random_stream(seed: int, n_stations: int = 6, n_slots: int = 450, n_sensors: int = 3):
    """Readings with gaps (short and long), NaN values, duplicates, jitter and out-of-order/late arrival."""
    rng = np.random.default_rng(seed)
    st, ts, vals, arrive = [], [], [], []
    for k in range(n_stations):
        phase = int(rng.choice([0, 600, 3000, 1234]))
        present = np.ones(n_slots, dtype=bool)
        i = int(rng.integers(0, 20))
        while i < n_slots:
            gap = int(rng.choice([1, 1, 2, 3, 4, 5, 9, 25]))
            present[i : i + gap] = False
            i += gap + int(rng.geometric(1 / 25))
        slots = np.flatnonzero(present)
        t = T0 + phase + slots * HOUR + rng.integers(-HOUR // 6, HOUR // 6 + 1, len(slots))
        v = np.round(rng.normal(10, 5, (len(slots), n_sensors)), 2)
        v[rng.random(v.shape) < 0.03] = np.nan
        v[rng.random(len(slots)) < 0.25, 1] = np.nan  # a flaky sensor that is not required
        delay = rng.exponential(0.7 * HOUR, len(slots))
        delay[rng.random(len(slots)) < 0.06] += (
            rng.uniform(2, 8, 1)[0] * HOUR
        )  # late, sometimes beyond lateness
        again = rng.random(len(slots)) < 0.06  # re-sent, with other values
        t = np.r_[t, t[again] + rng.integers(-60, 61, again.sum())]
        v = np.r_[v, v[again] + 1.0]
        delay = np.r_[delay, delay[again] + rng.exponential(2 * HOUR, again.sum())]
        st += [f"st{k}"] * len(t)
        ts.append(t)
        vals.append(v)
        arrive.append(t + delay)
    order = np.argsort(np.concatenate(arrive), kind="stable")
    return np.array(st, dtype=object)[order], np.concatenate(ts)[order], np.concatenate(vals)[order]


def compare_state(rw: RollingWindows, ref: NaiveWindows, rng: np.random.Generator) -> None:
    names = np.array(sorted(ref.newest), dtype=object)
    np.testing.assert_array_equal(rw.ready(names), [ref.ready(s) for s in names])
    assert rw.n_ready == sum(ref.ready(s) for s in names)
    x, origin = rw.windows(names)
    np.testing.assert_array_equal(x, np.stack([ref.window(s) for s in names]))
    np.testing.assert_array_equal(origin, [ref.phase[s] + ref.newest[s] * rw.config.cadence_s for s in names])
    for j in range(rw.config.n_sensors):
        np.testing.assert_array_equal(rw.latest(names, j), [ref.raw(s, ref.newest[s], j) for s in names])
    back = rng.integers(0, rw.capacity, len(names))
    slots = np.array([ref.newest[s] for s in names]) - back
    ts = rw.slot_time(names, slots) + rng.integers(-HOUR // 3, HOUR // 3, len(names))
    np.testing.assert_array_equal(
        rw.value_at(names, ts, 0), [ref.raw(s, int(sl), 0) for s, sl in zip(names, slots, strict=True)]
    )


CONFIGS = [
    WindowConfig(lookback=16, n_sensors=3, cadence_s=HOUR, required=(0, 2)),
    WindowConfig(
        lookback=10,
        n_sensors=3,
        cadence_s=HOUR,
        lateness_steps=5,
        max_fill_steps=1,
        required=(2,),
        capacity=12,
    ),
    WindowConfig(lookback=8, n_sensors=3, cadence_s=HOUR, lateness_steps=0, max_fill_steps=4),
]


@pytest.mark.parametrize("batch", [1, 5, 97, 0])  # 0: the whole stream in one batch
@pytest.mark.parametrize("seed,cfg_i", [(0, 0), (1, 1), (2, 2), (3, 0)])
def test_matches_naive_reference(seed: int, cfg_i: int, batch: int) -> None:
    cfg = CONFIGS[cfg_i]
    st, ts, vals = random_stream(seed)
    rw, ref = RollingWindows(cfg), NaiveWindows(cfg)
    rng = np.random.default_rng(seed + 100)
    batch = batch or len(ts)
    totals = np.zeros(3, dtype=np.int64)
    for k, i in enumerate(range(0, len(ts), batch)):
        sl = slice(i, i + batch)
        got, want = rw.add(st[sl], ts[sl], vals[sl]), ref.add(st[sl], ts[sl], vals[sl])
        np.testing.assert_array_equal(got.outcome, want["outcome"])
        assert (got.accepted, got.duplicate, got.late) == tuple(np.bincount(want["outcome"], minlength=3))
        assert set(got.advanced) == want["advanced"] and len(got.advanced) == len(want["advanced"])
        assert got.not_ready == want["not_ready"]
        assert got.gaps_filled == want["gaps_filled"]
        totals += np.bincount(got.outcome, minlength=3)
        if k % 37 == 0:
            compare_state(rw, ref, rng)
    compare_state(rw, ref, rng)
    if batch < len(ts):
        assert totals.min() > 0  # the stream exercised accepted, duplicate and late readings
    else:
        assert totals[Outcome.LATE] == 0  # one batch is applied in slot order: nothing can be late
    assert rw.ready(np.array(sorted(ref.newest), dtype=object)).any()


def test_out_of_order_within_batch_same_as_in_order() -> None:
    cfg = CONFIGS[0]
    rng = np.random.default_rng(7)
    n = 40
    slots = np.r_[np.arange(0, 20), np.arange(22, 42)]  # one short gap
    ts = T0 + slots * HOUR
    vals = rng.normal(size=(n, 3))
    st = np.array(["a"] * n, dtype=object)
    a, b = RollingWindows(cfg), RollingWindows(cfg)
    first = a.add(st, ts, vals)
    perm = np.r_[0, 1 + rng.permutation(n - 1)]  # the same first reading, so the same grid phase
    second = b.add(st[perm], ts[perm], vals[perm])
    np.testing.assert_array_equal(first.outcome[perm], second.outcome)
    np.testing.assert_array_equal(a.windows(st[:1])[0], b.windows(st[:1])[0])
    assert (
        list(first.advanced) == list(second.advanced) == ["a"]
        and first.gaps_filled == second.gaps_filled == 2
    )


def one(rw: RollingWindows, name: str, ts: int, *vals: float) -> AddResult:
    return rw.add(np.array([name], dtype=object), np.array([ts]), np.array([vals], dtype=np.float64))


def test_phase_offset_readings_at_ten_past() -> None:
    rw = RollingWindows(WindowConfig(lookback=3, n_sensors=1, cadence_s=HOUR))
    first = T0 + 600  # :10
    for k, jitter in enumerate([0, 90, -120, 30]):
        res = one(rw, "x", first + k * HOUR + jitter, float(k))
        assert res.outcome[0] == Outcome.ACCEPTED
    s = rw.slot_of(np.array(["x"]), np.array([first + 3 * HOUR]))
    assert rw.slot_time("x", s)[0] == first + 3 * HOUR
    x, origin = rw.windows(np.array(["x"]))
    assert origin[0] == first + 3 * HOUR  # on the :10 grid, not rounded to the hour
    np.testing.assert_array_equal(x[0, :, 0], [1, 2, 3])
    assert rw.value_at(np.array(["x"]), np.array([first + HOUR + 1700]), 0)[0] == 1.0  # :38 -> the :10 slot
    assert rw.value_at(np.array(["x"]), np.array([first + HOUR + 1800]), 0)[0] == 2.0  # half way rounds up


def test_short_gap_interpolated_exactly() -> None:
    rw = RollingWindows(WindowConfig(lookback=5, n_sensors=2, cadence_s=HOUR, max_fill_steps=3))
    one(rw, "s", T0, 9.0, 0.0)
    one(rw, "s", T0 + HOUR, 10.0, 1.0)
    res = one(rw, "s", T0 + 5 * HOUR, 14.0, -3.0)  # slots 2, 3, 4 missing
    assert res.gaps_filled == 3 and list(res.advanced) == ["s"]
    x, _ = rw.windows(np.array(["s"]))
    np.testing.assert_array_equal(x[0], [[10, 1], [11, 0], [12, -1], [13, -2], [14, -3]])
    assert np.isnan(rw.value_at(np.array(["s"]), np.array([T0 + 3 * HOUR]), 0)[0])  # not an observation


def test_long_gap_not_ready_until_lookback_valid_steps() -> None:
    cfg = WindowConfig(lookback=4, n_sensors=1, cadence_s=HOUR, max_fill_steps=3)
    rw = RollingWindows(cfg)
    for k in range(4):
        one(rw, "s", T0 + k * HOUR, float(k))
    assert rw.ready(np.array(["s"]))[0]
    res = one(rw, "s", T0 + 8 * HOUR, 8.0)  # 4 missing steps > max_fill_steps
    assert res.not_ready == 1 and len(res.advanced) == 0 and res.gaps_filled == 0
    for k in range(9, 11):
        assert one(rw, "s", T0 + k * HOUR, float(k)).not_ready == 1
    res = one(rw, "s", T0 + 11 * HOUR, 11.0)  # slots 8..11: four consecutive valid steps
    assert list(res.advanced) == ["s"] and res.not_ready == 0
    x, _ = rw.windows(np.array(["s"]))
    np.testing.assert_array_equal(x[0, :, 0], [8, 9, 10, 11])


def test_nan_in_required_sensor_filled_once_bounded() -> None:
    rw = RollingWindows(WindowConfig(lookback=3, n_sensors=2, cadence_s=HOUR, required=(0,)))
    for k in range(3):
        one(rw, "s", T0 + k * HOUR, float(k), np.nan)
    assert rw.ready(np.array(["s"]))[0]  # sensor 1 is not required
    assert one(rw, "s", T0 + 3 * HOUR, np.nan, 1.0).not_ready == 1  # no right neighbour yet
    assert list(one(rw, "s", T0 + 4 * HOUR, 4.0, 1.0).advanced) == ["s"]
    x, _ = rw.windows(np.array(["s"]))
    np.testing.assert_array_equal(x[0, :, 0], [2, 3, 4])


def test_duplicate_ignored() -> None:
    rw = RollingWindows(WindowConfig(lookback=2, n_sensors=1, cadence_s=HOUR))
    one(rw, "s", T0, 1.0)
    one(rw, "s", T0 + HOUR, 2.0)
    res = one(rw, "s", T0 + HOUR + 60, 99.0)
    assert res.outcome[0] == Outcome.DUPLICATE and res.duplicate == 1 and len(res.advanced) == 0
    res = rw.add(
        np.array(["s", "s"], dtype=object), np.array([T0 + 2 * HOUR, T0 + 2 * HOUR]), np.array([[3.0], [4.0]])
    )
    np.testing.assert_array_equal(res.outcome, [Outcome.ACCEPTED, Outcome.DUPLICATE])  # first one wins
    assert rw.latest(np.array(["s"]), 0)[0] == 3.0


def test_late_reading_counted_not_inserted() -> None:
    rw = RollingWindows(
        WindowConfig(lookback=2, n_sensors=1, cadence_s=HOUR, lateness_steps=3, max_fill_steps=0)
    )
    one(rw, "s", T0, 0.0)
    one(rw, "s", T0 + 10 * HOUR, 10.0)
    res = one(rw, "s", T0 + 6 * HOUR, 6.0)  # 4 behind the newest
    assert res.outcome[0] == Outcome.LATE and (res.late, res.accepted) == (1, 0)
    assert np.isnan(rw.value_at(np.array(["s"]), np.array([T0 + 6 * HOUR]), 0)[0])
    res = one(rw, "s", T0 + 7 * HOUR, 7.0)  # 3 behind: still lands
    assert res.outcome[0] == Outcome.ACCEPTED
    assert rw.value_at(np.array(["s"]), np.array([T0 + 7 * HOUR]), 0)[0] == 7.0


def test_late_fill_within_lateness_does_not_advance() -> None:
    rw = RollingWindows(WindowConfig(lookback=4, n_sensors=1, cadence_s=HOUR, max_fill_steps=1))
    for k in (0, 1, 2, 3, 6):
        one(rw, "s", T0 + k * HOUR, float(k))
    assert not rw.ready(np.array(["s"]))[0]  # slots 4, 5 missing: longer than max_fill_steps
    res = one(rw, "s", T0 + 4 * HOUR, 40.0)  # a late fill makes the gap short and the window ready...
    assert res.outcome[0] == Outcome.ACCEPTED and res.gaps_filled == 1
    assert (
        len(res.advanced) == 0 and res.not_ready == 0
    )  # ...but the newest slot did not move: no re-forecast
    assert rw.ready(np.array(["s"]))[0]
    x, _ = rw.windows(np.array(["s"]))
    np.testing.assert_array_equal(x[0, :, 0], [3, 40, 23, 6])
    res = one(rw, "s", T0 + 5 * HOUR, 5.0)  # the real reading replaces the interpolation
    assert res.outcome[0] == Outcome.ACCEPTED and res.gaps_filled == 0
    np.testing.assert_array_equal(rw.windows(np.array(["s"]))[0][0, :, 0], [3, 40, 5, 6])


def test_buffer_growth_with_many_new_stations() -> None:
    rw = RollingWindows(WindowConfig(lookback=3, n_sensors=2, cadence_s=HOUR, initial_stations=2))
    names = np.array([f"n{i}" for i in range(1500)], dtype=object)
    number = np.arange(1500, dtype=np.float64)
    for k in range(3):
        for chunk in np.array_split(np.arange(1500), 7):  # new stations keep arriving in the first pass
            rw.add(
                names[chunk],
                np.full(len(chunk), T0 + k * HOUR),
                np.stack([number[chunk], np.full(len(chunk), k)], 1),
            )
    assert rw.n_stations == 1500 and len(np.unique(rw.station_index(names))) == 1500
    assert rw.ready(names).all()
    x, _ = rw.windows(names)
    np.testing.assert_array_equal(x[:, :, 0], np.repeat(number[:, None], 3, 1))
    np.testing.assert_array_equal(x[:, :, 1], np.tile([0, 1, 2], (1500, 1)))


def test_drop_and_rebuild_from_history() -> None:
    cfg = CONFIGS[0]
    st, ts, vals = random_stream(11, n_stations=3, n_slots=120)
    perm = np.random.default_rng(3).permutation(len(ts))
    in_order = perm[np.argsort(ts[perm], kind="stable")]
    live = RollingWindows(cfg)
    live.add(st[in_order], ts[in_order], vals[in_order])
    other = RollingWindows(cfg)
    other.add(st[:50], ts[:50], vals[:50])  # some stale state that the rebuild must replace
    other.rebuild(st[perm], ts[perm], vals[perm])
    names = np.array(["st0", "st1", "st2"], dtype=object)
    np.testing.assert_array_equal(live.windows(names)[0], other.windows(names)[0])
    np.testing.assert_array_equal(live.ready(names), other.ready(names))
    rows = other.station_index(names)
    assert other.drop(names[:2]) == 2 and other.n_stations == 1
    assert not other.ready(names[:2]).any() and np.isnan(other.latest(names[:2], 0)).all()
    one(other, "new", T0, 1.0, 2.0, 3.0)
    assert other.station_index(np.array(["new"]))[0] in rows[:2]  # a freed row is reused
    with pytest.raises(KeyError):
        other.windows(names[:1])


def test_unknown_and_registered_stations() -> None:
    rw = RollingWindows(WindowConfig(lookback=1, n_sensors=1, cadence_s=HOUR))
    row = rw.station_index(np.array(["reg"]))[0]  # registered before any reading
    assert not rw.ready(np.array(["reg", "nope"])).any() and np.isnan(rw.latest(np.array(["nope"]), 0)[0])
    with pytest.raises(KeyError):
        rw.windows(np.array(["reg"]))
    res = one(rw, "reg", T0 + 50 * 60, 5.0)  # :50 readings, lookback 1: ready at once
    assert list(res.advanced) == ["reg"] and rw.station_index(np.array(["reg"]))[0] == row
    assert rw.windows(np.array(["reg"]))[1][0] == T0 + 50 * 60
    with pytest.raises(ValueError):
        rw.add(np.array([None], dtype=object), np.array([T0]), np.ones((1, 1)))


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        WindowConfig(lookback=10, n_sensors=2, cadence_s=HOUR, capacity=11)
    with pytest.raises(ValueError):
        WindowConfig(lookback=10, n_sensors=2, cadence_s=HOUR, required=(2,))
    assert WindowConfig(lookback=240, n_sensors=6, cadence_s=HOUR).ring_length == 248


def test_ten_thousand_stations_memory() -> None:
    cfg = WindowConfig(lookback=240, n_sensors=6, cadence_s=HOUR)
    rw = RollingWindows(cfg)
    names = np.array([f"w{i}" for i in range(10_000)], dtype=object)
    rw.add(names, np.full(10_000, T0), np.ones((10_000, 6)))
    rows = 16_384  # 64 doubled until 10,000 fit
    per_row = cfg.ring_length * (6 * 4 + 1) + 4 * 8 + 1 + 8  # ring, held flags, 4 int64 per row, started, id
    assert rw.n_stations == 10_000 and rw.memory_bytes() == rows * per_row
    print(
        f"\n10,000 stations: memory_bytes={rw.memory_bytes() / 2**20:.1f} MiB "
        f"({per_row} B per allocated row, ring {cfg.ring_length} x 6 float32 + held flags)"
    )


def test_throughput_1000_stations_x_100_readings() -> None:
    cfg = WindowConfig(lookback=240, n_sensors=6, cadence_s=HOUR)
    rng = np.random.default_rng(5)
    names = np.array([f"t{i}" for i in range(1000)], dtype=object)
    st = np.repeat(names[None, :], 100, 0).ravel()
    ts = (T0 + np.arange(100)[:, None] * HOUR + rng.integers(0, 600, (1, 1000))).ravel()
    vals = rng.normal(size=(100_000, 6))
    for batch in (1000, 10_000, 100_000):
        rw = RollingWindows(cfg)
        perm = np.concatenate(
            [i + rng.permutation(min(batch, 100_000 - i)) for i in range(0, 100_000, batch)]
        )
        t = time.perf_counter()
        for i in range(0, 100_000, batch):
            p = perm[i : i + batch]
            rw.add(st[p], ts[p], vals[p])
        dt = time.perf_counter() - t
        t = time.perf_counter()
        rw.windows(names)
        dw = time.perf_counter() - t
        print(
            f"\nadd(): batch {batch:>6}: {100_000 / dt:,.0f} readings/s; "
            f"windows(1000 stations) {dw * 1e3:.1f} ms"
        )
        assert rw.n_stations == 1000 and not rw.ready(names).any()  # 100 steps < lookback 240
