"""Metrics checked against their definitions computed independently in the test."""
from __future__ import annotations

import math

import numpy as np
import pytest

from streamflame.eval.baselines import seasonal_naive, seasonal_naive_point
from streamflame.eval.metrics import (QUANTILES, RATIO_FLOOR, coverage, geometric_mean_ratio, mase, quantile_loss,
                                      seasonal_error, seasonal_errors_at, series_ratios, wql)


def pinball(y: float, q: float, tau: float) -> float:
    """The textbook quantile (pinball) loss of one target."""
    return tau * (y - q) if y >= q else (1 - tau) * (q - y)


def test_wql_matches_the_definition_by_loops():
    rng = np.random.default_rng(0)
    y = rng.normal(10, 3, size=7)
    q = np.sort(rng.normal(10, 3, size=(9, 7)), axis=0)
    expected_ql = sum(2 * pinball(y[t], q[i, t], tau) for i, tau in enumerate(QUANTILES) for t in range(7))
    assert quantile_loss(y, q, QUANTILES) == pytest.approx(expected_ql, rel=1e-12)
    assert wql(y, q, QUANTILES) == pytest.approx(expected_ql / (9 * np.abs(y).sum()), rel=1e-12)


def test_nan_targets_are_excluded_everywhere():
    y = np.array([1.0, np.nan, 3.0])
    q = np.array([[0.5, 100.0, 2.0], [2.0, -100.0, 4.0]])
    levels = (0.1, 0.9)
    expected = sum(2 * pinball(y[t], q[i, t], tau) for i, tau in enumerate(levels) for t in (0, 2))
    assert quantile_loss(y, q, levels) == pytest.approx(expected)
    assert wql(y, q, levels) == pytest.approx(expected / (2 * 4.0))
    assert coverage(y, q[0], q[1]) == 1.0
    history = np.array([1.0, 2.0, 2.0, 4.0])  # seasonal error (m=2): (|2-1| + |4-2|) / 2
    assert mase(y, np.array([1.0, 50.0, 2.0]), history, 2) == pytest.approx(((0 + 1) / 2) / 1.5)


def test_seasonal_error_and_mase_by_hand():
    history = np.array([1.0, 5.0, 2.0, 7.0, np.nan, 6.0, 4.0])
    # m = 2: pairs (t, t-2) with both observed: |2-1|, |7-5|, |6-7|, |4-nan| skipped, |nan-2| skipped
    assert seasonal_error(history, 2) == pytest.approx((1 + 2 + 1) / 3)
    # history not longer than m: lag 1
    assert seasonal_error(np.array([1.0, 3.0, 2.0]), 24) == pytest.approx((2 + 1) / 2)
    y, median = np.array([3.0, 8.0]), np.array([4.0, 6.0])
    assert mase(y, median, history, 2) == pytest.approx(((1 + 2) / 2) / ((1 + 2 + 1) / 3))
    assert math.isnan(mase(y, median, np.array([2.0, 2.0, 2.0]), 1))  # zero scale: undefined


def test_seasonal_errors_at_agrees_with_the_scalar_definition():
    rng = np.random.default_rng(3)
    v = rng.normal(size=300)
    v[rng.choice(300, 40, replace=False)] = np.nan
    ends = np.array([2, 5, 24, 25, 26, 100, 299, 300])
    got = seasonal_errors_at(v, 24, ends)
    want = [seasonal_error(v[:e], 24) for e in ends]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_coverage_counts_the_closed_interval():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert coverage(y, np.array([1.0, 2.5, 0.0, 5.0]), np.array([1.0, 3.0, 3.0, 6.0])) == 0.5


def test_ratio_rules_and_geometric_mean():
    r = series_ratios(np.array([2.0, 0.0, 0.0, 1.0, np.nan, 3.0]), np.array([1.0, 0.0, 4.0, 0.0, 1.0, 6.0]))
    assert r[0] == 2.0 and r[1] == 1.0 and r[2] == RATIO_FLOOR and r[5] == 0.5
    assert math.isnan(r[3]) and math.isnan(r[4])
    g = geometric_mean_ratio(np.array([2.0, 1.0, 5.0, np.nan]), np.array([1.0, 2.0, 0.0, 1.0]))
    assert g.value == pytest.approx(1.0) and g.n_used == 2 and g.n_excluded == 2


def test_seasonal_naive_point_repeats_the_last_season_and_skips_gaps():
    history = np.array([1.0, 2.0, 3.0, 10.0, np.nan, 30.0])
    point = seasonal_naive_point(history, 7, 3)
    # Step h looks k = ceil(h/3) seasons back, further back past NaN, and falls back to the
    # last observed value (30) before the start.
    expected = []
    n = len(history)
    for h in range(1, 8):
        idx = n + h - 1 - 3 * math.ceil(h / 3)
        while idx >= 0 and np.isnan(history[idx]):
            idx -= 3
        expected.append(history[idx] if idx >= 0 else 30.0)
    np.testing.assert_array_equal(point, expected)
    assert point[1] == 2.0  # the NaN one season back was replaced by two seasons back


