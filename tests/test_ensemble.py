"""A model of several members is one model: each member trained on its own with its own seed, saved, loaded,
fine-tuned and served like a single one, forecasting the mean of its members."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forecaster.adapt import finetune
from forecaster.cadence_transfer import CadenceError, transfer_config
from forecaster.clean import clean_station, load_stations
from forecaster.data import load_records
from forecaster.dataset import DataConfig
from forecaster.experiment import fit, model_config
from forecaster.models import ConvLayer, MixedIn, ModelConfig, build_model, frontend_parameters, single_models
from forecaster.predict import Predictor
from forecaster.registry import Registry
from forecaster.train import TrainConfig

DATA = DataConfig(lookback=72, horizons=(6, 24), time_features=True)
QUICK = TrainConfig(optimizer="adam", lr=2e-3, epochs=2, steps_per_epoch=15, val_steps=5, progress=False)


@pytest.fixture(scope="module")
def jena(jena_hourly):
    return clean_station(load_records(jena_hourly))


def test_forecast_is_the_mean_of_the_members():
    cfg = ModelConfig("conv_gru", n_features=3, target_index=0, horizons=(1, 24), quantiles=(0.1, 0.5, 0.9),
                      residual=True, members=3)
    model = build_model(cfg).eval()
    x = torch.randn(5, 48, 3)
    outputs = [m(x) for m in single_models(model)]
    assert len(outputs) == 3 and all(m.cfg.members == 1 for m in single_models(model))
    assert torch.allclose(model(x), torch.stack(outputs).mean(0))
    assert not torch.equal(outputs[0], outputs[1])  # members start from their own weights
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_a_mixed_model_holds_members_of_each_architecture_and_serves_their_mean():
    front = (ConvLayer(16, 5, 2), ConvLayer(16, 5, 1))
    cfg = ModelConfig("conv_gru", n_features=3, target_index=0, conv=front, gru_hidden=12, residual=True,
                      members=2, mix=(MixedIn("gru", 8, 1), MixedIn("conv_gru", 6, 1)))
    model = build_model(cfg).eval()
    kinds = [(type(m).__name__, m.cfg.gru_hidden, m.cfg.conv) for m in single_models(model)]
    assert kinds == [("ConvGRU", 12, front), ("ConvGRU", 12, front), ("GRUNet", 8, ()), ("ConvGRU", 6, front)]
    assert cfg.summary == "conv_gru x2 + gru:8x1 + conv_gru:6x1"
    assert cfg.n_members == 4 and all(m.cfg.residual and m.cfg.n_members == 1 for m in single_models(model))
    x = torch.randn(4, 48, 3)
    assert torch.allclose(model(x), torch.stack([m(x) for m in single_models(model)]).mean(0))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "mix"}).n_members == 2  # old cards
    assert cfg.min_input_length() == max(c.min_input_length() for c in cfg.member_configs()) > 1


def test_members_below_one_or_on_a_baseline_are_refused():
    with pytest.raises(ValueError, match="members must be >= 1"):
        ModelConfig("conv_gru", n_features=3, target_index=0, members=0)
    with pytest.raises(ValueError, match="persistence baseline has nothing to train"):
        ModelConfig("persistence", n_features=3, target_index=0, members=2)
    with pytest.raises(ValueError, match="mixed-in member must be a trained model"):
        ModelConfig("seasonal", n_features=3, target_index=0, mix=(MixedIn("gru", 8, 1),))
    with pytest.raises(ValueError, match="count >= 1"):
        ModelConfig("conv_gru", n_features=3, target_index=0, mix=(MixedIn("gru", 8, 0),))


def test_each_member_trains_on_its_own_and_the_model_serves_their_mean(jena, tmp_path):
    """Member 0 is exactly the single model trained with the same seed: members are not trained through their
    mean (they would learn to cancel each other's errors). The registered model forecasts their mean."""
    arch = model_config(DATA, "conv_gru", residual=True, members=2)
    ens = fit([jena], DATA, arch, QUICK, label="ensemble", plot_dir=tmp_path)
    single = fit([jena], DATA, model_config(DATA, "conv_gru", residual=True), QUICK, label="single")
    first, second = single_models(ens.model)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), single.model.state_dict().values(),
                                                  strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                                                      strict=True))
    assert [h["member"] for h in ens.result.history] == [0, 0, 1, 1]
    assert ens.result.seconds_per_epoch == pytest.approx(
        sum(np.mean([h["seconds"] for h in ens.result.history if h["member"] == m]) for m in (0, 1)))
    assert ens.card.metrics["parameters"] == 2 * single.card.metrics["parameters"]
    assert (tmp_path / "ensemble_learning_curve.png").stat().st_size > 10_000

    info = Registry(tmp_path / "registry").register("global", ens.model, ens.card)
    loaded, card, _ = Registry(tmp_path / "registry").load("global", info.version)
    assert card.model.members == 2
    window = jena.values(list(DATA.features))[:DATA.lookback]
    rows = np.stack([window, window + 1.0]).astype(np.float32)
    origins = np.array([jena.times[DATA.lookback - 1].value // 10**9] * 2)
    served = Predictor(loaded, card, device="cpu").predict(rows, origins).point
    by_member = [Predictor(m, card, device="cpu").predict(rows, origins).point for m in single_models(loaded)]
    np.testing.assert_allclose(served, np.mean(by_member, axis=0), rtol=1e-5, atol=1e-5)


def test_finetuning_an_ensemble_keeps_every_members_front_end(jena, noaa_denver):
    arch = model_config(DATA, "conv_gru", quantiles=(0.1, 0.5, 0.9), residual=True, members=2)
    base = fit([jena], DATA, arch, TrainConfig(epochs=1, steps_per_epoch=10, val_steps=5, progress=False))
    denver = load_stations(noaa_denver)[0]
    n = len(denver.frame)
    ranges = (slice(n - 1000, n - 300), slice(n - 300, n - 100), slice(n - 100, n))
    before = [p.detach().clone() for p in frontend_parameters(base.model)]
    assert len(before) == 2 * len(frontend_parameters(single_models(base.model)[0]))
    ft = finetune(base.model, base.card, denver, ranges,
                  TrainConfig(lr=2e-4, epochs=1, steps_per_epoch=10, progress=False), base.card.normalizer)
    assert all(torch.equal(a, b) for a, b in zip(before, frontend_parameters(ft.model), strict=True))
    for b, f in zip(single_models(base.model), single_models(ft.model), strict=True):
        assert any(not torch.equal(x, y) for x, y in zip(b.gru.parameters(), f.gru.parameters(), strict=True))


def test_train_members_on_the_command_line(jena_hourly, tmp_path, capsys):
    from pipeline.cli import main

    registry = tmp_path / "registry"
    assert main(["train", "--data", str(jena_hourly), "--features", "T,Tdew", "--lookback", "72", "--horizons",
                 "6,24", "--members", "2", "--epochs", "1", "--steps-per-epoch", "5", "--registry", str(registry),
                 "--plots", str(tmp_path / "plots")]) == 0
    capsys.readouterr()
    reg = Registry(registry)
    card = reg.card("global", reg.versions("global")[-1].version)
    assert card.model.members == 2
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", str(jena_hourly), "--members", "0", "--registry", str(registry)])
    assert exit_.value.code == 2
    assert "expected a whole number of members from 1 to 32, got '0'" in capsys.readouterr().err


def test_train_a_mixed_model_on_the_command_line(jena_hourly, tmp_path, capsys):
    """``--mix`` registers one model whose card names every member; bad specs and too many members get one line;
    a model with a plain GRU member cannot be carried to a finer cadence (that GRU has no front-end to adapt)."""
    from pipeline.cli import main

    registry = tmp_path / "registry"
    assert main(["train", "--data", str(jena_hourly), "--features", "T,Tdew", "--lookback", "72", "--horizons",
                 "6,24", "--residual", "--mix", "gru:8x2", "--epochs", "1", "--steps-per-epoch", "5",
                 "--registry", str(registry), "--plots", str(tmp_path / "plots")]) == 0
    capsys.readouterr()
    reg = Registry(registry)
    card = reg.card("global", reg.versions("global")[-1].version)
    assert card.model.mix == (MixedIn("gru", 8, 2),) and card.model.n_members == 3
    model, card, _ = reg.load("global", reg.versions("global")[-1].version)
    assert [type(m).__name__ for m in single_models(model)] == ["ConvGRU", "GRUNet", "GRUNet"]
    with pytest.raises(CadenceError, match="front-end in every member; the base model has gru members"):
        transfer_config(card, 600, (6,), 432)
    for bad, says in ((["--mix", "lstm:8x2"], "expected KIND:UNITSxN"), (["--mix", "gru:8"], "expected KIND:UNITSxN"),
                      (["--members", "30", "--mix", "gru:8x3"], "33 members in all (--members and --mix): at most 32")):
        try:
            code = main(["train", "--data", str(jena_hourly), *bad, "--registry", str(registry)])
        except SystemExit as exit_:  # argparse's refusal of a malformed value
            code = exit_.code
        err = capsys.readouterr().err
        assert code == 2 and says in err and "Traceback" not in err
