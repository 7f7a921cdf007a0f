"""What a model is trained on: features, target, window spec, and the chronological splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from forecaster.clean import CHOLLET_FRACTIONS, StationSeries, split_by_fraction
from forecaster.windows import TIME_FEATURES, Normalizer, Windows, WindowSpec, windows_for


@dataclass(frozen=True)
class DataConfig:
    features: tuple[str, ...] = ("p", "T", "Tdew", "rh", "VPmax", "wv")
    target: str = "T"
    lookback: int = 240  # 10 days of hourly rows
    step: int = 1
    horizons: tuple[int, ...] = (24,)
    time_features: bool = False
    split: tuple[float, float] = CHOLLET_FRACTIONS  # train, validation fractions; test is the rest

    @property
    def spec(self) -> WindowSpec:
        return WindowSpec(self.lookback, self.horizons, self.step)

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.features + (TIME_FEATURES if self.time_features else ())

    @property
    def target_index(self) -> int:
        return self.features.index(self.target)

    @property
    def time_of_day_columns(self) -> tuple[int, int]:
        """The (sin, cos) time-of-day input columns (``phase`` of a phase-relative model); needs time features."""
        return self.input_names.index("tod_sin"), self.input_names.index("tod_cos")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class Splits:
    train: Windows
    val: Windows
    test: Windows
    normalizer: Normalizer
    train_span: tuple[str, str]


Ranges = tuple[slice, slice, slice]


def split_rows(series: StationSeries, cfg: DataConfig) -> Ranges:
    return split_by_fraction(len(series.frame), cfg.split)


def fit_normalizer(
    series: Sequence[StationSeries], cfg: DataConfig, ranges: Sequence[Ranges] | None = None
) -> Normalizer:
    """Statistics over the training rows of every series, never validation or test."""
    ranges = ranges or [split_rows(s, cfg) for s in series]
    parts = [s.values(list(cfg.features))[r[0]] for s, r in zip(series, ranges, strict=True)]
    return Normalizer.fit(np.concatenate(parts), cfg.features)


def check_long_enough(series: Sequence[StationSeries], cfg: DataConfig) -> None:
    """Series shorter than one window (lookback + farthest horizon) can never give a sample: when no series is
    long enough, say so plainly (a short station among long ones just contributes nothing)."""
    need = cfg.lookback + cfg.spec.max_horizon
    if not series or any(len(s.frame) >= need for s in series):
        return
    from forecaster.data import DataError

    shown = "; ".join(
        f"station {s.station!r}: {len(s.frame):,} steps at a {s.cadence} cadence"
        + (f" ({s.times[0]} to {s.times[-1]})" if len(s.frame) else "")
        for s in series[:3]
    )
    raise DataError(f"{shown}: shorter than one window of {need:,} steps (lookback {cfg.lookback} + horizon "
                    f"{cfg.spec.max_horizon})")


def make_splits(
    series: Sequence[StationSeries],
    cfg: DataConfig,
    normalizer: Normalizer | None = None,
    ranges: Sequence[Ranges] | None = None,
) -> Splits:
    """Chronological train/validation/test windows for one or several stations.

    Each station is split by ``cfg.split`` fractions unless explicit row ``ranges`` are given; samples
    of several stations are pooled per split.
    """
    check_long_enough(series, cfg)
    ranges = ranges or [split_rows(s, cfg) for s in series]
    normalizer = normalizer or fit_normalizer(series, cfg, ranges)
    out: dict[str, list[Windows]] = {"train": [], "val": [], "test": []}
    starts, ends = [], []
    for s, rows in zip(series, ranges, strict=True):
        for name, r in zip(out, rows, strict=True):
            out[name].append(
                windows_for(s, cfg.features, cfg.target, cfg.spec, normalizer, cfg.time_features, r, rows[0].start)
            )
        starts.append(s.times[rows[0].start])
        ends.append(s.times[rows[0].stop - 1])
    joined = {k: v[0] if len(v) == 1 else Windows.concat(v) for k, v in out.items()}
    for name, w in joined.items():
        if len(w) == 0:
            raise ValueError(
                f"no {name} samples: the series are too short or too gappy for a lookback of "
                f"{cfg.lookback} and horizon {cfg.spec.max_horizon} steps"
            )
    return Splits(
        joined["train"], joined["val"], joined["test"], normalizer, (str(min(starts)), str(max(ends)))
    )
