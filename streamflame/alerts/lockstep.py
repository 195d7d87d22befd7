"""The deviation judge of many series at once: :func:`judge.observe` / :func:`judge.skip`
in lockstep, one numpy operation over the series where judge.py loops in Python.

Why: ingest judges every observation, and judge.py costs ~4 µs per observation in Python,
five times the rest of batch ingest. A poll of batch messages brings runs of tens of
observations for hundreds of series; here step ``k`` judges the ``k``-th value of every
series with one array operation per line of judge.py.

Bit-identical to judge.py (tests/test_alerts_lockstep.py): every operation is the same
IEEE double operation in the same order (``sum(hy[-w:])`` is added oldest first, as Python's
``sum`` does; ``a * b * c`` is ``(a * b) * c``), element by element, and the series' steps
stay in their own order. Only the Python loop is gone, so replays that batch the same
observations differently judge them the same, which ingest's exactly-once relies on.

Input per series (:class:`Ops`): its :class:`JudgeState`, and its items in order, each a value
(observe), a skip of ``n`` missing slots, or a snapshot request (the state as ``to_list()``
at that point: the ingest cursor's copy at a patch boundary). Shapes below: ``S`` series in
lockstep (sorted by their number of values, so those still running at step ``k`` are the
first ``n_k`` rows), ``K`` = most values of any series, ``W`` = the largest window.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamflame.alerts.judge import _ABS_TO_SD, _SQRT, _TRI, JudgeState, TrackerParams, observe, skip

__all__ = ["Ops", "Judged", "judge_many", "judge_one"]

SNAPSHOT = "snapshot"
MIN_ROWS = 24
"""Below this many series still running, the lockstep hands the rest to :func:`judge_one`."""


@dataclass
class Ops:
    """One series' work: observe ``values`` in order; ``side[k]`` lists what comes right
    before value ``k`` (``k == len(values)``: after the last), in order, each an int ``n``
    (``skip(state, n)``: missing slots) or :data:`SNAPSHOT`."""

    state: JudgeState
    values: list[float] = field(default_factory=list)
    side: dict[int, list] = field(default_factory=dict)

    def add_side(self, item) -> None:
        """Queue a skip or a snapshot after the values added so far."""
        self.side.setdefault(len(self.values), []).append(item)


@dataclass
class Judged:
    """What the judge said about each value of one series, in order (z, window, expected, z1,
    zd, tail_rate, tail_excess, wtail_rate, wtail_excess as :class:`judge.Judgement`; ``n_before`` = ``state.count[0]`` just before it), and the
    snapshots, in order. The series' ``state`` is left as after all its work."""

    z: list[float]
    window: list[int]
    expected: list[float]
    n_before: list[int]
    snapshots: list[list]
    z1: list[float] = field(default_factory=list)
    zd: list[float] = field(default_factory=list)
    tail_rate: list[float] = field(default_factory=list)
    tail_excess: list[float] = field(default_factory=list)
    wtail_rate: list[float] = field(default_factory=list)
    wtail_excess: list[float] = field(default_factory=list)


def judge_one(ops: Ops, windows: tuple[int, ...], p: TrackerParams = TrackerParams(),
              start: int = 0, stop: int | None = None, out: Judged | None = None) -> Judged:
    """The reference: judge.py's functions, one at a time (values ``start:stop`` and the side
    items before each of them; with ``stop`` None also those after the last)."""
    st, side = ops.state, ops.side
    out = out or Judged([], [], [], [], [])
    stop = len(ops.values) if stop is None else stop
    for k in range(start, stop + 1):
        for it in side.get(k, ()):
            if it is SNAPSHOT:   # a copy: to_list() hands out the state's own lists
                out.snapshots.append([x[:] if type(x) is list else x for x in st.to_list()])
            else:
                skip(st, it)
        if k == stop:
            break
        out.n_before.append(st.count[0] if st.count else 0)
        j = observe(st, ops.values[k], windows, p)
        out.z.append(j.z)
        out.window.append(j.window)
        out.expected.append(j.expected)
        out.z1.append(j.z1)
        out.zd.append(j.zd)
        out.tail_rate.append(j.tail_rate)
        out.tail_excess.append(j.tail_excess)
        out.wtail_rate.append(j.wtail_rate)
        out.wtail_excess.append(j.wtail_excess)
    return out


