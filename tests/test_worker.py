"""The worker end to end on a real Tansu broker and a real redis-server: patches
in, forecasts/alerts/DLQ out, states in Redis, replays and failures."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamflame import Forecaster, SeriesState
from streamflame.adapters.state.store import StateStore
from streamflame.config import ConfigError, GroupSettings, ServiceConfig, dump_yaml
from streamflame.core.constants import PATCH_LEN
from streamflame.messages import PatchMessage, decode_alert, decode_dead_letter, decode_forecast, encode, forecast_seed
from streamflame.model import tiny_config
from streamflame.pipeline.worker.worker import Worker

FREQ = 600_000  # 10 min
T0 = 1_704_067_200_000  # 2024-01-01


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return Forecaster.from_config(tiny_config(), seed=3).save(tmp_path_factory.mktemp("model") / "ckpt")


@pytest.fixture(scope="module")
def ref_model(model_dir) -> Forecaster:
    return Forecaster.load(model_dir)


@pytest.fixture()
def cfg(service_config, model_dir) -> ServiceConfig:
    return service_config.model_copy(update={
        "worker": service_config.worker.model_copy(update={"model_path": str(model_dir), "batch_size": 64,
                                                           "batch_deadline_ms": 30}),
        "defaults": GroupSettings(horizon=60, num_samples=20, alert_levels=(0.05, 0.95)),
    })


def values_for(seed: int, n_patches: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n_patches * PATCH_LEN)
    v = 50 + 10 * np.sin(2 * np.pi * t / 144) + rng.normal(0, 1, t.size)
    v[rng.random(t.size) < 0.1] = np.nan
    v[5:9] = np.nan  # a run of missing slots
    return v


def make_patch(sid: str, seq: int, values) -> PatchMessage:
    vals = [None if v != v else float(v) for v in values]
    start = T0 + seq * PATCH_LEN * FREQ
    return PatchMessage(series_id=sid, seq=seq, start_ms=start, freq_ms=FREQ, values=vals,
                        n_observed=sum(v is not None for v in vals), last_obs_ms=start + 47 * FREQ, partition=0,
                        first_offset=seq * 48, last_offset=seq * 48 + 47)


def send(cfg: ServiceConfig, items: list) -> None:
    """Produce PatchMessages (or raw (key, bytes) pairs) to the patches topic."""
    prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap)
    for it in items:
        if isinstance(it, PatchMessage):
            prod.send(cfg.topics.patches, key=it.series_id.encode(), value=encode(it))
        else:
            prod.send(cfg.topics.patches, key=it[0], value=it[1])
    prod.flush()
    prod.close()


def read_all(cfg: ServiceConfig, topic: str, min_count: int, timeout: float = 20.0, settle: float = 0.5) -> list:
    """Every record of ``topic`` from the start: waits for ``min_count``, then
    ``settle`` s more for duplicates that should not be there."""
    c = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, enable_auto_commit=False)
    parts = c.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in parts]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out: list = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    while time.monotonic() < deadline:
        got = c.poll(timeout_ms=100)
        for msgs in got.values():
            out.extend(msgs)
        if len(out) >= min_count:
            quiet_until = quiet_until or time.monotonic() + settle
            if time.monotonic() >= quiet_until:
                break
    c.close()
    assert len(out) >= min_count, f"{topic}: {len(out)} records, expected at least {min_count}"
    return out


def sample(w: Worker, name: str, **labels) -> float:
    return w.metrics.registry.get_sample_value(name, labels) or 0.0


def wait_for(pred, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextmanager
def running(cfg: ServiceConfig):
    w = Worker(cfg)
    errors: list[BaseException] = []

    def target():
        try:
            w.run()
        except BaseException as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    wait_for(lambda: w.ready.is_set() or errors, 30, "the worker to join its group")
    try:
        yield w
    finally:
        w.stop()
        t.join(30)
        assert not t.is_alive(), "worker did not stop"
        assert not errors, errors


def applied(w: Worker) -> float:
    return sample(w, "streamflame_worker_patches_total", outcome="applied")


def in_process(f: Forecaster, g: GroupSettings, sid: str, values: np.ndarray, seed: int = 0):
    s = f.init_state(scale=g.scale, step_seconds=FREQ / 1000)
    out = []
    for k in range(len(values) // PATCH_LEN):
        s = f.update(s, values[k * PATCH_LEN:(k + 1) * PATCH_LEN])
        out.append((s, f.forecast(s, g.horizon, g.quantiles, g.num_samples, seed=forecast_seed(seed, sid, k))))
    return out


def state_hashes(cfg: ServiceConfig, redis_client, sids) -> dict:
    store = StateStore(redis_client, cfg.redis.key_prefix)
    return {sid: redis_client.hgetall(store.key(sid)) for sid in sids}


def with_worker(cfg: ServiceConfig, **settings) -> ServiceConfig:
    return cfg.model_copy(update={"worker": cfg.worker.model_copy(update=settings)})


@pytest.mark.parametrize("publisher", ["process", "inline"])
def test_forecasts_once_per_patch_equal_in_process_and_replays(cfg, redis_client, ref_model, publisher):
    cfg = with_worker(cfg, publisher=publisher)
    g = cfg.defaults
    data = {f"plant-{i}/temp": values_for(i, 3) for i in range(8)}
    patches = [make_patch(sid, k, v[k * 48:(k + 1) * 48]) for k in range(3) for sid, v in data.items()]
    send(cfg, patches + [(b"plant-0/temp", b'{"series_id": "plant-0/temp", "seq": "x"')])
    with running(cfg) as w:
        wait_for(lambda: applied(w) >= 24, what="24 patches applied")
        # worker.torch_threads None = cores - 1, at least 1 (set in the thread that runs the model)
        assert w.torch_threads == max(1, (os.cpu_count() or 1) - 1) and cfg.worker.torch_threads is None
    scored = "streamflame_worker_online_scored_patches_total"
    assert sample(w, scored, group="default") == 16  # seq 1 and 2 of 8 series, each once
    fcs = [decode_forecast(r.value) for r in read_all(cfg, cfg.topics.forecasts, 24)]
    keys = sorted((f.series_id, f.seq) for f in fcs)
    assert keys == sorted((sid, k) for sid in data for k in range(3))  # each exactly once
    by_key = {(f.series_id, f.seq): f for f in fcs}
    for sid, v in data.items():
        ref = in_process(ref_model, g, sid, v)
        for k, (_, fc) in enumerate(ref):
            msg = by_key[(sid, k)]
            np.testing.assert_array_equal(np.asarray(msg.mean), fc.mean)
            for j, key in enumerate(g.quantile_keys):
                np.testing.assert_array_equal(np.asarray(msg.quantiles[key]), fc.quantiles[j])
            assert msg.model_id == ref_model.model_id and msg.samples is None
            assert msg.origin_ms == T0 + (k * 48 + 47) * FREQ and msg.frequency == "10min"
        rec = StateStore(redis_client, cfg.redis.key_prefix).load(sid)
        assert rec.seq == 2 and rec.state == ref[-1][0].to_bytes()
        assert SeriesState.from_bytes(rec.state).n_patches == 3
    (dead,) = [decode_dead_letter(r.value) for r in read_all(cfg, cfg.topics.dlq, 1)]
    assert dead.reason == "bad_patch" and dead.original_bytes().startswith(b'{"series_id": "plant-0/temp"')
    assert dead.source_topic == cfg.topics.patches and dead.component == "worker"

    # Replay with the states in place: every patch is skipped, nothing published, states untouched.
    before = state_hashes(cfg, redis_client, data)
    send(cfg, patches)
    with running(cfg) as w:
        wait_for(lambda: sample(w, "streamflame_worker_patches_total", outcome="skipped") >= 24, what="skips")
        assert applied(w) == 0
    assert sample(w, scored, group="default") == 0  # a replay scores nothing
    assert len(read_all(cfg, cfg.topics.forecasts, 24)) == 24
    assert state_hashes(cfg, redis_client, data) == before

    # Crash between publish and state write, simulated: the states are gone and a
    # fresh consumer group re-reads the topic. Same forecasts, byte-identical records.
    redis_client.delete(*[StateStore(redis_client, cfg.redis.key_prefix).key(s) for s in data])
    replay_cfg = cfg.model_copy(update={"worker": cfg.worker.model_copy(update={"group_id": cfg.worker.group_id + "-r"})})
    with running(replay_cfg) as w:
        wait_for(lambda: applied(w) >= 24, what="replayed patches")
    # A new process re-applying lost states scores them again: its metrics start from zero.
    assert sample(w, scored, group="default") == 16
    again = [decode_forecast(r.value) for r in read_all(cfg, cfg.topics.forecasts, 48)]
    assert len(again) == 48
    for f in again:
        first = by_key[(f.series_id, f.seq)]
        assert f.model_dump(exclude={"produced_at"}) == first.model_dump(exclude={"produced_at"})
    assert state_hashes(cfg, redis_client, data) == before


def test_alert_for_outlier_against_previous_forecast(cfg, redis_client, ref_model):
    g = cfg.defaults
    sid = "line-7"
    v = values_for(11, 2)
    with running(cfg) as w:
        send(cfg, [make_patch(sid, 0, v[:48]), make_patch(sid, 1, v[48:])])
        wait_for(lambda: applied(w) >= 2, what="two patches")
        # The next patch: inside the interval of the forecast after seq 1, except slot 10.
        fc = in_process(ref_model, g, sid, v)[-1][1]
        lo, hi = fc.quantile(0.05)[:48].astype(np.float64), fc.quantile(0.95)[:48].astype(np.float64)
        nxt = (lo + hi) / 2
        nxt[10] = hi[10] + 3 * (hi[10] - lo[10])
        send(cfg, [make_patch(sid, 2, nxt)])
        wait_for(lambda: applied(w) >= 3, what="third patch")
    alerts = [decode_alert(r.value) for r in read_all(cfg, cfg.topics.alerts, 0, timeout=3, settle=1.0)]
    mine = [a for a in alerts if a.forecast_seq == 1]
    assert len(mine) == 1, mine
    a = mine[0]
    assert (a.series_id, a.step, a.direction) == (sid, 11, "above")
    assert a.timestamp_ms == T0 + (2 * 48 + 10) * FREQ and a.value == pytest.approx(nxt[10])
    assert a.lower == pytest.approx(lo[10]) and a.upper == pytest.approx(hi[10]) and a.score == pytest.approx(3, rel=1e-4)


@pytest.mark.parametrize("policy", ["reinit", "quarantine"])
def test_corrupt_state_policy(cfg, redis_client, ref_model, policy):
    """A record that cannot be used when it is read from Redis (here: a worker without
    its state cache, as after a restart or rebalance; with it, see the next test)."""
    cfg = cfg.model_copy(update={"worker": cfg.worker.model_copy(update={"on_corrupt_state": policy,
                                                                         "state_cache_series": 0})})
    store = StateStore(redis_client, cfg.redis.key_prefix)
    sid = "pump-1"
    v = values_for(5, 3)
    with running(cfg) as w:
        send(cfg, [make_patch(sid, 0, v[:48])])
        wait_for(lambda: applied(w) >= 1, what="first patch")
        redis_client.hset(store.key(sid), "state", b"SFST\x01\x00 definitely not a state")
        send(cfg, [make_patch(sid, 1, v[48:96])])
        wait_for(lambda: sample(w, "streamflame_worker_dead_letters_total",
                                reason="corrupt_state" if policy == "reinit" else "series_quarantined") >= 1,
                 what="the corrupt-state dead letter")
        send(cfg, [make_patch(sid, 2, v[96:])])  # the worker keeps going
        wait_for(lambda: w.batches >= 3, what="third batch")
    dead = [decode_dead_letter(r.value) for r in read_all(cfg, cfg.topics.dlq, 1, settle=1.0)]
    fcs = {decode_forecast(r.value).seq for r in read_all(cfg, cfg.topics.forecasts, 1, settle=0.3)}
    rec = store.load(sid)
    if policy == "reinit":
        assert [d.reason for d in dead] == ["corrupt_state"] and "re-initialised" in dead[0].detail
        fresh = ref_model.update(ref_model.update(ref_model.init_state(step_seconds=FREQ / 1000), v[48:96]), v[96:])
        assert rec.seq == 2 and rec.state == fresh.to_bytes()
        assert fcs == {0, 1, 2}
    else:
        assert [d.reason for d in dead] == ["series_quarantined", "series_quarantined"]
        assert rec.quarantined and rec.seq == 0
        aside = redis_client.hgetall(store.quarantine_key(sid))
        assert aside[b"state"] == b"SFST\x01\x00 definitely not a state"
        assert fcs == {0}


def test_a_record_corrupted_behind_a_caching_worker_is_replaced_by_its_own_copy(cfg, redis_client, ref_model):
    """The worker keeps the record it wrote; a record overwritten in Redis behind its back
    at the same seq is not read again: the next patch is computed from the worker's copy
    (what Redis held before the damage) and its write replaces the damaged record."""
    store = StateStore(redis_client, cfg.redis.key_prefix)
    sid = "pump-2"
    v = values_for(6, 3)
    with running(cfg) as w:
        send(cfg, [make_patch(sid, 0, v[:48])])
        wait_for(lambda: applied(w) >= 1, what="first patch")
        redis_client.hset(store.key(sid), "state", b"SFST\x01\x00 definitely not a state")
        send(cfg, [make_patch(sid, 1, v[48:96]), make_patch(sid, 2, v[96:])])
        wait_for(lambda: applied(w) >= 3, what="patches 1-2")
        assert sample(w, "streamflame_worker_state_cache_lookups_total", result="hit") >= 1
    assert store.load(sid).state == in_process(ref_model, cfg.defaults, sid, v)[-1][0].to_bytes()
    assert read_all(cfg, cfg.topics.dlq, 0, timeout=1) == []
    assert sorted(decode_forecast(r.value).seq for r in read_all(cfg, cfg.topics.forecasts, 3)) == [0, 1, 2]


@pytest.mark.parametrize("cache", [0, 100], ids=["no-cache", "cache"])
def test_gap_after_lost_redis_writes_rewinds_and_recovers(cfg, redis_client, ref_model, cache):
    """Without the state cache the gap shows when seq 4 is loaded (one rewind, to seq 2).
    With it, seq 4 is computed from the worker's copy of seq 3 and published; its write is
    refused (Redis is behind: ``gap``), the patch re-read, and the load then shows the gap
    (second rewind): one more identical duplicate of forecast 4, the same final state."""
    cfg = cfg.model_copy(update={"worker": cfg.worker.model_copy(update={"state_cache_series": cache})})
    store = StateStore(redis_client, cfg.redis.key_prefix)
    sid = "meter-9"
    v, p = patches_for(sid, 9, 5)
    with running(cfg) as w:
        send(cfg, p[:2])
        wait_for(lambda: applied(w) >= 2, what="seq 0-1")
        snapshot = redis_client.hgetall(store.key(sid))
        send(cfg, p[2:4])
        wait_for(lambda: applied(w) >= 4, what="seq 2-3")
        # Redis loses the last writes (AOF everysec window): back to seq 1.
        redis_client.delete(store.key(sid))
        redis_client.hset(store.key(sid), mapping=snapshot)
        send(cfg, p[4:])
        wait_for(lambda: store.load(sid).seq == 4, what="recovery to seq 4")
        assert sample(w, "streamflame_worker_rewinds_total") == (2 if cache else 1)
        assert sample(w, "streamflame_worker_state_writes_total", result="gap") == (1 if cache else 0)
    rec = store.load(sid)
    assert rec.state == in_process(ref_model, cfg.defaults, sid, v)[-1][0].to_bytes()
    fcs = [decode_forecast(r.value) for r in read_all(cfg, cfg.topics.forecasts, 8 if cache else 7)]
    assert sorted(f.seq for f in fcs) == [0, 1, 2, 2, 3, 3, 4] + ([4] if cache else [])
    for k in (2, 3, 4) if cache else (2, 3):
        a, b = [f for f in fcs if f.seq == k]
        assert a.model_dump(exclude={"produced_at"}) == b.model_dump(exclude={"produced_at"})
    assert read_all(cfg, cfg.topics.dlq, 0, timeout=1) == []


def start_worker_process(conf, env: dict) -> tuple[subprocess.Popen, list[dict], threading.Thread]:
    """`python -m streamflame worker --config conf`; a thread appends its JSON log lines
    (stderr) to the returned list."""
    proc = subprocess.Popen([sys.executable, "-m", "streamflame", "worker", "--config", str(conf)],
                            env=env, stderr=subprocess.PIPE, text=True)
    lines: list[dict] = []
    reader = threading.Thread(target=lambda: [lines.append(orjson.loads(x)) for x in proc.stderr if x.startswith("{")],
                              daemon=True)
    reader.start()
    return proc, lines, reader


def patches_for(sid: str, seed: int, n: int) -> tuple[np.ndarray, list[PatchMessage]]:
    """``n`` patches (seq 0..n-1) of :func:`values_for` ``(seed, n)`` and the values."""
    v = values_for(seed, n)
    return v, [make_patch(sid, k, v[k * PATCH_LEN:(k + 1) * PATCH_LEN]) for k in range(n)]


def test_cli_ready_file_metrics_and_sigterm(cfg, tmp_path):
    conf = tmp_path / "worker.yaml"
    conf.write_text(dump_yaml(cfg.effective(mask_secrets=False)))
    ready = tmp_path / "ready"
    env = {**os.environ, "STREAMFLAME_READY_FILE": str(ready), "STREAMFLAME_METRICS_PORT": "0"}
    proc, lines, reader = start_worker_process(conf, env)
    try:
        wait_for(ready.exists, 60, "the ready file")
        (url,) = [x["url"] for x in lines if x["event"] == "worker.metrics"]
        send(cfg, [make_patch("cli-1", 0, values_for(1, 1))])
        read_all(cfg, cfg.topics.forecasts, 1)
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "streamflame_worker_forecasts_published_total 1.0" in body
        assert 'streamflame_worker_consumer_lag{partition="' in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    (batch,) = [x for x in lines if x["event"] == "worker.batch"]
    assert batch["size"] == 1 and batch["applied"] == 1 and {"step_ms", "redis_ms", "publish_ms"} <= set(batch)
    assert lines[-1]["event"] == "worker.stopped"


def test_rebalance_drops_the_lag_of_revoked_partitions(cfg):
    """Two workers in one group: after the rebalance each reports lag only for
    partitions it owns, so summing the workers' lag gauges does not double count."""
    def lag_partitions(w: Worker) -> set[str]:
        return {s.labels["partition"] for m in w.metrics.registry.collect() for s in m.samples
                if s.name == "streamflame_worker_consumer_lag"}

    with running(cfg) as w1:
        send(cfg, [make_patch(f"s-{i}", 0, values_for(i, 1)) for i in range(12)])
        wait_for(lambda: applied(w1) >= 12, what="12 patches")
        assert len(lag_partitions(w1)) > 1  # the keys spread over several partitions
        with running(cfg) as w2:
            wait_for(lambda: w1.consumer.assignment() and w2.consumer.assignment()
                     and not (w1.consumer.assignment() & w2.consumer.assignment()), 30, "the rebalance")
            owned = {str(tp.partition) for tp in w1.consumer.assignment()}
            assert lag_partitions(w1) <= owned, (lag_partitions(w1), owned)


