"""`streamflame bench alerts`: labelled anomalies injected into real held-out series,
streamed through the real ingest consumer on the embedded stack (Tansu broker +
redis-server), alert episodes scored.

Figures: per injected kind and size, recall and median detection delay (observations
from the first anomalous slot to the slot of the opening event); precision of the
episodes opened on the injected copies; false episodes per series-week on the clean
copies (by kind); and alert latency (observation produced -> its episode event
consumed, p50/p99) at half the rate ingest sustained in the same run while this
process produced as fast as it could (the producer shares the machine, as it would
on a 2-core box).

Baseline in the same run (``--baseline``, default on): the model worker then reads the
detection run's patches and publishes today's per-point alerts (an observation outside
the group's ``alert_levels`` interval of the forecast before it); consecutive point
alerts of a series (gaps of at most ``GROUP_GAP`` slots) count as one alert group,
scored like an episode that matches every injected kind.
"""
from __future__ import annotations

import argparse
import heapq
import os
import platform
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson

from streamflame.alerts.settings import WEEK_MS
from streamflame.bench import inject as I
from streamflame.config import ServiceConfig, dump_yaml
from streamflame.embedded import RedisServer
from streamflame.embedded.broker import Broker

T0_MS = 1_704_067_200_000
GROUP_GAP = 3
WARMUP_S = 2.0  # latency run: events of observations sent in its first seconds are not timed


