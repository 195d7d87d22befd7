"""The one place that builds kafka-python clients from ``ServiceConfig``.

Connection and security settings (SASL/SSL) come from
``cfg.kafka.client_kwargs(role)``; this module adds the behaviour StreamFlame
relies on:

* producers are idempotent with ``acks='all'`` (kafka-python 3 silently turns
  idempotence off for ``acks=1``) unless ``kafka.idempotent_producer`` is false
  (Tansu: then one request in flight per connection instead), retry without limit inside
  ``delivery_timeout_ms`` and reconnect with a short backoff, so a broker
  restart costs a pause, not a crash;
* consumers join a group without auto-commit (offsets are committed by the
  caller once its results are durable) with the session/heartbeat timeouts of
  the config (Tansu needs short ones, e.g. 2000/600 ms, for fast joins);
* :func:`create_topics` creates the five StreamFlame topics (through :func:`ensure_topics`,
  the one topic creation, which ``streamflame up`` and the embedded broker use too);
* the client interface the pipeline uses (:class:`Producer`, :class:`Consumer`, :class:`SendFuture`,
  :class:`RebalanceListener`, :class:`TopicPartition`, :class:`OffsetAndMetadata`, :class:`KafkaError`):
  kafka-python's objects are the default implementation, and no module of the pipeline imports
  ``kafka`` itself (tests/test_layers.py), so another client (confluent-kafka measured 4-12x
  kafka-python here) can be offered by returning objects of these shapes from
  :func:`make_producer` / :func:`make_consumer`, without touching the pipeline;
* :class:`DeadLetterWriter` builds :class:`streamflame.messages.DeadLetter`
  records for the DLQ topic (a publisher, streamflame.pipeline.publisher, sends them).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Literal, Mapping, NamedTuple, Protocol, Sequence

import structlog
from kafka import ConsumerRebalanceListener as RebalanceListener
from kafka.errors import KafkaError
from kafka.partitioner import Partitioner
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.structs import OffsetAndMetadata, TopicPartition

from streamflame.messages import DeadLetter, encode

if TYPE_CHECKING:  # pragma: no cover
    from kafka import KafkaAdminClient

    from streamflame.config import ServiceConfig

log = structlog.get_logger("streamflame.kafka_io")

RECONNECT_BACKOFF_MAX_MS = 2_000
"""Cap of the reconnect backoff (kafka-python's default of 30 s makes a broker
restart look like a long outage)."""


__all__ = ["Producer", "Consumer", "SendFuture", "RebalanceListener", "RebalanceEvent", "RebalanceQueue", "TopicPartition", "OffsetAndMetadata",
           "KafkaError", "make_producer", "make_consumer", "make_admin", "create_topics", "ensure_topics",
           "discard_producer", "DelayedOffsets", "DeadLetterWriter", "KeyHashPartitioner", "key_hash", "key_partition"]


# ---------------------------------------------------------------------------
# The client interface the pipeline uses (kafka-python's objects have exactly these)
# ---------------------------------------------------------------------------


class SendFuture(Protocol):
    """One send's result, complete after the producer's ``flush``."""

    exception: BaseException | None

    def failed(self) -> bool: ...


class Producer(Protocol):
    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None) -> SendFuture: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


class Consumer(Protocol):
    """Records come back from :meth:`poll` as ``{TopicPartition: [record]}``; a record has
    ``offset``, ``key``, ``value`` and ``timestamp`` (ms, -1 = none)."""

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener | None = None) -> None: ...

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]: ...

    def assignment(self) -> set[TopicPartition]: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata] | None = None) -> None: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    def close(self, autocommit: bool = True, timeout_ms: int | None = None) -> None: ...


class RebalanceEvent(NamedTuple):
    """One rebalance callback: ``kind`` ``"revoked"`` (lost partitions too) or ``"assigned"``."""

    kind: str
    partitions: list[TopicPartition]


class RebalanceQueue(RebalanceListener):
    """The one rebalance design of ingest and the worker: the callbacks only record events
    (kafka-python 3 runs them on its I/O thread while the service's thread waits in ``poll``);
    the service applies them (:meth:`drain`) in its own thread after ``poll`` returns, before it
    handles the records that poll returned (those of a partition it seeks back are dropped)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[RebalanceEvent] = []

    def on_partitions_revoked(self, revoked):
        with self.lock:
            self.events.append(RebalanceEvent("revoked", list(revoked)))

    def on_partitions_assigned(self, assigned):
        with self.lock:
            self.events.append(RebalanceEvent("assigned", list(assigned)))

    def on_partitions_lost(self, lost):
        with self.lock:
            self.events.append(RebalanceEvent("revoked", list(lost)))

    def drain(self) -> list[RebalanceEvent]:
        with self.lock:
            ev, self.events = self.events, []
        return ev


def key_hash(key: bytes) -> int:
    """murmur2 of the key bytes, positive: the hash of the Java client, kafka-python and
    librdkafka's ``murmur2_random`` partitioner."""
    return murmur2(key) & 0x7FFFFFFF


def key_partition(key: bytes, partitions: int) -> int:
    """The partition of a keyed record among ``partitions`` (numbered 0..n-1). StreamFlame's
    own producers use it (:class:`KeyHashPartitioner`), so a reader finds a series' patches
    and forecasts in that one partition."""
    return key_hash(key) % partitions


class KeyHashPartitioner(Partitioner):
    """kafka-python's ``DefaultPartitioner`` assignment (murmur2 of the key bytes, as the
    Java client: so every producer puts a series in the same partition) with each key's
    hash remembered: the pure-Python murmur2 and the set/list building around it were
    about a third of the cost of sending a small record (49-55 -> 34-38 us measured against
    the embedded broker), and a worker or ingest process sends the same keys over and over.
    At most ``max_keys`` hashes are kept (then the memory starts afresh)."""

    def __init__(self, max_keys: int = 1_000_000):
        self._default = DefaultPartitioner()
        self._hashes: dict[bytes, int] = {}
        self._max = max_keys

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        parts = cluster.partitions_for_topic(topic) if serialized_key is not None else None
        if not parts:  # no key (random), or a topic unknown to the metadata (the default's error)
            return self._default.partition(topic, key, serialized_key, value, serialized_value, cluster)
        h = self._hashes.get(serialized_key)
        if h is None:
            if len(self._hashes) >= self._max:
                self._hashes.clear()
            h = self._hashes[serialized_key] = key_hash(serialized_key)
        return sorted(parts)[h % len(parts)]


def make_producer(cfg: "ServiceConfig", **overrides: Any) -> Producer:
    """An idempotent ``acks='all'`` producer (bytes in, bytes out).

    ``overrides`` are passed to ``KafkaProducer`` last (e.g. ``linger_ms``); an
    override of ``acks`` other than 'all'/-1 is refused because it would
    silently disable idempotence.
    """
    from kafka import KafkaProducer

    kw: dict[str, Any] = cfg.kafka.client_kwargs("producer")
    kw.update(
        acks="all",
        enable_idempotence=True,
        retries=2**31 - 1,
        delivery_timeout_ms=120_000,
        request_timeout_ms=30_000,
        max_block_ms=60_000,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        max_request_size=max_request_bytes(cfg),
        partitioner=KeyHashPartitioner(),
    )
    if not cfg.kafka.idempotent_producer:
        # Tansu (measured, durable s3 storage): with idempotence, records in flight when
        # the broker is SIGKILLed are reported delivered after the restart but are not
        # on the topic (presumably the retried batch is answered as a duplicate
        # sequence, which kafka-python counts as success). Without idempotence the
        # retry is written again (measured: nothing lost); one request in
        # flight keeps the per-partition order; a retry after a lost ack may duplicate
        # a record, which every consumer here tolerates (ingest: late/duplicate slot;
        # worker: seq already applied; forecasts: identical re-publication).
        kw.update(enable_idempotence=False, max_in_flight_requests_per_connection=1)
    kw.update(overrides)
    if kw["acks"] not in ("all", -1):
        raise ValueError(f"acks={kw['acks']!r} would disable the idempotent producer; use 'all'")
    return KafkaProducer(**kw)


def max_request_bytes(cfg: "ServiceConfig") -> int:
    """Producer request size limit: room for a dead letter quoting (base64) an
    observation message of ``ingest.max_message_bytes``."""
    return max(1_048_576, 2 * cfg.ingest.max_message_bytes)


class DelayedOffsets:
    """Kafka offsets to commit only once the Redis writes they rely on are ``delay_s``
    old (Redis ``appendfsync everysec`` can lose its last second on a crash; offsets
    committed before that second stays on disk would skip the records whose writes
    were lost). Used by ingest (cursors) and the worker (states).

    ``note(offsets)`` when the writes behind them are done; ``due(delay_s)`` returns
    the newest noted offset per partition among those at least ``delay_s`` old."""

    def __init__(self):
        self._noted: deque[tuple[float, dict]] = deque()   # (noted at, {partition: offset}), oldest first

    def __bool__(self) -> bool:
        return bool(self._noted)

    def note(self, offsets: dict, now: float | None = None) -> None:
        self._noted.append((time.monotonic() if now is None else now, dict(offsets)))

    def due(self, delay_s: float, now: float | None = None) -> dict:
        limit = (time.monotonic() if now is None else now) - delay_s
        out: dict = {}
        while self._noted and self._noted[0][0] <= limit:
            out.update(self._noted.popleft()[1])
        return out

    def forget(self, partitions) -> None:
        """Drop what was noted for these partitions (revoked: the next owner re-reads)."""
        for _, offsets in self._noted:
            for p in partitions:
                offsets.pop(p, None)


def discard_producer(producer: Producer, timeout_s: float = 1.0) -> None:
    """Close ``producer``, giving up on records not delivered within ``timeout_s``
    (kafka-python's ``close`` raises instead of closing when its flush times out)."""
    from kafka.errors import KafkaTimeoutError

    try:
        producer.close(timeout=timeout_s)
        return
    except KafkaTimeoutError:
        pass
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()  # fails the incomplete batches
        sender.join(timeout_s)
    try:
        producer.close(timeout=0)
    except KafkaTimeoutError:  # pragma: no cover - nothing left to flush after force_close
        pass


def make_consumer(cfg: "ServiceConfig", group_id: str | None, **overrides: Any) -> Consumer:
    """A consumer (not yet subscribed) in ``group_id`` (None = no group, manual
    ``assign``), no auto-commit, starting from the earliest offset when the group
    has none committed."""
    from kafka import KafkaConsumer

    kw: dict[str, Any] = cfg.kafka.client_kwargs("consumer")
    kw.update(
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        # Processing a poll batch must fit in this; the ingest batch is small.
        max_poll_interval_ms=300_000,
        fetch_max_bytes=max(52_428_800, 2 * cfg.ingest.max_message_bytes),
        max_partition_fetch_bytes=max(1_048_576, 2 * cfg.ingest.max_message_bytes),
    )
    kw.update(overrides)
    return KafkaConsumer(**kw)


def make_reader(cfg: "ServiceConfig") -> Consumer:
    """A consumer without a group for the operator tools (the caller assigns and seeks its
    partitions): the config's client settings less the group-only ones, no auto-commit."""
    from kafka import KafkaConsumer

    kw: dict[str, Any] = cfg.kafka.client_kwargs("consumer")
    for k in ("session_timeout_ms", "heartbeat_interval_ms"):
        kw.pop(k, None)
    return KafkaConsumer(enable_auto_commit=False, **kw)


def make_admin(cfg: "ServiceConfig", **overrides: Any) -> "KafkaAdminClient":
    from kafka import KafkaAdminClient

    kw: dict[str, Any] = cfg.kafka.client_kwargs("admin")
    kw.update(reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS)
    kw.update(overrides)
    return KafkaAdminClient(**kw)


def topic_partitions(cfg: "ServiceConfig") -> dict[str, int]:
    """Every StreamFlame topic and the partition count it is created with: all
    keyed by series_id, so all get ``kafka.partitions`` (observations and
    patches must have the same count)."""
    t = cfg.topics
    n = cfg.kafka.partitions
    return {t.observations: n, t.patches: n, t.forecasts: n, t.alerts: n, t.dlq: n}


def create_topics(cfg: "ServiceConfig", timeout_s: float = 30.0) -> dict[str, int]:
    """Create the StreamFlame topics that do not exist yet and wait until each
    has all its partitions with a leader.

    Returns ``{topic: partition count}`` as the broker reports it. Raises
    ``RuntimeError`` when observations and patches end up with different counts
    (pre-existing topics keep theirs) or the broker does not settle in time.
    """
    wanted = topic_partitions(cfg)
    admin = make_admin(cfg, request_timeout_ms=int(timeout_s * 1000))
    try:
        counts, created = ensure_topics(admin, wanted, cfg.kafka.replication_factor, timeout_s)
    finally:
        admin.close()
    t = cfg.topics
    if counts[t.observations] != counts[t.patches]:
        raise RuntimeError(
            f"{t.observations} has {counts[t.observations]} partitions but {t.patches} has "
            f"{counts[t.patches]}; they must be equal (recreate one of them)"
        )
    if created:
        log.info("kafka.topics_created", topics=created)
    return counts


def ensure_topics(admin: "KafkaAdminClient", topics: "Mapping[str, int]", replication_factor: int = 1,
                  timeout_s: float = 30.0) -> tuple[dict[str, int], list[str]]:
    """The one topic creation of StreamFlame (the service, ``streamflame up`` and the embedded broker
    use it): create each ``name -> partitions`` that does not exist yet (idempotent; a concurrent
    creator winning the race is fine) and wait until every partition of every named topic has a leader.

    Returns (``{topic: partition count}`` as the broker reports it, the names created here). An
    existing topic keeps its count even if it differs from the one asked for (callers decide whether
    that is an error). Raises ``ValueError`` for a bad spec, ``RuntimeError`` after ``timeout_s``.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    for name, partitions in topics.items():
        if not name or int(partitions) < 1:
            raise ValueError(f"bad topic spec {name!r}: {partitions} partitions (need a name and >= 1)")
    existing = set(admin.list_topics())
    new = [NewTopic(name, int(n), replication_factor) for name, n in topics.items() if name not in existing]
    if new:
        try:
            admin.create_topics(new, raise_errors=False)
        except TopicAlreadyExistsError:  # a concurrent creator won the race
            pass
    deadline = time.monotonic() + timeout_s
    while True:
        counts = _partition_counts(admin, list(topics))
        if all(counts.get(name, 0) >= 1 for name in topics):
            return {name: counts[name] for name in topics}, [tp.name for tp in new]
        if time.monotonic() > deadline:
            missing = sorted(n for n in topics if counts.get(n, 0) < 1)
            raise RuntimeError(f"topics without led partitions after {timeout_s:.0f} s: {missing}")
        time.sleep(0.1)


def _partition_counts(admin: "KafkaAdminClient", names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for meta in admin.describe_topics(names):
        if meta.get("error_code", 0) != 0:
            continue
        parts = meta.get("partitions") or []
        if parts and all(p.get("leader_id", -1) >= 0 for p in parts):
            counts[meta["name"]] = len(parts)
    return counts


class DeadLetterWriter:
    """Builds :class:`~streamflame.messages.DeadLetter` records for the DLQ topic.

    The DLQ record key is the source record's key (the series_id, when the
    producer followed the contract). The caller's publisher sends a batch's dead
    letters with its other records and checks every send before the source offsets
    are committed, so a dead letter is never lost, though it may be written twice
    after a crash.

    A dead letter must fit in one Kafka request: its record key (the source key) plus its
    JSON value at most ``max_letter_bytes``. The source key and value are kept whole when
    they fit (every key a source record can carry under ingest's limits does, next to a
    value of up to ``ingest.max_message_bytes``); otherwise the larger of the two is cut to
    its first bytes, and the letter says so: ``key_truncated`` / ``original_truncated`` give
    the full length in bytes, and ``detail`` ends with ``(key truncated: kept N of M bytes)``.
    Use :meth:`for_config` for a limit that fits the producer's request size.
    """

    MAX_SERIES_ID_CHARS = 4096   # the decoded series_id field only (informational)

    def __init__(self, topic: str, component: Literal["ingest", "worker"], max_letter_bytes: int = 1_000_000):
        self.topic = topic
        self.component = component
        self.max_letter_bytes = max_letter_bytes

    @classmethod
    def for_config(cls, cfg: "ServiceConfig", component: Literal["ingest", "worker"]) -> "DeadLetterWriter":
        # the producer's request limit, less room for the record batch around the one record
        return cls(cfg.topics.dlq, component, max_letter_bytes=max_request_bytes(cfg) - 16_384)

    def message(
        self,
        reason: str,
        detail: str,
        *,
        source_topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        original: bytes | None,
        series_id: str | None = None,
        index: int | None = None,
        indices: list[int] | None = None,
    ) -> tuple[str, bytes | None, bytes]:
        """The dead letter as a ``(topic, key, value)`` message of a publisher's job."""
        key = None if key is None else bytes(key)
        original = None if original is None else bytes(original)
        if series_id is not None and len(series_id) > self.MAX_SERIES_ID_CHARS:
            series_id = series_id[: self.MAX_SERIES_ID_CHARS]
        kept = {"key": None if key is None else len(key), "original": None if original is None else len(original)}
        for _ in range(8):   # each round cuts the larger part by what the last encoding was over
            k = None if key is None else key[: kept["key"]]
            o = None if original is None else original[: kept["original"]]
            notes = [f" ({name} truncated: kept {kept[name]} of {len(full)} bytes)"
                     for name, full in (("key", key), ("original", original)) if full is not None and kept[name] < len(full)]
            letter = DeadLetter.build(
                reason, detail + "".join(notes), source_topic=source_topic, partition=partition, offset=offset,
                key=k, original=o, component=self.component, series_id=series_id, index=index, indices=indices,
                key_truncated=len(key) if k is not None and len(k) < len(key) else None,
                original_truncated=len(original) if o is not None and len(o) < len(original) else None,
            )
            value = encode(letter)
            over = len(value) + len(k or b"") - self.max_letter_bytes
            if over <= 0:
                return self.topic, k, value
            # bytes of the letter per kept byte: base64 4/3 (+ the record key and the text form for a key)
            cost = {"key": (len(k or b"") + len(letter.key_b64 or "") + len(letter.key or "")) / max(1, len(k or b"")),
                    "original": 4 / 3}
            name = max(kept, key=lambda n: (kept[n] or 0) * cost[n])
            if not kept[name]:
                break
            kept[name] = max(0, kept[name] - int(over / cost[name]) - 64)
        raise ValueError(f"a dead letter of {reason} at {source_topic}[{partition}]@{offset} cannot fit "
                         f"{self.max_letter_bytes} bytes")
