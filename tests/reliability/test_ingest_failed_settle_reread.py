"""Regression (found by CI in test_redis_outage_is_survived_by_rewinding, series
fix-07 alone on its partition): the ingest consumer settles the previous batch
(flush + cursor writes) right after a poll. When that settle failed (Redis away)
it rewound only the partitions it had read before, so a partition whose first
records came in that very poll kept its fetch position after them and they were
never read again: every patch of its series was lost. The records of a poll now
count as read before the settle, so a failed settle seeks their partitions back."""
from __future__ import annotations

import time

import orjson
import redis as redis_lib
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from streamflame.adapters.kafka_io import make_producer
from streamflame.core.constants import PATCH_LEN
from streamflame.embedded import RedisServer
from streamflame.messages import decode_patch
from streamflame.pipeline.ingest.consumer import IngestConsumer

T0 = 1_704_067_200_000


def _partition(sid: str, n: int) -> int:
    return (murmur2(sid.encode()) & 0x7FFFFFFF) % n  # kafka-python's default partitioner


def _produce(cfg, sid, slots):
    p = make_producer(cfg, linger_ms=5)
    try:
        for k in slots:
            p.send(cfg.topics.observations, key=sid.encode(),
                   value=orjson.dumps({"series_id": sid, "timestamp": T0 + k * 60_000, "value": float(k)}))
        p.flush()
    finally:
        p.close()


def _patches(cfg) -> list:
    c = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(cfg.topics.patches, p) for p in c.partitions_for_topic(cfg.topics.patches)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out, deadline, quiet_until = [], time.monotonic() + 20, None
        while time.monotonic() < deadline and (quiet_until is None or time.monotonic() < quiet_until):
            got = [decode_patch(r.value) for rs in c.poll(timeout_ms=200).values() for r in rs]
            out += got
            if out and (got or quiet_until is None):
                quiet_until = time.monotonic() + 1.0
        return out
    finally:
        c.close()


def test_a_partition_first_read_in_a_poll_whose_settle_fails_is_read_again(service_config, tmp_path):
    n_parts = service_config.kafka.partitions
    a = "a-0"
    b = next(f"b-{i}" for i in range(100) if _partition(f"b-{i}", n_parts) != _partition(a, n_parts))
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    data = service_config.effective(mask_secrets=False)
    data["redis"]["url"] = server.url
    data["defaults"]["frequency"] = "1min"
    data["ingest"].update({"commit_interval_ms": 0, "commit_delay_ms": 0})
    cfg = type(service_config)(**data)
    client = redis_lib.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=1)
    ing = IngestConsumer(cfg, redis_client=client)
    try:
        _produce(cfg, a, range(PATCH_LEN + 1))    # a's first patch: sent now, its cursor written at the next settle
        deadline = time.monotonic() + 30
        while ing.counters["patches"] < 1 and time.monotonic() < deadline:
            ing.poll_once()
        assert ing.counters["patches"] == 1 and ing.counters["cursor_writes"] == 0, dict(ing.counters)

        port = server.port
        server.stop()                              # the next settle fails
        _produce(cfg, b, range(PATCH_LEN + 1))    # b's partition is read for the first time in that poll

        real_poll, seen = ing.consumer.poll, []

        def poll_until_records(**kw):
            end = time.monotonic() + 20
            while True:
                got = real_poll(**kw)
                if got or time.monotonic() > end:
                    seen.extend(tp.partition for tp in got)
                    return got

        ing.consumer.poll = poll_until_records
        ing.poll_once()
        ing.consumer.poll = real_poll
        assert seen == [_partition(b, n_parts)], seen
        assert ing.counters["retries"] == 1, dict(ing.counters)

        server = RedisServer(tmp_path / "redis", port=port, appendonly=True).start()
        deadline = time.monotonic() + 30
        while ing.counters["cursor_writes"] < 2 and time.monotonic() < deadline:
            ing.poll_once()
        ing.settle()
    finally:
        ing.close()
        server.stop()
    got = {(p.series_id, p.seq): p.values for p in _patches(cfg)}
    want = [float(k) for k in range(PATCH_LEN)]
    assert got == {(a, 0): want, (b, 0): want}, sorted(got)
