"""The ingest consumer's assembly: each series' entries, in Kafka order, through its assembler; alert
events, silence (dropouts), dead letters of rejected observations, and loading the series' cursors.

A mixin of :class:`~streamflame.pipeline.ingest.consumer.IngestConsumer` (its state lives there);
one file per concern of the consumer."""
from __future__ import annotations

import time
from collections import Counter

import structlog

from streamflame.alerts.messages import encode_event
from streamflame.core.timefmt import iso_ms
from streamflame.pipeline.ingest.assembler import ACCEPTED, REJECTED, Rejection, SeriesAssembler
from streamflame.pipeline.ingest.cursor import CursorDecodeError, ObsRef
from streamflame.pipeline.ingest.entries import Entry, FastRun
from streamflame.pipeline.ingest.judging import judge_deferred
from streamflame.pipeline.ingest.outbox import RetryBatch

log = structlog.get_logger("streamflame.ingest")


class IngestAssembling:
    """The methods of :class:`IngestConsumer` for this concern (see the module docstring)."""

    def _assemble(self, chunk: dict[str, list[Entry]], patches: list, touched: dict) -> None:
        """Feed each series' entries (:mod:`streamflame.pipeline.ingest.entries`), in their Kafka order,
        to its assembler."""
        if not chunk:
            return
        self._load_series({sid: entries[0].partition for sid, entries in chunk.items()})
        rejects: list[Rejection] = []
        c = self.counters
        accepted = skipped = 0
        event_time: dict[int, int] = {}  # partition -> latest observation time assembled now
        future_tol = self.cfg.ingest.future_tolerance_ms
        judging: list[tuple[str, SeriesAssembler]] = []   # series whose alert judgement waits for the batch
        for sid, entries in chunk.items():
            a = self.assemblers.pop(sid, None)
            if a is None:  # quarantined: its cursor in Redis is unreadable
                why = self.quarantined.get(sid, "unreadable ingest cursor")
                for e in entries:
                    if type(e) is FastRun:
                        c["observations"] += len(e.records)
                        c["fast_records"] += len(e.records)
                        for rec in e.records:
                            self._reject_message("corrupt_state", why, e.partition, rec.offset, rec.key, rec.value,
                                                 sid)
                    else:
                        self._reject_message("corrupt_state", why, e.partition, e.offset, e.key, e.raw, sid)
                continue
            self.assemblers[sid] = a  # most recently seen last (eviction order)
            n_before, r_before = len(patches), len(rejects)
            for e in entries:
                if type(e) is FastRun:  # consecutive single-observation records (checked against the future limit)
                    p, offs, recs, ts, vs = e.partition, e.offsets, e.records, e.timestamps, e.values
                    c["observations"] += len(vs)
                    c["fast_records"] += len(vs)
                    if a.add_run(ts, vs, p, offs, patches):
                        accepted += len(vs)
                        continue
                    # one by one: (timestamp, value, offset, index, ref, future limit)
                    items = ((t, v, o, 0, ObsRef(rec.value, rec.key, None), None)
                             for t, v, o, rec in zip(ts, vs, offs, recs))
                else:
                    p, offset, key, raw, limit = e.partition, e.offset, e.key, e.raw, e.ts_limit
                    ts, vs = e.run.timestamps_ms, e.run.values
                    multi = len(vs) > 1
                    if multi:
                        span = max(ts) - min(ts)
                        if span > self.message_span.get(p, 0):
                            self.message_span[p] = span
                    if multi and a.add_run(ts, vs, p, offset, patches, limit):
                        accepted += len(vs)
                        continue
                    items = ((t, v, offset, i, ObsRef(raw, key, i if multi else None), limit)
                             for i, (t, v) in enumerate(zip(ts, vs)))
                for t, v, o, i, ref, limit in items:
                    if limit is not None and t > limit:
                        rejects.append(Rejection(
                            "future_timestamp", f"timestamp {iso_ms(t)} is more than "
                            f"{future_tol} ms after the record's produce time "
                            f"{iso_ms(limit - future_tol)}", t, p, o, ref))
                        continue
                    r = a.add(t, v, p, o, i, ref, patches, rejects)
                    if r == ACCEPTED:
                        accepted += 1
                    elif r != REJECTED:
                        skipped += 1
            if len(patches) > n_before:
                touched[sid] = a
            if a.deferred is not None and a.deferred.runs:
                judging.append((sid, a))
            elif a.alert_events:
                self._alert_events(sid, a)
            if a.last_obs_ms is not None:
                p0 = entries[0].partition
                if a.last_obs_ms > event_time.get(p0, a.last_obs_ms - 1):
                    event_time[p0] = a.last_obs_ms
            if len(rejects) > r_before:
                self._dead_letter(sid, rejects[r_before:])
        c["accepted"] += accepted
        c["skipped"] += skipped
        judge_deferred([a for _, a in judging])     # every series' deviation judge in lockstep
        for sid, a in judging:
            if a.alert_events:
                self._alert_events(sid, a)
        self._check_silence(event_time)

    def _alert_events(self, sid: str, a: SeriesAssembler) -> None:
        """Move a series' alert events into the next job; its ``alerted`` key goes with it."""
        group = self.cfg.resolve_group(sid).name
        topic, key = self.cfg.topics.alerts, sid.encode("utf-8")
        self._outbox += [(topic, key, encode_event(ev, sid, group)) for _, ev in a.alert_events]
        a.alerted = a.alert_events[-1][0]
        self._alerted[sid] = a.alerted
        self.counters["alert_events"] += len(a.alert_events)
        a.alert_events = []

    def _check_silence(self, event_time: dict[int, int]) -> None:
        """Event time per partition (the latest observation time of any of its series; future
        timestamps are bounded by ``ingest.future_tolerance_ms``): series of the partition that
        have sent nothing for their ``dropout_slots`` open a dropout (judged on event time).
        Where the partition's messages carry many observations each (the batch form), the other
        series' next message is up to one message's span behind without anything missing: the
        event time they are judged by is the latest one less the longest span one message of the
        partition has carried (0 for single observations)."""
        for p, t in event_time.items():
            if t <= self.event_time.get(p, t - 1):
                continue
            self.event_time[p] = t
            t -= self.message_span.get(p, 0)
            for sid in self.partition_series.get(p, ()):
                a = self.assemblers.get(sid)
                if a is not None and a.alerts is not None and a.last_obs_ms is not None and a.last_obs_ms < t:
                    a.check_silence(t)
                    if a.alert_events:
                        self._alert_events(sid, a)

    def open_episodes(self) -> dict[tuple[str, str], int]:
        """``{(group, kind): episodes open}`` among the series in memory (for metrics)."""
        out: Counter = Counter()
        for sid, a in list(self.assemblers.items()):
            if a.alerts is not None and a.alerts.open:
                group = self.cfg.resolve_group(sid).name
                for kind in list(a.alerts.open):
                    out[(group, kind)] += 1
        return dict(out)

    def _apply_alert_settings(self) -> None:
        """After a config reload: each series in memory judges with its group's new alert
        settings from its next observation on (off -> on starts a fresh detector)."""
        for sid, a in self.assemblers.items():
            g = self.cfg.resolve_group(sid)
            a.set_alert_settings(g.alerts if g.alerts.enabled else None)

    def _dead_letter(self, sid: str, rejects: list[Rejection]) -> None:
        """One dead letter per (source record, reason): a batch message with many
        bad elements is quoted once per reason, not once per element."""
        c = self.counters
        groups: dict[tuple[int, int, str], list[Rejection]] = {}
        for rj in rejects:
            groups.setdefault((rj.partition, rj.offset, rj.reason), []).append(rj)
            c["rejected"] += 1
            c["rejected." + rj.reason] += 1
        for (p, offset, reason), rs in groups.items():
            first = rs[0]
            ref = first.ref
            indices = None
            detail = first.detail
            if len(rs) > 1:
                indices = [r.ref.index for r in rs if r.ref is not None and r.ref.index is not None]
                shown = ", ".join(map(str, indices[:20])) + (", ..." if len(indices) > 20 else "")
                detail = f"{len(rs)} elements rejected as {reason} (indices {shown}); first: {first.detail}"
            at = (p, offset, -1 if ref is None or ref.index is None else ref.index)
            self._dead.append((at, self.dlq.message(
                reason, detail, source_topic=self.topic, partition=p, offset=offset,
                key=None if ref is None or ref.key is None else bytes(ref.key),
                original=None if ref is None or ref.raw is None else bytes(ref.raw),
                series_id=sid, index=None if ref is None else ref.index, indices=indices)))
            c["dead_letters"] += 1

    def _load_series(self, seen: dict[str, int]) -> None:
        """Create assemblers for series not in memory (one Redis round trip)."""
        missing = [sid for sid in seen if sid not in self.assemblers and sid not in self.quarantined]
        if not missing:
            return
        # A series dropped on a revocation and handed back may have its cursor in the
        # job in flight: read cursors only once that job's writes are done.
        self._await_job()
        try:
            t_redis = time.perf_counter()
            loaded = self.store.load_many(missing)
            self.histograms.redis_seconds.labels("load").observe(time.perf_counter() - t_redis)
        except Exception as e:  # noqa: BLE001 - redis down: retry the batch later
            raise RetryBatch(f"loading ingest cursors failed: {e!r}") from e
        for sid in missing:
            p = seen[sid]
            cur = loaded.get(sid)
            if isinstance(cur, CursorDecodeError):
                self.quarantined[sid] = f"{cur} (delete key {self.store.key(sid)} to start the series afresh)"
                log.error("ingest.cursor_unreadable", series_id=sid[:200], error=str(cur)[:500])
            else:
                group = self.cfg.resolve_group(sid)
                freq, al = group.freq_ms, (group.alerts if group.alerts.enabled else None)
                try:
                    a = (SeriesAssembler(sid, self.settings, freq, al) if cur is None
                         else SeriesAssembler.from_cursor(cur, self.settings, freq, al))
                except CursorDecodeError as e:
                    self.quarantined[sid] = f"{e} (delete key {self.store.key(sid)} to start the series afresh)"
                    log.error("ingest.cursor_unreadable", series_id=sid[:200], error=str(e)[:500])
                    self.series_partition[sid] = p
                    self.partition_series.setdefault(p, set()).add(sid)
                    continue
                a.defer_judging()                       # judged per batch: _assemble
                self.assemblers[sid] = a
                if cur is None:
                    self.counters["series_new"] += 1
            self.series_partition[sid] = p
            self.partition_series.setdefault(p, set()).add(sid)