def judge_many(series: list[Ops], windows: tuple[int, ...], p: TrackerParams = TrackerParams()) -> list[Judged]:
    """:func:`judge_one` of every series, in lockstep (same results, bit for bit)."""
    results: list[Judged] = []
    rows: list[tuple[int, Ops, int]] = []      # (index, ops, first value left to the lockstep)
    for i, ops in enumerate(series):
        # a state that observe() sets up or trims first (level None: a new series; windows
        # changed by a reload) takes its first value one by one, the rest goes in lockstep
        st, n = ops.state, len(ops.values)
        if st.level is None or len(st.var) != len(windows) or len(st.hist_y) > windows[-1]:
            results.append(judge_one(ops, windows, p, 0, min(1, n)) if n else judge_one(ops, windows, p))
            if n:
                rows.append((i, ops, 1))
        else:
            results.append(Judged([], [], [], [], []))
            rows.append((i, ops, 0))
    for i, judged in (_lockstep(rows, windows, p) if rows else ()):
        done = results[i]
        for name in ("z", "window", "expected", "n_before", "snapshots", "z1", "zd", "tail_rate", "tail_excess",
                     "wtail_rate", "wtail_excess"):
            getattr(done, name).extend(getattr(judged, name))
    return results


def _lockstep(rows, windows: tuple[int, ...], p: TrackerParams):
    S, nw, W = len(rows), len(windows), windows[-1]
    # per series: its values from ``start`` and the side items before each (renumbered from 0)
    vals = [ops.values[start:] if start else ops.values for _, ops, start in rows]
    between = [{k - start: v for k, v in ops.side.items() if k > start} if start else ops.side
               for _, ops, start in rows]
    order = sorted(range(S), key=lambda r: -len(vals[r]))
    lens = [len(vals[r]) for r in order]
    K = lens[0] if lens else 0
    V = np.zeros((S, max(K, 1)))
    for row, r in enumerate(order):
        V[row, :lens[row]] = vals[r]
    states = [rows[r][1].state for r in order]
    level = np.array([s.level for s in states], dtype=np.float64)
    trend = np.array([s.trend for s in states], dtype=np.float64)
    slevel = np.array([s.slow_level for s in states], dtype=np.float64)
    strend = np.array([s.slow_trend for s in states], dtype=np.float64)
    quantum = np.array([s.quantum for s in states], dtype=np.float64)
    var = np.array([s.var for s in states], dtype=np.float64).reshape(S, nw)
    count = np.array([s.count for s in states], dtype=np.int64).reshape(S, nw)
    jmean = np.array([s.jump_mean for s in states], dtype=np.float64)
    jcount = np.array([s.jump_count for s in states], dtype=np.int64)
    tcount = np.array([s.tail_n for s in states], dtype=np.int64)
    trate = np.array([s.tail_rate for s in states], dtype=np.float64)
    tsum = np.array([s.tail_sum for s in states], dtype=np.float64)
    wcount = np.array([s.wtail_n for s in states], dtype=np.int64)
    wrate = np.array([s.wtail_rate for s in states], dtype=np.float64)
    wsum = np.array([s.wtail_sum for s in states], dtype=np.float64)
    m = np.array([len(s.hist_y) for s in states], dtype=np.int64)
    pad = [[0.0] * (W - len(s.hist_y)) for s in states]
    Y = np.array([z + s.hist_y for z, s in zip(pad, states)], dtype=np.float64).reshape(S, W)
    HL = np.array([z + s.hist_l for z, s in zip(pad, states)], dtype=np.float64).reshape(S, W)
    HT = np.array([z + s.hist_t for z, s in zip(pad, states)], dtype=np.float64).reshape(S, W)
    shape = (S, max(K, 1))
    Z, WIN, EXP, NB, Z1, ZD, TR, TX, WR, WX = (
        np.zeros(shape), np.zeros(shape, dtype=np.int64), np.zeros(shape), np.zeros(shape, dtype=np.int64),
        np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape))
    snaps: list[list] = [[] for _ in range(S)]
    events: dict[int, list[int]] = {}           # k -> rows with skips / snapshots before value k
    for row, r in enumerate(order):
        for k in between[r]:
            if k < lens[row]:                   # those after the last value: after the loop
                events.setdefault(k, []).append(row)
    arrays = (level, trend, slevel, strend, quantum, var, count, m, Y, HL, HT, jmean, jcount, tcount, trate, tsum,
              wcount, wrate, wsum)

    def side(k: int, row: int) -> None:
        for it in between[order[row]][k]:
            if it is SNAPSHOT:
                snaps[row].append(_states(arrays, W, row)[0].to_list())
            elif it > 0:                 # skip(): the trackers move by their trend, the windows restart
                level[row] += trend[row] * it
                slevel[row] += strend[row] * it
                m[row] = 0

    c = _Consts(windows, p)
    n, stop = S, K
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k in range(K):
            while n and lens[n - 1] <= k:
                n -= 1
            if n < MIN_ROWS:            # the few longest go on one by one (numpy's per-call cost)
                stop = k
                break
            for row in events.get(k, ()):
                side(k, row)
            _observe_rows(k, n, V, arrays, (Z, WIN, EXP, NB, Z1, ZD, TR, TX, WR, WX), c)
        else:
            n = 0
    # what comes after the last value of the series done here: snapshots of the final state
    # (the usual case, a patch closed at the batch's last value) are taken from it below
    final_snaps = [0] * S
    for row in range(n, S):
        tail = between[order[row]].get(lens[row], ())
        if tail and all(it is SNAPSHOT for it in tail):
            final_snaps[row] = len(tail)
        elif tail:
            side(lens[row], row)
    for row, (s, t) in enumerate(zip(states, _states(arrays, W))):
        s.level, s.trend, s.slow_level, s.slow_trend, s.quantum = t.level, t.trend, t.slow_level, t.slow_trend, t.quantum
        s.var, s.count, s.hist_y, s.hist_l, s.hist_t = t.var, t.count, t.hist_y, t.hist_l, t.hist_t
        s.jump_mean, s.jump_count = t.jump_mean, t.jump_count
        s.tail_n, s.tail_rate, s.tail_sum = t.tail_n, t.tail_rate, t.tail_sum
        s.wtail_n, s.wtail_rate, s.wtail_sum = t.wtail_n, t.wtail_rate, t.wtail_sum
        for _ in range(final_snaps[row]):
            snaps[row].append([x[:] if type(x) is list else x for x in s.to_list()])
    Zl, Wl, El, Nl, Z1l, ZDl, TRl, TXl, WRl, WXl = (a.tolist() for a in (Z, WIN, EXP, NB, Z1, ZD, TR, TX, WR, WX))
    for row, r in enumerate(order):
        L = lens[row]
        if row < n:                     # values stop.. one by one, from the state just stored
            rest = judge_one(Ops(states[row], vals[r], between[r]), windows, p, start=stop)
            yield rows[r][0], Judged(Zl[row][:stop] + rest.z, Wl[row][:stop] + rest.window,
                                     El[row][:stop] + rest.expected, Nl[row][:stop] + rest.n_before,
                                     snaps[row] + rest.snapshots, Z1l[row][:stop] + rest.z1,
                                     ZDl[row][:stop] + rest.zd, TRl[row][:stop] + rest.tail_rate,
                                     TXl[row][:stop] + rest.tail_excess, WRl[row][:stop] + rest.wtail_rate,
                                     WXl[row][:stop] + rest.wtail_excess)
        else:
            yield rows[r][0], Judged(Zl[row][:L], Wl[row][:L], El[row][:L], Nl[row][:L], snaps[row], Z1l[row][:L],
                                     ZDl[row][:L], TRl[row][:L], TXl[row][:L], WRl[row][:L], WXl[row][:L])


