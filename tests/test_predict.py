"""The serving path (raw windows -> Predictor) gives the same forecasts as the training/evaluation path, the
card's band calibration included."""

from __future__ import annotations

import numpy as np
import torch

from forecaster.artifact import load_artifact
from forecaster.clean import load_stations
from forecaster.data import nycflights_weather_path
from forecaster.dataset import make_splits
from forecaster.evaluate import predict_windows
from forecaster.predict import Predictor
from pipeline.pretrained import shipped_artifact


def test_predictor_matches_evaluation_path():
    model, card = load_artifact(shipped_artifact("global"))
    series = load_stations(nycflights_weather_path(), stations=["JFK"])[0]
    splits = make_splits([series], card.data, normalizer=card.normalizer)
    ref = predict_windows(model, splits.test, card.normalizer, card.data.target, band=card.calibration)
    pick = np.arange(0, len(ref.origins), 97)[:40]
    origins = ref.origins[pick]
    raw = series.values(list(card.data.features))
    rows = origins[:, None] + np.arange(-card.data.lookback + 1, 1)[None, :]
    windows = raw[rows]
    assert not np.isnan(windows).any()
    origin_ts = series.times[origins].to_numpy().astype("datetime64[s]").astype(np.int64)
    torch.manual_seed(0)
    fc = Predictor(model, card, device="cpu").predict(windows, origin_ts)
    assert fc.values.shape == (len(pick), len(card.data.horizons), 3)
    np.testing.assert_allclose(fc.values, ref.pred[pick], atol=1e-4)
    assert (fc.values[..., 0] <= fc.values[..., 2] + 1e-6).mean() > 0.95  # P10 below P90
