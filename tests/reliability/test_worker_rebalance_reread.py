"""Regression: the worker drops its open (uncommitted) batch when partitions are
revoked, but kafka-python 3 keeps the fetch position of every partition the
consumer is assigned again, so the dropped patches of a kept partition were
never re-read: the series stalled behind a patch_gap (or, without a stored
state to rewind to, for good). Found by `streamflame chaos rebalance`
(1 of 60 series stuck, 3 patches never applied). The worker now seeks a kept
partition back to the first offset of the dropped batch."""
from __future__ import annotations

import time

from kafka import KafkaProducer

from streamflame import Forecaster
from streamflame.config import ServiceConfig
from streamflame.model import tiny_config
from streamflame.pipeline.worker.worker import Worker

def test_batch_dropped_on_revoke_is_reread_on_a_kept_partition(service_config, tmp_path):
    data = service_config.effective(mask_secrets=False)
    model = Forecaster.from_config(tiny_config(), seed=5).save(tmp_path / "ckpt")
    data["worker"].update({"model_path": str(model), "device": "cpu", "batch_size": 1000})
    cfg = ServiceConfig(**data)
    prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap)
    for i in range(20):  # content is irrelevant: nothing is processed here
        prod.send(cfg.topics.patches, key=b"s", value=b'{"x": %d}' % i, partition=0)
    prod.flush()
    prod.close()
    w = Worker(cfg)
    w._open()
    try:
        deadline = time.monotonic() + 30
        while len(w._batch) < 20 and time.monotonic() < deadline:
            w._take(w.consumer.poll(timeout_ms=200))
        assert len(w._batch) == 20
        tp = next(iter(w._batch.start))
        first, end = w._batch.start[tp], w._batch.end[tp]
        assert w.consumer.position(tp) == end
        assigned = list(w.consumer.assignment())
        w._listener.on_partitions_revoked(assigned)   # what a rebalance does: drop the batch ...
        w._apply_rebalance_events({})                # (applied after the poll that saw them)
        assert len(w._batch) == 0
        w._listener.on_partitions_assigned(assigned)  # ... and hand the same partitions back
        w._apply_rebalance_events({})
        assert w.consumer.position(tp) == first, "the dropped patches are read again"
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 20 and time.monotonic() < deadline:
            for msgs in w.consumer.poll(timeout_ms=200).values():
                got += [m.offset for m in msgs]
        assert got == list(range(first, end))
    finally:
        w._close()
