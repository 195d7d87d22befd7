"""The ingest consumer: ``streamflame.observations`` -> ``streamflame.patches``.

``streamflame ingest [--config FILE]`` runs :class:`IngestConsumer` until
SIGTERM/SIGINT. Per poll batch it

1. decodes every record (:func:`streamflame.messages.decode_observation_run`);
   a bad record goes to the DLQ whole, with its bytes and the reason;
2. loads, in one pipelined Redis round trip, the cursors of the series it sees
   for the first time since it got their partition (unknown series are
   registered by their first cursor write);
3. feeds each series' :class:`~streamflame.pipeline.ingest.assembler.SeriesAssembler`
   (grid, ordering and gap policy: see that module); rejected observations go to
   the DLQ with the index inside their message;
4. hands the batch's *job* to the publisher (:mod:`streamflame.pipeline.publisher`): the
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

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import structlog

from streamflame.adapters.kafka_io import (DeadLetterWriter, DelayedOffsets, RebalanceQueue, TopicPartition, create_topics,
                                           make_consumer)
from streamflame.adapters.state.client import connect
from streamflame.config import HotReloader, ServiceConfig
from streamflame.core.constants import PATCH_LEN
from streamflame.core.logs import configure_logging
from streamflame.core.timefmt import MAX_EPOCH_MS, MIN_EPOCH_MS
from streamflame.messages import MAX_ABS_VALUE, RejectedMessage, decode_observation_run
from streamflame.pipeline.ingest.assembler import AssemblerSettings, SeriesAssembler
from streamflame.pipeline.ingest.assembling import IngestAssembling
from streamflame.pipeline.ingest.cursors import CursorStore
from streamflame.pipeline.ingest.entries import DecodedRecord, Entry, FastRun
from streamflame.pipeline.ingest.metrics import IngestGauges, IngestHistograms
from streamflame.pipeline.ingest.outbox import IngestPublishing, RetryBatch
from streamflame.pipeline.ingest.partitions import IngestPartitions
from streamflame.pipeline.shell import ServiceControls

log = structlog.get_logger("streamflame.ingest")

READY_FILE_ENV = "STREAMFLAME_READY_FILE"
POLL_TIMEOUT_MS = 200
CHUNK_OBSERVATIONS = 50_000
"""Observations decoded and assembled at a time within one poll batch (bounds memory)."""
MAX_BACKOFF_S = 5.0
_UNKNOWN = object()  # equal to no record key


@dataclass(slots=True)
class _Batch:
    """What :meth:`IngestConsumer._process` gathers from one poll: the chunk being read
    (series -> entries in Kafka order, see :mod:`~streamflame.pipeline.ingest.entries`), its
    observation count, and the completed patches and their series since the last publish."""

    chunk: dict[str, list[Entry]] = field(default_factory=dict)
    n_obs: int = 0
    patches: list = field(default_factory=list)
    touched: dict[str, SeriesAssembler] = field(default_factory=dict)


class _FastRules(NamedTuple):
    """The fast path's limits for one poll (``ingest`` settings and the validated series' keys)."""

    max_bytes: int
    future_tolerance_ms: int | None
    known_keys: dict[str, bytes]


class IngestConsumer(ServiceControls, IngestPartitions, IngestAssembling, IngestPublishing):
    """One ingest consumer-group member. ``run()`` blocks until :meth:`stop`.

    ``redis_client`` defaults to one built from ``cfg.redis``. ``counters`` holds
    running totals (records, observations, accepted, rejected, rejected.<reason>,
    skipped, patches, dlq, cursor_writes, cursor_refused, commits, retries,
    batches) for metrics and tests.

    ``fast_path`` (default True) lets common single-observation records skip the general
    decoder (see :meth:`_read_partition`); False sends every record through it (the reference
    the fast path is tested against).
    """

    fast_path = True
    component = "ingest"

    def __init__(self, cfg: ServiceConfig, *, redis_client=None, ready_file: str | os.PathLike | None = None,
                 create_missing_topics: bool = True, consumer_overrides: dict[str, Any] | None = None,
                 config_path: str | os.PathLike | None = None):
        self.cfg = cfg
        # Hot reload (SIGHUP or file change): series groups decide the grid step of series
        # first seen after the reload; a series' step is fixed by its first observations.

        self.reloader = HotReloader(config_path, cfg, log, component="ingest") if config_path else None
        ing = cfg.ingest
        self.settings = AssemblerSettings(
            patch_len=PATCH_LEN,
            freq_inference_points=ing.freq_inference_points,
            max_gap_steps=ing.max_gap_steps,
            grid_tolerance=ing.grid_tolerance,
        )
        if redis_client is None:

            redis_client = connect(cfg.redis)  # redis.cluster.RedisCluster when cfg.redis.cluster
        self.redis = redis_client
        self.store = CursorStore(redis_client, cfg.redis.key_prefix)
        if create_missing_topics:
            create_topics(cfg)
        self.topic = cfg.topics.observations
        self._consumer_overrides = dict(consumer_overrides or {})
        self.dlq = DeadLetterWriter.for_config(cfg, "ingest")  # builds the records; the publisher sends them
        self.publisher = self._start_publisher()
        self.listener = RebalanceQueue()
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
        self.message_span: dict[int, int] = {}  # partition -> longest time span (ms) one message carried
        self._unsettled: dict[str, SeriesAssembler] = {}  # series with a patch in the outbox
        self._in_flight = False  # the publisher holds a job whose outcome has not been seen
        self._reseek: dict[int, int] = {}  # revoked partition -> offset to re-read from if handed back
        self._closed = False
        # Series ids that passed full validation -> their record key (bytes): the fast path
        # of _read_partition takes a record only when its key equals this (bounded; cleared when large).
        self._known_keys: dict[str, bytes] = {}

    # ------------------------------------------------------------------ loop

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
            except RetryBatch as e:  # not delivered: nothing more is committed; the next owner re-reads
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
        except RetryBatch as e:
            self._recover(e)
            return True
        self._commit(safe)
        if not records:
            return False
        try:
            self._submit()
            self._enforce_bounds()
            self._backoff = 0.0
        except RetryBatch as e:
            self._recover(e)
            return True
        self._log_batch(records, before, time.perf_counter() - t0)
        return True

    # ------------------------------------------------------------- a batch

    def _process(self, records: dict) -> None:
        """Decode and assemble one poll's records into the next job (nothing is sent:
        :meth:`settle` or the poll loop hands it over).

        Records are grouped by series (each series keeps its Kafka order; series are
        independent, so their relative order does not matter): :meth:`_read_partition`
        sorts each partition's records into the chunk, :meth:`_flush_chunk` assembles a
        chunk every :data:`CHUNK_OBSERVATIONS` observations, the rest is assembled and
        published at the end."""
        batch = _Batch()
        rules = self._fast_rules()
        self._note_read(records)  # (poll_once did; for a direct call) a chunk may fail before later partitions
        for tp, recs in records.items():
            if recs:
                self._read_partition(tp.partition, recs, batch, rules)
        self._assemble(batch.chunk, batch.patches, batch.touched)
        self._publish(batch.patches, batch.touched)
        self.counters["batches"] += 1

    def _fast_rules(self) -> _FastRules | None:
        """The fast path's limits for this poll (None: ``fast_path`` is off); bounds the known keys."""
        ing = self.cfg.ingest
        if len(self._known_keys) > 2 * ing.max_series_in_memory:
            self._known_keys.clear()
        if not self.fast_path:
            return None
        return _FastRules(ing.max_message_bytes, ing.future_tolerance_ms, self._known_keys)

    def _read_partition(self, p: int, recs: list, batch: _Batch, rules: _FastRules | None) -> None:
        """Sort one partition's records into ``batch.chunk``.

        A single-observation record of a series already validated, in the exact common shape
        (three fields, int epoch-ms timestamp in range, finite float value, key = series_id,
        small enough, not past the future limit), is appended to the series' run without
        building per-record objects; consecutive such records are then assembled in one
        :meth:`SeriesAssembler.add_run` call. Every other record takes the general path
        (:meth:`_decode`), which applies the same rules and names the reason of a rejection;
        both paths accept exactly the same records (tests/test_ingest_consumer.py). The loop
        is the ingest hot path: its checks stay inline (no call per record on the fast path)."""
        fast = rules is not None
        max_bytes, tol, known = rules if fast else (0, None, {})
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        lo_ms, hi_ms, lo_v, hi_v = MIN_EPOCH_MS, MAX_EPOCH_MS, -MAX_ABS_VALUE, MAX_ABS_VALUE
        chunk, n_obs = batch.chunk, batch.n_obs
        runs: dict[str, FastRun] = {}  # series -> its open run of fast records on this partition
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
                    run = runs[sid] = FastRun(p)
                    entries = chunk.get(sid)
                    if entries is None:
                        chunk[sid] = [run]
                    else:
                        entries.append(run)
                run.offsets.append(rec.offset)
                run.records.append(rec)
                run.timestamps.append(t)
                run.values.append(v)
                n_obs += 1
            else:
                n_obs += self._add_decoded(rec, p, chunk, runs)
            if n_obs >= CHUNK_OBSERVATIONS:
                batch.n_obs = n_obs
                self._flush_chunk(batch)
                chunk, n_obs, runs = batch.chunk, 0, {}
        batch.n_obs = n_obs
        self.next_offset[p] = recs[-1].offset + 1
        self.counters["records"] += len(recs)

    def _add_decoded(self, rec, p: int, chunk: dict[str, list[Entry]], runs: dict[str, FastRun]) -> int:
        """The general path for one record: decode it (:meth:`_decode`), add the entry to its
        series; the number of observations added (0: dead-lettered or empty)."""
        entry = self._decode(rec, p)
        if entry is None:
            return 0
        sid = entry.run.series_id
        runs.pop(sid, None)  # a later fast record starts a new run after this entry
        chunk.setdefault(sid, []).append(entry)
        return len(entry.run.values)

    def _flush_chunk(self, batch: _Batch) -> None:
        """Assemble the chunk read so far; publish and settle once the batch holds
        ``ingest.max_buffered_patches`` patches (bounds the memory a poll of many patches takes)."""
        self._assemble(batch.chunk, batch.patches, batch.touched)
        batch.chunk, batch.n_obs = {}, 0
        if len(batch.patches) >= self.cfg.ingest.max_buffered_patches:
            self._publish(batch.patches, batch.touched)
            self.settle()
            batch.patches, batch.touched = [], {}

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

    def _decode(self, rec, p: int) -> DecodedRecord | None:
        """The record through the full decoder; None when it was dead-lettered or is empty."""
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
        return DecodedRecord(p, rec.offset, rec.key, raw, obs, limit)

    def _reject_message(self, reason: str, detail: str, p: int, offset: int, key, raw, sid) -> None:
        self.counters["rejected"] += 1
        self.counters["rejected." + reason] += 1
        self._dead.append(((p, offset, -1), self.dlq.message(
            reason, detail, source_topic=self.topic, partition=p, offset=offset,
            key=None if key is None else bytes(key), original=None if raw is None else bytes(raw),
            series_id=sid)))
        self.counters["dead_letters"] += 1

    def gauges(self) -> IngestGauges:
        """One metrics scrape's readings (see :mod:`streamflame.pipeline.ingest.metrics`)."""
        hw = self.highwaters()
        return IngestGauges(
            counters=dict(self.counters), series=len(self.assemblers),
            buffered=sum(a.buffered for a in list(self.assemblers.values())), assigned=len(self.assigned),
            lag={p: max(0, h - self.next_offset[p]) for p, h in hw.items() if p in self.next_offset},
            commit_lag={p: max(0, h - self.committed[p]) for p, h in hw.items() if p in self.committed},
            open_episodes=self.open_episodes())

    # ------------------------------------------------------------- commits

    # ------------------------------------------------------------- memory bounds

    # ------------------------------------------------------------- failures

    def _recover(self, err: Exception) -> None:
        """Drop in-memory state, seek back to the committed offsets, back off."""
        self.counters["retries"] += 1
        self._backoff = min(MAX_BACKOFF_S, max(0.2, self._backoff * 2))
        log.warning("ingest.batch_failed", error=str(err)[:500], retry_in_s=self._backoff)
        rewind = dict(self.rewind_to)
        self._drop_partitions(set(self.partition_series) | set(self.next_offset) | set(self.rewind_to))
        self._outbox, self._unsettled, self._alerted, self._dead = [], {}, {}, []
        # A producer that timed out may be unusable (idempotence epoch), and a job in
        # flight may wait on a broker that is away: drop the publisher (its job may still
        # land, which is as safe as a crash after the sends). The next batch starts a fresh
        # one (_submit): not here, where a broker that is away would hold the loop (and a
        # stop) for kafka-python's ~30 s bootstrap timeout.
        self._close_publisher(timeout_s=0.5)
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
            self._close_publisher(timeout_s=10)
        log.info("ingest.stop", **{k: v for k, v in self.counters.items() if "." not in k})

    def abandon(self) -> None:
        """Close the sockets without flushing, persisting or committing (for crash tests):
        the publisher is stopped at once, its job in hand cut short."""
        self._closed = True
        self._close_publisher(timeout_s=0)
        self.consumer.close(autocommit=False, timeout_ms=0)
