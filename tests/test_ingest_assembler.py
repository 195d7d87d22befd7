"""SeriesAssembler: every policy branch, cursors, and property tests against a
straightforward reference computation."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamflame.core.constants import PATCH_LEN
from streamflame.messages import PatchMessage
from streamflame.pipeline.ingest.assembler import ACCEPTED, REJECTED, SKIPPED, AssemblerSettings, SeriesAssembler
from streamflame.pipeline.ingest.cursor import CursorDecodeError, IngestCursor, ObsRef

N = PATCH_LEN
T0 = 1_700_000_000_000
F = 60_000  # 1 min


def feed(a: SeriesAssembler, obs, partition=0, start_offset=0):
    """obs: iterable of (ts, value) -> (patches, rejections, results); offset = start_offset + i."""
    patches, rejects, results = [], [], []
    for i, (t, v) in enumerate(obs):
        results.append(a.add(t, v, partition, start_offset + i, 0, ObsRef(b"m%d" % i, b"k", None), patches, rejects))
    return patches, rejects, results


def grid(slots, values=None):
    return [(T0 + k * F, float(k) if values is None else values[i]) for i, k in enumerate(slots)]


def new(freq=F, **kw):
    return SeriesAssembler("s1", AssemblerSettings(**kw), freq)


# ---------------------------------------------------------------- basics


def test_full_patch_is_emitted_when_its_last_slot_fills():
    a = new()
    patches, rejects, res = feed(a, grid(range(N)))
    assert rejects == [] and res == [ACCEPTED] * N
    assert len(patches) == 1
    p = patches[0]
    assert (p.series_id, p.seq, p.start_ms, p.freq_ms) == ("s1", 0, T0, F)
    assert p.values == [float(k) for k in range(N)]
    assert p.n_observed == N and p.last_obs_ms == T0 + (N - 1) * F
    assert (p.partition, p.first_offset, p.last_offset) == (0, 0, N - 1)
    PatchMessage.model_validate(p.to_dict())  # the wire schema accepts it
    assert a.is_clean and a.pin_offset is None


def test_seq_counts_from_zero_and_patches_tile_the_grid():
    a = new()
    patches, _, _ = feed(a, grid(range(3 * N + 5)))
    assert [p.seq for p in patches] == [0, 1, 2]
    assert [p.start_ms for p in patches] == [T0 + s * N * F for s in range(3)]
    assert patches[2].values[0] == float(2 * N)
    assert a.buffered == 5 and a.pin_offset == 3 * N


def test_gap_inside_a_patch_becomes_missing_slots():
    a = new()
    slots = [0, 1, 5, 6] + list(range(7, N))
    patches, rejects, _ = feed(a, grid(slots))
    assert rejects == []
    (p,) = patches
    assert p.values[2:5] == [None, None, None]
    assert p.n_observed == N - 3


def test_gap_across_patches_closes_the_open_one_and_emits_all_missing_patches():
    a = new()
    slots = [0, 1, 2, 3 * N + 4]  # jumps over the tail of patch 0 and whole patches 1, 2
    patches, rejects, _ = feed(a, grid(slots))
    assert rejects == []
    assert [p.seq for p in patches] == [0, 1, 2]
    p0, p1, p2 = patches
    assert p0.values[:3] == [0.0, 1.0, 2.0] and p0.values[3:] == [None] * (N - 3)
    assert (p0.n_observed, p0.first_offset, p0.last_offset, p0.last_obs_ms) == (3, 0, 2, T0 + 2 * F)
    for p in (p1, p2):
        assert p.values == [None] * N and p.n_observed == 0
        # an empty patch is located at the observation whose arrival closed it
        assert (p.first_offset, p.last_offset) == (3, 3)
        PatchMessage.model_validate(p.to_dict())
    assert a.seq == 3 and a.buffered == 1 and a.pin_offset == 3


def test_timestamp_too_far_is_rejected_and_the_limit_itself_is_accepted():
    a = new(max_gap_steps=100)
    _, rejects, res = feed(a, grid([0, 101, 100]))
    assert res == [ACCEPTED, REJECTED, ACCEPTED]
    assert [r.reason for r in rejects] == ["timestamp_too_far"]
    assert rejects[0].offset == 1 and rejects[0].ref.raw == b"m1"
    assert "101 steps" in rejects[0].detail


def test_off_grid_snaps_within_tolerance_else_rejected():
    a = new(grid_tolerance=0.1)  # 6 s of a 60 s step
    obs = [(T0, 0.0), (T0 + F + 6_000, 1.0), (T0 + 2 * F - 6_000, 2.0), (T0 + 3 * F + 6_001, 3.0),
           (T0 + 4 * F - 6_001, 4.0), (T0 + 5 * F + 30_000, 5.0)]
    _, rejects, res = feed(a, obs + grid(range(6, N)))
    assert res[:6] == [ACCEPTED, ACCEPTED, ACCEPTED, REJECTED, REJECTED, REJECTED]
    assert [r.reason for r in rejects] == ["off_grid"] * 3
    assert a.last_slot == N - 1


def test_snapped_values_land_in_their_slots():
    a = new(grid_tolerance=0.25)
    obs = [(T0 + k * F + (10_000 if k % 2 else -10_000 if k else 0), float(k)) for k in range(N)]
    patches, rejects, _ = feed(a, obs)
    assert rejects == [] and patches[0].values == [float(k) for k in range(N)]


def test_zero_tolerance_requires_exact_grid():
    a = new(grid_tolerance=0.0)
    _, rejects, _ = feed(a, [(T0, 1.0), (T0 + F + 1, 2.0), (T0 + F, 3.0)])
    assert [r.reason for r in rejects] == ["off_grid"]


@pytest.mark.parametrize("second_value", [5.0, 6.0, None])
def test_same_slot_again_is_duplicate_whatever_the_value(second_value):
    a = new()
    _, rejects, res = feed(a, [(T0, 1.0), (T0 + F, 5.0), (T0 + F, second_value)])
    assert res == [ACCEPTED, ACCEPTED, REJECTED]
    assert rejects[0].reason == "duplicate"


def test_earlier_slot_of_the_open_patch_is_late():
    a = new()
    _, rejects, res = feed(a, grid([0, 5, 3]))
    assert res[2] == REJECTED and rejects[0].reason == "late"
    assert "before the last observed slot" in rejects[0].detail


def test_an_observed_slot_that_is_not_the_last_is_duplicate():
    a = new()
    _, rejects, _ = feed(a, grid([0, 3, 5, 3]))
    assert [r.reason for r in rejects] == ["duplicate"]


def test_slot_inside_an_emitted_patch_is_late_and_before_anchor_too():
    a = new()
    _, rejects, _ = feed(a, grid(list(range(N + 2)) + [N - 1, 10, -1]))
    assert [r.reason for r in rejects] == ["late", "late", "late"]
    assert "inside an emitted patch" in rejects[0].detail


def test_rejections_change_nothing():
    a, b = new(), new()
    good = grid([0, 1, 2, 7, 8, N + 1, N + 3])
    pa, _, _ = feed(a, good)
    bad = good[:3] + [(T0 + 2 * F, 9.0), (T0 + 1 * F, 9.0), (T0 + 2 * F + 30_000, 9.0)] + good[3:]
    pb, rb, _ = feed(b, bad)
    assert [r.reason for r in rb] == ["duplicate", "duplicate", "off_grid"]
    assert pa == [p._replace(first_offset=p.first_offset - (p.first_offset > 2) * 3,
                             last_offset=p.last_offset - (p.last_offset > 2) * 3) for p in pb]
    assert a.cursor().next_seq == b.cursor().next_seq and a.last_slot == b.last_slot


def test_null_value_is_an_observed_missing_slot():
    a = new()
    vals = [None if k in (3, 4) else float(k) for k in range(N)]
    patches, rejects, _ = feed(a, grid(range(N), vals))
    (p,) = patches
    assert p.values[3] is None and p.values[4] is None
    assert p.n_observed == N - 2  # counts non-null slots, as PatchMessage requires
    PatchMessage.model_validate(p.to_dict())
    b = new()
    _, rejects, _ = feed(b, [(T0, None), (T0, 1.0)])
    assert [r.reason for r in rejects] == ["duplicate"]  # the null filled the slot


# ---------------------------------------------------------------- inference


def test_frequency_is_inferred_as_median_diff_and_grid_anchored_at_first():
    a = new(freq=None, freq_inference_points=5)
    ts = [T0, T0 + F, T0 + 2 * F, T0 + 4 * F, T0 + 5 * F]  # diffs F, F, 2F, F -> median_low F
    patches, rejects, res = feed(a, [(t, 1.0) for t in ts[:4]])
    assert res == [ACCEPTED] * 4 and a.freq_ms is None and a.buffered == 4 and a.pin_offset == 0
    patches, rejects, res = feed(a, [(ts[4], 1.0)], start_offset=4)
    assert a.freq_ms == F and a.anchor_ms == T0 and rejects == [] and patches == []
    assert a.last_slot == 5 and a.buffered == 5 and a.pin_offset == 0


def test_inference_buffer_rejects_repeats_and_defers_grid_rejections():
    a = new(freq=None, freq_inference_points=4, grid_tolerance=0.1)
    obs = [(T0, 1.0), (T0, 2.0), (T0 - 5, 2.0), (T0 + F, 3.0), (T0 + F + F // 2, 4.0), (T0 + 3 * F, 5.0)]
    patches, rejects, res = feed(a, obs)
    assert res == [ACCEPTED, REJECTED, REJECTED, ACCEPTED, ACCEPTED, ACCEPTED]
    # diffs F, F/2, 3F/2 -> median_low F; the half-step observation is off the inferred grid
    assert a.freq_ms == F
    assert [(r.reason, r.offset, r.ref.raw) for r in rejects] == [
        ("duplicate", 1, b"m1"), ("late", 2, b"m2"), ("off_grid", 4, b"m4")]
    assert a.last_slot == 3


def test_inference_with_a_long_buffer_can_emit_patches():
    a = new(freq=None, freq_inference_points=N + 3)
    patches, _, _ = feed(a, grid(range(N + 3)))
    assert [p.seq for p in patches] == [0] and a.buffered == 3 and a.pin_offset == N


# ---------------------------------------------------------------- cursors


def test_cursor_json_round_trip_and_versions():
    a = new()
    feed(a, grid(range(N + 7)))
    c = a.cursor()
    assert (c.next_seq, c.n_covered, c.last_offset, c.last_slot) == (1, N, N - 1, N - 1)
    assert IngestCursor.from_json(c.to_json()) == c
    spill = a.cursor(include_open=True)
    assert spill.version > c.version and spill.open_slots == [[i, float(N + i)] for i in range(7)]
    assert IngestCursor.from_json(spill.to_json()) == spill


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"series_id": 3}', b'{"series_id": "x", "next_seq": -1}',
                                 b'{"series_id": "x", "bogus": 1}', b'{"series_id": "x", "freq_ms": 0}'])
def test_bad_cursor_raises_cursor_decode_error(raw):
    with pytest.raises(CursorDecodeError):
        IngestCursor.from_json(raw)


def test_resume_skips_what_the_cursor_covers_and_rebuilds_the_rest():
    obs = grid(list(range(0, 40)) + list(range(45, 2 * N + 10)))
    full = new()
    ref, _, _ = feed(full, obs)
    # crash after 70 observations: cursor persisted after patch 0, open patch held 70 - ... observations
    a = new()
    first, _, _ = feed(a, obs[:70])
    cur = IngestCursor.from_json(a.cursor().to_json())
    restart_at = a.pin_offset
    b = SeriesAssembler.from_cursor(cur, AssemblerSettings(), None)
    p2, rej, res = feed(b, obs[restart_at:], start_offset=restart_at)
    assert rej == [] and SKIPPED not in res  # pin is the first offset after the cursor
    # rewinding further back (e.g. to 0) re-reads covered observations: skipped, not rejected
    c = SeriesAssembler.from_cursor(cur, AssemblerSettings(), None)
    p3, rej3, res3 = feed(c, obs, start_offset=0)
    assert rej3 == [] and res3.count(SKIPPED) == cur.last_offset + 1
    assert first + p2 == ref and first + p3 == ref


def test_skip_is_per_batch_element():
    """A batch message split by a patch boundary: same offset, the index decides."""
    a = new()
    P, R = [], []
    for i in range(N + 5):
        a.add(T0 + i * F, 1.0, 0, 7, i, None, P, R)
    cur = a.cursor()
    assert (cur.last_offset, cur.last_index) == (7, N - 1)
    b = SeriesAssembler.from_cursor(cur, AssemblerSettings(), F)
    P2, R2, res = [], [], []
    for i in range(N + 5):
        res.append(b.add(T0 + i * F, 1.0, 0, 7, i, None, P2, R2))
    assert res == [SKIPPED] * N + [ACCEPTED] * 5 and R2 == []


def test_cursor_keeps_its_frequency_over_the_config():
    a = new()
    feed(a, grid(range(N)))
    b = SeriesAssembler.from_cursor(a.cursor(), AssemblerSettings(), 5 * F)
    assert b.freq_ms == F


def test_spilled_open_patch_and_inference_buffer_resume_exactly():
    for freq, pts in ((F, 3), (None, 6)):
        obs = grid([0, 1, 3, 4, 8, 9, 12] + list(range(13, 2 * N)))
        ref, _, _ = feed(new(freq, freq_inference_points=pts), obs)
        a = new(freq, freq_inference_points=pts)
        out, _, _ = feed(a, obs[:5])
        spill = IngestCursor.from_json(a.cursor(include_open=True).to_json())
        b = SeriesAssembler.from_cursor(spill, AssemblerSettings(freq_inference_points=pts), freq)
        assert b.pin_offset is None  # nothing in memory needs re-reading
        more, rej, res = feed(b, obs, start_offset=0)  # rewound to the start: covered ones skipped
        assert res[:5] == [SKIPPED] * 5 and rej == []
        assert out + more == ref


def test_settings_are_validated():
    for kw in ({"patch_len": 0}, {"freq_inference_points": 1}, {"max_gap_steps": 0},
               {"grid_tolerance": 0.5}, {"grid_tolerance": -0.1}):
        with pytest.raises(ValueError):
            AssemblerSettings(**kw)
    with pytest.raises(ValueError, match="freq_ms"):
        SeriesAssembler("x", AssemblerSettings(), 0)


# ---------------------------------------------------------------- properties


def reference_patches(series_id, t0, freq, obs):
    """Patches of a valid stream (strictly increasing on-grid slots), computed directly."""
    by_slot = {(t - t0) // freq: v for t, v in obs}
    last = max(by_slot)
    out = []
    for seq in range((last + 1) // N):
        vals = [by_slot.get(seq * N + j) for j in range(N)]
        out.append((seq, t0 + seq * N * freq, vals))
    return out


valid_stream = st.lists(
    st.tuples(st.integers(1, 60), st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False))),
    min_size=1, max_size=400,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=valid_stream, data=st.data(), infer=st.booleans())
def test_crash_restart_anywhere_gives_the_reference_patches(steps, data, infer):
    """Random valid streams, processed in random batches with the consumer's
    protocol (cursor persisted after a batch that emitted, commit at the min pin),
    crashing at random batch ends: the union of the output is the reference, and
    every duplicate equals its original."""
    freq = 1000
    slots, k = [], 0
    for i, (d, _) in enumerate(steps):
        k = 0 if i == 0 else k + d
        slots.append(k)
    obs = [(T0 + s * freq, v) for s, (_, v) in zip(slots, steps)]
    pts = 3
    if infer:
        assume(len(obs) >= pts)
        # the inferred step must be the grid step: make the first diffs 1 step
        obs = [(T0 + i * freq, v) for i, (_, v) in enumerate(obs[:pts])] + [
            (t + pts * freq, v) for t, v in obs[pts:]]
        obs = sorted(set(obs), key=lambda x: x[0])
        obs = [o for i, o in enumerate(obs) if i == 0 or o[0] != obs[i - 1][0]]
    ref = reference_patches("s", T0, freq, obs)
    s = AssemblerSettings(freq_inference_points=pts)
    cfg_freq = None if infer else freq

    persisted: IngestCursor | None = None
    committed = 0
    emitted: dict[int, tuple] = {}
    a = SeriesAssembler("s", s, cfg_freq)
    pos = crashes = 0
    while pos < len(obs):
        size = data.draw(st.integers(1, 80))
        batch_end = min(len(obs), pos + size)
        P, R = [], []
        for off in range(pos, batch_end):
            t, v = obs[off]
            a.add(t, v, 0, off, 0, None, P, R)
        assert R == []
        for p in P:
            key = (p.seq, p.start_ms, tuple(p.values))
            assert emitted.setdefault(p.seq, key) == key  # duplicates identical
        if P:
            persisted = a.cursor()
        committed = batch_end if a.pin_offset is None else a.pin_offset
        pos = batch_end
        if crashes < 20 and data.draw(st.integers(0, 3)) == 3:  # crash: restart from Redis + committed offset
            crashes += 1
            a = (SeriesAssembler("s", s, cfg_freq) if persisted is None
                 else SeriesAssembler.from_cursor(IngestCursor.from_json(persisted.to_json()), s, cfg_freq))
            # other series of the partition may hold the commit further back
            pos = committed - data.draw(st.integers(0, committed))
    assert [emitted[s_] for s_ in sorted(emitted)] == [(q, st_, tuple(v)) for q, st_, v in ref]


@settings(max_examples=150, deadline=None)
@given(steps=valid_stream, bad=st.lists(st.tuples(st.integers(0, 399), st.sampled_from(
    ["dup", "late", "off_grid", "too_far"]), st.integers(0, 10**6)), max_size=60))
def test_bad_observations_never_change_valid_output(steps, bad):
    freq, max_gap = 1000, 100
    slots, k = [], 0
    for i, (d, _) in enumerate(steps):
        k = 0 if i == 0 else k + d
        slots.append(k)
    obs = [(T0 + s_ * freq, v) for s_, (_, v) in zip(slots, steps)]
    s = AssemblerSettings(max_gap_steps=max_gap, grid_tolerance=0.1)
    clean = SeriesAssembler("s", s, freq)
    ref, R, _ = feed(clean, obs)
    assert R == []

    inserts: dict[int, list] = {}
    for after, kind, r in bad:
        if after >= len(obs):
            continue
        last = slots[after]
        if kind == "dup":
            t = T0 + last * freq
        elif kind == "late":
            t = T0 + (last - 1 - r % 500) * freq
        elif kind == "off_grid":
            t = T0 + (last + r % 50) * freq + 101 + r % 798
        else:
            t = T0 + (last + max_gap + 1 + r % 1000) * freq
        inserts.setdefault(after, []).append((t, -1.0))
    noisy_obs = []
    for i, o in enumerate(obs):
        noisy_obs.append(o)
        noisy_obs += inserts.get(i, [])
    noisy = SeriesAssembler("s", s, freq)
    got, R2, res = feed(noisy, noisy_obs)
    assert len(R2) == sum(len(v) for v in inserts.values())
    strip = lambda ps: [(p.seq, p.start_ms, p.values, p.n_observed, p.last_obs_ms) for p in ps]  # noqa: E731
    assert strip(got) == strip(ref)
    assert all(not (isinstance(v, float) and math.isnan(v)) for p in got for v in p.values)


# ---------------------------------------------------------------- bulk path (batch messages)


def _run_both(messages, infer: bool, resume_at: int | None = None):
    """Feed batch messages [(ts list, values list)] to one assembler through add_run (with the
    per-observation fallback, as the consumer does) and to another one observation at a time;
    returns both (patches, rejections, cursors after each message, used-bulk count)."""
    out = []
    for bulk in (True, False):
        a = new(None if infer else F)
        patches, rejects, cursors, used = [], [], [], 0
        for off, (ts, vs) in enumerate(messages):
            if bulk and a.add_run(ts, vs, 0, off, patches):
                used += 1
            else:
                for i, (t, v) in enumerate(zip(ts, vs)):
                    a.add(t, v, 0, off, i, ObsRef(b"m%d" % off, b"k", i), patches, rejects)
            cursors.append((a.cursor().to_json(), a.cursor(include_open=True).to_json(), a.pin_offset))
        out.append((patches, [(r.reason, r.timestamp_ms, r.offset, r.detail) for r in rejects], cursors, used))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), infer=st.booleans())
def test_bulk_add_run_equals_one_by_one(data, infer):
    """add_run is only a faster add: the same patches, rejections and cursors as feeding each
    element, for runs that continue the grid (bulk) and for anything else (fallback)."""
    messages, slot = [], 0
    for _ in range(data.draw(st.integers(1, 12))):
        kind = data.draw(st.sampled_from(["run", "run", "run", "gap", "overlap", "offgrid", "single"]))
        n = data.draw(st.integers(1, 70))
        if kind == "gap":
            slot += data.draw(st.integers(1, 60))
        elif kind == "overlap":
            slot = max(0, slot - data.draw(st.integers(1, 5)))
        slots = list(range(slot, slot + (1 if kind == "single" else n)))
        ts = [T0 + k * F + (7_000 if kind == "offgrid" and i == len(slots) // 2 else 0) for i, k in enumerate(slots)]
        vs = [None if data.draw(st.integers(0, 9)) == 0 else float(k % 13) for k in slots]
        messages.append((ts, vs))
        slot = slots[-1] + 1
    (p1, r1, c1, used), (p2, r2, c2, _) = _run_both(messages, infer)
    assert p1 == p2
    assert r1 == r2
    assert c1 == c2


def test_bulk_path_is_taken_for_a_sensor_stream_and_skipped_otherwise():
    msgs = [([T0 + k * F for k in range(a, a + 30)], [float(k) for k in range(a, a + 30)]) for a in range(0, 300, 30)]
    (p1, r1, c1, used), (p2, r2, c2, _) = _run_both(msgs, infer=False)
    assert used == 10 and len(p1) == 300 // N and p1 == p2 and r1 == r2 == [] and c1 == c2   # the first anchors
    assert not new(None).add_run([T0, T0 + F], [1.0, 2.0], 0, 0, [])    # frequency still to infer
    a = new(F)
    a.add(T0, 0.0, 0, 0, 0, None, [], [])
    assert not a.add_run([T0 + 2 * F, T0 + 3 * F], [1.0, 2.0], 0, 1, [])   # a gap: one by one
    assert not a.add_run([T0 + F, T0 + 2 * F], [1.0, 2.0], 0, 1, [], limit_ms=T0 + F)  # beyond the limit
    before = (a.cursor(include_open=True).to_json(), a.last_slot)
    assert a.add_run([T0 + F, T0 + 2 * F], [1.0, None], 0, 1, [])
    assert before != (a.cursor(include_open=True).to_json(), a.last_slot) and a.last_slot == 2


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), infer=st.booleans(), resume=st.booleans())
def test_bulk_add_run_of_single_records_equals_one_by_one(data, infer, resume):
    """add_run with one offset per element (consecutive single-observation records, as the
    ingest fast path groups them) equals add of each record with index 0: same patches,
    rejections and cursors (also resumed from a cursor whose skip region the run starts in)."""
    obs, slot, off = [], 0, 0
    for _ in range(data.draw(st.integers(1, 150))):
        kind = data.draw(st.sampled_from(["next"] * 8 + ["gap", "back", "offgrid"]))
        if kind == "gap":
            slot += data.draw(st.integers(1, 60))
        elif kind == "back":
            slot = max(0, slot - data.draw(st.integers(1, 5)))
        t = T0 + slot * F + (7_000 if kind == "offgrid" else 0)
        obs.append((t, None if data.draw(st.integers(0, 9)) == 0 else float(slot % 13), off))
        off += data.draw(st.integers(1, 3))
        slot += 1
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(obs) - 1)), max_size=12))))
    runs = [obs[a:b] for a, b in zip([0, *cuts], [*cuts, len(obs)]) if obs[a:b]]
    start = None
    if resume:  # a cursor covering a prefix: the runs that start inside it must fall back
        pre = new(None if infer else F)
        k = data.draw(st.integers(0, len(obs)))
        for t, v, o in obs[:k]:
            pre.add(t, v, 0, o, 0, None, [], [])
        start = pre.cursor()
    out = []
    for bulk in (True, False):
        a = (SeriesAssembler.from_cursor(start, AssemblerSettings(), None if infer else F) if start is not None
             else new(None if infer else F))
        patches, rejects, cursors, used = [], [], [], 0
        for run in runs:
            ts, vs, offs = [r[0] for r in run], [r[1] for r in run], [r[2] for r in run]
            if bulk and a.add_run(ts, vs, 0, offs, patches):
                used += 1
            else:
                for t, v, o in run:
                    a.add(t, v, 0, o, 0, ObsRef(b"m%d" % o, b"k", None), patches, rejects)
            cursors.append((a.cursor().to_json(), a.cursor(include_open=True).to_json(), a.pin_offset))
        out.append((patches, [(r.reason, r.timestamp_ms, r.offset, r.detail) for r in rejects], cursors))
    assert out[0] == out[1]


def test_bulk_single_records_take_the_fast_form_for_a_sensor_stream():
    a = new(F)
    patches: list = []
    offs = list(range(0, 3 * N * 2, 2))
    assert a.add_run([T0 + k * F for k in range(3 * N - 1)], [float(k) for k in range(3 * N - 1)], 0,
                     offs[:-1], patches)
    assert [p.seq for p in patches] == [0, 1] and a.pin_offset == offs[2 * N]
    assert (patches[1].first_offset, patches[1].last_offset) == (offs[N], offs[2 * N - 1])
    assert a.cursor().last_offset == offs[2 * N - 1] and a.cursor().last_index == 0
