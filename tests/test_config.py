"""Settings: layered loading, typed environment variables, and the generated reference in docs/."""

from __future__ import annotations

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
