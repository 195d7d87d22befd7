"""The ingest consumer against a real Tansu broker and a real redis-server:
end to end (every patch exactly once, bad input in the DLQ with its bytes),
crash consistency (in-process crash points and SIGKILL of `python -m streamflame
ingest`), cursor compare-and-set and quarantine."""
from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from kafka.structs import TopicPartition

from streamflame.adapters.kafka_io import make_consumer, make_producer
from streamflame.config import ServiceConfig, dump_yaml
from streamflame.core.constants import PATCH_LEN
from streamflame.messages import decode_dead_letter, decode_patch
from streamflame.pipeline.ingest.consumer import IngestConsumer
from streamflame.pipeline.ingest.cursor import IngestCursor
from streamflame.pipeline.ingest.cursors import CursorStore

N = PATCH_LEN
T0 = 1_704_067_200_000  # 2024-01-01
FREQ = 60_000
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- helpers


def with_ingest(cfg: ServiceConfig, **ingest) -> ServiceConfig:
    """The test's config with ingest settings changed and a group `fix-*` of frequency 1 min."""
    data = cfg.effective(mask_secrets=False)
    data["ingest"].update({"max_message_bytes": 200_000, "max_gap_steps": 500,
                           "future_tolerance_ms": 3_600_000, **ingest})
    data["groups"] = [{"name": "fixed", "match": "fix-*", "frequency": "1min"}]
    return ServiceConfig(**data)


def read_topic(cfg: ServiceConfig, topic: str, want: int, timeout_s: float = 15.0, settle_s: float = 1.0,
               distinct=None) -> list:
    """All records of `topic` once at least `want` arrived (then `settle_s` more, to see extras).
    With ``distinct`` (record -> identity), `want` counts distinct identities, so that
    duplicates (allowed after a rewind) do not end the wait early."""
    c = make_consumer(cfg, None)
    try:
        parts = c.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + 10
        while not parts and time.monotonic() < deadline:
            time.sleep(0.1)
            parts = c.partitions_for_topic(topic) or set()
        c.assign([TopicPartition(topic, p) for p in sorted(parts)])
        c.seek_to_beginning()
        out, ids = [], set()
        deadline = time.monotonic() + timeout_s
        settle_until = None
        while time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                out += recs
                if distinct is not None:
                    ids.update(map(distinct, recs))
            if (len(out) if distinct is None else len(ids)) >= want:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
        return out
    finally:
        c.close()


