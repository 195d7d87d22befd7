"""streamflame.embedded.incarnation against a real Tansu broker and redis-server: the check
`streamflame up` runs before ingest and worker start, and the cursor repair
that lets a series go on beside a broker that lost its data."""
from __future__ import annotations

import uuid

import pytest

from streamflame.embedded import Broker, incarnation
from streamflame.pipeline.ingest.assembler import ACCEPTED, SKIPPED, AssemblerSettings, SeriesAssembler
from streamflame.pipeline.ingest.cursor import IngestCursor
from streamflame.pipeline.ingest.cursors import CursorStore

FREQ = 60_000
T0 = 1_704_067_200_000
SETTINGS = AssemblerSettings(freq_inference_points=3)


@pytest.fixture()
def prefix() -> str:
    return f"inc{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def fresh_broker(tmp_path):
    broker = Broker(tmp_path / "fresh")  # memory storage: a broker with no data
    broker.start()
    yield broker
    broker.stop()


def _check(bootstrap: str, redis_client, prefix: str) -> incarnation.Incarnation:
    return incarnation.check(bootstrap, redis_client, observations_topic=f"{prefix}.observations", key_prefix=prefix)


def _assembled(n_obs: int, partition: int = 1, first_offset: int = 0) -> SeriesAssembler:
    """A series fed `n_obs` one-minute observations (one record each) from `first_offset`."""
    a = SeriesAssembler("s1", SETTINGS, FREQ)
    out: list = []
    for i in range(n_obs):
        assert a.add(T0 + i * FREQ, float(i), partition, first_offset + i, 0, None, out, []) == ACCEPTED
    return a


def test_same_broker_and_redis_are_recognised(embedded_kafka, redis_client, prefix):
    first = _check(embedded_kafka, redis_client, prefix)
    assert first.outcome == "first_start" and not first.mismatch
    again = _check(embedded_kafka, redis_client, prefix)
    assert again.outcome == "same" and again.broker_id == first.broker_id == again.remembered_id
    assert redis_client.hget(f"{prefix}:incarnation", "broker").decode() == first.broker_id


def test_fresh_broker_beside_persisted_cursors_is_repaired(embedded_kafka, fresh_broker, redis_client, prefix):
    old = _check(embedded_kafka, redis_client, prefix)
    store = CursorStore(redis_client, prefix)
    # 130 observations at offsets 1000..1129 of partition 1: patches 0 and 1 emitted,
    # 34 observations open (spilled into the cursor), the worker applied only patch 0.
    a = _assembled(130, first_offset=1000)
    store.save_many([a.cursor(include_open=True)])
    redis_client.hset(f"{prefix}:{{s1}}:state", mapping={"seq": 0, "state": b"x"})

    # Without the repair a resumed series skips every new record up to offset 1129.
    stale = SeriesAssembler.from_cursor(store.load_many(["s1"])["s1"], SETTINGS, FREQ)
    assert stale.add(T0 + 200 * FREQ, 1.0, 1, 5, 0, None, [], []) == SKIPPED

    got = _check(fresh_broker.bootstrap, redis_client, prefix)
    assert got.outcome == "broker_data_lost" and got.mismatch
    assert got.remembered_id == old.broker_id != got.broker_id
    assert got.cursors_reset == 1 and got.lost_patches == 1  # patch 1: emitted, never applied
    assert "dropped the Kafka positions of 1 ingest cursors" in got.message
    stored = redis_client.hgetall(f"{prefix}:incarnation")
    assert stored[b"outcome"] == b"broker_data_lost" and stored[b"previous"].decode() == old.broker_id

    cur = store.load_many(["s1"])["s1"]
    assert cur.last_offset is None and cur.next_seq == 1 and cur.open_slots is None
    resumed = SeriesAssembler.from_cursor(cur, SETTINGS, FREQ)
    patches: list = []
    rejects: list = []
    # an old timestamp is late, not applied twice; a new one at offset 0 is taken
    assert resumed.add(T0 + 100 * FREQ, 1.0, 1, 0, 0, None, patches, rejects) != ACCEPTED
    assert rejects and rejects[0].reason in ("late", "duplicate")
    assert resumed.add(T0 + 200 * FREQ, 7.0, 1, 1, 0, None, patches, rejects) == ACCEPTED
    # patches 1..3 close as all-missing (the lost ones and the gap), seq continues after the state
    assert [p.seq for p in patches] == [1, 2, 3] and all(p.n_observed == 0 for p in patches)
    assert resumed.seq == 4

    # the next start beside the same (new) broker finds them together again
    assert _check(fresh_broker.bootstrap, redis_client, prefix).outcome == "same"


