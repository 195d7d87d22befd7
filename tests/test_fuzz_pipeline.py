"""`streamflame fuzz` at CI size: 5,000 generated records (valid traffic of some
series interleaved with hostile records, two of them 10 MiB) through the real
ingest and worker on the session's Tansu broker and redis-server."""
from __future__ import annotations

import uuid

from streamflame.adapters.kafka_io import create_topics
from streamflame.faults.fuzz import fuzz_config, make_model, run_fuzz
from streamflame.faults.traffic import build_traffic

def test_fuzz_5000_records_no_crash_every_rejection_in_dlq_valid_states_equal(embedded_kafka, embedded_redis,
                                                                              redis_client, tmp_path):
    cfg = fuzz_config(embedded_kafka, embedded_redis, make_model(tmp_path / "model"), tag=uuid.uuid4().hex[:8])
    create_topics(cfg)
    traffic = build_traffic(5_000, seed=7, big_payloads=2)
    assert len(traffic.records) == 5_000
    reasons = traffic.expected_reasons
    # the generator covers every ingest reason a record can earn without a wall-clock limit
    assert set(reasons) >= {"empty_message", "too_large", "invalid_utf8", "invalid_json", "not_an_object",
                            "missing_field", "ambiguous_form", "bad_series_id", "series_id_too_long",
                            "bad_timestamp", "bad_value", "non_finite_value", "length_mismatch", "key_mismatch",
                            "off_grid", "timestamp_too_far", "late", "duplicate"}
    assert sum(r.kind == "10mib_payload" for r in traffic.records) == 2

    res = run_fuzz(cfg, traffic, timeout_s=240, log=lambda *_: None)

    assert res["problems"] == [] and res["ok"]
    assert res["dead_letters_by_reason"] == res["expected_by_reason"] == dict(sorted(reasons.items()))
    assert res["valid_states_equal"] == res["valid_series"] == len(traffic.valid) >= 4
    assert set(res["extreme_series_seq"]) == set(traffic.accepted_noise_series)