def reference_patches(obs: list[tuple[int, float | None]], freq: int = FREQ) -> dict[int, list]:
    """Patches of a valid stream (strictly increasing on-grid timestamps): {seq: values}."""
    t0 = obs[0][0]
    by_slot = {(t - t0) // freq: v for t, v in obs}
    last = max(by_slot)
    return {seq: [by_slot.get(seq * N + j) for j in range(N)] for seq in range((last + 1) // N)}


def run_in_thread(ing: IngestConsumer) -> threading.Thread:
    th = threading.Thread(target=ing.run, name="ingest", daemon=True)
    th.start()
    return th


class Stream:
    """Builds the observations of many series plus bad messages, and what to expect."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.messages: list[tuple[bytes | None, bytes | None]] = []  # (key, value) in produce order
        self.valid: dict[str, list] = {}
        self.dead: Counter = Counter()  # (reason, original bytes, index)

    def series(self, sid: str, n_slots: int, *, batch: bool, big_gap_at: int | None = None) -> list:
        """Valid observations of one series: consecutive start (for inference), random
        gaps, some nulls, optionally one gap spanning whole patches."""
        slots, k = [], 0
        while k < n_slots:
            slots.append(k)
            k += 1 if len(slots) < 5 else self.rng.choice([1, 1, 1, 1, 2, 3])
            if big_gap_at is not None and len(slots) == big_gap_at:
                k += 2 * N + 7
        obs = [(T0 + s * FREQ, None if self.rng.random() < 0.05 and i > 4 else round(self.rng.gauss(0, 10), 6))
               for i, s in enumerate(slots)]
        self.valid[sid] = obs
        chunks, i = [], 0
        while i < len(obs):
            size = self.rng.randint(1, 40) if batch else 1
            chunks.append(obs[i:i + size])
            i += size
        return chunks

    @staticmethod
    def encode(sid: str, chunk: list) -> bytes:
        if len(chunk) == 1:
            return orjson.dumps({"series_id": sid, "timestamp": chunk[0][0], "value": chunk[0][1]})
        return orjson.dumps({"series_id": sid, "timestamps": [t for t, _ in chunk], "values": [v for _, v in chunk]})

    def bad_message(self, key: bytes | None, value: bytes | None, reason: str) -> None:
        self.messages.append((key, value))
        self.dead[(reason, value, None)] += 1


def bad_observation(kind: str, last: int, observed: set[int]) -> tuple[int, str]:
    """A timestamp the assembler must reject, given the last accepted slot, and the reason."""
    open_start = (last + 1) // N * N if (last + 1) % N == 0 else last // N * N
    if kind == "duplicate":
        return T0 + last * FREQ, "duplicate" if last >= open_start else "late"
    if kind == "late":
        k = last - 1
        return T0 + k * FREQ, "duplicate" if k >= open_start and k in observed else "late"
    if kind == "off_grid":
        return T0 + last * FREQ + FREQ // 2, "off_grid"
    if kind == "timestamp_too_far":
        return T0 + (last + 501) * FREQ, "timestamp_too_far"
    return int(time.time() * 1000) + 86_400_000, "future_timestamp"


def build_stream(seed: int = 0, n_series: int = 20):
    """`n_series` series (half with a configured frequency, half inferred; half
    single-form, half batch-form), gaps, nulls, and bad messages of every kind."""
    s = Stream(seed)
    per_series: dict[str, list] = {}
    is_batch: dict[str, bool] = {}
    for i in range(n_series):
        sid = f"{'fix' if i % 2 else 'inf'}-{i:02d}"
        is_batch[sid] = i % 4 >= 2
        per_series[sid] = s.series(sid, s.rng.randint(4 * N, 7 * N), batch=is_batch[sid],
                                   big_gap_at=30 if i % 5 == 0 else None)
    kinds = ["duplicate", "late", "off_grid", "timestamp_too_far", "future_timestamp"]
    nxt = {sid: 0 for sid in per_series}
    last_slot: dict[str, int] = {}
    observed = {sid: {(t - T0) // FREQ for t, _ in obs} for sid, obs in s.valid.items()}
    while nxt:
        for n, sid in enumerate(list(nxt)):
            j = nxt[sid]
            chunk = per_series[sid][j]
            if j in (3, 8):  # a bad observation right before this chunk
                kind = kinds[(int(sid[-2:]) + j) % len(kinds)]
                t, reason = bad_observation(kind, last_slot[sid], observed[sid])
                if is_batch[sid]:  # first element of a batch message: only it is rejected
                    both = [(t, 99.0)] + chunk
                    value = orjson.dumps({"series_id": sid, "timestamps": [x for x, _ in both],
                                          "values": [v for _, v in both]})
                    s.messages.append((sid.encode(), value))
                    s.dead[(reason, value, 0)] += 1
                    chunk = None
                else:
                    value = orjson.dumps({"series_id": sid, "timestamp": t, "value": 99.0})
                    s.messages.append((sid.encode(), value))
                    s.dead[(reason, value, None)] += 1
            if chunk is not None:
                s.messages.append((sid.encode(), Stream.encode(sid, chunk)))
            last_slot[sid] = (per_series[sid][j][-1][0] - T0) // FREQ
            nxt[sid] += 1
            if nxt[sid] == len(per_series[sid]):
                del nxt[sid]
    # message-level rejections (the whole message to the DLQ)
    k = b"fix-01"
    s.bad_message(k, b"{not json", "invalid_json")
    s.bad_message(k, b'{"series_id": "fix-01", "value": "\xff\xfe"}', "invalid_utf8")
    s.bad_message(k, b"[1, 2, 3]", "not_an_object")
    s.bad_message(k, b'{"series_id": "fix-01", "value": 1.0}', "missing_field")
    s.bad_message(k, b'{"series_id": "fix-01", "timestamp": 0, "value": "12"}', "bad_value")
    s.bad_message(k, b'{"series_id": "fix-01", "timestamp": 0, "value": NaN}', "non_finite_value")
    s.bad_message(k, b'{"series_id": "fix-01", "timestamps": [0, 60000], "values": [1.0, Infinity]}', "non_finite_value")
    s.bad_message(k, b'{"series_id": "fix-01", "timestamp": "yesterday", "value": 1.0}', "bad_timestamp")
    s.bad_message(k, b'{"series_id": "fix-01", "timestamps": [0], "values": []}', "length_mismatch")
    s.bad_message(k, b'{"series_id": "fix-01", "timestamp": 0, "value": 1, "values": [1]}', "ambiguous_form")
    s.bad_message(k, b'{"series_id": 17, "timestamp": 0, "value": 1.0}', "bad_series_id")
    long_id = "x" * 300
    s.bad_message(long_id.encode(), orjson.dumps({"series_id": long_id, "timestamp": T0, "value": 1.0}), "series_id_too_long")
    s.bad_message(b"fix-03", orjson.dumps({"series_id": "fix-01", "timestamp": T0, "value": 1.0}), "key_mismatch")
    s.bad_message(None, orjson.dumps({"series_id": "fix-01", "timestamp": T0, "value": 1.0}), "key_mismatch")
    s.bad_message(k, b"", "empty_message")
    big = orjson.dumps({"series_id": "fix-01", "timestamps": [T0] * 30_000, "values": [1.0] * 30_000})
    s.bad_message(k, big, "too_large")
    # put the message-level bad ones at random places (they belong to no valid series)
    bad = s.messages[-16:]
    del s.messages[-16:]
    for m in bad:
        s.messages.insert(s.rng.randrange(len(s.messages)), m)
    expected = {sid: reference_patches(obs) for sid, obs in s.valid.items()}
    return s, expected


def produce(cfg: ServiceConfig, messages) -> None:
    p = make_producer(cfg, linger_ms=5)
    try:
        for key, value in messages:
            p.send(cfg.topics.observations, key=key, value=value)
        p.flush()
    finally:
        p.close()


def patch_id(record) -> tuple[bytes, int]:
    """(key, patch seq) of a patches-topic record: `read_topic`'s ``distinct`` when duplicates may come."""
    return record.key, decode_patch(record.value).seq


def patches_by_key(records) -> dict[tuple[str, int], list]:
    """{(series_id, seq): [PatchMessage, ...]} (all copies)."""
    out: dict[tuple[str, int], list] = {}
    for r in records:
        m = decode_patch(r.value)
        assert r.key == m.series_id.encode()
        out.setdefault((m.series_id, m.seq), []).append(m)
    return out


def check_patches(got: dict, expected: dict[str, dict[int, list]], *, exactly_once: bool) -> None:
    want = {(sid, seq): vals for sid, ps in expected.items() for seq, vals in ps.items()}
    assert set(got) == set(want), (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5])
    for key, copies in got.items():
        if exactly_once:
            assert len(copies) == 1, key
        first = copies[0]
        for c in copies[1:]:
            assert c == first, key  # a duplicate is identical
        assert first.values == want[key], key
        assert first.start_ms == T0 + key[1] * N * FREQ and first.freq_ms == FREQ


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("publisher", ["process", "inline"])
def test_end_to_end_patches_exactly_once_and_bad_input_in_dlq(service_config, redis_client, publisher):
    cfg = with_ingest(service_config, max_poll_records=300, publisher=publisher)
    stream, expected = build_stream(seed=1)
    n_expected = sum(len(p) for p in expected.values())
    assert n_expected >= 80 and sum(stream.dead.values()) >= 40
    assert {r for r, _, _ in stream.dead} >= {"duplicate", "late", "off_grid", "timestamp_too_far",
                                              "future_timestamp", "invalid_json", "key_mismatch", "too_large"}
    assert any(i == 0 for _, _, i in stream.dead)  # an element of a batch message
    assert any(all(v is None for v in vals) for ps in expected.values() for vals in ps.values())

    ing = IngestConsumer(cfg, redis_client=redis_client)
    th = run_in_thread(ing)
    try:
        produce(cfg, stream.messages)
        got = patches_by_key(read_topic(cfg, cfg.topics.patches, n_expected))
        dlq = read_topic(cfg, cfg.topics.dlq, sum(stream.dead.values()), settle_s=0.5)
    finally:
        ing.stop()
        th.join(timeout=15)
    assert not th.is_alive()
    check_patches(got, expected, exactly_once=True)

    letters = [decode_dead_letter(r.value) for r in dlq]
    seen = Counter((d.reason, d.original_bytes(), d.index) for d in letters)
    assert seen == stream.dead
    for d in letters:
        assert d.source_topic == cfg.topics.observations and d.component == "ingest" and d.detail
        assert d.offset >= 0 and 0 <= d.partition < cfg.kafka.partitions

    # cursors: each series' next seq = its number of emitted patches
    store = CursorStore(redis_client, cfg.redis.key_prefix)
    cursors = store.load_many(list(expected))
    for sid, ps in expected.items():
        assert cursors[sid].next_seq == len(ps), sid
    c = ing.counters
    assert c["patches"] == n_expected and c["rejected"] == sum(stream.dead.values())
    assert c["cursor_refused"] == 0 and c["retries"] == 0


def test_a_killed_publisher_fails_the_next_batch_which_is_read_again(service_config, redis_client):
    """SIGKILL of the ingest consumer's publisher process, between batches: handing it
    the next batch fails, nothing of that batch is committed, the partitions are read
    again and a new publisher sends them. Every patch arrives exactly once (the killed
    one had finished its batch; the failed one sent nothing) and the cursors count them."""
    cfg = with_ingest(service_config, commit_interval_ms=0, commit_delay_ms=0, publisher="process")
    sids = [f"fix-k{i}" for i in range(6)]

    def observations(slots):
        return [(sid.encode(), orjson.dumps({"series_id": sid, "timestamp": T0 + k * FREQ, "value": float(k + i)}))
                for k in slots for i, sid in enumerate(sids)]

    def poll_until(cond, what):
        deadline = time.monotonic() + 30
        while not cond():
            assert time.monotonic() < deadline, (what, dict(ing.counters))
            ing.poll_once()

    ing = IngestConsumer(cfg, redis_client=redis_client)
    try:
        produce(cfg, observations(range(N + 1)))
        poll_until(lambda: ing.counters["cursor_writes"] >= len(sids), "patch 0 of every series settled")
        first = ing.publisher.pid
        os.kill(first, signal.SIGKILL)
        ing.publisher.proc.wait(timeout=10)
        produce(cfg, observations(range(N + 1, 2 * N + 1)))
        poll_until(lambda: ing.counters["retries"] >= 1, "the batch handed to the dead publisher failed")
        assert ing.counters["patches"] == 2 * len(sids)   # assembled once, then dropped with the batch
        poll_until(lambda: ing.counters["cursor_writes"] >= 2 * len(sids), "patch 1 settled")
        ing.settle()
        assert ing.publisher.alive and ing.publisher.pid != first
    finally:
        ing.close()
    got = patches_by_key(read_topic(cfg, cfg.topics.patches, 2 * len(sids)))
    want = {sid: {seq: [float(k + i) for k in range(seq * N, (seq + 1) * N)] for seq in (0, 1)}
            for i, sid in enumerate(sids)}
    check_patches(got, want, exactly_once=True)
    cursors = CursorStore(redis_client, cfg.redis.key_prefix).load_many(sids)
    assert {sid: c.next_seq for sid, c in cursors.items()} == {sid: 2 for sid in sids}


class _Crash(Exception):
    pass


class CrashingIngest(IngestConsumer):
    """Dies (without closing) at a chosen point of the first batch, from the
    `crash_batch`-th on, that completes patches."""

    def __init__(self, *a, crash_point: str, crash_batch: int, **kw):
        super().__init__(*a, **kw)
        self.crash_point, self.crash_batch = crash_point, crash_batch
        self.n = 0

    def _publish(self, patches, touched):
        self.n += 1
        crash = self.n >= self.crash_batch and patches
        if crash and self.crash_point == "before_flush":
            raise _Crash
        if crash and self.crash_point == "after_flush":
            self.settle()   # the batches before: their cursors are written
            prod = make_producer(self.cfg)
            for pt in patches:
                prod.send(self.cfg.topics.patches, key=pt.series_id.encode(), value=orjson.dumps(pt._asdict()))
            prod.flush()
            prod.close()
            raise _Crash  # patches out, cursors not written
        super()._publish(patches, touched)
        if crash and self.crash_point == "after_cursors":
            self.settle()
            raise _Crash  # patches acknowledged, cursors written, offsets not committed

    def run(self, max_batches=None):
        try:
            while not self._stop.is_set():
                self.poll_once()
        except _Crash:
            self.abandon()


@pytest.mark.parametrize("crash_point", ["before_flush", "after_flush", "after_cursors"])
def test_crash_in_process_loses_nothing_and_duplicates_are_identical(service_config, redis_client, crash_point):
    cfg = with_ingest(service_config, max_poll_records=150, commit_interval_ms=0, commit_delay_ms=0)
    stream, expected = build_stream(seed=2, n_series=8)
    produce(cfg, stream.messages)
    n_expected = sum(len(p) for p in expected.values())

    first = CrashingIngest(cfg, redis_client=redis_client, crash_point=crash_point, crash_batch=3)
    th = run_in_thread(first)
    th.join(timeout=30)
    assert not th.is_alive() and first.n >= 3 and first._closed
    patches_before = first.counters["patches"]
    assert 0 < patches_before < n_expected  # it died mid-stream

    second = IngestConsumer(cfg, redis_client=redis_client)
    th = run_in_thread(second)
    try:
        got = patches_by_key(read_topic(cfg, cfg.topics.patches, n_expected, timeout_s=20, distinct=patch_id))
    finally:
        second.stop()
        th.join(timeout=15)
    check_patches(got, expected, exactly_once=False)
    dupes = sum(len(v) - 1 for v in got.values())
    if crash_point == "after_cursors":
        # covered observations were skipped on the rewind, not re-emitted or dead-lettered
        assert second.counters["skipped"] > 0
    if crash_point == "after_flush":
        assert dupes > 0  # the re-emitted patches are the identical ones checked above
    dlq = [decode_dead_letter(r.value) for r in read_topic(cfg, cfg.topics.dlq, sum(stream.dead.values()), settle_s=0.3)]
    assert set(Counter((d.reason, d.original_bytes(), d.index) for d in dlq)) == set(stream.dead)


def test_sigkill_mid_stream_and_restart(service_config, redis_client, tmp_path):
    """`python -m streamflame ingest` killed with SIGKILL while observations flow;
    a restarted process completes the stream: no patch lost, duplicates identical."""
    cfg = with_ingest(service_config, max_poll_records=200)
    cfg_file = tmp_path / "ingest.yaml"
    cfg_file.write_text(dump_yaml(cfg.effective(mask_secrets=False)))
    stream, expected = build_stream(seed=3, n_series=20)
    n_expected = sum(len(p) for p in expected.values())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("STREAMFLAME_CONFIG", None)

    def start(name: str) -> tuple[subprocess.Popen, Path]:
        ready = tmp_path / f"{name}.ready"
        log = open(tmp_path / f"{name}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "streamflame", "ingest", "--config", str(cfg_file),
                                 "--ready-file", str(ready)], env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "ingest never became ready"
            time.sleep(0.05)
        return proc, tmp_path / f"{name}.log"

    proc, log1 = start("first")
    half = len(stream.messages) // 2
    produce(cfg, stream.messages[:half])
    # wait until it has emitted some patches, then kill it mid-stream
    store = CursorStore(redis_client, cfg.redis.key_prefix)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if sum(1 for c in store.load_many(list(expected)).values() if c is not None) >= 5:
            break
        time.sleep(0.05)
    rest = stream.messages[half:]

    def trickle():  # the second half in 10 parts, 0.1 s apart: the kill lands while it flows
        for k in range(10):
            produce(cfg, rest[k * len(rest) // 10:(k + 1) * len(rest) // 10])
            time.sleep(0.1)

    producer_thread = threading.Thread(target=trickle)
    producer_thread.start()
    time.sleep(0.15)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    producer_thread.join()
    lines = [json.loads(x) for x in log1.read_text().splitlines() if x.startswith("{")]
    emitted_before_kill = sum(x["patches"] for x in lines if x["event"] == "ingest.batch")
    assert 0 < emitted_before_kill < n_expected  # killed mid-stream
    assert not any(x["event"] == "ingest.stop" for x in lines)

    proc2, log2 = start("second")
    try:
        got = patches_by_key(read_topic(cfg, cfg.topics.patches, n_expected, timeout_s=20, distinct=patch_id))
    finally:
        proc2.send_signal(signal.SIGTERM)
        rc = proc2.wait(timeout=15)
    assert rc == 0, log2.read_text()[-3000:]
    check_patches(got, expected, exactly_once=False)
    stop_lines = [json.loads(x) for x in log2.read_text().splitlines() if '"ingest.stop"' in x]
    assert stop_lines, "no graceful stop on SIGTERM"


# ---------------------------------------------------------------- cursors in Redis


def test_cursor_store_compare_and_set(redis_client):
    store = CursorStore(redis_client, "tcas")
    c1 = IngestCursor("a", freq_ms=1000, anchor_ms=0, next_seq=2, n_covered=96)
    assert store.save_many([c1]).written == 1
    older = IngestCursor("a", freq_ms=1000, anchor_ms=0, next_seq=1, n_covered=200)
    same_seq_fewer = IngestCursor("a", freq_ms=1000, anchor_ms=0, next_seq=2, n_covered=95)
    res = store.save_many([older, same_seq_fewer])
    assert res.written == 0 and res.refused == ["a", "a"]
    assert store.load_many(["a"])["a"] == c1
    assert store.save_many([c1]).written == 1  # equal version: idempotent rewrite
    newer = IngestCursor("a", freq_ms=1000, anchor_ms=0, next_seq=2, n_covered=97)
    assert store.save_many([newer]).written == 1 and store.load_many(["a"])["a"] == newer
    assert redis_client.hget(store.key("a"), "seq") == b"2"
    redis_client.script_flush()  # e.g. redis restarted: the script is reloaded
    assert store.save_many([IngestCursor("b", next_seq=1, n_covered=1)]).written == 1
    assert store.load_many(["zzz"]) == {"zzz": None}


def test_unreadable_cursor_quarantines_the_series(service_config, redis_client):
    cfg = with_ingest(service_config)
    store = CursorStore(redis_client, cfg.redis.key_prefix)
    redis_client.set(store.key("fix-bad"), b"not a hash")  # WRONGTYPE for HGET
    redis_client.hset(store.key("fix-bad2"), "cursor", b"{garbage")
    msgs = [(sid.encode(), orjson.dumps({"series_id": sid, "timestamp": T0 + k * FREQ, "value": 1.0}))
            for k in range(N) for sid in ("fix-bad", "fix-bad2", "fix-ok")]
    ing = IngestConsumer(cfg, redis_client=redis_client)
    th = run_in_thread(ing)
    try:
        produce(cfg, msgs)
        got = patches_by_key(read_topic(cfg, cfg.topics.patches, 1, settle_s=0.5))
        dlq = [decode_dead_letter(r.value) for r in read_topic(cfg, cfg.topics.dlq, 2 * N, settle_s=0.3)]
    finally:
        ing.stop()
        th.join(timeout=15)
    assert list(got) == [("fix-ok", 0)]
    assert Counter((d.reason, d.series_id) for d in dlq) == {("corrupt_state", "fix-bad"): N,
                                                            ("corrupt_state", "fix-bad2"): N}
    assert "delete key" in dlq[0].detail
    assert redis_client.get(store.key("fix-bad")) == b"not a hash"  # left for the operator


def test_null_and_nan_values_travel_as_null(service_config, redis_client):
    cfg = with_ingest(service_config)
    vals = [None if k % 7 == 0 else k / 3 for k in range(N)]
    msg = orjson.dumps({"series_id": "fix-n", "timestamps": [T0 + k * FREQ for k in range(N)], "values": vals})
    ing = IngestConsumer(cfg, redis_client=redis_client)
    th = run_in_thread(ing)
    try:
        produce(cfg, [(b"fix-n", msg)])
        (rec,) = read_topic(cfg, cfg.topics.patches, 1, settle_s=0.3)
    finally:
        ing.stop()
        th.join(timeout=15)
    p = decode_patch(rec.value)
    assert p.values == vals and p.n_observed == sum(v is not None for v in vals)
    assert not any(isinstance(v, float) and math.isnan(v) for v in p.values)
    assert (p.first_offset, p.last_offset) == (rec_offset := p.first_offset, rec_offset)


def test_many_bad_elements_of_one_message_make_one_dead_letter_per_reason(service_config, redis_client):
    """No amplification: 5000 rejected elements of one batch message are quoted once per reason."""
    cfg = with_ingest(service_config)
    ts = [T0 + k * FREQ for k in range(N)] + [T0] * 5000 + [T0 + N * FREQ + 30_000] * 3 + [T0 + N * FREQ]
    msg = orjson.dumps({"series_id": "fix-m", "timestamps": ts, "values": [1.0] * len(ts)})
    ing = IngestConsumer(cfg, redis_client=redis_client)
    th = run_in_thread(ing)
    try:
        produce(cfg, [(b"fix-m", msg)])
        dlq = [decode_dead_letter(r.value) for r in read_topic(cfg, cfg.topics.dlq, 2, settle_s=0.5)]
        patches = read_topic(cfg, cfg.topics.patches, 1, settle_s=0.2)
    finally:
        ing.stop()
        th.join(timeout=15)
    assert len(patches) == 1
    by_reason = {d.reason: d for d in dlq}
    assert sorted(by_reason) == ["late", "off_grid"] and len(dlq) == 2
    late, off = by_reason["late"], by_reason["off_grid"]
    assert late.indices == list(range(N, N + 5000)) and late.index == N and "5000 elements" in late.detail
    assert off.indices == [N + 5000, N + 5001, N + 5002]
    assert late.original_bytes() == msg and late.series_id == "fix-m"
    assert ing.counters["rejected"] == 5003 and ing.counters["dead_letters"] == 2


def test_memory_bounds_spill_open_patches_without_changing_output(service_config, redis_client):
    """With room for 3 series and a pin lag of 40 records, series are constantly
    evicted (open patches spilled into their cursors) and reloaded; across a
    graceful restart the patches are still exactly the reference, exactly once,
    and an idle series no longer holds the committed offset back."""
    cfg = with_ingest(service_config, max_series_in_memory=3, max_pin_lag=40, max_poll_records=50,
                      commit_interval_ms=0, commit_delay_ms=0)
    stream, expected = build_stream(seed=4, n_series=10)
    idle = [(b"fix-idle", orjson.dumps({"series_id": "fix-idle", "timestamp": T0 + k * FREQ, "value": 1.0}))
            for k in range(5)]
    msgs = idle + stream.messages
    n_expected = sum(len(p) for p in expected.values())
    half = len(msgs) // 2
    for part in (msgs[:half], msgs[half:]):
        ing = IngestConsumer(cfg, redis_client=redis_client)
        th = run_in_thread(ing)
        try:
            produce(cfg, part)
            deadline = time.monotonic() + 15
            while ing.counters["records"] < len(part) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            ing.stop()
            th.join(timeout=15)
        assert ing.counters["spilled"] > 0 and ing.counters["evicted"] > 0
        assert len(ing.assemblers) <= 3  # the bound is enforced after each batch
    got = patches_by_key(read_topic(cfg, cfg.topics.patches, n_expected))
    check_patches(got, expected, exactly_once=True)
    cur = CursorStore(redis_client, cfg.redis.key_prefix).load_many(["fix-idle"])["fix-idle"]
    assert cur.open_slots == [[k, 1.0] for k in range(5)] and cur.next_seq == 0
    # the idle series' partition is committed past its open patch
    c = make_consumer(cfg, cfg.ingest.group_id)
    try:
        committed = c.committed(TopicPartition(cfg.topics.observations, cur.open_partition))
    finally:
        c.close()
    assert committed > cur.last_offset


def test_redis_outage_is_survived_by_rewinding(service_config, tmp_path):
    """redis-server stopped mid-stream: batches fail and are retried after a
    rewind; once it is back every patch is there, any duplicate identical."""
    from streamflame.embedded import RedisServer
    import redis as redis_lib

    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        data = service_config.effective(mask_secrets=False)
        data["redis"]["url"] = server.url
        cfg = with_ingest(ServiceConfig(**data), max_poll_records=100, commit_interval_ms=0, commit_delay_ms=0)
        client = redis_lib.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=1)
        stream, expected = build_stream(seed=5, n_series=8)
        n_expected = sum(len(p) for p in expected.values())
        ing = IngestConsumer(cfg, redis_client=client)
        th = run_in_thread(ing)
        try:
            half = len(stream.messages) // 2
            produce(cfg, stream.messages[:half])
            deadline = time.monotonic() + 15
            while ing.counters["cursor_writes"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            port = server.port
            server.stop()
            produce(cfg, stream.messages[half:])
            deadline = time.monotonic() + 15
            while ing.counters["retries"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ing.counters["retries"] > 0
            server = RedisServer(tmp_path / "redis", port=port, appendonly=True).start()
            got = patches_by_key(read_topic(cfg, cfg.topics.patches, n_expected, timeout_s=25, distinct=patch_id))
        finally:
            ing.stop()
            th.join(timeout=15)
        assert not th.is_alive()
        check_patches(got, expected, exactly_once=False)
    finally:
        server.stop()


def test_metrics_endpoint_reports_counters(service_config, redis_client):
    import urllib.request

    from streamflame.pipeline.ingest.metrics import serve

    cfg = with_ingest(service_config)
    msgs = [(b"fix-q", orjson.dumps({"series_id": "fix-q", "timestamps": [T0 + k * FREQ for k in range(N + 3)],
                                     "values": [1.0] * (N + 3)})), (b"fix-q", b"{bad")]
    ing = IngestConsumer(cfg, redis_client=redis_client)
    port = serve(ing, 0)
    th = run_in_thread(ing)
    try:
        produce(cfg, msgs)
        read_topic(cfg, cfg.topics.patches, 1, settle_s=0.2)
        deadline = time.monotonic() + 10
        while ing.counters["rejected"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        ing.stop()
        th.join(timeout=15)
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["streamflame_ingest_patches_total"] == 1
    assert values["streamflame_ingest_observations_total"] == N + 3
    assert values['streamflame_ingest_rejected_total{reason="invalid_json"}'] == 1
    assert values["streamflame_ingest_series"] == 1
    assert values["streamflame_ingest_buffered_observations"] == 3
    assert values["streamflame_ingest_assigned_partitions"] == cfg.kafka.partitions


# ---------------------------------------------------------------- fast path == general path


def _as_consumer_records(topic: str, recs, now_ms: int):
    """Fuzz-generator records as kafka-python ConsumerRecords on 2 partitions, offsets in order."""
    from kafka.consumer.fetcher import ConsumerRecord

    nxt = [0, 0]
    out = []
    for r in recs:
        p = (r.key[-1] if r.key else 0) % 2
        out.append(ConsumerRecord(topic, p, -1, nxt[p], now_ms, 0, r.key, r.value, [], None,
                                  -1 if r.key is None else len(r.key), -1 if r.value is None else len(r.value), -1))
        nxt[p] += 1
    return out


def _hostile_singles(now_ms: int) -> list:
    """Single-observation records that look like the fast path's shape but must not take it
    (or must take it and be judged exactly as the general decoder would)."""
    from streamflame.faults.traffic import Rec

    def rec(key, doc_bytes):
        return Rec(key, doc_bytes, None, "crafted")

    t = T0 + 10_000 * FREQ
    j = lambda d: json.dumps(d, separators=(",", ":")).encode()  # noqa: E731
    return [
        rec(b"v-0", j({"series_id": "v-0", "timestamp": t, "value": 1.5})),            # valid, far ahead
        rec(None, j({"series_id": "v-0", "timestamp": t + FREQ, "value": 1.5})),        # no key, known series
        rec(None, j({"series_id": "never-seen", "timestamp": t, "value": 1.5})),        # no key, unknown series
        rec(b"v-1", j({"series_id": "v-0", "timestamp": t + 2 * FREQ, "value": 1.5})),  # someone else's key
        rec(b"v-0", j({"series_id": "v-0", "timestamp": t + 3 * FREQ, "value": 2})),    # int value
        rec(b"v-0", j({"series_id": "v-0", "timestamp": t + 4 * FREQ, "value": None})),  # null
        rec(b"v-0", j({"series_id": "v-0", "timestamp": t + 5 * FREQ, "value": 1.0, "x": 1})),  # extra field
        rec(b"v-0", b'{"series_id":"v-0","timestamp":%d,"value":NaN}' % (t + 6 * FREQ)),
        rec(b"v-0", b'{"series_id":"v-0","timestamp":%d,"value":1e999}' % (t + 7 * FREQ)),
        rec(b"v-0", b'{"series_id":"v-0","timestamp":%d,"value":1.0%s}' % (t + 8 * FREQ, b" " * 250_000)),  # too large
        rec(b"v-0", j({"series_id": "v-0", "timestamp": now_ms + 7_200_000, "value": 1.0})),  # future
        rec(b"v-0", j({"series_id": "v-0", "timestamp": "2044-01-01T00:00:00Z", "value": 1.0})),
        rec(b"v-0", j({"series_id": "v-0", "timestamp": t + 9 * FREQ, "value": True})),
        rec(b"v-0", j({"series_id": "v-0", "timestamp": t + 9 * FREQ + 1, "value": 1.0})),  # snaps to its slot
        rec(b"v-0", j({"series_id": "v-0", "timestamp": t + 9 * FREQ, "value": 3.0})),  # duplicate of that slot
        rec(b"v-0", j({"series_id": "v-0", "timestamp": t + 5 * FREQ, "value": 3.0})),  # late
        rec(b"v-0", j({"series_id": "v-0", "timestamp": 10**20, "value": 1.0})),         # out of range
        rec(b"v-0", j(["v-0", t, 1.0])),
        rec(b"v-0", j({"series_id": ["v-0"], "timestamp": t, "value": 1.0})),
        rec(b"v-0", j({"series_id": "v-0", "timestamp": t + 10 * FREQ, "values": 1.0})),  # ambiguous
        rec(b"v-0", j({"series_id": "v-0", "timestamp": t + 10 * FREQ, "value": 1.0, "values": [1.0]})),
        rec(b"v-0", j({"series_id": "v-0", "timestamp": t + 11 * FREQ, "value": 1.0, "timestamps": []})),
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_path_gives_exactly_what_the_general_path_gives(service_config, redis_client, seed):
    """The single-observation fast path of IngestConsumer._process against fast_path=False
    (every record through the general decoder): the fuzz generator's traffic (valid series,
    re-deliveries, off-grid, late, decode-level noise) plus crafted look-alikes, cut into
    random poll batches, gives the same patches, dead letters, counters and cursors; and
    the fast path is really taken for most valid records."""
    from streamflame.faults.traffic import build_traffic
    from streamflame.messages import decode_dead_letter

    now_ms = int(time.time() * 1000)
    tr = build_traffic(2500, seed, big_payloads=0)
    recs = list(tr.records)
    rng = random.Random(seed)
    for r in _hostile_singles(now_ms):
        recs.insert(rng.randrange(len(recs) // 2, len(recs)), r)
    cfg = with_ingest(service_config)
    data = cfg.effective(mask_secrets=False)
    data["groups"].append({"name": "valid", "match": "v-*", "frequency": "1min"})
    crs = _as_consumer_records(cfg.topics.observations, recs, now_ms)
    cuts = sorted(rng.sample(range(1, len(crs)), 40))
    batches = [crs[a:b] for a, b in zip([0, *cuts], [*cuts, len(crs)])]

    outcomes = []
    for fast in (True, False):
        data["redis"]["key_prefix"] = f"{service_config.redis.key_prefix}-{fast}"
        c = ServiceConfig(**data)
        ing = IngestConsumer(c, redis_client=redis_client, create_missing_topics=True)
        ing.fast_path = fast
        sent = []
        real_submit = ing.publisher.submit

        def submit(job, _real=real_submit):
            sent.extend(job.messages)
            return _real(job)
        ing.publisher.submit = submit
        try:
            for b in batches:
                by_tp: dict = {}
                for r in b:
                    by_tp.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
                ing._process(by_tp)
                ing.settle()
        finally:
            ing.abandon()
        patches = [(k, orjson.loads(v)) for t, k, v in sent if t == c.topics.patches]
        letters = [decode_dead_letter(v) for t, _, v in sent if t == c.topics.dlq]
        letters = [(d.reason, d.partition, d.offset, d.index, d.indices, d.original, d.series_id) for d in letters]
        per_series: dict = {}
        for k, pt in patches:
            per_series.setdefault(k, []).append(pt)
        sids = sorted({s for s in tr.valid} | set(tr.accepted_noise_series) | {"v-0"})
        cursors = {s: (cur.to_json() if cur is not None else None)
                   for s, cur in CursorStore(redis_client, c.redis.key_prefix).load_many(sids).items()}
        counts = {k: v for k, v in ing.counters.items() if k not in ("fast_records",)}
        outcomes.append((per_series, sorted(letters, key=repr), counts, cursors, ing.counters["fast_records"]))
    (p1, l1, n1, c1, fast1), (p2, l2, n2, c2, fast2) = outcomes
    assert sum(len(v) for v in p1.values()) > 50 and len(l1) > 100        # the traffic is not trivial
    assert p1 == p2
    assert l1 == l2
    assert n1 == n2
    assert c1 == c2
    assert fast2 == 0
    n_single_valid = sum(1 for r in recs if r.expect is None and r.value and b'"timestamp":' in r.value
                         and b'"timestamps"' not in r.value)
    assert fast1 > 0.5 * n_single_valid
