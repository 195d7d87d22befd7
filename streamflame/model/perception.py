"""Causal normalisation and FLAME's local perception, in a form that streams.

Causal RevIN (FlowState), exponentially weighted per patch so that an unbounded stream
keeps a bounded, recent notion of level and scale:
    w_k  = g w_{k-1}  + sum_i m_i               (m_i: observed mask of patch k)
    s1_k = g s1_{k-1} + sum_i m_i (x_i - ref)   (ref: the series' first observed value,
    s2_k = g s2_{k-1} + sum_i m_i (x_i - ref)^2  kept for numerical range)
    mean_k = ref + s1/w,  var_k = s2/w - (s1/w)^2,  g = 1 - 1/norm_memory (1 = cumulative)
Token k is normalised with the statistics *through* patch k (never later ones); forecasts
are de-normalised with the latest. Statistics are float64 whatever the model dtype.

Local perception (FLAME, made causal): the dominant period P of the last W raw
observations comes from the autocorrelation of their first differences, computed with an
FFT (Wiener-Khinchin); the "environment" - the last P observations (one cycle) - is
compressed into LegT (Legendre) coefficients that are added to the token. The same period
gives every future step a seasonal hint: the value one cycle earlier.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .hippo import legt_coefficients

STATS = 3  # (w, s1, s2)


def patch_moments(patches: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """patches (b,T,p) raw with NaN, ref (b,) -> per-patch (w, s1, s2) (b,T,3) float64."""
    x = patches.double() - ref[:, None, None]
    m = ~torch.isnan(x)
    x = torch.where(m, x, torch.zeros_like(x))
    return torch.stack([m.double().sum(-1), x.sum(-1), (x * x).sum(-1)], dim=-1)


def first_reference(patches: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Keep ref where set; else the first observed value of these patches (NaN if none)."""
    flat = patches.double().flatten(1)
    obs = ~torch.isnan(flat)
    idx = obs.to(torch.int64).argmax(dim=1)
    first = flat.gather(1, idx[:, None])[:, 0]
    first = torch.where(obs.any(1), first, torch.full_like(first, float("nan")))
    return torch.where(torch.isnan(ref), first, ref)


def scan_stats(moments: torch.Tensor, stats0: torch.Tensor, decay: float) -> torch.Tensor:
    """Exponentially weighted running sums: moments (b,T,3), stats0 (b,3) -> stats (b,T,3).

    The parallel form: stats_k = g^(k+1) stats0 + sum_{j<=k} g^(k-j) moments_j (float64).
    """
    T = moments.shape[1]
    k = torch.arange(T, dtype=torch.float64, device=moments.device)
    lag = (k[:, None] - k[None, :])
    L = torch.where(lag >= 0, decay ** lag.clamp_min(0), torch.zeros_like(lag))   # (T, T)
    return torch.einsum("kj,bjs->bks", L, moments) + (decay ** (k + 1))[None, :, None] * stats0[:, None, :]


def mean_std(stats: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """stats (...,3), ref broadcastable to (...) -> mean, std (float64); (0, 1) before any data."""
    w, s1, s2 = stats.unbind(-1)
    has = w > 0
    wsafe = torch.where(has, w, torch.ones_like(w))
    mu = s1 / wsafe
    var = (s2 / wsafe - mu * mu).clamp_min(0)
    ref = torch.nan_to_num(ref, nan=0.0)
    mean = torch.where(has, ref + mu, torch.zeros_like(mu))
    std = torch.sqrt(var + 1e-12 * mean * mean + 1e-10)
    return mean, torch.where(has, std, torch.ones_like(std))


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, clip: float) -> torch.Tensor:
    """x (*lead, ...) raw, mean / std (*lead) -> (x - mean) / std (float64) clipped to +-clip: the
    scale the model reads and scores values on (NaN stays NaN)."""
    extra = (1,) * (x.ndim - mean.ndim)
    return ((x.double() - mean.reshape(mean.shape + extra)) / std.reshape(std.shape + extra)).clamp(-clip, clip)


