"""PNG figures people would rather look at than tables: learning curves and forecast vs actual."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

try:
    import matplotlib
except ModuleNotFoundError as exc:  # the service's install has no plotting (pyproject extras)
    raise ModuleNotFoundError("figures need matplotlib, which the service's install leaves out: "
                              "pip install 'stationcast[train]'", name="matplotlib") from exc

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from forecaster.evaluate import Predictions  # noqa: E402


def slug(label: str) -> str:
    """A file-name-safe version of a model label: ``Conv1D+GRU (6.49)`` -> ``conv1d_gru_6_49``."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "model"


def learning_curve(history: Sequence[dict], path: str | Path, title: str, scale: float = 1.0, unit: str = "°C",
                   loss: str = "mae") -> Path:
    """Training vs validation loss per epoch, like the figures in the book. With ``loss="mse"`` the training curve
    is its root (RMSE, in the unit), beside the validation MAE that early stopping reads. An ensemble's history
    (entries marked with their ``member``) draws one pair of curves per member, in one colour each."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    members = sorted({h.get("member", 0) for h in history})
    for m in members:
        rows = [h for h in history if h.get("member", 0) == m]
        epochs = [h["epoch"] for h in rows]
        several = len(members) > 1
        each = f" ({len(members)} members, one colour each)" if several else ""
        colour = f"C{m % 10}" if several else None
        train = [(h["train_loss"] ** 0.5 if loss == "mse" else h["train_loss"]) * scale for h in rows]
        ax.plot(epochs, train, "o-", color=colour, ms=4 if several else 6,
                label=None if m else ("training RMSE (its loss)" if loss == "mse" else "training MAE") + each)
        ax.plot(epochs, [h["val_loss"] * scale for h in rows], "s--" if several else "s-", color=colour,
                ms=4 if several else 6, label=None if m else "validation MAE" + each)
    ax.set(xlabel="epoch", ylabel=f"{'RMSE / MAE' if loss == 'mse' else 'MAE'} ({unit})", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def forecast_vs_actual(
    p: Predictions, times: pd.DatetimeIndex, horizons: Sequence[int], horizon: int, path: str | Path,
    title: str, start: int = 0, length: int = 24 * 14, quantiles: Sequence[float] = (),
) -> Path:
    """The forecast made ``horizon`` steps ahead for each target time, with its quantile band."""
    i = list(horizons).index(horizon)
    target_rows = p.origins + horizon
    sel = slice(start, start + length)
    t = times[target_rows[sel]]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.plot(t, p.actual[sel, i], color="black", lw=1.3, label="actual")
    ax.plot(t, p.persistence[sel], color="tab:gray", lw=1, ls="--", label=f"persistence (T {horizon} steps earlier)")
    ax.plot(t, p.point[sel, i], color="tab:blue", lw=1.3, label=f"forecast +{horizon} steps")
    if p.pred.shape[-1] > 1:
        band = f"P{round(quantiles[0] * 100)}–P{round(quantiles[-1] * 100)}" if quantiles else "band"
        ax.fill_between(t, p.pred[sel, i, 0], p.pred[sel, i, -1], color="tab:blue", alpha=0.2, label=band)
    ax.set(ylabel="temperature (°C)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    return _save(fig, path)


def mae_by_horizon(scores: dict[str, dict], path: str | Path, title: str) -> Path:
    """MAE per horizon for several models (each a ``score()`` result) against persistence."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    first = next(iter(scores.values()))
    hs = sorted(first["by_horizon"])
    ax.plot(hs, [first["by_horizon"][h]["persistence_mae"] for h in hs], "k--", label="persistence")
    for name, s in scores.items():
        ax.plot(hs, [s["by_horizon"][h]["mae"] for h in hs], "o-", ms=3, label=name)
    ax.set(xlabel="horizon (steps ahead)", ylabel="MAE (°C)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def bars(labels: Sequence[str], groups: dict[str, Sequence[float]], path: str | Path, title: str, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    x = np.arange(len(labels))
    width = 0.8 / max(len(groups), 1)
    for k, (name, values) in enumerate(groups.items()):
        ax.bar(x + k * width - 0.4 + width / 2, values, width, label=name)
    ax.set_xticks(x, labels)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
