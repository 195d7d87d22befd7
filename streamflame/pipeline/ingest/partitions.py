"""The ingest consumer's partitions and memory: rebalance events applied between polls
(:class:`~streamflame.adapters.kafka_io.RebalanceQueue`; a revoked partition's series dropped),
and the bounds on series and buffered observations held (the least recently seen series evicted).

A mixin of :class:`~streamflame.pipeline.ingest.consumer.IngestConsumer` (its state lives there);
one file per concern of the consumer."""
from __future__ import annotations

import structlog

from streamflame.adapters.kafka_io import TopicPartition
from streamflame.pipeline.ingest.outbox import RetryBatch

log = structlog.get_logger("streamflame.ingest")


class IngestPartitions:
    """The methods of :class:`IngestConsumer` for this concern (see the module docstring)."""

    def _note_read(self, records: dict) -> None:
        """Remember where each partition of a poll was first read from (unless an
        earlier rewind offset is kept): a batch that fails before or while these records
        are handled seeks back there. A partition read for the first time has no commit
        to fall back on, and its fetch position is already past these records."""
        for tp, recs in records.items():
            if recs:
                self.rewind_to.setdefault(tp.partition, recs[0].offset)

    def _apply_rebalance_events(self) -> set[int]:
        """Apply revocations/assignments; returns the partitions sought back.

        A revoked partition's in-memory state is dropped, to be rebuilt from the
        committed offset by its next owner. kafka-python 3 keeps the fetch
        position of a partition that is assigned again to this consumer, so such
        a kept partition is sought back to its rewind offset here (otherwise the
        observations of its open patches would never be read again)."""
        reread: set[int] = set()
        for kind, tps in self.listener.drain():
            parts = {tp.partition for tp in tps if tp.topic == self.topic}
            if kind == "revoked":
                for p in parts:
                    if p in self.rewind_to:
                        self._reseek[p] = min(self.rewind_to[p], self._reseek.get(p, self.rewind_to[p]))
                self._drop_partitions(parts)
                self.assigned -= parts
            else:
                for p in parts & set(self._reseek):
                    off = self._reseek[p]
                    self.consumer.seek(TopicPartition(self.topic, p), off)
                    self.rewind_to[p] = off
                    reread.add(p)
                self._reseek = {}
                self.assigned |= parts
                if not self._ready:
                    self._ready = True
                    if self.ready_file is not None:
                        self.ready_file.parent.mkdir(parents=True, exist_ok=True)
                        self.ready_file.touch()
            log.info("ingest.rebalance", change=kind, partitions=sorted(parts))
        return reread

    def _drop_partitions(self, parts: set[int]) -> None:
        """Forget everything held for these partitions (the next owner rebuilds it)."""
        for p in parts:
            for sid in self.partition_series.pop(p, ()):
                self.assemblers.pop(sid, None)
                self.series_partition.pop(sid, None)
                self.quarantined.pop(sid, None)
            self.next_offset.pop(p, None)
            self.event_time.pop(p, None)
            self.message_span.pop(p, None)
            self.rewind_to.pop(p, None)
            self._pending_commits.forget([p])
            self.committed.pop(p, None)

    def _enforce_bounds(self) -> None:
        """Spill series whose open patch holds the commit back more than
        ``max_pin_lag`` records, and keep at most ``max_series_in_memory`` series
        (least recently seen go first; clean ones are just dropped, open ones
        are spilled: their open patch is written into their Redis cursor)."""
        ing = self.cfg.ingest
        victims: list[str] = []
        for p, sids in self.partition_series.items():
            nxt = self.next_offset.get(p)
            if nxt is None:
                continue
            for sid in sids:
                a = self.assemblers.get(sid)
                if a is not None and a.pin_offset is not None and nxt - a.pin_offset > ing.max_pin_lag:
                    victims.append(sid)
        excess = len(self.assemblers) - ing.max_series_in_memory
        if excess > 0:
            chosen = set(victims)
            for sid in self.assemblers:  # oldest first (insertion order = last seen)
                if excess <= 0:
                    break
                if sid not in chosen:
                    victims.append(sid)
                    excess -= 1
        if victims:
            self._evict(victims)

    def _evict(self, sids: list[str]) -> None:
        self.settle()  # a spilled cursor must not run ahead of patches still in flight
        spill = [self.assemblers[s] for s in sids if not self.assemblers[s].is_clean]
        if spill:
            try:
                res = self.store.save_many([a.cursor(include_open=True) for a in spill])
            except Exception as e:  # noqa: BLE001
                raise RetryBatch(f"spilling open patches failed: {e!r}") from e
            self.counters["spilled"] += res.written
            self.counters["cursor_refused"] += len(res.refused)
        for sid in sids:
            self.assemblers.pop(sid, None)
            p = self.series_partition.pop(sid, None)
            if p is not None:
                self.partition_series.get(p, set()).discard(sid)
        self.counters["evicted"] += len(sids)
        log.info("ingest.evicted", series=len(sids), spilled=len(spill), in_memory=len(self.assemblers))