DAY_SECONDS = 86_400.0


def calendar_steps(step_seconds: float | None) -> tuple[float, float]:
    """The day and the week in sampling steps for a step of ``step_seconds`` (0 = unknown or not a
    cycle this sampling can show: a step of a day or more has no daily cycle)."""
    if step_seconds is None or not step_seconds > 0 or step_seconds != step_seconds:
        return 0.0, 0.0
    day = DAY_SECONDS / float(step_seconds)
    week = 7 * day
    return (day if day >= 2 else 0.0), (week if week >= 2 else 0.0)


def autocorrelation(window: torch.Tensor) -> torch.Tensor:
    """window (..., W) raw values with NaN -> normalised autocorrelation (..., W) of the de-meaned,
    linearly detrended window via FFT (float64); lag 0 is 1. Each lag is normalised by its number
    of observed pairs (so gaps do not bias it); lags with fewer than W/4 pairs are 0."""
    x = window.double()
    m = ~torch.isnan(x)
    mf = m.double()
    cnt = mf.sum(-1, keepdim=True).clamp_min(1)
    x = torch.where(m, x - torch.where(m, x, 0).sum(-1, keepdim=True) / cnt, 0)      # de-mean
    t = torch.arange(x.shape[-1], dtype=x.dtype, device=x.device)
    t = torch.where(m, t - (t * mf).sum(-1, keepdim=True) / cnt, 0)
    x = torch.where(m, x - t * (t * x).sum(-1, keepdim=True) / (t * t).sum(-1, keepdim=True).clamp_min(1e-12), 0)
    n = x.shape[-1]
    corr = lambda a: torch.fft.irfft(_power(torch.fft.rfft(a, n=2 * n)), n=2 * n)[..., :n]
    # observed pairs per lag: c - lag exactly (0 past c) for a window whose c observations form one
    # unbroken run - no gap, or only a missing start as in a young series (what the rounded FFT
    # gives too) - so the FFT of the mask is only run for windows with a gap inside
    lag = torch.arange(n, device=x.device)
    count = m.sum(-1, keepdim=True)
    first = torch.where(m, lag, n).amin(-1, keepdim=True)
    last = torch.where(m, lag, -1).amax(-1, keepdim=True)
    pairs = (count - lag).clamp_min(0).to(x.dtype)
    holed = (last - first + 1 > count)[..., 0]
    if bool(holed.any()):
        pairs[holed] = corr(mf[holed]).round()
    acf = corr(x) / pairs.clamp_min(1)
    return torch.where(pairs >= n // 4, acf, 0) / acf[..., :1].clamp_min(1e-300)


def _power(spectrum: torch.Tensor) -> torch.Tensor:
    """|X|^2 of a complex spectrum as re^2 + im^2 (two roundings fewer than abs()^2 with its
    square root, and ~6x faster on the CPU; elementwise, so a row's bits do not depend on the batch)."""
    return spectrum.real.square() + spectrum.imag.square()


def dominant_period(window: torch.Tensor, min_period: int, calendar: torch.Tensor | None = None) -> torch.Tensor:
    """window (..., W) raw values with NaN -> period (...,) int64 in [min_period, 3W/4], 0 = none.

    From the :func:`autocorrelation`: a candidate lag is a local maximum; its *prominence* is how
    far it rises above the lowest correlation at any shorter lag (a seasonal peak follows a trough;
    a smooth or trending series' slow decay has none). The detected period is the most prominent
    candidate up to W/2, with a mild preference for shorter lags (multiples of a period are as
    prominent), kept when its prominence and its correlation both exceed 0.2.

    ``calendar`` (..., C) float: periods known from the sampling step (a day and a week in steps,
    0 = unknown). A calendar period P <= 3W/4 is a candidate too, scored by its correlation (the
    best of lags P-1..P+1, since P need not be whole) with the same mild preference for shorter
    lags; the candidate of highest score above 0.2 wins over the detected one, scored alike.
    Without calendar periods the result is the detector's alone.
    """
    acf = autocorrelation(window)
    n = acf.shape[-1]
    hi = n // 2
    lags = torch.arange(min_period, hi + 1, device=window.device)
    r = acf[..., min_period - 1: hi + 2]                              # lags min_period-1 .. hi+1
    mid = r[..., 1:-1]
    trough = torch.cummin(acf[..., :hi + 1], dim=-1).values[..., min_period:hi + 1]
    prominence = mid - trough
    peak = (mid >= r[..., :-2]) & (mid >= r[..., 2:]) & (prominence > 0.2) & (mid > 0.2)
    score = torch.where(peak, prominence * (1 - 0.25 * lags / hi), torch.full_like(mid, -1.0))
    best = score.argmax(-1)
    period = best + min_period
    period = torch.where(score.gather(-1, best[..., None])[..., 0] > 0, period, torch.zeros_like(period))
    if calendar is None:
        return period
    top = 3 * n // 4
    cal = calendar.double().round().to(torch.int64)                  # (..., C)
    near = (cal[..., None] + torch.arange(-1, 2, device=window.device)).clamp(0, n - 1)   # (..., C, 3)
    a = acf.unsqueeze(-2).expand(*near.shape[:-1], n).gather(-1, near)                   # (..., C, 3)
    a_best, off = a.max(-1)
    lag_c = near.gather(-1, off[..., None])[..., 0]
    ok = (cal >= min_period) & (cal <= top) & (a_best > 0.2)
    s_cal = torch.where(ok, a_best * (1 - 0.25 * lag_c / top), torch.full_like(a_best, -1.0))
    a_det = acf.gather(-1, period[..., None])[..., 0]
    s_det = torch.where(period > 0, a_det * (1 - 0.25 * period / top), torch.full_like(a_det, -1.0))
    s_all = torch.cat([s_det[..., None], s_cal], -1)
    lag_all = torch.cat([period[..., None], lag_c], -1)
    pick = s_all.argmax(-1, keepdim=True)
    return torch.where(s_all.gather(-1, pick)[..., 0] > 0, lag_all.gather(-1, pick)[..., 0], period)


def env_features(window: torch.Tensor, period: torch.Tensor, mean, std, cfg) -> torch.Tensor:
    """LegT coefficients of the last cycle (normalised) + log cycle length + missing fraction.

    window (..., W) raw with NaN, period (...,), mean/std (...,) -> (..., legt_order + 2)
    """
    W, p = window.shape[-1], cfg.patch_len
    theta = torch.where(period > 0, period.clamp(p, W), torch.full_like(period, 2 * p))
    valid = ~torch.isnan(window)
    z = normalise(window, mean, std, cfg.clip)
    z = torch.where(valid, z, 0).to(window.dtype)
    coef = legt_coefficients(z, valid, theta, cfg.legt_order)
    extra = torch.stack([torch.log(theta.to(window.dtype) / p), 1 - valid.to(window.dtype).mean(-1)], -1)
    return torch.cat([coef, extra], -1)


@dataclass
class DataFeatures:
    """What the perception derives from the raw data alone at each of T patch boundaries (no
    weights): the period (b, T) int64 and the environment (b, T, legt_order + 2). Training
    computes them beside the step (DataLoader workers) with :func:`data_features`, the function
    the model calls itself, so they are the same bits."""
    period: torch.Tensor
    env: torch.Tensor


def data_features(windows: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, cal: torch.Tensor,
                  cfg) -> DataFeatures:
    """windows (b, T, W) raw, mean/std (b, T) float64, cal (b, 2) -> the period and environment."""
    b, T = windows.shape[:2]
    with torch.no_grad():
        period = dominant_period(windows, cfg.min_period, cal[:, None].expand(b, T, 2))
        return DataFeatures(period, env_features(windows, period, mean, std, cfg))


def last_observed(window: torch.Tensor) -> torch.Tensor:
    """window (b, W) -> the last non-NaN value (b,) (NaN if none)."""
    W = window.shape[-1]
    valid = ~torch.isnan(window)
    last_idx = torch.where(valid, torch.arange(W, device=window.device), -1).max(-1).values
    last = window.gather(-1, last_idx.clamp_min(0)[..., None])[..., 0]
    return torch.where(last_idx >= 0, last, torch.full_like(last, float("nan")))


def observed_range(window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """window (m, W) raw -> its observed mask (m, W) and its min, max (m,) over observed values
    (+inf, -inf where none): what prev_bounds and floors both start from."""
    seen = ~torch.isnan(window)
    return (seen, torch.where(seen, window, float("inf")).amin(-1),
            torch.where(seen, window, float("-inf")).amax(-1))


def prev_bounds(window: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, clip: float) -> torch.Tensor:
    """Where a drawn predecessor's end may condition the next future patch (ar_patches).

    window (m, W) raw, mean/std (m,) -> (m, 2) normalised [lo, hi]: the window's observed range
    widened by half its width on each side, within +-clip (+-clip for an empty window). A drawn
    spike far outside anything the series showed would otherwise move the next patch's base, whose
    couplings amplify it again: on intermittent series the paths ran away over a few patches
    (docs/model.md, row 15). Training bounds the teacher-forced ends the same way."""
    seen, lo, hi = observed_range(window)
    lo, hi = lo.double(), hi.double()
    half = 0.5 * (hi - lo)
    b = torch.stack([(lo - half - mean) / std, (hi + half - mean) / std], -1)
    b = torch.where(seen.any(-1, keepdim=True), b, torch.tensor([-clip, clip], dtype=b.dtype, device=b.device))
    return torch.nan_to_num(b, nan=0.0).clamp(-clip, clip)


FLOOR_SHARE = 0.05      # a value held by at least this share of the window's observations is a floor (ceiling)


def floors(window: torch.Tensor, share: float = FLOOR_SHARE) -> torch.Tensor:
    """The floor and ceiling a window shows: window (m, W) raw -> (m, 2) float64 [lo, hi], the
    window's minimum (maximum) where at least ``share`` of its observations sit exactly there (a
    censored or physically bounded series: no rain, no load, a closed car park, humidity at 100 %),
    else -inf (+inf). A temperature or a price seldom repeats its extreme: no bound."""
    seen, lo, hi = observed_range(window)
    n = seen.sum(-1).clamp_min(1)
    at_lo = ((window == lo[:, None]).sum(-1) >= share * n) & seen.any(-1)
    at_hi = ((window == hi[:, None]).sum(-1) >= share * n) & seen.any(-1)
    inf = torch.full_like(lo, float("inf"), dtype=torch.float64)
    return torch.stack([torch.where(at_lo, lo.double(), -inf), torch.where(at_hi, hi.double(), inf)], -1)


def seasonal_hint(window: torch.Tensor, period: torch.Tensor, steps: int) -> torch.Tensor:
    """Seasonal-naive values for the next `steps` steps after the window's end.

    window (b, W) raw, period (b,) -> (b, steps) raw (NaN where unknown). With a period P the
    hint for step s is x[t - P + 1 + ((s - 1) mod P)]; without one, the last observed value.
    """
    b, W = window.shape
    s = torch.arange(steps, device=window.device)
    P = period.clamp_min(1)[:, None]
    idx = (W - P + s[None, :] % P).clamp(0, W - 1)
    seas = window.gather(1, idx)
    valid = ~torch.isnan(window)
    last_idx = torch.where(valid, torch.arange(W, device=window.device), -1).max(1).values
    last = window.gather(1, last_idx.clamp_min(0)[:, None])
    last = torch.where(last_idx[:, None] >= 0, last, torch.full_like(last, float("nan")))
    return torch.where(period[:, None] > 0, seas, last.expand(b, steps))
