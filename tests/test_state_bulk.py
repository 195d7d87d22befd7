"""model/state_bulk.py: a batch's stored states decoded together and encoded into one buffer.
The bytes and numbers are SeriesState's; a bad state in a bulk rejects only itself; the
memoryviews the worker hands on are read-only, stay valid and are written to Redis unchanged."""
from __future__ import annotations

import struct
import uuid
import zlib

import numpy as np
import pytest

from streamflame import Forecaster, SeriesState, StateDecodeError
from streamflame.model import tiny_config
from streamflame.model.batch import EncodedState
from streamflame.model.state_bulk import CRC_RESIDUE

P = 48


@pytest.fixture(scope="module")
def f() -> Forecaster:
    return Forecaster.from_config(tiny_config(), seed=0)


def varied(f: Forecaster, rng, n: int) -> list[SeriesState]:
    """Stepped states with counts of 1 to 18 digits and scales of several JSON lengths: headers of
    many lengths, and of one length with the digits placed differently."""
    base = f.state_from_history(rng.normal(0, 1, 3 * P), step_seconds=600.0)
    out = []
    for _ in range(n):
        d1, d2 = int(rng.integers(1, 19)), int(rng.integers(1, 19))
        obs = int(rng.integers(10 ** (d1 - 1), 10 ** d1)) if d1 > 1 else int(rng.integers(0, 10))
        pat = int(rng.integers(10 ** (d2 - 1), 10 ** d2)) if d2 > 1 else int(rng.integers(0, 10))
        scale = float(rng.choice([1.0, 0.5, 3.0, 1e-7, 0.1 + 0.2, 123456789.125, 5e300, 2.0]))
        tensors = {k: v + rng.normal(0, 1, v.shape).astype(v.dtype) for k, v in base.tensors.items()}
        out.append(SeriesState(f.model_id, f.dtype, tensors, base.buffer, obs, pat, scale))
    return out


def test_a_record_followed_by_its_crc_leaves_the_residue():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8_544, 32_100):
        m = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert zlib.crc32(m + struct.pack("<I", zlib.crc32(m))) == CRC_RESIDUE
        assert zlib.crc32(m + struct.pack("<I", zlib.crc32(m) ^ 1)) != CRC_RESIDUE


def test_many_lengths_decode_and_encode_byte_identically(f):
    rng = np.random.default_rng(1)
    states = varied(f, rng, 80)
    states += [SeriesState(s.model_id, s.dtype, s.tensors, s.buffer, 12345, 678, 1.0) for s in states[:3]]
    states += [SeriesState(s.model_id, s.dtype, s.tensors, s.buffer, 1234, 6789, 1.0) for s in states[:3]]
    blobs = [s.to_bytes() for s in states]
    assert len({len(b) for b in blobs}) > 5
    sb = f.state_batch(len(blobs))
    rows = sb.append_many(blobs)
    assert sorted(rows) == list(range(len(blobs)))
    sb.seal()
    for i, r in enumerate(rows):
        assert (sb.n_obs[r], sb.n_patches[r], sb.scale[r]) == (states[i].n_obs, states[i].n_patches, states[i].scale)
        assert sb.state(r) == states[i]
    views = sb.encode(rows)
    assert [bytes(v) for v in views] == blobs
    assert sb.to_bytes(rows[::-1]) == blobs[::-1]


