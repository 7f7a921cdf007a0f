"""Artifacts round-trip exactly, corrupt or hand-edited ones are refused (also by the running service), the
registry promotes and rolls back."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import torch

from forecaster.artifact import (
    CARD,
    WEIGHTS,
    ArtifactError,
    ModelCard,
    card_checksum,
    load_artifact,
    read_card,
    save_artifact,
    seal_card,
)
from forecaster.dataset import DataConfig
from forecaster.models import ModelConfig, build_model
from forecaster.registry import Registry, RegistryError
from forecaster.windows import Normalizer
from pipeline.pretrained import shipped_artifact
from tests.broker_fixture import kafka_broker  # noqa: F401
from tests.pipeline_harness import ROOT, make_setup, start_service_process, wait_until


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
        _write_consistent_card(c, d_)  # checksums that agree, so the shape and value checks are what refuse it
    with pytest.raises(ArtifactError):
        load_artifact(d)


def _write_consistent_card(path: Path, fields: dict) -> None:
    """A card with a valid card_sha256 over ``fields``, as save_artifact writes one."""
    fields = {**fields, "card_sha256": card_checksum(fields)}
    path.write_bytes(orjson.dumps(fields, option=orjson.OPT_INDENT_2))


def _edit_card(directory: Path, edit) -> None:
    fields = orjson.loads((directory / CARD).read_bytes())
    edit(fields)
    (directory / CARD).write_bytes(orjson.dumps(fields, option=orjson.OPT_INDENT_2))


def _shift_mean(fields: dict) -> None:
    fields["normalizer"]["mean"][0] += 10.0


def _other_weights(tmp_path: Path, d: Path) -> None:
    other, card = make(seed=7)
    (d / WEIGHTS).write_bytes((save_artifact(tmp_path / "other", other, card) / WEIGHTS).read_bytes())


@pytest.mark.parametrize("tamper", ["normalizer_mean", "weights_hash_null", "weights_hash_recomputed",
                                    "checksum_removed", "checksum_null", "extra_field"])
def test_hand_edited_card_is_refused(tmp_path, tamper):
    d = save_artifact(tmp_path / "m", *make())
    if tamper == "normalizer_mean":
        _edit_card(d, _shift_mean)
        reason = "card_sha256 does not match"
    elif tamper == "weights_hash_null":  # new weights, and the card told not to check them
        _other_weights(tmp_path, d)
        _edit_card(d, lambda f: f.update(weights_sha256=None))
        reason = "weights_sha256 is missing"
    elif tamper == "weights_hash_recomputed":  # new weights, and their hash written into the card by hand
        _other_weights(tmp_path, d)
        _edit_card(d, lambda f: f.update(weights_sha256=orjson.loads((tmp_path / "other" / CARD).read_bytes())[
            "weights_sha256"]))
        reason = "card_sha256 does not match"
    elif tamper == "checksum_removed":
        _edit_card(d, lambda f: (_shift_mean(f), f.pop("card_sha256")))
        reason = "no card_sha256"
    elif tamper == "checksum_null":
        _edit_card(d, lambda f: (_shift_mean(f), f.update(card_sha256=None)))
        reason = "no card_sha256"
    else:
        _edit_card(d, lambda f: f.update(note="looks harmless"))
        reason = "card_sha256 does not match"
    for read in (load_artifact, read_card):
        with pytest.raises(ArtifactError, match=reason) as err:
            read(d)
        assert str(d) in str(err.value)


def test_card_checksum_ignores_layout(tmp_path):
    """Only values count: a card rewritten compactly with keys in another order still loads, unchanged."""
    model, card = make()
    d = save_artifact(tmp_path / "m", model, card)
    fields = orjson.loads((d / CARD).read_bytes())
    assert fields["card_sha256"] == card_checksum(fields)
    shuffled = {k: dict(reversed(v.items())) if isinstance(v, dict) else v for k, v in reversed(fields.items())}
    (d / CARD).write_bytes(orjson.dumps(shuffled))
    assert load_artifact(d)[1].to_dict() == card.to_dict()


def test_shipped_model_is_sealed_and_loads():
    path = shipped_artifact("global")
    fields = orjson.loads((path / CARD).read_bytes())
    assert fields["card_sha256"] == card_checksum(fields)
    model, card = load_artifact(path)
    assert card.to_dict() == read_card(path).to_dict()
    assert sum(p.numel() for p in model.parameters()) > 0


def test_tampered_shipped_model_is_not_seeded(tmp_path, monkeypatch):
    """A fresh registry is seeded from the shipped model only if its card is intact."""
    import pipeline.pretrained as pretrained

    shipped = tmp_path / "shipped"
    shutil.copytree(shipped_artifact("global"), shipped / "global")
    _edit_card(shipped / "global", _shift_mean)
    monkeypatch.setattr(pretrained, "SHIPPED", shipped)
    registry = Registry(tmp_path / "registry")
    with pytest.raises(RegistryError, match="shipped model is unusable: .*card_sha256 does not match"):
        pretrained.ensure_champion(registry, "global")
    assert registry.champion("global") is None


def _seal(*dirs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forecaster.artifact", *map(str, dirs)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_older_card_is_refused_until_sealed(tmp_path):
    """A card written before card_sha256 existed: refused with how to fix it; `python -m forecaster.artifact DIR`
    seals it once its weights check out; one whose weights do not match stays refused and untouched."""
    model, card = make()
    good, bad = save_artifact(tmp_path / "good", model, card), save_artifact(tmp_path / "bad", model, card)
    for d in (good, bad):
        _edit_card(d, lambda f: f.pop("card_sha256"))
    _other_weights(tmp_path, bad)
    with pytest.raises(ArtifactError, match=r"no card_sha256.*python -m forecaster\.artifact"):
        load_artifact(good)
    res = _seal(good)
    assert res.returncode == 0 and res.stdout.strip() == f"{good}: sealed", res.stderr
    assert load_artifact(good)[1].to_dict() == card.to_dict()
    assert seal_card(good) is False  # already sealed: left as it is
    before = (bad / CARD).read_bytes()
    res = _seal(bad)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"python -m forecaster.artifact: error: {bad / WEIGHTS}: checksum does not match the card "
        "(corrupt or replaced weights)"]
    assert (bad / CARD).read_bytes() == before
    _edit_card(good, _shift_mean)  # a sealed card edited afterwards is never resealed
    with pytest.raises(ArtifactError, match="card_sha256 does not match"):
        seal_card(good)


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


def test_service_refuses_a_tampered_champion(kafka_broker, tmp_path):  # noqa: F811
    """`stationcast serve` with a hand-edited champion card exits 2 with one line naming the card, as for any corrupt
    champion, instead of serving forecasts from it."""
    setup = make_setup(kafka_broker.bootstrap, tmp_path)
    registry = Registry(setup.cfg.registry)
    champion = registry.champion(setup.cfg.model_name)
    _edit_card(registry.path(champion.name, champion.version), _shift_mean)
    log = tmp_path / "serve.log"
    proc = start_service_process(setup, log)
    try:
        wait_until(lambda: proc.poll() is not None, 180, "stationcast serve to refuse the tampered champion")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    card_path = registry.path(champion.name, champion.version) / CARD
    assert proc.returncode == 2, text
    assert f"stationcast serve: error: {card_path}: card_sha256 does not match" in text
    assert "Traceback" not in text


def test_hot_swap_refuses_a_tampered_champion(kafka_broker, tmp_path):  # noqa: F811
    """A champion whose card is edited after its promotion is not picked up: the service keeps serving the model it
    has (the reaction to any new champion that does not load)."""
    from pipeline.run import build_service

    setup = make_setup(kafka_broker.bootstrap, tmp_path)
    registry = Registry(setup.cfg.registry)
    service = build_service(setup.cfg, setup.bootstrap)
    try:
        before = service.model_info
        model, card = load_artifact(registry.path(before.name, before.version))
        new = registry.register(before.name, model, card, note="same model, card edited after promotion")
        registry.promote(new.name, new.version)
        _edit_card(registry.path(new.name, new.version), _shift_mean)
        assert not service.maybe_swap_model(force=True)
        assert service.model_info == before
        assert service.card.normalizer.mean == card.normalizer.mean
    finally:
        service.close()
