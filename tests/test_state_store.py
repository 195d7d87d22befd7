"""StateStore against a real redis-server: records, compare-and-set, quarantine."""
from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from streamflame.adapters.state.store import BrokenRecord, LastForecast, NaiveScale, StateMeta, StateRecord, StateStore

def _meta(seq: int, alert: bool = False) -> StateMeta:
    interval = None
    if alert:
        interval = LastForecast(seq=seq, start_ms=1_000 + seq, quantile_levels=(0.05, 0.5, 0.95),
                                quantiles=np.stack([np.linspace(-1, 0, 48, dtype=np.float32),
                                                    np.linspace(0.2, 0.3, 48, dtype=np.float32),
                                                    np.linspace(0.5, 2, 48, dtype=np.float32)]),
                                mean=np.linspace(0.1, 0.4, 48, dtype=np.float32), alert_levels=(0.05, 0.95))
    return StateMeta(model_id="sf-test", group="default", freq_ms=60_000, last_slot_ms=seq * 48 * 60_000,
                     src_partition=3, src_offset=100 + seq, forecast=interval,
                     naive=NaiveScale(1.5, 12.25, 47) if alert else NaiveScale())


def _rec(seq: int, payload: bytes | None = None, alert: bool = False) -> StateRecord:
    return StateRecord(seq, payload if payload is not None else f"state-{seq}".encode(), _meta(seq, alert))


@pytest.fixture()
def store(redis_client) -> StateStore:
    return StateStore(redis_client, key_prefix=f"t{uuid.uuid4().hex[:8]}")


def test_round_trip_and_key_layout(store, redis_client):
    blob = bytes(range(256)) * 8  # binary-safe
    res = store.save_many({"a/b c": _rec(0, blob, alert=True)}, expected={"a/b c": -1})
    assert res.applied == ["a/b c"] and res.refused == 0
    assert store.key("a/b c") == f"{store.prefix}:{{a/b c}}:state"
    assert redis_client.type(store.key("a/b c")) == b"hash"
    got = store.load_many(["a/b c", "absent"])
    assert got["absent"] is None
    rec = got["a/b c"]
    assert isinstance(rec, StateRecord)
    assert rec.seq == 0 and rec.state == blob and rec.meta.src_offset == 100
    np.testing.assert_array_equal(rec.meta.alert.lo, np.linspace(-1, 0, 48, dtype=np.float32))
    np.testing.assert_array_equal(rec.meta.alert.hi, np.linspace(0.5, 2, 48, dtype=np.float32))
    assert rec.meta.alert.levels == (0.05, 0.95)
    np.testing.assert_array_equal(rec.meta.forecast.mean, np.linspace(0.1, 0.4, 48, dtype=np.float32))
    assert rec.meta.naive == NaiveScale(1.5, 12.25, 47)
    # Re-encoding the decoded meta is byte-identical (replays write identical records).
    assert rec.meta.to_json() == _meta(0, alert=True).to_json()


def test_cas_applies_next_and_refuses_duplicate_gap_and_conflict(store):
    assert store.save_many({"s": _rec(0)}, {"s": -1}).applied == ["s"]
    assert store.save_many({"s": _rec(1)}, {"s": 0}).applied == ["s"]
    # A replay of seq 1 (computed from seq 0) and of seq 0: duplicates, refused.
    res = store.save_many({"s": _rec(1, b"other")}, {"s": 0})
    assert res.applied == [] and res.stale == {"s": 1}
    assert store.save_many({"s": _rec(0, b"x")}, {"s": -1}).stale == {"s": 1}
    # Skipping seq 2: the stored seq is below what the write was computed from.
    assert store.save_many({"s": _rec(3)}, {"s": 2}).gap == {"s": 1}
    # Several patches applied in one batch: seq 4 from loaded seq 1 is fine ...
    assert store.save_many({"s": _rec(4)}, {"s": 1}).applied == ["s"]
    # ... but a writer that loaded seq 1 and computed seq 6 after another writer
    # moved it to 4 is in conflict (4 is between 1 and 6), not applied.
    assert store.save_many({"s": _rec(6)}, {"s": 1}).conflict == {"s": 4}
    # A write against a record that vanished (Redis lost it) is a gap, never an implicit restart.
    assert store.save_many({"new": _rec(5)}, {"new": 4}).gap == {"new": -1}
    rec = store.load("s")
    assert rec.seq == 4 and rec.state == b"state-4"
    assert store.load("new") is None


