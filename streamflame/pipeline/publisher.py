"""A batch's sends and Redis writes, in one place, for the worker and for ingest:
publish (send, flush, check every send), then write: the worker's quarantines and
state compare-and-sets, ingest's cursor compare-and-sets. Nothing is written to
Redis unless every message of the job landed. See worker.py and ingest/consumer.py
for each one's order.

A job is plain data (the encoded messages and the write arguments), built by the
process that computed the batch: a :class:`WorkerJob` (forecasts, alerts, dead letters;
then quarantines and state compare-and-sets) or an :class:`IngestJob` (patches, alert
episodes, dead letters; then cursor compare-and-sets and alerted marks). Two publishers run it:

* :class:`ProcessPublisher` (``worker.publisher`` / ``ingest.publisher: process``, the
  default) hands it to a publisher process of its own (``python -m streamflame.pipeline.publisher``),
  so that kafka-python's per-record work and the Redis round trip of batch k run on
  another core while batch k+1 is computed (the worker's model) or read and assembled
  (ingest). A thread would not do: that work holds the GIL the caller's Python code
  needs (measured, docs/benchmarks.md).
* :class:`InlinePublisher` (``inline``) runs it in the caller's own process: the sends at
  :meth:`~InlinePublisher.submit` (the producer's I/O thread delivers them meanwhile), the
  flush, the checks and the writes at :meth:`~InlinePublisher.result`.

Both run :func:`send` then :func:`finish`, so the records on the topics and in Redis
are the same. The caller looks at a job's :class:`Outcome` (which writes were applied)
before it sends anything of the next batch, and commits a batch's offsets only then.

The publisher process reads jobs from a pipe and answers each with its outcome. It
ignores SIGINT/SIGTERM and stops at the end of its input: when its caller closes
the pipe, or dies (even by SIGKILL) — after finishing the job in hand, which is as
safe as a crash between the sends and the writes. A publisher that died is seen as
a failed batch (``OSError``): the caller re-reads the batch and starts a new one.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection

import orjson

from streamflame.adapters.kafka_io import KafkaError, discard_producer, make_producer
from streamflame.adapters.state.client import connect
from streamflame.adapters.state.store import SaveResult, StateStore
from streamflame.config import ServiceConfig
from streamflame.core.logs import configure_logging
from streamflame.pipeline.ingest.cursors import CursorSaveResult, CursorStore

__all__ = ["WorkerJob", "IngestJob", "Job", "Outcome", "send", "finish", "start", "InlinePublisher", "ProcessPublisher"]

Message = tuple[str, "bytes | None", bytes]  # (topic, key, value)


@dataclass
class WorkerJob:
    """A worker batch: its messages, then its state writes."""

    messages: list[Message] = field(default_factory=list)             # send order
    quarantine: list[tuple[str, str]] = field(default_factory=list)   # (series_id, reason), before the writes
    cas: dict[str, tuple] = field(default_factory=dict)               # StateStore.save_args arguments


@dataclass
class IngestJob:
    """An ingest batch: its messages, then its cursor writes."""

    messages: list[Message] = field(default_factory=list)             # send order
    cursors: list[tuple[str, int, int, bytes]] = field(default_factory=list)   # CursorStore.save_args arguments
    alerted: list[tuple[str, int]] = field(default_factory=list)      # CursorStore.raise_alerted, after the cursors


Job = WorkerJob | IngestJob


@dataclass
class Outcome:
    save: SaveResult
    publish_s: float   # sends + flush
    save_s: float      # the Redis round trip (0 when nothing was written)
    cursors: CursorSaveResult = field(default_factory=CursorSaveResult)


# -- the pipe's wire format (no pickle in this package: tests/test_reliability_input.py) --
#
# job     = u32 header length | header (JSON) | the blobs, in header order
# header  = {"kind": "worker"|"ingest", "topics": [..], "msgs": [[topic index, key length or -1, value length], ..],
#            worker: "quarantine": [[series_id, reason], ..],
#                    "cas": [[series_id, seq, expected, state length, meta length, flag], ..],
#            ingest: "cursors": [[series_id, seq, n, cursor length], ..], "alerted": [[series_id, slot], ..]}
# outcome = JSON: {"kind": "ok"|"ready"|"kafka"|"redis"|"os"|"bug", ...}


def encode_job(job: Job) -> bytes:
    topics = list(dict.fromkeys(t for t, _, _ in job.messages))
    index = {t: i for i, t in enumerate(topics)}
    header = {"topics": topics, "msgs": [[index[t], -1 if k is None else len(k), len(v)] for t, k, v in job.messages]}
    blobs = [b for _, k, v in job.messages for b in ((v,) if k is None else (k, v))]
    if isinstance(job, WorkerJob):
        header.update(kind="worker", quarantine=job.quarantine, cas=[
            [sid, seq, exp, len(state), len(meta), flag] for sid, (seq, exp, state, meta, flag) in job.cas.items()])
        for _, _, state, meta, _ in job.cas.values():
            blobs += (state, meta)
    else:
        header.update(kind="ingest", alerted=job.alerted,
                      cursors=[[sid, seq, n, len(c)] for sid, seq, n, c in job.cursors])
        blobs += [c for _, _, _, c in job.cursors]
    head = orjson.dumps(header)
    return b"".join([struct.pack("<I", len(head)), head, *blobs])


def decode_job(buf: bytes) -> Job:
    (n,) = struct.unpack_from("<I", buf, 0)
    head = orjson.loads(buf[4:4 + n])
    mv, pos = memoryview(buf), 4 + n

    def take(length: int) -> bytes:
        nonlocal pos
        if pos + length > len(buf):
            raise ValueError("job truncated")
        out = bytes(mv[pos:pos + length])
        pos += length
        return out

    topics = head["topics"]
    msgs = [(topics[ti], None if kl < 0 else take(kl), take(vl)) for ti, kl, vl in head["msgs"]]
    job: Job
    if head["kind"] == "worker":
        cas = {sid: (seq, exp, take(sl), take(ml), flag) for sid, seq, exp, sl, ml, flag in head["cas"]}
        job = WorkerJob(msgs, [(sid, reason) for sid, reason in head["quarantine"]], cas)
    else:
        cursors = [(sid, seq, n, take(cl)) for sid, seq, n, cl in head["cursors"]]
        job = IngestJob(msgs, cursors, [(sid, slot) for sid, slot in head["alerted"]])
    if pos != len(buf):
        raise ValueError(f"job has {len(buf) - pos} bytes past its end")
    return job


def encode_outcome(out: Outcome) -> bytes:
    return orjson.dumps({"kind": "ok", "save": asdict(out.save), "publish_s": out.publish_s, "save_s": out.save_s,
                         "cursors": asdict(out.cursors)})


def decode_outcome(d: dict) -> Outcome:
    return Outcome(SaveResult(**d["save"]), d["publish_s"], d["save_s"], CursorSaveResult(**d["cursors"]))


def send(producer, job: Job) -> tuple[list, float]:
    """Send every message of the job, without waiting: ``(futures, start time)``."""
    t0 = time.perf_counter()
    send_one = producer.send
    return [send_one(topic, key=key, value=value) for topic, key, value in job.messages], t0


def finish(producer, sent: tuple[list, float], job: Job, states=None, cursors=None) -> Outcome:
    """Flush, check each send; then quarantine and write (``states``: a StateStore,
    ``cursors``: a CursorStore, each needed only when the job has such writes).
    Raises KafkaError (a send failed), RedisError or OSError; nothing is written to
    Redis unless every message landed."""
    futures, t0 = sent
    producer.flush()
    for f in futures:
        if f.failed():
            err = f.exception
            raise err if isinstance(err, KafkaError) else KafkaError(repr(err))
    publish_s = time.perf_counter() - t0
    if isinstance(job, WorkerJob):
        save, save_s = _write_states(job, states)
        return Outcome(save, publish_s, save_s)
    written, save_s = _write_cursors(job, cursors)
    return Outcome(SaveResult(), publish_s, save_s, written)


def _write_states(job: WorkerJob, states) -> tuple[SaveResult, float]:
    for sid, reason in job.quarantine:
        states.quarantine(sid, reason)
    if not job.cas:
        return SaveResult(), 0.0
    return states.save_args(job.cas), states.last_round_trip_s


def _write_cursors(job: IngestJob, cursors) -> tuple[CursorSaveResult, float]:
    written, t1 = CursorSaveResult(), time.perf_counter()
    if job.cursors:
        written = cursors.save_args(job.cursors)
    if job.alerted:
        cursors.raise_alerted(job.alerted)
    return written, (time.perf_counter() - t1 if job.cursors or job.alerted else 0.0)


def start(cfg, component: str, *, states=None, cursors=None, log=None):
    """The publisher ``cfg.<component>.publisher`` names, for the worker or ingest:
    an :class:`InlinePublisher` on a new producer (``states`` / ``cursors``: the caller's
    StateStore / CursorStore) or a :class:`ProcessPublisher` (logged with its pid).
    Raises what starting it raises (OSError for a process that does not come up)."""
    if getattr(cfg, component).publisher == "inline":

        return InlinePublisher(make_producer(cfg), states, cursors)
    sink = ProcessPublisher(cfg, component)
    if log is not None:
        log.info(f"{component}.publisher_started", pid=sink.pid)
    return sink


class InlinePublisher:
    """Runs each job in this process: its sends at :meth:`submit`, the rest at :meth:`result`."""

    concurrent = False

    def __init__(self, producer, states=None, cursors=None):
        self.producer, self.states, self.cursors = producer, states, cursors
        self._job: tuple[Job, tuple | None, BaseException | None] | None = None

    def submit(self, job: Job) -> None:
        if self._job is not None:
            raise RuntimeError("InlinePublisher.submit with a job in flight")
        try:
            self._job = (job, send(self.producer, job), None)
        except Exception as e:  # noqa: BLE001 - raised again by result()
            self._job = (job, None, e)

    def ready(self) -> bool:
        return True

    def result(self) -> Outcome:
        held, self._job = self._job, None
        if held is None:
            raise RuntimeError("InlinePublisher.result without a job")
        job, sent, err = held
        if err is not None:
            raise err
        return finish(self.producer, sent, job, self.states, self.cursors)

    @property
    def alive(self) -> bool:
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the producer, giving up on sends not delivered within ``timeout_s``."""

        self._job = None
        discard_producer(self.producer, timeout_s=timeout_s)


