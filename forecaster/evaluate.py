"""Errors in degrees, per horizon, always next to the persistence forecast they must beat."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from forecaster.train import _autocast
from forecaster.windows import Normalizer, Windows


@dataclass
class Predictions:
    """Forecasts for every sample of a split, in degrees. ``pred``: [N, H, Q]; ``actual``: [N, H]."""

    origins: np.ndarray
    pred: np.ndarray
    actual: np.ndarray
    persistence: np.ndarray  # [N]: the last observed value at each origin
    median_index: int

    @property
    def point(self) -> np.ndarray:
        return self.pred[..., self.median_index]


@torch.no_grad()
def predict_windows(
    model: nn.Module, windows: Windows, normalizer: Normalizer, target: str, batch_size: int = 2048
) -> Predictions:
    model.eval()
    device = next(model.parameters(), windows.inputs).device
    windows = windows.to(device)
    mean, std = normalizer.scale_of(target)
    preds, ys, lasts = [], [], []
    for start in range(0, len(windows), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(windows)), device=device)
        x, y = windows.batch(idx)
        with _autocast(device):
            out = model(x)
        preds.append(out.float().cpu())
        ys.append(y.cpu())
        lasts.append(windows.last_target(idx).cpu())
    denorm = lambda t: torch.cat(t).numpy() * std + mean  # noqa: E731
    return Predictions(
        origins=windows.origins.cpu().numpy(),
        pred=denorm(preds),
        actual=denorm(ys),
        persistence=denorm(lasts),
        median_index=model.cfg.median_index,
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
    if p.pred.shape[-1] > 1:
        lo, hi = p.pred[..., 0], p.pred[..., -1]
        out["band_coverage"] = float(((p.actual >= lo) & (p.actual <= hi)).mean())
    return out


def evaluate(
    model: nn.Module, windows: Windows, normalizer: Normalizer, target: str, horizons: tuple[int, ...]
) -> dict:
    return score(predict_windows(model, windows, normalizer, target), horizons)
