"""The publisher (streamflame.pipeline.publisher) of the worker and of ingest, on a real Tansu broker
and real redis-servers: the publisher process writes exactly what the inline one
writes (states, quarantines, cursors), writes nothing to Redis when a send fails,
reports Redis failures and survives them, and is seen as gone (OSError) when killed;
it exits when the process that started it dies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from redis.exceptions import RedisError

from streamflame.adapters.kafka_io import make_producer
from streamflame.adapters.state.client import connect
from streamflame.adapters.state.store import StateStore
from streamflame.config import ServiceConfig
from streamflame.embedded import RedisServer
from streamflame.pipeline.ingest.assembler import AssemblerSettings, SeriesAssembler
from streamflame.pipeline.ingest.cursors import CursorStore, cursor_args
from streamflame.pipeline.publisher import IngestJob, InlinePublisher, ProcessPublisher, WorkerJob, decode_job, encode_job

def read_records(cfg: ServiceConfig, topic: str, want: int, timeout_s: float = 15.0) -> list[tuple]:
    c = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out, deadline = [], time.monotonic() + timeout_s
        while len(out) < want and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                out += [(r.partition, r.key, r.value) for r in recs]
        return sorted(out)
    finally:
        c.close()


def a_job(cfg: ServiceConfig, tag: str, expected: int = -1) -> WorkerJob:
    t = cfg.topics
    msgs = [(t.alerts, f"s-{i}".encode(), f'{{"alert": {i}, "tag": "{tag}"}}'.encode()) for i in range(3)]
    msgs += [(t.forecasts, f"s-{i}".encode(), f'{{"forecast": {i}, "tag": "{tag}"}}'.encode() * 500)
             for i in range(20)]
    msgs.append((t.dlq, None, b'{"reason": "bad_patch"}'))
    cas = {f"s-{i}": (expected + 1, expected, bytes([i % 256]) * 26_000, f'{{"m": {i}}}'.encode(), "0") for i in range(20)}
    return WorkerJob(msgs, [("s-q", "corrupt_state: test")], cas)


def with_prefix(cfg: ServiceConfig, prefix: str, topics=None) -> ServiceConfig:
    data = cfg.effective(mask_secrets=False)
    data["redis"]["key_prefix"] = prefix
    if topics is not None:
        data["topics"] = topics.model_dump()
    return ServiceConfig(**data)


def test_the_job_codec_round_trips_and_refuses_a_cut_job(service_config):
    job = a_job(service_config, "codec")
    job.messages += [("t", b"", b""), ("t\u00e9", None, b"\x00" * 3)]
    job.cas["\u00fcber/x"] = (7, 6, b"", b"{}", "1")
    job.cas["view"] = (3, 2, memoryview(bytes(range(256)) * 40).toreadonly()[7:9_000], b"{}", "0")  # StateBatch.encode's
    cursors = IngestJob(list(job.messages), [("c-1", 3, 144, b'{"c": 1}'), ("\u00fcber/c", 0, 0, b"")],
                        [("c-1", 5)])
    for one in (job, cursors):   # the worker's writes and ingest's: two kinds of job
        buf = encode_job(one)
        assert decode_job(buf) == one
        for cut in (buf[:-1], buf + b"x"):
            with pytest.raises(ValueError):
                decode_job(cut)


def test_the_publisher_process_writes_what_the_inline_sink_writes(service_config, make_topics, redis_client):
    cfgs = {"inline": with_prefix(service_config, "in"), "process": with_prefix(service_config, "pr", make_topics())}
    inline = InlinePublisher(make_producer(cfgs["inline"]), StateStore(redis_client, "in"))
    proc = ProcessPublisher(cfgs["process"])
    try:
        outcomes = {}
        for name, sink in (("inline", inline), ("process", proc)):
            sink.submit(a_job(cfgs[name], "x"))
            first = sink.result()
            sink.submit(a_job(cfgs[name], "x"))     # the same writes again: refused as stale
            outcomes[name] = (first.save, sink.result().save)
    finally:
        inline.close()
        proc.close()
    assert outcomes["inline"] == outcomes["process"]
    first, again = outcomes["process"]
    assert sorted(first.applied) == sorted(f"s-{i}" for i in range(20)) and not first.refused
    assert again.applied == [] and again.stale == {f"s-{i}": 0 for i in range(20)}
    for attr in ("alerts", "forecasts", "dlq"):
        a = read_records(cfgs["inline"], getattr(cfgs["inline"].topics, attr), 2 * {"alerts": 3, "forecasts": 20, "dlq": 1}[attr])
        b = read_records(cfgs["process"], getattr(cfgs["process"].topics, attr), len(a))
        assert a == b and a
    for sid in [f"s-{i}" for i in range(20)] + ["s-q"]:
        got = {p: redis_client.hgetall(StateStore(redis_client, p).key(sid)) for p in ("in", "pr")}
        assert got["in"] == got["pr"]
        quarantined = {p: redis_client.hgetall(StateStore(redis_client, p).quarantine_key(sid)) for p in ("in", "pr")}
        assert quarantined["in"] == quarantined["pr"]
    assert redis_client.exists(StateStore(redis_client, "pr").quarantine_key("s-q"))


def ingest_job(cfg: ServiceConfig, n_series: int = 5, patches: int = 2) -> tuple[IngestJob, list]:
    """An ingest consumer's job: the patch records and the cursors of real assemblers."""
    msgs, cursors = [], []
    for i in range(n_series):
        a = SeriesAssembler(f"c-{i}", AssemblerSettings(), 60_000)
        out, rejects = [], []
        for k in range(patches * 48):
            a.add(1_704_067_200_000 + k * 60_000, float(k + i), 0, k, 0, None, out, rejects)
        assert len(out) == patches and not rejects
        msgs += [(cfg.topics.patches, f"c-{i}".encode(), orjson.dumps(pt._asdict())) for pt in out]
        cursors.append(a.cursor())
    return IngestJob(msgs, cursors=cursor_args(cursors)), cursors


