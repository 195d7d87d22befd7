"""The whole pipeline on a real Tansu broker and a real redis-server: observations of 50+
series (gaps, nulls, single and batch messages, bad messages) -> ingest -> patches -> worker
-> forecasts exactly once per (series, seq), equal to the in-process Forecaster; bad input in
the DLQ with reasons; states in Redis equal to the in-process states byte for byte."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamflame import Forecaster
from streamflame.config import ServiceConfig
from streamflame.ingest.consumer import IngestConsumer
from streamflame.model import tiny_config
from streamflame.schemas import PATCH_LEN, decode_dead_letter, decode_forecast, forecast_seed
from streamflame.state.store import StateStore
from streamflame.worker.worker import Worker

T0 = 1_704_067_200_000
FREQ = 60_000
N_SERIES = 52


def read(cfg, topic, want, timeout=90.0, settle=1.0):
    c = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out, deadline, quiet = [], time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            out += recs
        if len(out) >= want:
            quiet = quiet or time.monotonic() + settle
            if time.monotonic() >= quiet:
                break
    c.close()
    return out


def build(rng):
    """Messages in produce order, each series' slot values, and the bad messages' reasons."""
    messages, slots, bad = [], {}, []
    for i in range(N_SERIES):
        sid = f"fix-{i:03d}/temp"
        n = 3 * PATCH_LEN + int(rng.integers(1, PATCH_LEN))            # not a multiple of 48
        v = 20 + 5 * np.sin(np.arange(n) / (5 + i % 7)) + rng.normal(0, 0.2, n)
        keep = rng.random(n) > 0.08                                     # gaps: missing timestamps
        keep[:3] = True
        nulls = rng.random(n) < 0.05
        vals = {k: (None if nulls[k] else float(v[k])) for k in range(n) if keep[k]}
        slots[sid] = vals
        ks = sorted(vals)
        if i % 2:                                                       # batch messages of ~30
            for a in range(0, len(ks), 30):
                part = ks[a:a + 30]
                messages.append((sid, {"series_id": sid, "timestamps": [T0 + k * FREQ for k in part],
                                       "values": [vals[k] for k in part]}))
        else:
            messages += [(sid, {"series_id": sid, "timestamp": T0 + k * FREQ, "value": vals[k]}) for k in ks]
        if i == 5:  # an already sent, earlier slot again (different value) -> rejected as late, valid data kept
            messages.append((sid, {"series_id": sid, "timestamp": T0 + ks[10] * FREQ, "value": 1e6}))
            bad.append("late")
    raw_bad = [(b"fix-000/temp", b'{"series_id": "fix-000/temp", "timestamp": '),
               (b"fix-001/temp", b'{"series_id": "fix-001/temp", "timestamp": 1704067200000, "value": NaN}'),
               (b"fix-002/temp", json.dumps({"series_id": "fix-002/temp", "timestamp": T0, "value": "hot"}).encode()),
               (b"x", json.dumps({"series_id": "x" * 5000, "timestamp": T0, "value": 1.0}).encode())]
    bad += ["invalid_json", "non_finite_value", "bad_value", "series_id_too_long"]
    return messages, raw_bad, slots, bad


def test_observations_to_forecasts_end_to_end(service_config, redis_client, tmp_path):
    rng = np.random.default_rng(11)
    model_dir = Forecaster.from_config(tiny_config(), seed=5).save(tmp_path / "ckpt")
    data = service_config.effective(mask_secrets=False)
    data["groups"] = [{"name": "fixed", "match": "fix-*", "frequency": "1min", "horizon": 24, "num_samples": 16}]
    data["worker"].update({"model_path": str(model_dir), "batch_size": 128, "batch_deadline_ms": 30, "device": "cpu"})
    cfg = ServiceConfig(**data)
    messages, raw_bad, slots, bad_reasons = build(rng)

    ingest, worker = IngestConsumer(cfg, redis_client=redis_client), Worker(cfg)
    threads = [threading.Thread(target=x.run, daemon=True) for x in (ingest, worker)]
    for t in threads:
        t.start()
    try:
        prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap)
        order = list(messages)
        for j, (k, raw) in enumerate(raw_bad):                         # interleave the bad ones
            order.insert(j * len(order) // len(raw_bad) + 1, (k, raw))
        for key, msg in order:
            key_b = key if isinstance(key, bytes) else key.encode()
            prod.send(cfg.topics.observations, key=key_b, value=msg if isinstance(msg, bytes) else json.dumps(msg).encode())
        prod.flush()
        prod.close()
        expected = {sid: (max(v) + 1) // PATCH_LEN for sid, v in slots.items()}
        n_expected = sum(expected.values())
        fcs = [decode_forecast(r.value) for r in read(cfg, cfg.topics.forecasts, n_expected)]
        dlq = [decode_dead_letter(r.value) for r in read(cfg, cfg.topics.dlq, len(bad_reasons), timeout=30)]
    finally:
        ingest.stop()
        worker.stop()
        for t in threads:
            t.join(30)

    keys = sorted((f.series_id, f.seq) for f in fcs)
    assert keys == sorted((sid, k) for sid, n in expected.items() for k in range(n)), "each forecast exactly once"
    assert sorted(d.reason for d in dlq) == sorted(bad_reasons)
    assert all(d.detail and d.component == "ingest" and d.original_bytes() for d in dlq)

    f = Forecaster.load(model_dir)
    g = cfg.resolve_group("fix-000/temp")
    store = StateStore(redis_client, cfg.redis.key_prefix)
    by_key = {(m.series_id, m.seq): m for m in fcs}
    for sid, vals in slots.items():
        x = np.array([np.nan if vals.get(k) is None else vals[k] for k in range(expected[sid] * PATCH_LEN)])
        s = f.init_state(scale=g.scale)
        for k in range(expected[sid]):
            s = f.update(s, x[k * PATCH_LEN:(k + 1) * PATCH_LEN])
            ref = f.forecast(s, g.horizon, g.quantiles, g.num_samples, seed=forecast_seed(cfg.worker.seed, sid, k))
            msg = by_key[(sid, k)]
            np.testing.assert_array_equal(np.asarray(msg.mean, dtype=np.float64), ref.mean)
            np.testing.assert_array_equal(np.asarray(msg.quantiles[g.quantile_keys[4]]), ref.quantiles[4])
            assert msg.origin_ms == T0 + (k * PATCH_LEN + PATCH_LEN - 1) * FREQ
        rec = store.load(sid)
        assert rec.seq == expected[sid] - 1 and rec.state == s.to_bytes(), sid
