"""The deviation judge of one series: a predictive distribution for each observation
that uses every observation before it, and evidence accumulated over short windows.

Pure arithmetic on floats (no I/O, no numpy: it runs once per observation in ingest).

Model. Two local linear trackers (Holt's level ``L`` and trend ``T``) predict the next
value as ``L + T``; after each observation each moves by its ``alpha`` (level) and
``alpha * beta`` (trend) of its one-step error, the error clipped to ``clip`` one-step
scales (a spike barely moves them; a level shift moves them at a bounded pace). The
fast one (``alpha``) follows the signal closely and is the reference of the one-step
window; the slow one (``alpha_slow``) is the less noisy reference of the longer windows.

Evidence. For each window length ``w`` (``AlertSettings.windows``) the judge sums the
errors of the last ``w`` observations against the path the tracker predicted *before*
the first of them (``L + j T`` for j = 1..w, from the state kept ``w`` observations
ago). A spike shows in ``w = 1``; a level shift adds up in the longer windows because
the frozen reference does not follow it; isolated noise averages out. Each window's
sum is divided by its own running scale (root of an exponentially weighted mean of
its squared sums, each clipped to ``clip_scale`` scales before it counts), so the
statistic ``z_w`` is close to N(0, 1) whatever the series' autocorrelation and the
reference path's multi-step error: self-calibrated. A sensor's resolution bounds
the scales from below: a window's standard deviation is never taken below
``quantum * sqrt(w)``, ``quantum`` being the smallest non-zero change between
consecutive values seen so far (a quantised series whose value mostly stays put
would otherwise call a one-step change of one quantum an anomaly). The one-step
statistic ``z_1`` is reported apart from the longer windows' (``Judgement.z1``): the
episode layer tests it on its own. ``pit`` is the one-step probability integral
transform ``Phi(z_1)``.

Jumps. ``Judgement.zd`` is the raw one-step change ``d = y_t - y_{t-1}`` in units of its own
running scale (mean absolute change, clipped and floored at one quantum like the windows'):
the episode layer confirms a spike when both the jump and the next value's return are
large (a spike comes back, a natural jump stays; episodes.py). The last value, not the
trackers' prediction, is the reference there: for the random-walk-like series that
sensors mostly are, raw changes have the smaller scale (measured on the training split,
docs/benchmarks.md).

The series' own tail of ``|z_1|``. Real one-step changes are heavy-tailed, and how heavy
differs by series: a test of one value alone at a fixed normal threshold opens several
false episodes a week on a random-walk-like weather series and next to none on a smooth
temperature. So the judge also keeps, per series, the rate ``r`` at which ``|z_1|`` passes
``tail_u`` and the mean excess ``m`` above it (peaks over threshold with an exponential
tail: ``P(|z_1| > x) ~ r exp(-(x - tail_u) / m)``), and reports them as they were before
each value (``Judgement.tail_rate``, ``.tail_excess``; 0.0 until ``tail_min`` values): the
episode layer sets each series' one-value threshold from them (episodes.py). The same is kept
for ``|z|``, the longer windows' statistic (``Judgement.wtail_rate``, ``.wtail_excess``): their
sums are heavy-tailed on random-walk-like series too, and the windows' threshold comes from them.

Missing slots advance the tracker by its trend and restart the windows (a window
never spans a gap). ``JudgeState.to_list`` / ``from_list`` are the persisted form.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["TrackerParams", "JudgeState", "Judgement", "observe", "skip"]

_SQRT2 = math.sqrt(2.0)
_ABS_TO_SD = math.sqrt(math.pi / 2)  # sd / mean absolute deviation of a normal
_SQRT = [math.sqrt(w) for w in range(65)]
_TRI = [w * (w + 1) / 2 for w in range(65)]


@dataclass(frozen=True)
class TrackerParams:
    alpha: float = 0.8
    alpha_slow: float = 0.3
    beta: float = 0.1
    clip: float = 2.0          # one-step errors clipped at this many scales when updating L, T
    clip_scale: float = 6.0    # absolute window sums clipped at this many scales when updating a scale
    gamma: float = 0.01        # weight of the newest sum in a scale that grows (half-life ~69 observations)
    gamma_down: float = 0.01   # ... in a scale that shrinks
    min_count: int = 8         # sums a scale must have seen before it is clipped or used
    tail_u: float = 3.0        # |z_1| above this counts in the series' tail
    tail_gamma: float = 0.005  # weight of the newest value in the tail's rate and excess (half-life ~140)
    tail_min: int = 200        # values of z_1 the tail must have seen before it is reported


@dataclass
class JudgeState:
    """Tracker state of one series (mutable; ``observe`` updates it in place)."""

    level: float | None = None
    trend: float = 0.0
    slow_level: float = 0.0
    slow_trend: float = 0.0
    quantum: float = 0.0      # smallest non-zero |change| between consecutive values (0 = none yet)
    var: list = field(default_factory=list)      # per window: running mean of squared sums
    count: list = field(default_factory=list)    # per window: sums seen
    hist_y: list = field(default_factory=list)   # last max(window) values
    hist_l: list = field(default_factory=list)   # slow level before each of them
    hist_t: list = field(default_factory=list)   # slow trend before each of them
    jump_mean: float = 0.0    # running mean of |y_t - y_{t-1}| (consecutive values)
    jump_count: int = 0       # changes it has seen
    tail_n: int = 0           # calibrated values of z_1 seen
    tail_rate: float = 0.0    # running share of them with |z_1| >= tail_u
    tail_sum: float = 0.0     # running mean of max(|z_1| - tail_u, 0)
    wtail_n: int = 0          # the same for |z|, the longer windows' statistic
    wtail_rate: float = 0.0
    wtail_sum: float = 0.0

    def to_list(self) -> list:
        return [self.level, self.trend, self.slow_level, self.slow_trend, self.quantum, self.var, self.count,
                self.hist_y, self.hist_l, self.hist_t, self.jump_mean, self.jump_count, self.tail_n,
                self.tail_rate, self.tail_sum, self.wtail_n, self.wtail_rate, self.wtail_sum]

    @classmethod
    def from_list(cls, d: list) -> "JudgeState":
        """The persisted form; older ones (10 items: no jump scale; 12: no tail; 15: no windows'
        tail) start those anew."""
        level, trend, sl, stt, quantum, var, count, hy, hl, ht = d[:10]
        jm, jn = d[10:12] if len(d) >= 12 else (0.0, 0)
        tn, tr, ts = d[12:15] if len(d) >= 15 else (0, 0.0, 0.0)
        wn, wr, ws = d[15:18] if len(d) >= 18 else (0, 0.0, 0.0)
        return cls(level, float(trend), float(sl), float(stt), float(quantum), [float(v) for v in var],
                   [int(c) for c in count],
                   [float(v) for v in hy], [float(v) for v in hl], [float(v) for v in ht], float(jm), int(jn),
                   int(tn), float(tr), float(ts), int(wn), float(wr), float(ws))


class Judgement(NamedTuple):
    """What the judge says about one observation. ``z`` is the statistic of the largest
    magnitude among the windows longer than one (0.0 while none is calibrated), ``window``
    its length, ``expected`` the one-step prediction, ``pit`` = Phi(z_1) (0.5 while
    uncalibrated), ``z1`` the one-step statistic (0.0 while uncalibrated or without a
    window of length 1), ``zd`` the change from the value before in its running scale
    (0.0 while uncalibrated or after a gap), ``tail_rate`` and ``tail_excess`` the series'
    tail of ``|z_1|`` before this value (0.0 until ``tail_min`` values), ``wtail_rate`` and
    ``wtail_excess`` its tail of ``|z|`` (likewise)."""

    z: float
    window: int
    expected: float
    pit: float
    z1: float = 0.0
    zd: float = 0.0
    tail_rate: float = 0.0
    tail_excess: float = 0.0
    wtail_rate: float = 0.0
    wtail_excess: float = 0.0


def _phi(z: float) -> float:
    return 0.5 * math.erfc(-z / _SQRT2)


def observe(st: JudgeState, y: float, windows: tuple[int, ...], p: TrackerParams = TrackerParams()) -> Judgement:
    """Judge ``y`` (the next grid slot) against the state, then update the state with it."""
    if st.level is None:
        st.level, st.trend, st.slow_level, st.slow_trend = y, 0.0, y, 0.0
        st.var, st.count = [0.0] * len(windows), [0] * len(windows)
        st.hist_y, st.hist_l, st.hist_t = [], [], []
        return Judgement(0.0, windows[0], y, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    if len(st.var) != len(windows):  # the windows changed (config reload): restart the scales
        st.var, st.count = [0.0] * len(windows), [0] * len(windows)
    level, trend, s_level, s_trend = st.level, st.trend, st.slow_level, st.slow_trend
    expected = level + trend
    hy, hl, ht = st.hist_y, st.hist_l, st.hist_t
    hy.append(y)
    hl.append(s_level)
    ht.append(s_trend)
    wmax = windows[-1]
    if len(hy) > wmax:  # (more than one only after a reload shortened the windows)
        del hy[:-wmax], hl[:-wmax], ht[:-wmax]
    m = len(hy)
    if m >= 2:
        dy = y - hy[-2]
        d = dy if dy >= 0.0 else -dy
        if d > 0.0 and (d < st.quantum or st.quantum == 0.0):
            st.quantum = d
    quantum = st.quantum
    best_z, best_az, best_w, z1, zd = 0.0, 0.0, windows[0], 0.0, 0.0
    var, count = st.var, st.count
    gamma, gamma_down, min_count, clip_s = p.gamma, p.gamma_down, p.min_count, p.clip_scale * _ABS_TO_SD
    inv_gamma = 1.0 / gamma
    if m >= 2:  # the jump from the value before, in its own scale; then the scale learns it
        jm, jn = st.jump_mean, st.jump_count
        if jn >= min_count and jm > 0.0:
            sd = _ABS_TO_SD * jm
            if quantum > sd:
                sd = quantum
            zd = dy / sd
            if d > clip_s * jm:
                d = clip_s * jm
        jn += 1
        st.jump_count = jn
        if jn < inv_gamma:
            st.jump_mean = jm + (d - jm) / jn
        else:
            st.jump_mean = jm + (gamma if d > jm else gamma_down) * (d - jm)
    i = 0
    for w in windows:
        if w > m:
            break
        if w == 1:
            e = y - expected
        else:
            e = sum(hy[-w:]) - (w * hl[-w] + ht[-w] * _TRI[w])
        ae = e if e >= 0.0 else -e
        n, v = count[i], var[i]
        if n >= min_count and v > 0.0:
            sd = _ABS_TO_SD * v
            qsd = quantum * _SQRT[w]
            if qsd > sd:
                sd = qsd
            if w == 1:
                z1 = e / sd
            else:
                az = ae / sd
                if az > best_az:
                    best_az, best_w, best_z = az, w, e / sd
            if ae > clip_s * v:
                ae = clip_s * v
        n += 1
        count[i] = n
        if n < inv_gamma:
            var[i] = v + (ae - v) / n
        else:
            var[i] = v + (gamma if ae > v else gamma_down) * (ae - v)
        i += 1
    # update the trackers with their clipped one-step errors
    e1, e2 = y - expected, y - (s_level + s_trend)
    v1 = var[0] if windows[0] == 1 else 0.0
    if count[0] > min_count and v1 > 0.0:
        lim = p.clip * _ABS_TO_SD * v1
        e1 = lim if e1 > lim else (-lim if e1 < -lim else e1)
        e2 = lim if e2 > lim else (-lim if e2 < -lim else e2)
    st.level = expected + p.alpha * e1
    st.trend = trend + p.alpha * p.beta * e1
    st.slow_level = s_level + s_trend + p.alpha_slow * e2
    st.slow_trend = s_trend + p.alpha_slow * p.beta * e2
    t_rate = t_excess = w_rate = w_excess = 0.0
    if z1 != 0.0:  # the tail of |z_1| as it was before this value, then this value joins it
        t_rate, t_excess, st.tail_n, st.tail_rate, st.tail_sum = _tail(
            st.tail_n, st.tail_rate, st.tail_sum, z1 if z1 >= 0.0 else -z1, p)
    if best_az != 0.0:  # the same for |z| of the longer windows
        w_rate, w_excess, st.wtail_n, st.wtail_rate, st.wtail_sum = _tail(
            st.wtail_n, st.wtail_rate, st.wtail_sum, best_az, p)
    return Judgement(best_z, best_w, expected, _phi(z1) if z1 else 0.5, z1, zd, t_rate, t_excess, w_rate, w_excess)


def _tail(n: int, rate: float, total: float, x: float, p: TrackerParams) -> tuple[float, float, int, float, float]:
    """A series' tail of a statistic ``x`` >= 0 (peaks over ``tail_u``): (its rate and mean excess
    as they were before ``x``, 0.0 until ``tail_min`` values; then n, rate, total with ``x`` in)."""
    r_out = x_out = 0.0
    if n >= p.tail_min and rate > 0.0:
        r_out, x_out = rate, total / rate
    a = x - p.tail_u
    n += 1
    g = 1.0 / n if n < 1.0 / p.tail_gamma else p.tail_gamma
    return (r_out, x_out, n, rate + g * ((1.0 if a >= 0.0 else 0.0) - rate),
            total + g * ((a if a >= 0.0 else 0.0) - total))


def skip(st: JudgeState, n_slots: int) -> None:
    """``n_slots`` missing grid slots: advance the tracker by its trend, restart the windows."""
    if st.level is None or n_slots <= 0:
        return
    st.level += st.trend * n_slots
    st.slow_level += st.slow_trend * n_slots
    st.hist_y, st.hist_l, st.hist_t = [], [], []
