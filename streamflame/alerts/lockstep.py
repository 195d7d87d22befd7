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


@dataclass
class Ops:
    """One series' work: ``items`` in order, each a float (observe it), an int ``n``
    (``skip(state, n)``) or :data:`SNAPSHOT`."""

    state: JudgeState
    items: list = field(default_factory=list)


@dataclass
class Judged:
    """What the judge said about each observed value of one series, in order (z, window,
    expected as :class:`judge.Judgement`; ``n_before`` = ``state.count[0]`` just before it),
    and the snapshots, in order. The series' ``state`` is left as after all its items."""

    z: list[float]
    window: list[int]
    expected: list[float]
    n_before: list[int]
    snapshots: list[list]


def judge_one(ops: Ops, windows: tuple[int, ...], p: TrackerParams = TrackerParams()) -> Judged:
    """The reference: judge.py's functions, one item at a time."""
    st = ops.state
    out = Judged([], [], [], [], [])
    for it in ops.items:
        if it is SNAPSHOT:   # a copy: to_list() hands out the state's own lists
            out.snapshots.append([x[:] if type(x) is list else x for x in st.to_list()])
        elif type(it) is int:
            skip(st, it)
        else:
            out.n_before.append(st.count[0] if st.count else 0)
            j = observe(st, it, windows, p)
            out.z.append(j.z)
            out.window.append(j.window)
            out.expected.append(j.expected)
    return out


def judge_many(series: list[Ops], windows: tuple[int, ...], p: TrackerParams = TrackerParams()) -> list[Judged]:
    """:func:`judge_one` of every series, in lockstep (same results, bit for bit)."""
    results: list[Judged] = []
    rows: list[tuple[int, Ops, int]] = []      # (index, ops, first item left to the lockstep)
    for i, ops in enumerate(series):
        # a state that observe() sets up or trims first (level None: a new series; windows
        # changed by a reload) takes its items one by one up to its first value, the rest in lockstep
        st, start = ops.state, 0
        if st.level is None or len(st.var) != len(windows) or len(st.hist_y) > windows[-1]:
            while start < len(ops.items):
                it = ops.items[start]
                start += 1
                if it is not SNAPSHOT and type(it) is not int:
                    break
        results.append(judge_one(Ops(st, ops.items[:start]), windows, p))
        if start < len(ops.items):
            rows.append((i, ops, start))
    for i, judged in (_lockstep(rows, windows, p) if rows else ()):
        done = results[i]
        for name in ("z", "window", "expected", "n_before", "snapshots"):
            getattr(done, name).extend(getattr(judged, name))
    return results


def _lockstep(rows, windows: tuple[int, ...], p: TrackerParams):
    S, nw, W = len(rows), len(windows), windows[-1]
    # per series: its values and, between them, the skips / snapshots (position k = before value k)
    vals: list[list[float]] = []
    between: list[dict[int, list]] = []
    for _, ops, start in rows:
        v: list[float] = []
        b: dict[int, list] = {}
        for it in ops.items[start:]:
            if it is SNAPSHOT or type(it) is int:
                b.setdefault(len(v), []).append(it)
            else:
                v.append(it)
        vals.append(v)
        between.append(b)
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
    m = np.array([len(s.hist_y) for s in states], dtype=np.int64)
    Y, HL, HT = np.zeros((S, W)), np.zeros((S, W)), np.zeros((S, W))
    for row, s in enumerate(states):
        if s.hist_y:
            Y[row, W - len(s.hist_y):] = s.hist_y
            HL[row, W - len(s.hist_l):] = s.hist_l
            HT[row, W - len(s.hist_t):] = s.hist_t
    Z, WIN, EXP, NB = (np.zeros((S, max(K, 1))), np.zeros((S, max(K, 1)), dtype=np.int64),
                       np.zeros((S, max(K, 1))), np.zeros((S, max(K, 1)), dtype=np.int64))
    snaps: list[list] = [[] for _ in range(S)]
    events: dict[int, list[int]] = {}           # k -> rows with skips / snapshots before value k
    for row, r in enumerate(order):
        for k in between[r]:
            if k < lens[row]:                   # those after the last value: after the loop
                events.setdefault(k, []).append(row)
    arrays = (level, trend, slevel, strend, quantum, var, count, m, Y, HL, HT)

    def side(k: int, row: int) -> None:
        for it in between[order[row]][k]:
            if it is SNAPSHOT:
                snaps[row].append(_state_of(arrays, row, W).to_list())
            elif it > 0:                 # skip(): the trackers move by their trend, the windows restart
                level[row] += trend[row] * it
                slevel[row] += strend[row] * it
                m[row] = 0

    c = _Consts(windows, p)
    n = S
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k in range(K):
            while n and lens[n - 1] <= k:
                n -= 1
            for row in events.get(k, ()):
                side(k, row)
            _observe_rows(k, n, V, arrays, (Z, WIN, EXP, NB), c)
    for row in range(S):                        # what comes after each series' last value
        if lens[row] in between[order[row]]:
            side(lens[row], row)
    for row, s in enumerate(states):
        _store(arrays, row, W, s)
    for row, r in enumerate(order):
        L = lens[row]
        yield rows[r][0], Judged(Z[row, :L].tolist(), WIN[row, :L].tolist(), EXP[row, :L].tolist(),
                                 NB[row, :L].tolist(), snaps[row])


