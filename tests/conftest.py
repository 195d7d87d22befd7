"""Shared fixtures: one real Tansu broker and one real redis-server per test
session (loopback, free ports), plus per-test isolation by unique topic names,
a flushed database and a unique Redis key prefix.

Fixtures
- ``embedded_broker`` / ``embedded_kafka``: the session's `Broker` / its bootstrap ``"127.0.0.1:PORT"``.
- ``embedded_redis_server`` / ``embedded_redis``: the session's `RedisServer` / its URL.
- ``redis_client``: a ``redis.Redis`` on that server, database flushed before the test.
- ``unique_topics``: a ``TopicSettings`` with fresh names, created (observations,
  patches, forecasts with ``TEST_PARTITIONS`` partitions; alerts, dlq with 1).
- ``make_topics(partitions=...)``: the same, as a factory.
- ``kafka_consumer_kwargs``: bootstrap + the fast consumer-group settings Tansu needs.
- ``service_config``: a ``ServiceConfig`` wired to all of the above (unique topics
  and key prefix), for tests that run ingest/worker code in-process.
- ``tmp_run_dir``: an empty run directory for embedded-stack tests.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from streamflame.embedded import Broker, RedisServer

TEST_PARTITIONS = 4
# Tansu: a consumer-group join takes ~half the session timeout (23 s with defaults).
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 600}


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory) -> Broker:
    broker = Broker(tmp_path_factory.mktemp("broker"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def embedded_kafka(embedded_broker) -> str:
    """Bootstrap address of the session's broker: ``"127.0.0.1:PORT"``."""
    return embedded_broker.bootstrap


@pytest.fixture(scope="session")
def embedded_redis_server(tmp_path_factory) -> RedisServer:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def embedded_redis(embedded_redis_server) -> str:
    """URL of the session's redis-server: ``"redis://127.0.0.1:PORT/0"``."""
    return embedded_redis_server.url


@pytest.fixture()
def redis_client(embedded_redis):
    import redis

    client = redis.Redis.from_url(embedded_redis)
    client.flushall()
    yield client
    client.close()


@pytest.fixture()
def make_topics(embedded_broker):
    """Factory: ``make_topics(partitions=4)`` -> created ``TopicSettings`` with unique names."""
    from streamflame.config import TopicSettings

    def make(partitions: int = TEST_PARTITIONS):
        tag = uuid.uuid4().hex[:10]
        topics = TopicSettings(**{name: f"t{tag}.{name}" for name in TopicSettings.model_fields})
        embedded_broker.create_topics({
            topics.observations: partitions,
            topics.patches: partitions,
            topics.forecasts: partitions,
            topics.alerts: 1,
            topics.dlq: 1,
        })
        return topics

    return make


@pytest.fixture()
def unique_topics(make_topics):
    return make_topics()


@pytest.fixture()
def kafka_consumer_kwargs(embedded_kafka) -> dict:
    """kafka-python KafkaConsumer kwargs: bootstrap, fast group join, read from the start."""
    return {"bootstrap_servers": embedded_kafka, "auto_offset_reset": "earliest", **FAST_GROUP}


@pytest.fixture()
def service_config(embedded_kafka, embedded_redis, unique_topics):
    """ServiceConfig on the session's broker and redis, with this test's own topics,
    key prefix and consumer-group ids (so tests never share state)."""
    from streamflame.config import ServiceConfig

    tag = uuid.uuid4().hex[:8]
    return ServiceConfig(
        kafka={"bootstrap": embedded_kafka, "partitions": TEST_PARTITIONS, **FAST_GROUP},
        redis={"url": embedded_redis, "key_prefix": f"t{tag}"},
        topics=unique_topics.model_dump(),
        ingest={"group_id": f"ingest-{tag}"},
        worker={"group_id": f"worker-{tag}"},
    )


@pytest.fixture()
def tmp_run_dir(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return run_dir
