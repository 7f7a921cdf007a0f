"""Windowing by index arithmetic against a naive per-sample reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from forecaster.clean import StationSeries
from forecaster.windows import Normalizer, Windows, WindowSpec, time_encodings, valid_origins, windows_for


def naive_samples(data: np.ndarray, seg: np.ndarray, lookback: int, step: int, horizons, start: int, stop: int):
    """The book's generator, one sample at a time."""
    out = []
    for t in range(len(data)):
        if t < start or t - lookback + 1 < 0 or t + max(horizons) >= stop:
            continue
        rows = list(range(t - lookback + 1, t + max(horizons) + 1))
        if any(seg[r] < 0 or seg[r] != seg[t] for r in rows):
            continue
        x = data[[t - lookback + step + k * step for k in range(lookback // step)]]
        y = np.array([data[t + h, 1] for h in horizons])
        out.append((t, x, y))
    return out


@pytest.mark.parametrize("lookback,step,horizons", [(12, 1, (1,)), (12, 3, (2, 5)), (24, 6, (1, 6, 12))])
def test_windows_match_naive_reference(lookback, step, horizons):
    rng = np.random.default_rng(0)
    n = 400
    data = rng.normal(size=(n, 3)).astype(np.float32)
    valid = rng.random(n) > 0.03
    valid[100:110] = False
    seg = np.where(valid, np.cumsum(np.r_[True, valid[1:] & ~valid[:-1]] & valid) - 1, -1)
    spec = WindowSpec(lookback, horizons, step)
    w = Windows(data, data[:, 1], valid_origins(seg, spec, 0, 300), spec)
    ref = naive_samples(data, seg, lookback, step, horizons, 0, 300)
    assert [r[0] for r in ref] == w.origins.tolist()
    x, y = w.batch(torch.arange(len(w)))
    assert x.shape == (len(ref), lookback // step, 3)
    np.testing.assert_array_equal(x.numpy(), np.stack([r[1] for r in ref]))
    np.testing.assert_array_equal(y.numpy(), np.stack([r[2] for r in ref]))


def test_windows_for_respects_split_and_history_start():
    times = pd.date_range("2020", periods=200, freq="h")
    frame = pd.DataFrame({"T": np.arange(200.0), "p": np.ones(200)}, index=times)
    s = StationSeries("x", pd.Timedelta("1h"), frame)
    norm = Normalizer.fit(frame.to_numpy(), ["T", "p"])
    spec = WindowSpec(10, (5,))
    w = windows_for(s, ["T", "p"], "T", spec, norm, False, rows=slice(100, 150), history_start=95)
    assert w.origins.min() == 104 and w.origins.max() == 144  # lookback from row 95, target before 150
    w2 = windows_for(s, ["T", "p"], "T", spec, norm, True, rows=slice(100, 150))
    assert w2.origins.min() == 100 and w2.n_features == 6


def test_no_window_materialized():
    spec = WindowSpec(240, (24,))
    data = np.zeros((10_000, 6), np.float32)
    w = Windows(data, data[:, 0], valid_origins(np.zeros(10_000, np.int64), spec), spec)
    assert w.inputs.numel() == data.size  # one copy of the series, however many windows


def test_time_encodings_are_circular():
    enc = time_encodings(pd.DatetimeIndex(["2021-01-01 00:00", "2021-01-01 23:59:59", "2021-07-02 12:00"]))
    assert enc.shape == (3, 4)
    np.testing.assert_allclose(enc[0, :2], enc[1, :2], atol=1e-3)
    assert enc[2, 1] == pytest.approx(-1, abs=1e-3)  # noon
    assert enc[2, 3] == pytest.approx(-1, abs=1e-2)  # mid-year


def test_normalizer_roundtrip_and_missing_feature():
    x = np.array([[1.0, np.nan], [3.0, np.nan]])
    with pytest.raises(ValueError, match="no training values"):
        Normalizer.fit(x, ["a", "b"])
    n = Normalizer.fit(np.array([[1.0, 5], [3.0, 5]]), ["a", "b"])
    assert Normalizer.from_dict(n.to_dict()) == n
    assert n.std[1] == 1.0  # constant feature keeps scale 1
