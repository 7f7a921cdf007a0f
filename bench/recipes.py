"""Data and training recipes the accuracy benchmarks share (Jena hourly, Chollet's split, T +24 h), the accuracy-floor
study's trials (which the seed table reuses by name), and how an ensemble of trained members is scored. Constants and
pure functions only: no benchmark imports another one's script for them."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from bench.common import shared_file
from forecaster.clean import StationSeries, load_stations
from forecaster.dataset import DataConfig
from forecaster.experiment import Trained
from forecaster.models import ConvLayer
from forecaster.train import TrainConfig

BOOK = DataConfig(lookback=240, horizons=(24,))  # the book's windows: 240 h in, temperature 24 h ahead
TF = replace(BOOK, time_features=True)
MULTI = replace(TF, horizons=tuple(range(1, 25)))
FRONT_BOOK = (ConvLayer(32, 5, 3), ConvLayer(32, 5, 1))  # Listing 6.49's front-end
FRONT_POOL2 = (ConvLayer(32, 5, 2), ConvLayer(32, 5, 1))
FRONT_64 = (ConvLayer(64, 5, 3), ConvLayer(64, 5, 1))
TRIAL = TrainConfig(optimizer="adam", lr=3e-4, weight_decay=1e-3, batch_size=128, epochs=8, steps_per_epoch=150,
                    patience=3)  # a short trial budget
BOOK_TRAIN = replace(TRIAL, optimizer="rmsprop", lr=1e-3, weight_decay=0.0)
HORIZON = 24
# The four NOAA stations in ../shared/data: file -> (name, hours from UTC to local standard time).
NOAA = {
    "noaa_chicago_ohare_2010_2016_hourly.csv.gz": ("Chicago O'Hare", -6),
    "noaa_denver_2010_2016_hourly.csv.gz": ("Denver", -7),
    "noaa_great_falls_2010_2016_hourly.csv.gz": ("Great Falls", -7),
    "noaa_rapid_city_2010_2016_hourly.csv.gz": ("Rapid City", -7),
}


def load_noaa(name: str, offset_h: int) -> StationSeries:
    """A NOAA station on local standard time, like Jena's records."""
    s = load_stations(shared_file(name))[0]
    s.frame.index = s.frame.index + pd.Timedelta(hours=offset_h)  # UTC -> local standard time
    return s


def column24(t: Trained, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point forecast, actual and persistence of the 24 h column for a split ('val' or 'test')."""
    p = t.test_predictions if split == "test" else t.val_predictions
    i = list(t.card.data.horizons).index(HORIZON)
    return p.point[:, i], p.actual[:, i], p.persistence


def ensemble_mae(members: list[Trained], split: str) -> float:
    """MAE of the mean 24 h point forecast of ``members``, which must have been scored on the same windows."""
    origins = [(t.test_predictions if split == "test" else t.val_predictions).origins for t in members]
    if any(not np.array_equal(o, origins[0]) for o in origins[1:]):
        raise ValueError("ensemble members were scored on different windows")
    cols = [column24(t, split) for t in members]
    point = np.mean([c[0] for c in cols], axis=0)
    return float(np.abs(point - cols[0][1]).mean())


# The accuracy-floor study (bench/accuracy_floor.py): full passes, AdamW, early stopping on validation.
FULL = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=1e-4, batch_size=128, epochs=12, patience=4, ema=0.998)
LONG = replace(FULL, weight_decay=1e-3, ema=None, epochs=20, patience=20, schedule="cosine")
CG = {"kind": "conv_gru", "conv": FRONT_POOL2, "gru_hidden": 32, "dropout": 0.3, "residual": True}
BEST = {"kind": "conv_gru", "conv": FRONT_BOOK, "gru_hidden": 64, "dropout": 0.2, "residual": True}


@dataclass(frozen=True)
class Trial:
    name: str
    group: str  # conv_gru: the seed table's Conv1D+GRU row (book inputs); best: anything
    note: str
    data: DataConfig
    arch: dict
    train: TrainConfig


def trials() -> list[Trial]:
    wd = replace(FULL, weight_decay=0.05)
    return [
        Trial("cg-long", "conv_gru", "wd 1e-3, 20 passes, cosine schedule, no weight average", BOOK, CG, LONG),
        Trial("cg-ema", "conv_gru", "weight average (EMA 0.998), wd 1e-4", BOOK, CG, FULL),
        Trial("cg-wd", "conv_gru", "EMA, weight decay 0.05", BOOK, CG, wd),
        Trial("cg-wd-noise", "conv_gru", "EMA, weight decay 0.05, input noise 0.2", BOOK, CG,
              replace(wd, input_noise=0.2)),
        Trial("best-long", "best", "wd 1e-3, 20 passes, cosine schedule, no weight average", TF, BEST, LONG),
        Trial("best-ema", "best", "weight average (EMA 0.998), wd 1e-4", TF, BEST, FULL),
        Trial("best-noise", "best", "EMA, wd 1e-4, input noise 0.2", TF, BEST, replace(FULL, input_noise=0.2)),
        Trial("best-wd", "best", "EMA, weight decay 0.05", TF, BEST, wd),
        Trial("best-wd-noise", "best", "EMA, weight decay 0.05, input noise 0.2", TF, BEST,
              replace(wd, input_noise=0.2)),
        Trial("gru-full", "best", "GRU(32) on all 240 steps, time features, residual, EMA, wd 0.05, up to 24 passes",
              TF, {"kind": "gru", "gru_hidden": 32, "dropout": 0.2, "residual": True}, replace(wd, epochs=24)),
    ]
