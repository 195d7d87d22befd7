"""The whole pipeline on a real Tansu broker and a real redis-server.

Observations of 54 series (3-5 patches each, lengths not multiples of 48, missing
timestamps and null values, single messages with epoch-ms or ISO timestamps and batch
messages, interleaved across series; two groups, one with a configured frequency and
one inferred) plus bad messages -> ingest and worker running together in threads ->

- every forecast arrives exactly once per (series, seq), and its mean and every quantile
  equal what the in-process ``Forecaster`` gives for the same data (one ``update`` per
  patch, gaps as NaN) and seed ``forecast_seed(worker.seed, series_id, seq)``;
- every bad message is in the DLQ with its reason and its original bytes, source
  partition and offset;
- the state stored in Redis for each series decodes to the in-process state, byte for byte.
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamflame import Forecaster, SeriesState
from streamflame.adapters.state.store import StateRecord, StateStore
from streamflame.config import ServiceConfig
from streamflame.core.constants import PATCH_LEN
from streamflame.core.timefmt import iso_ms
from streamflame.messages import decode_dead_letter, decode_forecast, forecast_seed
from streamflame.model import tiny_config
from streamflame.pipeline.ingest.consumer import IngestConsumer
from streamflame.pipeline.worker.worker import Worker

T0 = 1_704_067_200_000
N_FIXED, N_AUTO = 40, 14                      # "fix-*": frequency configured; "auto-*": inferred
FREQ = {"fix": 60_000, "auto": 300_000}


def read_topic(bootstrap, topic, want=0, timeout=30.0):
    """All records of ``topic`` from the beginning, once at least ``want`` are there
    (waiting at most ``timeout`` s) and every partition is read up to the high-water mark
    its last fetch reported (Tansu's ``end_offsets()`` is not the true end; see NOTES)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                out += recs
            if len(out) >= want and all(c.highwater(tp) is not None and c.position(tp) >= c.highwater(tp)
                                        for tp in tps):
                break
        return out
    finally:
        c.close()


def build(rng):
    """Per series: its messages in order and its slot -> value (None = null) map; the
    bad messages as (key, raw bytes, reason); the last-sent bad ones are appended to
    their series' own message list (so they arrive after the series' data)."""
    per_series, slots, bad = {}, {}, []
    for i in range(N_FIXED + N_AUTO):
        kind = "fix" if i < N_FIXED else "auto"
        sid, freq = f"{kind}-{i:03d}/temp", FREQ[kind]
        n = (3 + i % 3) * PATCH_LEN + int(rng.integers(1, PATCH_LEN))      # 3-5 patches + a partial one
        v = 20 + 5 * np.sin(np.arange(n) / (5 + i % 7)) + rng.normal(0, 0.2, n)
        keep = rng.random(n) > 0.08                                         # gaps: missing timestamps
        keep[:4] = keep[-1] = True                  # grid anchor / inference points; last slot in the open patch
        nulls = rng.random(n) < 0.05
        nulls[:4] = False
        vals = {k: (None if nulls[k] else float(v[k])) for k in range(n) if keep[k]}
        slots[sid] = vals
        ks = sorted(vals)
        msgs = []
        if i % 3 == 0:                                                      # batch messages of 1-60
            a = 0
            while a < len(ks):
                part = ks[a:a + int(rng.integers(1, 61))]
                a += len(part)
                msgs.append({"series_id": sid, "timestamps": [T0 + k * freq for k in part],
                             "values": [vals[k] for k in part]})
        else:                                                               # single, epoch ms or ISO-8601
            ts = (lambda ms: ms) if i % 3 == 1 else iso_ms
            msgs += [{"series_id": sid, "timestamp": ts(T0 + k * freq), "value": vals[k]} for k in ks]
        per_series[sid] = [json.dumps(m).encode() for m in msgs]
        if i in (5, 45):   # a slot inside an emitted patch again (other value): late; the series goes on unaffected
            raw = json.dumps({"series_id": sid, "timestamp": T0 + ks[10] * freq, "value": 1e6}).encode()
            per_series[sid].append(raw)
            bad.append((sid.encode(), raw, "late"))
        if i in (4, 44):   # the last observed slot (in the open patch) again: duplicate
            raw = json.dumps({"series_id": sid, "timestamp": T0 + ks[-1] * freq, "value": -3.0}).encode()
            per_series[sid].append(raw)
            bad.append((sid.encode(), raw, "duplicate"))
    bad += [
        (b"fix-000/temp", b'{"series_id": "fix-000/temp", "timestamp": ', "invalid_json"),
        (b"fix-001/temp", b'{"series_id": "fix-001/temp", "timestamp": 1704067200000, "value": NaN}',
         "non_finite_value"),
        (b"fix-002/temp", json.dumps({"series_id": "fix-002/temp", "timestamp": T0, "value": "hot"}).encode(),
         "bad_value"),
        (b"fix-003/temp", json.dumps({"series_id": "fix-003/temp", "timestamps": [T0, T0 + 60_000],
                                      "values": [1.0, True]}).encode(), "bad_value"),
        (b"x", json.dumps({"series_id": "x" * 5000, "timestamp": T0, "value": 1.0}).encode(), "series_id_too_long"),
    ]
    return per_series, slots, bad


def interleave(rng, per_series, extra):
    """One produce order: each series' messages in their order, series mixed at random,
    the ``extra`` (key, raw) records at random places."""
    draw = [sid for sid, msgs in per_series.items() for _ in msgs]
    rng.shuffle(draw)
    pos = {sid: 0 for sid in per_series}
    order = []
    for sid in draw:
        order.append((sid.encode(), per_series[sid][pos[sid]]))
        pos[sid] += 1
    for key, raw in extra:
        order.insert(int(rng.integers(0, len(order) + 1)), (key, raw))
    return order


def test_observations_to_forecasts_end_to_end(service_config, redis_client, tmp_path):
    rng = np.random.default_rng(11)
    model_dir = Forecaster.from_config(tiny_config(), seed=5).save(tmp_path / "ckpt")
    data = service_config.effective(mask_secrets=False)
    data["defaults"].update({"frequency": None, "horizon": 30, "num_samples": 12, "quantiles": [0.05, 0.5, 0.95]})
    data["groups"] = [{"name": "fixed", "match": "fix-*", "frequency": "1min", "horizon": 24, "num_samples": 16,
                       "scale": 2.0}]
    data["worker"].update({"model_path": str(model_dir), "batch_size": 64, "batch_deadline_ms": 30, "device": "cpu"})
    cfg = ServiceConfig(**data)
    per_series, slots, bad = build(rng)
    expected = {sid: (max(v) + 1) // PATCH_LEN for sid, v in slots.items()}
    assert set(expected.values()) == {3, 4, 5} and len(expected) >= 50
    n_expected = sum(expected.values())
    late_bad = {raw for _, raw, reason in bad if reason in ("late", "duplicate")}
    order = interleave(rng, per_series, [(k, raw) for k, raw, _ in bad if raw not in late_bad])

    ingest, worker = IngestConsumer(cfg, redis_client=redis_client), Worker(cfg)
    threads = [threading.Thread(target=x.run, daemon=True) for x in (ingest, worker)]
    for t in threads:
        t.start()
    t_start = time.monotonic()
    try:
        prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, linger_ms=5)
        for key, raw in order:
            prod.send(cfg.topics.observations, key=key, value=raw)
        prod.flush()
        prod.close()
        # Bounded wait for the expected number of forecasts, then stop both (they flush).
        read_topic(cfg.kafka.bootstrap, cfg.topics.forecasts, want=n_expected, timeout=60)
    finally:
        ingest.stop()
        worker.stop()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads), "ingest and worker stop when asked"
    assert time.monotonic() - t_start < 60

    # Everything either produced, read to the end after both stopped.
    fcs = [decode_forecast(r.value) for r in read_topic(cfg.kafka.bootstrap, cfg.topics.forecasts)]
    dlq = [decode_dead_letter(r.value) for r in read_topic(cfg.kafka.bootstrap, cfg.topics.dlq)]
    obs = {(r.partition, r.offset): r for r in read_topic(cfg.kafka.bootstrap, cfg.topics.observations)}
    assert len(obs) == len(order)

    keys = sorted((m.series_id, m.seq) for m in fcs)
    assert keys == sorted((sid, k) for sid, n in expected.items() for k in range(n)), "each forecast exactly once"

    # Dead letters: the reasons, and each points at the record it came from.
    assert sorted(d.reason for d in dlq) == sorted(reason for _, _, reason in bad)
    for d in dlq:
        src = obs[(d.partition, d.offset)]
        assert d.component == "ingest" and d.source_topic == cfg.topics.observations and d.detail
        assert d.original_bytes() == src.value and d.key_bytes() == src.key
        assert (src.key, src.value, d.reason) in bad
        if d.reason in ("late", "duplicate"):
            assert d.series_id == src.key.decode()

    # Forecasts and stored states against the in-process model on the same data.
    f = Forecaster.load(model_dir)
    store = StateStore(redis_client, cfg.redis.key_prefix)
    by_key = {(m.series_id, m.seq): m for m in fcs}
    for sid, vals in slots.items():
        g, freq = cfg.resolve_group(sid), FREQ[sid.split("-")[0]]
        n = expected[sid]
        x = np.array([np.nan if vals.get(k) is None else vals[k] for k in range(n * PATCH_LEN)])
        s = f.init_state(scale=g.scale, step_seconds=freq / 1000)
        for k in range(n):
            s = f.update(s, x[k * PATCH_LEN:(k + 1) * PATCH_LEN])
            ref = f.forecast(s, g.horizon, g.quantiles, g.num_samples, seed=forecast_seed(cfg.worker.seed, sid, k))
            msg = by_key[(sid, k)]
            assert (msg.horizon, msg.freq_ms, msg.model_id, msg.samples) == (g.horizon, freq, f.model_id, None)
            assert msg.origin_ms == T0 + ((k + 1) * PATCH_LEN - 1) * freq
            np.testing.assert_array_equal(np.asarray(msg.mean, dtype=ref.mean.dtype), ref.mean, err_msg=f"{sid} {k}")
            assert list(msg.quantiles) == g.quantile_keys
            for j, level in enumerate(g.quantile_keys):
                np.testing.assert_array_equal(np.asarray(msg.quantiles[level], dtype=ref.quantiles.dtype),
                                              ref.quantiles[j], err_msg=f"{sid} {k} q{level}")
        rec = store.load(sid)
        assert isinstance(rec, StateRecord) and rec.seq == n - 1, sid
        stored = SeriesState.from_bytes(rec.state)
        assert (stored.n_obs, stored.n_patches) == (n * PATCH_LEN, n)
        assert stored.to_bytes() == rec.state == s.to_bytes(), sid
        assert (rec.meta.freq_ms, rec.meta.model_id) == (freq, f.model_id)
        assert rec.meta.last_slot_ms == T0 + (n * PATCH_LEN - 1) * freq
