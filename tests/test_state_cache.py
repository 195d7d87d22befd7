"""The worker's cache of its own applied writes (streamflame.adapters.state.cache): LRU bounds, and
on a real broker and redis-server, that a hit reads nothing from Redis and computes what a
load would have."""
from __future__ import annotations

import pytest

from test_worker import applied, cfg, in_process, make_patch, model_dir, ref_model, running, sample, send, \
    values_for, wait_for  # noqa: F401  (fixtures)

from streamflame.adapters.state.cache import StateCache
from streamflame.adapters.state.store import StateMeta, StateRecord

META = StateMeta(model_id="m", group="default", freq_ms=1000, last_slot_ms=0, src_partition=0, src_offset=0)


def rec(seq: int) -> StateRecord:
    import numpy as np

    from streamflame import SeriesState
    batch = np.zeros((4, 8), np.float32)              # an update_many row is a view of its batch
    return StateRecord(seq, b"bytes-%d" % seq, META,
                       decoded=SeriesState("m", "float32", {"h": batch[1]}, np.zeros(0, np.float32), 48, 1))


def test_lru_bound_hits_misses_and_slim_entries():
    c = StateCache(3)
    c.put_many({"a": rec(0), "b": rec(0), "c": rec(0)})
    hits, misses = c.split(["a", "x"])             # touches "a": "b" is now the oldest
    assert list(hits) == ["a"] and misses == ["x"] and (c.hits, c.misses) == (1, 1)
    assert hits["a"].state == b"" and hits["a"].seq == 0
    kept = hits["a"].decoded.tensors["h"]
    assert kept.base is None and kept.shape == (8,)   # owns its row, not the whole batch
    c.put_many({"d": rec(1)})
    assert "b" not in c and len(c) == 3 and all(k in c for k in "acd")
    c.evict(["a", "zz"])
    assert "a" not in c and len(c) == 2
    c.clear()
    assert len(c) == 0
    with pytest.raises(ValueError, match="decoded"):
        c.put_many({"e": StateRecord(0, b"x", META)})


def test_disabled_cache_keeps_nothing():
    c = StateCache(0)
    c.put_many({"a": rec(0)})
    assert len(c) == 0 and c.split(["a"]) == ({}, ["a"])
    with pytest.raises(ValueError):
        StateCache(-1)


def hmget_calls(redis_client) -> int:
    return int((redis_client.info("commandstats").get("cmdstat_hmget") or {}).get("calls", 0))


@pytest.mark.parametrize("size", [0, 1000], ids=["off", "on"])
def test_a_cache_hit_reads_nothing_from_redis_and_gives_the_loaded_result(cfg, redis_client, ref_model, size):
    """Patch 1 of 12 series after patch 0 was applied by the same worker: with the cache, no
    HMGET at all (12 hits); without, one per series. The states written equal the in-process
    ones either way (so do the forecasts: tests/test_pipeline_e2e.py runs with the cache)."""
    cfg = cfg.model_copy(update={"worker": cfg.worker.model_copy(update={"state_cache_series": size})})
    data = {f"cache-{i}": values_for(40 + i, 2) for i in range(12)}
    from streamflame.adapters.state.store import StateStore
    store = StateStore(redis_client, cfg.redis.key_prefix)
    with running(cfg) as w:
        send(cfg, [make_patch(sid, 0, v[:48]) for sid, v in data.items()])
        wait_for(lambda: applied(w) >= 12, what="patch 0 of every series")
        before = hmget_calls(redis_client)
        send(cfg, [make_patch(sid, 1, v[48:]) for sid, v in data.items()])
        wait_for(lambda: applied(w) >= 24, what="patch 1 of every series")
        reads = hmget_calls(redis_client) - before
        hits = sample(w, "streamflame_worker_state_cache_lookups_total", result="hit")
    if size:
        assert reads == 0 and hits == 12
    else:
        assert reads == 12 and hits == 0
    for sid, v in data.items():
        assert store.load(sid).state == in_process(ref_model, cfg.defaults, sid, v)[-1][0].to_bytes()


def test_a_write_by_another_worker_evicts_and_the_series_continues_from_redis(cfg, redis_client, ref_model):
    """Another writer advanced a cached series behind this worker's back (a rebalance's old
    owner, say): this worker's write of that seq is refused (stale), its copy dropped, and
    the next patch is computed from what Redis holds, not from the dropped copy."""
    from streamflame.adapters.state.store import StateStore
    store = StateStore(redis_client, cfg.redis.key_prefix)
    sid = "cache-shared"
    v = values_for(77, 3)
    states = in_process(ref_model, cfg.defaults, sid, v)
    with running(cfg) as w:
        send(cfg, [make_patch(sid, 0, v[:48])])
        wait_for(lambda: applied(w) >= 1, what="patch 0")
        r0 = store.load(sid)
        other = StateRecord(1, states[1][0].to_bytes(), r0.meta)       # the other worker's seq 1
        assert store.save_many({sid: other}, {sid: 0}).applied == [sid]
        send(cfg, [make_patch(sid, 1, v[48:96])])
        wait_for(lambda: sample(w, "streamflame_worker_state_writes_total", result="stale") >= 1,
                 what="the refused write of seq 1")
        assert sid not in w.cache
        send(cfg, [make_patch(sid, 2, v[96:])])
        wait_for(lambda: store.load(sid).seq == 2, what="seq 2 from the Redis record")
    assert store.load(sid).state == states[2][0].to_bytes()
