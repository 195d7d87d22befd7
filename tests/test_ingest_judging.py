"""Deferred alert judgement (pipeline/ingest/judging.py): assemblers that collect a batch's
slots and are judged together, the deviation judges in lockstep, give the same events and
the same cursors, byte for byte, as assemblers that judge each slot as it comes, whatever
the batching (so replays and restarts, which re-batch, behave as before)."""
from __future__ import annotations

import random

import pytest

from streamflame.alerts.settings import AlertSettings
from streamflame.core.constants import PATCH_LEN
from streamflame.pipeline.ingest.assembler import AssemblerSettings, SeriesAssembler
from streamflame.pipeline.ingest.cursor import ObsRef
from streamflame.pipeline.ingest.judging import judge_deferred

T0 = 1_700_000_000_000
F = 60_000


def stream(rng: random.Random, n: int, kind: int) -> list[tuple[int, float | int | None]]:
    """(timestamp, value) on the grid with spikes, level shifts, flatlines, nulls, gaps and integers."""
    out, level = [], rng.uniform(-20, 20)
    k = 0
    while len(out) < n:
        r = rng.random()
        if r < 0.01:
            k += rng.choice([2, 3, 8, 60])           # a gap (a dropout if long)
        if kind == 0:
            v = level + rng.gauss(0, 1) + (15 if rng.random() < 0.01 else 0)
        elif kind == 1:
            v = int(level + rng.gauss(0, 3))         # integers
        elif kind == 2:
            v = level if (k // 30) % 3 == 0 else level + rng.gauss(0, 0.5)   # stuck stretches
        else:
            v = level + 0.2 * rng.gauss(0, 1)
        if rng.random() < 0.005:
            level += rng.choice([-8, 8])             # a level shift
        out.append((T0 + k * F, None if rng.random() < 0.02 else v))
        k += 1
    return out


def _settings(i: int) -> AlertSettings:
    return AlertSettings(suppress_patches=1) if i % 5 else AlertSettings(windows=(1, 3, 6), suppress_patches=0,
                                                                        range=(-15.0, 15.0))


def _feed(a: SeriesAssembler, obs, offset: int, patches: list) -> None:
    ts = [t for t, _ in obs]
    vs = [v for _, v in obs]
    if len(obs) > 1 and a.add_run(ts, vs, 0, offset, patches):
        return
    for i, (t, v) in enumerate(obs):
        a.add(t, v, 0, offset, i, ObsRef(b"x", b"k", i), patches, [])


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_judgement_equals_judging_each_slot(seed):
    rng = random.Random(seed)
    S = 48
    streams = [stream(rng, rng.choice([100, 300, 600]), i % 4) for i in range(S)]
    now = [SeriesAssembler(f"s{i}", AssemblerSettings(), F, _settings(i)) for i in range(S)]
    later = [SeriesAssembler(f"s{i}", AssemblerSettings(), F, _settings(i)) for i in range(S)]
    for a in later:
        a.defer_judging()
    pos = [0] * S
    offset = 0
    patches_now, patches_later = [], []
    events_now, events_later = [], []
    while any(p < len(s) for p, s in zip(pos, streams)):
        active = [i for i in range(S) if pos[i] < len(streams[i])]
        # a batch: some series (all, or a few so that the one-by-one path runs too), each a few records
        chosen = active if rng.random() < 0.6 else rng.sample(active, min(len(active), rng.randint(1, 5)))
        for i in chosen:
            for _ in range(rng.randint(1, 3)):
                take = rng.choice([1, 1, 5, PATCH_LEN, 70])
                obs = streams[i][pos[i]:pos[i] + take]
                if not obs:
                    break
                pos[i] += len(obs)
                offset += 1
                _feed(now[i], obs, offset, patches_now)
                _feed(later[i], obs, offset, patches_later)
        judge_deferred(later)
        for i in chosen:
            events_now += now[i].alert_events
            events_later += later[i].alert_events
            now[i].alert_events, later[i].alert_events = [], []
            assert later[i].cursor().to_json() == now[i].cursor().to_json()
    assert events_later == events_now
    assert patches_later == patches_now
    kinds = {ev.kind for _, ev in events_now}
    assert {"deviation", "dropout", "flatline"} <= kinds, kinds        # the data exercises the detectors
    for a, b in zip(now, later):
        assert b.cursor(include_open=True).to_json() == a.cursor(include_open=True).to_json()


def test_reading_the_state_judges_what_is_pending_first():
    """cursor(), check_silence() and a reload see every accepted slot judged, deferred or not."""
    rng = random.Random(5)
    obs = stream(rng, 200, 0)
    a, b = (SeriesAssembler("s", AssemblerSettings(), F, AlertSettings(suppress_patches=0)) for _ in range(2))
    b.defer_judging()
    _feed(a, obs, 1, [])
    _feed(b, obs, 1, [])
    assert b.deferred.runs                                   # pending until someone looks
    assert b.cursor(include_open=True).to_json() == a.cursor(include_open=True).to_json()
    assert not b.deferred.runs and b.alert_events == a.alert_events
    _feed(a, [(obs[-1][0] + F, 1.0)], 2, [])
    _feed(b, [(obs[-1][0] + F, 1.0)], 2, [])
    later = obs[-1][0] + 40 * F
    a.check_silence(later)
    b.check_silence(later)
    assert b.alert_events == a.alert_events and any(ev.kind == "dropout" for _, ev in a.alert_events)
    b.set_alert_settings(AlertSettings(windows=(1, 2)))
    assert b.deferred is not None and not b.deferred.runs  # still deferring, with the new settings
