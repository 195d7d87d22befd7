"""The lockstep judge (alerts/lockstep.py) equals judge.py bit for bit: every output, every
snapshot and the final state, for any mix of series, gaps, nulls, snapshots, fresh and resumed
states and window settings."""
from __future__ import annotations

import copy
import math
import random

import pytest

from streamflame.alerts.judge import JudgeState, TrackerParams, observe
from streamflame.alerts import lockstep
from streamflame.alerts.lockstep import SNAPSHOT, Ops, judge_many, judge_one


def _series_items(rng: random.Random, n: int, kind: int) -> list:
    """Values of several shapes (noise, quantised steps, spikes, constant stretches, integers),
    with skips (gaps, nulls) and snapshot requests between them."""
    items, level = [], rng.uniform(-50, 50)
    for t in range(n):
        r = rng.random()
        if r < 0.03:
            items.append(rng.choice([1, 1, 2, 5, 40]))
            continue
        if r < 0.08:
            items.append(SNAPSHOT)
        if kind == 0:
            y = level + 3 * math.sin(t / 9) + rng.gauss(0, 1)
        elif kind == 1:
            y = round(level + rng.gauss(0, 2)) * 0.5          # quantised
        elif kind == 2:
            y = level if rng.random() < 0.6 else level + rng.gauss(0, 0.1)   # mostly constant
        else:
            y = level + rng.gauss(0, 1) + (25.0 if rng.random() < 0.02 else 0.0)   # spikes
        level += rng.gauss(0, 0.05)
        items.append(float(y))
    return items


def ops_of(state: JudgeState, items: list) -> Ops:
    o = Ops(state)
    for it in items:
        if it is SNAPSHOT or type(it) is int:
            o.add_side(it)
        else:
            o.values.append(it)
    return o


def _warm_state(rng: random.Random, windows) -> JudgeState:
    st = JudgeState()
    for t in range(rng.randint(1, 300)):
        observe(st, rng.gauss(0, 1) + t * 0.01, windows)
    return st


@pytest.mark.parametrize("min_rows", [0, 24, 10_000])   # lockstep to the end / the few longest one by one / none
@pytest.mark.parametrize("windows", [(1, 2, 3, 5, 8), (1,), (2, 4), (1, 3, 16)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lockstep_equals_one_by_one(windows, seed, min_rows, monkeypatch):
    monkeypatch.setattr(lockstep, "MIN_ROWS", min_rows)
    rng = random.Random(seed)
    series = []
    for i in range(rng.randint(20, 60)):
        st = JudgeState() if rng.random() < 0.3 else _warm_state(rng, (1, 2, 3, 5, 8) if rng.random() < 0.2 else windows)
        items = _series_items(rng, rng.choice([0, 1, 5, 48, 96, 150]), i % 4)
        series.append(ops_of(st, items))
    ref = [Ops(copy.deepcopy(o.state), o.values, o.side) for o in series]
    want = [judge_one(o, windows) for o in ref]
    got = judge_many(series, windows)
    assert sum(len(w.z) for w in want) > 300 and sum(len(w.snapshots) for w in want) > 10
    if windows[0] == 1:   # the series' tail of |z_1| is reported (ready) for some values
        assert sum(x > 0 for w in want for x in w.tail_rate) > 20
    for w, g in zip(want, got):
        assert g == w                      # z, window, expected, n_before, snapshots, z1: exact
    # and each series' state is left exactly as the reference leaves it
    assert [o.state.to_list() for o in series] == [o.state.to_list() for o in ref]


def test_final_states_equal_the_reference():
    rng = random.Random(7)
    windows = (1, 2, 3, 5, 8)
    base = [(_warm_state(rng, windows), _series_items(rng, rng.choice([10, 48, 200]), i % 4)) for i in range(40)]
    a = [ops_of(copy.deepcopy(st), items) for st, items in base]
    b = [ops_of(copy.deepcopy(st), items) for st, items in base]
    for o in a:
        judge_one(o, windows)
    judge_many(b, windows)
    assert [o.state.to_list() for o in a] == [o.state.to_list() for o in b]


def test_a_spike_is_seen_in_lockstep_as_by_the_reference():
    """Not only equal: the judgement is the judge's (a spike after a calm stretch stands out)."""
    rng = random.Random(3)
    windows = (1, 2, 3, 5, 8)
    items = [10.0 + rng.gauss(0, 1) for _ in range(400)] + [30.0]
    got = judge_many([Ops(JudgeState(), items), Ops(JudgeState(), items[:200])], windows, TrackerParams())
    assert got[0].z1[-1] > 8 and got[0].z[-1] > 3      # one step, and the windows that end with it
    assert max(abs(z) for z in got[0].z1[100:-1]) < 6
    assert sum(abs(z) > 0 for z in got[0].z1) > 300 and got[0].z1 != got[0].z
    assert got[0].zd[-1] > 8 and max(abs(z) for z in got[0].zd[100:-1]) < 6   # the raw jump, in its scale
