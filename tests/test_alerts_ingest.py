"""Alert episodes through the real ingest consumer (real Tansu broker, real
redis-server): the events of a stream equal those of the pure detectors fed the
same slots, and a SIGKILL of `python -m streamflame ingest` mid-episode followed by a
restart publishes every event exactly once."""
from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from test_ingest_consumer import produce, read_topic, run_in_thread

from streamflame.alerts.messages import encode_event
from streamflame.config import ServiceConfig, dump_yaml
from streamflame.messages import AlertEpisode, decode_alert_any
from streamflame.pipeline.ingest.assembler import AssemblerSettings, SeriesAssembler
from streamflame.pipeline.ingest.consumer import IngestConsumer

T0 = 1_704_067_200_000
FREQ = 60_000
REPO = Path(__file__).resolve().parent.parent


def config(cfg: ServiceConfig, **ingest) -> ServiceConfig:
    data = cfg.effective(mask_secrets=False)
    data["ingest"].update({"future_tolerance_ms": None, **ingest})
    data["groups"] = [{"name": "fixed", "match": "fix-*", "frequency": "1min",
                       "alerts": {"range": [-100.0, 100.0], "flatline_window": 10}}]
    return ServiceConfig(**data)


def stream(n_series: int = 6, n: int = 700, seed: int = 0) -> dict[str, list]:
    """Per series: (ts, value) with spikes, a level shift, a null run, an out-of-range value
    and a flatline at series-dependent places."""
    rng = random.Random(seed)
    out = {}
    for k in range(n_series):
        ys: list = [20 + 5 * math.sin(i / (15 + k)) + rng.gauss(0, 0.3) for i in range(n)]
        base = 150 + 20 * k
        ys[base] += 6.0
        for i in range(base + 100, base + 160):
            ys[i] += 3.0
        for i in range(base + 250, base + 258):
            ys[i] = None
        ys[base + 300] = 500.0
        for i in range(base + 350, base + 365):
            ys[i] = ys[base + 349]
        out[f"fix-{k}"] = [(T0 + i * FREQ, None if v is None else round(v, 6)) for i, v in enumerate(ys)]
    return out


def messages(obs: dict[str, list]) -> list[tuple[bytes, bytes]]:
    """Single-observation records, series interleaved."""
    n = max(len(v) for v in obs.values())
    return [(sid.encode(), orjson.dumps({"series_id": sid, "timestamp": obs[sid][i][0], "value": obs[sid][i][1]}))
            for i in range(n) for sid in obs if i < len(obs[sid])]


def reference(cfg: ServiceConfig, obs: dict[str, list]) -> Counter:
    """The events of the pure assembler + detectors for the same observations."""
    want: Counter = Counter()
    for sid, pts in obs.items():
        g = cfg.resolve_group(sid)
        a = SeriesAssembler(sid, AssemblerSettings(), g.freq_ms, g.alerts)
        for i, (t, v) in enumerate(pts):
            a.add(t, v, 0, i, 0, None, [], [])
        want.update(encode_event(ev, sid, g.name) for _, ev in a.alert_events)
    return want


def alert_records(cfg, want: int, timeout_s: float = 30.0) -> Counter:
    recs = read_topic(cfg, cfg.topics.alerts, want, timeout_s=timeout_s, settle_s=1.5,
                      distinct=lambda r: r.value)
    return Counter(r.value for r in recs)


def test_ingest_publishes_the_episodes_of_the_pure_detectors(service_config, redis_client):
    cfg = config(service_config)
    obs = stream()
    want = reference(cfg, obs)
    kinds = Counter(orjson.loads(m)["kind"] for m in want)
    assert {"deviation", "dropout", "out_of_range", "flatline"} <= set(kinds)
    produce(cfg, messages(obs))
    ing = IngestConsumer(cfg, redis_client=redis_client)
    th = run_in_thread(ing)
    try:
        got = alert_records(cfg, len(want))
    finally:
        ing.stop()
        th.join(timeout=15)
    assert got == want
    ev = [decode_alert_any(m) for m in got]
    assert all(isinstance(e, AlertEpisode) for e in ev)
    by_id: dict[str, list] = {}
    for e in sorted(ev, key=lambda e: e.timestamp_ms):
        by_id.setdefault(e.alert_id, []).append(e.event)
    assert all(v[0] == "open" and v.count("open") == 1 for v in by_id.values())


