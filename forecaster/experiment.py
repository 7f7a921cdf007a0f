"""One call from cleaned series to a trained, scored model with its card: used by the CLI, the
benchmarks and the service's retraining job alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from forecaster.artifact import ModelCard
from forecaster.calibration import BandCalibration, calibrate
from forecaster.clean import StationSeries
from forecaster.dataset import DataConfig, Ranges, Splits, make_splits
from forecaster.evaluate import Predictions, predict_windows, score, steps_per_day
from forecaster.models import ModelConfig, build_model, n_parameters
from forecaster.train import TrainConfig, TrainResult, seed_everything, train
from forecaster.windows import Normalizer


@dataclass
class Trained:
    model: nn.Module
    card: ModelCard
    splits: Splits
    result: TrainResult
    val: dict
    test: dict
    test_predictions: Predictions
    val_predictions: Predictions

    @property
    def n_parameters(self) -> int:
        return n_parameters(self.model)


def model_config(data: DataConfig, kind: str, **arch) -> ModelConfig:
    """A model config whose input width, target and horizons follow the data config."""
    return ModelConfig(
        kind=kind, n_features=len(data.input_names), target_index=data.target_index, horizons=data.horizons, **arch
    )


def fit(
    series: Sequence[StationSeries],
    data: DataConfig,
    arch: ModelConfig,
    train_cfg: TrainConfig = TrainConfig(),
    label: str = "model",
    plot_dir: str | Path | None = None,
    ranges: Sequence[Ranges] | None = None,
    normalizer: Normalizer | None = None,
    model: nn.Module | None = None,
    data_hash: str | None = None,
    parent: str | None = None,
    band: BandCalibration | None = None,
) -> Trained:
    """Train ``arch`` (or continue ``model``) on ``series`` and score it on validation and test. ``band``: keep this
    band calibration instead of calibrating on the validation span (a fine-tune's, whose few days of holdout give
    noisy tail quantiles)."""
    if data.spec.n_inputs < arch.min_input_length():
        raise ValueError(
            f"lookback of {data.spec.n_inputs} input steps is too short for this {arch.kind} model: "
            f"it needs at least {arch.min_input_length()}"
        )
    splits = make_splits(series, data, normalizer, ranges)
    if model is None:
        seed_everything(train_cfg.seed)  # the initial weights too, not only the batch order, follow the seed
        model = build_model(arch)
    result = train(model, splits.train, splits.val, train_cfg, label=label)
    season = steps_per_day(series[0].cadence.total_seconds())
    season = season if season and data.lookback >= season else None  # the diurnal baseline, where windows hold it
    val_p = predict_windows(model, splits.val, splits.normalizer, data.target, season=season)
    if band is None:
        band = calibrate(val_p.pred, val_p.actual, arch.quantiles)
    raw_val_coverage = score(val_p, data.horizons).get("band_coverage")
    if band is not None:
        val_p.pred = band.apply(val_p.pred, arch.median_index)
    test_p = predict_windows(model, splits.test, splits.normalizer, data.target, band=band, season=season)
    val, test = score(val_p, data.horizons), score(test_p, data.horizons)
    coverage = {"val_coverage_uncalibrated": raw_val_coverage, "test_coverage": test.get("band_coverage")} \
        if raw_val_coverage is not None else {}
    cadence = series[0].cadence
    card = ModelCard(
        model=arch,
        data=data,
        normalizer=splits.normalizer,
        cadence_s=int(cadence.total_seconds()),
        stations=[s.station for s in series],
        training_span=splits.train_span,
        data_hash=data_hash,
        metrics={
            "val_mae": val["mae"], "test_mae": test["mae"],
            "val_persistence_mae": val["persistence_mae"], "test_persistence_mae": test["persistence_mae"],
            "val_by_horizon": {str(h): v["mae"] for h, v in val["by_horizon"].items()},
            "best_epoch": result.best_epoch, "seconds_per_epoch": result.seconds_per_epoch,
            "parameters": n_parameters(model), **coverage,
        },
        train={**train_cfg.to_dict(), "history": result.history},
        parent=parent,
        calibration=band,
    )
    if plot_dir is not None:  # figures only when asked for: retraining jobs need no plotting installed
        from forecaster.plots import forecast_vs_actual, learning_curve, slug
    if plot_dir is not None and result.history:
        _, std = splits.normalizer.scale_of(data.target)
        path = Path(plot_dir) / f"{slug(label)}_learning_curve.png"
        learning_curve(result.history, path, f"{label}: learning curve", std, loss=train_cfg.loss)
    if plot_dir is not None:
        h = data.horizons[-1]
        forecast_vs_actual(
            test_p, series[0].times, data.horizons, h, Path(plot_dir) / f"{slug(label)}_forecast_vs_actual.png",
            f"{label}: test forecasts +{h} steps ({series[0].station})", quantiles=arch.quantiles,
            length=min(24 * 14, int((test_p.origins < len(series[0].frame)).sum())),
        )
    return Trained(model, card, splits, result, val, test, test_p, val_p)


def with_horizons(data: DataConfig, horizons: Sequence[int]) -> DataConfig:
    return replace(data, horizons=tuple(horizons))
