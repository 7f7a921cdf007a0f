"""Serving-side inference: raw sensor windows in, forecasts in degrees out, many stations per call."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from forecaster.artifact import ModelCard
from forecaster.device import autocast, resolve_device
from forecaster.windows import time_encodings


@dataclass
class Forecast:
    values: np.ndarray  # [B, H, Q] degrees
    horizons: tuple[int, ...]  # steps ahead
    quantiles: tuple[float, ...]  # () for a point forecast
    median_index: int

    @property
    def point(self) -> np.ndarray:
        return self.values[..., self.median_index]


class Predictor:
    """A loaded model ready for batched inference on the GPU when there is one."""

    # CPU: stations per forward pass. Bigger chunks spill the front-end's activations out of cache; smaller ones pay
    # the GRU's per-step overhead more often (docs/forecast_batch.md measures 32 to 1,000).
    max_chunk = 128

    def __init__(self, model: nn.Module, card: ModelCard, device: str = "auto"):
        self.card = card
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.features = list(card.data.features)
        self.lookback = card.data.lookback
        self._mean = np.asarray(card.normalizer.mean, np.float32)
        self._std = np.asarray(card.normalizer.std, np.float32)
        self._rows = np.asarray(card.data.spec.input_offsets + card.data.lookback - 1)
        self._all_rows = np.array_equal(self._rows, np.arange(card.data.lookback))  # step 1: no gather needed
        self._n_time = time_encodings(np.zeros(1, dtype="datetime64[s]")).shape[-1]
        self._offsets_s = card.data.spec.input_offsets.astype(np.int64) * card.cadence_s
        t_mean, t_std = card.normalizer.scale_of(card.data.target)
        self._t_mean, self._t_std = np.float32(t_mean), np.float32(t_std)

    @torch.inference_mode()
    def predict(self, values: np.ndarray, origin_ts: np.ndarray) -> Forecast:
        """``values``: [B, lookback, len(features)] raw sensor values in card order, oldest first;
        ``origin_ts``: [B] epoch seconds of the newest row."""
        if values.ndim != 3 or values.shape[1:] != (self.lookback, len(self.features)):
            raise ValueError(f"expected windows [B, {self.lookback}, {len(self.features)}], got {values.shape}")
        if self.device.type == "cpu" and len(values) > self.max_chunk:
            parts = [self.predict(values[i : i + self.max_chunk], origin_ts[i : i + self.max_chunk])
                     for i in range(0, len(values), self.max_chunk)]
            return replace(parts[0], values=np.concatenate([p.values for p in parts]))
        n_feat = len(self.features)
        n_time = self._n_time if self.card.data.time_features else 0
        x = np.empty((len(values), len(self._rows), n_feat + n_time), dtype=np.float32)  # one buffer, no concat
        np.subtract(values if self._all_rows else values[:, self._rows, :], self._mean, out=x[..., :n_feat])
        np.divide(x[..., :n_feat], self._std, out=x[..., :n_feat])
        if n_time:
            # Time features depend on the origin only, and the stations of a live tick share one.
            uniq, inv = np.unique(origin_ts.astype(np.int64), return_inverse=True)
            ts = uniq[:, None] + self._offsets_s[None, :]
            x[..., n_feat:] = time_encodings(ts.reshape(-1).astype("datetime64[s]")).reshape(*ts.shape, -1)[inv]
        xt = torch.from_numpy(x)
        if self.device.type == "cuda":
            xt = xt.pin_memory().to(self.device, non_blocking=True)
        with autocast(self.device):
            out = self.model(xt)
        pred = out.float().cpu().numpy() * self._t_std + self._t_mean
        cfg = self.card.model
        if self.card.calibration is not None:
            pred = self.card.calibration.apply(pred, cfg.median_index)
        return Forecast(pred, cfg.horizons, cfg.quantiles, cfg.median_index)
