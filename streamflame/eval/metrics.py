"""Forecast metrics and their aggregation (GIFT-Eval / Chronos conventions).

Per forecast window with targets ``y`` (H,), quantile forecasts ``q`` (Q, H) at levels
``tau`` (Q,) and the series' history before the window:

* quantile loss      ``QL = sum_tau 2 * sum_t |(y_t - q_tau,t) * (1{y_t <= q_tau,t} - tau)|``
* WQL                ``QL / (Q * sum_t |y_t|)`` (gluonts ``MeanWeightedSumQuantileLoss``,
  reported as CRPS); pooled per series over its windows: ``sum QL / (Q * sum |y|)``
* MASE               ``mean_t |y_t - median_t| / seasonal_error`` where ``seasonal_error`` is
  the mean absolute seasonal difference ``|y_s - y_{s-m}|`` over the history (lag 1 when
  the history is not longer than m); per series the mean over its windows
* coverage           share of targets with ``q0.1 <= y <= q0.9`` (the 80 % interval)

NaN targets are excluded from every sum and count. Series are compared to the seasonal
naive reference by the ratio of their per-series metric, and ratios are aggregated by the
geometric mean over series (:func:`geometric_mean_ratio`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.constants import DEFAULT_QUANTILES

QUANTILES: tuple[float, ...] = DEFAULT_QUANTILES    # the eval contract's levels are the service default
RATIO_FLOOR = 1e-4  # a perfect forecast against an imperfect reference counts as this ratio


def quantile_loss(y: np.ndarray, q: np.ndarray, levels):
    """``sum_tau 2 * sum_t |(y - q)(1{y <= q} - tau)|`` over non-NaN targets.

    Args:
        y: targets (H,), NaN = missing.
        q: quantile forecasts (Q, H), row i at level ``levels[i]``.
        levels: (Q,) quantile levels in (0, 1).

    Many windows at once: ``y`` (B, H) and ``q`` (B, Q, H) give a (B,) array.
    """
    y = np.asarray(y, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    tau = np.asarray(levels, dtype=np.float64)[:, None]
    if y.ndim == 1:
        keep = ~np.isnan(y)
        diff = y[keep][None, :] - q[:, keep]
        return float(2.0 * np.sum(np.abs(diff * ((diff <= 0).astype(np.float64) - tau))))
    diff = y[:, None, :] - q
    loss = np.abs(diff * ((diff <= 0).astype(np.float64) - tau))
    return 2.0 * np.where(np.isnan(y)[:, None, :], 0.0, loss).sum(axis=(1, 2))


def wql(y: np.ndarray, q: np.ndarray, levels) -> float:
    """Weighted quantile loss of one window: ``quantile_loss / (Q * sum |y|)`` (NaN if sum |y| == 0)."""
    denom = len(levels) * np.nansum(np.abs(np.asarray(y, dtype=np.float64)))
    return quantile_loss(y, q, levels) / denom if denom > 0 else float("nan")


def seasonal_error(history: np.ndarray, m: int) -> float:
    """Mean of ``|h_s - h_{s-m}|`` over pairs with both values observed (lag 1 if ``len <= m``).

    NaN when no pair is observed.
    """
    h = np.asarray(history, dtype=np.float64)
    lag = m if len(h) > m else 1
    total, count = abs_diff_sum(h, lag)
    return total / count if count else float("nan")


def abs_diff_sum(values: np.ndarray, lag: int) -> tuple[float, int]:
    """Sum and number of ``|v_s - v_{s-lag}|`` over pairs with both values observed.

    The additive form of :func:`seasonal_error`, for scales kept incrementally
    (the worker's online MASE adds one patch at a time).
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) <= lag:
        return 0.0, 0
    d = np.abs(v[lag:] - v[:-lag])
    d = d[~np.isnan(d)]
    return float(d.sum()), int(d.size)


def seasonal_errors_at(values: np.ndarray, m: int, ends: np.ndarray) -> np.ndarray:
    """:func:`seasonal_error` of ``values[:e]`` for many history ends ``e`` at once (O(T)).

    Args:
        values: the whole series (T,).
        m: seasonality.
        ends: (K,) history lengths.
    """
    v = np.asarray(values, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.int64)
    out = np.full(ends.shape, np.nan)
    for lag in {m, 1}:
        if lag >= len(v):
            continue
        d = np.abs(v[lag:] - v[:-lag])
        ok = ~np.isnan(d)
        csum = np.concatenate([[0.0], np.cumsum(np.where(ok, d, 0.0))])
        ccnt = np.concatenate([[0], np.cumsum(ok)])
        sel = (ends > m) if lag == m else (ends <= m)
        n_pairs = np.clip(ends[sel] - lag, 0, None)
        cnt = ccnt[n_pairs]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sel] = np.where(cnt > 0, csum[n_pairs] / np.maximum(cnt, 1), np.nan)
    return out


