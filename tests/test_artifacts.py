"""Artifacts round-trip exactly, corrupt ones are refused, the registry promotes and rolls back."""

from __future__ import annotations

import orjson
import pytest
import torch

from forecaster.artifact import CARD, WEIGHTS, ArtifactError, ModelCard, load_artifact, save_artifact
from forecaster.dataset import DataConfig
from forecaster.models import ModelConfig, build_model
from forecaster.registry import Registry, RegistryError
from forecaster.windows import Normalizer


def make(seed: int = 0, quantiles=(0.1, 0.5, 0.9)):
    torch.manual_seed(seed)
    data = DataConfig(features=("T", "rh"), horizons=(1, 2, 3), lookback=48, time_features=True)
    cfg = ModelConfig("conv_gru", n_features=6, target_index=0, horizons=data.horizons, quantiles=quantiles)
    model = build_model(cfg)
    card = ModelCard(cfg, data, Normalizer(("T", "rh"), (10.0, 70.0), (8.0, 15.0)), cadence_s=3600,
                     metrics={"val_mae": 2.0 + seed, "test_mae": 2.1 + seed})
    return model, card


def test_roundtrip_gives_identical_forecasts(tmp_path):
    model, card = make()
    save_artifact(tmp_path / "m", model, card)
    loaded, card2 = load_artifact(tmp_path / "m")
    x = torch.randn(4, 48, 6)
    model.eval()
    assert torch.equal(model(x), loaded(x))
    assert card2.to_dict() == card.to_dict()


@pytest.mark.parametrize("damage", ["flip_weights", "truncate", "drop_card_key", "bad_json", "wrong_shape", "nan"])
def test_corrupt_artifact_is_refused(tmp_path, damage):
    model, card = make()
    d = save_artifact(tmp_path / "m", model, card)
    w, c = d / WEIGHTS, d / CARD
    if damage == "flip_weights":
        b = bytearray(w.read_bytes())
        b[-5] ^= 0xFF
        w.write_bytes(bytes(b))
    elif damage == "truncate":
        w.write_bytes(w.read_bytes()[:100])
    elif damage == "drop_card_key":
        d_ = orjson.loads(c.read_bytes())
        del d_["normalizer"]
        c.write_bytes(orjson.dumps(d_))
    elif damage == "bad_json":
        c.write_text("{not json")
    elif damage in ("wrong_shape", "nan"):
        other, _ = make()
        if damage == "wrong_shape":
            other = build_model(ModelConfig("conv_gru", 6, 0, horizons=(1, 2, 3), quantiles=(0.1, 0.5, 0.9),
                                            gru_hidden=8))
        else:
            with torch.no_grad():
                next(other.parameters()).fill_(float("nan"))
        save_artifact(tmp_path / "other", other, card)
        w.write_bytes((tmp_path / "other" / WEIGHTS).read_bytes())
        d_ = orjson.loads(c.read_bytes())
        d_["weights_sha256"] = orjson.loads((tmp_path / "other" / CARD).read_bytes())["weights_sha256"]
        c.write_bytes(orjson.dumps(d_))
    with pytest.raises(ArtifactError):
        load_artifact(d)


def test_missing_card_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="no card.json"):
        load_artifact(tmp_path)


def test_registry_promote_and_rollback(tmp_path):
    reg = Registry(tmp_path / "reg")
    v1 = reg.register("global", *make(0))
    v2 = reg.register("global", *make(1))
    assert reg.champion("global") is None
    with pytest.raises(RegistryError, match="no champion"):
        reg.load("global")
    reg.promote("global", v1.version)
    reg.promote("global", v2.version)
    assert reg.champion("global").version == 2 and reg.info("global", 1).status == "retired"
    model, card, info = reg.load("global")
    assert info.tag == "global@v2" and card.metrics["val_mae"] == 3.0
    back = reg.rollback("global", note="test")
    assert back.version == 1 and reg.champion("global").version == 1
    assert reg.info("global", 2).status == "rejected"
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback("global")
    assert [e["action"] for e in reg.events("global")] == ["register", "register", "promote", "promote", "rollback"]
    assert reg.names() == ["global"]


def test_registry_refuses_to_promote_corrupt_version(tmp_path):
    reg = Registry(tmp_path)
    v1 = reg.register("global", *make(0))
    reg.promote("global", v1.version)
    v2 = reg.register("global", *make(1))
    (reg.path("global", v2.version) / WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(ArtifactError):
        reg.promote("global", v2.version)
    assert reg.champion("global").version == 1