@pytest.mark.parametrize("cache", [0, 100], ids=["no-cache", "cache"])
def test_gap_after_redis_lost_a_series_entirely_rewinds_to_the_partition_start(cfg, redis_client, ref_model, cache):
    """Regression (found by `streamflame chaos redis` at 100k observations): Redis
    lost every write of a young series (its key is gone, no meta says where seq 0
    sits); the next patch was a patch_gap without a rewind and the series stayed
    stuck for good. The worker now re-reads the partition from its beginning (with the
    state cache: after the refused write of seq 2 has sent it back to re-read the patch)."""
    cfg = cfg.model_copy(update={"worker": cfg.worker.model_copy(update={"state_cache_series": cache})})
    store = StateStore(redis_client, cfg.redis.key_prefix)
    sid = "meter-10"
    v, p = patches_for(sid, 10, 4)
    with running(cfg) as w:
        send(cfg, p[:2])
        wait_for(lambda: applied(w) >= 2, what="seq 0-1")
        redis_client.delete(store.key(sid))  # every write of the series lost
        send(cfg, p[2:])
        wait_for(lambda: (store.load(sid) or None) is not None and store.load(sid).seq == 3,
                 what="recovery to seq 3")
        assert sample(w, "streamflame_worker_rewinds_total") == (2 if cache else 1)
    rec = store.load(sid)
    assert rec.state == in_process(ref_model, cfg.defaults, sid, v)[-1][0].to_bytes()
    assert read_all(cfg, cfg.topics.dlq, 0, timeout=1) == []


