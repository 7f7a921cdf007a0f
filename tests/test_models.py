"""Every model honours the same interface; baselines compute what they claim."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from forecaster.models import MODEL_KINDS, ConvLayer, ModelConfig, build_model, frontend_parameters, n_parameters


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
@pytest.mark.parametrize("horizons,quantiles", [((24,), ()), (tuple(range(1, 25)), (0.1, 0.5, 0.9))])
def test_output_shape(kind, horizons, quantiles):
    cfg = ModelConfig(kind, n_features=7, target_index=1, horizons=horizons, quantiles=quantiles)
    model = build_model(cfg)
    out = model(torch.randn(5, 240, 7))
    assert out.shape == (5, len(horizons), max(1, len(quantiles)))
    assert torch.isfinite(out).all()


def test_listing_6_47_and_6_49_layouts():
    conv = build_model(ModelConfig("conv", 14, 1))
    convs = [m for m in conv.stack if isinstance(m, torch.nn.Conv1d)]
    pools = [m for m in conv.stack if isinstance(m, torch.nn.MaxPool1d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [(32, 5)] * 3 and len(pools) == 2
    cg = build_model(ModelConfig("conv_gru", 14, 1, conv=(ConvLayer(32, 5, 3), ConvLayer(32, 5, 1))))
    # The front-end shortens a 480-step sequence to (480-4)//3-4 = 154 steps before the GRU.
    z = cg.frontend(torch.randn(2, 14, 480))
    assert z.shape == (2, 32, 154)
    assert cg.gru.hidden_size == 32
    assert len(frontend_parameters(cg)) == 4 and n_parameters(cg) > n_parameters(build_model(ModelConfig("gru", 14, 1)))


def test_front_end_pools_before_its_relu_with_the_books_output():
    """Pool -> ReLU is cheaper than the book's ReLU -> pool and must give the same values and gradients."""
    torch.manual_seed(0)
    cg = build_model(ModelConfig("conv_gru", 6, 1, conv=(ConvLayer(16, 5, 3), ConvLayer(16, 5, 2), ConvLayer(8, 3, 1))))
    convs = [m for m in cg.frontend if isinstance(m, torch.nn.Conv1d)]
    relu, pool = torch.nn.functional.relu, torch.nn.functional.max_pool1d
    x = torch.randn(4, 6, 240, requires_grad=True)
    z = pool(relu(convs[0](x)), 3)
    book = relu(convs[2](pool(relu(convs[1](z)), 2)))
    ours = cg.frontend(x)
    assert torch.equal(ours, book)
    (g_ours,) = torch.autograd.grad(ours.square().sum(), x)
    (g_book,) = torch.autograd.grad(book.square().sum(), x)
    assert torch.allclose(g_ours, g_book, atol=1e-6)
    # The parameters keep their names, so models saved before the reordering load unchanged.
    assert [k for k in cg.state_dict() if k.startswith("frontend.")] == [
        "frontend.0.weight", "frontend.0.bias", "frontend.3.weight", "frontend.3.bias", "frontend.6.weight",
        "frontend.6.bias"]


def test_persistence_and_seasonal_values():
    x = torch.arange(48, dtype=torch.float32).view(1, 48, 1).repeat(2, 1, 1)
    p = build_model(ModelConfig("persistence", 1, 0, horizons=(1, 24)))
    assert p(x)[0, :, 0].tolist() == [47.0, 47.0]
    s = build_model(ModelConfig("seasonal", 1, 0, horizons=(1, 6, 24, 25), season=24))
    # target t+h; same time one day earlier is t+h-24 (t+h-48 for h=25): input index 47+h-24k.
    assert s(x)[0, :, 0].tolist() == [24.0, 29.0, 47.0, 24.0]


