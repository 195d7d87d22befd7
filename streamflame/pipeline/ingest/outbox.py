"""The ingest consumer's hand-over to its publisher and its offset commits: one job in flight, in
order; offsets committed only once every record before them is acknowledged and every cursor
written.

A mixin of :class:`~streamflame.pipeline.ingest.consumer.IngestConsumer` (its state lives there);
one file per concern of the consumer."""
from __future__ import annotations

import time

import orjson
import structlog

from streamflame.adapters.kafka_io import OffsetAndMetadata, TopicPartition
from streamflame.pipeline.ingest.assembler import SeriesAssembler
from streamflame.pipeline.ingest.cursors import cursor_args
from streamflame.pipeline.publisher import IngestJob, start

log = structlog.get_logger("streamflame.ingest")


class RetryBatch(Exception):
    """Kafka or Redis failed while a batch was handled: rewind and retry."""


def _encode_patch(p) -> bytes:
    # Field order and meaning as messages.PatchMessage (values: floats or null).
    return orjson.dumps(p._asdict())


class IngestPublishing:
    """The methods of :class:`IngestConsumer` for this concern (see the module docstring)."""

    def _publish(self, patches: list, touched: dict[str, SeriesAssembler]) -> None:
        """Add the patches to the next job; their series' cursors are taken at :meth:`_submit`."""
        topic = self.cfg.topics.patches
        self._outbox += [(topic, pt.series_id.encode("utf-8"), _encode_patch(pt)) for pt in patches]
        self.counters["patches"] += len(patches)
        self._unsettled.update(touched)

    def _submit(self) -> None:
        """Hand the job built so far to the publisher: the outbox, and the cursors of
        the series with a patch in it, taken now (they cover exactly the patches sent
        so far, so nothing may be assembled between :meth:`_publish` and this call
        without being published with it). Waits for the job in flight first: one job
        at a time, in order, so a cursor is written only after its patches and every
        patch before them are acknowledged."""
        if not self._outbox and not self._unsettled and not self._dead:
            return
        self._await_job()

        self._outbox += [m for _, m in sorted(self._dead, key=lambda d: d[0])]
        job = IngestJob(self._outbox, cursors=cursor_args(a.cursor() for a in self._unsettled.values()),
                        alerted=list(self._alerted.items()))
        self._outbox, self._unsettled, self._alerted, self._dead = [], {}, {}, []
        try:
            if self.publisher is None:
                self.publisher = self._start_publisher()
            self.publisher.submit(job)
        except Exception as e:  # noqa: BLE001 - OSError: the publisher gone, or not started (Redis/broker away)
            raise RetryBatch(f"handing the batch to the publisher failed: {e!r}") from e
        self._in_flight = True

    def _await_job(self) -> None:
        """The outcome of the job in flight, if any: every record delivered, the
        cursors written (or refused as stale). Raises RetryBatch when not."""
        if not self._in_flight:
            return
        self._in_flight = False
        try:
            out = self.publisher.result()
        except Exception as e:  # noqa: BLE001 - KafkaError, RedisError, OSError (publisher gone)
            raise RetryBatch(f"publishing the batch or writing its cursors failed: {e!r}") from e
        res = out.cursors
        if res.written or res.refused:
            self.histograms.redis_seconds.labels("save").observe(out.save_s)
        self.counters["cursor_writes"] += res.written
        if res.refused:
            self.counters["cursor_refused"] += len(res.refused)
            log.warning("ingest.cursor_refused", count=len(res.refused), example=res.refused[0][:200],
                        why="a newer cursor is stored (another consumer owns or owned the series)")

    def settle(self) -> None:
        """Hand over what is built and wait until every record of every batch so far
        (patches, dead letters) is acknowledged and their cursors are written.
        Raises RetryBatch when a send or a cursor write failed."""
        self._submit()
        self._await_job()

    def _start_publisher(self):
        """The publisher of each batch's job (``ingest.publisher``), see streamflame.pipeline.publisher."""

        return start(self.cfg, "ingest", cursors=self.store, log=log)

    def _close_publisher(self, timeout_s: float) -> None:
        sink, self.publisher, self._in_flight = self.publisher, None, False
        if sink is None:
            return
        try:
            sink.close(timeout_s=timeout_s)
        except Exception as e:  # noqa: BLE001 - closing must not mask the reason we stop
            log.warning("ingest.close_failed", client="publisher", error=repr(e))

    def highwaters(self) -> dict[int, int]:
        """High-water mark per assigned partition, as last seen with fetched data."""
        out = {}
        for p in list(self.assigned):
            hw = self.consumer.highwater(TopicPartition(self.topic, p))
            if hw is not None:
                out[p] = hw
        return out

    def commit_offsets(self) -> dict[int, int]:
        """Per partition: the smallest offset needed to rebuild what is in memory."""
        out = dict(self.next_offset)
        for p, sids in self.partition_series.items():
            if p not in out:
                continue
            low = out[p]
            for sid in sids:
                a = self.assemblers.get(sid)
                if a is not None and a.pin_offset is not None and a.pin_offset < low:
                    low = a.pin_offset
            out[p] = low
        return out

    def _commit(self, safe: dict[int, int] | None = None, final: bool = False) -> None:
        """Every ``commit_interval_ms``: note the offsets that are safe now (``safe``:
        :meth:`commit_offsets` as it was before the batch not yet settled was read),
        and commit the newest noted ones that are ``commit_delay_ms`` old (the Redis
        cursor writes they rely on are then on disk even with AOF everysec)."""
        ing = self.cfg.ingest
        now = time.monotonic()
        if final or (now - self._last_commit) * 1000 >= ing.commit_interval_ms:
            self._last_commit = now
            self._pending_commits.note(self.commit_offsets() if safe is None else safe, now)
        due = self._pending_commits.due(ing.commit_delay_ms / 1000, now)
        offsets = {p: o for p, o in due.items() if p in self.assigned and self.committed.get(p) != o}
        if not offsets:
            return
        try:
            self.consumer.commit({TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1)
                                  for p, o in offsets.items()})
        except Exception as e:  # noqa: BLE001 - rebalance in progress / broker away: next time
            self.counters["commit_errors"] += 1
            log.warning("ingest.commit_failed", error=repr(e))
            return
        self.counters["commits"] += 1
        self.committed.update(offsets)
        self.rewind_to.update(offsets)
