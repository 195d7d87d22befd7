"""The pipeline on the embedded stack, each figure beside its own ceiling from the same run.

    streamflame bench pipeline [--series 2000] [--patches 2] [--device cpu] [--latency-seconds 20] [--repeats 5]
                               [--ingest-publisher process|inline] [--worker-publisher process|inline]
                               [--state-cache N] [--read-ahead-compare]

One run starts a Tansu broker and a redis-server in a temporary directory and measures:

1. ingest, single-observation JSON messages: `IngestConsumer` observations/s, beside a bare
   kafka-python consumer that only polls and `json.loads` the same topic (the ceiling); a
   second, stricter ceiling decodes with orjson (the parser ingest itself uses);
2. ingest, batch messages (`--batch-values` values each, `--batch-patches` patches per series): the same pair;
3. worker: forecasts/s end to end (`Worker`: Redis load, decode, step_batch, forecast_batch, encode,
   publish, Redis CAS write, commit), beside the model alone (`step_batch` + `forecast_batch` on one
   StateBatch on the same device at the worker's measured mean batch size; no Kafka, no Redis);
4. latency at half the maximum sustained rate, with ingest and worker as their own processes
   (`streamflame ingest`, `streamflame worker`): from producing a patch's last observation to
   consuming its forecast, p50/p99. The maximum sustained rate is measured on that running
   pipeline, offered twice the estimate 1 / (1/ingest + 1/(48 x worker)) from stages 1 and 3:
   the forecasts it completes per second x 48 (the broker, redis-server and this load
   generator share the cores, which the estimate leaves out). When it completes all that the
   generator manages to offer, that rate is shown as a lower bound (">=") and the latency is
   measured at half of it. Series are staggered so their patches complete spread over time,
   not all in the same instant.

Stages 1-3 run ``--repeats`` rounds (default 5); in each round a figure is measured right
beside its own ceiling, so a ratio compares neighbours (this machine's speed drifts by 10-30 %
over minutes). Ingest: the ceiling after the figure in rounds 1, 3, 5, before it in rounds 2
and 4, so a drift during the run moves as many ratios up as down. Worker: each run is
bracketed by its ceiling, half of the model's passes right before it and half right after.
The round with the median ratio is shown beside all rounds' ratios.
Rates (1-3) are steady-state: the clock starts at the first record handled, so the consumer
group join (about 1 s against Tansu with the fast settings) is left out and printed apart.
`--read-ahead-compare` runs only the worker stage, without and with `worker.read_ahead`
alternating (bench/pipeline_readahead.py), after one ingest pass that writes its patches.
Every series uses the `defaults` group (horizon 96, 100 samples, 11 quantiles: the worker's
per-point alerts on, the default until 2026-12-06) and the shipped checkpoint unless `--model`
says otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from streamflame.config import ServiceConfig
from streamflame.bench import pipeline_readahead
from streamflame.core.constants import PATCH_LEN
from streamflame.embedded import RedisServer
from streamflame.embedded.broker import Broker
from streamflame.embedded.process import sync_filesystem
from streamflame.embedded.stack import BROKER_SYNC_S
from streamflame.messages import decode_forecast

T0_MS = 1_704_067_200_000
FREQ_MS = 60_000
PARTITIONS = 4
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 600}


# ---- data -----------------------------------------------------------------------------------
class _BrokerSync:
    """What `streamflame up`'s supervisor does for a durable broker: syncfs(2) of its
    data every BROKER_SYNC_S, here in a thread; `stop()` returns each sync's seconds."""

    def __init__(self, path: Path) -> None:
        import threading


        self.took: list[float] = []
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.wait(BROKER_SYNC_S):
                t = time.perf_counter()
                sync_filesystem(path)
                self.took.append(time.perf_counter() - t)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.took


def series_values(sid_index: int, n: int, rng) -> np.ndarray:
    t = np.arange(n)
    return 20 + 5 * np.sin(2 * np.pi * t / (60 + sid_index % 90)) + rng.normal(0, 0.3, n)


