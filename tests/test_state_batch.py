"""StateBatch (model/batch.py): the same bytes as SeriesState and the same numbers as
update_many / forecast_many, for any batch composition, row order and chunking; a bad state
rejects only itself."""
from __future__ import annotations

import numpy as np
import pytest

from streamflame import Forecaster, SeriesState, StateDecodeError
from streamflame.model import forecaster as fc_mod
from streamflame.model import tiny_config
from streamflame.model.batch import EncodedState

P = 48
SEASONAL = ("cal", "clock", "profile", "herr", "next")     # fields newer than the first stored states


@pytest.fixture(scope="module", params=["plain", "seasonal"])
def f(request) -> Forecaster:
    """The tiny config, and with the shipped checkpoint's seasonal levers (fields a step passes
    through unchanged: a partial step must not copy a field onto itself)."""
    levers = {"seasonal_memory": True, "hint_features": True} if request.param == "seasonal" else {}
    return Forecaster.from_config(tiny_config(**levers), seed=0)


def random_states(f: Forecaster, rng, n: int) -> list[SeriesState]:
    """States after 1-6 patches of varied series; scales, calendars and levels vary."""
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 7)) * P
        t = np.arange(k)
        x = rng.normal(0, 3) + np.sin(2 * np.pi * t / rng.integers(5, 60)) * rng.uniform(0.5, 5) \
            + rng.normal(0, 0.3, k)
        x[rng.random(k) < 0.05] = np.nan
        x *= 10 ** rng.uniform(-2, 3)
        out.append(f.state_from_history(x, scale=float(rng.choice([1.0, 0.5, 3.0])),
                                        step_seconds=float(rng.choice([60.0, 600.0])) if rng.random() < 0.7 else None))
    return out


def old_format(s: SeriesState) -> bytes:
    """The bytes of the same state written before the seasonal fields existed."""
    return SeriesState(s.model_id, s.dtype, {k: v for k, v in s.tensors.items() if k not in SEASONAL},
                       s.buffer, s.n_obs, s.n_patches, s.scale).to_bytes()


def fill(f: Forecaster, blobs: list[bytes]):
    sb = f.state_batch(len(blobs))
    assert [sb.append_bytes(b) for b in blobs] == list(range(len(blobs)))
    sb.seal()
    return sb


def test_decode_encode_roundtrip_is_byte_identical(f):
    rng = np.random.default_rng(0)
    states = random_states(f, rng, 23) + [f.init_state(), f.init_state(2.5, step_seconds=3600)]
    blobs = [s.to_bytes() for s in states]
    sb = fill(f, blobs)
    assert sb.to_bytes() == blobs
    assert sb.to_bytes([5, 0, 5]) == [blobs[5], blobs[0], blobs[5]]
    for i in (0, 7, 24):
        assert sb.state(i) == states[i]
    enc = f.state_batch(3)
    for b in blobs[:3]:
        enc.append_encoded(EncodedState(b))
    assert enc.to_bytes() == blobs[:3]


def test_header_template_matches_orjson_for_odd_values(f):
    """The per-series header is built from a template: it must equal SeriesState's for any counts and scale."""
    base = f.init_state()
    sb = f.state_batch(8)
    odd = [(0, 0, 1.0), (10 ** 12 + 7, 3, 1e-7), (48, 1, 0.1 + 0.2), (96, 2, 123456789.125), (5, 5, 5e300)]
    states = [SeriesState(base.model_id, base.dtype, base.tensors, base.buffer, a, b, c) for a, b, c in odd]
    for s in states:
        sb.append_bytes(s.to_bytes())
    assert sb.to_bytes() == [s.to_bytes() for s in states]


