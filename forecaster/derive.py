"""Sensors computed from others when a file lacks them: dew point and relative humidity (Magnus formula).

Many networks export only one of the two; the models use both, and either follows from the other with
the air temperature, so a file need only carry what cannot be computed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecaster.schema import SENSOR_RANGES

# Magnus coefficients over water (Alduchov and Eskridge 1996): a few hundredths of a degree from -40 to 50 °C.
MAGNUS_A = 17.625
MAGNUS_B = 243.04

# sensor -> the sensors it can be computed from
DERIVABLE: dict[str, tuple[str, ...]] = {"Tdew": ("T", "rh"), "rh": ("T", "Tdew")}


def _in_range(name: str, values: np.ndarray) -> np.ndarray:
    lo, hi = SENSOR_RANGES[name]
    return np.where((values >= lo) & (values <= hi), values, np.nan)


def dew_point(t: np.ndarray, rh: np.ndarray) -> np.ndarray:
    """Dew point (°C) from temperature (°C) and relative humidity (%); NaN where an input is missing or impossible."""
    t, rh = _in_range("T", t), _in_range("rh", rh)
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = np.log(np.clip(rh, 0.0, 100.0) / 100.0) + MAGNUS_A * t / (MAGNUS_B + t)
        out = MAGNUS_B * gamma / (MAGNUS_A - gamma)
    return np.where(np.isfinite(out), out, np.nan)


def relative_humidity(t: np.ndarray, tdew: np.ndarray) -> np.ndarray:
    """Relative humidity (%) from temperature and dew point (°C), capped at 100."""
    t, tdew = _in_range("T", t), _in_range("Tdew", tdew)
    with np.errstate(over="ignore", invalid="ignore"):
        out = 100.0 * np.exp(MAGNUS_A * tdew / (MAGNUS_B + tdew) - MAGNUS_A * t / (MAGNUS_B + t))
    return np.where(np.isfinite(out), np.minimum(out, 100.0), np.nan)


_FORMULAS = {"Tdew": dew_point, "rh": relative_humidity}


def derive_missing(frame: pd.DataFrame) -> dict[str, str]:
    """Add every derivable sensor ``frame`` lacks, in place; returns sensor -> how it was derived."""
    derived = {}
    for name, inputs in DERIVABLE.items():
        if name not in frame and all(i in frame for i in inputs):
            frame[name] = _FORMULAS[name](*(frame[i].to_numpy(dtype=np.float64) for i in inputs))
            derived[name] = f"from {' and '.join(inputs)} (Magnus)"
    return derived
