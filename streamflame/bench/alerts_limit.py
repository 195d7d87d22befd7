"""`streamflame bench alerts-limit`: how much of each injected anomaly a test of a given statistic
could catch at all within issue #17's delays while keeping the false-alarm budget: an oracle bound
that tells a detector's shortfall from what the data allows.

    streamflame bench alerts-limit [--split validation|train] [--series 16] [--budget 1.0] [--no-model]

Each statistic ``S_t`` is computed on every slot of the clean copy of a series and of its injected
copy (``bench/inject.py``: the same injections and sizes as ``streamflame bench alerts``). Its
threshold on that series is the clean copy's own ``1 - p`` quantile, ``p = budget / observations per
week``: the lowest threshold that spends the whole budget on that series, chosen with hindsight and
per series, which no real detector knows. An injection counts as caught when ``S`` passes it within
the delay the issue allows from its first slot: 1 for spikes, 3 for level shifts and drifts. Nothing
is tuned: the bound is an upper limit for any detector built on that statistic (a detector that
combines several statistics must split the budget between them).

Statistics (``d_t = y_t - y_{t-1}``; ``day`` = one day in slots):

- ``change``: ``|d_t|``, the jump from the value before;
- ``seasonal``: ``|d_t - d_{t-day}|``, the jump against the same jump a day before;
- ``holt``: ``|z_1|`` of the deviation judge (alerts/judge.py), its one-step residual in its scale;
- ``return``: ``min(|d_{t-1}|, |d_t|)`` when the two have opposite signs (a jump and its return:
  the evidence the judge's spike confirmation uses);
- ``curve``: ``|y_{t-1} - (y_{t-2} + y_t) / 2|``, the value before off the line through its
  neighbours (a spike's height, whatever the local trend);
- ``last4`` / ``seasonal4``: the largest ``|sum of the last k errors| / scale_k`` over k = 1..4, the
  errors against a forecast made the slot before those k values (``last4``: the value then;
  ``seasonal4``: the value then plus the change over the same slots a day before), ``scale_k`` the
  clean copy's robust spread (1.4826 MAD) of that sum: evidence from up to four values against a
  reference that does not follow a shift;
- ``model4`` (unless ``--no-model``): the same over the shipped model's forecast from the last patch
  boundary, each value's error in units of half its 16-84 % spread at that lead, summed over the
  last 1..4 values / sqrt(k): the daily-cycle-aware reference the worker publishes.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from streamflame.alerts.judge import JudgeState, TrackerParams, observe
from streamflame.alerts.settings import WEEK_MS, AlertSettings
from streamflame.bench import inject as I
from streamflame.bench.alerts import _series
from streamflame.bench.alerts_offline import LENGTH, training_pick
from streamflame.core.constants import PATCH_LEN

__all__ = ["DELAY", "SeriesCopies", "statistics", "model_statistic", "caught", "main"]

DELAY = {"spike": 1, "level_shift": 3, "drift": 3}
"""The delay (slots after the first anomalous one) issue #17 allows per injected kind."""
_K = 4


@dataclass(frozen=True)
class SeriesCopies:
    """One series: its clean values, the injected copy and the injections (``bench/inject.py``)."""

    series_id: str
    freq_ms: int
    clean: np.ndarray
    injected: np.ndarray
    injections: tuple[I.Injection, ...]


def _day(freq_ms: int) -> int:
    return max(1, int(round(86_400_000 / freq_ms)))


def _changes(v: np.ndarray) -> np.ndarray:
    d = np.full(len(v), np.nan)
    d[1:] = np.diff(v)
    return d


def _holt_z1(v: np.ndarray) -> np.ndarray:
    st, z, windows = JudgeState(), np.full(len(v), np.nan), AlertSettings().windows
    for t, y in enumerate(v):
        if np.isfinite(y):
            z[t] = observe(st, float(y), windows, TrackerParams()).z1
    return z


