"""Errors in degrees, per horizon, always next to the baselines they must beat: persistence (the last
observed value) and diurnal persistence (the value a day before the target)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from forecaster.calibration import BandCalibration
from forecaster.device import autocast
from forecaster.windows import Normalizer, Windows


@dataclass
class Predictions:
    """Forecasts for every sample of a split, in degrees. ``pred``: [N, H, Q]; ``actual``: [N, H]."""

    origins: np.ndarray
    pred: np.ndarray
    actual: np.ndarray
    persistence: np.ndarray  # [N]: the last observed value at each origin
    median_index: int
    diurnal: np.ndarray | None = None  # [N, H]: the value one day before each target (see diurnal_offsets)

    @property
    def point(self) -> np.ndarray:
        return self.pred[..., self.median_index]


def steps_per_day(cadence_s: float) -> int | None:
    """Rows in a day at this cadence; None when a day is not a whole number of steps."""
    n = 86400 / cadence_s
    return int(n) if n >= 1 and n == int(n) else None


def diurnal_offsets(horizons: tuple[int, ...], season: int) -> np.ndarray:
    """Row offsets from the origin of the diurnal baseline: the target time minus 24 h (minus whole days
    until the reading is already observed at the origin, for horizons beyond a day)."""
    h = np.asarray(horizons, dtype=np.int64)
    return h - np.ceil(h / season).astype(np.int64) * season


@torch.no_grad()
def predict_windows(
    model: nn.Module, windows: Windows, normalizer: Normalizer, target: str, batch_size: int = 2048,
    season: int | None = None, band: BandCalibration | None = None,
) -> Predictions:
    """Forecasts on every window; with ``season`` (rows per day) the diurnal baseline too. The windows must
    then hold a day of history before each origin (``windows_for(min_history=season)``). ``band``: the card's
    calibration, applied as :class:`forecaster.predict.Predictor` applies it."""
    model.eval()
    device = next(model.parameters(), windows.inputs).device
    windows = windows.to(device)
    mean, std = normalizer.scale_of(target)
    offsets = torch.from_numpy(diurnal_offsets(windows.spec.horizons, season)) if season else None
    preds, ys, lasts, days = [], [], [], []
    for start in range(0, len(windows), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(windows)), device=device)
        x, y = windows.batch(idx)
        with autocast(device):
            out = model(x)
        preds.append(out.float().cpu())
        ys.append(y.cpu())
        lasts.append(windows.last_target(idx).cpu())
        if offsets is not None:
            days.append(windows.target_at(idx, offsets).cpu())
    denorm = lambda t: torch.cat(t).numpy() * std + mean  # noqa: E731
    pred = denorm(preds)
    if band is not None:
        pred = band.apply(pred, model.cfg.median_index)
    return Predictions(
        origins=windows.origins.cpu().numpy(),
        pred=pred,
        actual=denorm(ys),
        persistence=denorm(lasts),
        median_index=model.cfg.median_index,
        diurnal=denorm(days) if offsets is not None and days else None,
    )


def score(p: Predictions, horizons: tuple[int, ...]) -> dict:
    """MAE per horizon and overall for the model and for persistence; band coverage when quantiles exist."""
    err = np.abs(p.point - p.actual)
    pers = np.abs(p.persistence[:, None] - p.actual)
    out = {
        "mae": float(err.mean()),
        "persistence_mae": float(pers.mean()),
        "skill": float(1 - err.mean() / pers.mean()),
        "by_horizon": {
            int(h): {"mae": float(err[:, i].mean()), "persistence_mae": float(pers[:, i].mean())}
            for i, h in enumerate(horizons)
        },
        "samples": int(len(err)),
    }
    if p.diurnal is not None:
        day = np.abs(p.diurnal - p.actual)
        out["diurnal_mae"] = float(day.mean())
        for i, h in enumerate(horizons):
            out["by_horizon"][int(h)]["diurnal_mae"] = float(day[:, i].mean())
    if p.pred.shape[-1] > 1:
        lo, hi = p.pred[..., 0], p.pred[..., -1]
        inside = (p.actual >= lo) & (p.actual <= hi)
        out["band_coverage"] = float(inside.mean())
        for i, h in enumerate(horizons):
            out["by_horizon"][int(h)]["coverage"] = float(inside[:, i].mean())
    return out


def evaluate(
    model: nn.Module, windows: Windows, normalizer: Normalizer, target: str, horizons: tuple[int, ...]
) -> dict:
    return score(predict_windows(model, windows, normalizer, target), horizons)
