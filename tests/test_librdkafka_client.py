"""A librdkafka client (confluent-kafka) against the embedded stack: the real Tansu
broker and redis-server, ingest and worker running together.

- a confluent-kafka producer (idempotent, acks=all, lz4, ``partitioner=murmur2_random``)
  produces single and batch observation messages; each series lands in the partition
  kafka-python's partitioner (the one StreamFlame's own producers use) picks for it;
- a confluent-kafka consumer in a consumer group reads the forecasts: each (series, seq)
  exactly once, with the forecast the in-process ``Forecaster`` gives for the same data;
- kcat works with librdkafka >= 2.2 (the example of docs/clients.md runs as written),
  and Debian 12's kcat (librdkafka 2.0.2) fails as the docs say.

The client versions that work and why older librdkafka does not: docs/clients.md.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer, libversion

from streamflame import Forecaster
from streamflame.adapters.kafka_io import key_partition
from streamflame.config import ServiceConfig
from streamflame.core.constants import PATCH_LEN
from streamflame.messages import decode_forecast, forecast_seed
from streamflame.model import tiny_config
from streamflame.pipeline.ingest.consumer import IngestConsumer
from streamflame.pipeline.worker.worker import Worker

T0 = 1_704_067_200_000
FREQ = 60_000
N_SERIES = 6


def _observations(rng) -> tuple[dict[str, np.ndarray], list[tuple[bytes, bytes]]]:
    """Per series 2 full patches and a partial one (so 2 forecasts each); half the series
    as single messages, half as batch messages of 16."""
    values, msgs = {}, []
    for i in range(N_SERIES):
        sid = f"rdk-{i:02d}/temp"
        n = 2 * PATCH_LEN + 5
        v = 20 + 3 * np.sin(np.arange(n) / (4 + i)) + rng.normal(0, 0.1, n)
        values[sid] = v
        if i % 2:
            for a in range(0, n, 16):
                k = range(a, min(n, a + 16))
                msgs.append((sid.encode(), json.dumps({"series_id": sid, "timestamps": [T0 + j * FREQ for j in k],
                                                       "values": [float(v[j]) for j in k]}).encode()))
        else:
            msgs += [(sid.encode(), json.dumps({"series_id": sid, "timestamp": T0 + j * FREQ,
                                                "value": float(v[j])}).encode()) for j in range(n)]
    return values, msgs


def _consume(consumer: Consumer, want: int, timeout_s: float) -> list:
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        for m in consumer.consume(num_messages=500, timeout=0.5):
            assert m.error() is None, m.error()
            out.append(m)
    return out


def test_confluent_kafka_produces_observations_and_consumes_forecasts(service_config, redis_client, tmp_path):
    assert tuple(int(x) for x in libversion()[0].split(".")[:2]) >= (2, 2), libversion()
    model_dir = Forecaster.from_config(tiny_config(), seed=3).save(tmp_path / "ckpt")
    data = service_config.effective(mask_secrets=False)
    data["defaults"].update({"frequency": "1min", "horizon": 12, "num_samples": 8, "quantiles": [0.1, 0.5, 0.9]})
    data["worker"].update({"model_path": str(model_dir), "batch_size": 16, "batch_deadline_ms": 30, "device": "cpu"})
    cfg = ServiceConfig(**data)
    values, msgs = _observations(np.random.default_rng(7))

    ingest, worker = IngestConsumer(cfg, redis_client=redis_client), Worker(cfg)
    threads = [threading.Thread(target=x.run, daemon=True) for x in (ingest, worker)]
    for t in threads:
        t.start()
    consumer = Consumer({"bootstrap.servers": cfg.kafka.bootstrap, "group.id": f"rdk-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         # Tansu: a group join takes about half the session timeout.
                         "session.timeout.ms": 2000, "heartbeat.interval.ms": 600})
    try:
        delivered, errors = [], []
        producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap, "enable.idempotence": True, "acks": "all",
                             "compression.type": "lz4", "linger.ms": 5, "partitioner": "murmur2_random",
                             "error_cb": lambda e: errors.append(e)})

        def report(err, msg):
            assert err is None, err
            delivered.append((msg.key(), msg.partition()))

        for key, raw in msgs:
            producer.produce(cfg.topics.observations, key=key, value=raw, on_delivery=report)
            producer.poll(0)
        assert producer.flush(30) == 0 and not errors, errors
        assert len(delivered) == len(msgs)

        # murmur2_random puts each series where StreamFlame's own producers would.
        parts = {p for _, p in delivered}
        n_parts = cfg.kafka.partitions
        assert len(parts) > 1
        for key, p in set(delivered):
            assert key_partition(key, n_parts) == p, key

        consumer.subscribe([cfg.topics.forecasts])
        got = _consume(consumer, want=2 * N_SERIES, timeout_s=60)
        extra = _consume(consumer, want=1, timeout_s=2)  # nothing more arrives
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
        ingest.stop()
        worker.stop()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)

    fcs = [decode_forecast(m.value()) for m in got + extra]
    assert sorted((f.series_id, f.seq) for f in fcs) == sorted((sid, k) for sid in values for k in range(2))
    assert all(m.key() == decode_forecast(m.value()).series_id.encode() for m in got)

    f = Forecaster.load(model_dir)
    g = cfg.resolve_group("rdk-00/temp")
    by_key = {(m.series_id, m.seq): m for m in fcs}
    for sid, v in values.items():
        s = f.init_state(scale=g.scale, step_seconds=FREQ / 1000)
        for k in range(2):
            s = f.update(s, v[k * PATCH_LEN:(k + 1) * PATCH_LEN])
            ref_fc = f.forecast(s, g.horizon, g.quantiles, g.num_samples, seed=forecast_seed(cfg.worker.seed, sid, k))
            msg = by_key[(sid, k)]
            assert msg.origin_ms == T0 + ((k + 1) * PATCH_LEN - 1) * FREQ and msg.freq_ms == FREQ
            np.testing.assert_array_equal(np.asarray(msg.mean, dtype=ref_fc.mean.dtype), ref_fc.mean, err_msg=sid)
            for j, level in enumerate(g.quantile_keys):
                np.testing.assert_array_equal(np.asarray(msg.quantiles[level], dtype=ref_fc.quantiles.dtype),
                                              ref_fc.quantiles[j], err_msg=f"{sid} {k} q{level}")


def _kcat(bootstrap: str, *args: str, stdin: str | None = None, lib_dir: Path | None = None):
    env = {**os.environ, **({"LD_LIBRARY_PATH": str(lib_dir)} if lib_dir else {})}
    return subprocess.run(["kcat", "-b", bootstrap, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env=env)


def _kcat_librdkafka(lib_dir: Path | None = None) -> tuple[int, ...]:
    out = subprocess.run(["kcat", "-V"], capture_output=True, text=True, check=True,
                         env={**os.environ, **({"LD_LIBRARY_PATH": str(lib_dir)} if lib_dir else {})}).stdout
    return tuple(int(x) for x in re.search(r"librdkafka (\d+)\.(\d+)", out).groups())


def wheel_librdkafka_dir(tmp_path: Path) -> Path:
    """A folder with ``librdkafka.so.1`` = the librdkafka the confluent-kafka wheel ships
    (for ``LD_LIBRARY_PATH``), as docs/clients.md shows."""
    import confluent_kafka

    (lib,) = (Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs").glob("librdkafka-*.so*")
    out = tmp_path / "rdkafka"
    out.mkdir()
    (out / "librdkafka.so.1").symlink_to(lib)
    return out


def test_kcat_works_with_librdkafka_2_2_and_fails_with_debians_2_0_2(embedded_broker, make_topics, tmp_path):
    """docs/clients.md: kcat works with librdkafka >= 2.2 (here the confluent-kafka wheel's,
    through LD_LIBRARY_PATH); Debian 12's kcat with its librdkafka 2.0.2 fails on Tansu's
    ApiVersions response."""
    topics = make_topics(partitions=2)
    bootstrap = embedded_broker.bootstrap
    lines = [f's{i}:{{"series_id": "s{i}", "timestamp": {T0 + i * FREQ}, "value": {i}.5}}' for i in range(4)]

    lib_dir = wheel_librdkafka_dir(tmp_path)
    assert _kcat_librdkafka(lib_dir) >= (2, 2)
    produced = _kcat(bootstrap, "-P", "-t", topics.observations, "-K:", "-X", "partitioner=murmur2_random",
                     stdin="\n".join(lines) + "\n", lib_dir=lib_dir)
    assert produced.returncode == 0, produced.stderr
    consumed = _kcat(bootstrap, "-C", "-t", topics.observations, "-o", "beginning", "-e", "-f", "%k:%s\n",
                     lib_dir=lib_dir)
    assert consumed.returncode == 0, consumed.stderr
    assert sorted(consumed.stdout.splitlines()) == sorted(lines)

    system = _kcat(bootstrap, "-L", "-t", topics.observations)
    if _kcat_librdkafka() < (2, 2):
        assert system.returncode != 0 and "Read underflow" in system.stderr, (system.stdout, system.stderr)
    else:
        assert system.returncode == 0 and topics.observations in system.stdout, system.stderr


def test_kcat_example_of_docs_clients_md_runs_as_written(embedded_broker, make_topics, tmp_path):
    """The bash block of docs/clients.md, "kcat", run from a folder laid out like the
    repository root (.venv, .streamflame/run.json); only the topic names and the scratch
    folder are replaced by this test's own."""
    import sys

    from kafka import KafkaProducer

    from test_pipeline_e2e import read_topic

    text = (Path(__file__).resolve().parent.parent / "docs" / "clients.md").read_text()
    block = re.search(r"^## kcat\n.*?```bash\n(.*?)```", text, re.S | re.M).group(1)
    topics = make_topics(partitions=2)
    script = (block.replace("/tmp/rdkafka", str(tmp_path / "rdkafka"))
              .replace("streamflame.observations", topics.observations)
              .replace("streamflame.forecasts", topics.forecasts))
    root = tmp_path / "root"
    (root / ".streamflame").mkdir(parents=True)
    (root / ".venv").symlink_to(sys.prefix)
    (root / ".streamflame" / "run.json").write_text(json.dumps({"kafka_bootstrap": embedded_broker.bootstrap}))
    prod = KafkaProducer(bootstrap_servers=embedded_broker.bootstrap)
    prod.send(topics.forecasts, key=b"pump-7", value=b'{"series_id": "pump-7", "seq": 0}')
    prod.flush()
    prod.close()

    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ['pump-7 {"series_id": "pump-7", "seq": 0}']
    (rec,) = read_topic(embedded_broker.bootstrap, topics.observations, want=1)
    assert rec.key == b"pump-7" and rec.partition == key_partition(b"pump-7", 2)
    assert json.loads(rec.value) == {"series_id": "pump-7", "timestamp": "2024-01-01T00:00:00Z", "value": 1.5}