def test_a_bad_state_in_a_bulk_rejects_only_itself(f):
    rng = np.random.default_rng(2)
    good = varied(f, rng, 6)
    b = good[0].to_bytes()
    flipped = bytearray(b)
    flipped[len(b) // 3] ^= 4
    other = Forecaster.from_config(tiny_config(), seed=1)
    hlen = struct.unpack_from("<I", b, 6)[0]
    header = b[10:10 + hlen].replace(b'"n_patches":', b'"n_patches": ')   # valid JSON, not the template
    spaced = b[:6] + struct.pack("<I", len(header)) + header + b[10 + hlen:-4]
    spaced += struct.pack("<I", zlib.crc32(spaced))
    bad = [b[:-9], bytes(flipped), b"XXXX" + b[4:], b"SFST\x01garbage",
           other.update(other.init_state(), rng.normal(0, 1, P)).to_bytes(), "a string", None]
    mixed = [good[0].to_bytes(), bad[0], good[1].to_bytes(), bad[1], bad[2], good[2].to_bytes(), bad[3],
             good[3].to_bytes(), bad[4], bad[5], spaced, bad[6], good[4].to_bytes(), memoryview(good[5].to_bytes())]
    sb = f.state_batch(len(mixed))
    got = sb.append_many(mixed)
    errors = [i for i, g in enumerate(got) if isinstance(g, StateDecodeError)]
    assert errors == [1, 3, 4, 6, 8, 9, 11]
    assert "got str" in str(got[9]) and "got NoneType" in str(got[11])
    assert sb.size == len(mixed) - len(errors)
    want = [good[0], good[1], good[2], good[3], SeriesState.from_bytes(spaced), good[4], good[5]]
    kept = [g for g in got if not isinstance(g, StateDecodeError)]
    assert sb.to_bytes(kept) == [s.to_bytes() for s in want]


def test_unchecked_bytes_skip_only_the_checksum(f):
    """verify=False (bytes this process encoded) reads a state without its CRC check, nothing else."""
    s = varied(f, np.random.default_rng(3), 2)
    b = s[0].to_bytes()
    wrong_crc = b[:-4] + bytes(4)
    sb = f.state_batch(4)
    got = sb.append_many([wrong_crc, wrong_crc, b"SFST" + b[4:-30]], [False, True, False])
    assert got[0] == 0 and isinstance(got[1], StateDecodeError) and isinstance(got[2], StateDecodeError)
    assert sb.to_bytes() == [b]


def test_encoded_views_are_read_only_and_outlive_the_next_batch(f):
    rng = np.random.default_rng(4)
    first, second = varied(f, rng, 5), varied(f, rng, 5)
    sb = f.state_batch(5)
    views = sb.encode(sb.append_many([s.to_bytes() for s in first]))
    assert all(v.readonly for v in views)
    with pytest.raises(TypeError):
        views[0][0] = 0
    kept = EncodedState(views[1])
    own = kept.detached()
    assert type(own.data) is bytes and own.data == first[1].to_bytes() and own.detached() is own
    sb.clear()
    assert sb.encode(sb.append_many([s.to_bytes() for s in second])) == [s.to_bytes() for s in second]
    assert views == [s.to_bytes() for s in first]                 # a new buffer per encode
    again = f.state_batch(1)
    assert again.append_encoded(kept) == 0 and again.to_bytes() == [first[1].to_bytes()]


def test_redis_stores_the_views_byte_for_byte(f, redis_client):
    """The worker hands Redis memoryviews (publisher inline) or joins them into the publisher's job."""
    from streamflame.adapters.state.store import StateMeta, StateRecord, StateStore
    store = StateStore(redis_client, key_prefix=f"t{uuid.uuid4().hex[:8]}")
    states = varied(f, np.random.default_rng(5), 4)
    sb = f.state_batch(4)
    rows = sb.append_many([s.to_bytes() for s in states])
    views = sb.encode([rows[3], rows[1]])
    meta = StateMeta(model_id=f.model_id, group="default", freq_ms=60_000, last_slot_ms=0,
                     src_partition=0, src_offset=0)
    res = store.save_many({"a": StateRecord(0, views[0], meta), "b": StateRecord(0, views[1], meta)},
                          expected={"a": -1, "b": -1})
    assert sorted(res.applied) == ["a", "b"]
    assert store.load("a").state == states[3].to_bytes() and store.load("b").state == states[1].to_bytes()


def test_the_device_copy_splits_the_rows_into_the_same_fields(f):
    """On a device, seal sends the filled rows in one piece and splits them there (split_rows):
    checked here on the CPU against the host's field views."""
    import torch
    from streamflame.model.batch import split_rows
    states = varied(f, np.random.default_rng(6), 7)
    sb = f.state_batch(7)
    sb.append_many([s.to_bytes() for s in states])
    sb.seal()
    got = split_rows(sb.layout, sb._rows[:7].clone())
    assert set(got) == set(sb.tensors)
    for k, t in got.items():
        assert t.is_contiguous() and t.dtype == sb.tensors[k].dtype
        assert torch.equal(t, sb.tensors[k][:7]) or torch.equal(t.isnan(), sb.tensors[k][:7].isnan())
        assert t.numpy().tobytes() == np.ascontiguousarray(sb.tensors[k][:7].numpy()).tobytes()


def test_strided_field_views_give_the_shipped_sizes_the_same_numbers():
    """The batch's fields are strided views of its row-major storage; with the shipped config's
    sizes (random weights) a step and a forecast equal update_many / forecast_many bit for bit."""
    f = Forecaster.from_config(None, seed=0)
    rng = np.random.default_rng(7)
    states = []
    for _ in range(19):
        k = int(rng.integers(1, 4)) * P
        x = rng.normal(0, 3) + np.sin(np.arange(k) / rng.integers(3, 30)) * 3 + rng.normal(0, 0.3, k)
        x[rng.random(k) < 0.05] = np.nan
        states.append(f.state_from_history(x * 10 ** rng.uniform(-2, 3), step_seconds=600.0))
    patches = rng.normal(5, 2, (19, P))
    sb = f.state_batch(19)
    rows = sb.append_many([s.to_bytes() for s in states])
    f.step_batch(sb, patches, rows)
    ref = f.update_many(states, patches)
    assert sb.encode(rows) == [s.to_bytes() for s in ref]
    got = f.forecast_batch(sb, rows, 96, num_samples=50, seeds=list(range(19)))
    for j, w in enumerate(f.forecast_many(ref, 96, num_samples=50, seeds=list(range(19)))):
        assert got.get(j).mean.tobytes() == w.mean.tobytes()
        assert got.get(j).quantiles.tobytes() == w.quantiles.tobytes()
        assert got.get(j).samples.tobytes() == w.samples.tobytes()


def test_fields_at_unaligned_offsets_give_the_same_numbers():
    """An odd window puts the float64 fields after it 4 bytes off their alignment in the row-major
    store: their views are unaligned; the step and the forecast still equal the SeriesState calls."""
    f = Forecaster.from_config(tiny_config(window=193), seed=0)
    sb = f.state_batch(20)
    assert not all(t.numpy().flags.aligned for t in sb._host.values())
    rng = np.random.default_rng(8)
    states = [f.state_from_history(rng.normal(0, 1, 3 * P), step_seconds=600.0) for _ in range(20)]
    rows = sb.append_many([s.to_bytes() for s in states])
    patches = rng.normal(0, 1, (20, P))
    f.step_batch(sb, patches, rows)
    ref = f.update_many(states, patches)
    assert sb.encode(rows) == [s.to_bytes() for s in ref]
    got = f.forecast_batch(sb, rows, 96, num_samples=20, seeds=list(range(20)))
    for j, w in enumerate(f.forecast_many(ref, 96, num_samples=20, seeds=list(range(20)))):
        assert got.get(j).quantiles.tobytes() == w.quantiles.tobytes() and got.get(j).mean.tobytes() == w.mean.tobytes()


def test_header_mutations_decode_as_the_reference_decoder_reads_them(f):
    """Random edits of a record's header (bytes replaced, inserted, dropped; the CRC then made
    right, so the header rules alone decide): each input is accepted exactly when
    SeriesState.from_bytes accepts it, and then with the reference's numbers and bytes, whichever
    path (bulk or reference) the batch took it by."""
    rng = np.random.default_rng(11)
    base = varied(f, rng, 8)
    alphabet = b'0123456789.,:"{}[]-+eE nNa_stcopbf'
    inputs = []
    for k in range(400):
        b = base[k % len(base)].to_bytes()
        hlen = struct.unpack_from("<I", b, 6)[0]
        header = bytearray(b[10:10 + hlen])
        # half the inputs edited between "n_obs": and ,"tensors" (the counts and the scale, which the
        # bulk decoder parses itself), the other half anywhere
        lo, hi = (header.index(b'"n_obs":') + 8, header.index(b',"tensors"')) if k % 2 else (0, len(header))
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(lo, min(hi, len(header))))
            op = rng.integers(0, 3)
            c = alphabet[int(rng.integers(0, len(alphabet)))]
            if op == 0:
                header[i] = c
            elif op == 1:
                header.insert(i, c)
            elif len(header) > 1:
                del header[i]
        rec = b[:6] + struct.pack("<I", len(header)) + bytes(header) + b[10 + hlen:-4]
        inputs.append(rec + struct.pack("<I", zlib.crc32(rec)))
    sb = f.state_batch(len(inputs))
    got = sb.append_many(inputs)
    accepted = 0
    for data, g in zip(inputs, got):
        try:
            ref = SeriesState.from_bytes(data)
        except StateDecodeError:
            assert isinstance(g, StateDecodeError), data[10:10 + struct.unpack_from("<I", data, 6)[0]]
            continue
        if isinstance(g, StateDecodeError):      # the reference reads it; the batch may still refuse
            with pytest.raises(StateDecodeError):   # it for this model (another model id, dtype, shape)
                f.state_batch(1).append_state(ref)
            continue
        accepted += 1
        st = sb.state(g)
        assert (st.n_obs, st.n_patches, st.scale) == (ref.n_obs, ref.n_patches, ref.scale)
        empty = sb.layout.empty      # a field the record lacks takes init_state's value, as update_many does
        assert all(np.array_equal(st.tensors[k], ref.tensors.get(k, empty[k]), equal_nan=True) for k in empty)
    assert 20 < accepted < len(inputs)          # the edits hit the digits and the scale as well as the rest
