"""The worker's side of a batch's outcome: the job in flight finished (cache, write refusals, rewinds,
offset commits, metrics, the batch's log line) or failed (rewind, back off, a new publisher).

A mixin of :class:`~streamflame.pipeline.worker.worker.Worker` (its state lives there); one file per
concern of the worker."""
from __future__ import annotations

import time

import structlog

from streamflame.adapters.kafka_io import OffsetAndMetadata
from streamflame.pipeline.worker.batches import Computed, ReadBatch, offset_ranges

log = structlog.get_logger("streamflame.worker")

_MAX_BACKOFF_S = 5.0


class WorkerOutcome:
    """The methods of :class:`Worker` for this concern (see the module docstring)."""

    def _settle_inflight(self) -> None:
        """Finish the job in flight, if any. A failure rewinds its batch; a failure or a
        rewind also drops the open batch (it may hold patches read past the rewind)."""
        if self._inflight is None:
            return
        prev, b = self._inflight, self._batch
        try:
            rewound = self._finish_inflight()
        except self._errors as e:
            self._batch = ReadBatch()
            self._fail(e, [prev.batch, b])
            return
        if rewound and len(b):
            self._batch = ReadBatch()
            self._reread(rewound, b)

    def _fail(self, e: Exception, batches: list[ReadBatch]) -> None:
        self._backoff = min(_MAX_BACKOFF_S, max(0.1, 2 * self._backoff))
        log.error("worker.batch_failed", error=repr(e), patches=sum(len(b) for b in batches),
                  retry_in_s=self._backoff)
        self.cache.clear()   # writes of the batch may or may not have landed
        start: dict = {}
        for b in batches:
            for tp, off in b.start.items():
                start[tp] = min(off, start.get(tp, off))
        self._rewind(start)
        if not self.publisher.alive:
            self._restart_publisher()
        self._stop.wait(self._backoff)

    def _finish_inflight(self) -> dict[int, int] | None:
        """The outcome of the job in flight: cache, rewinds, commit, metrics, the
        batch's log line. Returns None when every write was applied as computed,
        else the partitions sought back ({partition: offset}, maybe empty).
        Raises what the job raised."""
        cur, self._inflight = self._inflight, None
        out = self.publisher.result()
        b, res, save = cur.batch, cur.res, out.save
        for sid, reason in res.quarantine.items():
            log.error("worker.series_quarantined", series_id=sid, reason=reason)
        # Keep what was applied; anything refused or quarantined is re-read from Redis.
        self.cache.put_many({sid: res.records[sid] for sid in save.applied})
        self.cache.evict((*save.stale, *save.conflict, *save.gap, *save.blocked, *res.quarantine))

        # Write refusals that leave patches of this batch unapplied -> re-read them.
        rewind = dict(res.rewind)
        for sid in (*save.conflict, *save.gap):
            part, off = res.first_applied[sid]
            rewind[part] = min(rewind.get(part, off), off)
        if save.conflict or save.gap:
            log.warning("worker.write_refused", conflict=len(save.conflict), gap=len(save.gap),
                        sample=list({**save.conflict, **save.gap}.items())[:5])
        offsets = {tp: min(end, rewind.get(tp.partition, end)) for tp, end in b.end.items()}
        self._commit(offsets)
        if rewind:
            self._rewind({tp: rewind[tp.partition] for tp in b.end if tp.partition in rewind})
            self.metrics.count("rewinds", len(rewind))
            log.warning("worker.rewind", partitions=rewind)

        # Metrics and the one log line per batch.
        total_s = time.perf_counter() - cur.t_start
        self.batches += 1
        self.metrics.observe_batch(b, res, save, out, cur.redis_load_s, total_s)
        self.metrics.count("state_cache_lookups", cur.n_series - cur.n_misses, "hit")
        self.metrics.count("state_cache_lookups", cur.n_misses, "miss")
        self._log_batch(cur, out, total_s)
        clean = not (rewind or res.quarantine or save.refused)
        return None if clean else rewind

    def _log_batch(self, cur: "Computed", out, total_s: float) -> None:
        """The one ``worker.batch`` line of a batch (its outcome ``out`` seen)."""
        b, res, save = cur.batch, cur.res, out.save
        log.info("worker.batch", size=len(b), offsets=offset_ranges(b.start, b.end), series=cur.n_series,
                 cached=cur.n_series - cur.n_misses,
                 rounds=res.rounds, applied=res.applied, scored=sum(len(v) for v in res.scores.values()),
                 skipped=res.skipped, refused=save.refused, rejected=len(res.rejected) + len(b.bad),
                 forecasts=len(res.forecasts), alerts=len(res.alerts), reinitialised=res.reinitialised,
                 step_ms=round(res.step_s * 1000, 2), forecast_ms=round(res.forecast_s * 1000, 2),
                 redis_ms=round((cur.redis_load_s + out.save_s) * 1000, 2), publish_ms=round(out.publish_s * 1000, 2),
                 compute_ms=round(cur.compute_s * 1000, 2), total_ms=round(total_s * 1000, 2))

    def _commit(self, offsets: dict) -> None:
        """Note ``offsets`` (those of a batch whose state writes are done) and commit the
        noted ones that are ``worker.commit_delay_ms`` old. A Redis crash that loses its
        last second of writes (appendfsync everysec) thus leaves the committed offsets
        before the lost patches: a restarted worker re-reads and re-applies them, even a
        series' last patch (which no later patch would reveal as a gap)."""
        if offsets:
            self._pending_commits.note(offsets)
        due = self._pending_commits.due(self.cfg.worker.commit_delay_ms / 1000)
        if due:
            assigned = self.consumer.assignment()
            due = {tp: off for tp, off in due.items() if tp in assigned}   # revoked: the new owner re-reads
        if due:
            self.consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in due.items()})

    def _rewind(self, offsets: dict) -> None:
        assigned = self.consumer.assignment()
        for tp, off in offsets.items():
            if tp in assigned:
                self.consumer.seek(tp, off)

    def _reread(self, rewound: dict[int, int], *batches: ReadBatch) -> None:
        """Seek the partitions of ``batches`` back to where the first of them starts, or
        further where the job before rewound them (``rewound``: {partition: offset})."""
        start: dict = {}
        for b in batches:
            for tp, off in b.start.items():
                start[tp] = min(off, start.get(tp, off), rewound.get(tp.partition, off))
        self._rewind(start)