def test_a_lost_last_state_write_is_reapplied_after_restart(cfg, redis_client):
    """Regression (chaos `redis` scenario in CI: 1 of 60 series never finished): Redis lost
    the state write of a series' last patch (AOF everysec) after the worker had committed
    that patch's offset, so no restart re-read it and no later patch revealed the gap.
    Offsets are now committed only `worker.commit_delay_ms` after the writes (with 0 this
    test times out: the restarted worker never sees patch 2 again)."""
    delay_ms = 1000
    cfg = cfg.model_copy(update={"worker": cfg.worker.model_copy(update={"commit_delay_ms": delay_ms})})
    sid = "lost-last"
    _, p = patches_for(sid, 11, 3)
    key = StateStore(redis_client, cfg.redis.key_prefix).key(sid)
    send(cfg, p[:2])
    with running(cfg) as w:
        wait_for(lambda: applied(w) >= 2, what="patches 0-1 applied")
        time.sleep(delay_ms / 1000 + 0.5)                 # their offsets become due and are committed
        before = redis_client.hgetall(key)
        send(cfg, p[2:])
        wait_for(lambda: applied(w) >= 3, what="patch 2 applied")
    assert int(redis_client.hget(key, "seq")) == 2
    redis_client.delete(key)                              # Redis comes back without the last write
    redis_client.hset(key, mapping=before)
    with running(cfg) as w2:
        wait_for(lambda: applied(w2) >= 1, what="the restarted worker re-applying patch 2")
    assert int(redis_client.hget(key, "seq")) == 2


