"""Do the broker's data and Redis's data belong together? Checked by `streamflame up`
before ingest and worker start.

The broker's data carries an id: a marker topic ``<observations topic>.incarnation.<id>``
(its name is the id: a topic list is exact where Tansu's end offsets are not). A
broker that lost its data (memory storage, a deleted data directory) has no marker,
and a new one is created. Redis remembers the id it was last used with under
``<key_prefix>:incarnation`` (hash: ``broker``, ``checked_at``, and after a mismatch
``previous``, ``outcome``, ``cursors_reset``).

Outcomes (:class:`Incarnation`):

``first_start``       no marker and nothing in Redis: a new stack.
``same``              the marker Redis remembers: both kept their data.
``broker_data_lost``  Redis holds ingest cursors written against other broker data
                      (the marker is new or another). The cursors' Kafka positions
                      (offsets restart at 0 on a fresh broker) would make ingest skip
                      every new observation up to the old offset; they are dropped
                      (:func:`repair_cursors`),
                      states, patch seq numbers and the time grid are kept, so the
                      series go on where they were (:func:`rebase_cursor`):
                      observations at or before a series' last accepted time are
                      rejected (late), none is applied twice. Lost: what the old
                      broker held and no state covered yet: observations of open
                      patches, and patches not yet applied (the next patch seq
                      goes back to the one after the state; the lost ones become
                      all-missing gap patches, so the worker never waits for them).
``broker_behind``     the same broker, but its log of observations ends before
                      positions that ingest cursors recorded (a host power loss took
                      the broker's last writes, Redis kept later ones): those cursors
                      lose their Kafka position (:func:`forget_positions_past`), so the
                      re-used offsets are read, not skipped; time grid and seq stay.
``redis_data_lost``   the broker has data but Redis has no StreamFlame keys: the
                      series start afresh from the consumer groups' committed offsets.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from streamflame.embedded.broker import _admin, create_topics
from streamflame.pipeline.ingest.cursor import IngestCursor
from streamflame.pipeline.ingest.cursors import CursorStore, cursor_args

log = structlog.get_logger("streamflame.incarnation")

OUTCOMES = ("first_start", "same", "broker_behind", "broker_data_lost", "redis_data_lost")


@dataclass(frozen=True)
class Incarnation:
    """Result of :func:`check`; ``message`` is the sentence for logs and `status`."""

    outcome: str
    broker_id: str
    remembered_id: str | None
    cursors_reset: int
    lost_patches: int
    message: str

    @property
    def mismatch(self) -> bool:
        return self.outcome in ("broker_behind", "broker_data_lost", "redis_data_lost")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mismatch": self.mismatch}


def marker_prefix(observations_topic: str) -> str:
    return f"{observations_topic}.incarnation."


def redis_key(key_prefix: str) -> str:
    return f"{key_prefix}:incarnation"


def _broker_marker(bootstrap: str, observations_topic: str, client_kwargs: dict[str, Any]) -> tuple[str, bool]:
    """(id, created): the id named by the marker topic, created when there is none."""

    prefix = marker_prefix(observations_topic)
    admin = _admin(bootstrap, 30.0, client_kwargs)
    try:
        found = sorted(t[len(prefix):] for t in admin.list_topics() if t.startswith(prefix))
    finally:
        admin.close()
    if found:
        return found[0], False
    new = uuid.uuid4().hex[:16]
    create_topics(bootstrap, {prefix + new: 1}, **client_kwargs)
    return new, True


def _redis_has_series(redis_client, key_prefix: str) -> bool:
    for pattern in (f"{key_prefix}:{{*}}:ingest", f"{key_prefix}:{{*}}:state"):
        for _ in redis_client.scan_iter(match=pattern, count=1000):
            return True
    return False


@dataclass(frozen=True)
class Repair:
    """What :func:`repair_cursors` changed."""

    cursors: int = 0            # cursors rewritten
    rewound: int = 0            # series whose next patch seq went back to the one after their state
    lost_patches: int = 0       # patches emitted against the old broker but never applied (now gaps)
    lost_open: int = 0          # observations of spilled open patches dropped with a rewind


def rebase_cursor(cur: "IngestCursor", applied_seq: int) -> tuple["IngestCursor", int, int]:
    """The cursor for a new broker beside a state at ``applied_seq`` (-1: none):
    no Kafka position (new offsets start at 0; nothing may be skipped by offset);
    the next patch seq right after the applied one, so patches the old broker held
    but no worker applied become all-missing gap patches instead of a gap that the
    worker refuses forever. Time grid and last observed slot stay: earlier
    timestamps are rejected as late. Returns (cursor, patches lost, open observations dropped)."""
    cur.last_partition, cur.last_offset, cur.last_index = None, None, 0
    if cur.pending is not None:  # still inferring the frequency: nothing emitted yet
        return cur, 0, 0
    lost_patches = lost_open = 0
    if cur.next_seq != applied_seq + 1:
        lost_patches = max(0, cur.next_seq - (applied_seq + 1))
        if cur.open_slots:  # they belong to patch next_seq, not to the one it rewinds to
            lost_open = len(cur.open_slots)
            cur.n_covered -= lost_open
            cur.open_slots = None
            cur.open_partition = cur.open_first_offset = cur.open_last_offset = None
        cur.next_seq = applied_seq + 1
    return cur, lost_patches, lost_open


def _scan_series(store: "CursorStore", count: int = 1000) -> list[str]:
    """Every series id that has an ingest cursor key (SCAN, not KEYS)."""
    head, tail = f"{store.key_prefix}:{{", "}:ingest"
    out = []
    for k in store.redis.scan_iter(match=f"{head}*{tail}", count=count):
        k = k.decode() if isinstance(k, bytes) else k
        out.append(k[len(head):-len(tail)])
    return out


def _overwrite(store: "CursorStore", cursors: list["IngestCursor"]) -> int:
    """Write cursors as they are, bypassing the compare-and-set (a rewind lowers the
    version): only while no ingest process runs. Other fields of the hash stay."""

    pipe = store.redis.pipeline(transaction=False)
    for sid, seq, cov, raw in cursor_args(cursors):
        pipe.hset(store.key(sid), mapping={"seq": seq, "n": cov, "cursor": raw})
    if cursors:
        pipe.execute()
    return len(cursors)


def repair_cursors(redis_client, key_prefix: str, batch: int = 1000) -> Repair:
    """:func:`rebase_cursor` for every readable ingest cursor (unreadable ones are
    left to ingest's quarantine). Only while no ingest or worker runs."""

    store = CursorStore(redis_client, key_prefix)
    sids = _scan_series(store, batch)
    n = rewound = lost_patches = lost_open = 0
    for i in range(0, len(sids), batch):
        chunk = sids[i:i + batch]
        loaded = store.load_many(chunk)
        pipe = redis_client.pipeline(transaction=False)
        for sid in chunk:
            pipe.hget(f"{key_prefix}:{{{sid}}}:state", "seq")
        applied = {}
        for sid, raw in zip(chunk, pipe.execute(raise_on_error=False)):
            try:
                applied[sid] = int(raw)
            except (TypeError, ValueError):
                applied[sid] = -1
        out = []
        for sid, cur in loaded.items():
            if not isinstance(cur, IngestCursor):
                continue
            before = cur.to_json()
            seq_before = cur.next_seq
            cur, lp, lo = rebase_cursor(cur, applied[sid])
            rewound += cur.next_seq != seq_before
            lost_patches += lp
            lost_open += lo
            if cur.to_json() != before:
                out.append(cur)
        n += _overwrite(store, out)
    return Repair(n, rewound, lost_patches, lost_open)


def log_ends(bootstrap: str, topic: str, client_kwargs: dict[str, Any] | None = None,
             timeout_s: float = 5.0) -> dict[int, int]:
    """The end offset of each partition of `topic`, exact: Tansu's ListOffsets answers
    the start of the last batch, so each partition is read from there and the
    high-water mark that comes with the fetched data is taken. Partitions whose end
    could not be read within `timeout_s` are left out."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(**{**(client_kwargs or {}), "bootstrap_servers": bootstrap, "enable_auto_commit": False,
                         "fetch_max_wait_ms": 100})
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        if not tps:
            return {}
        c.assign(tps)
        for tp, off in c.end_offsets(tps).items():
            c.seek(tp, off)
        ends: dict[int, int] = {}
        deadline = time.monotonic() + timeout_s
        while len(ends) < len(tps) and time.monotonic() < deadline:
            c.poll(timeout_ms=200)
            for tp in tps:
                hw = c.highwater(tp)
                if hw is not None:
                    ends[tp.partition] = hw
        return ends
    finally:
        c.close()


def forget_positions_past(redis_client, key_prefix: str, ends: dict[int, int], batch: int = 1000) -> int:
    """Drop the Kafka position of every cursor whose last offset is at or past its
    partition's end (in `ends`); returns how many. Only while no ingest runs."""

    store = CursorStore(redis_client, key_prefix)
    sids = _scan_series(store, batch)
    n = 0
    for i in range(0, len(sids), batch):
        out = []
        for cur in store.load_many(sids[i:i + batch]).values():
            if (isinstance(cur, IngestCursor) and cur.last_offset is not None and cur.last_partition in ends
                    and cur.last_offset >= ends[cur.last_partition]):
                cur.last_partition, cur.last_offset, cur.last_index = None, None, 0
                out.append(cur)
        n += _overwrite(store, out)
    return n


def check(bootstrap: str, redis_client, *, observations_topic: str, key_prefix: str,
          kafka_client_kwargs: dict[str, Any] | None = None, broker_keeps_data: bool = True) -> Incarnation:
    """Compare the broker's marker with the id Redis remembers, repair what a
    broker that lost its data would break (ingest cursors' Kafka positions),
    remember the broker's id, log the outcome (``error`` on a mismatch; ``warning``
    for a broker that is known to keep nothing, the embedded default's in-memory one,
    where new broker data at every start is expected)."""
    broker_id, created = _broker_marker(bootstrap, observations_topic, dict(kafka_client_kwargs or {}))
    key = redis_key(key_prefix)
    raw = redis_client.hget(key, "broker")
    remembered = raw.decode() if isinstance(raw, bytes) else raw
    has_series = _redis_has_series(redis_client, key_prefix)
    repair = Repair()
    behind = 0
    if remembered == broker_id:
        outcome = "same"
        message = f"broker data and Redis data belong together (broker data id {broker_id})"
        ends = log_ends(bootstrap, observations_topic, kafka_client_kwargs) if has_series else {}
        behind = forget_positions_past(redis_client, key_prefix, ends) if ends else 0
        if behind:
            outcome = "broker_behind"
            message = (f"the broker (data id {broker_id}) lost its last writes (its observations log ends before "
                       f"the positions of {behind} ingest cursors, as after a host power loss): those cursors "
                       "dropped their Kafka position, so the re-used offsets are read, not skipped; observations "
                       "the broker lost are gone, states and seq numbers are kept")
    elif has_series and (created or remembered is not None):
        outcome = "broker_data_lost"
        repair = repair_cursors(redis_client, key_prefix)
        was = f"id {remembered}" if remembered else "an unrecorded id"
        message = (f"the broker's data is new (id {broker_id}; Redis was last used with {was}) but Redis kept "
                   f"its series: dropped the Kafka positions of {repair.cursors} ingest cursors; every state, "
                   "patch seq number and time grid is kept and the series go on where they were. Lost with the "
                   "old broker: observations of open patches and "
                   f"{repair.lost_patches} patches of {repair.rewound} series that no worker had applied yet "
                   "(they become all-missing patches). Observations at or before a series' last accepted "
                   "time are rejected as late")
    elif not has_series and not created:
        outcome = "redis_data_lost"
        message = (f"Redis holds no series beside a broker that has data (id {broker_id}): series start "
                   "afresh from the committed offsets; their earlier states are lost")
    else:
        outcome = "first_start"
        message = f"new stack (broker data id {broker_id})"
    fields = {"broker": broker_id, "checked_at": str(int(time.time() * 1000)), "outcome": outcome}
    if outcome == "broker_data_lost":
        fields.update(previous=remembered or "", cursors_reset=str(repair.cursors),
                      lost_patches=str(repair.lost_patches))
    elif outcome == "broker_behind":
        fields.update(cursors_reset=str(behind))
    redis_client.hset(key, mapping=fields)
    reset = behind or repair.cursors
    result = Incarnation(outcome, broker_id, remembered, reset, repair.lost_patches, message)
    if result.mismatch:
        expected = outcome == "broker_data_lost" and not broker_keeps_data
        (log.warning if expected else log.error)(
                  "stack.data_mismatch", expected=expected, outcome=outcome, broker_id=broker_id, remembered_id=remembered,
                  cursors_reset=reset, lost_patches=repair.lost_patches, message=message)
    else:
        log.info("stack.data_checked", outcome=outcome, broker_id=broker_id)
    return result
