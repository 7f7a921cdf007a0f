"""Settings: layered loading, typed environment variables, and the generated reference in docs/."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pipeline.config import load_config, reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_environment_values_are_typed():
    cfg = load_config(env={"STATIONCAST_STATION_MODELS": "false", "STATIONCAST_FINETUNE_INTERVAL_S": "600",
                           "STATIONCAST_TRAINING_NICE": "5", "STATIONCAST_PARTITIONS": "8"})
    assert cfg.station_models is False and cfg.finetune_interval_s == 600.0 and cfg.training_nice == 5
    assert cfg.broker.partitions == 8
    assert load_config(env={"STATIONCAST_STATION_MODELS": "Yes"}).station_models is True
    with pytest.raises(ValueError, match="STATIONCAST_STATION_MODELS='maybe' is not a boolean"):
        load_config(env={"STATIONCAST_STATION_MODELS": "maybe"})
    with pytest.raises(ValueError, match="is not a number"):
        load_config(env={"STATIONCAST_FINETUNE_EPOCHS": "ten"})


def test_yaml_then_env_then_flags(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("finetune_interval_s: 3600\nretrain_cron: '0 3 * * *'\ngroup_id: from-yaml\n")
    cfg = load_config(path, env={"STATIONCAST_GROUP_ID": "from-env"}, finetune_margin=0.05)
    assert (cfg.finetune_interval_s, cfg.retrain_cron, cfg.group_id, cfg.finetune_margin) == \
        (3600, "0 3 * * *", "from-env", 0.05)
    path.write_text("finetune_every: 3600\n")
    with pytest.raises(ValueError, match="unknown settings \\['finetune_every'\\]"):
        load_config(path, env={})


def test_configuration_reference_is_current():
    text = reference()
    assert DOC.read_text() == text, "docs/configuration.md is stale: python -m pipeline.config > docs/configuration.md"
    assert "| `finetune_min_history_days` | `STATIONCAST_FINETUNE_MIN_HISTORY_DAYS` | `30.0` |" in text


def test_a_job_reads_the_services_settings_from_its_environment(tmp_path, monkeypatch):
    """The scheduler hands a job the service's settings in its environment (no argv copy): the job's settings are
    the service's, and its flags still override them with the flag named in errors."""
    from dataclasses import fields

    from pipeline import finetune, retrain
    from pipeline.jobs import job_env
    from pipeline.store import Store

    db = tmp_path / "store.db"
    Store.open(f"sqlite:///{db}").close()
    service = load_config(env={}, store_url=f"sqlite:///{db}", registry=str(tmp_path / "registry"),
                          retrain_history_days=12.5, retrain_epochs=4, promote_margin=0.05, finetune_epochs=7,
                          finetune_retry_days=2.0, station_models=False, retrain_cron="0 3 * * *",
                          training_device="cpu", model_name="fleet")
    env = job_env(service)
    assert not any("BOOTSTRAP" in k or "SASL" in k for k in env), "broker settings do not concern a job"
    back = load_config(env=env)
    for f in fields(service):
        if f.name != "broker":
            assert getattr(back, f.name) == getattr(service, f.name), f.name
    monkeypatch.chdir(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = retrain.settings_from_args(retrain.build_parser().parse_args(["--epochs", "2"]))
    assert (r.store_url, r.registry, r.name, r.history_days, r.margin, r.epochs, r.device) == \
        (service.store_url, service.registry, "fleet", 12.5, 0.05, 2, "cpu")
    p = argparse.ArgumentParser()
    finetune.add_arguments(p)
    f = finetune.settings_from_args(p.parse_args(["--station", "X"]))
    assert (f.base, f.adapt.epochs, f.retry_days, f.stations, f.max_stations) == ("fleet", 7, 2.0, ("X",), 0)
    f = finetune.settings_from_args(p.parse_args(["--epochs", "3", "--layers", "head"]))
    assert (f.adapt.epochs, f.adapt.layers, f.adapt.margin) == (3, "head", service.finetune_margin)
    with pytest.raises(ValueError, match="--history-days"):
        retrain.settings_from_args(retrain.build_parser().parse_args(["--history-days", "-1"]))


def test_one_store_url_parser():
    from pipeline.store_url import parse_store_url

    assert parse_store_url("sqlite:///var/x.db").file == Path("var/x.db")
    assert parse_store_url("sqlite:////abs/x.db").absolute() == "sqlite:////abs/x.db"
    assert parse_store_url("sqlite:///var/x.db").absolute() == f"sqlite:///{Path('var/x.db').absolute()}"
    assert parse_store_url("sqlite:///:memory:").file is None
    assert parse_store_url("postgresql://u:secret@h/db").kind == "postgresql"
    with pytest.raises(ValueError, match="unsupported store URL") as err:
        parse_store_url("mysql://u:secret@h/db")
    assert "secret" not in str(err.value)