def _series(n: int, length: int):
    from streamflame.data.registry import validation_series  # lazy: pandas

    out = []
    for s in validation_series():
        v = s.values[-length:]
        if len(v) < length or not np.all(np.isfinite(v[:64])) or np.mean(np.isfinite(v)) < 0.95:
            continue
        out.append((s.series_id, int(s.freq.nanos // 1_000_000), v))
    step = max(1, len(out) // n)
    return out[::step][:n]


def _records(streams: list[tuple[str, int, np.ndarray]], t0: int = T0_MS, repeat: int = 1):
    """Single-observation records in event-time order (ties in stream order), as sensors of
    different sampling steps would send them; NaN slots are not sent. ``repeat``: the streams
    again and again, each time continuing the series' grid after the last slot (a series'
    copies follow one another on its own time axis)."""
    def one(i: int, sid: str, freq: int, v: np.ndarray):
        n = len(v)
        for r in range(repeat):
            for k in range(n):
                if np.isfinite(v[k]):
                    yield t0 + (r * n + k) * freq, i, sid, float(v[k])

    for ts, _, sid, val in heapq.merge(*(one(i, *st) for i, st in enumerate(streams))):
        yield sid, ts, val


def _read_alerts(cfg, stop_after_quiet_s: float, deadline_s: float, on_record=None) -> list:
    from kafka.structs import TopicPartition

    from streamflame.adapters.kafka_io import make_consumer  # lazy: kafka-python

    c = make_consumer(cfg, None)
    try:
        tp = TopicPartition(cfg.topics.alerts, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        out, last, end = [], time.monotonic(), time.monotonic() + deadline_s
        while time.monotonic() < end and time.monotonic() - last < stop_after_quiet_s:
            for recs in c.poll(timeout_ms=100).values():
                now = time.time()
                for r in recs:
                    out.append(r.value)
                    if on_record is not None:
                        on_record(r.value, now)
                last = time.monotonic()
        return out
    finally:
        c.close()


def _free_port() -> int:
    import socket

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def _start_ingest(cfg, workdir: Path, tag: str, component: str = "ingest"):
    """`python -m streamflame <component>` with ``cfg`` and a metrics port; returns (process, port) once it
    joined its group."""
    import subprocess
    import sys


    port = _free_port()
    d = cfg.effective(mask_secrets=False)
    d["metrics"] = {"port": port, "host": "127.0.0.1"}
    d["log_level"] = "warning"
    name = f"{component}-{tag}"
    conf = workdir / f"{name}.yaml"
    conf.write_text(dump_yaml(ServiceConfig(**d).effective(mask_secrets=False)))
    ready = workdir / f"{name}.ready"
    env = {**os.environ}
    env.pop("STREAMFLAME_CONFIG", None)
    cmd = [sys.executable, "-m", "streamflame", component, "--config", str(conf)]
    if component == "ingest":
        cmd += ["--ready-file", str(ready)]
    proc = subprocess.Popen(cmd, stdout=open(workdir / f"{name}.log", "wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while not (ready.exists() if component == "ingest" else _scrape(port, "", "") or proc.poll() is not None):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{component} did not start: {(workdir / f'{name}.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, port


def _scrape(port: int, name: str, prefix: str = "streamflame_ingest_") -> float:
    """A metric's value (0.0 when absent or the endpoint does not answer; with an empty name:
    1.0 when the endpoint answers)."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    if not name:
        return 1.0
    for line in text.splitlines():
        if line.startswith(prefix + name + " "):
            return float(line.split()[1])
    return 0.0


def _stop(proc) -> None:
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except Exception:  # noqa: BLE001 - stuck: kill it (ours)
        proc.kill()
        proc.wait()


def _score_points(points: list[dict], labels: dict, freq_of: dict, I) -> dict:
    """Per-point alerts -> alert groups per series (gaps <= GROUP_GAP slots) scored like episodes
    of a kind that matches every injection."""
    slots: dict[str, list[int]] = {}
    for p in points:
        slots.setdefault(p["series_id"], []).append((p["timestamp_ms"] - T0_MS) // freq_of[p["series_id"]])
    groups: dict[str, list[int]] = {}
    for sid, ss in slots.items():
        ss = sorted(set(ss))
        starts = [q for i, q in enumerate(ss) if i == 0 or q - ss[i - 1] > GROUP_GAP]
        groups[sid] = starts
    any_kind = {k: ("point",) for k in I.KIND_DETECTED_BY}
    agg, n_groups, matched = _aggregate(
        labels, lambda sid, injs: I.score(injs, [("point", q) for q in groups.get(sid, [])], detected_by=any_kind))
    clean = sum(len(g) for s, g in groups.items() if s.startswith("clean/"))
    return {"agg": agg, "groups": n_groups, "matched": matched, "clean_groups": clean, "messages": len(points)}


def _aggregate(labels: dict, score) -> tuple[dict, int, int]:
    """Per (kind, size): [injected, detected, delays] over every series' score(sid, injections),
    and the episodes and matched episodes counted."""
    agg: dict = {}
    episodes = matched = 0
    for sid, injs in labels.items():
        sc = score(sid, injs)
        episodes += sc.episodes
        matched += sc.matched_episodes
        for key, n in sc.injected.items():
            a = agg.setdefault(key, [0, 0, []])
            a[0] += n
            a[1] += sc.detected.get(key, 0)
            a[2] += sc.delays.get(key, [])
    return agg, episodes, matched


def print_by_movement(movement: dict, labels: dict, score, false_eps: dict, weeks: dict) -> None:
    """Recall of spikes and level shifts and false episodes per series-week, per kind of
    series (``movement``: series -> ``inject.movement`` of its clean values). ``labels``: series
    -> injections; ``score(series, injections)``; ``false_eps``, ``weeks``: per series, on the
    clean copies."""
    print("by how the series move (bench/inject.py movement): series, false episodes per series-week, "
          "recall of spikes and level shifts")
    for m in sorted(set(movement.values())):
        members = [sid for sid in labels if movement[sid] == m]
        cagg, _, _ = _aggregate({sid: labels[sid] for sid in members}, score)
        w = sum(weeks[sid] for sid in members)
        rec = "  ".join(f"{k}{z:.0f}σ {d / n:.2f}" for (k, z), (n, d, _) in sorted(cagg.items())
                        if k in ("spike", "level_shift"))
        print(f"  {m:7s} {len(members):3d}  {sum(false_eps[sid] for sid in members) / max(w, 1e-9):5.2f}  {rec}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamflame bench alerts", description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=16, help="held-out validation series (each: a clean and an "
                    "injected copy)")
    ap.add_argument("--length", type=int, default=4032, help="slots per series (the last ones)")
    ap.add_argument("--spacing", type=int, default=240, help="slots between injections")
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--saturation-seconds", type=float, default=8.0,
                    help="length of the sustained-rate measurement")
    ap.add_argument("--rate", type=float, help="observations/s offered in the latency run (default: half the "
                    "rate the detection run sustained)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="skip today's per-point alerts of the model worker")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)

    from streamflame.adapters.kafka_io import discard_producer, make_producer  # lazy: kafka-python

    rng = np.random.default_rng(args.seed)
    base = _series(args.series, args.length)
    labels: dict[str, list] = {}
    clean, injected = [], []
    for sid, freq, v in base:
        injs = I.plan(v, rng, 2 * 48 + 100, args.spacing)
        labels["inj/" + sid] = injs
        clean.append(("clean/" + sid, freq, v))
        injected.append(("inj/" + sid, freq, I.apply(v, injs, rng)))
    n_obs = sum(int(np.isfinite(v).sum()) for _, _, v in clean + injected)
    print(f"# streamflame bench alerts | {time.strftime('%Y-%m-%d %H:%M')} | {platform.machine()} "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} | {len(base)} held-out series x {args.length} "
          f"slots, clean + injected copies = {n_obs:,} observations | "
          f"{sum(len(x) for x in labels.values())} injections", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="sf-bench-alerts-"))
    broker, redis_srv = Broker(workdir / "broker"), RedisServer(workdir / "redis")
    broker.start()
    redis_srv.start()
    try:
        topics = {"observations": "ba.obs", "patches": "ba.patches", "forecasts": "ba.forecasts",
                  "alerts": "ba.alerts", "dlq": "ba.dlq"}

        def config(tag: str) -> ServiceConfig:
            return ServiceConfig(
                kafka={"bootstrap": broker.bootstrap, "partitions": 4, "session_timeout_ms": 2000,
                       "heartbeat_interval_ms": 600},
                redis={"url": redis_srv.url, "key_prefix": tag},
                topics={k: f"{v}.{tag}" for k, v in topics.items()},
                ingest={"group_id": f"ingest-{tag}", "future_tolerance_ms": None},
                defaults={"alert_levels": [0.01, 0.99]})      # the baseline: the worker's per-point alerts

        # -- 1. detection: everything produced first, then read by one ingest process
        cfg = config("det")
        broker.create_topics({t: (1 if k in ("alerts", "dlq") else 4) for k, t in cfg.topics.model_dump().items()})
        prod = make_producer(cfg, linger_ms=5)
        for sid, ts, val in _records(clean + injected):
            prod.send(cfg.topics.observations, key=sid.encode(),
                      value=orjson.dumps({"series_id": sid, "timestamp": ts, "value": val}))
        prod.flush()
        proc, port = _start_ingest(cfg, workdir, "det")
        t0 = time.perf_counter()
        try:
            while _scrape(port, "observations_total") < n_obs and time.perf_counter() - t0 < 900:
                time.sleep(0.05)
            busy_s = time.perf_counter() - t0
            events = [orjson.loads(v) for v in _read_alerts(cfg, 3.0, 120.0)]
            n_patches = int(_scrape(port, "patches_total"))
        finally:
            _stop(proc)
        points: list[dict] = []
        if args.baseline:  # today's per-point alerts: the model worker over the same patches
            wproc, wport = _start_ingest(cfg, workdir, "det", component="worker")
            t1 = time.perf_counter()
            try:
                while (_scrape(wport, "forecasts_published_total", "streamflame_worker_") < n_patches
                       and time.perf_counter() - t1 < 1800):
                    time.sleep(0.5)
                points = [e for e in map(orjson.loads, _read_alerts(cfg, 3.0, 120.0)) if "event" not in e]
            finally:
                _stop(wproc)
            print(f"baseline: the model worker forecast after each of {n_patches:,} patches in "
                  f"{time.perf_counter() - t1:.0f} s, {len(points)} per-point alerts")
        max_rate = n_obs / busy_s
        opens: dict[str, list] = {}
        freq_of = {s: f for s, f, _ in clean + injected}
        for e in events:
            if e["event"] == "open":
                opens.setdefault(e["series_id"], []).append((e["kind"], (e["timestamp_ms"] - T0_MS) // freq_of[e["series_id"]]))
        print(f"detection run: {n_obs:,} observations read by one ingest process in {busy_s:.1f} s "
              f"({max_rate:,.0f} obs/s from a backlog), {len(events)} episode events")
        agg, episodes, matched = _aggregate(labels, lambda sid, injs: I.score(injs, opens.get(sid, [])))
        base = _score_points(points, labels, freq_of, I) if args.baseline else None
        print("kind          size  injected  recall  median delay (obs)" + ("  | baseline: recall  delay" if base else ""))
        for (kind, size), (n, d, dl) in sorted(agg.items()):
            med = f"{np.median(dl):.0f}" if dl else "-"
            line = f"{kind:12s} {size:4.0f}σ {n:9d}  {d / n:6.2f}  {med:>6s}"
            if base:
                bn, bd, bdl = base["agg"].get((kind, size), (n, 0, []))
                line += f"              | {bd / bn:6.2f}  {np.median(bdl) if bdl else float('nan'):5.0f}"
            print(line)
        print(f"precision (episodes opened on the injected copies that match an injection): "
              f"{matched}/{episodes} = {matched / max(episodes, 1):.2f}"
              + (f" | baseline alert groups: {base['matched']}/{base['groups']} = "
                 f"{base['matched'] / max(base['groups'], 1):.2f} ({base['messages']} messages)" if base else ""))
        weeks = sum(float(np.isfinite(v[96:]).sum()) * f / WEEK_MS for _, f, v in clean)  # judged slots
        fe = Counter(k for s, lst in opens.items() if s.startswith("clean/") for k, _ in lst)
        print(f"false episodes per series-week (clean copies, {weeks:.1f} series-weeks): "
              f"{sum(fe.values()) / weeks:.2f} (" + ", ".join(f"{k} {n / weeks:.2f}" for k, n in sorted(fe.items()))
              + ")" + (f" | baseline alert groups {base['clean_groups'] / weeks:.2f}" if base else ""))
        per_fe = Counter(s[len("clean/"):] for s, lst in opens.items() if s.startswith("clean/") for _ in lst)
        print_by_movement({"inj/" + sid[len("clean/"):]: I.movement(v) for sid, _, v in clean}, labels,
                          lambda sid, injs: I.score(injs, opens.get(sid, [])),
                          {"inj/" + sid[len("clean/"):]: per_fe[sid[len("clean/"):]] for sid, _, _ in clean},
                          {"inj/" + sid[len("clean/"):]: float(np.isfinite(v[96:]).sum()) * f / WEEK_MS
                           for sid, f, v in clean})

        # -- 2. the maximum sustained rate while this process produces (as fast as it can)
        cfg = config("sat")
        broker.create_topics({t: (1 if k in ("alerts", "dlq") else 4) for k, t in cfg.topics.model_dump().items()})
        proc, port = _start_ingest(cfg, workdir, "sat")
        prod = make_producer(cfg, linger_ms=5)
        try:
            start = time.perf_counter()
            marks: list[tuple[float, float]] = []
            next_mark = start + WARMUP_S
            for sid, ts, val in _records(injected, repeat=1000):
                prod.send(cfg.topics.observations, key=sid.encode(),
                          value=orjson.dumps({"series_id": sid, "timestamp": ts, "value": val}))
                now = time.perf_counter()
                if now >= next_mark:
                    marks.append((now, _scrape(port, "observations_total")))
                    next_mark = now + args.saturation_seconds
                    if len(marks) == 2:
                        break
            sustained = (marks[1][1] - marks[0][1]) / (marks[1][0] - marks[0][0])
        finally:
            discard_producer(prod)       # what it still holds is not needed: the rate is measured
            _stop(proc)
        print(f"sustained while producing: {sustained:,.0f} obs/s read by ingest over {args.saturation_seconds:.0f} s "
              f"(after {WARMUP_S:.0f} s), the producer in this process offering as fast as it can")

        # -- 3. latency at half the sustained rate: produced paced, each episode event timed
        cfg = config("lat")
        broker.create_topics({t: (1 if k in ("alerts", "dlq") else 4) for k, t in cfg.topics.model_dump().items()})
        rate = args.rate or sustained / 2
        proc, port = _start_ingest(cfg, workdir, "lat")
        sent: dict[tuple[str, int], float] = {}
        lat: list[float] = []
        warm_until = time.time() + 1.0 + WARMUP_S  # after the reader's start below: the first seconds not timed

        def on_record(raw: bytes, now: float) -> None:
            e = orjson.loads(raw)
            t = sent.get((e["series_id"], e["timestamp_ms"]))
            if t is not None and t >= warm_until:
                lat.append((now - t) * 1000)

        reader = threading.Thread(target=lambda: _read_alerts(cfg, args.latency_seconds + 5, args.latency_seconds + 60,
                                                              on_record), daemon=True)
        reader.start()
        time.sleep(1.0)  # the reader is assigned and polling
        prod = make_producer(cfg, linger_ms=1)
        n = 0
        try:
            start = time.perf_counter()
            for sid, ts, val in _records(injected, repeat=1000):
                due = start + n / rate
                now = time.perf_counter()
                if now < due:
                    time.sleep(due - now)
                if now - start > args.latency_seconds:
                    break
                sent[(sid, ts)] = time.time()
                prod.send(cfg.topics.observations, key=sid.encode(),
                          value=orjson.dumps({"series_id": sid, "timestamp": ts, "value": val}))
                n += 1
            prod.flush()
            reader.join()
        finally:
            _stop(proc)
        if lat:
            what = "set by --rate" if args.rate else f"half of {sustained:,.0f}"
            print(f"alert latency at {rate:,.0f} obs/s offered ({what}) for {args.latency_seconds:.0f} s "
                  f"(the first {WARMUP_S:.0f} s not timed), "
                  f"{n:,} observations, {len(lat)} episode events: p50 {np.percentile(lat, 50):.0f} ms, "
                  f"p99 {np.percentile(lat, 99):.0f} ms, max {max(lat):.0f} ms")
        else:
            print("alert latency: no episode event in the latency run")
    finally:
        broker.stop()
        redis_srv.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
