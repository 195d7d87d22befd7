"""Hostile input through the real ingest and worker (issue #5 item 5).

``streamflame fuzz [--messages N] [--seed K] [--json FILE]`` starts a Tansu
broker and a redis-server on loopback (or uses ``--bootstrap``/``--redis``),
runs one ingest consumer and one worker in threads of this process, produces N
generated records (valid traffic of some series interleaved with hostile
records) and checks:

* no crash: both threads are still running when the traffic is consumed, and
  neither raised;
* the DLQ holds exactly one dead letter per hostile record, with the reason
  the generator expected (a record is identified by its unique key
  ``noise-<i>``, or by key + value bytes for records that must carry the
  series id as key); duplicates (at-least-once) are counted separately;
* every valid series' state in Redis equals, byte for byte, the state the
  in-process :class:`~streamflame.Forecaster` computes from that series' valid
  observations alone (a run without the noise), at the expected ``seq``.

The generator (:func:`build_traffic`) is also what the property tests and the
CI test (5,000 records) use. Its expectations come from the documented policy
(docs/schemas.md), not from running the code under test.

Payload-size limits: Tansu itself accepts records of at least 30 MiB, so a
hostile producer can put a 10 MiB record on the observations topic (our own
producers refuse requests above ``max(1 MiB, 2 * ingest.max_message_bytes)``
client-side). The generator sends 10 MiB records through a producer configured
for them; ingest must reject them ``too_large`` (dead letter with the original
truncated to fit a request).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from streamflame.config import ServiceConfig
from streamflame.core.constants import PATCH_LEN
from streamflame.core.logs import configure_logging
from streamflame.embedded import Broker, RedisServer
from streamflame.faults.traffic import BIG_BYTES, FREQ_MS, Traffic, build_traffic
from streamflame.messages import decode_dead_letter

# --------------------------------------------------------------------------- decode-level hostile records
# Each: (rng, i) -> (value bytes | None, reason). Keys are b"noise-<i>" (unique).



# --------------------------------------------------------------------------- traffic



# --------------------------------------------------------------------------- running it


def fuzz_config(bootstrap: str, redis_url: str, model_path: str, *, partitions: int = 4,
                tag: str | None = None):
    """ServiceConfig for a fuzz run: own topics, key prefix and groups; ``v-*`` at 1min."""

    tag = tag or uuid.uuid4().hex[:8]
    return ServiceConfig(
        kafka={"bootstrap": bootstrap, "partitions": partitions, "session_timeout_ms": 2000,
               "heartbeat_interval_ms": 600},
        redis={"url": redis_url, "key_prefix": f"fz{tag}"},
        topics={name: f"fz{tag}.{name}" for name in ("observations", "patches", "forecasts", "alerts", "dlq")},
        ingest={"group_id": f"fz-ingest-{tag}"},
        worker={"group_id": f"fz-worker-{tag}", "model_path": model_path, "device": "cpu", "batch_size": 256,
                "batch_deadline_ms": 50},
        defaults={"horizon": 24, "num_samples": 8},
        groups=[{"name": "valid", "match": "v-*", "frequency": "1min"}],
    )


class _Runner(threading.Thread):
    def __init__(self, target, name: str):
        super().__init__(name=name, daemon=True)
        self._target_obj = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_obj.run()
        except BaseException as e:  # noqa: BLE001 - recorded: a crash is what we look for
            self.error = e


def _read_all(bootstrap: str, topic: str, timeout_s: float = 30.0):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                      max_partition_fetch_bytes=64 * 2**20, fetch_max_bytes=64 * 2**20)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out, deadline, idle = [], time.monotonic() + timeout_s, 0
        while time.monotonic() < deadline:
            got = 0
            for recs in c.poll(timeout_ms=300).values():
                out += recs
                got += len(recs)
            done = all(c.highwater(tp) is not None and c.position(tp) >= c.highwater(tp) for tp in tps)
            idle = idle + 1 if got == 0 else 0
            if done or (idle >= 3 and all(c.highwater(tp) in (None, 0) for tp in tps)):
                break
        return out
    finally:
        c.close()


def run_fuzz(cfg, traffic: Traffic, *, timeout_s: float = 600.0, log=print) -> dict[str, Any]:
    """Produce ``traffic`` to ``cfg``'s observations topic with ingest and a worker
    running (threads), wait until every expected dead letter and valid state is
    there (or ``timeout_s``), stop them and compare. Returns the figures; key
    ``ok`` is True when every check passed, ``problems`` lists the failures."""
    import redis
    from kafka import KafkaProducer

    from streamflame import Forecaster, SeriesState  # lazy: torch
    from streamflame.model.flame import NAN_FIELDS  # lazy: torch
    from streamflame.pipeline.ingest.consumer import IngestConsumer  # lazy: kafka-python, redis-py
    from streamflame.adapters.kafka_io import make_producer  # lazy: kafka-python
    from streamflame.adapters.state.store import StateRecord, StateStore  # lazy: redis-py
    from streamflame.pipeline.worker.worker import Worker  # lazy: kafka-python, redis-py

    rc = redis.Redis.from_url(**cfg.redis.client_kwargs())
    ingest = IngestConsumer(cfg, redis_client=rc)
    worker = Worker(cfg)
    threads = [_Runner(ingest, "ingest"), _Runner(worker, "worker")]
    for t in threads:
        t.start()
    store = StateStore(rc, cfg.redis.key_prefix)
    expected = Counter()
    want = {}
    sent_keys = {}   # ident -> the whole key of a noise-* record: its dead letter must give it back
    for r in traffic.records:
        if r.expect is not None:
            want[r.ident] = r.expect
            expected[r.expect] += 1
            if r.key is not None and r.key.startswith(b"noise-"):
                sent_keys[r.ident] = r.key
    n_big = sum(1 for r in traffic.records if r.kind == "10mib_payload")
    t_start = time.monotonic()
    prod = big = None
    produce_s = drain_s = 0.0
    alive = [True, True]
    try:
        prod = make_producer(cfg, linger_ms=20, batch_size=256 * 1024)
        big = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, max_request_size=2 * BIG_BYTES,
                            acks="all") if n_big else None
        for j, r in enumerate(traffic.records):
            p = big if (r.value is not None and len(r.value) > 1_900_000) else prod
            if p is big:
                prod.flush()  # keep the per-partition order across the two producers
            p.send(cfg.topics.observations, key=r.key, value=r.value)
            if p is big:
                big.flush()
            if j % 20_000 == 19_999:
                log(f"  produced {j + 1} records ({time.monotonic() - t_start:.0f} s)")
        prod.flush()
        produce_s = time.monotonic() - t_start
        log(f"  produced {len(traffic.records)} records in {produce_s:.1f} s; waiting for ingest and worker")

        def progress() -> tuple[int, int]:
            recs = store.load_many(list(traffic.valid))
            done = sum(1 for sid, rec in recs.items()
                       if isinstance(rec, StateRecord) and rec.seq == traffic.expected_patches[sid] - 1)
            return done, int(ingest.counters.get("dead_letters", 0))

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done, dl = progress()
            ext_done = all(isinstance(r, StateRecord) for r in store.load_many(traffic.accepted_noise_series).values())
            if done == len(traffic.valid) and dl >= len(want) and ext_done:
                break
            if any(not t.is_alive() for t in threads):
                break
            time.sleep(1.0)
        drain_s = time.monotonic() - t_start
        alive = [t.is_alive() for t in threads]
    finally:
        ingest.stop()
        worker.stop()
        for t in threads:
            t.join(60)
        for p in (prod, big):
            if p is not None:
                p.close(timeout=10)

    problems: list[str] = []
    for t, was_alive in zip(threads, alive):
        if t.error is not None:
            problems.append(f"{t.name} crashed: {t.error!r}")
        elif not was_alive:
            problems.append(f"{t.name} stopped by itself")

    letters = [decode_dead_letter(r.value) for r in _read_all(cfg.kafka.bootstrap, cfg.topics.dlq)]
    got = Counter()
    seen_ids: Counter = Counter()
    wrong: list[str] = []
    unexpected: list[str] = []
    for d in letters:
        k = d.key_bytes()
        ident = k[:64] if (k is not None and k.startswith(b"noise-")) else (k, d.original_bytes())
        full = sent_keys.get(ident) if k is not None and k.startswith(b"noise-") else k
        if full is not None and (k != full if d.key_truncated is None else
                                 (d.key_truncated != len(full) or not full.startswith(k))):
            wrong.append(f"{ident!r:.80}: key of {len(k)} bytes for one of {len(full)} (key_truncated "
                         f"{d.key_truncated})")
        got[d.reason] += 1
        seen_ids[ident] += 1
        if ident not in want:
            unexpected.append(f"{d.component}:{d.reason}: {d.detail[:120]} key={str(k)[:60]}")
        elif want[ident] != d.reason:
            wrong.append(f"{ident!r:.80} expected {want[ident]} got {d.reason} ({d.detail[:100]})")
    missing = [i for i in want if i not in seen_ids]
    duplicates = sum(n - 1 for n in seen_ids.values() if n > 1)
    if missing:
        problems.append(f"{len(missing)} hostile records without a dead letter, e.g. "
                        f"{[repr(m)[:80] for m in missing[:3]]} ({[want[m] for m in missing[:3]]})")
    if wrong:
        problems.append(f"{len(wrong)} dead letters with another reason than expected, e.g. {wrong[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} dead letters for records that should be accepted, e.g. {unexpected[:3]}")

    # valid series against the in-process model on their valid observations alone
    f = Forecaster.load(cfg.worker.model_path)
    mismatched, checked = [], 0
    recs = store.load_many(list(traffic.valid))
    for sid, slots in traffic.valid.items():
        n = traffic.expected_patches[sid]
        rec = recs.get(sid)
        x = np.array([np.nan if slots.get(s) is None else slots[s] for s in range(n * PATCH_LEN)])
        s = f.init_state(scale=cfg.resolve_group(sid).scale, step_seconds=FREQ_MS / 1000)
        for k in range(n):
            s = f.update(s, x[k * PATCH_LEN:(k + 1) * PATCH_LEN])
        if not isinstance(rec, StateRecord) or rec.seq != n - 1 or rec.state != s.to_bytes():
            mismatched.append(sid if not isinstance(rec, StateRecord) else f"{sid} (seq {rec.seq}, want {n - 1})")
        else:
            SeriesState.from_bytes(rec.state)
            checked += 1
    if mismatched:
        problems.append(f"{len(mismatched)} valid series whose state differs from the clean run: {mismatched[:5]}")
    extreme = store.load_many(traffic.accepted_noise_series)
    ext = {sid: (rec.seq if isinstance(rec, StateRecord) else type(rec).__name__) for sid, rec in extreme.items()}
    for sid in ("w-huge", "w-year9999", "w-centuries"):
        if sid in ext and not isinstance(extreme[sid], StateRecord):
            problems.append(f"extreme series {sid} has no state ({ext[sid]})")
    for sid, rec in extreme.items():   # accepted values never leave a state that forecasts NaN for good
        if isinstance(rec, StateRecord):
            st = SeriesState.from_bytes(rec.state)
            dead = [k for k, a in st.tensors.items()
                    if not np.isfinite(a[~np.isnan(a)] if k in NAN_FIELDS else a).all()]
            if dead:
                problems.append(f"extreme series {sid}: state fields {dead} are not finite")

    c = ingest.counters
    return {
        "ok": not problems,
        "problems": problems,
        "records": len(traffic.records),
        "hostile_records": len(want),
        "valid_records": sum(1 for r in traffic.records if r.expect is None),
        "big_10mib_records": n_big,
        "valid_series": len(traffic.valid),
        "valid_patches": sum(traffic.expected_patches.values()),
        "valid_states_equal": checked,
        "expected_by_reason": dict(sorted(expected.items())),
        "dead_letters_by_reason": dict(sorted(got.items())),
        "dead_letters": len(letters),
        "dead_letter_duplicates": duplicates,
        "extreme_series_seq": ext,
        "ingest_counters": {k: c[k] for k in ("records", "observations", "accepted", "rejected", "patches",
                                              "dead_letters", "retries", "poll_errors") if k in c},
        "worker_batches": worker.batches,
        "produce_s": round(produce_s, 1),
        "drain_s": round(drain_s, 1),
    }


def make_model(path: Path) -> str:
    """A small random model (tiny_config, seed 0) saved at ``path``; returns the path."""
    from streamflame import Forecaster  # lazy: torch
    from streamflame.model import tiny_config  # lazy: torch

    if not (path / "model.safetensors").exists():
        Forecaster.from_config(tiny_config(), seed=0).save(path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamflame fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000, help="records to generate (default 100000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--big", type=int, default=2, help="10 MiB records among them (default 2)")
    ap.add_argument("--bootstrap", help="use this Kafka instead of starting Tansu")
    ap.add_argument("--redis", help="use this Redis URL instead of starting redis-server")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for ingest and worker")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    import platform


    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="sf-fuzz-"))
    broker = redis_server = None
    t0 = time.monotonic()
    try:
        if args.bootstrap is None:
            broker = Broker(work / "broker")
            broker.start()
        if args.redis is None:
            redis_server = RedisServer(work / "redis")
            redis_server.start()
        bootstrap = args.bootstrap or broker.bootstrap
        redis_url = args.redis or redis_server.url
        cfg = fuzz_config(bootstrap, redis_url, make_model(work / "model"))
        from streamflame.adapters.kafka_io import create_topics  # lazy: kafka-python

        create_topics(cfg)
        print(f"streamflame fuzz: {args.messages} records, seed {args.seed}, broker {bootstrap}, redis {redis_url}")
        tr = build_traffic(args.messages, args.seed, big_payloads=args.big)
        print(f"  generated in {time.monotonic() - t0:.1f} s: {len(tr.records)} records, "
              f"{sum(r.expect is not None for r in tr.records)} hostile, {len(tr.valid)} valid series")
        res = run_fuzz(cfg, tr, timeout_s=args.timeout, log=lambda *a: print(*a, flush=True))
    finally:
        if broker is not None:
            broker.stop()
        if redis_server is not None:
            redis_server.stop()
    res["machine"] = f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}"
    res["date_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    res["total_s"] = round(time.monotonic() - t0, 1)
    for k, v in res.items():
        print(f"{k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    print("RESULT:", "PASS" if res["ok"] else "FAIL")
    return 0 if res["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