def test_a_killed_publisher_is_replaced_and_no_forecast_is_lost(cfg, redis_client, ref_model):
    """SIGKILL of the worker's publisher process: the batch in hand fails, is re-read,
    and a new publisher sends it; every forecast arrives, duplicates are identical and
    the states equal the in-process ones."""
    g = cfg.defaults
    data = {f"kp-{i}": values_for(20 + i, 4) for i in range(6)}
    with running(cfg) as w:
        send(cfg, [make_patch(sid, 0, v[:48]) for sid, v in data.items()])
        wait_for(lambda: applied(w) >= 6, what="patch 0 of every series")
        first_pid = w.publisher.pid
        os.kill(first_pid, signal.SIGKILL)
        send(cfg, [make_patch(sid, k, v[k * 48:(k + 1) * 48]) for k in range(1, 4) for sid, v in data.items()])
        wait_for(lambda: applied(w) >= 24, 60, "every patch applied")
        assert w.publisher.alive and w.publisher.pid != first_pid
    fcs = [decode_forecast(r.value) for r in read_all(cfg, cfg.topics.forecasts, 24)]
    by_key: dict = {}
    for f in fcs:
        by_key.setdefault((f.series_id, f.seq), []).append(f)
    assert sorted(by_key) == sorted((sid, k) for sid in data for k in range(4))
    store = StateStore(redis_client, cfg.redis.key_prefix)
    for sid, v in data.items():
        ref = in_process(ref_model, g, sid, v)
        for k, (_, fc) in enumerate(ref):
            copies = by_key[(sid, k)]
            np.testing.assert_array_equal(np.asarray(copies[0].mean), fc.mean)
            assert all(c.model_dump(exclude={"produced_at"}) == copies[0].model_dump(exclude={"produced_at"})
                       for c in copies)
        assert store.load(sid).state == ref[-1][0].to_bytes()