def _errors4(v: np.ndarray, freq_ms: int, seasonal: bool) -> np.ndarray:
    """(n, K): row t, column k-1 = the sum of the errors of y_{t-k+1..t} against the forecast from
    slot t-k (NaN where undefined)."""
    n, day = len(v), _day(freq_ms)
    out = np.full((n, _K), np.nan)
    for k in range(1, _K + 1):
        o = np.arange(day if seasonal else 0, n - k)                       # origins
        acc = np.zeros(len(o))
        for i in range(1, k + 1):                                         # the i-th value after o
            f = v[o] + (v[o + i - day] - v[o - day] if seasonal else 0.0)
            acc = acc + (v[o + i] - f)
        out[o + k, k - 1] = acc
    return out


def _scaled_max(err: np.ndarray, scale: np.ndarray) -> np.ndarray:
    s = np.abs(err) / scale
    s[~np.isfinite(s)] = -np.inf
    m = s.max(axis=1)
    m[~np.isfinite(m)] = np.nan
    return m


def _robust_scale(err: np.ndarray) -> np.ndarray:
    """Per column, 1.4826 x the median absolute deviation (floored so that a flat column never divides by 0)."""
    out = np.empty(err.shape[1])
    for k in range(err.shape[1]):
        c = err[:, k][np.isfinite(err[:, k])]
        mad = 1.4826 * float(np.median(np.abs(c - np.median(c)))) if len(c) else 0.0
        out[k] = mad if mad > 0 else max(float(np.std(c)) if len(c) else 0.0, 1e-12)
    return out