def test_concurrent_writers_cannot_both_advance_the_same_seq(store):
    n_series, rounds = 50, 40
    sids = [f"c{i}" for i in range(n_series)]
    wins = {"A": 0, "B": 0}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def writer(name: str) -> None:
        try:
            for k in range(rounds):
                barrier.wait()
                res = store.save_many({s: _rec(k, f"{name}-{k}".encode()) for s in sids}, {s: k - 1 for s in sids})
                wins[name] += len(res.applied)
                assert len(res.applied) + len(res.stale) == n_series, res
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(n,)) for n in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    # Every (series, seq) was applied by exactly one of the two writers.
    assert wins["A"] + wins["B"] == n_series * rounds
    for s, rec in store.load_many(sids).items():
        assert rec.seq == rounds - 1 and rec.state in (b"A-39", b"B-39")


def test_pipelined_batch_of_1000(store, redis_client):
    sids = [f"series-{i:04d}" for i in range(1000)]
    blob = np.random.default_rng(0).bytes(4096)
    res = store.save_many({s: _rec(0, blob) for s in sids}, {s: -1 for s in sids})
    assert sorted(res.applied) == sorted(sids)
    loaded = store.load_many(sids)
    assert all(r.seq == 0 and r.state == blob for r in loaded.values())
    # Half move on, half are replays: one pipeline reports each correctly.
    batch = {s: _rec(1 if i % 2 else 0, blob) for i, s in enumerate(sids)}
    res = store.save_many(batch, {s: 0 if i % 2 else -1 for i, s in enumerate(sids)})
    assert len(res.applied) == 500 and len(res.stale) == 500
    assert set(res.applied) == set(sids[1::2])


def test_script_reloaded_after_redis_forgets_it(store, redis_client):
    redis_client.script_flush()
    assert store.save_many({"f": _rec(0)}, {"f": -1}).applied == ["f"]
    redis_client.script_flush()
    assert store.quarantine("f", "test")


def test_broken_records_are_reported_not_raised(store, redis_client):
    redis_client.set(store.key("wrongtype"), b"garbage")
    redis_client.hset(store.key("badseq"), mapping={"seq": b"x1", "state": b"s", "meta": b"{}"})
    redis_client.hset(store.key("badmeta"), mapping={"seq": b"7", "state": b"s", "meta": b"{not json"})
    got = store.load_many(["wrongtype", "badseq", "badmeta"])
    assert all(isinstance(r, BrokenRecord) and not r.quarantined for r in got.values())
    assert "WRONGTYPE" in got["wrongtype"].reason
    assert got["badseq"].seq is None and got["badmeta"].seq == 7
    # Unreadable envelopes refuse a normal write ...
    res = store.save_many({"wrongtype": _rec(0), "badseq": _rec(3)}, {"wrongtype": -1, "badseq": -1})
    assert res.blocked == {"wrongtype": "unreadable record", "badseq": "unreadable record"}
    # ... and are replaced only when asked (re-initialisation after corruption).
    res = store.save_many({"wrongtype": _rec(0), "badseq": _rec(3)}, {"wrongtype": -1, "badseq": -1},
                          replace_broken=["wrongtype", "badseq"])
    assert sorted(res.applied) == ["badseq", "wrongtype"]
    assert store.load("badseq").seq == 3
    # A readable seq is compared as usual even with bad meta.
    assert store.save_many({"badmeta": _rec(8)}, {"badmeta": 7}).applied == ["badmeta"]
    # replace_broken never overwrites a readable record.
    assert store.save_many({"badmeta": _rec(0)}, {"badmeta": -1}, replace_broken=["badmeta"]).stale == {"badmeta": 8}


