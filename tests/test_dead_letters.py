"""Dead letters keep the rejected record's key and value whole (issue 19: a 10,240-byte key
came back as 4,096 bytes), mark what a letter too large for one request had to cut, and
come in offset order within a batch."""
from __future__ import annotations

import json
import threading

from kafka import KafkaProducer

from test_pipeline_e2e import read_topic
from test_worker import cfg, model_dir  # noqa: F401 (fixtures)

from streamflame.adapters.kafka_io import DeadLetterWriter, max_request_bytes
from streamflame.adapters.state.store import StateStore
from streamflame.config import ServiceConfig
from streamflame.messages import decode_dead_letter
from streamflame.pipeline.ingest.consumer import IngestConsumer

T0 = 1_700_000_000_000


def _obs(sid: str, t: int, v: float = 1.0) -> bytes:
    return json.dumps({"series_id": sid, "timestamp": t, "value": v}).encode()


def test_keys_whole_truncation_marked_and_offset_order(service_config, redis_client):
    data = service_config.effective(mask_secrets=False)
    data["defaults"]["frequency"] = "1min"
    cfg = ServiceConfig(**data)
    long_key = bytes(range(256)) * 40                          # 10,240 bytes, not UTF-8
    huge_key = b"k" * 2**20                                    # 1 MiB: its letter cannot hold it 3 times
    records = [
        (b"s1", b"{not json"),                                 # rejected when decoded
        (b"s1", _obs("s1", T0)),
        (b"s1", _obs("s1", T0 + 60_000)),
        (b"s1", _obs("s1", T0 - 600_000)),                     # rejected by the series' assembler (late)
        (b"s1", b"[1, 2]"),                                    # rejected when decoded
        (long_key, _obs("s2", T0)),                            # key_mismatch
        (huge_key, _obs("s3", T0)),                            # key_mismatch
    ]
    prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, max_request_size=4 * 2**20)
    sent = [prod.send(cfg.topics.observations, key=k, value=v).get(30) for k, v in records]
    prod.close()
    # Everything is in the topic before ingest starts: its first poll reads s1's records in one batch.
    ingest = IngestConsumer(cfg, redis_client=redis_client)
    thread = threading.Thread(target=ingest.run, daemon=True)
    thread.start()
    try:
        dlq = [decode_dead_letter(r.value) for r in read_topic(cfg.kafka.bootstrap, cfg.topics.dlq, want=5)]
    finally:
        ingest.stop()
        thread.join(30)
    s1 = sent[0].partition
    assert [(d.offset, d.reason) for d in dlq if d.partition == s1 and d.key_bytes() == b"s1"] == [
        (sent[0].offset, "invalid_json"), (sent[3].offset, "late"), (sent[4].offset, "not_an_object")]
    (long,) = [d for d in dlq if d.offset == sent[5].offset and d.partition == sent[5].partition]
    assert long.reason == "key_mismatch" and long.key_bytes() == long_key and long.key_truncated is None
    assert long.original_bytes() == records[5][1] and long.original_truncated is None
    (huge,) = [d for d in dlq if d.offset == sent[6].offset and d.partition == sent[6].partition]
    assert huge.key_truncated == 2**20 and huge_key.startswith(huge.key_bytes()) and len(huge.key_bytes()) > 2**18
    assert f"(key truncated: kept {len(huge.key_bytes())} of {2**20} bytes)" in huge.detail
    assert huge.original_bytes() == records[6][1] and huge.original_truncated is None


def test_a_letter_always_fits_one_request(service_config):
    """Whatever a source record carries, key + letter stay within the writer's limit, and
    what was cut is said; what fits is whole."""
    w = DeadLetterWriter.for_config(service_config, "ingest")
    assert w.max_letter_bytes < max_request_bytes(service_config)
    for key, original in [(b"a" * 10_240, b"x" * 1_000_000), (b"\x00" * 300_000, b"y" * 1_500_000),
                          (b"b" * 3_000_000, b"z" * 10), (None, b"w" * 4_000_000), (b"c" * 100, None)]:
        _, k, value = w.message("invalid_json", "test", source_topic="t", partition=0, offset=7, key=key,
                                original=original)
        assert len(value) + len(k or b"") <= w.max_letter_bytes
        d = decode_dead_letter(value)
        for full, got, mark in ((key, d.key_bytes(), d.key_truncated), (original, d.original_bytes(),
                                                                         d.original_truncated)):
            if full is None:
                assert got is None and mark is None
            elif mark is None:
                assert got == full
            else:
                assert mark == len(full) and full.startswith(got) and len(got) < len(full)
    # The 10,240-byte key next to a 1 MB value (ingest's max_message_bytes) is whole.
    _, k, value = w.message("too_large", "t", source_topic="t", partition=0, offset=0, key=b"a" * 10_240,
                            original=b"x" * 1_000_000)
    d = decode_dead_letter(value)
    assert k == d.key_bytes() == b"a" * 10_240 and d.original_bytes() == b"x" * 1_000_000


def test_worker_dead_letters_of_one_batch_in_offset_order(cfg, redis_client):  # noqa: F811 (fixture)
    """An undecodable patch and, after it, a patch of a quarantined series, read in one batch:
    their dead letters in offset order (they were: the processor's rejects, then the bad ones)."""
    from test_worker import make_patch, read_all, running, send, values_for, wait_for

    sid = "pump-9"
    StateStore(redis_client, cfg.redis.key_prefix).quarantine(sid, "test")
    send(cfg, [(sid.encode(), b'{"series_id": "pump-9", "seq": "x"'), make_patch(sid, 0, values_for(1, 1))])
    with running(cfg) as w:
        wait_for(lambda: w.batches >= 1, what="one batch")
    dead = [decode_dead_letter(r.value) for r in read_all(cfg, cfg.topics.dlq, 2)]
    assert [(d.offset, d.reason) for d in dead] == [(0, "bad_patch"), (1, "series_quarantined")]
