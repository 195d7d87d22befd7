"""A real 3-master Redis Cluster started here from redis-server (slots split with
CLUSTER ADDSLOTSRANGE, joined with CLUSTER MEET): the state store's hash-tagged keys
and Lua compare-and-set across the nodes, and ingest + worker running against it."""
from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from test_pipeline_e2e import read_topic
from test_state_store import _rec
from test_worker import model_dir  # noqa: F401 (fixture)

from streamflame.adapters.state.client import connect
from streamflame.adapters.state.store import StateStore
from streamflame.config import GroupSettings, RedisSettings
from streamflame.embedded import RedisServer
from streamflame.embedded.process import free_cluster_port
from streamflame.messages import decode_forecast
from streamflame.pipeline.ingest.consumer import IngestConsumer
from streamflame.pipeline.worker.worker import Worker

SLOTS = ((0, 5460), (5461, 10922), (10923, 16383))


class ClusterNode(RedisServer):
    def config_text(self) -> str:
        return super().config_text() + "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 5000\n"


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three masters on loopback, each owning a third of the slots; yields the nodes."""
    ports: list[int] = []
    while len(ports) < 3:
        p = free_cluster_port()
        if all(abs(p - q) > 1 and abs(p - q) != 10000 for q in ports):
            ports.append(p)
    nodes = [ClusterNode(tmp_path_factory.mktemp(f"cluster{i}"), port=p) for i, p in enumerate(ports)]
    try:
        for n in nodes:
            n.start()
        clients = [n.client() for n in nodes]
        for c, (a, b) in zip(clients, SLOTS):
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", a, b)
        for n in nodes[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port)

        def ok() -> bool:
            infos = [c.execute_command("CLUSTER", "INFO").decode() for c in clients]
            return all("cluster_state:ok" in i and "cluster_known_nodes:3" in i for i in infos)

        _wait(ok, 30, "cluster_state:ok on all three nodes")
        for c in clients:
            c.close()
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def keys_per_node(nodes, pattern: str) -> list[int]:
    out = []
    for n in nodes:
        c = n.client()
        out.append(sum(1 for _ in c.scan_iter(match=pattern, count=1000)))
        c.close()
    return out


def test_state_store_across_three_masters(cluster):
    client = connect(RedisSettings(url=cluster[0].url, cluster=True))
    assert type(client).__name__ == "RedisCluster" and len(client.get_primaries()) == 3
    prefix = f"c{uuid.uuid4().hex[:6]}"
    store = StateStore(client, prefix)
    sids = [f"meter-{i}/kwh" for i in range(600)]
    res = store.save_many({s: _rec(0) for s in sids}, {s: -1 for s in sids})
    assert len(res.applied) == 600 and res.refused == 0
    per_node = keys_per_node(cluster, f"{prefix}:*")
    assert sum(per_node) == 600 and min(per_node) > 100, per_node        # every master holds some series
    # Each key lives on the node that owns its hash-tag slot.
    for n, (a, b) in zip(cluster, SLOTS):
        c = n.client()
        for k in list(c.scan_iter(match=f"{prefix}:*", count=1000))[:50]:
            assert a <= client.keyslot(k) <= b
        c.close()
    # Compare-and-set on every node: odd series advance, even ones replay seq 0 (stale), a few skip (gap).
    upd = {s: _rec(1) if i % 2 else _rec(0, b"replay") for i, s in enumerate(sids)}
    exp = {s: 0 if i % 2 else -1 for i, s in enumerate(sids)}
    for s in sids[:30:3]:
        upd[s], exp[s] = _rec(3), 2
    res = store.save_many(upd, exp)
    gap = set(sids[:30:3])
    assert set(res.applied) == {s for i, s in enumerate(sids) if i % 2 and s not in gap}
    assert set(res.stale) == {s for i, s in enumerate(sids) if not i % 2 and s not in gap}
    assert set(res.gap) == gap
    loaded = store.load_many(sids)
    assert all(loaded[s].seq == (1 if i % 2 and s not in gap else 0) for i, s in enumerate(sids))
    assert all(loaded[s].state == b"state-0" for i, s in enumerate(sids) if not i % 2)   # the replay was refused
    assert store.quarantine(sids[5], "test") and store.load(sids[5]).quarantined
    client.close()


def test_ingest_and_worker_on_the_cluster(cluster, service_config, model_dir):  # noqa: F811
    prefix = f"c{uuid.uuid4().hex[:6]}"
    cfg = service_config.model_copy(update={
        "redis": RedisSettings(url=cluster[1].url, cluster=True, key_prefix=prefix),
        "worker": service_config.worker.model_copy(update={"model_path": str(model_dir), "batch_deadline_ms": 30,
                                                           "device": "cpu"}),
        "defaults": GroupSettings(frequency="1min", horizon=12, num_samples=10),
    })
    sids = [f"line-{i}" for i in range(30)]
    n = 2 * 48 + 1                               # two patches, closed by the 97th observation
    t0 = 1_704_067_200_000
    ingest, worker = IngestConsumer(cfg), Worker(cfg)
    threads = [threading.Thread(target=x.run, daemon=True) for x in (ingest, worker)]
    for t in threads:
        t.start()
    try:
        prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, linger_ms=5)
        rng = np.random.default_rng(0)
        for sid in sids:
            vals = (10 + rng.normal(0, 1, n)).round(3).tolist()
            msg = {"series_id": sid, "timestamps": [t0 + k * 60_000 for k in range(n)], "values": vals}
            prod.send(cfg.topics.observations, key=sid.encode(), value=orjson.dumps(msg))
        prod.flush()
        prod.close()
        fcs = [decode_forecast(r.value) for r in read_topic(cfg.kafka.bootstrap, cfg.topics.forecasts,
                                                             want=2 * len(sids), timeout=90)]
    finally:
        ingest.stop()
        worker.stop()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert ingest.counters["retries"] == 0 and ingest.counters["cursor_refused"] == 0  # cursor CAS on every node
    assert ingest.counters["cursor_writes"] > 0
    assert sorted((f.series_id, f.seq) for f in fcs) == sorted((s, k) for s in sids for k in (0, 1))
    assert all(f.horizon == 12 for f in fcs)
    client = connect(cfg.redis)
    assert {r.seq for r in StateStore(client, prefix).load_many(sids).values()} == {1}
    client.close()
    states = keys_per_node(cluster, f"{prefix}:*:state")
    cursors = keys_per_node(cluster, f"{prefix}:*:ingest")
    assert sum(states) == sum(cursors) == len(sids)
    assert min(states) > 0 and min(cursors) > 0, (states, cursors)     # ingest and worker wrote on every master
