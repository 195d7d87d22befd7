"""kafka.idempotent_producer: Tansu loses an idempotent producer's batches that
were in flight when it was SIGKILLed: they are reported delivered but are not
on the topic after the restart (`streamflame chaos broker --idempotent-producer`
shows the loss, docs/reliability.md). With the setting off, producers send one request at
a time per connection (order kept) and a retry writes the batch again."""
from __future__ import annotations

from streamflame.adapters.kafka_io import make_producer
from streamflame.config import ServiceConfig
from streamflame.embedded.stack import EmbeddedStack

def test_producer_idempotence_follows_the_config(embedded_kafka):
    for flag, idem, inflight in ((True, True, 5), (False, False, 1)):
        cfg = ServiceConfig(kafka={"bootstrap": embedded_kafka, "idempotent_producer": flag})
        p = make_producer(cfg)
        try:
            assert p.config["enable_idempotence"] is idem
            assert p.config["acks"] in ("all", -1)
            assert p.config["max_in_flight_requests_per_connection"] == inflight
        finally:
            p.close(timeout=5)


def test_embedded_stack_children_use_the_non_idempotent_producer(tmp_run_dir):
    from streamflame.embedded.stack import _Child

    stack = EmbeddedStack(tmp_run_dir)
    env = stack._child_env(_Child("ingest", 0, ["x"], 0))
    assert env["STREAMFLAME_KAFKA__IDEMPOTENT_PRODUCER"] == "false"


def test_key_hash_partitioner_places_every_key_where_the_default_partitioner_does(make_topics, embedded_kafka):
    """StreamFlame's producers remember each key's murmur2 hash; the partition of every record
    must stay the one kafka-python's DefaultPartitioner (and the Java client) picks, for any
    key and partition count, and a record without a key still goes somewhere valid."""
    import random

    from kafka.partitioner import DefaultPartitioner

    from streamflame.adapters.kafka_io import KeyHashPartitioner

    rng = random.Random(7)
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(300)]
    keys += [f"plant-{i}/temp".encode() for i in range(100)]
    cfg = ServiceConfig(kafka={"bootstrap": embedded_kafka})
    for n in (1, 3, 4, 7):
        topic = make_topics(n).observations
        placed = []
        for partitioner in (KeyHashPartitioner(max_keys=50), DefaultPartitioner()):
            p = make_producer(cfg, partitioner=partitioner)
            try:
                futures = [p.send(topic, key=k, value=b"v") for k in keys + keys[:50]]  # repeats: hashes remembered
                none = p.send(topic, key=None, value=b"v")
                p.flush()
                placed.append([f.get(timeout=10).partition for f in futures])
                assert 0 <= none.get(timeout=10).partition < n
            finally:
                p.close(timeout=5)
        assert placed[0] == placed[1]
    p = make_producer(cfg)
    assert type(p.config["partitioner"]) is KeyHashPartitioner
    p.close(timeout=5)
