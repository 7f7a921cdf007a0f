"""The forecasting models, all with one interface: ``[B, L, F]`` normalized inputs -> ``[B, H, Q]``.

``H`` is the number of horizons and ``Q`` the number of quantiles (1 for a point forecast). Outputs
are in normalized target units; :mod:`forecaster.predict` turns them into degrees.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class ConvLayer:
    channels: int = 32
    kernel: int = 5
    pool: int = 3  # max-pool size after the layer; 1 = none
    stride: int = 1


@dataclass(frozen=True)
class MixedIn:
    """``count`` members of another architecture in a model of several (``stationcast train --mix``): ``kind`` with
    ``gru_hidden`` units, every other setting (inputs, head, dropout) the main architecture's. Members that differ
    in architecture can make less correlated errors than seeds of one, so their mean can gain more."""

    kind: str
    gru_hidden: int = 32
    count: int = 1

    def __str__(self) -> str:
        return f"{self.kind}:{self.gru_hidden}x{self.count}"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture; stored in the model card so an artifact rebuilds exactly."""

    kind: str  # persistence | seasonal | conv | gru | conv_gru
    n_features: int
    target_index: int
    horizons: tuple[int, ...] = (24,)
    quantiles: tuple[float, ...] = ()  # () = point forecast trained with MAE
    conv: tuple[ConvLayer, ...] | None = None  # None: Listing 6.47's stack for conv, 6.49's front-end for conv_gru
    gru_hidden: int = 32
    gru_layers: int = 1
    dropout: float = 0.0
    residual: bool = False  # predict the change from the last observed target (persistence + delta)
    season: int = 24  # steps per day, for the seasonal baseline
    # What the output is relative to: "none" (old cards without residual), "last" (= residual), or "both":
    # per horizon, last + sigmoid(a_h) * (diurnal_h - last) + delta_h, diurnal_h the value a day before the target.
    anchor: str | None = None  # None: follows ``residual`` (old cards)
    relative: tuple[int, ...] = ()  # input columns given as deviations from their window mean (level removed)
    band_offsets: bool = False  # quantiles as softplus offsets around the median: bands never cross
    # Input steps per front-end step: a linear Conv1D (kernel = stride = adapter, no activation) first maps this
    # many fine readings to one coarse step of the same width, e.g. 6 ten-minute readings to the hourly step a
    # transferred hourly front-end expects. 1: none (every hourly card).
    adapter: int = 1
    # The last ``recent`` readings of the target, as differences from the last one, go straight to the head beside
    # the recurrent features: the fine detail (the last minutes' trend) that the front-end's pooling blurs and that
    # the shortest horizons live on. 0: none.
    recent: int = 0
    # Input columns (sin, cos) of the time of day to read relative to the window's own diurnal cycle of the target
    # (:func:`phase_relative`): the same encoding for a station on local time and one on UTC. (): as they are.
    phase: tuple[int, ...] = ()
    # Scale each window by its own spread (:func:`window_scale`): ``relative`` inputs and the recent readings are
    # divided by it and the head's output (median correction and band widths) multiplied by it, so a calm, maritime
    # station's corrections and bands are as much smaller as its weather varies less. False: one scale for all.
    scale: bool = False
    # Copies of the architecture trained apart (seed, seed + 1, ...) and served as one model, the mean of their
    # forecasts: their errors are partly independent, so the mean is more accurate than a typical member at
    # ``members`` times the compute. 1: a single model.
    members: int = 1
    # Members of other architectures after those ``members`` copies, trained and served the same way. (): none.
    mix: tuple[MixedIn, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; choose from {', '.join(MODEL_KINDS)}")
        if self.anchor is None:
            object.__setattr__(self, "anchor", "last" if self.residual else "none")
        if self.anchor not in ANCHORS:
            raise ValueError(f"unknown anchor {self.anchor!r}; choose from {', '.join(ANCHORS)}")
        object.__setattr__(self, "residual", self.anchor != "none")
        if any(not 0 <= i < self.n_features for i in self.relative):
            raise ValueError(f"relative input columns {self.relative} outside the {self.n_features} inputs")
        if self.phase and (len(self.phase) != 2 or any(not 0 <= i < self.n_features for i in self.phase)):
            raise ValueError(f"phase must name the (sin, cos) time-of-day input columns, got {self.phase}")
        if self.scale and not self.relative:
            raise ValueError("scale needs relative input columns (the level is removed before the spread is)")
        if self.recent < 0:
            raise ValueError(f"recent must be >= 0 readings, got {self.recent}")
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        if self.members > 1 and self.kind in ("persistence", "seasonal"):
            raise ValueError(f"a {self.kind} baseline has nothing to train: members must be 1")
        if self.adapter < 1:
            raise ValueError(f"adapter must be >= 1 input steps per front-end step, got {self.adapter}")
        for m in self.mix:
            if m.kind not in TRAINED_KINDS or self.kind not in TRAINED_KINDS:
                raise ValueError(f"a mixed-in member must be a trained model next to another (conv, gru or "
                                 f"conv_gru with a trained main architecture), got {m.kind} next to {self.kind}")
            if m.count < 1 or m.gru_hidden < 1:
                raise ValueError(f"a mixed-in member needs count >= 1 and gru_hidden >= 1, got {m}")
            if m.kind == "gru" and self.adapter > 1:
                raise ValueError("a plain GRU member has no cadence adapter: a model mixing one in cannot be "
                                 "transferred to a finer cadence")
        if any(not 0 < q < 1 for q in self.quantiles):
            raise ValueError(f"quantiles must lie in (0, 1), got {self.quantiles}")
        if self.conv is None:
            default = LISTING_6_47 if self.kind == "conv" else LISTING_6_49
            object.__setattr__(self, "conv", default if self.kind in ("conv", "conv_gru") else ())

    @property
    def summary(self) -> str:
        """The architecture in a few characters for logs and status: ``conv_gru``, ``conv_gru x5``,
        ``conv_gru x3 + gru:32x3``."""
        main = self.kind + (f" x{self.members}" if self.members > 1 else "")
        return " + ".join([main, *map(str, self.mix)])

    @property
    def n_members(self) -> int:
        return self.members + sum(m.count for m in self.mix)

    def member_configs(self) -> list[ModelConfig]:
        """One single-model config per member, in training order (seed ``seed + i`` for the i-th): the ``members``
        copies first, then each mixed-in architecture (with the main front-end where its kind has one)."""
        one = replace(self, members=1, mix=())
        out = [one] * self.members
        for m in self.mix:
            conv = (self.conv or None) if m.kind != "gru" else None  # None: the kind's default front-end
            out += [replace(one, kind=m.kind, gru_hidden=m.gru_hidden, conv=conv)] * m.count
        return out

    def min_input_length(self) -> int:
        """The shortest input sequence the model can take: the convolution stack's, and a day for the diurnal
        anchor (1 for recurrent-only models); a model of several, its most demanding member's."""
        if self.mix:
            return max(c.min_input_length() for c in self.member_configs())
        if self.anchor == "both":
            return max(self.season, self._stack_length())
        return self._stack_length()

    def _stack_length(self) -> int:
        if self.kind not in ("conv", "conv_gru"):
            return max(1, self.season * math.ceil(max(self.horizons) / self.season) - max(self.horizons) + 1) \
                if self.kind == "seasonal" else 1
        n = 1
        for layer in reversed(self.conv):
            n = (n * layer.pool - 1) * layer.stride + layer.kernel
        return n * self.adapter

    @property
    def n_outputs(self) -> int:
        return max(1, len(self.quantiles))

    @property
    def median_index(self) -> int:
        """Which output is the point forecast: the quantile nearest 0.5."""
        if not self.quantiles:
            return 0
        return min(range(len(self.quantiles)), key=lambda i: abs(self.quantiles[i] - 0.5))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["horizons"] = list(self.horizons)
        d["quantiles"] = list(self.quantiles)
        d["relative"] = list(self.relative)
        d["phase"] = list(self.phase)
        d["mix"] = [asdict(m) for m in self.mix]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["conv"] = tuple(ConvLayer(**c) for c in d.get("conv", ()))
        d["horizons"] = tuple(d["horizons"])
        d["quantiles"] = tuple(d.get("quantiles", ()))
        d["relative"] = tuple(d.get("relative", ()))
        d["phase"] = tuple(d.get("phase", ()))
        d["mix"] = tuple(MixedIn(**m) for m in d.get("mix", ()))
        return cls(**d)


ANCHORS = ("none", "last", "both")
TRAINED_KINDS = ("conv", "gru", "conv_gru")  # the kinds with weights: what a model of several may mix


LISTING_6_47 = (ConvLayer(32, 5, 3), ConvLayer(32, 5, 3), ConvLayer(32, 5, 1))
LISTING_6_49 = (ConvLayer(32, 5, 3), ConvLayer(32, 5, 1))


class Persistence(nn.Module):
    """The "common-sense" baseline: every future value equals the last observed one."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = x[:, -1, self.cfg.target_index]
        return last[:, None, None].expand(-1, len(self.cfg.horizons), self.cfg.n_outputs)


class Seasonal(nn.Module):
    """Same time yesterday: the value one season (24 h) before each target time."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        back = [h - cfg.season * math.ceil(h / cfg.season) for h in cfg.horizons]  # <= 0 steps from the origin
        self.register_buffer("index", torch.tensor(back, dtype=torch.int64) - 1, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if -int(self.index.min()) > x.shape[1]:
            raise ValueError(f"seasonal baseline needs at least {-int(self.index.min())} input steps")
        vals = x[:, self.index + x.shape[1], self.cfg.target_index]
        return vals[:, :, None].expand(-1, -1, self.cfg.n_outputs)


def _adapter(cfg: ModelConfig) -> nn.Module:
    """The linear strided Conv1D that turns ``adapter`` fine steps into one coarse step, initialized to their
    mean per channel: an untrained adapter hands the front-end the coarse-cadence series it was trained on."""
    if cfg.adapter == 1:
        return nn.Identity()
    conv = nn.Conv1d(cfg.n_features, cfg.n_features, cfg.adapter, stride=cfg.adapter)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[range(cfg.n_features), range(cfg.n_features), :] = 1.0 / cfg.adapter
        conv.bias.zero_()
    return conv


def _aligned(x: torch.Tensor, adapter: int) -> torch.Tensor:
    """``[B, F, L]`` trimmed at the start to whole adapter blocks, so the last block ends at the origin."""
    extra = x.shape[-1] % adapter
    return x[..., extra:] if extra else x


def _conv_stack(cfg: ModelConfig) -> tuple[nn.Sequential, int]:
    """Conv1D -> max-pool -> ReLU per layer: the book's conv -> ReLU -> pool, with the same output (a max commutes
    with a non-decreasing function) from a ReLU over the pooled third or half of the values (docs/forecast_batch.md)."""
    layers: list[nn.Module] = []
    c_in = cfg.n_features
    for layer in cfg.conv:
        layers.append(nn.Conv1d(c_in, layer.channels, layer.kernel, stride=layer.stride))
        if layer.pool > 1:
            layers.append(nn.MaxPool1d(layer.pool))
        layers.append(nn.ReLU())
        c_in = layer.channels
    return nn.Sequential(*layers), c_in


class _Forecaster(nn.Module):
    """Shared head: a linear layer to ``H * Q`` outputs, relative to the anchor the config names.

    With ``anchor="both"`` the median starts from a learned per-horizon mix of the last value and the value a
    day before the target (the two baselines), so the network only has to learn the correction: on a station
    it has never seen it starts no worse than a blend of the baselines it must beat. ``relative`` inputs lose
    their window mean first, so an unseen climate's level looks like a familiar one.
    """

    def __init__(self, cfg: ModelConfig, width: int):
        super().__init__()
        self.cfg = cfg
        self.head = nn.Linear(width + cfg.recent, len(cfg.horizons) * cfg.n_outputs)
        if cfg.anchor == "both":
            h = torch.tensor(cfg.horizons, dtype=torch.float32)
            back = torch.tensor(cfg.horizons, dtype=torch.int64)
            back = back - torch.ceil(back / cfg.season).long() * cfg.season  # <= 0: already observed
            self.register_buffer("day_index", back - 1, persistent=False)
            # Start near the better baseline: persistence for short horizons, the day-ago value near +24 h.
            self.mix = nn.Parameter(torch.logit((h / cfg.season).clamp(0.05, 0.95)))
        if cfg.relative:
            self.register_buffer("rel_mask", torch.zeros(cfg.n_features), persistent=False)
            self.rel_mask[list(cfg.relative)] = 1.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        last = x[:, -1, cfg.target_index, None]
        z = phase_relative(x, cfg.target_index, *cfg.phase) if cfg.phase else x
        z = z - z.mean(dim=1, keepdim=True) * self.rel_mask if cfg.relative else z
        spread = window_scale(x, cfg.target_index) if cfg.scale else None
        if spread is not None:
            z = z / (1 + (spread[:, :, None] - 1) * self.rel_mask)
        feats = self.features(z)
        if cfg.recent:
            recent = x[:, -cfg.recent - 1 : -1, cfg.target_index] - last
            feats = torch.cat([feats, recent / spread if spread is not None else recent], dim=1)
        out = self.head(feats).view(x.shape[0], len(cfg.horizons), cfg.n_outputs)
        if cfg.band_offsets and cfg.n_outputs > 1:
            out = _offsets_to_quantiles(out, cfg.median_index)
        if spread is not None:
            out = out * spread[:, :, None]
        if cfg.anchor == "both":
            day = x[:, self.day_index + x.shape[1], cfg.target_index]
            anchor = last + torch.sigmoid(self.mix) * (day - last)
            out = out + anchor[:, :, None]
        elif cfg.anchor == "last":
            out = out + last[:, :, None]
        return out


def window_scale(x: torch.Tensor, target: int, floor: float = 0.05) -> torch.Tensor:
    """[B, 1]: the standard deviation of the target over each window, in normalized units (``floor``: a stuck
    sensor's flat window must not blow the corrections up). One global normalizer makes a 2 °C correction mean the
    same everywhere; in how much the weather moves, a continental station's 2 °C is a maritime one's 1 °C."""
    return x[..., target].std(dim=1, keepdim=True).clamp_min(floor)


def phase_relative(x: torch.Tensor, target: int, sin: int, cos: int) -> torch.Tensor:
    """``x`` [B, L, F] with its time-of-day columns rotated so that angle 0 is the warmest hour of the window's
    mean day (the phase of the target's first diurnal harmonic over the window). A clock's time of day means a
    different solar hour at every longitude and time zone (NOAA's records are in UTC, Jena's in local time); the
    hour since the window's own warmest one means the same everywhere."""
    t = x[..., target] - x[..., target].mean(dim=1, keepdim=True)
    s, c = x[..., sin], x[..., cos]
    a, b = (t * c).mean(dim=1, keepdim=True), (t * s).mean(dim=1, keepdim=True)  # t ~ cos(wt - p): (a, b) ~ p
    r = torch.sqrt(a * a + b * b).clamp_min(1e-6)
    cp, sp = a / r, b / r
    out = x.clone()
    out[..., sin] = s * cp - c * sp
    out[..., cos] = c * cp + s * sp
    return out


def _offsets_to_quantiles(raw: torch.Tensor, median: int) -> torch.Tensor:
    """Outputs below the median become ``median - cumulative softplus``, above it ``median + ...``."""
    mid = raw[..., median : median + 1]
    below = nn.functional.softplus(raw[..., :median]).flip(-1).cumsum(-1).flip(-1)
    above = nn.functional.softplus(raw[..., median + 1 :]).cumsum(-1)
    return torch.cat([mid - below, mid, mid + above], dim=-1)


class ConvNet(_Forecaster):
    """Listing 6.47: stacked Conv1D/MaxPool, global max pool, dense. Order-blind beyond its kernels."""

    def __init__(self, cfg: ModelConfig):
        stack_width = cfg.conv[-1].channels if cfg.conv else cfg.n_features
        super().__init__(cfg, stack_width)
        self.adapter = _adapter(cfg)
        self.stack, _ = _conv_stack(cfg)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        z = self.adapter(_aligned(x.transpose(1, 2), self.cfg.adapter))
        return self.stack(z).amax(dim=2)


class GRUNet(_Forecaster):
    """GRU over the full sequence; its last hidden state feeds the head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, cfg.gru_hidden)
        self.gru = nn.GRU(
            cfg.n_features, cfg.gru_hidden, num_layers=cfg.gru_layers, batch_first=True,
            dropout=cfg.dropout if cfg.gru_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(cfg.dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(x)
        return self.drop(h[-1])


class ConvGRU(_Forecaster):
    """Listing 6.49: a Conv1D front-end shortens the sequence, then a GRU reads it in order."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, cfg.gru_hidden)
        self.adapter = _adapter(cfg)
        self.frontend, width = _conv_stack(cfg)
        self.gru = nn.GRU(
            width, cfg.gru_hidden, num_layers=cfg.gru_layers, batch_first=True,
            dropout=cfg.dropout if cfg.gru_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(cfg.dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        z = self.adapter(_aligned(x.transpose(1, 2), self.cfg.adapter))
        z = self.frontend(z).transpose(1, 2)
        _, h = self.gru(z)
        return self.drop(h[-1])


MODEL_KINDS: dict[str, type[nn.Module]] = {
    "persistence": Persistence,
    "seasonal": Seasonal,
    "conv": ConvNet,
    "gru": GRUNet,
    "conv_gru": ConvGRU,
}


class Ensemble(nn.Module):
    """``cfg.members`` models of one architecture (and any mixed in), served as one: the mean of their outputs (per
    quantile for a band). :func:`forecaster.train.train` trains each member on its own, with its own seed."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(MODEL_KINDS[c.kind](c) for c in cfg.member_configs())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def build_model(cfg: ModelConfig) -> nn.Module:
    return Ensemble(cfg) if cfg.n_members > 1 else MODEL_KINDS[cfg.kind](cfg)


def single_models(model: nn.Module) -> list[nn.Module]:
    """The single models inside ``model``: its members, or itself."""
    return list(model.members) if isinstance(model, Ensemble) else [model]


def is_trainable(model: nn.Module) -> bool:
    return any(p.requires_grad for p in model.parameters())


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def frontend_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The Conv1D front-end's weights (the cadence adapter included; every member's): what transfer learning keeps
    frozen."""
    out = []
    for m in single_models(model):
        stack = getattr(m, "frontend", None) or getattr(m, "stack", None)
        adapter = getattr(m, "adapter", None)
        out += [*(adapter.parameters() if adapter is not None else ()),
                *(stack.parameters() if stack is not None else ())]
    return out


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The output layer's weights (every member's)."""
    return [p for m in single_models(model) for p in m.head.parameters()]