def test_sigkill_mid_episode_publishes_every_event_exactly_once(service_config, redis_client, tmp_path):
    cfg = config(service_config, max_poll_records=150)
    cfg_file = tmp_path / "ingest.yaml"
    cfg_file.write_text(dump_yaml(cfg.effective(mask_secrets=False)))
    obs = stream(seed=1)
    want = reference(cfg, obs)
    msgs = messages(obs)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("STREAMFLAME_CONFIG", None)

    def start(name: str) -> subprocess.Popen:
        ready = tmp_path / f"{name}.ready"
        proc = subprocess.Popen([sys.executable, "-m", "streamflame", "ingest", "--config", str(cfg_file),
                                 "--ready-file", str(ready)], env=env, stdout=open(tmp_path / f"{name}.log", "wb"),
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text()[-2000:]
            time.sleep(0.05)
        return proc

    proc = start("first")
    # cut the stream in the middle of the longest episode: the kill lands while it is open
    spans: dict[str, dict] = {}
    for m in want:
        e = orjson.loads(m)
        spans.setdefault(e["alert_id"], {})[e["event"]] = e
    alert_id, ep = max(((k, v) for k, v in spans.items() if "resolve" in v),
                       key=lambda kv: kv[1]["resolve"]["timestamp_ms"] - kv[1]["open"]["timestamp_ms"])
    mid = (ep["open"]["timestamp_ms"] + ep["resolve"]["timestamp_ms"]) // 2
    cut = sum(1 for _, v in msgs if orjson.loads(v)["timestamp"] <= mid)
    produce(cfg, msgs[:cut])
    opening = next(m for m in want if orjson.loads(m)["alert_id"] == alert_id
                                 and orjson.loads(m)["event"] == "open")
    deadline = time.monotonic() + 30
    first: Counter = Counter()
    while opening not in first:
        assert time.monotonic() < deadline, "the episode never opened before the kill"
        first = alert_records(cfg, len(first) + 1, timeout_s=2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    first = alert_records(cfg, len(first), timeout_s=2)
    assert opening in first and len(first) < sum(want.values())
    assert not [m for m in first if orjson.loads(m)["alert_id"] == alert_id and orjson.loads(m)["event"] == "resolve"]
    produce(cfg, msgs[cut:])
    proc2 = start("second")
    try:
        got = alert_records(cfg, len(want), timeout_s=40)
    finally:
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(timeout=15) == 0
    short = lambda ms: sorted((orjson.loads(m)["alert_id"], orjson.loads(m)["event"], orjson.loads(m)["timestamp"]) for m in ms)  # noqa: E731
    assert set(got) == set(want), (short(set(got) - set(want)), short(set(want) - set(got)))  # nothing lost
    assert got == want, {m: n for m, n in got.items() if n > 1}   # nothing twice


def test_alert_settings_reload_while_ingest_runs(service_config, redis_client, tmp_path):
    """A config file change of a group's `alerts` reaches series already in memory: a value
    that is fine under the old range opens out_of_range under the new one; switching the
    group's alerts off stops its episodes."""
    from streamflame.config import load_config

    def text(alerts: dict) -> str:
        d = service_config.effective(mask_secrets=False)
        d["ingest"]["future_tolerance_ms"] = None
        d["groups"] = [{"name": "fixed", "match": "fix-*", "frequency": "1min", "alerts": alerts}]
        return dump_yaml(d)

    conf = tmp_path / "ingest.yaml"
    conf.write_text(text({"range": [0.0, 100.0]}))
    cfg = load_config(conf)
    ing = IngestConsumer(cfg, redis_client=redis_client, config_path=conf)
    th = run_in_thread(ing)

    def send(k0: int, k1: int, value: float) -> None:
        produce(cfg, messages({"fix-r": [(T0 + k * FREQ, value + (k % 3) * 0.01) for k in range(k0, k1)]}))

    def kinds() -> Counter:
        return Counter((e.kind, e.event) for e in map(decode_alert_any, alert_records(cfg, 1, timeout_s=3)))

    try:
        send(0, 150, 50.0)
        time.sleep(2)
        assert not kinds()[("out_of_range", "open")]
        conf.write_text(text({"range": [0.0, 40.0]}))
        deadline = time.monotonic() + 10
        while ing.reloader.reloads < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        send(150, 160, 50.0)
        deadline = time.monotonic() + 15
        while not kinds()[("out_of_range", "open")]:
            assert time.monotonic() < deadline, "no out_of_range episode under the reloaded range"
        n_before = sum(kinds().values())
        conf.write_text(text({"enabled": False, "range": [0.0, 40.0]}))
        deadline = time.monotonic() + 10
        while ing.reloader.reloads < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        send(160, 200, 500.0)   # far out of range and a jump: nothing while alerts are off
        deadline = time.monotonic() + 10
        while ing.counters["accepted"] < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        assert sum(kinds().values()) == n_before
    finally:
        ing.stop()
        th.join(timeout=15)
    assert ing.reloader.reloads == 2


def test_a_series_that_stops_sending_gets_a_dropout_from_its_partitions_event_time(service_config, redis_client):
    cfg = config(service_config)
    ys = {sid: [20 + math.sin(i / 9) + 0.01 * (i % 4) for i in range(260)] for sid in ("fix-quiet", "fix-busy")}
    # both in partition 0: the busy series' observations move the partition's event time on
    from kafka import KafkaProducer

    def send(recs) -> None:
        prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap)
        for sid, i in recs:
            prod.send(cfg.topics.observations, key=sid.encode(), partition=0,
                      value=orjson.dumps({"series_id": sid, "timestamp": T0 + i * FREQ, "value": ys[sid][i]}))
        prod.flush()
        prod.close()

    ing = IngestConsumer(cfg, redis_client=redis_client)
    th = run_in_thread(ing)
    try:
        send([(sid, i) for i in range(240) for sid in ys if sid == "fix-busy" or i < 200])
        opened = [decode_alert_any(m) for m in alert_records(cfg, 1, timeout_s=30)]
        assert [(e.series_id, e.kind, e.event) for e in opened] == [("fix-quiet", "dropout", "open")]  # live
        send([(sid, i) for i in range(240, 260) for sid in ys])
        got = [decode_alert_any(m) for m in alert_records(cfg, 2, timeout_s=30)]
    finally:
        ing.stop()
        th.join(timeout=15)
    drop = [(e.event, e.timestamp_ms, e.started_ms) for e in got if e.series_id == "fix-quiet" and e.kind == "dropout"]
    # silent after slot 199: the open carries slot 205 (six slots missing), the resolve the return at 240
    assert drop == [("open", T0 + 205 * FREQ, T0 + 200 * FREQ), ("resolve", T0 + 240 * FREQ, T0 + 200 * FREQ)]
    assert not [e for e in got if e.series_id == "fix-busy" and e.kind == "dropout"]


def test_batch_messages_are_not_silence_and_a_series_that_stops_still_gets_its_dropout(service_config,
                                                                                      redis_client):
    """Series that send 48 observations per message, in turn, are each up to one message behind
    the partition's event time without anything missing: no dropout. One that stops is found
    silent once the event time is its dropout_slots plus one message's span past its last value."""
    cfg = config(service_config)
    ys = {sid: [20 + math.sin(i / 9) + 0.01 * (i % 4) for i in range(480)] for sid in ("fix-a", "fix-b", "fix-c")}
    from kafka import KafkaProducer

    def send(msgs) -> None:
        prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap)
        for sid, k in msgs:    # patch k of series sid, one message, paced: ingest reads them one by one
            idx = range(48 * k, 48 * k + 48)
            prod.send(cfg.topics.observations, key=sid.encode(), partition=0,
                      value=orjson.dumps({"series_id": sid, "timestamps": [T0 + i * FREQ for i in idx],
                                          "values": [ys[sid][i] for i in idx]}))
            prod.flush()
            time.sleep(0.15)
        prod.close()

    ing = IngestConsumer(cfg, redis_client=redis_client)
    th = run_in_thread(ing)
    try:
        # fix-c stops after patch 3 (its last value at slot 191); the others go on to patch 9
        send([(sid, k) for k in range(10) for sid in ys if sid != "fix-c" or k < 4])
        got = [decode_alert_any(m) for m in alert_records(cfg, 1, timeout_s=30)]
    finally:
        ing.stop()
        th.join(timeout=15)
    drops = [(e.series_id, e.event, e.timestamp_ms, e.started_ms) for e in got if e.kind == "dropout"]
    assert drops == [("fix-c", "open", T0 + 197 * FREQ, T0 + 192 * FREQ)], drops