def test_residual_adds_last_observation():
    cfg = ModelConfig("gru", 2, 0, residual=True)
    m = build_model(cfg)
    torch.nn.init.zeros_(m.head.weight)
    torch.nn.init.zeros_(m.head.bias)
    x = torch.randn(3, 10, 2)
    assert torch.allclose(m(x)[:, 0, 0], x[:, -1, 0])


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown model kind"):
        ModelConfig("lstm", 1, 0)
    with pytest.raises(ValueError, match="quantiles"):
        ModelConfig("gru", 1, 0, quantiles=(0.1, 1.5))
    cfg = ModelConfig("conv_gru", 3, 0, horizons=(1, 2), quantiles=(0.1, 0.5, 0.9))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg and cfg.median_index == 1


def _zero_head(m: torch.nn.Module) -> None:
    torch.nn.init.zeros_(m.head.weight)
    torch.nn.init.zeros_(m.head.bias)


def test_both_anchor_blends_last_value_and_day_before_target():
    cfg = ModelConfig("conv_gru", 2, 0, horizons=(1, 12, 24), anchor="both", season=24)
    assert cfg.residual and cfg.min_input_length() >= 24
    m = build_model(cfg)
    _zero_head(m)
    x = torch.randn(4, 48, 2)
    w = torch.sigmoid(m.mix)
    last = x[:, -1, 0]
    # target t+h; a day before it is input row 47 + h - 24 (h = 24: the last row itself).
    for i, h in enumerate(cfg.horizons):
        day = x[:, 47 + h - 24, 0]
        assert torch.allclose(m(x)[:, i, 0], last + w[i] * (day - last), atol=1e-6)
    assert w[0] < 0.1 < 0.9 < w[2]  # starts near persistence at +1 h and near the day-ago value at +24 h


def test_relative_inputs_remove_the_window_level():
    cfg = ModelConfig("conv_gru", 3, 0, horizons=(1, 24), quantiles=(0.1, 0.5, 0.9), anchor="both",
                      relative=(0, 1), band_offsets=True)
    m = build_model(cfg).eval()
    x = torch.randn(2, 48, 3)
    shifted = x.clone()
    shifted[..., :2] += 7.0  # a warmer, wetter climate: same weather, other level
    # The forecast moves with the level (through the anchor) and nothing else does.
    assert torch.allclose(m(shifted), m(x) + 7.0, atol=1e-4)
    out = m(torch.randn(64, 48, 3))
    assert (out[..., 0] <= out[..., 1]).all() and (out[..., 1] <= out[..., 2]).all()  # the band never crosses


def test_old_cards_without_the_new_fields_still_load():
    old = ModelConfig("conv_gru", 3, 0, residual=True).to_dict()
    for key in ("anchor", "relative", "band_offsets"):
        old.pop(key)
    cfg = ModelConfig.from_dict(old)
    assert cfg.anchor == "last" and cfg.relative == () and not cfg.band_offsets
    with pytest.raises(ValueError, match="unknown anchor"):
        ModelConfig("gru", 1, 0, anchor="yesterday")


def test_cadence_adapter_starts_as_the_hourly_model_fed_hourly_means():
    """A transferred 10-minute model's recurrent features equal the hourly model's on the hourly means of the same
    readings (the adapter starts as a mean over each hour's six readings, blocks ending at the origin), and its
    head ignores the recent readings until trained."""
    from forecaster.cadence_transfer import transferred_model

    torch.manual_seed(0)
    hourly = ModelConfig(kind="conv_gru", n_features=3, target_index=0, horizons=(1, 2, 3), quantiles=(0.1, 0.5, 0.9),
                         conv=(ConvLayer(8, 5, 3), ConvLayer(8, 5, 2)), gru_hidden=16, anchor="both", season=24)
    base = build_model(hourly).eval()
    fine_cfg = replace(hourly, horizons=(1, 6, 12, 18), season=144, adapter=6, recent=6)
    fine = transferred_model(base, fine_cfg).eval()
    x = torch.randn(4, 6 * 60 + 5, 3)  # 5 extra readings at the start: dropped, so blocks end at the origin
    means = x[:, 5:].reshape(4, 60, 6, 3).mean(dim=2)
    with torch.no_grad():
        assert torch.allclose(fine.features(x), base.features(means), atol=1e-5)
        assert fine.head.weight[:, 16:].abs().sum() == 0
        out = fine(x)
    assert out.shape == (4, 4, 3)
    assert fine_cfg.min_input_length() == max(144, 6 * hourly._stack_length())  # a day, and the stack's 6-fold


