"""Hostile input through the real ingest and worker (issue #5 item 5).

``streamflame fuzz [--messages N] [--seed K] [--json FILE]`` starts a Tansu
broker and a redis-server on loopback (or uses ``--bootstrap``/``--redis``),
runs one ingest consumer and one worker in threads of this process, produces N
generated records (valid traffic of some series interleaved with hostile
records) and checks:

* no crash: both threads are still running when the traffic is consumed, and
  neither raised;
* the DLQ holds exactly one dead letter per hostile record, with the reason
  the generator expected (a record is identified by its unique key
  ``noise-<i>``, or by key + value bytes for records that must carry the
  series id as key); duplicates (at-least-once) are counted separately;
* every valid series' state in Redis equals, byte for byte, the state the
  in-process :class:`~streamflame.Forecaster` computes from that series' valid
  observations alone (a run without the noise), at the expected ``seq``.

The generator (:func:`build_traffic`) is also what the property tests and the
CI test (5,000 records) use. Its expectations come from the documented policy
(docs/schemas.md), not from running the code under test.

Payload-size limits: Tansu itself accepts records of at least 30 MiB, so a
hostile producer can put a 10 MiB record on the observations topic (our own
producers refuse requests above ``max(1 MiB, 2 * ingest.max_message_bytes)``
client-side). The generator sends 10 MiB records through a producer configured
for them; ingest must reject them ``too_large`` (dead letter with the original
truncated to fit a request).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamflame.config import ServiceConfig
from streamflame.core.constants import PATCH_LEN
from streamflame.core.logs import configure_logging
from streamflame.core.timefmt import MAX_EPOCH_MS, MIN_EPOCH_MS, iso_ms
from streamflame.embedded import Broker, RedisServer
from streamflame.messages import MAX_ABS_VALUE, decode_dead_letter

T0 = 1_704_067_200_000          # 2024-01-01, anchor of the valid series
FREQ_MS = 60_000                # valid series' configured grid step ("v-*" group)
MAX_GAP_STEPS = 10_000          # ingest default, used for timestamp_too_far noise
BIG_BYTES = 10 * 2**20          # "10 MB payload"
MIB_ID = 2**20                  # "1 MB series id"


@dataclass
class Rec:
    """One generated record. ``expect``: the DLQ reason, None for a record that
    must be accepted. ``ident``: how its dead letter is found (key for
    ``noise-*`` keys, else key + value)."""

    key: bytes | None
    value: bytes | None
    expect: str | None
    kind: str

    @property
    def ident(self):
        if self.key is not None and self.key.startswith(b"noise-"):
            return self.key[:64]  # unique; a dead letter too large for one request keeps the key's first bytes
        return (self.key, self.value)


@dataclass
class Traffic:
    records: list[Rec]
    valid: dict[str, dict[int, float | None]]      # valid series -> slot -> value (None = null)
    expected_patches: dict[str, int]                # valid series -> number of complete patches
    accepted_noise_series: list[str] = field(default_factory=list)

    @property
    def expected_reasons(self) -> Counter:
        return Counter(r.expect for r in self.records if r.expect is not None)


def _j(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- decode-level hostile records
# Each: (rng, i) -> (value bytes | None, reason). Keys are b"noise-<i>" (unique).

def _pad_json(n: int, i: int) -> bytes:
    return b'{"series_id":"w-pad","timestamp":0,"value":1.0,"nonce":%d,"pad":"' % i + b"x" * n + b'"}'


def _decode_noise(rng: np.random.Generator, i: int, big_every: int) -> tuple[bytes | None, str, str]:
    sid = f"w-n{i}"
    kinds = [
        ("empty", lambda: (b"", "empty_message")),
        ("tombstone", lambda: (None, "empty_message")),
        ("invalid_utf8", lambda: (b'{"series_id":"' + bytes([0xff, 0xfe]) + b'%d","timestamp":0,"value":1}' % i,
                                  "invalid_utf8")),
        ("random_binary", lambda: (rng.bytes(int(rng.integers(1, 200))) + b"\xff\xc0%d" % i, "invalid_utf8")),
        ("truncated_json", lambda: (_j({"series_id": sid, "timestamp": T0, "value": 1.0})[:-int(rng.integers(1, 10))]
                                    .replace(b"w-n", b"w-n%d-" % i, 1), "invalid_json")),
        ("garbage_text", lambda: (b"hello %d not json" % i, "invalid_json")),
        ("deep_nesting", lambda: (b"[" * 100_000 + b"%d" % i + b"]" * 100_000, "invalid_json")),
        ("not_object", lambda: (_j([sid, T0, 1.0]), "not_an_object")),
        ("not_object_scalar", lambda: (b'"%s"' % sid.encode(), "not_an_object")),
        ("missing_series", lambda: (_j({"timestamp": T0, "value": 1.0, "nonce": i}), "missing_field")),
        ("missing_value", lambda: (_j({"series_id": sid, "timestamp": T0}), "missing_field")),
        ("missing_values", lambda: (_j({"series_id": sid, "timestamps": [T0]}), "missing_field")),
        ("ambiguous", lambda: (_j({"series_id": sid, "timestamp": T0, "value": 1, "values": [1]}), "ambiguous_form")),
        ("id_number", lambda: (_j({"series_id": i, "timestamp": T0, "value": 1.0}), "bad_series_id")),
        ("id_empty", lambda: (_j({"series_id": "", "timestamp": T0, "value": 1.0, "nonce": i}), "bad_series_id")),
        ("id_control", lambda: (_j({"series_id": f"a\x00b{i}", "timestamp": T0, "value": 1.0}), "bad_series_id")),
        ("id_long", lambda: (_j({"series_id": "L" * int(rng.integers(257, 5000)) + str(i), "timestamp": T0,
                                 "value": 1.0}), "series_id_too_long")),
        ("ts_numeric_string", lambda: (_j({"series_id": sid, "timestamp": str(T0), "value": 1.0}), "bad_timestamp")),
        ("ts_bool", lambda: (_j({"series_id": sid, "timestamp": True, "value": 1.0}), "bad_timestamp")),
        ("ts_text", lambda: (_j({"series_id": sid, "timestamp": "yesterday", "value": 1.0}), "bad_timestamp")),
        ("ts_after_9999", lambda: (_j({"series_id": sid, "timestamp": MAX_EPOCH_MS + 1 + int(rng.integers(0, 10**15)),
                                       "value": 1.0}), "bad_timestamp")),
        ("ts_before_1", lambda: (_j({"series_id": sid, "timestamp": MIN_EPOCH_MS - 1 - int(rng.integers(0, 10**15)),
                                     "value": 1.0}), "bad_timestamp")),
        ("ts_1e308", lambda: (_j({"series_id": sid, "timestamp": 1e308, "value": 1.0}), "bad_timestamp")),
        ("ts_year_10000", lambda: (_j({"series_id": sid, "timestamp": "10000-01-01T00:00:00Z", "value": 1.0}),
                                   "bad_timestamp")),
        ("value_string", lambda: (_j({"series_id": sid, "timestamp": T0, "value": "3.5"}), "bad_value")),
        ("value_bool", lambda: (_j({"series_id": sid, "timestamp": T0, "value": False}), "bad_value")),
        ("value_list", lambda: (_j({"series_id": sid, "timestamp": T0, "value": [1.0]}), "bad_value")),
        ("value_nan", lambda: (b'{"series_id":"%s","timestamp":%d,"value":NaN}' % (sid.encode(), T0),
                               "non_finite_value")),
        ("value_inf", lambda: (b'{"series_id":"%s","timestamp":%d,"value":Infinity}' % (sid.encode(), T0),
                               "non_finite_value")),
        ("value_neg_inf", lambda: (b'{"series_id":"%s","timestamp":%d,"value":-Infinity}' % (sid.encode(), T0),
                                   "non_finite_value")),
        ("value_1e400", lambda: (b'{"series_id":"%s","timestamp":%d,"value":1e400}' % (sid.encode(), T0),
                                 "non_finite_value")),
        ("value_1e39", lambda: (_j({"series_id": sid, "timestamp": T0, "value": 1e39}), "value_out_of_range")),
        ("value_neg_1e308", lambda: (_j({"series_id": sid, "timestamp": T0, "value": -1e308}), "value_out_of_range")),
        ("batch_one_1e300", lambda: (_j({"series_id": sid, "timestamps": [T0, T0 + FREQ_MS], "values": [1.0, 1e300]}),
                                     "value_out_of_range")),
        ("batch_one_nan", lambda: (b'{"series_id":"%s","timestamps":[%d,%d],"values":[1.0,NaN]}'
                                   % (sid.encode(), T0, T0 + FREQ_MS), "non_finite_value")),
        ("batch_mismatch", lambda: (_j({"series_id": sid, "timestamps": [T0, T0 + 1], "values": [1.0]}),
                                    "length_mismatch")),
        ("batch_not_array", lambda: (_j({"series_id": sid, "timestamps": T0, "values": 1.0}), "length_mismatch")),
        ("over_max_bytes", lambda: (_pad_json(1_000_001, i), "too_large")),
        ("mib_series_id", lambda: (_j({"series_id": "M" * MIB_ID + str(i), "timestamp": T0, "value": 1.0}),
                                   "too_large")),
        ("key_mismatch", lambda: (_j({"series_id": sid, "timestamp": T0, "value": 1.0}), "key_mismatch")),
    ]
    if big_every and i % big_every == 0:
        return _pad_json(BIG_BYTES, i), "too_large", "10mib_payload"
    heavy = {"over_max_bytes", "mib_series_id", "deep_nesting"}  # ~1 MB / 200 kB each: keep them rare
    light = [kd for kd in kinds if kd[0] not in heavy]
    pick = [kd for kd in kinds if kd[0] in heavy] if rng.random() < 0.003 else light
    name, make = pick[int(rng.integers(0, len(pick)))]
    value, reason = make()
    return value, reason, name


# --------------------------------------------------------------------------- traffic


def build_traffic(n_messages: int, seed: int = 0, *, n_valid_series: int | None = None,
                  valid_fraction: float = 0.35, big_payloads: int = 2) -> Traffic:
    """Generate about ``n_messages`` records in produce order.

    * valid series ``v-<k>`` (group ``v-*``, frequency 1min, anchor 2024-01-01):
      single messages (epoch ms or ISO) or batch messages, 2% missing slots
      and 3% null values; their hostile records (``duplicate``, ``late``
      re-deliveries and reorderings, ``off_grid``, ``timestamp_too_far``, far
      past/future timestamps) sit inside their own stream with the reason the
      policy gives at that point;
    * accepted-but-extreme series ``w-*`` (values of +-MAX_ABS_VALUE and 5e-324, anchors
      in year 1 and at the end of year 9999, a 200-year inferred step) that go
      through the worker and must not crash it;
    * decode-level hostile records (key ``noise-<i>``) at random places, and
      ``big_payloads`` records of 10 MiB.
    """
    rng = np.random.default_rng(seed)
    n_valid_msgs = int(n_messages * valid_fraction)
    if n_valid_series is None:
        n_valid_series = max(4, min(200, n_valid_msgs // 150))
    streams: dict[str, list[Rec]] = {}
    valid: dict[str, dict[int, float | None]] = {}
    expected_patches: dict[str, int] = {}
    nonce = [0]

    def tag() -> int:
        nonce[0] += 1
        return nonce[0]

    per_series_msgs = max(1, n_valid_msgs // n_valid_series)
    for k in range(n_valid_series):
        sid = f"v-{k:04d}"
        batch = k % 3 == 0
        n_slots = per_series_msgs * (12 if batch else 1) + int(rng.integers(1, PATCH_LEN))
        keep = rng.random(n_slots) > 0.02
        keep[:2] = True
        keep[-1] = True
        nulls = rng.random(n_slots) < 0.03
        nulls[0] = False
        vals = 20 + 5 * np.sin(np.arange(n_slots) / (4 + k % 9)) + rng.normal(0, 0.3, n_slots)
        slots = {s: (None if nulls[s] else float(vals[s])) for s in range(n_slots) if keep[s]}
        order = sorted(slots)
        msgs: list[Rec] = []
        key = sid.encode()
        seen: set[int] = set()
        last: int | None = None
        dropped: set[int] = set()

        def old_slot_reason(s: int) -> str:
            # slot s <= last: late when inside an emitted patch, duplicate when observed in the open patch
            open_start = (last // PATCH_LEN + (1 if last % PATCH_LEN == PATCH_LEN - 1 else 0)) * PATCH_LEN
            if s < open_start:
                return "late"
            return "duplicate" if s in seen else "late"

        def noise_after() -> None:
            """Maybe insert one grid-level hostile record at this point of the stream."""
            if last is None or last < 3 or rng.random() > 0.5:
                return
            kind = int(rng.integers(0, 6))
            n = tag()
            if kind == 0:                                    # re-delivery of an earlier slot (other value)
                s = int(rng.choice(sorted(seen))) if seen and rng.random() < 0.5 else int(rng.integers(0, last + 1))
                doc, reason, name = {"series_id": sid, "timestamp": T0 + s * FREQ_MS, "value": -1.0}, \
                    old_slot_reason(s), "redelivery"
            elif kind == 1:                                  # off the grid (half a step)
                s = last + int(rng.integers(0, 100))
                doc, reason, name = {"series_id": sid, "timestamp": T0 + s * FREQ_MS + FREQ_MS // 2,
                                     "value": 1.0}, "off_grid", "off_grid"
            elif kind == 2:                                  # too far ahead
                s = last + MAX_GAP_STEPS + 1 + int(rng.integers(0, 10**6))
                doc, reason, name = {"series_id": sid, "timestamp": T0 + s * FREQ_MS, "value": 1.0}, \
                    "timestamp_too_far", "too_far"
            elif kind == 3:                                  # far future: last grid slot of year 9999
                s = (MAX_EPOCH_MS - T0) // FREQ_MS
                doc, reason, name = {"series_id": sid, "timestamp": iso_ms(T0 + s * FREQ_MS), "value": 1.0}, \
                    "timestamp_too_far", "far_future"
            elif kind == 4:                                  # far past: year 1 (before the anchor)
                doc, reason, name = {"series_id": sid, "timestamp": "0001-01-01T00:00:00Z", "value": 1.0}, \
                    "late", "far_past"
            else:                                            # extreme but finite value at an old slot
                s = int(rng.integers(0, last + 1))
                doc, reason, name = {"series_id": sid, "timestamp": T0 + s * FREQ_MS, "value": MAX_ABS_VALUE}, \
                    old_slot_reason(s), "old_extreme"
            doc["nonce"] = n
            msgs.append(Rec(key, _j(doc), reason, name))

        i = 0
        held: list[tuple[int, int]] = []  # reordered single messages: (slot, deliver after this many more)
        while i < len(order):
            if batch:
                part = order[i:i + int(rng.integers(1, 25))]
                i += len(part)
                msgs.append(Rec(key, _j({"series_id": sid, "timestamps": [T0 + s * FREQ_MS for s in part],
                                         "values": [slots[s] for s in part]}), None, "valid_batch"))
                for s in part:
                    if last is not None and s // PATCH_LEN != last // PATCH_LEN:
                        seen = set()
                    seen.add(s)
                    last = s
            else:
                s = order[i]
                i += 1
                # reordering: hold this one back and deliver it after 1-3 later ones (it is then late)
                if 4 <= i < len(order) - 4 and rng.random() < 0.01:
                    held.append((s, int(rng.integers(1, 4))))
                    dropped.add(s)
                    continue
                ts = T0 + s * FREQ_MS
                msgs.append(Rec(key, _j({"series_id": sid, "timestamp": ts if k % 2 else iso_ms(ts),
                                         "value": slots[s]}), None, "valid"))
                if last is not None and s // PATCH_LEN != last // PATCH_LEN:
                    seen = set()
                seen.add(s)
                last = s
                still = []
                for hs, n in held:
                    if n <= 1:
                        msgs.append(Rec(key, _j({"series_id": sid, "timestamp": T0 + hs * FREQ_MS,
                                                 "value": slots[hs], "nonce": tag()}), old_slot_reason(hs),
                                        "reordered"))
                    else:
                        still.append((hs, n - 1))
                held = still
            if last is not None and last % PATCH_LEN == PATCH_LEN - 1:
                seen = set()  # the patch of `last` is emitted
            noise_after()
        for s in dropped:
            del slots[s]
        valid[sid] = slots
        expected_patches[sid] = (max(slots) + 1) // PATCH_LEN
        streams[sid] = msgs

    # accepted-but-extreme series (no dead letters expected): through the worker, no crash
    extreme: list[str] = []

    def extreme_series(sid: str, t0: int, step: int, values: list) -> None:
        key = sid.encode()
        streams[sid] = [Rec(key, _j({"series_id": sid, "timestamp": t0 + j * step, "value": v}), None, "extreme")
                        for j, v in enumerate(values)]
        extreme.append(sid)

    n_ext = 3 * PATCH_LEN + 3  # three patches: alerts of patch k+1 are checked against forecast k
    big = MAX_ABS_VALUE  # the largest accepted magnitude (float32's maximum)
    extreme_series("w-huge", T0, FREQ_MS, [big if j % 2 else -big for j in range(n_ext)])
    extreme_series("w-tiny", T0, FREQ_MS, [5e-324 * (j % 3) for j in range(n_ext)])
    extreme_series("w-mixed", T0, FREQ_MS, [big if j == 7 else (None if j % 5 == 0 else float(j)) for j in range(n_ext)])
    extreme_series("w-year1", MIN_EPOCH_MS, FREQ_MS, [float(j) for j in range(n_ext)])
    end = MAX_EPOCH_MS - MAX_EPOCH_MS % FREQ_MS
    extreme_series("w-year9999", end - (2 * PATCH_LEN - 1) * FREQ_MS, FREQ_MS, [float(j) for j in range(2 * PATCH_LEN)])
    step = (MAX_EPOCH_MS - MIN_EPOCH_MS) // PATCH_LEN  # ~208 years, inferred
    extreme_series("w-centuries", MIN_EPOCH_MS, step, [float(j) for j in range(PATCH_LEN)])

    # decode-level noise with unique keys
    n_streamed = sum(len(m) for m in streams.values())
    n_noise = max(0, n_messages - n_streamed)
    big_every = max(1, n_noise // (big_payloads + 1)) if big_payloads and n_noise else 0
    noise: list[Rec] = []
    for j in range(n_noise):
        value, reason, name = _decode_noise(rng, j, big_every if j else 0)
        if big_every and j and j % big_every == 0 and (j // big_every) > big_payloads:
            value, reason, name = _decode_noise(rng, j, 0)
        key = b"noise-%d" % j
        if name == "key_mismatch":
            if j % 4 == 1:    # no key at all
                key = None
            elif j % 4 == 2:  # a key that is not UTF-8
                key = b"\xff\xfe-%d" % j
            elif j % 4 == 3 and rng.random() < 0.05:  # a 1 MiB key (its dead letter keeps the first bytes, marked)
                key = b"noise-%d-" % j + b"k" * MIB_ID
            if key is None or not key.startswith(b"noise-"):
                value = value[:-1] + b',"nonce":"k%d"}' % j
        noise.append(Rec(key, value, reason, name))

    # interleave: every stream in its own order, streams and noise mixed at random
    draw = np.array([sid for sid, m in streams.items() for _ in m] + [""] * len(noise), dtype=object)
    rng.shuffle(draw)
    pos = {sid: 0 for sid in streams}
    out: list[Rec] = []
    ni = 0
    for sid in draw:
        if sid == "":
            out.append(noise[ni])
            ni += 1
        else:
            out.append(streams[sid][pos[sid]])
            pos[sid] += 1
    return Traffic(out, valid, expected_patches, extreme)


# --------------------------------------------------------------------------- running it


def fuzz_config(bootstrap: str, redis_url: str, model_path: str, *, partitions: int = 4,
                tag: str | None = None):
    """ServiceConfig for a fuzz run: own topics, key prefix and groups; ``v-*`` at 1min."""

    tag = tag or uuid.uuid4().hex[:8]
    return ServiceConfig(
        kafka={"bootstrap": bootstrap, "partitions": partitions, "session_timeout_ms": 2000,
               "heartbeat_interval_ms": 600},
        redis={"url": redis_url, "key_prefix": f"fz{tag}"},
        topics={name: f"fz{tag}.{name}" for name in ("observations", "patches", "forecasts", "alerts", "dlq")},
        ingest={"group_id": f"fz-ingest-{tag}"},
        worker={"group_id": f"fz-worker-{tag}", "model_path": model_path, "device": "cpu", "batch_size": 256,
                "batch_deadline_ms": 50},
        defaults={"horizon": 24, "num_samples": 8},
        groups=[{"name": "valid", "match": "v-*", "frequency": "1min"}],
    )


class _Runner(threading.Thread):
    def __init__(self, target, name: str):
        super().__init__(name=name, daemon=True)
        self._target_obj = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_obj.run()
        except BaseException as e:  # noqa: BLE001 - recorded: a crash is what we look for
            self.error = e


def _read_all(bootstrap: str, topic: str, timeout_s: float = 30.0):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                      max_partition_fetch_bytes=64 * 2**20, fetch_max_bytes=64 * 2**20)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out, deadline, idle = [], time.monotonic() + timeout_s, 0
        while time.monotonic() < deadline:
            got = 0
            for recs in c.poll(timeout_ms=300).values():
                out += recs
                got += len(recs)
            done = all(c.highwater(tp) is not None and c.position(tp) >= c.highwater(tp) for tp in tps)
            idle = idle + 1 if got == 0 else 0
            if done or (idle >= 3 and all(c.highwater(tp) in (None, 0) for tp in tps)):
                break
        return out
    finally:
        c.close()


def run_fuzz(cfg, traffic: Traffic, *, timeout_s: float = 600.0, log=print) -> dict[str, Any]:
    """Produce ``traffic`` to ``cfg``'s observations topic with ingest and a worker
    running (threads), wait until every expected dead letter and valid state is
    there (or ``timeout_s``), stop them and compare. Returns the figures; key
    ``ok`` is True when every check passed, ``problems`` lists the failures."""
    import redis
    from kafka import KafkaProducer

    from streamflame import Forecaster, SeriesState  # lazy: torch
    from streamflame.pipeline.ingest.consumer import IngestConsumer  # lazy: kafka-python, redis-py
    from streamflame.adapters.kafka_io import make_producer  # lazy: kafka-python
    from streamflame.adapters.state.store import StateRecord, StateStore  # lazy: redis-py
    from streamflame.pipeline.worker.worker import Worker  # lazy: kafka-python, redis-py

    rc = redis.Redis.from_url(**cfg.redis.client_kwargs())
    ingest = IngestConsumer(cfg, redis_client=rc)
    worker = Worker(cfg)
    threads = [_Runner(ingest, "ingest"), _Runner(worker, "worker")]
    for t in threads:
        t.start()
    store = StateStore(rc, cfg.redis.key_prefix)
    expected = Counter()
    want = {}
    sent_keys = {}   # ident -> the whole key of a noise-* record: its dead letter must give it back
    for r in traffic.records:
        if r.expect is not None:
            want[r.ident] = r.expect
            expected[r.expect] += 1
            if r.key is not None and r.key.startswith(b"noise-"):
                sent_keys[r.ident] = r.key
    n_big = sum(1 for r in traffic.records if r.kind == "10mib_payload")
    t_start = time.monotonic()
    prod = big = None
    produce_s = drain_s = 0.0
    alive = [True, True]
    try:
        prod = make_producer(cfg, linger_ms=20, batch_size=256 * 1024)
        big = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, max_request_size=2 * BIG_BYTES,
                            acks="all") if n_big else None
        for j, r in enumerate(traffic.records):
            p = big if (r.value is not None and len(r.value) > 1_900_000) else prod
            if p is big:
                prod.flush()  # keep the per-partition order across the two producers
            p.send(cfg.topics.observations, key=r.key, value=r.value)
            if p is big:
                big.flush()
            if j % 20_000 == 19_999:
                log(f"  produced {j + 1} records ({time.monotonic() - t_start:.0f} s)")
        prod.flush()
        produce_s = time.monotonic() - t_start
        log(f"  produced {len(traffic.records)} records in {produce_s:.1f} s; waiting for ingest and worker")

        def progress() -> tuple[int, int]:
            recs = store.load_many(list(traffic.valid))
            done = sum(1 for sid, rec in recs.items()
                       if isinstance(rec, StateRecord) and rec.seq == traffic.expected_patches[sid] - 1)
            return done, int(ingest.counters.get("dead_letters", 0))

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done, dl = progress()
            ext_done = all(isinstance(r, StateRecord) for r in store.load_many(traffic.accepted_noise_series).values())
            if done == len(traffic.valid) and dl >= len(want) and ext_done:
                break
            if any(not t.is_alive() for t in threads):
                break
            time.sleep(1.0)
        drain_s = time.monotonic() - t_start
        alive = [t.is_alive() for t in threads]
    finally:
        ingest.stop()
        worker.stop()
        for t in threads:
            t.join(60)
        for p in (prod, big):
            if p is not None:
                p.close(timeout=10)

    problems: list[str] = []
    for t, was_alive in zip(threads, alive):
        if t.error is not None:
            problems.append(f"{t.name} crashed: {t.error!r}")
        elif not was_alive:
            problems.append(f"{t.name} stopped by itself")

    letters = [decode_dead_letter(r.value) for r in _read_all(cfg.kafka.bootstrap, cfg.topics.dlq)]
    got = Counter()
    seen_ids: Counter = Counter()
    wrong: list[str] = []
    unexpected: list[str] = []
    for d in letters:
        k = d.key_bytes()
        ident = k[:64] if (k is not None and k.startswith(b"noise-")) else (k, d.original_bytes())
        full = sent_keys.get(ident) if k is not None and k.startswith(b"noise-") else k
        if full is not None and (k != full if d.key_truncated is None else
                                 (d.key_truncated != len(full) or not full.startswith(k))):
            wrong.append(f"{ident!r:.80}: key of {len(k)} bytes for one of {len(full)} (key_truncated "
                         f"{d.key_truncated})")
        got[d.reason] += 1
        seen_ids[ident] += 1
        if ident not in want:
            unexpected.append(f"{d.component}:{d.reason}: {d.detail[:120]} key={str(k)[:60]}")
        elif want[ident] != d.reason:
            wrong.append(f"{ident!r:.80} expected {want[ident]} got {d.reason} ({d.detail[:100]})")
    missing = [i for i in want if i not in seen_ids]
    duplicates = sum(n - 1 for n in seen_ids.values() if n > 1)
    if missing:
        problems.append(f"{len(missing)} hostile records without a dead letter, e.g. "
                        f"{[repr(m)[:80] for m in missing[:3]]} ({[want[m] for m in missing[:3]]})")
    if wrong:
        problems.append(f"{len(wrong)} dead letters with another reason than expected, e.g. {wrong[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} dead letters for records that should be accepted, e.g. {unexpected[:3]}")

    # valid series against the in-process model on their valid observations alone
    f = Forecaster.load(cfg.worker.model_path)
    mismatched, checked = [], 0
    recs = store.load_many(list(traffic.valid))
    for sid, slots in traffic.valid.items():
        n = traffic.expected_patches[sid]
        rec = recs.get(sid)
        x = np.array([np.nan if slots.get(s) is None else slots[s] for s in range(n * PATCH_LEN)])
        s = f.init_state(scale=cfg.resolve_group(sid).scale, step_seconds=FREQ_MS / 1000)
        for k in range(n):
            s = f.update(s, x[k * PATCH_LEN:(k + 1) * PATCH_LEN])
        if not isinstance(rec, StateRecord) or rec.seq != n - 1 or rec.state != s.to_bytes():
            mismatched.append(sid if not isinstance(rec, StateRecord) else f"{sid} (seq {rec.seq}, want {n - 1})")
        else:
            SeriesState.from_bytes(rec.state)
            checked += 1
    if mismatched:
        problems.append(f"{len(mismatched)} valid series whose state differs from the clean run: {mismatched[:5]}")
    extreme = store.load_many(traffic.accepted_noise_series)
    ext = {sid: (rec.seq if isinstance(rec, StateRecord) else type(rec).__name__) for sid, rec in extreme.items()}
    for sid in ("w-huge", "w-year9999", "w-centuries"):
        if sid in ext and not isinstance(extreme[sid], StateRecord):
            problems.append(f"extreme series {sid} has no state ({ext[sid]})")
    for sid, rec in extreme.items():   # accepted values never leave a state that forecasts NaN for good
        if isinstance(rec, StateRecord):
            st = SeriesState.from_bytes(rec.state)
            dead = [k for k, a in st.tensors.items() if k not in ("ref", "window") and not np.isfinite(a).all()]
            if dead:
                problems.append(f"extreme series {sid}: state fields {dead} are not finite")

    c = ingest.counters
    return {
        "ok": not problems,
        "problems": problems,
        "records": len(traffic.records),
        "hostile_records": len(want),
        "valid_records": sum(1 for r in traffic.records if r.expect is None),
        "big_10mib_records": n_big,
        "valid_series": len(traffic.valid),
        "valid_patches": sum(traffic.expected_patches.values()),
        "valid_states_equal": checked,
        "expected_by_reason": dict(sorted(expected.items())),
        "dead_letters_by_reason": dict(sorted(got.items())),
        "dead_letters": len(letters),
        "dead_letter_duplicates": duplicates,
        "extreme_series_seq": ext,
        "ingest_counters": {k: c[k] for k in ("records", "observations", "accepted", "rejected", "patches",
                                              "dead_letters", "retries", "poll_errors") if k in c},
        "worker_batches": worker.batches,
        "produce_s": round(produce_s, 1),
        "drain_s": round(drain_s, 1),
    }


def make_model(path: Path) -> str:
    """A small random model (tiny_config, seed 0) saved at ``path``; returns the path."""
    from streamflame import Forecaster  # lazy: torch
    from streamflame.model import tiny_config  # lazy: torch

    if not (path / "model.safetensors").exists():
        Forecaster.from_config(tiny_config(), seed=0).save(path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamflame fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000, help="records to generate (default 100000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--big", type=int, default=2, help="10 MiB records among them (default 2)")
    ap.add_argument("--bootstrap", help="use this Kafka instead of starting Tansu")
    ap.add_argument("--redis", help="use this Redis URL instead of starting redis-server")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for ingest and worker")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    import platform


    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="sf-fuzz-"))
    broker = redis_server = None
    t0 = time.monotonic()
    try:
        if args.bootstrap is None:
            broker = Broker(work / "broker")
            broker.start()
        if args.redis is None:
            redis_server = RedisServer(work / "redis")
            redis_server.start()
        bootstrap = args.bootstrap or broker.bootstrap
        redis_url = args.redis or redis_server.url
        cfg = fuzz_config(bootstrap, redis_url, make_model(work / "model"))
        from streamflame.adapters.kafka_io import create_topics  # lazy: kafka-python

        create_topics(cfg)
        print(f"streamflame fuzz: {args.messages} records, seed {args.seed}, broker {bootstrap}, redis {redis_url}")
        tr = build_traffic(args.messages, args.seed, big_payloads=args.big)
        print(f"  generated in {time.monotonic() - t0:.1f} s: {len(tr.records)} records, "
              f"{sum(r.expect is not None for r in tr.records)} hostile, {len(tr.valid)} valid series")
        res = run_fuzz(cfg, tr, timeout_s=args.timeout, log=lambda *a: print(*a, flush=True))
    finally:
        if broker is not None:
            broker.stop()
        if redis_server is not None:
            redis_server.stop()
    res["machine"] = f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}"
    res["date_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    res["total_s"] = round(time.monotonic() - t0, 1)
    for k, v in res.items():
        print(f"{k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    print("RESULT:", "PASS" if res["ok"] else "FAIL")
    return 0 if res["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
