"""What another model would have forecast on the same windows: scores a model offline on the forecasts a
running service actually scored, so two models are compared on identical issue times and targets."""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecaster.artifact import ModelCard
from forecaster.clean import CleanConfig, clean_station
from forecaster.predict import Predictor


def shadow_errors(model, card: ModelCard, records: pd.DataFrame, errors: pd.DataFrame,
                  max_fill_steps: int = 3) -> np.ndarray:
    """Absolute errors ``model`` would have made on exactly the rows of ``errors`` (one station's scored
    errors: issue_ts, horizon, actual), its windows rebuilt from that station's ``records`` the way the
    service fills them (short gaps interpolated up to ``max_fill_steps``)."""
    if errors.empty:
        return np.empty(0)
    series = clean_station(records, CleanConfig(cadence=pd.Timedelta(seconds=card.cadence_s),
                                                max_fill_steps=max_fill_steps))
    values = series.values(list(card.data.features))
    grid = series.times.astype("datetime64[s]").astype(np.int64).to_numpy()
    issues = np.unique(errors["issue_ts"].to_numpy())
    rows = np.searchsorted(grid, issues)
    if (rows >= len(grid)).any() or (grid[np.minimum(rows, len(grid) - 1)] != issues).any():
        raise ValueError("some issue times are not on the station's cadence grid of these records")
    lookback = card.data.lookback
    if rows.min() < lookback - 1:
        raise ValueError("the records start too late to rebuild every window")
    windows = values[rows[:, None] + np.arange(-lookback + 1, 1)[None, :]].astype(np.float32)
    fc = Predictor(model, card, "cpu").predict(windows, issues)
    i = np.searchsorted(issues, errors["issue_ts"].to_numpy())
    j = np.searchsorted(np.asarray(fc.horizons), errors["horizon"].to_numpy())
    return np.abs(fc.point[i, j] - errors["actual"].to_numpy())
