"""Supervised samples (lookback window -> future targets) by index arithmetic, never materialized.

A sample is named by its origin row ``t``: the model sees rows ``t - lookback + step, ..., t`` (every
``step``-th row) and predicts the target at ``t + h`` for each horizon ``h``. A batch is one gather
``X[origins[:, None] + offsets]``, so memory stays at one copy of the series however many windows exist.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from forecaster.clean import StationSeries

TIME_FEATURES = ("tod_sin", "tod_cos", "doy_sin", "doy_cos")


@dataclass(frozen=True)
class WindowSpec:
    lookback: int  # rows of history, at the series cadence
    horizons: tuple[int, ...] = (24,)  # rows ahead of the origin
    step: int = 1  # sampling step inside the lookback

    def __post_init__(self) -> None:
        if self.lookback < 1 or self.step < 1 or self.lookback % self.step:
            raise ValueError(f"lookback ({self.lookback}) must be a positive multiple of step ({self.step})")
        if not self.horizons or min(self.horizons) < 1:
            raise ValueError(f"horizons must be positive steps ahead, got {self.horizons}")

    @property
    def input_offsets(self) -> np.ndarray:
        return np.arange(-self.lookback + self.step, 1, self.step, dtype=np.int64)

    @property
    def n_inputs(self) -> int:
        return self.lookback // self.step

    @property
    def max_horizon(self) -> int:
        return max(self.horizons)


def time_encodings(times: pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    """Time of day and day of year as points on circles, so 23:00 sits next to 00:00."""
    ns = np.asarray(times, dtype="datetime64[ns]")
    day = (ns - ns.astype("datetime64[D]")) / np.timedelta64(1, "D")
    year_start = ns.astype("datetime64[Y]")
    doy = (ns - year_start) / np.timedelta64(1, "D") / 365.2425
    tau = 2 * np.pi
    return np.stack(
        [np.sin(tau * day), np.cos(tau * day), np.sin(tau * doy), np.cos(tau * doy)], axis=1
    ).astype(np.float32)


@dataclass(frozen=True)
class Normalizer:
    """Per-feature mean/std from the training span only; it travels in the model card."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, values: np.ndarray, features: Sequence[str]) -> Normalizer:
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
        if np.isnan(mean).any():
            missing = [f for f, m in zip(features, mean, strict=True) if np.isnan(m)]
            raise ValueError(f"no training values for features {missing}")
        std = np.where(std < 1e-6, 1.0, std)
        return cls(tuple(features), tuple(map(float, mean)), tuple(map(float, std)))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(np.float32)

    def scale_of(self, feature: str) -> tuple[float, float]:
        i = self.features.index(feature)
        return self.mean[i], self.std[i]

    def to_dict(self) -> dict:
        return {"features": list(self.features), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        return cls(tuple(d["features"]), tuple(map(float, d["mean"])), tuple(map(float, d["std"])))


def model_inputs(
    values: np.ndarray, times: pd.DatetimeIndex | np.ndarray, normalizer: Normalizer, time_features: bool
) -> np.ndarray:
    """Normalized sensor columns, plus time encodings when the model was trained with them."""
    x = normalizer.transform(values)
    if time_features:
        x = np.concatenate([x, time_encodings(times)], axis=1)
    return x


def valid_origins(
    segment: np.ndarray, spec: WindowSpec, start: int = 0, stop: int | None = None, min_history: int = 0
) -> np.ndarray:
    """Origins whose whole window and every target lie in one valid segment inside ``[start, stop)``.

    ``min_history`` asks for at least that many valid rows up to the origin even when the lookback is
    shorter (the diurnal baseline reads the value a day before each target)."""
    stop = len(segment) if stop is None else stop
    history = max(spec.lookback, min_history)
    t = np.arange(max(start + history - 1, 0), stop - spec.max_horizon, dtype=np.int64)
    if t.size == 0:
        return t
    first = segment[t - history + 1]
    last = segment[t + spec.max_horizon]
    return t[(first >= 0) & (first == last)]


class Windows:
    """Samples of one or more series for a model: holds normalized inputs and targets as tensors."""

    def __init__(self, inputs: np.ndarray, target: np.ndarray, origins: np.ndarray, spec: WindowSpec):
        self.spec = spec
        self.inputs = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        self.target = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))
        self.origins = torch.from_numpy(origins.astype(np.int64))
        self._in_off = torch.from_numpy(spec.input_offsets)
        self._out_off = torch.tensor(spec.horizons, dtype=torch.int64)

    @classmethod
    def concat(cls, parts: Sequence[Windows]) -> Windows:
        """Join several stations' samples; origins are shifted so no window crosses a station boundary."""
        spec = parts[0].spec
        shifts = np.cumsum([0] + [len(p.inputs) for p in parts[:-1]])
        return cls(
            torch.cat([p.inputs for p in parts]).numpy(),
            torch.cat([p.target for p in parts]).numpy(),
            np.concatenate([p.origins.numpy() + s for p, s in zip(parts, shifts, strict=True)]),
            spec,
        )

    def __len__(self) -> int:
        return len(self.origins)

    def to(self, device: torch.device | str) -> Windows:
        for name in ("inputs", "target", "origins", "_in_off", "_out_off"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @property
    def n_features(self) -> int:
        return self.inputs.shape[1]

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``[B, n_inputs, F]`` and targets ``[B, H]`` for sample indices ``idx``."""
        t = self.origins[idx]
        x = self.inputs[t[:, None] + self._in_off]
        y = self.target[t[:, None] + self._out_off]
        return x, y

    def last_target(self, idx: torch.Tensor) -> torch.Tensor:
        return self.target[self.origins[idx]]

    def target_at(self, idx: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Targets ``[B, len(offsets)]`` at rows ``origin + offset`` (offsets <= 0: already observed)."""
        return self.target[self.origins[idx][:, None] + offsets.to(self.origins.device)]

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None, limit: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        order = (
            torch.randperm(n, generator=generator).to(self.origins.device)
            if shuffle
            else torch.arange(n, device=self.origins.device)
        )
        if limit is not None:
            order = order[: limit * batch_size]
        for i in range(0, len(order), batch_size):
            yield self.batch(order[i : i + batch_size])

    def n_batches(self, batch_size: int, limit: int | None = None) -> int:
        n = -(-len(self) // batch_size)
        return n if limit is None else min(n, limit)


def windows_for(
    series: StationSeries,
    features: Sequence[str],
    target: str,
    spec: WindowSpec,
    normalizer: Normalizer,
    time_features: bool,
    rows: slice = slice(None),
    history_start: int = 0,
    min_history: int = 0,
) -> Windows:
    """Samples whose origins and targets lie in ``rows`` of ``series``.

    The lookback may reach before ``rows`` (past inputs are known at forecast time, as in the book's
    validation generator) but never before ``history_start``, the first row the station had.
    """
    if target not in features:
        raise ValueError(f"target {target!r} must be one of the input features {list(features)}")
    values = series.values(list(features))
    inputs = np.nan_to_num(model_inputs(values, series.times, normalizer, time_features))
    mean, std = normalizer.scale_of(target)
    y = np.nan_to_num((series.frame[target].to_numpy(np.float32) - mean) / std)
    start, stop, _ = rows.indices(len(values))
    origins = valid_origins(series.segments(list(features)), spec, history_start, stop, min_history)
    origins = origins[origins >= start]
    return Windows(inputs, y, origins, spec)