class _Consts:
    """judge.py's constants as the Python floats it computes them to, per window as arrays."""

    def __init__(self, windows: tuple[int, ...], p: TrackerParams):
        W = windows[-1]
        self.windows = windows
        self.min_count = p.min_count
        self.clip_s = p.clip_scale * _ABS_TO_SD
        self.gamma, self.gamma_down, self.inv_gamma = p.gamma, p.gamma_down, 1.0 / p.gamma
        self.lim = p.clip * _ABS_TO_SD
        self.tail_u, self.tail_min, self.tail_gamma = p.tail_u, p.tail_min, p.tail_gamma
        self.inv_tail_gamma = 1.0 / p.tail_gamma
        self.alpha, self.alpha_beta = p.alpha, p.alpha * p.beta
        self.alpha_slow, self.alpha_slow_beta = p.alpha_slow, p.alpha_slow * p.beta
        self.w = np.array(windows, dtype=np.int64)                 # (nw,)
        self.wf = self.w.astype(np.float64)                          # w * hl[-w]: int times float
        self.tri = np.array([_TRI[w] for w in windows])
        self.sqrt = np.array([_SQRT[w] for w in windows])
        self.col = W - self.w                                         # column of hl[-w], ht[-w]
        # column j of the history joins the sum of window w from j = W - w on (oldest first)
        self.adds = [np.nonzero(self.col <= j)[0] for j in range(W)]
        self.one = windows[0] == 1                                    # window 1 is y - (L + T)
        self.first_long = 1 if self.one else 0                        # windows judged for ``z``
        self.long = len(windows) - self.first_long


