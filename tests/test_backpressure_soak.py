"""Backpressure and soak (issue #5 item 6).

* A worker made slow with ``worker.throttle_ms`` falls behind a fast patch stream:
  its consumer lag grows by thousands of patches (tens of MB) while the worker
  process' RSS stays within a bound far below the backlog, i.e. it pauses
  fetching instead of buffering (kafka-python fetches a partition again only
  once its buffered records are consumed; each poll returns at most
  ``worker.batch_size`` records).
* 30 s of ``streamflame bench soak`` (own embedded stack, supervised ingest and
  worker processes): no child restarts and no lag growth beyond a bound.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamflame.bench.soak import rss_mib, run_soak
from streamflame.config import dump_yaml
from streamflame.core.constants import PATCH_LEN
from streamflame.faults.fuzz import make_model

T0 = 1_704_067_200_000
FREQ = 60_000
PAD = 16_000           # bytes of an ignored field per patch record (PatchMessage ignores unknown keys)
BACKLOG = 8_000        # padded patches produced at once: ~130 MB
# Worker RSS growth allowed while that backlog waits (< half the backlog). Measured growth of a
# worker that pauses fetching: 15-34 MiB (2-core machine, 2026-12-01; with 5,000 patches and a
# 32 MiB bound one CI run in several failed at 34); one that buffered the backlog would grow by ~130.
RSS_BOUND_MIB = 48


def _patch(sid: str, seq: int, pad: int = 0) -> bytes:
    start = T0 + seq * PATCH_LEN * FREQ
    doc = {"series_id": sid, "seq": seq, "start_ms": start, "freq_ms": FREQ,
           "values": [float(j % 7) for j in range(PATCH_LEN)], "n_observed": PATCH_LEN,
           "last_obs_ms": start + (PATCH_LEN - 1) * FREQ, "partition": 0, "first_offset": seq * PATCH_LEN,
           "last_offset": seq * PATCH_LEN + PATCH_LEN - 1}
    if pad:
        doc["pad"] = "p" * pad
    return orjson.dumps(doc)


def test_slow_worker_pauses_fetching_rss_bounded_while_lag_grows(service_config, redis_client, tmp_path):
    cfg = service_config.model_copy(update={"worker": service_config.worker.model_copy(update={
        "model_path": make_model(tmp_path / "model"), "device": "cpu", "batch_size": 16, "batch_deadline_ms": 20,
        "throttle_ms": 1000})})
    conf = tmp_path / "worker.yaml"
    conf.write_text(dump_yaml(cfg.effective(mask_secrets=False)))
    ready = tmp_path / "ready"
    env = {**os.environ, "STREAMFLAME_READY_FILE": str(ready)}
    proc = subprocess.Popen([sys.executable, "-m", "streamflame", "worker", "--config", str(conf)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # reads the worker group's committed offsets (never joins the group)
    offsets = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, group_id=cfg.worker.group_id,
                            enable_auto_commit=False)
    tps = [TopicPartition(cfg.topics.patches, p) for p in range(cfg.kafka.partitions)]
    prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, linger_ms=20, max_request_size=4 * 2**20)

    def committed() -> int:
        return sum(offsets.committed(tp) or 0 for tp in tps)

    def wait(cond, what, timeout=120):
        end = time.monotonic() + timeout
        while not cond():
            assert proc.poll() is None, "the worker died"
            assert time.monotonic() < end, f"timed out waiting for {what}"
            time.sleep(0.2)

    try:
        wait(ready.exists, "the worker's ready file")
        for k in range(32):  # warm-up: model, Redis and Kafka paths allocated before the baseline
            prod.send(cfg.topics.patches, key=f"bp-{k % 8}".encode(), value=_patch(f"bp-{k % 8}", k // 8))
        prod.flush()
        wait(lambda: committed() >= 32, "the warm-up patches")
        base = rss_mib(proc.pid)
        n_series = 200
        for j in range(BACKLOG):
            sid = f"bq-{j % n_series}"
            prod.send(cfg.topics.patches, key=sid.encode(), value=_patch(sid, j // n_series, PAD))
        prod.flush()
        produced = 32 + BACKLOG
        after_produce = committed()
        samples = []
        for _ in range(30):  # 15 s of samples
            samples.append((rss_mib(proc.pid), produced - committed()))
            time.sleep(0.5)
        end_committed = committed()
        assert proc.poll() is None, "the worker died"
    finally:
        prod.close()
        offsets.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    lags = [lag for _, lag in samples]
    peak = max(r for r, _ in samples)
    backlog_mib = min(lags) * (PAD + 900) / 2**20
    # the worker is consuming (slowly) and the backlog stays far larger than what it holds
    assert end_committed > after_produce
    assert min(lags) >= BACKLOG // 2 and backlog_mib >= 2 * RSS_BOUND_MIB
    print(f"worker RSS {base} MiB before the backlog, peak {peak} MiB; lag {lags[0]} -> {lags[-1]} patches "
          f"({backlog_mib:.0f} MiB waiting)")
    assert peak - base <= RSS_BOUND_MIB, (base, peak, samples)


def test_soak_30s_no_restarts_and_lag_bounded(tmp_path):
    rate, n_series = 200.0, 50
    res = run_soak(minutes=0.5, rate=rate, n_series=n_series, sample_s=5, model=make_model(tmp_path / "model"),
                   run_dir=tmp_path / "soak", log=lambda *_: None)
    assert res["restarts"] == {}
    assert len(res["samples"]) >= 6 and res["sent"] >= rate * 10
    lags = [s["obs_lag"] for s in res["samples"]]
    assert all(lag == lag for lag in lags), "metrics of both children answered at every sample"
    # lag never grows beyond 10 s of traffic, and at most 2 patches per series wait for the worker
    assert max(lags) <= 10 * rate, lags
    assert max(s["patch_lag"] for s in res["samples"]) <= 2 * n_series
    for name in ("broker", "redis", "ingest", "worker"):
        assert res["rss_end_mib"][name] is not None, name