@pytest.mark.parametrize("trial", range(4))
def test_step_and_forecast_equal_update_many_and_forecast_many_for_any_composition(f, trial, monkeypatch):
    """Random compositions (duplicates, old-format states), random row subsets per round and
    forecast chunk sizes: the same state bytes and forecasts as the SeriesState calls."""
    rng = np.random.default_rng(100 + trial)
    monkeypatch.setattr(fc_mod, "CPU_FORECAST_CHUNK", int(rng.choice([16, 32, 128])))
    pool = random_states(f, rng, 12)
    n = int(rng.integers(1, 70))
    pick = rng.integers(0, len(pool), n)
    states = [pool[i] for i in pick]
    old = rng.random(n) < 0.3
    blobs = [old_format(s) if o else s.to_bytes() for s, o in zip(states, old)]
    ref = [SeriesState.from_bytes(b) for b in blobs]
    sb = fill(f, blobs)
    for rnd in range(3):
        rows = sorted(rng.choice(n, int(rng.integers(1, n + 1)), replace=False).tolist()) if rnd else list(range(n))
        if rnd and rng.random() < 0.4:
            rows = list(range(int(rng.integers(1, n + 1))))   # a prefix (the worker's later rounds often are)
        elif rnd and n >= 16 and rng.random() < 0.5:
            a = int(rng.integers(0, n - 15))                   # a run of 16: gather hands the step views
            rows = list(range(a, a + 16))
        elif rng.random() < 0.5:
            rng.shuffle(rows)
        patches = rng.normal(5, 2, (len(rows), P))
        patches[rng.random(patches.shape) < 0.1] = np.nan
        new = f.update_many([ref[r] for r in rows], patches)
        for r, s in zip(rows, new):
            ref[r] = s
        f.step_batch(sb, patches, rows)
        assert sb.to_bytes() == [s.to_bytes() for s in ref]
        frows = rng.permutation(n)[:int(rng.integers(1, n + 1))].tolist()
        seeds = rng.integers(0, 2 ** 62, len(frows)).tolist()
        h = int(rng.integers(1, f.config.max_horizon + 1))
        want = f.forecast_many([ref[r] for r in frows], h, (0.1, 0.5, 0.9), 17, seeds)
        with_samples = bool(rng.random() < 0.7)
        got = f.forecast_batch(sb, frows, h, (0.1, 0.5, 0.9), 17, seeds, samples=with_samples)
        assert len(got) == len(frows)
        for j, w in enumerate(want):
            g = got.get(j)
            assert g.mean.tobytes() == w.mean.tobytes() and g.quantiles.tobytes() == w.quantiles.tobytes()
            assert g.quantile_levels == w.quantile_levels
            assert g.samples.tobytes() == w.samples.tobytes() if with_samples else g.samples is None


def test_batch_equals_the_single_series_calls(f):
    """One series' bytes and forecast do not depend on the batch it is in: equal to update/forecast."""
    rng = np.random.default_rng(7)
    states = random_states(f, rng, 19)
    patches = rng.normal(0, 1, (19, P))
    sb = fill(f, [s.to_bytes() for s in states])
    f.step_batch(sb, patches)
    single = [f.update(s, x) for s, x in zip(states, patches)]
    assert sb.to_bytes() == [s.to_bytes() for s in single]
    got = f.forecast_batch(sb, None, 30, num_samples=20, seeds=list(range(19)))
    for i, s in enumerate(single):
        one = f.forecast(s, 30, num_samples=20, seed=i)
        assert got.get(i).mean.tobytes() == one.mean.tobytes()
        assert got.get(i).quantiles.tobytes() == one.quantiles.tobytes()


