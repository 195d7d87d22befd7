"""Steps 3 and 4 of a worker batch, in one place: publish (send, flush, check every
send), then quarantine and compare-and-set the states. See worker.py for the order.

A :class:`Job` is plain data (the encoded messages and the CAS arguments), built by
the model process once a batch is computed. Two sinks run it:

* :class:`ProcessSink` (``worker.publisher: process``, the default) hands it to a
  publisher process of its own (``python -m streamflame.worker.sink``), so that
  kafka-python's per-record work and the Redis round trip of batch k run on another
  core while the model computes batch k+1. A thread would not do: that work holds
  the GIL the model's Python code needs (measured, docs/benchmarks.md).
* :class:`InlineSink` (``inline``) runs it in the worker's own process.

Both run :func:`complete`, so the records on the topics and in Redis are the same.
The worker looks at a job's :class:`Outcome` (which writes were applied) before it
publishes anything of the next batch, and commits a batch's offsets only then.

The publisher process reads jobs from a pipe and answers each with its outcome. It
ignores SIGINT/SIGTERM and stops at the end of its input: when the worker closes
the pipe, or dies (even by SIGKILL) — after finishing the job in hand, which is as
safe as a worker crash between steps 3 and 4. A publisher that died is seen as a
failed batch (``OSError``): the worker re-reads the batch and starts a new one.
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

from streamflame.state.store import SaveResult

__all__ = ["Job", "Outcome", "complete", "InlineSink", "ProcessSink"]


@dataclass
class Job:
    messages: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)  # (topic, key, value), send order
    quarantine: list[tuple[str, str]] = field(default_factory=list)   # (series_id, reason), before the writes
    cas: dict[str, tuple] = field(default_factory=dict)               # StateStore.save_args arguments


@dataclass
class Outcome:
    save: SaveResult
    publish_s: float   # sends + flush
    save_s: float      # the CAS round trip (0 when nothing was written)


# -- the pipe's wire format (no pickle in this package: tests/test_reliability_input.py) --
#
# job     = u32 header length | header (JSON) | the blobs, in header order
# header  = {"topics": [..], "msgs": [[topic index, key length or -1, value length], ..],
#            "quarantine": [[series_id, reason], ..],
#            "cas": [[series_id, seq, expected, state length, meta length, flag], ..]}
# outcome = JSON: {"kind": "ok"|"ready"|"kafka"|"redis"|"os"|"bug", ...}


def encode_job(job: Job) -> bytes:
    topics = list(dict.fromkeys(t for t, _, _ in job.messages))
    index = {t: i for i, t in enumerate(topics)}
    head = orjson.dumps({
        "topics": topics,
        "msgs": [[index[t], -1 if k is None else len(k), len(v)] for t, k, v in job.messages],
        "quarantine": job.quarantine,
        "cas": [[sid, seq, exp, len(state), len(meta), flag] for sid, (seq, exp, state, meta, flag) in job.cas.items()],
    })
    parts = [struct.pack("<I", len(head)), head]
    for _, k, v in job.messages:
        if k is not None:
            parts.append(k)
        parts.append(v)
    for _, _, state, meta, _ in job.cas.values():
        parts += (state, meta)
    return b"".join(parts)


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
    cas = {sid: (seq, exp, take(sl), take(ml), flag) for sid, seq, exp, sl, ml, flag in head["cas"]}
    if pos != len(buf):
        raise ValueError(f"job has {len(buf) - pos} bytes past its end")
    return Job(msgs, [(sid, reason) for sid, reason in head["quarantine"]], cas)


def encode_outcome(out: Outcome) -> bytes:
    return orjson.dumps({"kind": "ok", "save": asdict(out.save), "publish_s": out.publish_s, "save_s": out.save_s})


def decode_outcome(d: dict) -> Outcome:
    return Outcome(SaveResult(**d["save"]), d["publish_s"], d["save_s"])


def complete(producer, store, job: Job) -> Outcome:
    """Publish every message, flush, check each send; then quarantine and write.
    Raises KafkaError (a send failed), RedisError or OSError; nothing is written to
    Redis unless every message landed."""
    from kafka.errors import KafkaError

    t0 = time.perf_counter()
    send = producer.send
    futures = [send(topic, key=key, value=value) for topic, key, value in job.messages]
    producer.flush()
    for f in futures:
        if f.failed():
            err = f.exception
            raise err if isinstance(err, KafkaError) else KafkaError(repr(err))
    publish_s = time.perf_counter() - t0
    for sid, reason in job.quarantine:
        store.quarantine(sid, reason)
    save = store.save_args(job.cas)
    return Outcome(save, publish_s, store.last_round_trip_s if job.cas else 0.0)


class InlineSink:
    """Runs each job at :meth:`submit`, in this process."""

    concurrent = False

    def __init__(self, producer, store):
        self.producer, self.store = producer, store
        self._done: tuple[Outcome | None, BaseException | None] | None = None

    def submit(self, job: Job) -> None:
        try:
            self._done = (complete(self.producer, self.store, job), None)
        except Exception as e:  # noqa: BLE001 - raised again by result()
            self._done = (None, e)

    def ready(self) -> bool:
        return True

    def result(self) -> Outcome:
        done, self._done = self._done, None
        if done is None:
            raise RuntimeError("InlineSink.result without a job")
        outcome, err = done
        if err is not None:
            raise err
        return outcome

    @property
    def alive(self) -> bool:
        return True

    def close(self) -> None:
        self.producer.close(timeout=5)


class ProcessSink:
    """Runs jobs in a publisher process; one job in flight at a time.

    ``cfg``: the service config (sent through the pipe, secrets included, never
    on a command line). Raises OSError if the process does not come up (e.g. Redis
    or the broker unreachable) within ``start_timeout_s``.
    """

    concurrent = True

    def __init__(self, cfg, start_timeout_s: float = 60.0):
        job_r, job_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamflame.worker.sink", str(job_r), str(out_w)],
                pass_fds=(job_r, out_w), stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            os.close(job_r)
            os.close(out_w)
        self._jobs = Connection(job_w, readable=False)
        self._outcomes = Connection(out_r, writable=False)
        self._in_flight = False
        try:
            self._jobs.send_bytes(orjson.dumps(cfg.effective(mask_secrets=False)))
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
            raise RuntimeError("ProcessSink.submit with a job in flight")
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
            raise RuntimeError("ProcessSink.result without a job")
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
        from kafka.errors import KafkaError
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
    """The publisher process: config, then jobs, until the pipe ends."""
    from kafka.errors import KafkaError
    from redis.exceptions import RedisError

    from streamflame.config import ServiceConfig
    from streamflame.kafka_io import make_producer
    from streamflame.logs import configure_logging
    from streamflame.state.client import connect
    from streamflame.state.store import StateStore

    import structlog

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the worker decides when we stop: it closes the pipe
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    jobs, out = Connection(job_fd, writable=False), Connection(out_fd, readable=False)
    try:
        cfg = ServiceConfig(**orjson.loads(jobs.recv_bytes()))
    except EOFError:
        return 0
    configure_logging(cfg.log_level)
    log = structlog.get_logger("streamflame.worker.publisher")
    producer = make_producer(cfg)
    store = StateStore(connect(cfg.redis), cfg.redis.key_prefix)
    out.send_bytes(orjson.dumps({"kind": "ready"}))
    try:
        while True:
            try:
                buf = jobs.recv_bytes()
            except EOFError:
                return 0
            try:
                reply = encode_outcome(complete(producer, store, decode_job(buf)))
            except Exception as e:  # noqa: BLE001 - reported to the worker, which decides
                kind = ("kafka" if isinstance(e, KafkaError) else "redis" if isinstance(e, RedisError)
                        else "os" if isinstance(e, OSError) else "bug")
                if kind == "bug":
                    log.exception("worker.publisher_failed")
                reply = orjson.dumps({"kind": kind, "error": repr(e)})
            try:
                out.send_bytes(reply)
            except OSError:  # the worker is gone
                return 0
    finally:
        producer.close(timeout=5)


if __name__ == "__main__":
    from streamflame.worker.sink import _serve as serve   # the package's module, not a second copy

    sys.exit(serve(int(sys.argv[1]), int(sys.argv[2])))
