"""A short real-data training run must beat persistence; fine-tuning moves a model to a new station."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from forecaster.adapt import finetune
from forecaster.clean import clean_station, load_stations
from forecaster.data import load_records
from forecaster.dataset import DataConfig, fit_normalizer
from forecaster.experiment import fit, model_config
from forecaster.models import ConvLayer, frontend_parameters
from forecaster.train import TrainConfig


@pytest.fixture(scope="module")
def jena(jena_hourly):
    return clean_station(load_records(jena_hourly))


def test_short_training_beats_persistence(jena, tmp_path):
    data = DataConfig(lookback=240, horizons=(24,), time_features=True)
    arch = model_config(data, "conv_gru", conv=(ConvLayer(32, 5, 3), ConvLayer(32, 5, 1)), gru_hidden=32,
                        residual=True)
    cfg = TrainConfig(optimizer="adam", lr=2e-3, epochs=3, steps_per_epoch=60, progress=False)
    t = fit([jena], data, arch, cfg, label="smoke", plot_dir=tmp_path)
    assert t.val["mae"] < t.val["persistence_mae"]
    assert t.test["mae"] < t.test["persistence_mae"]
    assert len(t.result.history) == 3 and (tmp_path / "smoke_learning_curve.png").stat().st_size > 10_000
    assert (tmp_path / "smoke_forecast_vs_actual.png").exists()
    assert t.card.metrics["test_mae"] == pytest.approx(t.test["mae"])


def test_early_stopping_restores_best_weights(jena):
    data = DataConfig(lookback=48, horizons=(6,))
    arch = model_config(data, "gru", gru_hidden=8)
    cfg = TrainConfig(lr=0.05, epochs=6, patience=1, steps_per_epoch=10, val_steps=4, progress=False)
    t = fit([jena], data, arch, cfg, label="es")
    best = min(h["val_loss"] for h in t.result.history)
    assert t.result.best_val_loss == pytest.approx(best)
    if t.result.stopped_early:
        assert len(t.result.history) == t.result.best_epoch + 1


def test_finetune_freezes_frontend_and_takes_the_given_normalization(jena, noaa_denver):
    data = DataConfig(lookback=72, horizons=(1, 24), time_features=True)
    arch = model_config(data, "conv_gru", quantiles=(0.1, 0.5, 0.9), residual=True)
    base = fit([jena], data, arch, TrainConfig(epochs=1, steps_per_epoch=20, progress=False), label="base")
    denver = load_stations(noaa_denver)[0]
    n = len(denver.frame)
    ranges = (slice(n - 1000, n - 300), slice(n - 300, n - 100), slice(n - 100, n))
    station_norm = fit_normalizer([denver], data, [ranges])
    before = [p.detach().clone() for p in frontend_parameters(base.model)]
    ft = finetune(base.model, base.card, denver, ranges,
                  TrainConfig(lr=2e-4, epochs=2, steps_per_epoch=10, progress=False), station_norm)
    after = frontend_parameters(ft.model)
    assert all((a == b).all() for a, b in zip(before, after, strict=True))
    assert ft.card.normalizer == station_norm != base.card.normalizer
    assert ft.test["samples"] == 100 - 24 and "band_coverage" in ft.test
    assert ft.model is not base.model and replace(ft.card.data) == base.card.data
    assert any((a != b).any() for a, b in zip(base.model.parameters(), ft.model.parameters(), strict=True))
    # The band keeps the base's calibration (learned on years), not one recalibrated on the short holdout.
    assert base.card.calibration is not None and ft.card.calibration == base.card.calibration


def test_cosine_schedule_warms_up_then_decays_to_zero():
    from torch import nn, optim

    from forecaster.train import _scheduler

    opt = optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    sched = _scheduler(opt, TrainConfig(schedule="cosine", warmup=0.1), total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(0.1)
    peak = lrs.index(max(lrs))
    assert peak == 9 and all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:], strict=False))
    assert lrs[-1] < 1e-3
    with pytest.raises(ValueError, match="unknown schedule"):
        _scheduler(opt, TrainConfig(schedule="step"), 10)


def test_weight_average_is_what_is_validated_and_kept(jena):
    from forecaster.dataset import make_splits
    from forecaster.models import build_model
    from forecaster.train import evaluate_loss, train

    data = DataConfig(lookback=48, horizons=(6,))
    splits = make_splits([jena], data)
    model = build_model(model_config(data, "gru", gru_hidden=8))
    cfg = TrainConfig(optimizer="adam", lr=0.01, epochs=2, steps_per_epoch=20, val_steps=4, ema=0.9,
                      input_noise=0.1, progress=False)
    result = train(model, splits.train, splits.val, cfg)
    kept = evaluate_loss(model, splits.val, cfg.batch_size * 4, cfg.val_steps)
    assert kept == pytest.approx(result.best_val_loss, rel=1e-5)


def test_refit_mode_runs_every_epoch_and_keeps_the_last_weights(jena):
    from forecaster.dataset import make_splits
    from forecaster.models import build_model
    from forecaster.train import evaluate_loss, train

    data = DataConfig(lookback=48, horizons=(6,))
    splits = make_splits([jena], data)
    model = build_model(model_config(data, "gru", gru_hidden=8))
    cfg = TrainConfig(lr=0.05, epochs=4, patience=1, steps_per_epoch=10, val_steps=4, restore_best=False,
                      progress=False)
    result = train(model, splits.train, splits.val, cfg)
    assert len(result.history) == 4 and not result.stopped_early
    last = evaluate_loss(model, splits.val, cfg.batch_size * 4, cfg.val_steps)
    assert last == pytest.approx(result.history[-1]["val_loss"], rel=1e-5)


def test_same_seed_same_model_whatever_ran_before(jena):
    """Initial weights follow the seed too: a second fit in the same process reproduces the first."""
    import torch

    data = DataConfig(lookback=48, horizons=(6,))
    arch = model_config(data, "conv_gru", conv=(ConvLayer(8, 3, 2),), gru_hidden=8)
    cfg = TrainConfig(epochs=1, steps_per_epoch=5, val_steps=2, progress=False)
    first = fit([jena], data, arch, cfg, label="a")
    torch.rand(1000)  # whatever else used the global generator in between
    second = fit([jena], data, arch, cfg, label="b")
    assert first.result.history[0]["val_loss"] == second.result.history[0]["val_loss"]
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fit_calibrates_the_band_on_validation_and_applies_it_to_test(jena):
    from forecaster.calibration import coverage
    from forecaster.evaluate import predict_windows

    data = DataConfig(lookback=48, horizons=(1, 24), time_features=True)
    arch = model_config(data, "conv_gru", quantiles=(0.1, 0.5, 0.9), anchor="both", relative=(1,),
                        band_offsets=True)
    t = fit([jena], data, arch, TrainConfig(epochs=1, steps_per_epoch=20, progress=False), label="band")
    band = t.card.calibration
    assert band is not None and band.windows == len(t.val_predictions.actual)
    # On the span it was fitted on, each horizon's band covers its nominal 80 % (finite-sample: at least that).
    val_cov = coverage(t.val_predictions.pred, t.val_predictions.actual)
    assert ((val_cov >= 0.8) & (val_cov < 0.81)).all()
    raw = predict_windows(t.model, t.splits.test, t.splits.normalizer, data.target)
    assert np.allclose(t.test_predictions.pred, band.apply(raw.pred, 1))
    assert not np.allclose(t.test_predictions.pred, raw.pred)


def test_baseline_weights_equalize_horizons_by_the_better_naive_error():
    from forecaster.train import baseline_weights, forecast_loss
    from forecaster.windows import Windows, WindowSpec

    # A pure daily cycle (period 8 steps) plus a linear drift: persistence errs by |step change|, growing with h;
    # the value a day before errs by the drift over one period (0.8) whatever h.
    t = np.arange(400, dtype=np.float32)
    target = np.sin(2 * np.pi * t / 8).astype(np.float32) + 0.1 * t
    spec = WindowSpec(lookback=8, horizons=(1, 4))
    w = Windows(target[:, None], target, np.arange(8, 390), spec)
    weights = baseline_weights(w, season=8)
    persistence = [np.abs(target[9:391] - target[8:390]).mean(), np.abs(target[12:394] - target[8:390]).mean()]
    expected = 1 / np.minimum(persistence, 0.8)
    assert weights.numpy() == pytest.approx(expected / expected.mean(), rel=1e-4)
    assert weights.mean().item() == pytest.approx(1.0)
    # With the weights the loss is the mean over horizons of each one's error relative to its baseline scale.
    pred, y = torch.zeros(2, 2, 1), torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert forecast_loss(pred, y, (), weights).item() == pytest.approx(((y.abs() * weights).mean()).item())
    assert forecast_loss(pred, y, ()).item() == pytest.approx(2.5)
    assert forecast_loss(pred, y, (), point="mse").item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert forecast_loss(pred, y, (), weights, point="mse").item() == pytest.approx(
        ((y.square() * weights).mean()).item())
    with pytest.raises(ValueError, match="unknown loss"):
        forecast_loss(pred, y, (), point="huber")


def test_unknown_horizon_weighting_is_refused(jena):
    from forecaster.dataset import make_splits
    from forecaster.models import build_model
    from forecaster.train import train

    data = DataConfig(lookback=48, horizons=(6,))
    splits = make_splits([jena], data)
    model = build_model(model_config(data, "gru", gru_hidden=8))
    with pytest.raises(ValueError, match="unknown horizon weighting"):
        train(model, splits.train, splits.val, TrainConfig(epochs=1, steps_per_epoch=1, horizon_weighting="skill",
                                                          progress=False))


def test_squared_error_loss_is_what_training_minimizes(jena):
    from forecaster.dataset import make_splits
    from forecaster.models import build_model
    from forecaster.train import train

    data = DataConfig(lookback=48, horizons=(6, 12))
    splits = make_splits([jena], data)
    model = build_model(model_config(data, "gru", gru_hidden=8, dropout=0.0))
    with torch.no_grad():
        err = torch.cat([(model(x)[..., 0] - y).flatten() for x, y in splits.train.batches(4096)])
        val_err = torch.cat([(model(x)[..., 0] - y).flatten() for x, y in splits.val.batches(4096)])
    # lr 0: the weights stay put, so one full pass's running loss is the loss of the initial model on every window.
    result = train(model, splits.train, splits.val, TrainConfig(optimizer="adam", lr=0.0, epochs=1, loss="mse",
                                                                progress=False))
    assert result.history[0]["train_loss"] == pytest.approx(err.square().mean().item(), rel=1e-4)
    assert result.history[0]["train_loss"] != pytest.approx(err.abs().mean().item(), rel=1e-2)
    assert result.best_val_loss == pytest.approx(val_err.abs().mean().item(), rel=1e-4)  # validation stays MAE


def test_window_scale_without_relative_sensors_is_a_one_line_error(jena_hourly, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["train", "--data", str(jena_hourly), "--features", "T,Tdew", "--window-scale",
                 "--registry", str(tmp_path / "registry")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--window-scale needs --relative" in err and "\n" not in err


def test_squared_error_loss_with_a_band_is_a_one_line_error(jena_hourly, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["train", "--data", str(jena_hourly), "--features", "T,Tdew", "--quantiles", "0.1,0.5,0.9",
                 "--loss", "mse", "--registry", str(tmp_path / "registry")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--loss mse trains a point forecast" in err and "pinball" in err and "\n" not in err
    # Said before the data is read: a file that does not exist is not reached.
    assert main(["train", "--data", str(tmp_path / "nowhere.csv"), "--quantiles", "0.1,0.5,0.9", "--loss", "mse",
                 "--registry", str(tmp_path / "registry")]) == 2
    assert "--loss mse trains a point forecast" in capsys.readouterr().err