def test_an_ingest_job_writes_its_cursors_as_the_cursor_store_does(service_config, make_topics, redis_client):
    cfgs = {"inline": with_prefix(service_config, "ci"), "process": with_prefix(service_config, "cp", make_topics())}
    sinks = {"inline": InlinePublisher(make_producer(cfgs["inline"]), cursors=CursorStore(redis_client, "ci")),
             "process": ProcessPublisher(cfgs["process"], "ingest")}
    outcomes = {}
    try:
        for name, sink in sinks.items():
            job, _ = ingest_job(cfgs[name])
            sink.submit(job)
            first = sink.result()
            sink.submit(ingest_job(cfgs[name], patches=1)[0])   # an older cursor: refused
            outcomes[name] = (first.cursors, sink.result().cursors)
    finally:
        for sink in sinks.values():
            sink.close()
    assert outcomes["inline"] == outcomes["process"]
    first, older = outcomes["process"]
    assert first.written == 5 and not first.refused
    assert older.written == 0 and sorted(older.refused) == [f"c-{i}" for i in range(5)]
    _, cursors = ingest_job(cfgs["process"])
    CursorStore(redis_client, "cd").save_many(cursors)   # the consumer's own write path
    for c in cursors:
        got = {p: redis_client.hgetall(CursorStore(redis_client, p).key(c.series_id)) for p in ("ci", "cp", "cd")}
        assert got["ci"] == got["cp"] == got["cd"] and got["cd"][b"cursor"] == c.to_json()
        assert CursorStore(redis_client, "cp").load_many([c.series_id])[c.series_id].next_seq == 2
    for name in ("inline", "process"):
        got = read_records(cfgs[name], cfgs[name].topics.patches, 15)
        assert len(got) == 15   # 10 + 5: the refused job's records were sent before its cursors


@pytest.mark.parametrize("kind", ["inline", "process"])
def test_no_cursor_is_written_when_a_send_of_its_job_fails(service_config, redis_client, kind):
    """A record the broker cannot take (over the producer's request size) fails the job
    before any Redis write: a cursor never runs ahead of its patches."""
    cfg = with_prefix(service_config, f"cf{kind}")
    job, _ = ingest_job(cfg)
    job.messages.insert(3, (cfg.topics.patches, b"c-0", b"x" * (cfg.ingest.max_message_bytes * 4)))
    store = CursorStore(redis_client, f"cf{kind}")
    sink = (InlinePublisher(make_producer(cfg), cursors=store) if kind == "inline" else ProcessPublisher(cfg, "ingest"))
    try:
        sink.submit(job)
        with pytest.raises(KafkaError):
            sink.result()
        assert store.load_many([f"c-{i}" for i in range(5)]) == {f"c-{i}": None for i in range(5)}
        assert sink.alive
    finally:
        sink.close()


def test_the_publisher_reports_a_redis_outage_and_carries_on(service_config, tmp_path):
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    data = service_config.effective(mask_secrets=False)
    data["redis"]["url"] = server.url
    cfg = ServiceConfig(**data)
    sink = ProcessPublisher(cfg)
    try:
        port = server.port
        server.stop()
        sink.submit(a_job(cfg, "down"))
        with pytest.raises(RedisError, match="publisher"):
            sink.result()
        assert sink.alive
        server = RedisServer(tmp_path / "redis", port=port, appendonly=True).start()
        sink.submit(a_job(cfg, "up"))
        assert len(sink.result().save.applied) == 20
        store = StateStore(connect(cfg.redis), cfg.redis.key_prefix)
        assert store.redis.hget(store.key("s-3"), "seq") == b"0"
    finally:
        sink.close()
        server.stop()


def test_a_killed_publisher_is_an_oserror(service_config):
    sink = ProcessPublisher(service_config)
    try:
        os.kill(sink.pid, signal.SIGKILL)
        sink.proc.wait(timeout=10)
        assert not sink.alive and sink.ready()
        with pytest.raises(OSError, match="publisher process"):
            sink.submit(a_job(service_config, "dead"))
            sink.result()
    finally:
        sink.close()


def test_the_publisher_exits_when_its_worker_is_killed(service_config, tmp_path):
    """SIGKILL of the worker process closes the pipe: the publisher ends by itself."""
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(service_config.model_dump_json())
    script = ("import sys, time; from streamflame.config import ServiceConfig; "
              "from streamflame.pipeline.publisher import ProcessPublisher; "
              f"s = ProcessPublisher(ServiceConfig.model_validate_json(open({str(cfg_file)!r}).read())); "
              "print(s.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the publisher outlived its worker"
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"   # a zombie has exited
    except FileNotFoundError:
        return False
