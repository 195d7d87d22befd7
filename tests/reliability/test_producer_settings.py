"""kafka.idempotent_producer: Tansu loses an idempotent producer's batches that
were in flight when it was SIGKILLed: they are reported delivered but are not
on the topic after the restart (`streamflame chaos broker --idempotent-producer`
shows the loss, docs/reliability.md). With the setting off, producers send one request at
a time per connection (order kept) and a retry writes the batch again."""
from __future__ import annotations

from streamflame.config import ServiceConfig
from streamflame.embedded.stack import EmbeddedStack
from streamflame.kafka_io import make_producer


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
