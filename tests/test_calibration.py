"""Band calibration: coverage counts what it should, and the conformal shifts reach the nominal levels."""

from __future__ import annotations

import numpy as np
import pytest

from forecaster.calibration import BandCalibration, calibrate, conformal_quantile, coverage


def test_coverage_of_a_known_band():
    actual = np.arange(10, dtype=np.float32)[:, None].repeat(2, axis=1)  # 0..9 at two horizons
    pred = np.zeros((10, 2, 3), np.float32)
    pred[:, 0] = [2, 5, 7]  # inclusive band [2, 7] holds 2..7: 6 of 10
    pred[:, 1] = [0, 5, 9]  # [0, 9]: all 10
    assert coverage(pred, actual).tolist() == pytest.approx([0.6, 1.0])


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1, 10, dtype=np.float64)[:, None]  # 1..9, n = 9
    # ceil((9 + 1) * 0.8) = 8th smallest
    assert conformal_quantile(scores, 0.8)[0] == 8
    assert conformal_quantile(scores, 0.999)[0] == 9  # never past the largest


def test_calibration_fixes_a_too_narrow_and_a_too_wide_band():
    rng = np.random.default_rng(0)
    n, h = 20000, 2
    actual = rng.normal(0.0, 1.0, (n, h)).astype(np.float32)
    z = 1.2815516  # N(0, 1) P10/P90
    pred = np.zeros((n, h, 3), np.float32)
    pred[:, 0] = [-0.5 * z, 0, 0.5 * z]  # too narrow: covers about 48 %
    pred[:, 1] = [-2 * z, 0, 1 * z]  # too wide below, right above: about 88 %
    assert coverage(pred, actual)[0] < 0.55 and coverage(pred, actual)[1] > 0.85
    band = calibrate(pred, actual, (0.1, 0.5, 0.9))
    # The shifts move each edge onto the true quantile: -z and +z.
    assert band.lower == pytest.approx([-0.5 * z, z], abs=0.05)
    assert band.upper == pytest.approx([0.5 * z, 0.0], abs=0.05)
    fresh = rng.normal(0.0, 1.0, (n, h)).astype(np.float32)  # new data from the same distribution
    cov = coverage(band.apply(pred, 1), fresh)
    assert cov == pytest.approx([0.8, 0.8], abs=0.015)
    assert BandCalibration.from_dict(band.to_dict()) == band


def test_no_calibration_without_a_band_or_enough_windows():
    pred = np.zeros((10, 1, 3), np.float32)
    assert calibrate(pred, np.zeros((10, 1), np.float32), (0.1, 0.5, 0.9)) is None
    assert calibrate(np.zeros((100, 1, 1)), np.zeros((100, 1)), ()) is None


def test_shifted_edges_never_cross_the_median():
    band = BandCalibration(lower=(5.0,), upper=(-5.0,), windows=100)
    out = band.apply(np.array([[[-1.0, 0.0, 1.0]]], np.float32), 1)
    assert out.tolist() == [[[0.0, 0.0, 0.0]]]
