"""Training-data mix beyond plain real and synthetic sequences: TSMixup and TiRex-style augmentations.

All functions take and return float arrays of one sequence (L,) with NaN = missing, and draw
from the generator they are given, so a batch stays a pure function of (seed, step).

- TSMixup (Chronos): a convex mix of k <= 3 real sequences, each standardised over its observed
  values first, weights ~ Dirichlet(alpha); new shapes from real ones, unbounded in number.
- Amplitude modulation (TiRex): multiply the de-meaned sequence by a slow positive envelope,
  so the model sees cycles whose size drifts.
- Censoring (TiRex): clip at a random upper or lower quantile, as a saturated or floored sensor.
- Spike injection (TiRex): a few isolated outliers of 3-8 standard deviations.
- Downsampling to coarser rates is the real sampler's aggregation (``factor``), not repeated here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    amplitude_modulation: float = 0.0   # probability per sequence
    censor: float = 0.0
    spikes: float = 0.0
    tsmixup_k: int = 3                  # at most this many series in a TSMixup
    tsmixup_alpha: float = 1.5          # Dirichlet concentration of the mix weights


def standardise(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the observed values (std 1 for a constant or empty sequence)."""
    obs = ~np.isnan(x)
    if not obs.any():
        return x.copy()
    mu = float(np.mean(x[obs]))
    sd = float(np.std(x[obs]))
    return (x - mu) / (sd if sd > 0 else 1.0)


def tsmixup(parts: list[np.ndarray], rng: np.random.Generator, alpha: float) -> np.ndarray:
    """Convex mix of standardised sequences of equal length; a step is missing where any part is."""
    w = rng.dirichlet(np.full(len(parts), alpha))
    return np.sum([wi * standardise(p) for wi, p in zip(w, parts)], axis=0)


def amplitude_modulation(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale deviations from the mean by a slow envelope exp(a * smooth noise), a in [0.2, 0.8]."""
    obs = ~np.isnan(x)
    if obs.sum() < 2:
        return x
    L = len(x)
    knots = max(2, L // int(rng.integers(96, 1024)))
    env = np.interp(np.arange(L), np.linspace(0, L - 1, knots + 1), rng.normal(size=knots + 1))
    mu = float(np.mean(x[obs]))
    return mu + (x - mu) * np.exp(rng.uniform(0.2, 0.8) * env)


def censor(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Clip at the q-quantile from above or below, q in [0.7, 0.95] of the observed values."""
    obs = ~np.isnan(x)
    if obs.sum() < 2:
        return x
    q = rng.uniform(0.7, 0.95)
    if rng.random() < 0.5:
        return np.where(obs, np.minimum(x, np.quantile(x[obs], q)), np.nan)
    return np.where(obs, np.maximum(x, np.quantile(x[obs], 1 - q)), np.nan)


def spikes(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-5 isolated outliers of 3-8 standard deviations (of the first differences, a local noise scale)."""
    obs = np.flatnonzero(~np.isnan(x))
    if len(obs) < 3:
        return x
    d = np.diff(x[obs])
    sd = float(np.std(d)) or float(np.std(x[obs])) or 1.0
    y = x.copy()
    at = rng.choice(obs, size=min(len(obs), int(rng.integers(1, 6))), replace=False)
    y[at] += rng.choice([-1.0, 1.0], size=len(at)) * rng.uniform(3, 8, size=len(at)) * sd
    return y


def augment(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Apply each augmentation with its probability (in a fixed order; the draws are always made,
    so one family's probability does not shift the random stream of the others)."""
    u = rng.random(3)
    if u[0] < cfg.amplitude_modulation:
        x = amplitude_modulation(x, rng)
    if u[1] < cfg.censor:
        x = censor(x, rng)
    if u[2] < cfg.spikes:
        x = spikes(x, rng)
    return x
