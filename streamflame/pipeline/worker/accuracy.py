"""Online accuracy (progressive validation): every applied patch is first used to
score the forecast the worker published after the previous patch, then to
update the model. Definitions in docs/architecture.md, "Online accuracy".

Per scored patch (targets ``y`` = the observed values of patch ``k``, forecast
= the one published after patch ``k - 1``, its first ``n <= 48`` steps, as kept
in the state meta; float32 numbers):

* ``ql``          :func:`streamflame.eval.metrics.quantile_loss` / Q (Q = number of levels)
* ``abs_y``       ``sum |y|``                      -> WQL = ``sum ql / sum abs_y``
* ``scaled_err``  ``sum |y - mean| / scale``         -> MASE = ``sum scaled_err / scaled_points``
  with ``scale`` the series' :class:`~streamflame.adapters.state.store.NaiveScale`
  *before* the patch (mean |y_t - y_{t-1}| over all earlier observed pairs);
  points of a series with no scale yet, or a zero scale, are not scaled
* ``inside``      per central interval (levels tau and 1 - tau, and the alert
  levels): targets inside ``[q_lo, q_hi]`` (:func:`~streamflame.eval.metrics.coverage`)
  -> coverage = ``sum inside / points``

Per series the inputs (last forecast, naive scale) live in the Redis record and
are written by the same compare-and-set as the state, so they are a pure
function of the patch stream. The per-group aggregates live only in the
process (:class:`OnlineAccuracy`), and the worker adds a patch's score only
after its state write was applied, so a replayed patch is never counted twice;
they restart from zero with the process and each worker reports the series of
its own partitions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from streamflame.adapters.state.store import LastForecast, NaiveScale
from streamflame.core.frequency import format_level
from streamflame.eval.metrics import abs_diff_sum, coverage, quantile_loss

__all__ = ["PatchScore", "score_patch", "score_many", "update_naive", "intervals", "OnlineAccuracy"]


@dataclass(frozen=True)
class PatchScore:
    """The accuracy sums of one scored patch (see the module docstring)."""

    series_id: str
    group: str
    forecast_seq: int
    points: int
    ql: float
    abs_y: float
    scaled_err: float
    scaled_points: int
    inside: dict[str, int] = field(default_factory=dict)  # nominal coverage ("0.8") -> targets inside


def intervals(levels, alert_levels=None) -> list[tuple[str, float, float]]:
    """Central intervals scored for coverage: ``(name, lo, hi)`` for every pair
    ``(tau, 1 - tau)`` of ``levels`` with tau < 0.5, plus the alert interval;
    ``name`` is the nominal coverage ``hi - lo`` (``"0.8"`` for 0.1/0.9)."""
    keys = {format_level(q): q for q in levels}
    out: dict[str, tuple[float, float]] = {}
    for q in levels:
        other = format_level(1.0 - q)
        if q < 0.5 and other in keys:
            out[format_level(keys[other] - q)] = (q, keys[other])
    if alert_levels is not None:
        lo, hi = alert_levels
        out.setdefault(format_level(hi - lo), (lo, hi))
    return [(name, lo, hi) for name, (lo, hi) in sorted(out.items(), key=lambda kv: float(kv[0]))]


@lru_cache(maxsize=1024)
def _interval_rows(levels: tuple[float, ...], alert_levels) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """:func:`intervals` as row indices into the quantiles, cached per level set."""
    keys = [format_level(q) for q in levels]
    iv = intervals(levels, alert_levels)
    return (tuple(name for name, _, _ in iv), np.array([keys.index(format_level(lo)) for _, lo, _ in iv], np.intp),
            np.array([keys.index(format_level(hi)) for _, _, hi in iv], np.intp))


def score_patch(series_id: str, group: str, fc: LastForecast, values: np.ndarray,
                naive: NaiveScale) -> PatchScore | None:
    """Score ``fc`` (steps 1..n) against the patch ``values`` (48, NaN = missing).
    None when the forecast cannot be scored (no mean: an older record) or no
    target is observed."""
    return score_many([(series_id, group, fc, values, naive)])[0]


def score_many(items: list[tuple[str, str, LastForecast, np.ndarray, NaiveScale]]) -> list[PatchScore | None]:
    """:func:`score_patch` of many ``(series_id, group, forecast, values, naive)`` at
    once, vectorised over the items that share quantile levels and step count."""
    out: list[PatchScore | None] = [None] * len(items)
    kinds: dict[tuple, list[int]] = {}
    for i, (_, _, fc, _, _) in enumerate(items):
        if fc.mean is not None:
            kinds.setdefault((fc.quantile_levels, fc.n, fc.alert_levels), []).append(i)
    for (levels, n, alert_levels), idx in kinds.items():
        y = np.stack([np.asarray(items[i][3], dtype=np.float64)[:n] for i in idx])      # (B, n)
        q = np.stack([items[i][2].quantiles for i in idx]).astype(np.float64)          # (B, Q, n)
        mean = np.stack([items[i][2].mean for i in idx]).astype(np.float64)            # (B, n)
        keep = ~np.isnan(y)
        points = keep.sum(axis=1)
        ql = quantile_loss(y, q, levels) / len(levels)
        abs_y = np.where(keep, np.abs(y), 0.0).sum(axis=1)
        abs_err = np.where(keep, np.abs(y - mean), 0.0).sum(axis=1)
        names, lo_i, hi_i = _interval_rows(levels, alert_levels)
        inside = np.rint(coverage(y[:, None, :], q[:, lo_i], q[:, hi_i]) * points[:, None])  # (B, K)
        for b, i in enumerate(idx):
            if points[b] == 0 or not (np.isfinite(ql[b]) and np.isfinite(abs_y[b])):
                continue   # nothing observed, or sums beyond float range (|y| ~ 1e308): not scored
            sid, group, fc, _, naive = items[i]
            scale = naive.scale
            # NaN (no pair yet) and 0 (a constant history) leave the points unscaled, and so
            # does a ratio that overflows (errors of ~1e308 over a tiny scale): a metric
            # gauge that turned inf would stay inf.
            with np.errstate(over="ignore"):
                scaled_err = abs_err[b] / scale if scale > 0 else np.inf
            scaled = bool(np.isfinite(scaled_err))
            out[i] = PatchScore(sid, group, fc.seq, int(points[b]), float(ql[b]), float(abs_y[b]),
                                float(scaled_err) if scaled else 0.0, int(points[b]) if scaled else 0,
                                {name: int(x) for name, x in zip(names, inside[b].tolist())})
    return out


def update_naive(naive: NaiveScale, values: np.ndarray) -> NaiveScale:
    """The scale after one more patch (pairs inside it and across its boundary)."""
    v = np.asarray(values, dtype=np.float64)
    prev = np.nan if naive.last is None else naive.last
    total, count = abs_diff_sum(np.concatenate([[prev], v]), 1)
    last = float(v[-1]) if len(v) and not math.isnan(v[-1]) else None
    if not math.isfinite(naive.abs_sum + total):   # differences of ~1e308 values overflow:
        return NaiveScale(last, naive.abs_sum, naive.count)   # keep the scale JSON-representable
    return NaiveScale(last, naive.abs_sum + total, naive.count + count)


class _Ew:
    __slots__ = ("ql", "abs_y", "scaled_err", "scaled_points", "points", "inside")

    def __init__(self) -> None:
        self.ql = self.abs_y = self.scaled_err = self.scaled_points = self.points = 0.0
        self.inside: dict[str, float] = {}


class OnlineAccuracy:
    """Per-group exponentially weighted sums of :class:`PatchScore` (in process).

    Each scored patch first multiplies its group's sums by ``0.5 ** (1 /
    halflife)``, then adds its own, so a patch scored ``halflife`` patches ago
    (of that group) weighs half as much as the newest one. The ratios are
    ``wql = ql / abs_y``, ``mase = scaled_err / scaled_points``,
    ``coverage[name] = inside[name] / points`` (NaN while undefined).
    """

    def __init__(self, halflife_patches: float):
        self.decay = 0.5 ** (1.0 / float(halflife_patches))
        self.groups: dict[str, _Ew] = {}

    def add(self, s: PatchScore) -> None:
        g = self.groups.get(s.group)
        if g is None:
            g = self.groups[s.group] = _Ew()
        d = self.decay
        g.ql = d * g.ql + s.ql
        g.abs_y = d * g.abs_y + s.abs_y
        g.scaled_err = d * g.scaled_err + s.scaled_err
        g.scaled_points = d * g.scaled_points + s.scaled_points
        g.points = d * g.points + s.points
        for name in set(g.inside) | set(s.inside):
            g.inside[name] = d * g.inside.get(name, 0.0) + s.inside.get(name, 0)

    def snapshot(self, group: str) -> dict:
        """``{"wql": x, "mase": x, "coverage": {name: x}}`` of one group."""
        g = self.groups[group]
        return {"wql": g.ql / g.abs_y if g.abs_y > 0 else float("nan"),
                "mase": g.scaled_err / g.scaled_points if g.scaled_points > 0 else float("nan"),
                "coverage": {k: v / g.points if g.points > 0 else float("nan") for k, v in g.inside.items()}}
