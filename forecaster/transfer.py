"""Transfer learning: move a global model to a station with little history.

The Conv1D front-end learned local weather patterns (fronts, daily cycles) that hold at any station,
so it stays frozen; the station gets its own normalization, and the GRU and head adapt to its climate
at a lower learning rate. Comparing against the same architecture trained from scratch on the same few
days shows what the shared representation is worth.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from torch import nn

from forecaster.artifact import ModelCard
from forecaster.clean import StationSeries
from forecaster.dataset import Ranges, fit_normalizer
from forecaster.experiment import Trained, fit
from forecaster.models import frontend_parameters
from forecaster.train import TrainConfig


def finetune(
    base: nn.Module,
    base_card: ModelCard,
    station: StationSeries,
    ranges: Ranges,
    train_cfg: TrainConfig = TrainConfig(lr=2e-4, epochs=30, patience=5),
    freeze_frontend: bool = True,
    refit_normalization: bool = True,
    label: str = "finetuned",
    plot_dir: str | Path | None = None,
    parent: str | None = None,
) -> Trained:
    """Fine-tune a copy of ``base`` on ``station``'s training rows; ``base`` itself is untouched."""
    model = copy.deepcopy(base).cpu()
    for p in model.parameters():
        p.requires_grad_(True)
    if freeze_frontend:
        for p in frontend_parameters(model):
            p.requires_grad_(False)
    data = base_card.data
    normalizer = fit_normalizer([station], data, [ranges]) if refit_normalization else base_card.normalizer
    return fit(
        [station], data, base_card.model, train_cfg, label=label, plot_dir=plot_dir, ranges=[ranges],
        normalizer=normalizer, model=model, parent=parent,
    )


def few_shot_ranges(series: StationSeries, history_steps: int, val_fraction: float = 0.2,
                    test_fraction: float = 0.2) -> Ranges:
    """The last ``test_fraction`` of a record for testing, and only the ``history_steps`` rows right
    before it for training and validation: the first training window starts at the first of those rows."""
    n = len(series.frame)
    test_start = int(round(n * (1 - test_fraction)))
    n_val = int(round(history_steps * val_fraction))
    train_start = max(test_start - history_steps, 0)
    return slice(train_start, test_start - n_val), slice(test_start - n_val, test_start), slice(test_start, n)


def scratch_baseline(station: StationSeries, base_card: ModelCard, ranges: Ranges, train_cfg: TrainConfig,
                     label: str = "scratch", plot_dir: str | Path | None = None) -> Trained:
    """The same architecture trained from random weights on the same few rows."""
    return fit([station], base_card.data, base_card.model, replace(train_cfg), label=label, plot_dir=plot_dir,
               ranges=[ranges])


def compare(base: nn.Module, base_card: ModelCard, stations: Sequence[StationSeries], history_steps: int,
            finetune_cfg: TrainConfig, scratch_cfg: TrainConfig) -> list[dict]:
    rows = []
    for s in stations:
        r = few_shot_ranges(s, history_steps)
        ft = finetune(base, base_card, s, r, finetune_cfg, label=f"{s.station} finetuned")
        sc = scratch_baseline(s, base_card, r, scratch_cfg, label=f"{s.station} scratch")
        rows.append({
            "station": s.station, "persistence_mae": ft.test["persistence_mae"],
            "scratch_mae": sc.test["mae"], "finetuned_mae": ft.test["mae"], "test_samples": ft.test["samples"],
        })
    return rows
