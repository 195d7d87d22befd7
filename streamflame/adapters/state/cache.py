"""The worker's in-memory copy of the records it wrote itself (a Kafka Streams style
cache in front of the Redis state store).

A worker owns the series of its assigned partitions; the record it wrote last for a
series is, as long as nobody else wrote since, exactly what Redis holds. Keeping that
record (already decoded) saves the next batch's ``HMGET`` of ~26 KB and its decode.
Redis stays the only truth:

* only a record whose compare-and-set write was **applied** is kept;
* the next write of the series still compare-and-sets against the kept seq, so a
  record that went stale meanwhile (another worker wrote, Redis lost writes or was
  flushed, an operator quarantined or deleted the series) is refused there like a
  stale load would be, and the worker then drops the entry and re-reads from Redis;
* every rebalance, failed batch and config reload drops the whole cache.

So a hit can only ever compute what a Redis load would have computed, or be refused.
Bounded: least recently used entries go first beyond ``max_series``.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Iterable, Mapping

from streamflame.adapters.state.store import StateRecord

__all__ = ["StateCache"]


class StateCache:
    """LRU map series_id -> :class:`StateRecord` with ``decoded`` set (and ``state``
    left empty: the bytes are only needed to write, the decoded state to compute).
    Each kept state owns its arrays (``SeriesState.detached``), ~26 KB with the shipped
    model, ~30 KB per entry with the meta.

    ``max_series``: capacity (0 = off: every lookup misses, nothing is kept).
    ``hits``/``misses``: lookup counters since creation.
    """

    def __init__(self, max_series: int):
        if max_series < 0:
            raise ValueError(f"max_series must be >= 0, got {max_series}")
        self.max_series = max_series
        self._d: OrderedDict[str, StateRecord] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, series_id: str) -> bool:
        return series_id in self._d

    def split(self, series_ids: Iterable[str]) -> tuple[dict[str, StateRecord], list[str]]:
        """``(hits, misses)`` for ``series_ids``: the kept records and the ids to load."""
        hits: dict[str, StateRecord] = {}
        misses: list[str] = []
        d = self._d
        for sid in series_ids:
            rec = d.get(sid)
            if rec is None:
                misses.append(sid)
            else:
                d.move_to_end(sid)
                hits[sid] = rec
        self.hits += len(hits)
        self.misses += len(misses)
        return hits, misses

    def put_many(self, records: Mapping[str, StateRecord]) -> None:
        """Keep the records of applied writes (each must carry its decoded state)."""
        if not self.max_series:
            return
        d = self._d
        for sid, rec in records.items():
            if rec.decoded is None:
                raise ValueError(f"cache entry of {sid!r} without its decoded state")
            d[sid] = dataclasses.replace(rec, state=b"", decoded=rec.decoded.detached())
            d.move_to_end(sid)
        while len(d) > self.max_series:
            d.popitem(last=False)

    def evict(self, series_ids: Iterable[str]) -> None:
        for sid in series_ids:
            self._d.pop(sid, None)

    def clear(self) -> None:
        self._d.clear()
