"""Read-ahead (``worker.read_ahead``): the next batch's patches are polled before a batch is
computed, and the Redis reads of the next batch's states run in a background thread while the
model computes (redis-py waits on the socket and torch computes with the GIL released).

What is read ahead, and why it is what a read at the next batch's own time would give: the
series of the next batch that are neither in the state cache, nor in the batch about to be
computed, nor in the batch in the publisher's hands. This worker writes no other series before
the next batch is computed (its writes are those two batches'), and a series in either of them
is not read at all: the next batch takes its record from the batch before (carried forward in
memory, as without read-ahead), or from the cache once that write is seen applied. A write by
anyone else (a second worker during a rebalance, an operator) meets the compare-and-set as a
later read would: refused and re-read. Whatever drops or rewinds a batch drops the open batch
with its read-ahead (its offsets are re-read, nothing of it was computed), and so do a
rebalance and a failed batch; a Redis error in the background read fails the next batch as a
failed load does. Nothing is written ahead: the order per batch (publish, write, commit) and
its crash behaviour stay as they are.

A mixin of :class:`~streamflame.pipeline.worker.worker.Worker` (its state lives there).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from streamflame.adapters.state.store import StateStore
from streamflame.pipeline.worker.batches import Prefetch, ReadBatch


class WorkerReadAhead:
    """The methods of :class:`Worker` for this concern (see the module docstring)."""

    def _open_read_ahead(self) -> None:
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="sf-read-ahead") \
            if self.cfg.worker.read_ahead else None
        # a store object of its own: fetch_many keeps its round-trip time on the store
        self._prefetch_store = StateStore(self.store.redis, self.store.prefix)

    def _close_read_ahead(self) -> None:
        if getattr(self, "_prefetcher", None) is not None:
            self._prefetcher.shutdown(wait=True, cancel_futures=True)

    def _poll_ahead(self) -> ReadBatch | None:
        """Poll, without waiting, the records that follow the open batch (the one about to be
        handled) into a new batch and return it; None when the poll's rebalance events dropped
        the open batch (as after any poll; the records of the poll then start the open batch)."""
        b = self._batch
        polled = self.consumer.poll(timeout_ms=0, max_records=self.cfg.worker.batch_size)
        polled = self._apply_rebalance_events(polled)   # with b open: a revoke drops it
        if self._batch is not b:
            self._take(polled)
            return None
        nxt = ReadBatch(read_ahead=True)
        self._take(polled, into=nxt)
        return nxt

    def _start_prefetch(self, computing: Iterable[str]) -> None:
        """Start reading the open batch's records that will be needed from Redis: ``computing`` are
        the series of the batch about to be computed (their records come from it)."""
        nxt = self._batch
        if self._prefetcher is None or not nxt.records:
            return
        skip = set(computing)
        if self._inflight is not None:
            skip.update(r.patch.series_id for r in self._inflight.batch.records)
        wanted = [sid for sid in dict.fromkeys(r.patch.series_id for r in nxt.records)
                  if sid not in skip and sid not in self.cache]
        if wanted:
            nxt.prefetch = Prefetch(self._prefetcher.submit(self._prefetch_store.fetch_many, wanted),
                                    frozenset(wanted))

    def _drop_open(self) -> list[ReadBatch]:
        """Take the open batch out (to be re-read: nothing of it was computed); [] when empty."""
        b, self._batch = self._batch, ReadBatch()
        return [b] if len(b) else []