@pytest.mark.parametrize("read_ahead", [False, True], ids=["serial", "read-ahead"])
def test_a_batch_computed_on_a_refused_write_is_read_again(cfg, redis_client, ref_model, read_ahead):
    """With the publisher process, batch k+1 is computed from the records batch k is
    writing. When k's write is refused (another writer got there first), k+1 is not
    published: it is read again and computed from what Redis holds. Driven step by step
    (one patch per batch) so that k+1 is computed while k is in the publisher's hands
    (with read-ahead, k+1 is polled while k is computed: it is dropped and re-read too)."""
    cfg = with_worker(cfg, publisher="process", batch_size=1, read_ahead=read_ahead)
    g = cfg.defaults
    sid = "pipe-0"
    v, theirs = values_for(5, 2), values_for(6, 1)
    their_state = in_process(ref_model, g, sid, theirs)[0][0]
    store = StateStore(redis_client, cfg.redis.key_prefix)
    send(cfg, [make_patch(sid, 0, v[:48]), make_patch(sid, 1, v[48:])])
    w = Worker(cfg)
    w._open()
    try:
        def take_one(seq: int) -> None:
            deadline = time.monotonic() + 30
            while not len(w._batch):
                assert time.monotonic() < deadline, f"patch {seq} not read"
                w._take(w._apply_rebalance_events(w.consumer.poll(timeout_ms=200, max_records=1)))
            assert [r.patch.seq for r in w._batch.records] == [seq]

        submit = w.publisher.submit

        def another_writer_first(job):   # seq 0 of someone else lands between our load and our write
            w.publisher.submit = submit
            _, _, _, meta_json, _ = job.cas[sid]
            assert store.save_args({sid: (0, -1, their_state.to_bytes(), meta_json, "0")}).applied == [sid]
            submit(job)

        w.publisher.submit = another_writer_first
        take_one(0)
        w._handle()
        assert w._inflight is not None          # batch 0 is being written
        take_one(1)
        w._handle()                              # batch 1 computed on batch 0's record; then 0 is refused
        assert w._inflight is None and sample(w, "streamflame_worker_state_writes_total", result="stale") == 1
        take_one(1)                              # read again
        w._handle()
        w._settle_inflight()
        assert sample(w, "streamflame_worker_state_writes_total", result="applied") == 1
    finally:
        w._close()
    mine = ref_model.update(their_state, v[48:])
    rec = store.load(sid)
    assert rec.seq == 1 and rec.state == mine.to_bytes()
    fcs = [decode_forecast(r.value) for r in read_all(cfg, cfg.topics.forecasts, 2)]
    assert sorted(f.seq for f in fcs) == [0, 1]            # batch 1's first result was never published
    (f1,) = [f for f in fcs if f.seq == 1]
    ref = ref_model.forecast(mine, g.horizon, g.quantiles, g.num_samples, seed=forecast_seed(0, sid, 1))
    np.testing.assert_array_equal(np.asarray(f1.mean), ref.mean)


