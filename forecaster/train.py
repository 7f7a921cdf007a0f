"""The training loop: MAE (or pinball) loss, early stopping on validation, best weights restored.

Readable in one sitting on purpose; everything model-specific lives in :mod:`forecaster.models`.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from forecaster.device import autocast, resolve_device
from forecaster.evaluate import diurnal_offsets
from forecaster.models import Ensemble, is_trainable
from forecaster.windows import Windows


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "rmsprop"  # as in the book; "adam" as an option
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 20
    steps_per_epoch: int | None = None  # None: one full pass over the training samples
    val_steps: int | None = None  # None: the whole validation split
    patience: int = 4  # epochs without validation improvement before stopping
    grad_clip: float | None = 1.0
    schedule: str = "constant"  # constant | cosine (linear warm-up, then cosine decay to 0 over all epochs)
    warmup: float = 0.02  # fraction of the cosine schedule's steps spent warming up
    ema: float | None = None  # decay of an exponential moving average of the weights, validated and kept instead
    input_noise: float = 0.0  # std of Gaussian noise added to the normalized inputs while training
    horizon_weighting: str = "none"  # none | baseline: each horizon's loss over its better naive baseline's MAE
    loss: str = "mae"  # mae | mse: what a point forecast trains on (validation and early stopping always use MAE)
    restore_best: bool = True  # False: no early stopping, keep the last weights (a refit whose validation is seen)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # epoch, train_loss, val_loss, seconds
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False

    @property
    def seconds_per_epoch(self) -> float:
        """One pass over the training data; for an ensemble, one pass of every member (their means added)."""
        members = sorted({h.get("member", 0) for h in self.history})
        return float(sum(np.mean([h["seconds"] for h in self.history if h.get("member", 0) == m]) for m in members))


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def forecast_loss(pred: torch.Tensor, y: torch.Tensor, quantiles: tuple[float, ...],
                  weights: torch.Tensor | None = None, point: str = "mae") -> torch.Tensor:
    """MAE (or, with ``point="mse"``, squared error) for a point forecast; pinball loss averaged over quantiles
    otherwise. ``pred``: [B, H, Q]; ``weights``: [H], mean 1, or None for equal horizons."""
    if not quantiles:
        if point not in ("mae", "mse"):
            raise ValueError(f"unknown loss {point!r}: use mae or mse")
        err = pred[..., 0] - y
        loss = err.abs() if point == "mae" else err.square()
    else:
        q = torch.tensor(quantiles, device=pred.device, dtype=pred.dtype)
        diff = y[..., None] - pred
        loss = torch.maximum(q * diff, (q - 1) * diff).mean(-1)
    return (loss * weights).mean() if weights is not None else loss.mean()


def baseline_weights(windows: Windows, season: int | None, sample: int = 50_000) -> torch.Tensor:
    """Per-horizon weights 1 / min(persistence MAE, diurnal MAE) on the training windows, scaled to mean 1: the loss
    becomes the model's error relative to the better naive forecast at each horizon, the skill the product reports.
    With equal weights a +10 min error of 0.1 °C is invisible beside a +24 h one of 2 °C, and the model may lose to
    the last reading at the shortest horizons."""
    origins = windows.origins[:: max(1, len(windows) // sample)]
    horizons = torch.tensor(windows.spec.horizons, dtype=torch.int64, device=origins.device)
    target = windows.target.to(origins.device)
    actual = target[origins[:, None] + horizons]
    err = (actual - target[origins][:, None]).abs().nanmean(0)
    if season:
        back = torch.from_numpy(diurnal_offsets(windows.spec.horizons, season)).to(origins.device)
        ok = origins[:, None] + back >= 0
        day_before = target[(origins[:, None] + back).clamp(min=0)]
        diurnal = torch.where(ok, (actual - day_before).abs(), torch.nan).nanmean(0)
        err = torch.fmin(err, diurnal)
    w = 1.0 / err.clamp(min=1e-3)
    return (w / w.mean()).float()


def _weights(model: nn.Module, windows: Windows, cfg: TrainConfig) -> torch.Tensor | None:
    if cfg.horizon_weighting == "none":
        return None
    if cfg.horizon_weighting != "baseline":
        raise ValueError(f"unknown horizon weighting {cfg.horizon_weighting!r}: use none or baseline")
    return baseline_weights(windows, getattr(model.cfg, "season", None))


@torch.no_grad()
def evaluate_loss(model: nn.Module, windows: Windows, batch_size: int, limit: int | None = None,
                  weights: torch.Tensor | None = None) -> float:
    model.eval()
    device = windows.inputs.device
    total, count = 0.0, 0
    quantiles = model.cfg.quantiles
    for x, y in windows.batches(batch_size, limit=limit):
        with autocast(device):
            pred = model(x)
        total += float(forecast_loss(pred.float(), y, quantiles, weights)) * len(x)
        count += len(x)
    return total / max(count, 1)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}: use rmsprop or adam")


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate factor; cosine lets long schedules settle instead of bouncing at a fixed rate."""
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    if cfg.schedule != "cosine":
        raise ValueError(f"unknown schedule {cfg.schedule!r}: use constant or cosine")
    warm = max(1, int(cfg.warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train(
    model: nn.Module, train_w: Windows, val_w: Windows, cfg: TrainConfig = TrainConfig(), label: str = "train"
) -> TrainResult:
    """Fit ``model`` in place; on return it holds the weights of its best validation epoch."""
    if isinstance(model, Ensemble):
        return _train_members(model, train_w, val_w, cfg, label)
    generator = seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model.to(device)
    train_w, val_w = train_w.to(device), val_w.to(device)
    quantiles = model.cfg.quantiles
    result = TrainResult()
    if not is_trainable(model):  # baselines: one validation pass, nothing to fit
        result.best_val_loss = evaluate_loss(model, val_w, cfg.batch_size * 4, cfg.val_steps)
        return result

    opt = _optimizer(model, cfg)
    weights = _weights(model, train_w, cfg)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema)) if cfg.ema else None
    scored = ema.module if ema is not None else model  # the weights validated and kept
    best_state = copy.deepcopy(scored.state_dict())
    n_batches = train_w.n_batches(cfg.batch_size, cfg.steps_per_epoch)
    sched = _scheduler(opt, cfg, n_batches * cfg.epochs)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        start = time.perf_counter()
        running, seen = 0.0, 0
        bar = tqdm(
            train_w.batches(cfg.batch_size, shuffle=True, generator=generator, limit=cfg.steps_per_epoch),
            total=n_batches, desc=f"{label} epoch {epoch}/{cfg.epochs}", disable=None if cfg.progress else True,
            leave=False, dynamic_ncols=True,
        )
        for x, y in bar:
            if cfg.input_noise:
                x = x + cfg.input_noise * torch.randn_like(x)
            with autocast(device):
                pred = model(x)
            loss = forecast_loss(pred.float(), y, quantiles, weights, cfg.loss)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{label}: training loss became {float(loss)} at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            running += float(loss.detach()) * len(x)
            seen += len(x)
            bar.set_postfix(loss=f"{running / seen:.4f}", refresh=False)  # redrawn at tqdm's pace, not per batch
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - start
        val_loss = evaluate_loss(scored, val_w, cfg.batch_size * 4, cfg.val_steps, weights)
        result.history.append(
            {"epoch": epoch, "train_loss": running / max(seen, 1), "val_loss": val_loss, "seconds": train_seconds}
        )
        improved = val_loss < result.best_val_loss
        if improved:
            result.best_val_loss, result.best_epoch = val_loss, epoch
            best_state = copy.deepcopy(scored.state_dict())
        if cfg.progress:
            tqdm.write(
                f"{label} epoch {epoch:>3}: train {running / max(seen, 1):.4f}  val {val_loss:.4f}"
                f"  {train_seconds:.1f}s{'  *' if improved else ''}"
            )
        if cfg.restore_best and epoch - result.best_epoch >= cfg.patience:
            result.stopped_early = True
            break
    model.load_state_dict(best_state if cfg.restore_best else scored.state_dict())
    return result


def _train_members(model: Ensemble, train_w: Windows, val_w: Windows, cfg: TrainConfig, label: str) -> TrainResult:
    """Each member trained on its own (seed ``cfg.seed + i``: its own batch order), early-stopped on its own
    validation loss: members trained through their mean would learn to cancel each other's errors instead of
    making independent ones. The history holds every member's epochs, each marked with its ``member``."""
    n = len(model.members)
    results = [train(m, train_w, val_w, replace(cfg, seed=cfg.seed + i), label=f"{label} member {i + 1}/{n}")
               for i, m in enumerate(model.members)]
    return TrainResult(
        history=[{**h, "member": i} for i, r in enumerate(results) for h in r.history],
        best_epoch=max(r.best_epoch for r in results),
        best_val_loss=evaluate_loss(model, val_w.to(resolve_device(cfg.device)), cfg.batch_size * 4, cfg.val_steps,
                                    _weights(model, train_w, cfg)),
        stopped_early=all(r.stopped_early for r in results),
    )
