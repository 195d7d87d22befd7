"""The embedded services against the real binaries: Tansu (memory and durable
s3-on-moto storage) and redis-server (AOF, auth, ACL users)."""
from __future__ import annotations

import time
import uuid

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamflame.embedded import Broker, RedisServer, RedisTLS, StartupError, create_topics, find_tansu


def _produce(bootstrap: str, topic: str, pairs: list[tuple[bytes, bytes]], partition: int | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for key, value in pairs:
            producer.send(topic, key=key, value=value, partition=partition)
        producer.flush()
    finally:
        producer.close()


def _consume_all(bootstrap: str, topic: str, partitions: int, expected: int, timeout_s: float = 10.0):
    """Manual assignment from the beginning of every partition until `expected` records."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        consumer.seek_to_beginning()
        records = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def test_tansu_binary_is_found_and_executable():
    path = find_tansu()
    assert path.name == "tansu" and path.stat().st_mode & 0o111


def test_broker_round_trip_keeps_key_order_per_partition(embedded_kafka, unique_topics):
    topic = unique_topics.observations
    pairs = [(f"s{i % 5}".encode(), f"{i}".encode()) for i in range(200)]
    _produce(embedded_kafka, topic, pairs)

    records = _consume_all(embedded_kafka, topic, partitions=4, expected=200)
    assert len(records) == 200
    assert sorted(int(r.value) for r in records) == list(range(200))
    # One key lives in one partition, in production order.
    by_key: dict[bytes, list[tuple[int, int]]] = {}
    for r in records:
        by_key.setdefault(r.key, []).append((r.partition, r.offset, int(r.value)))
    for key, rows in by_key.items():
        assert len({p for p, _, _ in rows}) == 1, key
        values_in_offset_order = [v for _, _, v in sorted(rows)]
        assert values_in_offset_order == sorted(values_in_offset_order)


def test_create_topics_sets_partitions_and_is_idempotent(embedded_broker):
    a, b = f"ct-{uuid.uuid4().hex[:8]}-a", f"ct-{uuid.uuid4().hex[:8]}-b"
    assert embedded_broker.create_topics({a: 3, b: 1}) == {a: 3, b: 1}
    # Again, with a different count: the existing topic keeps its partitions.
    assert create_topics(embedded_broker.bootstrap, {a: 6}) == {a: 3}
    # Each partition accepts records.
    for p in range(3):
        _produce(embedded_broker.bootstrap, a, [(b"k", f"p{p}".encode())], partition=p)
    records = _consume_all(embedded_broker.bootstrap, a, partitions=3, expected=3)
    assert sorted((r.partition, r.value) for r in records) == [(0, b"p0"), (1, b"p1"), (2, b"p2")]


def test_create_topics_rejects_bad_spec(embedded_broker):
    with pytest.raises(ValueError, match="partitions"):
        embedded_broker.create_topics({"x-bad": 0})


def test_unique_topics_fixture_creates_requested_partitions(embedded_broker, make_topics):
    topics = make_topics(partitions=2)
    counts = embedded_broker.create_topics({topics.observations: 2, topics.patches: 2, topics.dlq: 1})
    assert counts == {topics.observations: 2, topics.patches: 2, topics.dlq: 1}


def test_redis_round_trip(redis_client):
    redis_client.set("sf:{a}:state", b"\x00\x01payload")
    redis_client.hset("h", mapping={"seq": 3, "meta": "{}"})
    assert redis_client.get("sf:{a}:state") == b"\x00\x01payload"
    assert redis_client.hgetall("h") == {b"seq": b"3", b"meta": b"{}"}


def test_redis_client_fixture_starts_empty(redis_client):
    # The previous test wrote keys; this one must not see them.
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize(
    "appendfsync, crash",
    [
        ("always", True),  # SIGKILL: no shutdown flush; every acknowledged write is in the AOF
        ("everysec", False),  # SIGTERM: redis flushes the AOF on shutdown
    ],
)
def test_redis_aof_restart_keeps_data(tmp_path, appendfsync, crash):
    server = RedisServer(tmp_path, appendonly=True, appendfsync=appendfsync)
    server.start()
    try:
        port = server.port
        client = server.client()
        client.set("k", "v")
        client.rpush("l", 1, 2, 3)
        client.close()
        server.kill() if crash else server.stop()
        server.start()
        assert server.port == port
        client = server.client()
        assert client.get("k") == b"v"
        assert client.lrange("l", 0, -1) == [b"1", b"2", b"3"]
        client.close()
    finally:
        server.stop()


def test_redis_without_aof_loses_data_on_restart(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    try:
        client = server.client()
        client.set("k", "v")
        client.close()
        server.stop()  # a clean shutdown, but `save ""` and no AOF: nothing is written
        server.start()
        client = server.client()
        assert client.get("k") is None
        client.close()
    finally:
        server.stop()


def test_redis_password_and_acl_users(tmp_path):
    server = RedisServer(tmp_path, password="s3cret", users={"ingest": "pw-ingest"})
    server.start()
    try:
        assert server.url.startswith("redis://:s3cret@127.0.0.1:")
        once = {"retry": Retry(NoBackoff(), 0)}  # redis-py would retry a refused AUTH with backoff
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, **once).ping()
        assert redis.Redis.from_url(server.url).ping()
        user = redis.Redis(port=server.port, username="ingest", password="pw-ingest")
        user.set("x", 1)
        assert user.get("x") == b"1"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, username="ingest", password="wrong", **once).ping()
    finally:
        server.stop()


def test_redis_rejects_bad_user_spec(tmp_path):
    with pytest.raises(ValueError, match="ACL user"):
        RedisServer(tmp_path, users={"a b": "pw"})


def test_startup_error_names_the_problem_and_shows_the_log(tmp_path):
    # Two servers cannot share a fixed port: the second fails with its own log in the message.
    first = RedisServer(tmp_path / "a")
    first.start()
    try:
        second = RedisServer(tmp_path / "b", port=first.port)
        second.startup_timeout = 10
        with pytest.raises(StartupError, match=rf"redis on 127.0.0.1:{first.port}.*(exited|not ready)"):
            second.start()
        assert not second.alive
    finally:
        first.stop()


def test_durable_broker_survives_sigkill_and_restart(tmp_path):
    broker = Broker(tmp_path, durable=True)
    broker.start()
    try:
        topic = "durable-test"
        broker.create_topics({topic: 2})
        pairs = [(f"k{i % 7}".encode(), f"v{i}".encode()) for i in range(300)]
        _produce(broker.bootstrap, topic, pairs)
        # Committed group offsets must survive too (ingest and worker resume from them).
        group = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="g-durable", enable_auto_commit=False)
        group.assign([TopicPartition(topic, 0)])
        group.commit({TopicPartition(topic, 0): OffsetAndMetadata(42, "", -1)})
        group.close()

        port = broker.port
        broker.kill()
        assert broker.s3 is not None and broker.s3.alive
        broker.start()
        assert broker.port == port

        records = _consume_all(broker.bootstrap, topic, partitions=2, expected=300)
        assert sorted(r.value for r in records) == sorted(v for _, v in pairs)
        group = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="g-durable", enable_auto_commit=False)
        try:
            assert group.committed(TopicPartition(topic, 0)) == 42
        finally:
            group.close()
    finally:
        broker.stop()
    assert broker.s3 is not None and not broker.s3.alive


def test_memory_broker_loses_topics_on_restart(tmp_path):
    # The contrast that makes the durable test meaningful.
    broker = Broker(tmp_path)
    broker.start()
    try:
        broker.create_topics({"volatile": 1})
        _produce(broker.bootstrap, "volatile", [(b"k", b"v")])
        broker.kill()
        broker.start()
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            assert "volatile" not in admin.list_topics()
        finally:
            admin.close()
    finally:
        broker.stop()


def _self_signed_ca_and_server_cert(directory):
    """A throwaway CA and a server certificate for 127.0.0.1 (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def cert(subject, issuer, public_key, signing_key, is_ca, san=None):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(validity[0]).not_valid_after(validity[1])
                   .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamflame test CA")])
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    ca_cert = cert(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    server_cert = cert(server_name, ca_name, server_key.public_key(), ca_key, False,
                       [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    pem = serialization.Encoding.PEM
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key")}
    paths["ca"].write_bytes(ca_cert.public_bytes(pem))
    paths["cert"].write_bytes(server_cert.public_bytes(pem))
    paths["key"].write_bytes(server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return paths


def test_redis_tls_listener(tmp_path):
    files = _self_signed_ca_and_server_cert(tmp_path)
    tls = RedisTLS(cert_file=files["cert"], key_file=files["key"], ca_file=files["ca"])
    server = RedisServer(tmp_path, password="pw", tls=tls)
    server.start()
    try:
        assert server.tls_url == f"rediss://:pw@127.0.0.1:{server.tls_port}/0"
        secure = redis.Redis.from_url(server.tls_url, ssl_ca_certs=str(files["ca"]))
        secure.set("over-tls", "yes")
        assert secure.get("over-tls") == b"yes"
        # A client that does not trust the CA is refused.
        untrusting = redis.Redis.from_url(server.tls_url, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.ConnectionError, match="(?i)certificate"):
            untrusting.ping()
    finally:
        server.stop()
