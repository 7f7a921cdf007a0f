"""Scoring against both baselines (pipeline/scoring.py): pure logic, the same rows for every forecaster."""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecaster.evaluate import diurnal_offsets
from pipeline.scoring import HorizonSkill, RollingSkill, Scoreboard, diurnal_baseline, error_summary, skill_vs_best


def test_diurnal_baseline_is_the_value_a_day_before_each_target():
    lookback, season = 30, 24
    target = np.arange(2 * lookback, dtype=np.float64).reshape(2, lookback)  # value == position in window
    horizons = np.array([1, 6, 24, 25, 48])
    got = diurnal_baseline(target, horizons, season)
    # Position of the origin is lookback - 1; the target is origin + h; a day before is origin + h - 24 (whole
    # days back beyond a day, as the offline evaluation does).
    assert np.array_equal(got[0], [6.0, 11.0, 29.0, 6.0, 29.0])
    assert np.array_equal(got[1], got[0] + lookback)
    short = diurnal_baseline(target[:, -10:], horizons, season)  # 10 steps: only a day back from h 24 and 48
    assert np.array_equal(np.isnan(short[0]), [True, True, False, True, False])
    assert np.isnan(diurnal_baseline(target, horizons, None)).all()
    assert np.array_equal(lookback - 1 + diurnal_offsets(tuple(horizons), season), [6, 11, 29, 6, 29])


def test_skill_is_against_the_better_baseline_and_skips_a_missing_one():
    assert skill_vs_best(1.0, 2.0, 4.0) == 0.5
    assert skill_vs_best(1.0, 4.0, 2.0) == 0.5
    assert skill_vs_best(1.0, 2.0, np.nan) == 0.5
    assert np.isnan(skill_vs_best(1.0, np.nan, np.nan))
    assert np.allclose(skill_vs_best(np.array([1.0, 3.0]), np.array([2.0, 2.0]), np.array([4.0, 1.5])), [0.5, -1.0])


def _board_with(values: dict, n: int = 3) -> Scoreboard:
    board = Scoreboard()
    frame = pd.DataFrame({
        "station": ["A"] * n, "issue_ts": [0] * n, "horizon": np.arange(1, n + 1),
        "target_ts": np.arange(1, n + 1) * 3600, "model_version": ["m@v1"] * n, **values})
    board.add(frame)
    return board


def test_match_scores_model_and_both_baselines_on_the_same_rows_with_band_coverage():
    board = _board_with({"value": [10.0, 11.0, 12.0], "persistence": [9.0] * 3, "diurnal": [10.5, np.nan, 14.0],
                         "lo": [9.0, 10.0, 11.0], "hi": [11.0, 12.0, 13.0], "band_offset": [0.5, 0.0, -0.2]})
    actual = np.array([10.2, 13.0, 12.5])
    errors = board.match(np.array(["A"] * 3, dtype=object), np.arange(1, 4) * 3600, actual)
    assert np.allclose(errors["abs_error"], np.abs([10.0, 11.0, 12.0] - actual))
    assert np.allclose(errors["persistence_abs_error"], np.abs(9.0 - actual))
    d = errors["diurnal_abs_error"].to_numpy()
    assert np.isclose(d[0], 0.3) and np.isnan(d[1]) and np.isclose(d[2], 1.5)
    assert errors["covered"].tolist() == [1.0, 0.0, 1.0]
    # Scores against the model's raw band, which was the published one narrowed by band_offset.
    assert np.allclose(errors["band_score"], [max(9.0 - 10.2, 10.2 - 11.0) + 0.5, 1.0, -0.5 - 0.2])
    assert not len(board)


def test_forecasts_without_band_or_diurnal_still_score():
    board = _board_with({"value": [1.0, 2.0, 3.0], "persistence": [0.0] * 3})
    errors = board.match(np.array(["A"] * 3, dtype=object), np.arange(1, 4) * 3600, np.zeros(3))
    assert errors[["diurnal_abs_error", "covered", "band_score"]].isna().all().all()
    assert errors["abs_error"].tolist() == [1.0, 2.0, 3.0]


def _errors(station: str, model: float, pers: float, day: float, n: int) -> pd.DataFrame:
    return pd.DataFrame({"station": station, "horizon": np.tile([1, 24], n // 2), "abs_error": model,
                         "persistence_abs_error": pers, "diurnal_abs_error": day,
                         "covered": np.tile([1.0, 0.0], n // 2)})


def test_rolling_skill_tracks_diurnal_and_skill_is_vs_the_better_baseline():
    sk = RollingSkill(halflife=50)
    sk.update(pd.concat([_errors("A", 1.0, 2.0, 1.25, 400), _errors("B", 1.0, 1.5, np.nan, 400)]))
    assert np.isclose(sk.station_diurnal["A"], 1.25) and "B" not in sk.station_diurnal
    assert np.isclose(sk.skill("A"), 1 - 1.0 / 1.25) and np.isclose(sk.skill_vs_persistence("A"), 0.5)
    assert np.isclose(sk.skill("B"), 1 - 1.0 / 1.5)  # no diurnal value at all: persistence is the baseline
    assert np.isclose(sk.fleet_diurnal, 1.25) and sk.fleet_model < sk.fleet_diurnal
    assert sk.station_count == {"A": 400, "B": 400}
    sk.forget(["A"])
    assert "A" not in sk.station_diurnal and "A" not in sk.station_model


def test_horizon_skill_and_coverage_per_horizon():
    hs = HorizonSkill(halflife=100)
    hs.update(_errors("A", 1.0, 2.0, 1.6, 400))
    assert hs.horizons() == [1, 24]
    assert np.isclose(hs.coverage[1], 1.0) and np.isclose(hs.coverage[24], 0.0)
    assert np.isclose(hs.coverage_all, 0.5, atol=0.01)
    assert np.isclose(hs.skill(24), 1 - 1.0 / 1.6)


def test_error_summary_per_horizon_has_both_baselines_skill_and_coverage():
    errors = pd.concat([_errors("A", 1.0, 2.0, 4.0, 10), _errors("B", 3.0, 2.0, 1.0, 10)], ignore_index=True)
    table = error_summary(errors)
    assert list(table.index) == [1, 24, "all"]
    row = table.loc["all"]
    assert np.isclose(row["mae"], 2.0) and np.isclose(row["persistence_mae"], 2.0)
    assert np.isclose(row["diurnal_mae"], 2.5) and np.isclose(row["skill"], 0.0)
    assert np.isclose(table.loc[1, "coverage"], 1.0) and np.isclose(row["coverage"], 0.5) and row["n"] == 20
    by_station = error_summary(errors, "station")
    assert np.isclose(by_station.loc["B", "skill"], 1 - 3.0 / 1.0)