class ProcessPublisher:
    """Runs jobs in a publisher process; one job in flight at a time.

    ``cfg``: the service config (sent through the pipe, secrets included, never
    on a command line); ``component``: "worker" or "ingest" (the writes it makes, its
    log lines). Raises OSError if the process does not come up (e.g. Redis or the
    broker unreachable) within ``start_timeout_s``.
    """

    concurrent = True

    def __init__(self, cfg, component: str = "worker", start_timeout_s: float = 60.0):
        job_r, job_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamflame.pipeline.publisher", str(job_r), str(out_w)],
                pass_fds=(job_r, out_w), stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            os.close(job_r)
            os.close(out_w)
        self._jobs = Connection(job_w, readable=False)
        self._outcomes = Connection(out_r, writable=False)
        self._in_flight = False
        try:
            self._jobs.send_bytes(orjson.dumps({"component": component, "config": cfg.effective(mask_secrets=False)}))
            if not self._outcomes.poll(start_timeout_s):
                raise OSError(f"publisher process not ready after {start_timeout_s:.0f} s")
            self._receive()
        except BaseException:
            self.close(timeout_s=1)
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def submit(self, job: Job) -> None:
        if self._in_flight:
            raise RuntimeError("ProcessPublisher.submit with a job in flight")
        try:
            self._jobs.send_bytes(encode_job(job))
        except (OSError, ValueError) as e:  # broken pipe / closed
            raise OSError(f"publisher process gone (exit code {self.proc.poll()}): {e!r}") from e
        self._in_flight = True

    def ready(self) -> bool:
        """True when the job in flight has its outcome (or the process is gone)."""
        try:
            return self._outcomes.poll(0)
        except (OSError, ValueError):
            return True

    def result(self) -> Outcome:
        """Wait for the job in flight; raise what the publisher raised (as
        KafkaError, RedisError or OSError), OSError if it died."""
        if not self._in_flight:
            raise RuntimeError("ProcessPublisher.result without a job")
        self._in_flight = False
        return self._receive()

    def _receive(self):
        try:
            reply = orjson.loads(self._outcomes.recv_bytes())
        except (EOFError, OSError, ValueError) as e:
            code = self.proc.wait(timeout=5) if self.proc.poll() is None else self.proc.returncode
            raise OSError(f"publisher process exited (code {code})") from e
        kind = reply["kind"]
        if kind == "ok":
            return decode_outcome(reply)
        if kind == "ready":
            return None
        from redis.exceptions import RedisError

        cls = {"kafka": KafkaError, "redis": RedisError, "os": OSError}.get(kind, RuntimeError)
        raise cls(f"publisher: {reply['error']}")

    def close(self, timeout_s: float = 10.0) -> None:
        """End its input; it finishes, closes its producer and exits (killed after ``timeout_s``)."""
        for conn in (self._jobs, self._outcomes) if hasattr(self, "_outcomes") else ():
            try:
                conn.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _serve(job_fd: int, out_fd: int) -> int:
    """The publisher process: its config, then jobs, until the pipe ends."""
    from redis.exceptions import RedisError
    import structlog

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the caller decides when we stop: it closes the pipe
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    jobs, out = Connection(job_fd, writable=False), Connection(out_fd, readable=False)
    try:
        first = orjson.loads(jobs.recv_bytes())
    except EOFError:
        return 0
    cfg, component = ServiceConfig(**first["config"]), first["component"]
    configure_logging(cfg.log_level)
    log = structlog.get_logger(f"streamflame.{component}.publisher")
    producer = make_producer(cfg)
    redis = connect(cfg.redis)
    states = StateStore(redis, cfg.redis.key_prefix) if component == "worker" else None
    cursors = CursorStore(redis, cfg.redis.key_prefix) if component == "ingest" else None
    out.send_bytes(orjson.dumps({"kind": "ready"}))
    try:
        while True:
            try:
                buf = jobs.recv_bytes()
            except EOFError:
                return 0
            try:
                job = decode_job(buf)
                reply = encode_outcome(finish(producer, send(producer, job), job, states, cursors))
            except Exception as e:  # noqa: BLE001 - reported to the caller, which decides
                kind = ("kafka" if isinstance(e, KafkaError) else "redis" if isinstance(e, RedisError)
                        else "os" if isinstance(e, OSError) else "bug")
                if kind == "bug":
                    log.exception(f"{component}.publisher_failed")
                reply = orjson.dumps({"kind": kind, "error": repr(e)})
            try:
                out.send_bytes(reply)
            except OSError:  # the caller is gone
                return 0
    finally:
        discard_producer(producer, timeout_s=5)


if __name__ == "__main__":
    from streamflame.pipeline.publisher import _serve as serve   # the package's module, not a second copy

    sys.exit(serve(int(sys.argv[1]), int(sys.argv[2])))