def _observe_rows(k: int, n: int, V, arrays, outs, c: _Consts) -> None:
    """``observe`` of value ``k`` of rows ``:n``: judge.py's operations, in its order, on
    (n,) arrays, and the window loop on (n, nw) arrays."""
    (level, trend, slevel, strend, quantum, var, count, m, Y, HL, HT, jmean, jcount, tcount, trate, tsum,
     wcount, wrate, wsum) = arrays
    Z, WIN, EXP, NB, Z1, ZD, TR, TX, WR, WX = outs
    y = V[:n, k]
    lv, tr, sl, stt = level[:n], trend[:n], slevel[:n], strend[:n]
    NB[:n, k] = count[:n, 0]
    expected = lv + tr
    Y[:n, :-1] = Y[:n, 1:]                       # hy.append(y) (keeping the last W)
    Y[:n, -1] = y
    HL[:n, :-1] = HL[:n, 1:]
    HL[:n, -1] = sl
    HT[:n, :-1] = HT[:n, 1:]
    HT[:n, -1] = stt
    W = Y.shape[1]
    mm = np.minimum(m[:n] + 1, W)
    m[:n] = mm
    if W >= 2:
        dy = y - Y[:n, -2]
        d = np.abs(dy)
        q = quantum[:n]
        has = mm >= 2
        quantum[:n] = np.where(has & (d > 0.0) & ((d < q) | (q == 0.0)), d, q)
        # the jump from the value before, in its own scale (judge.py's order), then its update
        jm, jn = jmean[:n], jcount[:n]
        jcal = has & (jn >= c.min_count) & (jm > 0.0)
        jsd = _ABS_TO_SD * jm
        jsd = np.where(quantum[:n] > jsd, quantum[:n], jsd)
        ZD[:n, k] = np.where(jcal, dy / jsd, 0.0)
        jupd, jn1 = _mean_abs_update(jm, jn, d, jcal, c)
        jmean[:n] = np.where(has, jupd, jm)
        jcount[:n] = np.where(has, jn1, jn)
    q = quantum[:n, None]
    # e per window: sum(hy[-w:]) - (w * hl[-w] + ht[-w] * tri[w]); window 1: y - expected
    acc = np.zeros((n, len(c.windows)))
    for j in range(W):
        idx = c.adds[j]
        if len(idx) == len(c.windows):
            acc += Y[:n, j:j + 1]
        elif len(idx):
            acc[:, idx] += Y[:n, j:j + 1]
    e = acc - (c.wf * HL[:n, c.col] + HT[:n, c.col] * c.tri)
    if c.one:
        e[:, 0] = y - expected
    valid = mm[:, None] >= c.w                  # (n, nw): the windows judge.py reaches
    ae = np.abs(e)
    cnt, v = count[:n], var[:n]
    cal = valid & (cnt >= c.min_count) & (v > 0.0)
    sd = _ABS_TO_SD * v
    qsd = q * c.sqrt
    sd = np.where(qsd > sd, qsd, sd)
    az = np.where(cal, ae / sd, 0.0)
    zz = e / sd
    # the first window of the largest |z| among those longer than one (judge.py: strictly
    # larger replaces), if any is > 0; window 1 apart
    rows = np.arange(n)
    if c.one:
        Z1[:n, k] = np.where(cal[:, 0], zz[:, 0], 0.0)
    if c.long > 0:
        best = np.argmax(az[:, c.first_long:], axis=1) + c.first_long
        best_az = az[rows, best]
        some = best_az > 0.0
        Z[:n, k] = np.where(some, zz[rows, best], 0.0)
        WIN[:n, k] = np.where(some, c.w[best], c.windows[0])
    else:
        best_az = some = None
        Z[:n, k] = 0.0
        WIN[:n, k] = c.windows[0]
    upd, cnt1 = _mean_abs_update(v, cnt, ae, cal, c)
    var[:n] = np.where(valid, upd, v)
    count[:n] = np.where(valid, cnt1, cnt)
    e1, e2 = y - expected, y - (sl + stt)
    if c.one:
        v1 = var[:n, 0]
        lim = c.lim * v1
        ok = (count[:n, 0] > c.min_count) & (v1 > 0.0)
        e1 = np.where(ok, np.where(e1 > lim, lim, np.where(e1 < -lim, -lim, e1)), e1)
        e2 = np.where(ok, np.where(e2 > lim, lim, np.where(e2 < -lim, -lim, e2)), e2)
    level[:n] = expected + c.alpha * e1
    trend[:n] = tr + c.alpha_beta * e1
    slevel[:n] = (sl + stt) + c.alpha_slow * e2
    strend[:n] = stt + c.alpha_slow_beta * e2
    EXP[:n, k] = expected
    if c.one:   # the tail of |z_1| before this value (judge.py), then this value joins it
        z1 = Z1[:n, k]
        TR[:n, k], TX[:n, k], tcount[:n], trate[:n], tsum[:n] = _tail(
            z1 != 0.0, np.abs(z1), tcount[:n], trate[:n], tsum[:n], c)
    if some is not None:   # the same for |z| of the longer windows
        WR[:n, k], WX[:n, k], wcount[:n], wrate[:n], wsum[:n] = _tail(
            some, best_az, wcount[:n], wrate[:n], wsum[:n], c)


