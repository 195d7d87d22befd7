"""Read the newest records of one key without reading the topic from the beginning.

StreamFlame's producers put a key in the partition :func:`streamflame.adapters.kafka_io.key_partition`
gives, so only that partition is read, from its end backwards in growing windows until
the caller has what it needs (or the partition's start is reached).

The end of the partition is the high-water mark that comes with fetched records:
Tansu's ``end_offsets()`` answers the start of the last batch, not the true end, so the
reader seeks there and reads the last batch first.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from streamflame.adapters.kafka_io import TopicPartition, key_partition
from streamflame.tools import UsageError

@dataclass
class KeyTail:
    """What :func:`read_key_tail` read: ``records`` of the key, oldest first;
    ``read`` records fetched in all (of every key); ``start`` / ``end`` the offsets of
    the partition window covered; ``partition_start`` the partition's first offset."""

    partition: int
    records: list = field(default_factory=list)
    read: int = 0
    start: int = 0
    end: int = 0
    partition_start: int = 0


def _read_range(consumer: Any, tp: Any, lo: int, hi: int | None, deadline: float,
                what: str) -> tuple[list, int, int]:
    """Records at offsets [lo, hi) (hi None: up to the high-water mark the fetches report),
    the end reached and how many records were fetched (a fetch may overshoot ``hi``)."""
    consumer.seek(tp, lo)
    out: list = []
    while True:
        for records in consumer.poll(timeout_ms=300).values():
            out += records
        hw = consumer.highwater(tp)
        end = hw if hi is None else hi
        if end is not None and consumer.position(tp) >= end:
            return [r for r in out if lo <= r.offset < end], end, len(out)
        if time.monotonic() > deadline:
            raise UsageError(f"reading {what} timed out")


def read_key_tail(consumer: Any, topic: str, key: bytes, enough: Callable[[list], bool],
                  first_window: int = 64, timeout_s: float = 60.0) -> KeyTail:
    """The newest records of ``key`` in ``topic``, read backwards from the partition's end
    until ``enough(records)`` (records oldest first) or the partition's start.

    ``consumer``: a kafka-python ``KafkaConsumer`` without a group (it is assigned the
    one partition). Each window is twice the previous one, so what is read stays within
    a small multiple of what is needed."""

    parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise UsageError(f"topic {topic} does not exist")
    tp = TopicPartition(topic, key_partition(key, len(parts)))
    consumer.assign([tp])
    deadline = time.monotonic() + timeout_s
    first = consumer.beginning_offsets([tp])[tp]
    batch_start = max(first, consumer.end_offsets([tp])[tp])   # <= the true end on Tansu
    last, end, fetched = _read_range(consumer, tp, batch_start, None, deadline, topic)
    tail = KeyTail(partition=tp.partition, read=fetched, start=batch_start, end=end, partition_start=first)
    tail.records = [r for r in last if r.key == key]
    window = first_window
    while tail.start > first and not enough(tail.records):
        lo = max(first, tail.start - window)
        got, _, fetched = _read_range(consumer, tp, lo, tail.start, deadline, topic)
        tail.read += fetched
        tail.records[:0] = [r for r in got if r.key == key]
        tail.start = lo
        window *= 2
    return tail