def test_bad_states_reject_only_themselves(f):
    rng = np.random.default_rng(3)
    good = random_states(f, rng, 3)
    b = good[0].to_bytes()
    other = Forecaster.from_config(tiny_config(), seed=1)
    f64 = Forecaster.from_config(tiny_config(), seed=0).to(dtype=__import__("torch").float64)
    wide = dict(good[1].tensors, window=np.zeros(7, np.float32))
    flipped = bytearray(b)
    flipped[len(b) // 2] ^= 1
    bad = {
        "truncated": b[:-9],
        "crc": bytes(flipped),
        "magic": b"XXXX" + b[4:],
        "garbage": b"SFST\x01garbage",
        "foreign model": other.update(other.init_state(), rng.normal(0, 1, P)).to_bytes(),
        "float64 state": f64.update(f64.init_state(), rng.normal(0, 1, P)).to_bytes(),
        "partial patch": f.update(good[2], rng.normal(0, 1, 5)).to_bytes(),
        "wrong shape": SeriesState(f.model_id, f.dtype, wide, good[1].buffer, 48, 1).to_bytes(),
        "not bytes": "a string",
    }
    sb = f.state_batch(8)
    sb.append_bytes(good[0].to_bytes())
    for name, data in bad.items():
        with pytest.raises(StateDecodeError):
            sb.append_bytes(data)
        assert sb.size == 1, name
    sb.append_bytes(good[1].to_bytes())
    sb.append_bytes(good[2].to_bytes())
    sb.seal()
    patches = rng.normal(0, 1, (3, P))
    f.step_batch(sb, patches)
    assert sb.to_bytes() == [s.to_bytes() for s in f.update_many(good, patches)]


def test_odd_but_valid_states_load_as_update_many_loads_them(f):
    """A state with meta, a float64 empty buffer or fields in another order: the fallback decoder;
    after a step the bytes equal update_many's."""
    rng = np.random.default_rng(5)
    s = random_states(f, rng, 1)[0]
    odd = [
        SeriesState(s.model_id, s.dtype, s.tensors, s.buffer, s.n_obs, s.n_patches, s.scale, meta={"k": 1}),
        SeriesState(s.model_id, s.dtype, s.tensors, np.zeros(0, np.float64), s.n_obs, s.n_patches, s.scale),
        SeriesState(s.model_id, s.dtype, dict(reversed(list(s.tensors.items()))), s.buffer, s.n_obs, s.n_patches),
        SeriesState.from_bytes(old_format(s)),
    ]
    sb = fill(f, [o.to_bytes() for o in odd])
    patches = rng.normal(0, 1, (len(odd), P))
    f.step_batch(sb, patches)
    assert sb.to_bytes() == [x.to_bytes() for x in f.update_many(odd, patches)]


def test_misuse_is_a_clear_error(f):
    sb = f.state_batch(2)
    sb.append_state(f.init_state())
    with pytest.raises(ValueError, match="shape"):
        f.step_batch(sb, np.zeros((2, P)))
    with pytest.raises(ValueError, match="finite"):
        f.step_batch(sb, np.full((1, P), 1e300))
    beyond = np.full((1, P), np.nan)
    beyond[0, 7] = -1e39                        # beyond float32 among missing values
    with pytest.raises(ValueError, match="finite"):
        f.step_batch(sb, beyond)
    with pytest.raises(ValueError, match="complete patch"):
        f.forecast_batch(sb, None, 10, seeds=[0])
    sb.seal()
    with pytest.raises(RuntimeError, match="sealed"):
        sb.append_state(f.init_state())
    full = f.state_batch(1)          # rows are rounded up to 16
    for _ in range(full.capacity):
        full.append_state(f.init_state())
    with pytest.raises(ValueError, match="full"):
        full.append_state(f.init_state())
    other = Forecaster.from_config(tiny_config(), seed=1)
    with pytest.raises(StateDecodeError, match="model"):
        other.step_batch(sb, np.zeros((1, P)))
    with pytest.raises(IndexError, match="rows"):
        f.step_batch(sb, np.zeros((1, P)), rows=[1])
    two = f.state_batch(2)
    two.append_state(f.init_state())
    two.append_state(f.init_state())
    with pytest.raises(ValueError, match="once"):
        f.step_batch(two, np.zeros((2, P)), rows=[1, 1])


def _with_header(b: bytes, old: bytes, new: bytes) -> bytes:
    """State bytes with ``old`` replaced by ``new`` in the header, length and checksum redone."""
    import struct
    import zlib
    hlen = struct.unpack("<I", b[6:10])[0]
    h = b[10:10 + hlen]
    assert h.count(old) == 1
    h = h.replace(old, new)
    out = b[:4] + struct.pack("<HI", 1, len(h)) + h + b[10 + hlen:-4]
    return out + struct.pack("<I", zlib.crc32(out))


@pytest.mark.parametrize("old,new", [
    (b'"n_obs":240', b'"n_obs":0240'), (b'"n_obs":240', b'"n_obs":2.4e2'), (b'"n_obs":240', b'"n_obs":-240'),
    (b'"n_obs":240', b'"n_obs": 240'), (b'"n_obs":240', b'"n_obs":"240"'), (b'"n_obs":240', b'"n_obs":1_0'),
    (b'"n_patches":5', b'"n_patches":+5'), (b'"scale":3.0', b'"scale":3'), (b'"scale":3.0', b'"scale":3.00e0'),
    (b'"scale":3.0', b'"scale":1_0.0'), (b'"scale":3.0', b'"scale":NaN'), (b'"scale":3.0', b'"scale":.5'),
    (b'"meta":{}', b'"meta":{"a":1}'), (b'"meta":{}', b'"meta":5'), (b'"dtype":"float32"', b'"dtype":"float64"'),
])
def test_hand_made_headers_are_judged_as_from_bytes_judges_them(f, old, new):
    """The batch reads a header in its fast path only when it is the template; every variant is
    accepted or refused as SeriesState.from_bytes does, and accepted ones re-encode alike."""
    s = SeriesState(f.model_id, f.dtype, f.init_state().tensors, np.zeros(0, np.float32), 240, 5, 3.0)
    data = _with_header(s.to_bytes(), old, new)
    sb = f.state_batch(1)
    try:
        ref = SeriesState.from_bytes(data)
        assert ref.dtype == f.dtype and ref.model_id == f.model_id
    except (StateDecodeError, AssertionError):
        with pytest.raises(StateDecodeError):
            sb.append_bytes(data)
        assert sb.size == 0
        return
    sb.append_bytes(data)
    ref.meta = {}                                     # the batch keeps no meta (a step drops it)
    assert sb.to_bytes() == [ref.to_bytes()]
