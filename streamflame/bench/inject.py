"""Labelled anomalies injected into real series, and the scoring of alert episodes
against them (used by ``streamflame bench alerts``; pure numpy, no I/O).

Sizes are in multiples of the series' local noise ``sigma`` at the injection point:
the standard deviation of the first differences over the ``SIGMA_WINDOW`` slots
before it (the largest 2 % left out), divided by sqrt(2) (white noise of std sigma
has first differences of std sigma * sqrt(2)); see :func:`local_sigma`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Injection", "KIND_DETECTED_BY", "local_sigma", "movement", "plan", "apply", "Score", "score"]

SIGMA_WINDOW = 288
# which alert kinds count as detecting an injected kind
KIND_DETECTED_BY = {
    "spike": ("deviation", "out_of_range"),
    "level_shift": ("deviation", "out_of_range"),
    "drift": ("deviation", "out_of_range"),
    "variance": ("deviation",),
    "flatline": ("flatline", "deviation"),
    "dropout": ("dropout",),
}
# (kind, size in sigma, length in slots)
DEFAULT_MENU = (("spike", 6.0, 1), ("spike", 8.0, 1), ("level_shift", 3.0, 48), ("level_shift", 4.0, 48),
                ("drift", 6.0, 24), ("variance", 4.0, 24), ("flatline", 0.0, 24), ("dropout", 0.0, 12))


@dataclass(frozen=True)
class Injection:
    kind: str
    start: int       # first slot affected
    length: int      # slots affected
    size: float      # in sigma
    sigma: float

    @property
    def end(self) -> int:
        return self.start + self.length


def local_sigma(values: np.ndarray, i: int, window: int = SIGMA_WINDOW, robust: bool = False) -> float:
    """The local noise before slot ``i``: the standard deviation of the first differences
    over ``window`` slots, the largest 2 % of them left out (an earlier injection), over
    sqrt(2). ``robust``: 1.4826 x their median absolute deviation instead (smaller than
    the standard deviation where the differences are heavy-tailed)."""
    seg = values[max(0, i - window):i]
    d = np.diff(seg)
    d = d[np.isfinite(d)]
    if len(d) < 8:
        return float("nan")
    if robust:
        mad = float(np.median(np.abs(d - np.median(d)))) * 1.4826 / np.sqrt(2)
        if mad > 0:
            return mad
    a = np.abs(d - np.median(d))
    keep = d[a <= np.quantile(a, 0.98)]
    return float(np.std(keep)) / np.sqrt(2)


def movement(values: np.ndarray) -> str:
    """How a series moves one step at a time, from the lag-1 autocorrelation ``r`` of its first
    differences: ``noisy`` (r < -0.2: noise around a smooth signal, where sigma is the noise),
    ``smooth`` (r > 0.3: trends that persist), else ``walk`` (close to a random walk, where a
    level shift is one jump like the series' own)."""
    d = np.diff(np.asarray(values, dtype=np.float64))
    d = d[np.isfinite(d)]
    d = d - d.mean() if len(d) else d
    den = float(np.dot(d, d))
    r = float(np.dot(d[1:], d[:-1])) / den if den > 0 else 0.0
    return "noisy" if r < -0.2 else ("smooth" if r > 0.3 else "walk")


def plan(values: np.ndarray, rng: np.random.Generator, start: int, spacing: int,
         menu=DEFAULT_MENU) -> list[Injection]:
    """Injections every ``spacing`` slots from ``start``, cycling through ``menu`` from a
    random offset; positions jitter by up to a quarter of the spacing. Points whose
    sigma is not usable (too little data, or zero) are skipped."""
    out = []
    k = int(rng.integers(len(menu)))
    pos = start
    while pos + spacing <= len(values):
        kind, size, length = menu[k % len(menu)]
        at = pos + int(rng.integers(spacing // 4))
        sig = local_sigma(values, at)
        if np.isfinite(sig) and sig > 0 and np.all(np.isfinite(values[at - 4:at + length + 1])):
            out.append(Injection(kind, at, length, size, sig))
        k += 1
        pos += spacing
    return out


def apply(values: np.ndarray, injections: list[Injection], rng: np.random.Generator) -> np.ndarray:
    """A copy of ``values`` with the injections; a dropout's slots become NaN (not sent)."""
    v = values.astype(np.float64).copy()
    for inj in injections:
        a, b, s = inj.start, inj.end, inj.sigma
        sign = 1.0 if rng.random() < 0.5 else -1.0
        if inj.kind == "spike":
            v[a] += sign * inj.size * s
        elif inj.kind == "level_shift":
            v[a:b] += sign * inj.size * s
        elif inj.kind == "drift":
            v[a:b] += sign * inj.size * s * np.arange(1, b - a + 1) / (b - a)
        elif inj.kind == "variance":
            v[a:b] += rng.normal(0.0, s * np.sqrt(inj.size ** 2 - 1.0), b - a)
        elif inj.kind == "flatline":
            v[a:b] = v[a - 1]
        elif inj.kind == "dropout":
            v[a:b] = np.nan
        else:
            raise ValueError(f"unknown injection kind {inj.kind!r}")
    return v


@dataclass
class Score:
    """Per injected kind and size: injected, detected, delays (slots from the first anomalous
    slot to the slot of the opening observation); episodes opened, matched."""

    injected: dict
    detected: dict
    delays: dict
    episodes: int
    matched_episodes: int

    @property
    def precision(self) -> float:
        return self.matched_episodes / self.episodes if self.episodes else float("nan")


def score(injections: list[Injection], opens: list[tuple[str, int]], tolerance: int = 6,
          detected_by: dict = KIND_DETECTED_BY) -> Score:
    """``opens``: (alert kind, slot of the opening observation) of one series' episodes.
    An injection counts as detected by the first open of a matching kind in
    [start, end + tolerance); an open is matched when it falls in such a window of any
    injection (so a long anomaly re-detected twice is not a false episode)."""
    inj_n: dict = {}
    det_n: dict = {}
    delays: dict = {}
    matched = 0
    used = [False] * len(opens)
    for inj in injections:
        key = (inj.kind, inj.size)
        inj_n[key] = inj_n.get(key, 0) + 1
        kinds = detected_by[inj.kind]
        hit = None
        for i, (k, slot) in enumerate(opens):
            if k in kinds and inj.start <= slot < inj.end + tolerance:
                used[i] = True
                if hit is None:
                    hit = slot
        if hit is not None:
            det_n[key] = det_n.get(key, 0) + 1
            delays.setdefault(key, []).append(hit - inj.start)
    for i, (k, slot) in enumerate(opens):
        if not used[i] and any(inj.start <= slot < inj.end + tolerance for inj in injections):
            used[i] = True
        matched += used[i]
    return Score(inj_n, det_n, delays, len(opens), matched)