def test_cursor_in_step_with_its_state_keeps_its_open_patch(prefix):
    a = _assembled(130, first_offset=1000)
    cur, lost_patches, lost_open = incarnation.rebase_cursor(a.cursor(include_open=True), applied_seq=1)
    assert (lost_patches, lost_open) == (0, 0)
    assert cur.next_seq == 2 and len(cur.open_slots) == 34 and cur.last_offset is None
    resumed = SeriesAssembler.from_cursor(cur, SETTINGS, FREQ)
    patches: list = []
    for i in range(130, 144):  # the rest of patch 2, from a new broker's offset 0
        assert resumed.add(T0 + i * FREQ, float(i), 1, i - 130, 0, None, patches, []) == ACCEPTED
    (p,) = patches
    assert p.seq == 2 and p.n_observed == 48 and p.values == [float(i) for i in range(96, 144)]


def test_cursor_still_inferring_its_frequency_keeps_its_buffer():
    a = SeriesAssembler("s1", SETTINGS)  # no configured frequency
    a.add(T0, 1.0, 0, 50, 0, None, [], [])
    a.add(T0 + FREQ, 2.0, 0, 51, 0, None, [], [])
    cur, lost_patches, lost_open = incarnation.rebase_cursor(a.cursor(include_open=True), applied_seq=-1)
    assert (lost_patches, lost_open, cur.last_offset) == (0, 0, None) and len(cur.pending) == 2
    assert isinstance(IngestCursor.from_json(cur.to_json()), IngestCursor)


def test_empty_redis_beside_a_broker_with_data_is_reported(embedded_kafka, redis_client, prefix):
    _check(embedded_kafka, redis_client, prefix)
    redis_client.delete(f"{prefix}:incarnation")  # Redis lost everything (no AOF)
    got = _check(embedded_kafka, redis_client, prefix)
    assert got.outcome == "redis_data_lost" and got.mismatch
    assert "series start afresh from the committed offsets" in got.message


def test_cursors_past_the_end_of_a_rolled_back_broker_are_freed(fresh_broker, redis_client, prefix):
    """A host power loss can take the broker's last writes while Redis keeps later cursor
    writes: a cursor past the log's end would skip the re-used offsets."""
    from kafka import KafkaProducer

    topic = f"{prefix}.observations"
    fresh_broker.create_topics({topic: 2})
    p = KafkaProducer(bootstrap_servers=fresh_broker.bootstrap, acks="all", linger_ms=5)
    for i in range(10):
        p.send(topic, b"x", partition=0)
    p.flush()
    p.close()
    assert incarnation.log_ends(fresh_broker.bootstrap, topic) == {0: 10, 1: 0}
    assert _check(fresh_broker.bootstrap, redis_client, prefix).outcome == "first_start"
    store = CursorStore(redis_client, prefix)
    ahead = _assembled(50, partition=0, first_offset=40).cursor()        # covers offsets up to 87 > 10
    ahead.series_id = "ahead"
    within = _assembled(50, partition=0, first_offset=0).cursor()
    within.series_id, within.last_offset = "within", 9                   # the last record the log holds
    store.save_many([ahead, within])

    got = _check(fresh_broker.bootstrap, redis_client, prefix)
    assert got.outcome == "broker_behind" and got.mismatch and got.cursors_reset == 1
    loaded = store.load_many(["ahead", "within"])
    assert loaded["ahead"].last_offset is None and loaded["ahead"].next_seq == 1
    assert loaded["within"].last_offset == 9
    # nothing past the end any more: the next start is plain "same"
    assert _check(fresh_broker.bootstrap, redis_client, prefix).outcome == "same"