def produce(bootstrap: str, topic: str, messages, linger_ms: int = 20) -> float:
    """Send (key, bytes) pairs; returns messages/s including the final flush."""
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, batch_size=256 * 1024,
                         max_request_size=8 * 1024 * 1024, acks=1)
    t = time.perf_counter()
    n = 0
    for key, value in messages:
        prod.send(topic, key=key, value=value)
        n += 1
    prod.flush()
    dt = time.perf_counter() - t
    prod.close()
    return n / dt


def bare_ceiling(bootstrap: str, topic: str, n_messages: int, count_obs, decode=json.loads) -> tuple[float, float]:
    """A consumer that only polls and JSON-decodes: (observations/s, messages/s)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=2000)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    seen = obs = 0
    t = time.perf_counter()                    # manual assignment: no join to leave out
    while seen < n_messages:
        for recs in c.poll(timeout_ms=500).values():
            for r in recs:
                obs += count_obs(decode(r.value))
            seen += len(recs)
    dt = time.perf_counter() - t
    c.close()
    return obs / dt, seen / dt


# ---- stages ---------------------------------------------------------------------------------
def run_ingest(cfg, redis_client, n_obs: int, n_patches: int) -> dict:
    """Steady-state observations/s of one in-process IngestConsumer over cfg's topic."""
    from streamflame.pipeline.ingest.consumer import IngestConsumer  # lazy: kafka-python, redis-py

    t_create = time.perf_counter()
    ing = IngestConsumer(cfg, redis_client=redis_client, create_missing_topics=False)
    assigned_at: list[float] = []
    on_assigned = ing.listener.on_partitions_assigned

    def stamp(tps):           # the clock starts when the group has handed out the partitions
        assigned_at.append(time.perf_counter())
        return on_assigned(tps)
    ing.listener.on_partitions_assigned = stamp
    try:
        while ing.counters["patches"] < n_patches:
            ing.poll_once()
        ing.settle()            # the last batch acknowledged and its cursors written
        t_end = time.perf_counter()
        ing._commit(final=True)
    finally:
        ing.close()
    t1 = assigned_at[0]
    return {"obs_per_s": n_obs / (t_end - t1), "join_s": t1 - t_create,
            "patches": ing.counters["patches"], "batches": ing.counters["batches"]}


def run_worker(cfg, n_forecasts: int) -> dict:
    """Steady-state forecasts/s of one in-process Worker over cfg's patches topic."""
    from streamflame.pipeline.worker.worker import Worker  # lazy: kafka-python, redis-py

    w = Worker(cfg)
    th = threading.Thread(target=w.run, daemon=True)
    reg = w.metrics.registry

    def published() -> float:
        return reg.get_sample_value("streamflame_worker_forecasts_published_total") or 0.0

    t_start = time.perf_counter()
    th.start()
    first = None
    while published() < n_forecasts:
        time.sleep(0.01)
        n = published()
        if first is None and n > 0:
            first = (time.perf_counter(), n)
        if not th.is_alive():
            raise RuntimeError("the worker stopped before publishing every forecast")
    t_end = time.perf_counter()
    w.stop()
    th.join(30)
    batches = reg.get_sample_value("streamflame_worker_batch_size_count") or 1
    mean_batch = (reg.get_sample_value("streamflame_worker_batch_size_sum") or 0) / batches
    t1, n1 = first
    if n1 >= n_forecasts:
        raise RuntimeError("the worker took every patch in its first batch: use more --series/--patches")
    rate = (n_forecasts - n1) / (t_end - t1)
    load_s = reg.get_sample_value("streamflame_worker_redis_seconds_sum", {"op": "load"}) or 0.0
    return {"forecasts_per_s": rate, "startup_s": t1 - t_start, "mean_batch": mean_batch, "batches": int(batches),
            "torch_threads": w.torch_threads, "load_s_per_batch": load_s / batches, "read_ahead": w.read_ahead_used}