def mase(y: np.ndarray, median: np.ndarray, history: np.ndarray, m: int) -> float:
    """Mean absolute scaled error of the median forecast (NaN targets excluded)."""
    y = np.asarray(y, dtype=np.float64)
    keep = ~np.isnan(y)
    if not keep.any():
        return float("nan")
    scale = seasonal_error(history, m)
    mae = float(np.mean(np.abs(y[keep] - np.asarray(median, dtype=np.float64)[keep])))
    if not scale > 0:
        return float("nan")
    return mae / scale


def coverage(y: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Share of non-NaN targets inside ``[lo, hi]`` (NaN if there are none).

    ``y`` (H,) with ``lo``/``hi`` (H,) gives a float. The last axis is time and
    the others broadcast: e.g. ``y`` (B, 1, H) with ``lo``/``hi`` (B, K, H)
    gives the (B, K) shares of K intervals of B windows.
    """
    y = np.asarray(y, dtype=np.float64)
    lo, hi = np.asarray(lo), np.asarray(hi)
    keep = ~np.isnan(y)
    n = keep.sum(axis=-1)
    inside = ((y >= lo) & (y <= hi) & keep).sum(axis=-1)
    share = np.where(n > 0, inside / np.maximum(n, 1), np.nan)
    return float(share) if share.ndim == 0 else share


@dataclass(frozen=True)
class RatioSummary:
    """Geometric mean of per-series ratios and what was left out of it."""

    value: float       # geometric mean (NaN if no series could be used)
    n_used: int
    n_excluded: int    # NaN metric on either side, or a zero reference with a non-zero model metric


def series_ratios(model: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-series ratio ``model / reference`` with the zero/NaN rules made explicit.

    * either side NaN                    -> NaN (excluded)
    * both zero (both perfect)           -> 1
    * reference zero, model > 0          -> NaN (excluded: the ratio is infinite)
    * model zero, reference > 0          -> RATIO_FLOOR (so the log stays finite)
    """
    a = np.asarray(model, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    out = np.full(a.shape, np.nan)
    finite = ~(np.isnan(a) | np.isnan(b))
    both_zero = finite & (a == 0) & (b == 0)
    normal = finite & (b > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[normal] = np.maximum(a[normal] / b[normal], RATIO_FLOOR)
    out[both_zero] = 1.0
    return out


def geometric_mean_ratio(model: np.ndarray, reference: np.ndarray) -> RatioSummary:
    """Geometric mean over series of ``model / reference`` (rules in :func:`series_ratios`)."""
    r = series_ratios(model, reference)
    used = r[~np.isnan(r)]
    value = float(np.exp(np.mean(np.log(used)))) if used.size else float("nan")
    return RatioSummary(value, int(used.size), int(r.size - used.size))


PATCH_STEPS = 48   # StreamFlame's patch length: where its future patches meet on the grid


def boundary_jump(path: np.ndarray, first_index: int, patch: int = PATCH_STEPS) -> tuple[float, int, float, int]:
    """Step changes of one forecast path, split by where they fall on the patch grid.

    Args:
        path: (H,) a forecast path (e.g. the median), NaN = not scored.
        first_index: grid index of step 1 (the history length L); patches start at grid indices
            that are multiples of ``patch`` (the model's patches run from the series' first value).
        patch: patch length.

    Returns ``(sum_across, n_across, sum_inside, n_inside)``: sums and counts of ``|path_s - path_{s-1}|``
    where step ``s`` starts a patch (across a boundary) and where it does not (inside a patch).
    The coherence figure is ``(sum_across / n_across) / (sum_inside / n_inside)``; a path with
    patch artefacts has a figure well above the data's own at the same positions.
    """
    p = np.asarray(path, dtype=np.float64)
    d = np.abs(np.diff(p))                                          # change into steps 2..H
    idx = first_index + np.arange(1, len(p))                         # grid index of steps 2..H
    ok = ~np.isnan(d)
    across = ok & (idx % patch == 0)
    inside = ok & (idx % patch != 0)
    return float(d[across].sum()), int(across.sum()), float(d[inside].sum()), int(inside.sum())


def jump_ratio(sum_across: float, n_across: int, sum_inside: float, n_inside: int) -> float:
    """Mean |step change| across patch boundaries over the mean inside patches (NaN if undefined)."""
    if n_across == 0 or n_inside == 0 or sum_inside <= 0:
        return float("nan")
    return (sum_across / n_across) / (sum_inside / n_inside)
