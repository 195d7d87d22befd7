"""The ingest consumer: ``streamflame.observations`` -> ``streamflame.patches``.

``streamflame ingest [--config FILE]`` runs :class:`IngestConsumer` until
SIGTERM/SIGINT. Per poll batch it

1. decodes every record (:func:`streamflame.schemas.decode_observation_run`);
   a bad record goes to the DLQ whole, with its bytes and the reason;
2. loads, in one pipelined Redis round trip, the cursors of the series it sees
   for the first time since it got their partition (unknown series are
   registered by their first cursor write);
3. feeds each series' :class:`~streamflame.ingest.assembler.SeriesAssembler`
   (grid, ordering and gap policy: see that module); rejected observations go to
   the DLQ with the index inside their message;
4. hands the batch's *job* to the publisher (:mod:`streamflame.sink`): the
   completed patches (key = series_id), the dead letters, and the cursors of the
   series that completed a patch, taken when the job is handed over, and the alert
   episode events of the batch (``streamflame.alerts.episodes``: every accepted
   observation is judged as it is assembled; topic ``streamflame.alerts``). The
   publisher sends every record, flushes, checks every send, then writes the
   cursors in one pipelined compare-and-set round trip (a cursor never goes
   backwards, and never ahead of the patches it covers). With
   ``ingest.publisher: process`` (the default) that runs in a process of its own
   while this one polls and assembles the next batch; ``inline`` sends here and
   flushes and writes after the next poll;
5. *settles* the batch: waits for the job's outcome, after the next poll and its
   assembly (or before anything that must not run ahead of it: a spill, a cursor
   load, shutdown), and before the next batch's job is handed over;
6. commits, per partition, the smallest offset still needed to rebuild what is
   held in memory: min(first offset of any open patch / inference buffer, next
   offset to read) (at most every ``ingest.commit_interval_ms``), only as it was
   before the next batch was assembled, and only once the batch before is settled.

A crash anywhere therefore re-reads from the committed offset; observations
already inside an emitted patch (at or before the cursor's position) are
skipped, and the rest rebuild the same open patches, so no observation is lost
or applied twice, and a re-emitted patch is identical to the first (same seq,
same values). Dead letters are at-least-once.

Failures of Kafka or Redis while handling a batch do not end the process: the
in-memory state is dropped, every partition is sought back to its last
committed offset and the batch is retried after a backoff.

Memory: per series the open patch (48 slots) and the inference buffer; per
batch at most ``ingest.max_buffered_patches`` completed patches before they
are flushed. On rebalance the revoked partitions' series are dropped (the new
owner rebuilds them from the committed offset).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import structlog
from kafka import ConsumerRebalanceListener

from streamflame.config import ServiceConfig, load_config
from streamflame.ingest.assembler import (
    ACCEPTED,
    REJECTED,
    AssemblerSettings,
    CursorDecodeError,
    ObsRef,
    Rejection,
    SeriesAssembler,
)
from streamflame.alerts.messages import encode_event
from streamflame.ingest.cursors import CursorStore, cursor_args
from streamflame.kafka_io import (
    DeadLetterWriter,
    DelayedOffsets,
    create_topics,
    make_consumer,
)
from streamflame.schemas import (
    MAX_ABS_VALUE,
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    PATCH_LEN,
    RejectedMessage,
    decode_observation_run,
    iso_ms,
)
from streamflame.logs import configure_logging

log = structlog.get_logger("streamflame.ingest")

READY_FILE_ENV = "STREAMFLAME_READY_FILE"
POLL_TIMEOUT_MS = 200
CHUNK_OBSERVATIONS = 50_000
"""Observations decoded and assembled at a time within one poll batch (bounds memory)."""
MAX_BACKOFF_S = 5.0
_UNKNOWN = object()  # equal to no record key


class _RetryBatch(Exception):
    """Kafka or Redis failed while a batch was handled: rewind and retry."""


class _Listener(ConsumerRebalanceListener):
    """Rebalance callbacks only record events; the poll loop applies them
    (callbacks run on kafka-python's IO thread)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events: list[tuple[str, list]] = []

    def on_partitions_revoked(self, revoked):
        with self.lock:
            self.events.append(("revoked", list(revoked)))

    def on_partitions_assigned(self, assigned):
        with self.lock:
            self.events.append(("assigned", list(assigned)))

    def on_partitions_lost(self, lost):
        with self.lock:
            self.events.append(("revoked", list(lost)))

    def drain(self) -> list[tuple[str, list]]:
        with self.lock:
            ev, self.events = self.events, []
        return ev


def _encode_patch(p) -> bytes:
    # Field order and meaning as schemas.PatchMessage (values: floats or null).
    return orjson.dumps(p._asdict())


class IngestConsumer:
    """One ingest consumer-group member. ``run()`` blocks until :meth:`stop`.

    ``redis_client`` defaults to one built from ``cfg.redis``. ``counters`` holds
    running totals (records, observations, accepted, rejected, rejected.<reason>,
    skipped, patches, dlq, cursor_writes, cursor_refused, commits, retries,
    batches) for metrics and tests.

    ``fast_path`` (default True) lets common single-observation records skip the general
    decoder (see :meth:`_process`); False sends every record through it (the reference
    the fast path is tested against).
    """

    fast_path = True

    def __init__(self, cfg: ServiceConfig, *, redis_client=None, ready_file: str | os.PathLike | None = None,
                 create_missing_topics: bool = True, consumer_overrides: dict[str, Any] | None = None,
                 config_path: str | os.PathLike | None = None):
        self.cfg = cfg
        # Hot reload (SIGHUP or file change): series groups decide the grid step of series
        # first seen after the reload; a series' step is fixed by its first observations.
        from streamflame.config import HotReloader

        self.reloader = HotReloader(config_path, cfg, log, component="ingest") if config_path else None
        ing = cfg.ingest
        self.settings = AssemblerSettings(
            patch_len=PATCH_LEN,
            freq_inference_points=ing.freq_inference_points,
            max_gap_steps=ing.max_gap_steps,
            grid_tolerance=ing.grid_tolerance,
        )
        if redis_client is None:
            from streamflame.state.client import connect

            redis_client = connect(cfg.redis)  # redis.cluster.RedisCluster when cfg.redis.cluster
        self.redis = redis_client
        self.store = CursorStore(redis_client, cfg.redis.key_prefix)
        if create_missing_topics:
            create_topics(cfg)
        self.topic = cfg.topics.observations
        self._consumer_overrides = dict(consumer_overrides or {})
        self.dlq = DeadLetterWriter.for_config(cfg, "ingest")  # builds the records; the sink sends them
        self.sink = self._start_sink()
        self.listener = _Listener()
        self.consumer = make_consumer(cfg, ing.group_id, max_poll_records=ing.max_poll_records,
                                      **self._consumer_overrides)
        self.consumer.subscribe([self.topic], listener=self.listener)
        self.ready_file = Path(ready_file) if ready_file else (
            Path(os.environ[READY_FILE_ENV]) if os.environ.get(READY_FILE_ENV) else None)

        self.assemblers: dict[str, SeriesAssembler] = {}
        self.series_partition: dict[str, int] = {}
        self.partition_series: dict[int, set[str]] = {}
        self.quarantined: dict[str, str] = {}  # series_id -> why its cursor is unusable
        self.next_offset: dict[int, int] = {}  # partition -> next offset to read
        self.rewind_to: dict[int, int] = {}  # partition -> last committed (or first read) offset
        self.committed: dict[int, int] = {}
        self.counters: Counter = Counter()
        from streamflame.ingest.metrics import IngestHistograms

        self.histograms = IngestHistograms()
        self.assigned: set[int] = set()
        self._stop = threading.Event()
        self._ready = False
        self._last_commit = 0.0
        self._pending_commits = DelayedOffsets()  # {partition: offset} noted per commit interval
        self._backoff = 0.0
        self._outbox: list[tuple[str, bytes | None, bytes]] = []  # (topic, key, value) of the next job
        # Dead letters of the next job with their (partition, offset, index): decoding and the
        # series' assemblers reject at different times; the job sends them in offset order.
        self._dead: list[tuple[tuple[int, int, int], tuple[str, bytes | None, bytes]]] = []
        self._alerted: dict[str, int] = {}  # series -> key of its last alert event in the outbox
        self.event_time: dict[int, int] = {}  # partition -> latest observation time seen (dropouts by silence)
        self._unsettled: dict[str, SeriesAssembler] = {}  # series with a patch in the outbox
        self._in_flight = False  # the sink holds a job whose outcome has not been seen
        self._reseek: dict[int, int] = {}  # revoked partition -> offset to re-read from if handed back
        self._closed = False
        # Series ids that passed full validation -> their record key (bytes): the fast path
        # of _process takes a record only when its key equals this (bounded; cleared when large).
        self._known_keys: dict[str, bytes] = {}

    # ------------------------------------------------------------------ loop

    def stop(self) -> None:
        """Ask ``run()`` to finish its batch, commit and return (thread/signal safe)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the config file before the next poll (SIGHUP; signal safe)."""
        if self.reloader is not None:
            self.reloader.request()
        else:
            log.warning("config.reload_unavailable", detail="ingest runs without a config file")

    def run(self, max_batches: int | None = None) -> None:
        """Poll and process until :meth:`stop` (or ``max_batches`` non-empty batches)."""
        log.info("ingest.start", topic=self.topic, group=self.cfg.ingest.group_id,
                 patches=self.cfg.topics.patches, dlq=self.cfg.topics.dlq)
        done = 0
        try:
            while not self._stop.is_set():
                if max_batches is not None and done >= max_batches:
                    break
                if self.reloader is not None:
                    new = self.reloader.check()
                    if new is not None:
                        if new.log_level != self.cfg.log_level:
                            configure_logging(new.log_level)
                        self.cfg = new
                        self._apply_alert_settings()
                if self.poll_once():
                    done += 1
            try:
                self.settle()
            except _RetryBatch as e:  # not delivered: nothing more is committed; the next owner re-reads
                log.warning("ingest.final_settle_failed", error=str(e)[:500])
            else:
                self._commit(final=True)  # everything is settled: what is in memory now
        finally:
            self.close()

    def poll_once(self) -> bool:
        """One poll; assemble it; settle the batch before; (maybe) commit; hand this
        batch to the publisher. Returns True if records were handled."""
        try:
            records = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        except Exception as e:  # noqa: BLE001 - the broker may be restarting; keep polling
            self.counters["poll_errors"] += 1
            log.warning("ingest.poll_failed", error=repr(e))
            time.sleep(min(1.0, POLL_TIMEOUT_MS / 1000))
            return False
        before = self.counters.copy()  # the batch's log line also counts the settle of the one before
        t0 = time.perf_counter()
        self._note_read(records)  # before anything fails: these partitions are sought back too
        reread = self._apply_rebalance_events()
        if reread:  # fetched from the old position of a kept partition: read again from the rewind offset
            records = {tp: recs for tp, recs in records.items() if tp.partition not in reread}
        safe = self.commit_offsets()  # covers the batches handed over so far, none of this poll's
        try:
            if records:
                self._process(records)
            self._await_job()  # the batch before: its records were sent during this poll and assembly
        except _RetryBatch as e:
            self._recover(e)
            return True
        self._commit(safe)
        if not records:
            return False
        try:
            self._submit()
            self._enforce_bounds()
            self._backoff = 0.0
        except _RetryBatch as e:
            self._recover(e)
            return True
        self._log_batch(records, before, time.perf_counter() - t0)
        return True

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
        from kafka.structs import TopicPartition

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
            self.rewind_to.pop(p, None)
            self._pending_commits.forget([p])
            self.committed.pop(p, None)

    # ------------------------------------------------------------- a batch

    def _process(self, records: dict) -> None:
        """Decode and assemble one poll's records into the next job (nothing is sent:
        :meth:`settle` or the poll loop hands it over).

        Records are grouped by series (each series keeps its Kafka order; series are
        independent, so their relative order does not matter). A single-observation
        record of a series already validated, in the exact common shape (three fields,
        int epoch-ms timestamp in range, finite float value, key = series_id, small
        enough, not past the future limit), is appended to the series' run without
        building per-record objects; consecutive such records are then assembled in one
        :meth:`SeriesAssembler.add_run` call. Every other record takes the general path
        (:meth:`_decode`), which applies the same rules and names the reason of a
        rejection; both paths accept exactly the same records (tests/test_ingest_consumer.py)."""
        c = self.counters
        ing = self.cfg.ingest
        max_bytes, tol = ing.max_message_bytes, ing.future_tolerance_ms
        known, fast = self._known_keys, self.fast_path
        if len(known) > 2 * ing.max_series_in_memory:
            known.clear()
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        lo_ms, hi_ms, lo_v, hi_v = MIN_EPOCH_MS, MAX_EPOCH_MS, -MAX_ABS_VALUE, MAX_ABS_VALUE
        chunk: dict[str, list] = {}  # series_id -> entries in Kafka order (see _assemble)
        n_obs = 0
        patches: list = []
        touched: dict[str, SeriesAssembler] = {}
        self._note_read(records)  # (poll_once did; for a direct call) a chunk may fail before later partitions
        for tp, recs in records.items():
            if not recs:
                continue
            p = tp.partition
            runs: dict[str, tuple] = {}  # series -> its open run of fast records on this partition
            for rec in recs:
                raw = rec.value
                try:
                    doc = loads(raw)
                    sid, t, v = doc["series_id"], doc["timestamp"], doc["value"]
                except (decode_error, TypeError, KeyError, IndexError):
                    sid = None
                if (fast and type(sid) is str and type(t) is int and type(v) is float and lo_v <= v <= hi_v
                        and lo_ms <= t <= hi_ms and type(doc) is dict and len(doc) == 3
                        and rec.key == known.get(sid, _UNKNOWN) and len(raw) <= max_bytes
                        and (tol is None or rec.timestamp is None or rec.timestamp < 0 or t <= rec.timestamp + tol)):
                    run = runs.get(sid)
                    if run is None:
                        run = runs[sid] = (p, [], [], [], [])  # partition, offsets, records, ts, values
                        entries = chunk.get(sid)
                        if entries is None:
                            chunk[sid] = [run]
                        else:
                            entries.append(run)
                    run[1].append(rec.offset)
                    run[2].append(rec)
                    run[3].append(t)
                    run[4].append(v)
                    n_obs += 1
                else:
                    entry = self._decode(rec, p)
                    if entry is not None:
                        sid = entry[4].series_id
                        runs.pop(sid, None)  # a later fast record starts a new run after this entry
                        chunk.setdefault(sid, []).append(entry)
                        n_obs += len(entry[4].values)
                if n_obs >= CHUNK_OBSERVATIONS:
                    self._assemble(chunk, patches, touched)
                    chunk, runs, n_obs = {}, {}, 0
                    if len(patches) >= ing.max_buffered_patches:
                        self._publish(patches, touched)
                        self.settle()  # bounds the memory a poll of many patches takes
                        patches, touched = [], {}
            self.next_offset[p] = recs[-1].offset + 1
            c["records"] += len(recs)
        self._assemble(chunk, patches, touched)
        self._publish(patches, touched)
        c["batches"] += 1

    def _log_batch(self, records: dict, before: Counter, elapsed: float) -> None:
        """The one ``ingest.batch`` line of a poll cycle (its cursor writes are the
        batch before's, settled in this cycle)."""
        c = self.counters
        offsets = {str(tp.partition): [recs[0].offset, recs[-1].offset]
                   for tp, recs in sorted(records.items(), key=lambda kv: kv[0].partition) if recs}
        d = {k: c[k] - before.get(k, 0) for k in c if c[k] != before.get(k, 0)}
        rejected = {k.split(".", 1)[1]: v for k, v in d.items() if k.startswith("rejected.")}
        self.histograms.batch_records.observe(d.get("records", 0))
        self.histograms.batch_seconds.observe(elapsed)
        log.info(
            "ingest.batch", offsets=offsets, records=d.get("records", 0), observations=d.get("observations", 0),
            accepted=d.get("accepted", 0), skipped=d.get("skipped", 0), rejected=rejected,
            patches=d.get("patches", 0), cursor_writes=d.get("cursor_writes", 0),
            cursor_refused=d.get("cursor_refused", 0), series=len(self.assemblers),
            ms=round(elapsed * 1000, 1),
        )

    def _decode(self, rec, p: int):
        """-> (partition, offset, key, raw, ObservationRun, ts_limit) or None (dead-lettered/empty)."""
        ing = self.cfg.ingest
        raw = rec.value
        try:
            obs = decode_observation_run(raw, max_series_id_len=ing.max_series_id_len,
                                         max_message_bytes=ing.max_message_bytes, max_batch=ing.max_batch)
        except RejectedMessage as e:
            self._reject_message(e.reason, e.detail, p, rec.offset, rec.key, raw, None)
            return None
        if not obs.values:
            return None
        sid = obs.series_id
        if rec.key is None or rec.key != sid.encode("utf-8"):
            what = "no key" if rec.key is None else f"key {bytes(rec.key[:80])!r}"
            self._reject_message(
                "key_mismatch", f"record has {what}; the key must be the series_id {sid[:80]!r} so that "
                "a series stays in one partition", p, rec.offset, rec.key, raw, sid)
            return None
        self.counters["observations"] += len(obs.values)
        self._known_keys[sid] = rec.key  # a valid id with its key: its next records may take the fast path
        limit = None
        if ing.future_tolerance_ms is not None and rec.timestamp is not None and rec.timestamp >= 0:
            limit = rec.timestamp + ing.future_tolerance_ms
        return (p, rec.offset, rec.key, raw, obs, limit)

    def _reject_message(self, reason: str, detail: str, p: int, offset: int, key, raw, sid) -> None:
        self.counters["rejected"] += 1
        self.counters["rejected." + reason] += 1
        self._dead.append(((p, offset, -1), self.dlq.message(
            reason, detail, source_topic=self.topic, partition=p, offset=offset,
            key=None if key is None else bytes(key), original=None if raw is None else bytes(raw),
            series_id=sid)))
        self.counters["dead_letters"] += 1

    def _assemble(self, chunk: dict[str, list], patches: list, touched: dict) -> None:
        """Feed each series' entries, in their Kafka order, to its assembler. An entry is
        either a decoded record ``(partition, offset, key, raw, ObservationRun, ts_limit)``
        or a run of fast single-observation records ``(partition, [offsets], [records],
        [timestamps], [values])``."""
        if not chunk:
            return
        self._load_series({sid: entries[0][0] for sid, entries in chunk.items()})
        rejects: list[Rejection] = []
        c = self.counters
        accepted = skipped = 0
        event_time: dict[int, int] = {}  # partition -> latest observation time assembled now
        future_tol = self.cfg.ingest.future_tolerance_ms
        for sid, entries in chunk.items():
            a = self.assemblers.pop(sid, None)
            if a is None:  # quarantined: its cursor in Redis is unreadable
                why = self.quarantined.get(sid, "unreadable ingest cursor")
                for e in entries:
                    if len(e) == 5:
                        c["observations"] += len(e[2])
                        c["fast_records"] += len(e[2])
                        for rec in e[2]:
                            self._reject_message("corrupt_state", why, e[0], rec.offset, rec.key, rec.value, sid)
                    else:
                        self._reject_message("corrupt_state", why, e[0], e[1], e[2], e[3], sid)
                continue
            self.assemblers[sid] = a  # most recently seen last (eviction order)
            n_before, r_before = len(patches), len(rejects)
            for e in entries:
                if len(e) == 5:  # consecutive single-observation records (checked against the future limit)
                    p, offs, recs, ts, vs = e
                    c["observations"] += len(vs)
                    c["fast_records"] += len(vs)
                    if a.add_run(ts, vs, p, offs, patches):
                        accepted += len(vs)
                        continue
                    # one by one: (timestamp, value, offset, index, ref, future limit)
                    items = ((t, v, o, 0, ObsRef(rec.value, rec.key, None), None)
                             for t, v, o, rec in zip(ts, vs, offs, recs))
                else:
                    p, offset, key, raw, (_, ts, vs), limit = e
                    multi = len(vs) > 1
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
            if a.alert_events:
                self._alert_events(sid, a)
            if a.last_obs_ms is not None:
                p0 = entries[0][0]
                if a.last_obs_ms > event_time.get(p0, a.last_obs_ms - 1):
                    event_time[p0] = a.last_obs_ms
            if len(rejects) > r_before:
                self._dead_letter(sid, rejects[r_before:])
        c["accepted"] += accepted
        c["skipped"] += skipped
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
        have sent nothing for their ``dropout_slots`` open a dropout (judged on event time)."""
        for p, t in event_time.items():
            if t <= self.event_time.get(p, t - 1):
                continue
            self.event_time[p] = t
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
            raise _RetryBatch(f"loading ingest cursors failed: {e!r}") from e
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
                self.assemblers[sid] = a
                if cur is None:
                    self.counters["series_new"] += 1
            self.series_partition[sid] = p
            self.partition_series.setdefault(p, set()).add(sid)

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
        from streamflame.sink import Job

        self._outbox += [m for _, m in sorted(self._dead, key=lambda d: d[0])]
        job = Job(self._outbox, cursors=cursor_args(a.cursor() for a in self._unsettled.values()),
                  alerted=list(self._alerted.items()))
        self._outbox, self._unsettled, self._alerted, self._dead = [], {}, {}, []
        try:
            if self.sink is None:
                self.sink = self._start_sink()
            self.sink.submit(job)
        except Exception as e:  # noqa: BLE001 - OSError: the publisher gone, or not started (Redis/broker away)
            raise _RetryBatch(f"handing the batch to the publisher failed: {e!r}") from e
        self._in_flight = True

    def _await_job(self) -> None:
        """The outcome of the job in flight, if any: every record delivered, the
        cursors written (or refused as stale). Raises _RetryBatch when not."""
        if not self._in_flight:
            return
        self._in_flight = False
        try:
            out = self.sink.result()
        except Exception as e:  # noqa: BLE001 - KafkaError, RedisError, OSError (publisher gone)
            raise _RetryBatch(f"publishing the batch or writing its cursors failed: {e!r}") from e
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
        Raises _RetryBatch when a send or a cursor write failed."""
        self._submit()
        self._await_job()

    def _start_sink(self):
        """The publisher of each batch's job (``ingest.publisher``), see streamflame.sink."""
        from streamflame.sink import start

        return start(self.cfg, "ingest", cursors=self.store, log=log)

    def _close_sink(self, timeout_s: float) -> None:
        sink, self.sink, self._in_flight = self.sink, None, False
        if sink is None:
            return
        try:
            sink.close(timeout_s=timeout_s)
        except Exception as e:  # noqa: BLE001 - closing must not mask the reason we stop
            log.warning("ingest.close_failed", client="publisher", error=repr(e))

    def highwaters(self) -> dict[int, int]:
        """High-water mark per assigned partition, as last seen with fetched data."""
        from kafka.structs import TopicPartition

        out = {}
        for p in list(self.assigned):
            hw = self.consumer.highwater(TopicPartition(self.topic, p))
            if hw is not None:
                out[p] = hw
        return out

    # ------------------------------------------------------------- commits

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
        from kafka.structs import OffsetAndMetadata, TopicPartition

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

    # ------------------------------------------------------------- memory bounds

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
                raise _RetryBatch(f"spilling open patches failed: {e!r}") from e
            self.counters["spilled"] += res.written
            self.counters["cursor_refused"] += len(res.refused)
        for sid in sids:
            self.assemblers.pop(sid, None)
            p = self.series_partition.pop(sid, None)
            if p is not None:
                self.partition_series.get(p, set()).discard(sid)
        self.counters["evicted"] += len(sids)
        log.info("ingest.evicted", series=len(sids), spilled=len(spill), in_memory=len(self.assemblers))

    # ------------------------------------------------------------- failures

    def _recover(self, err: Exception) -> None:
        """Drop in-memory state, seek back to the committed offsets, back off."""
        self.counters["retries"] += 1
        self._backoff = min(MAX_BACKOFF_S, max(0.2, self._backoff * 2))
        log.warning("ingest.batch_failed", error=str(err)[:500], retry_in_s=self._backoff)
        from kafka.structs import TopicPartition

        rewind = dict(self.rewind_to)
        self._drop_partitions(set(self.partition_series) | set(self.next_offset) | set(self.rewind_to))
        self._outbox, self._unsettled, self._alerted, self._dead = [], {}, {}, []
        # A producer that timed out may be unusable (idempotence epoch), and a job in
        # flight may wait on a broker that is away: drop the publisher (its job may still
        # land, which is as safe as a crash after the sends). The next batch starts a fresh
        # one (_submit): not here, where a broker that is away would hold the loop (and a
        # stop) for kafka-python's ~30 s bootstrap timeout.
        self._close_sink(timeout_s=0.5)
        for p, off in rewind.items():
            if p in self.assigned:
                try:
                    self.consumer.seek(TopicPartition(self.topic, p), off)
                except Exception as e:  # noqa: BLE001 - partition revoked meanwhile
                    log.warning("ingest.seek_failed", partition=p, error=repr(e))
        self.rewind_to.update({p: o for p, o in rewind.items() if p in self.assigned})
        self.committed.update({p: o for p, o in rewind.items() if p in self.assigned})
        self._stop.wait(self._backoff)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.consumer.close(autocommit=False)
        finally:
            self._close_sink(timeout_s=10)
        log.info("ingest.stop", **{k: v for k, v in self.counters.items() if "." not in k})

    def abandon(self) -> None:
        """Close the sockets without flushing, persisting or committing (for crash tests):
        the publisher is stopped at once, its job in hand cut short."""
        self._closed = True
        self._close_sink(timeout_s=0)
        self.consumer.close(autocommit=False, timeout_ms=0)


# ---------------------------------------------------------------------- CLI




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="streamflame ingest",
        description="Run an ingest consumer: observations -> 48-slot patches (+ DLQ), cursors in Redis.",
    )
    parser.add_argument("--config", help="YAML config (default: $STREAMFLAME_CONFIG or built-in defaults)")
    parser.add_argument("--ready-file", help=f"touch this file once the consumer joined its group (or ${READY_FILE_ENV})")
    args = parser.parse_args(argv)
    from streamflame.config import ConfigError

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        for p in e.problems:
            print(f"error: {e.source or 'environment'}: {p}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level)
    ingest = IngestConsumer(cfg, ready_file=args.ready_file,
                            config_path=args.config or os.environ.get("STREAMFLAME_CONFIG") or None)
    if cfg.metrics.port is not None:
        from streamflame.ingest.metrics import serve

        port = serve(ingest, cfg.metrics.port, cfg.metrics.host)
        log.info("ingest.metrics", url=f"http://{cfg.metrics.host}:{port}/metrics")

    def _on_signal(signum, frame):  # noqa: ARG001
        log.info("ingest.signal", signal=signal.Signals(signum).name)
        ingest.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, lambda _s, _f: ingest.request_reload())
    ingest.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