def _clock_window(peak_hour: float, clock_offset_h: float, hours: int = 168) -> torch.Tensor:
    """A week of hourly rows: [T, tod_sin, tod_cos], T peaking at ``peak_hour`` solar time, the time-of-day
    encoding read on a clock ``clock_offset_h`` hours ahead of solar time (UTC for a station west of Greenwich)."""
    import math

    t = torch.arange(hours, dtype=torch.float64)
    temp = 5 * torch.cos(2 * math.pi * (t - peak_hour) / 24) + 0.3 * torch.sin(2 * math.pi * t / 168)
    clock = 2 * math.pi * (t + clock_offset_h) / 24
    return torch.stack([temp, torch.sin(clock), torch.cos(clock)], dim=-1)[None].float()


def test_phase_relative_time_of_day_is_the_same_on_any_clock():
    """The same weather read on local time and on UTC (7 h apart, like Denver) gives the same inputs once the
    time of day is phase-relative, and angle 0 is the window's warmest hour."""
    from forecaster.models import phase_relative

    local, utc = _clock_window(15, 0), _clock_window(15, 7)
    assert not torch.allclose(local[..., 1:], utc[..., 1:], atol=0.1)  # the clocks differ ...
    a, b = phase_relative(local, 0, 1, 2), phase_relative(utc, 0, 1, 2)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # ... what the model reads does not
    warmest = local[0, :, 0].argmax()
    assert a[0, warmest, 2] == pytest.approx(1.0, abs=0.01) and a[0, warmest, 1] == pytest.approx(0.0, abs=0.05)
    torch.testing.assert_close(a[..., 0], local[..., 0])  # the sensors themselves are untouched


def test_phase_relative_config_round_trips_and_checks_its_columns():
    cfg = ModelConfig("conv_gru", 6, 0, horizons=(1, 2), phase=(4, 5), anchor="both")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert build_model(cfg)(torch.randn(2, 168, 6)).shape == (2, 2, 1)
    with pytest.raises(ValueError, match="phase"):
        ModelConfig("gru", 6, 0, phase=(4,))


def test_window_scale_makes_the_forecast_scale_with_the_weather():
    """A window whose temperature and dew point swing k times as far around their mean gets a forecast k times as
    far from that mean, band included: a calm station's corrections and bands shrink with its weather."""
    cfg = ModelConfig("conv_gru", 4, 0, horizons=(1, 12, 24), quantiles=(0.1, 0.5, 0.9), anchor="both",
                      relative=(0, 1), band_offsets=True, phase=(2, 3), scale=True, recent=3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    x = _clock_window(15, 0).repeat(3, 1, 1)
    x = torch.cat([x[..., :1], x[..., :1] - 2 + 0.3 * torch.randn_like(x[..., :1]), x[..., 1:]], dim=-1)
    x[..., :2] += torch.randn(3, 1, 2)  # three levels
    level = x[..., :1].mean(dim=1, keepdim=True)
    calm = x.clone()
    calm[..., :2] = x[..., :2].mean(dim=1, keepdim=True) + 0.4 * (x[..., :2] - x[..., :2].mean(dim=1, keepdim=True))
    with torch.no_grad():
        torch.testing.assert_close(m(calm) - level, 0.4 * (m(x) - level), atol=1e-4, rtol=1e-4)
        plain = build_model(replace(cfg, scale=False)).eval()
        plain.load_state_dict(m.state_dict())
        assert not torch.allclose(plain(calm) - level, 0.4 * (plain(x) - level), atol=1e-2)  # without it: no
    with pytest.raises(ValueError, match="relative"):
        ModelConfig("conv_gru", 4, 0, scale=True)
