"""A model for a finer cadence built from a coarser one: the 10-minute model starts as the hourly one.

The hourly model's Conv1D front-end, GRU and head were learned on years of several stations; one year of
10-minute readings is little data. So the fine model is the coarse one behind a cadence adapter
(:class:`forecaster.models.ModelConfig` ``adapter``: a linear strided Conv1D that maps ``factor`` fine readings
to one coarse step, initialized to their mean), with the coarse model's front-end and GRU weights, and a head
whose rows start from the coarse horizon each fine horizon falls in. The anchor (last value, value a day before
the target) is taken at the fine cadence, so both baselines stay reachable at every fine horizon. The whole model
is then fine-tuned on the fine-cadence station (:func:`forecaster.experiment.fit`), with the coarse model's
normalization, which its layers expect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from forecaster.artifact import ModelCard
from forecaster.clean import StationSeries
from forecaster.dataset import DataConfig, Ranges
from forecaster.experiment import Trained, fit
from forecaster.models import ModelConfig, build_model, single_models
from forecaster.train import TrainConfig

TRANSFER_LAYERS = ("adapter+head", "all")


class CadenceError(ValueError):
    """A data cadence that the base model cannot be transferred to."""


def adapter_factor(base_cadence_s: int, cadence_s: int) -> int:
    """How many fine readings make one base step; a one-line error unless a whole number above 1."""
    factor = base_cadence_s / cadence_s
    if factor <= 1 or factor != int(factor):
        raise CadenceError(f"data cadence {cadence_s} s does not divide the base model's {base_cadence_s} s into "
                           "several whole steps: transfer needs a finer cadence such as 600 s from 3600 s")
    return int(factor)


def transfer_config(base: ModelCard, cadence_s: int, horizons: tuple[int, ...], lookback: int,
                    split: tuple[float, float] | None = None) -> tuple[ModelConfig, DataConfig]:
    """The fine-cadence model and data configs: the base's sensors, encodings and architecture, the adapter in
    front, a day of ``season`` at the fine cadence, ``horizons`` and ``lookback`` in fine steps, and the last
    base step's fine readings of the target handed to the head (``recent``)."""
    factor = adapter_factor(base.cadence_s, cadence_s)
    bad = sorted({c.kind for c in base.model.member_configs()} - {"conv", "conv_gru"})
    if bad:
        what = f"has {', '.join(bad)} members" if base.model.n_members > 1 else f"is {bad[0]}"
        raise CadenceError(f"transfer across cadences needs a Conv1D front-end in every member; the base model {what}")
    if base.model.adapter != 1:
        raise CadenceError("the base model already has a cadence adapter: transfer from an hourly model")
    arch = replace(base.model, horizons=tuple(horizons), season=base.model.season * factor, adapter=factor,
                   recent=factor)
    data = replace(base.data, lookback=lookback, step=1, horizons=tuple(horizons),
                   **({"split": tuple(split)} if split else {}))
    if data.spec.n_inputs < arch.min_input_length():
        raise CadenceError(f"a lookback of {lookback} steps is too short for the transferred model: it needs at least "
                           f"{arch.min_input_length()}")
    return arch, data


def transferred_model(base: nn.Module, arch: ModelConfig) -> nn.Module:
    """``arch``'s model with ``base``'s front-end and GRU weights, and head rows copied from the base horizon each
    fine horizon falls in (``ceil(h / adapter)``, the nearest the base has); an ensemble's, member by member."""
    model = build_model(arch)
    for mine, theirs in zip(single_models(model), single_models(base), strict=True):
        _carry(theirs, mine, arch)
    return model


def _carry(base: nn.Module, model: nn.Module, arch: ModelConfig) -> None:
    own = model.state_dict()
    carried = {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape
               and not k.startswith("head.") and k != "mix"}
    model.load_state_dict(carried, strict=False)
    base_h = list(base.cfg.horizons)
    q, width = arch.n_outputs, base.head.weight.shape[1]
    if base.cfg.n_outputs != q or model.head.weight.shape[1] != width + arch.recent - base.cfg.recent:
        return
    w_base, b_base = base.head.weight.view(len(base_h), q, width), base.head.bias.view(len(base_h), q)
    rows = [min(range(len(base_h)), key=lambda i: abs(base_h[i] - math.ceil(h / arch.adapter)))
            for h in arch.horizons]
    # A fine horizon shorter than one base step gets that step's correction scaled down by h / adapter: the
    # change over 10 minutes is a fraction of the change over an hour.
    scale = torch.tensor([min(1.0, h / arch.adapter) for h in arch.horizons])[:, None, None]
    with torch.no_grad():  # the recent readings' columns start at zero: the transferred model as it was
        model.head.weight.zero_()
        model.head.weight[:, :width].copy_((w_base[rows] * scale).reshape(-1, width))
        model.head.bias.copy_((b_base[rows] * scale[..., 0]).reshape(-1))


def fit_transfer(base: nn.Module, base_card: ModelCard, base_tag: str, series: Sequence[StationSeries],
                 arch: ModelConfig, data: DataConfig, train_cfg: TrainConfig, ranges: Sequence[Ranges] | None = None,
                 label: str = "model", plot_dir: str | Path | None = None, data_hash: str | None = None,
                 layers: str = "adapter+head") -> Trained:
    """The recipe, one code path for ``stationcast train --transfer-from`` and the benchmark: the transferred
    model fine-tuned on ``series`` with the base model's normalization, early-stopped on validation. ``layers``:
    what trains; "adapter+head" (the adapter, the head and its baseline mix) keeps the hourly front-end and GRU
    as they were learned on years of several stations, "all" trains everything."""
    if layers not in TRANSFER_LAYERS:
        raise ValueError(f"layers must be one of {', '.join(TRANSFER_LAYERS)}, not {layers!r}")
    model = transferred_model(base, arch)
    if layers == "adapter+head":
        for single in single_models(model):
            for name, p in single.named_parameters():
                p.requires_grad_(name.split(".")[0] in ("adapter", "head", "mix"))
    return fit(series, data, arch, train_cfg, label=label, plot_dir=plot_dir, ranges=ranges,
               normalizer=base_card.normalizer, model=model, data_hash=data_hash, parent=base_tag)