def _tail(on, x, tn, tr, ts, c: _Consts):
    """judge.py's ``_tail`` of rows where ``on``: (the rate and mean excess before ``x``, 0.0 where
    not ready or not on; then the counts, rates and totals, unchanged where not on)."""
    ready = on & (tn >= c.tail_min) & (tr > 0.0)
    r_out = np.where(ready, tr, 0.0)
    x_out = np.where(ready, ts / np.where(ready, tr, 1.0), 0.0)
    a1 = x - c.tail_u
    tn1 = tn + 1
    g = np.where(tn1 < c.inv_tail_gamma, 1.0 / tn1, c.tail_gamma)
    hit = a1 >= 0.0
    return (r_out, x_out, np.where(on, tn1, tn), np.where(on, tr + g * (np.where(hit, 1.0, 0.0) - tr), tr),
            np.where(on, ts + g * (np.where(hit, a1, 0.0) - ts), ts))


def _mean_abs_update(v, n, a, cal, c: _Consts):
    """judge.py's running mean of absolute values ``v`` after ``n`` of them, given the next ``a``
    (clipped to ``clip_scale`` scales where calibrated, ``cal``): a plain mean for the first
    ``1 / gamma``, then exponentially weighted. Returns (new means, n + 1)."""
    cv = c.clip_s * v
    a = np.where(cal & (a > cv), cv, a)
    n1 = n + 1
    return np.where(n1 < c.inv_gamma, v + (a - v) / n1, v + np.where(a > v, c.gamma, c.gamma_down) * (a - v)), n1


def _states(arrays, W: int, row: int | None = None) -> list[JudgeState]:
    """The judge states of every row (or of ``row`` alone) as judge.py keeps them (Python floats and lists)."""
    sel = slice(None) if row is None else slice(row, row + 1)
    (level, trend, slevel, strend, quantum, var, count, m, Y, HL, HT, jmean, jcount, tcount, trate,
     tsum, wcount, wrate, wsum) = (a[sel].tolist() for a in arrays)
    return [JudgeState(level[i], trend[i], slevel[i], strend[i], quantum[i], var[i], count[i],
                       Y[i][W - m[i]:], HL[i][W - m[i]:], HT[i][W - m[i]:], jmean[i], jcount[i], tcount[i],
                       trate[i], tsum[i], wcount[i], wrate[i], wsum[i])
            for i in range(len(level))]
