"""Regression: on a rebalance the ingest consumer drops what it holds in memory
for its partitions (open patches), expecting them to be rebuilt from the
committed offsets, but kafka-python 3 keeps the fetch position of a partition
the consumer is assigned again, so the observations of the open patches of a
kept partition were never read again: the next patch lacked them (silent loss).
Ingest now seeks a kept partition back to its rewind offset (last commit)."""
from __future__ import annotations

import time

import orjson

from streamflame.adapters.kafka_io import make_producer
from streamflame.core.constants import PATCH_LEN
from streamflame.messages import decode_patch
from streamflame.pipeline.ingest.consumer import IngestConsumer

T0 = 1_704_067_200_000


def _produce(cfg, sid, slots):
    p = make_producer(cfg, linger_ms=5)
    try:
        for k in slots:
            p.send(cfg.topics.observations, key=sid.encode(),
                   value=orjson.dumps({"series_id": sid, "timestamp": T0 + k * 60_000, "value": float(k)}))
        p.flush()
    finally:
        p.close()


def test_open_patch_of_a_kept_partition_survives_a_rebalance(service_config, redis_client):
    from kafka import KafkaConsumer, TopicPartition

    cfg = service_config.model_copy(update={"defaults": service_config.defaults.model_copy(
        update={"frequency": "1min"})})
    ing = IngestConsumer(cfg, redis_client=redis_client)
    try:
        _produce(cfg, "s-1", range(30))          # an open patch of 30 slots, nothing emitted
        deadline = time.monotonic() + 30
        while ing.counters["observations"] < 30 and time.monotonic() < deadline:
            ing.poll_once()
        assert ing.counters["observations"] == 30 and ing.counters["patches"] == 0
        assigned = list(ing.consumer.assignment())
        ing.listener.on_partitions_revoked(assigned)   # a rebalance that hands the same partitions back
        ing.listener.on_partitions_assigned(assigned)
        _produce(cfg, "s-1", range(30, PATCH_LEN + 2))
        deadline = time.monotonic() + 30
        while ing.counters["patches"] < 1 and time.monotonic() < deadline:
            ing.poll_once()
        assert ing.counters["patches"] == 1, (dict(ing.counters), ing.rewind_to, ing.next_offset)
    finally:
        ing.close()
    c = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(cfg.topics.patches, p) for p in c.partitions_for_topic(cfg.topics.patches)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        recs, deadline = [], time.monotonic() + 20
        while not recs and time.monotonic() < deadline:
            for rs in c.poll(timeout_ms=200).values():
                recs += rs
    finally:
        c.close()
    p = decode_patch(recs[0].value)
    assert (p.seq, p.start_ms) == (0, T0)
    assert p.values == [float(k) for k in range(PATCH_LEN)], "all 48 observations, none lost in the rebalance"
