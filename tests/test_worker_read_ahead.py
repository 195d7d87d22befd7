"""``worker.read_ahead`` on the real broker and redis-server: the worker that polls the next
batch and reads its states while a batch computes publishes the same bytes and writes the same
state records as the serial one, a series in consecutive batches included; SIGKILLed mid-run
and restarted, it still applies every patch exactly once in effect."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import orjson
import pytest

from streamflame.adapters.state.store import StateStore
from streamflame.config import ServiceConfig, dump_yaml
from streamflame.core.constants import PATCH_LEN
from streamflame.pipeline.worker.batch import BatchProcessor
from streamflame.pipeline.worker.worker import Worker
from test_worker import (  # noqa: F401 (cfg, model_dir, ref_model: fixtures)
    applied, cfg, in_process, make_patch, model_dir, read_all, ref_model, running, sample, send,
    start_worker_process, values_for, wait_for,
)

SERIES = 16
PATCHES = 4


def stream() -> tuple[dict, list]:
    """The patches of ``SERIES`` series x ``PATCHES`` patches in time order, with a hot series'
    next patch in every fourth record, so it is in every batch of 8 (consecutive batches share
    it), a warm one's in every twelfth (in a batch, often not in the next, then in the one
    after: read while the batch with its last patch is being written), while the others come
    back every ~3 batches (read from Redis, or from the cache)."""
    values = {f"s-{i:02d}": values_for(40 + i, PATCHES) for i in range(SERIES)}
    extra = {"hot": (4, 3, 99), "warm": (12, 5, 98)}   # sid: (every, at, seed)
    for sid, (every, _, seed) in extra.items():
        values[sid] = values_for(seed, PATCHES * SERIES)   # more than enough; cut below
    out: list = []
    seq = dict.fromkeys(extra, 0)

    def add(sid: str, k: int) -> None:
        out.append(make_patch(sid, k, values[sid][k * PATCH_LEN:(k + 1) * PATCH_LEN]))

    for k in range(PATCHES):
        for i in range(SERIES):
            add(f"s-{i:02d}", k)
            for sid, (every, at, _) in extra.items():
                if len(out) % every == at:
                    add(sid, seq[sid])
                    seq[sid] += 1
    for sid in extra:
        values[sid] = values[sid][:seq[sid] * PATCH_LEN]
    return values, out


def on_topics(cfg: ServiceConfig, topics, tag: str, **worker) -> ServiceConfig:
    data = cfg.effective(mask_secrets=False)
    data["defaults"]["alert_levels"] = [0.01, 0.99]     # the worker's per-point alerts on (off by default)
    cfg = ServiceConfig(**data)
    return cfg.model_copy(update={
        "topics": topics, "redis": cfg.redis.model_copy(update={"key_prefix": tag}),
        "worker": cfg.worker.model_copy(update={"group_id": f"worker-{tag}", "batch_size": 8, **worker})})


def published(cfg: ServiceConfig, topic: str, n: int) -> dict:
    """{(series_id, seq or timestamp_ms): [record bytes without produced_at, ...]} of ``topic``."""
    out: dict = {}
    for r in read_all(cfg, topic, n):
        d = orjson.loads(r.value)
        d.pop("produced_at", None)
        key = (d["series_id"], d["seq"] if "seq" in d else d["timestamp_ms"])
        out.setdefault(key, []).append(orjson.dumps(d, option=orjson.OPT_SORT_KEYS))
    return out


def states(cfg: ServiceConfig, redis_client, sids) -> dict:
    store = StateStore(redis_client, cfg.redis.key_prefix)
    return {sid: redis_client.hgetall(store.key(sid)) for sid in sids}


def run_to_end(cfg: ServiceConfig, patches: list, monkeypatch) -> tuple[int, list[list[str]]]:
    """Send ``patches``, run a worker until all are applied; (series read ahead, series per batch).
    Nothing may be refused, rewound or dead-lettered on the way."""
    seen: list[list[str]] = []
    process = BatchProcessor.process

    def recording(self, records, loaded, **kw):
        seen.append([r.patch.series_id for r in records])
        return process(self, records, loaded, **kw)

    send(cfg, patches)
    with monkeypatch.context() as m:
        m.setattr(BatchProcessor, "process", recording)
        with running(cfg) as w:
            wait_for(lambda: applied(w) >= len(patches), 60, "every patch applied")
            assert sample(w, "streamflame_worker_rewinds_total") == 0
            assert all(sample(w, "streamflame_worker_state_writes_total", result=r) == 0
                       for r in ("stale", "conflict", "gap", "blocked"))
    assert read_all(cfg, cfg.topics.dlq, 0, timeout=1) == []
    return w.read_ahead_used, seen


@pytest.mark.parametrize("publisher", ["process", "inline"])
@pytest.mark.parametrize("cache", [0, 10_000], ids=["no-cache", "cache"])
def test_read_ahead_publishes_the_serial_workers_bytes(cfg, make_topics, redis_client, monkeypatch, cache,
                                                       publisher):
    values, patches = stream()
    serial = on_topics(cfg, make_topics(partitions=1), "serial", read_ahead=False, state_cache_series=cache,
                       publisher=publisher)
    ahead = on_topics(cfg, make_topics(partitions=1), "ahead", read_ahead=True, state_cache_series=cache,
                      publisher=publisher)
    used_serial, _ = run_to_end(serial, patches, monkeypatch)
    used_ahead, batches = run_to_end(ahead, patches, monkeypatch)

    assert used_serial == 0
    if cache:   # read ahead: the first patch of series not yet written (no record in Redis)
        assert used_ahead > 0, "no state was read ahead"
    else:       # and, without the cache, each later patch of a series not in the batch before
        assert used_ahead > SERIES, f"{used_ahead} states read ahead"
    assert len(batches) >= 3 and all(set(a) & set(b) for a, b in zip(batches, batches[1:])), \
        "the hot series is in every pair of consecutive batches"
    for topic in ("forecasts", "alerts"):
        mine, theirs = (published(c, getattr(c.topics, topic), 0 if topic == "alerts" else len(patches))
                        for c in (ahead, serial))
        assert mine == theirs and all(len(v) == 1 for v in mine.values()), topic
        assert mine, f"nothing published on {topic}"
    assert len(published(ahead, ahead.topics.forecasts, len(patches))) == len(patches)
    assert states(ahead, redis_client, values) == states(serial, redis_client, values)


def test_read_ahead_worker_killed_mid_run_applies_every_patch_once(cfg, make_topics, redis_client, ref_model,
                                                                   tmp_path):
    """Two SIGKILLs of a `streamflame worker` process (read-ahead on, no cache: every series
    read from Redis, the later batches' reads ahead), each at a different point of the run, then
    a restart to the end: every forecast is there, duplicates are identical, every number and
    state record equals the uninterrupted in-process reference."""
    values, patches = stream()
    c = on_topics(cfg, make_topics(partitions=1), "kill", read_ahead=True, state_cache_series=0, throttle_ms=60)
    conf = tmp_path / "worker.yaml"
    conf.write_text(dump_yaml(c.effective(mask_secrets=False)))
    store = StateStore(redis_client, c.redis.key_prefix)
    send(c, patches)
    n_hot = len(values["hot"]) // PATCH_LEN

    def hot_seq() -> int:
        rec = store.load("hot")
        return -1 if rec is None else rec.seq

    skipped: list[int] = []   # per run: patches found already applied (re-read after a kill)
    for kill_at in (n_hot // 3, 2 * n_hot // 3, None):
        proc, lines, reader = start_worker_process(conf, {**os.environ, "STREAMFLAME_METRICS_PORT": "0"})
        try:
            if kill_at is None:
                wait_for(lambda: all(getattr(store.load(sid), "seq", None) == len(v) // PATCH_LEN - 1
                                     for sid, v in values.items()), 120, "every series at its last patch")
            else:
                wait_for(lambda: hot_seq() >= kill_at, 120, f"the hot series at seq {kill_at}")
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                assert hot_seq() < n_hot - 1, "killed after the end"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            reader.join(5)
        skipped.append(sum(x.get("skipped", 0) for x in lines if x["event"] == "worker.batch"))
    assert skipped[0] == 0 and skipped[1] > 0 and skipped[2] > 0, f"no re-read after a kill: {skipped}"

    g = c.defaults
    fcs = published(c, c.topics.forecasts, len(patches))
    assert sorted(fcs) == sorted((p.series_id, p.seq) for p in patches)
    assert all(len(set(copies)) == 1 for copies in fcs.values()), "duplicates differ"
    for sid, v in values.items():
        ref = in_process(ref_model, g, sid, v)
        for k, (_, fc) in enumerate(ref):
            got = orjson.loads(fcs[(sid, k)][0])
            np.testing.assert_array_equal(np.asarray(got["mean"]), fc.mean, err_msg=f"{sid} seq {k}")
        assert store.load(sid).state == ref[-1][0].to_bytes(), sid


def test_a_rebalance_seen_by_the_read_ahead_poll_drops_the_batch_before_it_computes(cfg, make_topics):
    """The read-ahead poll is a poll like the loop's: a revoke it brings drops the batch about to be
    computed (nothing of it computed or published) and a partition kept is sought back to the batch's
    first offset, so the same patches are read again."""
    c = on_topics(cfg, make_topics(partitions=1), "rebalance", read_ahead=True)
    _, patches = stream()
    send(c, patches[:20])
    w = Worker(c)
    w._open()
    try:
        deadline = time.monotonic() + 30
        while len(w._batch) < 8 and time.monotonic() < deadline:
            w._take(w._apply_rebalance_events(w.consumer.poll(timeout_ms=200, max_records=8)))
        assert len(w._batch) == 8
        (tp,) = w._batch.start
        first = w._batch.start[tp]
        assigned = list(w.consumer.assignment())
        w._listener.on_partitions_revoked(assigned)   # seen by the next poll: the read-ahead one
        w._listener.on_partitions_assigned(assigned)
        w._handle()
        assert w.batches == 0 and w._inflight is None and not len(w._batch)
        assert w.consumer.position(tp) == first, "the dropped batch is read again"
        got: list[int] = []
        deadline = time.monotonic() + 30
        while len(got) < 20 and time.monotonic() < deadline:
            got += [m.offset for msgs in w.consumer.poll(timeout_ms=200).values() for m in msgs]
        assert got == list(range(first, first + 20))
    finally:
        w._close()
