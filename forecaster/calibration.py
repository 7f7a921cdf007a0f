"""Offline band calibration: per-horizon shifts of the lowest and highest quantile so the band covers what it says.

Pinball loss alone gives a P10-P90 band that covers anywhere from 74 to 84 % of actuals on new stations. After
training, each tail is shifted on the validation span by the conformal quantile of its own errors (an asymmetric
form of conformalized quantile regression, Romano et al. 2019): the lower edge so that a fraction ``q_lo`` of
validation actuals fall below it, the upper edge so that ``1 - q_hi`` fall above. The shifts, in target units,
travel in the model card and are applied wherever forecasts leave the model (:mod:`forecaster.predict` and
:func:`forecaster.evaluate.predict_windows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_WINDOWS = 50  # fewer validation windows than this per horizon: no adjustment (too noisy to trust)


@dataclass(frozen=True)
class BandCalibration:
    """Per-horizon additive shifts (degrees) of the band's lower and upper edge."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    windows: int  # validation windows they were computed from

    def to_dict(self) -> dict:
        return {"lower": list(self.lower), "upper": list(self.upper), "windows": self.windows}

    @classmethod
    def from_dict(cls, d: dict | None) -> BandCalibration | None:
        if not d:
            return None
        return cls(tuple(map(float, d["lower"])), tuple(map(float, d["upper"])), int(d["windows"]))

    def apply(self, values: np.ndarray, median_index: int) -> np.ndarray:
        """``values`` [B, H, Q] with the band's edges first and last: shifted copy, edges never past the median."""
        out = np.array(values, dtype=np.float32, copy=True)
        med = out[..., median_index]
        out[..., 0] = np.minimum(out[..., 0] + np.asarray(self.lower, np.float32), med)
        out[..., -1] = np.maximum(out[..., -1] + np.asarray(self.upper, np.float32), med)
        return out


def conformal_quantile(scores: np.ndarray, level: float) -> np.ndarray:
    """Per column, the finite-sample conformal ``level`` quantile of ``scores`` [N, H]: the ceil((n+1) level)-th
    smallest, so that a new exchangeable score falls at or below it with probability at least ``level``."""
    n = scores.shape[0]
    k = min(max(int(np.ceil((n + 1) * level)), 1), n)
    return np.sort(scores, axis=0)[k - 1]


def calibrate(pred: np.ndarray, actual: np.ndarray, quantiles: tuple[float, ...]) -> BandCalibration | None:
    """Shifts that make the outermost quantiles of ``pred`` [N, H, Q] hit their nominal levels on ``actual`` [N, H].

    Lower edge: the ``q_lo`` conformal quantile of ``actual - lower`` (how far below the edge the low tail
    really reaches); upper edge likewise with ``actual - upper`` at ``q_hi``. None without a band or enough data.
    """
    if len(quantiles) < 2 or len(actual) < MIN_WINDOWS:
        return None
    q_lo, q_hi = quantiles[0], quantiles[-1]
    below = actual - pred[..., 0]
    above = actual - pred[..., -1]
    # The lower edge must sit at or under all but q_lo of the actuals: -(1 - q_lo) quantile of -(actual - lower).
    lower = -conformal_quantile(-below, 1 - q_lo)
    upper = conformal_quantile(above, q_hi)
    return BandCalibration(tuple(map(float, lower)), tuple(map(float, upper)), int(len(actual)))


def coverage(pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per horizon, the fraction of ``actual`` [N, H] inside ``[pred[..., 0], pred[..., -1]]`` (inclusive)."""
    inside = (actual >= pred[..., 0]) & (actual <= pred[..., -1])
    return inside.mean(axis=0)