def test_quarantine_moves_record_aside_and_blocks_writes(store, redis_client):
    store.save_many({"q": _rec(0, b"payload")}, {"q": -1})
    assert store.quarantine("q", "corrupt_state: bad magic") is True
    assert store.quarantine("q", "again") is False  # idempotent
    rec = store.load("q")
    assert isinstance(rec, BrokenRecord) and rec.quarantined and rec.seq == 0
    assert rec.reason == "corrupt_state: bad magic"
    aside = redis_client.hgetall(store.quarantine_key("q"))
    assert aside[b"state"] == b"payload" and aside[b"quarantine_reason"] == b"corrupt_state: bad magic"
    res = store.save_many({"q": _rec(1)}, {"q": 0}, replace_broken=["q"])
    assert res.blocked == {"q": "quarantined"}
    # A wrong-type key can be quarantined too.
    redis_client.set(store.key("w"), b"junk")
    assert store.quarantine("w", "unreadable")
    aside = redis_client.hgetall(store.quarantine_key("w"))
    assert aside == {b"raw": b"junk", b"quarantine_reason": b"unreadable", b"quarantine_type": b"string"}
    assert store.load("w").quarantined


def test_works_on_redis_cluster(tmp_path):
    """Hash-tagged keys + single-key scripts: the same calls work through RedisCluster
    (a one-node cluster owning every slot, started here)."""
    from streamflame.config import RedisSettings
    from streamflame.embedded import RedisServer
    from streamflame.adapters.state.client import connect

    class ClusterNode(RedisServer):
        def config_text(self) -> str:
            return super().config_text() + "cluster-enabled yes\ncluster-config-file nodes.conf\n"

    from streamflame.embedded.process import free_cluster_port

    node = ClusterNode(tmp_path, port=free_cluster_port())
    node.start()
    try:
        plain = node.client()
        plain.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in plain.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "cluster did not become ok"
            time.sleep(0.05)
        client = connect(RedisSettings(url=node.url, cluster=True))
        assert type(client).__name__ == "RedisCluster"
        store = StateStore(client, "c")
        sids = [f"cl-{i}" for i in range(200)]
        assert len(store.save_many({s: _rec(0) for s in sids}, {s: -1 for s in sids}).applied) == 200
        res = store.save_many({s: _rec(i % 2) for i, s in enumerate(sids)},
                              {s: 0 if i % 2 else -1 for i, s in enumerate(sids)})
        assert len(res.applied) == 100 and len(res.stale) == 100
        assert {r.seq for r in store.load_many(sids).values()} == {0, 1}
        assert store.quarantine("cl-3", "test") and store.load("cl-3").quarantined
        client.close()
    finally:
        node.stop()


def test_meta_of_the_layout_before_online_accuracy_still_reads():
    """Records written before the meta kept the whole last forecast hold only the
    alert interval: they still raise alerts, but carry no mean to score."""
    import orjson

    old = orjson.dumps({"model_id": "sf-test", "group": "default", "freq_ms": 60_000, "last_slot_ms": 0,
                        "src_partition": 1, "src_offset": 7,
                        "alert": {"seq": 4, "start_ms": 9, "levels": [0.1, 0.9], "lo": [0.0] * 48, "hi": [1.0] * 48}})
    meta = StateMeta.from_json(old)
    assert meta.alert.levels == (0.1, 0.9) and meta.forecast.seq == 4 and meta.forecast.mean is None
    np.testing.assert_array_equal(meta.alert.hi, np.ones(48, np.float32))
    assert meta.naive == NaiveScale()
    again = StateMeta.from_json(meta.to_json())  # written back in the new layout
    assert b'"forecast"' in meta.to_json() and again.to_json() == meta.to_json() and again.forecast.mean is None