def model_ceiling(forecaster, group, batch: int, rounds: int, rng) -> float:
    """The worker's model calls alone: step_batch + forecast_batch on one StateBatch (same device,
    batch, horizon, samples, levels, sample paths copied back as the group asks; no state decode
    or encode, no Kafka, no Redis)."""
    p = forecaster.config.patch_len
    sb = forecaster.state_batch(batch)
    for _ in range(batch):
        sb.append_state(forecaster.init_state(scale=group.scale))
    sb.seal()
    forecaster.step_batch(sb, np.stack([series_values(i, p, rng) for i in range(batch)]))
    seeds = list(range(batch))

    def forecast():
        forecaster.forecast_batch(sb, None, group.horizon, group.quantiles, group.num_samples, seeds,
                                  samples=group.include_samples)
    forecast()  # warm-up
    t = time.perf_counter()
    for r in range(rounds):
        forecaster.step_batch(sb, np.stack([series_values(i, p, rng) for i in range(batch)]))
        forecast()
    return batch * rounds / (time.perf_counter() - t)


def run_latency(cfg, workdir: Path, rate: float, seconds: float, n_series: int, tag: str = "lat") -> dict:
    """Ingest and worker as processes; a paced producer; p50/p99 of last-observation → forecast.

    Also returns ``sustained_obs_per_s``: forecasts consumed per second x 48 over the second
    half of the producing period (the offered rate when the pipeline keeps up, its capacity
    when it is offered more)."""
    import yaml
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition


    path = workdir / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg.effective(mask_secrets=False)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = {}
    for role in ("ingest", "worker"):
        ready = workdir / f"{tag}-{role}.ready"
        log = open(workdir / f"{tag}-{role}.log", "w")
        procs[role] = (subprocess.Popen([sys.executable, "-m", "streamflame", role, "--config", str(path)],
                                        env={**env, "STREAMFLAME_READY_FILE": str(ready)},
                                        stdout=log, stderr=subprocess.STDOUT), ready, log)
    try:
        deadline = time.monotonic() + 120
        while not all(r.exists() for _, r, _ in procs.values()):
            if any(p.poll() is not None for p, _, _ in procs.values()) or time.monotonic() > deadline:
                raise RuntimeError(f"ingest/worker did not become ready; logs in {workdir}")
            time.sleep(0.1)
        sent: dict[tuple[str, int], float] = {}
        got: dict[tuple[str, int], float] = {}
        stop = threading.Event()

        def consume():
            c = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
            tps = [TopicPartition(cfg.topics.forecasts, p) for p in sorted(c.partitions_for_topic(cfg.topics.forecasts))]
            c.assign(tps)
            c.seek_to_beginning(*tps)
            while not stop.is_set():
                for recs in c.poll(timeout_ms=50).values():
                    now = time.perf_counter()
                    for r in recs:
                        m = decode_forecast(r.value)
                        got.setdefault((m.series_id, m.seq), now)
            c.close()

        th = threading.Thread(target=consume, daemon=True)
        th.start()
        # as the config says (off on a durable embedded broker, like `streamflame up`'s clients)
        prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, linger_ms=0,
                             enable_idempotence=cfg.kafka.idempotent_producer)
        rng = np.random.default_rng(3)
        n_steps = int(rate * seconds / n_series) + 1
        # Series i starts (i * 48 // n) observations ahead, so patch completions are spread
        # evenly in time rather than all series finishing a patch in the same round.
        offset = [(i * PATCH_LEN) // n_series for i in range(n_series)]
        values = [series_values(i, n_steps + PATCH_LEN, rng) for i in range(n_series)]
        keys = [f"{tag}-{i:05d}" for i in range(n_series)]
        # Encoded before the clock starts: the generator shares the cores with the pipeline,
        # and what it spends per message lowers the rate it can offer.
        payloads = [[json.dumps({"series_id": keys[i], "timestamp": T0_MS + step * FREQ_MS,
                                 "value": float(values[i][step])}).encode() for step in range(len(values[i]))]
                    for i in range(n_series)]
        key_bytes = [k.encode() for k in keys]
        topic = cfg.topics.observations

        def send(i: int, step: int) -> None:
            prod.send(topic, key=key_bytes[i], value=payloads[i][step])

        for i in range(n_series):                      # the head start, not timed
            for step in range(offset[i]):
                send(i, step)
        prod.flush()
        t0 = time.perf_counter()
        k = 0
        for r in range(n_steps):
            for i in range(n_series):
                due = t0 + k / rate
                while (now := time.perf_counter()) < due:
                    time.sleep(min(0.002, due - now))
                step = offset[i] + r
                send(i, step)
                if step % PATCH_LEN == PATCH_LEN - 1:
                    prod.flush()
                    sent[(keys[i], step // PATCH_LEN)] = time.perf_counter()
                k += 1
        prod.flush()
        t_end = time.perf_counter()
        offered = k / (t_end - t0)
        t_half = t0 + (t_end - t0) / 2
        done = sum(1 for t in list(got.values()) if t_half <= t <= t_end)
        sustained = done * PATCH_LEN / (t_end - t_half)
        wait_until = time.monotonic() + 30
        while not set(sent) <= set(got) and time.monotonic() < wait_until:
            time.sleep(0.05)
        stop.set()
        th.join(10)
        prod.close()
        lat = np.array([(got[key] - t) * 1e3 for key, t in sent.items() if key in got])
        return {"offered_obs_per_s": offered, "sustained_obs_per_s": sustained, "patches": len(sent),
                "forecasts": len(lat),
                "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
                "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
                "max_ms": float(lat.max()) if len(lat) else float("nan")}
    finally:
        for p, _, log in procs.values():
            p.terminate()
        for p, _, log in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
            log.close()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="streamflame bench pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=2000, help="series in the throughput stages")
    ap.add_argument("--patches", type=int, default=2, help="complete patches per series")
    ap.add_argument("--batch-values", type=int, default=48, help="values per batch message")
    ap.add_argument("--batch-patches", type=int, default=30,
                    help="complete patches per series in the batch-message stage (it runs ~10x faster per "
                    "observation than single messages: 30 make each measurement last ~10 s, so the start and "
                    "the final acknowledgement weigh little beside the sustained rate)")
    ap.add_argument("--worker-batch", type=int, default=512, help="worker.batch_size")
    ap.add_argument("--device", default="cpu", help="worker and model-ceiling device (cpu, cuda)")
    ap.add_argument("--model", default=None, help="checkpoint dir (default: the shipped one)")
    ap.add_argument("--ingest-publisher", choices=["process", "inline"], default="process",
                    help="ingest.publisher (docs/architecture.md, \"Publisher process\")")
    ap.add_argument("--worker-publisher", choices=["process", "inline"], default="process",
                    help="worker.publisher")
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--latency-series", type=int, default=200)
    ap.add_argument("--latency-only", type=float, metavar="OBS_PER_S",
                    help="skip stages 1-3 and measure latency at this offered rate (diagnosis)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="rounds of stages 1-3, each figure beside its own ceiling (after it in rounds 1, 3, ..., "
                    "before it in rounds 2, 4, ...); the median round is shown")
    ap.add_argument("--state-cache", type=int, default=None, metavar="N",
                    help="worker.state_cache_series (default: the config's); 0 = every patch after a series' "
                    "first reads its state from Redis")
    ap.add_argument("--read-ahead-compare", action="store_true",
                    help="only the worker stage, without and with worker.read_ahead, alternating per round")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    ap.add_argument("--durable", action="store_true",
                    help="persistence on, as `streamflame up` by default: broker data in files (localbucket, "
                         "synced every second) and Redis AOF everysec; ceilings read the same broker")
    return ap


def _print_report(args, reps: dict, mb: int, wk: dict, ing_single: dict, sat: dict, saturated: bool,
                  max_rate: float, estimate: float, lat: dict) -> None:
    """The figures table (each figure beside its ceiling, the median round), the latency line and SUMMARY."""
    def pick(name: str, ceiling: str, key: str | None = None):
        """The round with the (lower) median ratio: (value, ceiling, [ratios of all rounds])."""
        vs = [x[key] if key else x for x in reps[name]]
        ratios = [v / c for v, c in zip(vs, reps[ceiling])]
        k = sorted(range(len(ratios)), key=ratios.__getitem__)[(len(ratios) - 1) // 2]   # lower median
        return vs[k], reps[ceiling][k], ratios

    def row(name, picked, unit, target):
        value, ceiling, ratios = picked
        spread = " / ".join(f"{100 * x:.1f}" for x in ratios)
        print(f"{name:<34} {value:>12,.0f} {unit:<12} {ceiling:>12,.0f} {100 * value / ceiling:>7.1f}%   "
              f"target >= {target}%   (each round: {spread} %)")

    single, single_oj = pick("ing_single", "ceil_single", "obs_per_s"), pick("ing_single", "ceil_single_oj", "obs_per_s")
    batch, batch_oj = pick("ing_batch", "ceil_batch", "obs_per_s"), pick("ing_batch", "ceil_batch_oj", "obs_per_s")
    worker = pick("worker", "model", "forecasts_per_s")
    print(f"\n{'figure':<34} {'measured':>12} {'':<12} {'ceiling':>12} {'ratio':>8}   "
          f"(median of {args.repeats} rounds, each measured beside its own ceiling)")
    row("ingest, single-observation msgs", single, "obs/s", 50)
    row("  (ceiling decoding with orjson)", single_oj, "obs/s", 50)
    row("ingest, batch msgs", batch, "obs/s", 50)
    row("  (ceiling decoding with orjson)", batch_oj, "obs/s", 50)
    row(f"worker end to end (batch ~{mb}, {wk['torch_threads']} thr)", worker, "forecasts/s", 70)
    print(f"group join / first batch: ingest {ing_single['join_s']:.1f} s, worker {wk['startup_s']:.1f} s "
          f"(not in the rates); worker batches {wk['batches']}, mean size {wk['mean_batch']:.0f}")
    print(f"max sustained rate: {'' if saturated else '>= '}{max_rate:,.0f} obs/s (offered {sat['offered_obs_per_s']:,.0f}, "
          f"the pipeline completed {sat['sustained_obs_per_s']:,.0f} obs/s of forecasts: "
          f"{'saturated' if saturated else 'kept up with all the load generator could offer'}; "
          f"estimate from the stages above {estimate:,.0f})")
    print(f"latency at half the max sustained rate ({max_rate / 2:,.0f} obs/s offered "
          f"{lat['offered_obs_per_s']:,.0f}, {args.latency_series} series, {lat['patches']} patches, "
          f"{lat['forecasts']} forecasts): p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, "
          f"max {lat['max_ms']:.0f} ms   target p99 <= 500 ms")
    print("SUMMARY " + " ".join(f"{k}={v:.0f}" for k, v in {
        "ingest_single_obs_per_s": single[0], "ceiling_single_obs_per_s": single[1],
        "ingest_batch_obs_per_s": batch[0], "ceiling_batch_obs_per_s": batch[1],
        "ceiling_single_orjson": single_oj[1], "ceiling_batch_orjson": batch_oj[1],
        "worker_forecasts_per_s": worker[0], "model_forecasts_per_s": worker[1],
        "max_sustained_obs_per_s": max_rate, "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"]}.items()))


# ---- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    import torch

    from streamflame import Forecaster  # lazy: torch

    workdir = Path(tempfile.mkdtemp(prefix="sf-bench-pipeline-"))
    S, P = args.series, args.patches
    n_obs = S * P * PATCH_LEN
    cores = os.cpu_count()
    print(f"# streamflame bench pipeline | {time.strftime('%Y-%m-%d %H:%M')} | {platform.machine()} "
          f"{cores} cores, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f} | "
          f"device {args.device} | {S} series x {P} patches = {n_obs:,} observations | publishers: "
          f"ingest {args.ingest_publisher}, worker {args.worker_publisher} | persistence "
          f"{'on (broker files synced every 1 s, redis AOF everysec)' if args.durable else 'off'} | worker state cache "
          f"{'default' if args.state_cache is None else args.state_cache}, read-ahead "
          f"{'off and on' if args.read_ahead_compare else 'on'}", flush=True)
    broker = Broker(workdir / "broker", durable=args.durable)
    redis_srv = RedisServer(workdir / "redis", appendonly=args.durable, appendfsync="everysec")
    broker.start()
    redis_srv.start()
    syncer = _BrokerSync(broker.s3.data_dir) if args.durable else None
    remove_workdir = False   # set by the modes that return early (the full run removes it at the end)
    try:
        import redis as redis_lib

        rc = redis_lib.Redis.from_url(redis_srv.url)
        topics = {"single": "bench.obs.single", "batch": "bench.obs.batch",
                  "forecasts": "bench.forecasts", "forecasts2": "bench.forecasts.lat", "obs_lat": "bench.obs.lat",
                  "patches_lat": "bench.patches.lat", "obs_sat": "bench.obs.sat", "patches_sat": "bench.patches.sat",
                  "forecasts_sat": "bench.forecasts.sat", "alerts": "bench.alerts", "dlq": "bench.dlq"}
        for r in range(args.repeats):           # each ingest round writes its own patches topic
            topics.update({f"patches-r{r}": f"bench.patches.r{r}", f"patches2-r{r}": f"bench.patches.batch.r{r}"})
        broker.create_topics({t: (1 if k in ("alerts", "dlq") else PARTITIONS) for k, t in topics.items()})

        def patch_topic(kind: str, r: int) -> str:
            return topics[f"{kind}-r{r}"]

        def config(obs: str, patches: str, forecasts: str, prefix: str, read_ahead: bool = True) -> ServiceConfig:
            cache = {} if args.state_cache is None else {"state_cache_series": args.state_cache}
            return ServiceConfig(
                kafka={"bootstrap": broker.bootstrap, "partitions": PARTITIONS, **FAST_GROUP,
                       # `streamflame up` turns idempotence off on its embedded broker; with durable
                       # storage an idempotent producer at saturation hit OutOfOrderSequenceNumber
                       # and then a fatal InitProducerId error (measured)
                       "idempotent_producer": not args.durable},
                redis={"url": redis_srv.url, "key_prefix": prefix},
                topics={"observations": obs, "patches": patches, "forecasts": forecasts,
                        "alerts": topics["alerts"], "dlq": topics["dlq"]},
                ingest={"group_id": f"ingest-{prefix}", "publisher": args.ingest_publisher},
                worker={"group_id": f"worker-{prefix}", "batch_size": args.worker_batch, "device": args.device,
                        "model_path": args.model, "publisher": args.worker_publisher, "read_ahead": read_ahead,
                        **cache},
                # the worker's per-point alerts on (the default until 2026-12-06): figures comparable to earlier runs
                defaults={"frequency": "1min", "alert_levels": [0.01, 0.99]})

        def lat_config(obs, patches, forecasts, prefix):
            c = config(topics[obs], topics[patches], topics[forecasts], prefix)
            return ServiceConfig(**{**c.effective(mask_secrets=False),
                                    "worker": {**c.worker.model_dump(), "batch_deadline_ms": 20}})

        if args.latency_only:
            lat = run_latency(lat_config("obs_lat", "patches_lat", "forecasts2", "b3"), workdir,
                              rate=args.latency_only, seconds=args.latency_seconds, n_series=args.latency_series)
            print(f"latency at {args.latency_only:,.0f} obs/s offered ({lat['offered_obs_per_s']:,.0f}, "
                  f"sustained {lat['sustained_obs_per_s']:,.0f}), "
                  f"{lat['patches']} patches, {lat['forecasts']} forecasts: p50 {lat['p50_ms']:.0f} ms, "
                  f"p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms")
            print(f"logs: {workdir}")
            return 0
        # -- data
        rng = np.random.default_rng(0)
        vals = [series_values(i, P * PATCH_LEN, rng) for i in range(S)]
        sids = [f"s-{i:06d}" for i in range(S)]
        order = [(i, k) for k in range(P * PATCH_LEN) for i in range(S)]        # time-major interleave
        single = ((sids[i].encode(), json.dumps({"series_id": sids[i], "timestamp": T0_MS + k * FREQ_MS,
                                                  "value": float(vals[i][k])}).encode()) for i, k in order)
        B, PB = args.batch_values, args.batch_patches
        vals_b = [series_values(i, PB * PATCH_LEN, rng) for i in range(S)]
        batched = ((sids[i].encode(), json.dumps({
            "series_id": sids[i], "timestamps": [T0_MS + k * FREQ_MS for k in range(a, a + B)],
            "values": [float(v) for v in vals_b[i][a:a + B]]}).encode())
            for a in range(0, PB * PATCH_LEN, B) for i in range(S))
        n_batch_msgs = S * -(-(PB * PATCH_LEN) // B)
        n_obs_b = S * PB * PATCH_LEN
        rate_single = produce(broker.bootstrap, topics["single"], single)
        rate_batch = produce(broker.bootstrap, topics["batch"], batched)
        print(f"produced: {n_obs:,} single messages at {rate_single:,.0f} msg/s; "
              f"{n_batch_msgs:,} batch messages ({B} values, {n_obs_b:,} observations) at {rate_batch:,.0f} msg/s",
              flush=True)

        # -- 1, 2: ingest vs bare consumer; each pair measured back to back, R times (the
        # machine's speed drifts within a run: a ratio compares neighbours, the median is kept)
        import orjson
        R = args.repeats
        reps: dict[str, list] = {k: [] for k in ("ceil_single", "ceil_single_oj", "ing_single",
                                                 "ceil_batch", "ceil_batch_oj", "ing_batch")}
        def ceil_single(r):
            reps["ceil_single"].append(bare_ceiling(broker.bootstrap, topics["single"], n_obs, lambda m: 1)[0])
            reps["ceil_single_oj"].append(
                bare_ceiling(broker.bootstrap, topics["single"], n_obs, lambda m: 1, orjson.loads)[0])

        def ing_single(r):
            reps["ing_single"].append(run_ingest(config(topics["single"], patch_topic("patches", r),
                                                        topics["forecasts"], f"b1r{r}"), rc, n_obs, S * P))

        def ceil_batch(r):
            def count(m):
                return len(m["values"])
            reps["ceil_batch"].append(bare_ceiling(broker.bootstrap, topics["batch"], n_batch_msgs, count)[0])
            reps["ceil_batch_oj"].append(
                bare_ceiling(broker.bootstrap, topics["batch"], n_batch_msgs, count, orjson.loads)[0])

        def ing_batch(r):
            reps["ing_batch"].append(run_ingest(config(topics["batch"], patch_topic("patches2", r),
                                                       topics["forecasts"], f"b2r{r}"), rc, n_obs_b, S * PB))

        if args.read_ahead_compare:   # the worker stage only, on the patches of one ingest pass
            ing_single(0)
            rounds = pipeline_readahead.compare(
                lambda r, ahead: config(topics["single"], patch_topic("patches", 0), topics["forecasts"],
                                        f"ra{r}{'a' if ahead else 's'}", read_ahead=ahead), S * P, args.repeats,
                run_worker)
            pipeline_readahead.report(rounds)
            if args.keep:
                print(f"logs: {workdir}")
            remove_workdir = not args.keep
            return 0

        for r in range(R):
            # Rounds 1, 3, ... measure each figure after its ceiling, rounds 2, 4, ... before it:
            # a drift of the machine's speed during the run moves as many ratios up as down.
            for ceiling, figure in ((ceil_single, ing_single), (ceil_batch, ing_batch)):
                for stage in ((ceiling, figure) if r % 2 == 0 else (figure, ceiling)):
                    stage(r)
            print(f"ingest round {r + 1}/{R}: single {reps['ing_single'][-1]['obs_per_s']:,.0f} vs "
                  f"{reps['ceil_single'][-1]:,.0f}, batch {reps['ing_batch'][-1]['obs_per_s']:,.0f} vs "
                  f"{reps['ceil_batch'][-1]:,.0f} obs/s", flush=True)

        # -- 3: worker vs model alone, alternating (each worker run: its own group and key prefix
        # over the patches of the first single-message ingest run)
        f = Forecaster.load(args.model).to(device=args.device)
        reps["worker"], reps["model"] = [], []
        wcfgs = [config(topics["single"], patch_topic("patches", 0), topics["forecasts"], f"b1w{r}") for r in range(R)]
        group = wcfgs[0].resolve_group("s-000000")

        def model_alone(batch: int) -> float:
            """Half of the ceiling's passes (the same number of forecasts each half)."""
            return model_ceiling(f, group, batch, rounds=max(1, min(4, (S * P) // (2 * batch))), rng=rng)

        # Each worker run is bracketed by its ceiling: half of the model's passes right before
        # it, half right after (at the batch the worker ran; the first round's "before" half
        # at worker.batch_size), so a drift of the machine's speed during the round cancels
        # to first order instead of landing on one side of the ratio.
        mb = min(args.worker_batch, S * P)
        from streamflame.pipeline.worker.worker import model_threads  # lazy: kafka-python, redis-py

        torch.set_num_threads(model_threads(wcfgs[0]))   # as the worker will, until it has run once
        for r, wcfg in enumerate(wcfgs):
            before = model_alone(mb)
            wk = run_worker(wcfg, S * P)
            torch.set_num_threads(wk["torch_threads"])        # the model alone with the worker's threads
            mb = max(1, int(round(wk["mean_batch"])))
            after = model_alone(mb)
            reps["model"].append(2 / (1 / before + 1 / after))  # equal forecasts each half: total / time
            reps["worker"].append(wk)
            print(f"worker round {r + 1}/{R}: {wk['forecasts_per_s']:,.1f} forecasts/s (batch ~{mb}) vs model "
                  f"{reps['model'][-1]:,.1f}", flush=True)

        ing_single = reps["ing_single"][0]
        wk = reps["worker"][0]
        mb = max(1, int(round(wk["mean_batch"])))

        # -- 4: latency at half the maximum sustained rate
        # An estimate from stages 1 and 3 (ingest and worker share the cores: an observation
        # costs both stages' time), then the rate the running pipeline (processes, broker and
        # this load generator on the same cores) sustains when offered twice that estimate.
        ing_rate = float(np.median([x["obs_per_s"] for x in reps["ing_single"]]))
        wk_rate = float(np.median([x["forecasts_per_s"] for x in reps["worker"]]))
        estimate = 1.0 / (1.0 / ing_rate + 1.0 / (wk_rate * PATCH_LEN))

        sat = run_latency(lat_config("obs_sat", "patches_sat", "forecasts_sat", "b4"), workdir, rate=2 * estimate,
                          seconds=args.latency_seconds, n_series=args.latency_series, tag="sat")
        # Saturated (completes less than it is offered): its capacity. Kept up with all this load
        # generator could offer (it shares the cores): the maximum is at least that, and only
        # that much is shown, so the latency is measured at half of a rate the pipeline sustained.
        saturated = sat["sustained_obs_per_s"] < 0.95 * sat["offered_obs_per_s"]
        max_rate = sat["sustained_obs_per_s"]
        if max_rate <= 0:
            raise SystemExit(f"streamflame bench pipeline: no forecast completed in the second half of the "
                             f"{args.latency_seconds:g} s saturation window (offered "
                             f"{sat['offered_obs_per_s']:,.0f} obs/s); run with a longer --latency-seconds")
        lat = run_latency(lat_config("obs_lat", "patches_lat", "forecasts2", "b3"), workdir, rate=max_rate / 2,
                          seconds=args.latency_seconds, n_series=args.latency_series)
    finally:
        if syncer is not None:
            took = sorted(syncer.stop())
            if took:
                print(f"# broker data synced {len(took)} times: median {took[len(took) // 2] * 1000:.0f} ms, "
                      f"max {took[-1] * 1000:.0f} ms", flush=True)
        broker.stop()
        redis_srv.stop()
        if remove_workdir:
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)

    _print_report(args, reps, mb, wk, ing_single, sat, saturated, max_rate, estimate, lat)
    if args.keep:
        print(f"logs: {workdir}")
    else:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