def test_worker_matmul_bf16_publishes_the_bf16_forecasters_numbers(cfg, redis_client, tmp_path):
    """worker.matmul: the worker forecasts with that arithmetic (here bf16, as Forecaster.set_arithmetic),
    and a CPU worker refuses tf32 at start with a clear config error."""
    import torch

    f = Forecaster.from_config(tiny_config(), seed=5)
    with torch.no_grad():     # a trained-like flow: a fresh one is the identity (zero-initialised outputs)
        gen = torch.Generator().manual_seed(0)
        for p in f.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model_dir = f.save(tmp_path / "ckpt")
    cfg = with_worker(cfg, matmul="bf16", group_id="worker-bf16", model_path=str(model_dir))
    ref = Forecaster.load(model_dir).set_arithmetic("bf16")
    exact = Forecaster.load(model_dir)
    g = cfg.defaults
    data = {f"bf16-{i}/temp": values_for(100 + i, 2) for i in range(3)}
    send(cfg, [make_patch(sid, k, v[k * 48:(k + 1) * 48]) for k in range(2) for sid, v in data.items()])
    with running(cfg) as w:
        wait_for(lambda: applied(w) >= 6, what="6 patches applied")
    fcs = {(f.series_id, f.seq): f for f in map(decode_forecast, (r.value for r in read_all(cfg, cfg.topics.forecasts, 6)))
           if f.series_id in data}
    differs = False
    for sid, v in data.items():
        for k, ((_, want), (_, plain)) in enumerate(zip(in_process(ref, g, sid, v), in_process(exact, g, sid, v))):
            np.testing.assert_array_equal(np.asarray(fcs[(sid, k)].mean), want.mean)
            differs |= not np.array_equal(want.mean, plain.mean)
    assert differs   # bf16 is not float32: the setting took effect

    with pytest.raises(ConfigError, match="tf32 needs a CUDA device"):
        Worker(with_worker(cfg, matmul="tf32", device="auto")).run()