class _Consts:
    """judge.py's constants as the Python floats it computes them to."""

    def __init__(self, windows: tuple[int, ...], p: TrackerParams):
        self.windows = windows
        self.min_count = p.min_count
        self.clip_s = p.clip_scale * _ABS_TO_SD
        self.gamma, self.gamma_down, self.inv_gamma = p.gamma, p.gamma_down, 1.0 / p.gamma
        self.lim = p.clip * _ABS_TO_SD
        self.alpha, self.alpha_beta = p.alpha, p.alpha * p.beta
        self.alpha_slow, self.alpha_slow_beta = p.alpha_slow, p.alpha_slow * p.beta


def _observe_rows(k: int, n: int, V, arrays, outs, c: _Consts) -> None:
    """``observe`` of value ``k`` of rows ``:n``, each line as judge.py's (same order of operations)."""
    level, trend, slevel, strend, quantum, var, count, m, Y, HL, HT = arrays
    Z, WIN, EXP, NB = outs
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
    d = np.abs(y - Y[:n, -2]) if W >= 2 else np.zeros(n)
    q = quantum[:n]
    quantum[:n] = np.where((mm >= 2) & (d > 0.0) & ((d < q) | (q == 0.0)), d, q)
    q = quantum[:n]
    best_z, best_az = np.zeros(n), np.zeros(n)
    best_w = np.full(n, c.windows[0], dtype=np.int64)
    z1 = np.zeros(n)
    for i, w in enumerate(c.windows):
        valid = mm >= w
        if w == 1:
            e = y - expected
        else:
            s = 0.0 + Y[:n, W - w]
            for j in range(W - w + 1, W):
                s = s + Y[:n, j]
            e = s - (w * HL[:n, W - w] + HT[:n, W - w] * _TRI[w])
        ae = np.abs(e)
        cnt, v = count[:n, i], var[:n, i]
        cal = valid & (cnt >= c.min_count) & (v > 0.0)
        sd = _ABS_TO_SD * v
        qsd = q * _SQRT[w]
        sd = np.where(qsd > sd, qsd, sd)
        az = ae / sd
        zz = e / sd
        better = cal & (az > best_az)
        best_az = np.where(better, az, best_az)
        best_w = np.where(better, w, best_w)
        best_z = np.where(better, zz, best_z)
        if w == 1:
            z1 = np.where(cal, zz, z1)
        cv = c.clip_s * v
        ae = np.where(cal & (ae > cv), cv, ae)
        cnt1 = cnt + 1
        upd = np.where(cnt1 < c.inv_gamma, v + (ae - v) / cnt1,
                       v + np.where(ae > v, c.gamma, c.gamma_down) * (ae - v))
        var[:n, i] = np.where(valid, upd, v)
        count[:n, i] = np.where(valid, cnt1, cnt)
    e1, e2 = y - expected, y - (sl + stt)
    if c.windows[0] == 1:
        v1 = var[:n, 0]
        lim = c.lim * v1
        ok = (count[:n, 0] > c.min_count) & (v1 > 0.0)
        e1 = np.where(ok, np.where(e1 > lim, lim, np.where(e1 < -lim, -lim, e1)), e1)
        e2 = np.where(ok, np.where(e2 > lim, lim, np.where(e2 < -lim, -lim, e2)), e2)
    level[:n] = expected + c.alpha * e1
    trend[:n] = tr + c.alpha_beta * e1
    slevel[:n] = (sl + stt) + c.alpha_slow * e2
    strend[:n] = stt + c.alpha_slow_beta * e2
    Z[:n, k] = best_z
    WIN[:n, k] = best_w
    EXP[:n, k] = expected


def _state_of(arrays, row: int, W: int) -> JudgeState:
    level, trend, slevel, strend, quantum, var, count, m, Y, HL, HT = arrays
    h = int(m[row])
    return JudgeState(float(level[row]), float(trend[row]), float(slevel[row]), float(strend[row]),
                      float(quantum[row]), var[row].tolist(), count[row].tolist(),
                      Y[row, W - h:].tolist() if h else [], HL[row, W - h:].tolist() if h else [],
                      HT[row, W - h:].tolist() if h else [])


def _store(arrays, row: int, W: int, s: JudgeState) -> None:
    t = _state_of(arrays, row, W)
    s.level, s.trend, s.slow_level, s.slow_trend, s.quantum = t.level, t.trend, t.slow_level, t.slow_trend, t.quantum
    s.var, s.count, s.hist_y, s.hist_l, s.hist_t = t.var, t.count, t.hist_y, t.hist_l, t.hist_t