def test_seasonal_naive_quantiles_are_residual_quantiles():
    rng = np.random.default_rng(1)
    m = 4
    history = np.tile([0.0, 5.0, 2.0, 1.0], 50) + rng.normal(0, 1, 200)
    point, q = seasonal_naive(history, 6, m)
    d1 = history[m:] - history[:-m]
    d2 = history[2 * m:] - history[:-2 * m]
    np.testing.assert_allclose(q[:, :4], point[None, :4] + np.quantile(d1, QUANTILES)[:, None])
    np.testing.assert_allclose(q[:, 4:], point[None, 4:] + np.quantile(d2, QUANTILES)[:, None])
    assert np.all(np.diff(q, axis=0) >= 0)


def test_batched_quantile_loss_and_coverage_equal_the_single_window_forms():
    rng = np.random.default_rng(4)
    y = rng.normal(size=(5, 48))
    y[1, [3, 7]] = np.nan
    y[4] = np.nan  # nothing observed
    q = np.sort(rng.normal(size=(5, len(QUANTILES), 48)), axis=1)
    got = quantile_loss(y, q, QUANTILES)
    assert got.shape == (5,)
    for b in range(5):
        assert got[b] == pytest.approx(quantile_loss(y[b], q[b], QUANTILES), rel=1e-12, abs=0)
    cov = coverage(y[:, None, :], q[:, [0, 2]], q[:, [8, 6]])  # 80 % and 40 % intervals of every window
    assert cov.shape == (5, 2)
    for b in range(4):
        assert cov[b, 0] == coverage(y[b], q[b, 0], q[b, 8]) and cov[b, 1] == coverage(y[b], q[b, 2], q[b, 6])
    assert np.isnan(cov[4]).all() and np.isnan(coverage(y[4], q[4, 0], q[4, 8]))


def test_boundary_jump_splits_step_changes_by_the_patch_grid():
    from streamflame.eval.metrics import boundary_jump, jump_ratio

    # a ramp of slope 1 with a jump of 10 where each patch of 4 starts (grid indices 8, 12, ...)
    L, patch = 6, 4
    idx = L + np.arange(12)                                   # grid index of steps 1..12
    path = idx.astype(float) + 10 * (idx // patch)
    s_a, n_a, s_i, n_i = boundary_jump(path, L, patch)
    starts = [i for i in idx[1:] if i % patch == 0]           # 8, 12, 16
    assert (n_a, n_i) == (len(starts), 11 - len(starts))
    assert s_a == 11 * n_a and s_i == 1 * n_i and jump_ratio(s_a, n_a, s_i, n_i) == 11.0
    smooth = boundary_jump(idx.astype(float), L, patch)
    assert jump_ratio(*smooth) == 1.0
    gappy = path.copy()
    gappy[2] = np.nan                                         # both changes touching a missing step drop out
    assert boundary_jump(gappy, L, patch)[1] + boundary_jump(gappy, L, patch)[3] == 11 - 2
    assert np.isnan(jump_ratio(0.0, 0, 5.0, 3))


def test_score_reports_the_median_paths_jumps_and_the_datas_own():
    import pandas as pd

    from streamflame.data.series import Series
    from streamflame.eval.scoring import QUANTILE_COLUMNS, format_summary, score

    t = np.arange(2000)
    s = Series("x", pd.Timestamp("2024-01-01"), "10min", 10 + np.sin(2 * np.pi * t / 144), source="t")
    rows = []
    for L in (1400, 1600):                                    # a stepped forecast: flat inside patches
        steps = np.arange(1, 97)
        grid = L - 1 + steps
        med = s.values[(grid // 48) * 48] + 0.001 * (grid % 48)
        part = pd.DataFrame({"series_id": "x", "origin": s.timestamps()[L - 1].strftime("%Y-%m-%dT%H:%M:%S"),
                             "step": steps, "mean": med})
        for c in QUANTILE_COLUMNS:
            part[c] = med
        rows.append(part)
    banded = []                                               # a smooth median and mean, a band that
    for L in (1400, 1600):                                    # narrows and widens patch by patch
        steps = np.arange(1, 97)
        grid = L - 1 + steps
        med = s.values[grid]
        half = 0.2 + 0.3 * ((grid // 48) % 2)
        part = pd.DataFrame({"series_id": "x", "origin": s.timestamps()[L - 1].strftime("%Y-%m-%dT%H:%M:%S"),
                             "step": steps, "mean": med})
        for c, q in zip(QUANTILE_COLUMNS, np.linspace(-1, 1, len(QUANTILE_COLUMNS))):
            part[c] = med + q * half
        banded.append(part)
    sc = score([s], {"stepped": pd.concat(rows), "banded": pd.concat(banded)})
    summ = sc.summary.set_index("model")
    assert summ.loc["stepped", "jump_ratio"] > 10              # all change at boundaries
    assert summ.loc["stepped", "jump_ratio_mean"] > 10 and summ.loc["stepped", "jump_ratio_band"] > 10
    assert 0.8 < summ.loc["seasonal_naive", "jump_ratio"] < 1.25   # a smooth cycle: no boundary effect
    assert 0.8 < summ.loc["seasonal_naive", "jump_ratio_band"] < 1.25
    assert 0.8 < summ.loc["stepped", "jump_ratio_data"] < 1.25
    assert 0.8 < summ.loc["banded", "jump_ratio"] < 1.25 and 0.8 < summ.loc["banded", "jump_ratio_mean"] < 1.25
    assert summ.loc["banded", "jump_ratio_band"] > 3           # the fan chart's edges jump; the median does not
    text = format_summary(sc.summary)
    assert "jumps" in text and "band's edges" in text