def statistics(clean: np.ndarray, injected: np.ndarray, freq_ms: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per statistic name: (S on the clean copy, S on the injected copy), one value per slot (NaN where
    undefined). Scales come from the clean copy only."""
    out = {}
    for name, f in (("change", lambda v: np.abs(_changes(v))),
                    ("seasonal", lambda v: np.abs(_seasonal_changes(v, freq_ms))),
                    ("holt", lambda v: np.abs(_holt_z1(v))),
                    ("return", _jump_and_return),
                    ("curve", _curvature)):
        out[name] = (f(clean), f(injected))
    for name, seasonal in (("last4", False), ("seasonal4", True)):
        ec, ei = _errors4(clean, freq_ms, seasonal), _errors4(injected, freq_ms, seasonal)
        scale = _robust_scale(ec)
        out[name] = (_scaled_max(ec, scale), _scaled_max(ei, scale))
    return out


def _seasonal_changes(v: np.ndarray, freq_ms: int) -> np.ndarray:
    d, day = _changes(v), _day(freq_ms)
    s = np.full(len(v), np.nan)
    s[day:] = d[day:] - d[:-day]
    return s


def _jump_and_return(v: np.ndarray) -> np.ndarray:
    d = _changes(v)
    s = np.full(len(v), np.nan)
    prev, cur = d[1:-1], d[2:]
    s[2:] = np.where(np.sign(prev) == -np.sign(cur), np.minimum(np.abs(prev), np.abs(cur)), 0.0)
    return s


def _curvature(v: np.ndarray) -> np.ndarray:
    """At t: ``|y_{t-1} - (y_{t-2} + y_t) / 2|``, how far the value before stands off the line
    through its neighbours (a spike's height, whatever the local trend)."""
    s = np.full(len(v), np.nan)
    s[2:] = np.abs(v[1:-1] - 0.5 * (v[:-2] + v[2:]))
    return s


def model_statistic(copies: list[SeriesCopies], model_path=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``model4`` of each series (clean, injected): the shipped model's forecast from the last patch
    boundary (100 samples; the first two patches have none), updated with each copy's own values."""
    from streamflame import Forecaster  # lazy: torch, only with the model statistic

    fc = Forecaster.load(model_path)
    seqs = [x for c in copies for x in (c.clean, c.injected)]
    steps = [c.freq_ms / 1000 for c in copies for _ in (0, 1)]
    n, length = len(seqs), min(len(s) for s in seqs)
    z = np.full((n, length), np.nan)
    states = [fc.init_state(1.0, step_seconds=s) for s in steps]
    for k in range(length // PATCH_LEN):
        sl = slice(k * PATCH_LEN, (k + 1) * PATCH_LEN)
        if k >= 2:
            fs = fc.forecast_many(states, PATCH_LEN, quantiles=(0.16, 0.5, 0.84), num_samples=100,
                                  seeds=list(range(n)), samples=False)
            for i, f in enumerate(fs):
                half = np.maximum((f.quantile(0.84) - f.quantile(0.16)) / 2, 1e-12)
                z[i, sl] = (seqs[i][sl] - f.quantile(0.5)) / half
        states = fc.update_many(states, np.stack([s[sl] for s in seqs]))
    out = []
    for i in range(0, n, 2):
        pair = []
        for zz in (z[i], z[i + 1]):
            s = np.full(length, np.nan)
            filled = np.nan_to_num(zz)
            for w in range(1, _K + 1):
                c = np.abs(np.convolve(filled, np.ones(w))[:length]) / np.sqrt(w)
                s = np.fmax(s, c)
            s[~np.isfinite(zz)] = np.nan
            pair.append(s)
        out.append((pair[0], pair[1]))
    return out


def caught(clean_s: np.ndarray, injected_s: np.ndarray, injections, p: float, skip: int) -> list[tuple[str, float, bool]]:
    """(kind, size, caught) per injection of a kind in DELAY: ``injected_s`` passes the clean copy's
    ``1 - p`` quantile (slots from ``skip`` on) within DELAY[kind] slots of the injection's start."""
    c = clean_s[skip:]
    c = c[np.isfinite(c)]
    if not len(c):
        return []
    tau = float(np.quantile(c, 1.0 - p))
    out = []
    for inj in injections:
        if inj.kind in DELAY and inj.start >= skip:
            seg = injected_s[inj.start:inj.start + DELAY[inj.kind] + 1]
            out.append((inj.kind, inj.size, bool(np.any(seg[np.isfinite(seg)] > tau))))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamflame bench alerts-limit", description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=("validation", "train"), default="validation")
    ap.add_argument("--series", type=int, default=16)
    ap.add_argument("--budget", type=float, default=AlertSettings().false_alarm_budget,
                    help="false episodes per series-week the thresholds may spend")
    ap.add_argument("--spacing", type=int, default=240, help="slots between injections (as bench alerts)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-model", action="store_true", help="skip model4 (the shipped model's forecasts)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    base = _series(args.series, LENGTH) if args.split == "validation" else training_pick(args.series, args.seed)
    rng = np.random.default_rng(args.seed)
    copies = []
    for sid, freq, v in base:
        injs = I.plan(v, rng, 2 * PATCH_LEN + 100, args.spacing)
        copies.append(SeriesCopies(sid, freq, v.astype(np.float64), I.apply(v, injs, rng), tuple(injs)))
    model = None if args.no_model else model_statistic(copies)
    skip = 2 * PATCH_LEN + 100
    hits: dict = defaultdict(lambda: defaultdict(list))       # (kind, size) -> statistic -> [caught]
    names: list[str] = []
    for i, c in enumerate(copies):
        stats = statistics(c.clean, c.injected, c.freq_ms)
        if model is not None:
            stats["model4"] = model[i]
        names = list(stats)
        p = args.budget * c.freq_ms / WEEK_MS
        for name, (sc, si) in stats.items():
            for kind, size, ok in caught(sc, si, c.injections, p, skip):
                hits[(kind, size)][name].append(ok)
    freqs = sorted({c.freq_ms // 60_000 for c in copies})
    print(f"# streamflame bench alerts-limit | {time.strftime('%Y-%m-%d %H:%M')} | split {args.split}, "
          f"{len(copies)} series x {LENGTH} slots (steps {', '.join(f'{f} min' for f in freqs)}) | budget "
          f"{args.budget} per series-week, each series' threshold chosen with hindsight | {time.perf_counter() - t0:.0f} s")
    print("share of injections a test of each statistic alone could catch within the allowed delay")
    print(f"{'kind':12s} {'size':>5s} {'delay':>5s} {'n':>4s}  " + "  ".join(f"{n:>9s}" for n in names))
    for (kind, size), by in sorted(hits.items()):
        n = len(next(iter(by.values())))
        print(f"{kind:12s} {size:4.0f}σ {DELAY[kind]:5d} {n:4d}  " + "  ".join(f"{np.mean(by[x]):9.2f}" for x in names))
    return 0
