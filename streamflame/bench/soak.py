"""Soak: a steady observation rate through the embedded stack for a long time.

    streamflame bench soak [--minutes 15] [--rate 400] [--series 200] [--sample-s 30]
                           [--worker-throttle-ms 0] [--model PATH] [--json FILE]

Starts the embedded stack (Tansu, redis-server, 1 ingest and 1 worker process,
supervised) in a temporary run directory, produces ``--rate`` observations per
second (single messages, series ``soak-<k>`` round robin, 1-minute grid) for
``--minutes`` after both children are ready, and every ``--sample-s`` seconds
prints

* the RSS of every process: broker, redis, ingest, worker (``/proc/PID/status``
  VmRSS, MiB);
* the consumer lag, from the processes' own Prometheus counters:
  ``obs_lag`` = observations produced - observation records ingest has read,
  ``patch_lag`` = patches ingest has published - patches the worker has handled
  (applied + skipped), and the worker's ``streamflame_worker_consumer_lag``.

At the end it prints start/end RSS per process, lag at start/middle/end and the
largest lag seen, plus child restarts (a restart = a crash). Exit status 1 if a
child restarted. Figures, never assertions on timing: the CI test
(tests/test_backpressure_soak.py) runs 30 s of it and bounds the lag.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from streamflame.core.logs import configure_logging
from streamflame.embedded.stack import EmbeddedStack

T0 = 1_704_067_200_000
FREQ_MS = 60_000


def rss_mib(pid: int | None) -> float | None:
    """Resident set size of ``pid`` in MiB (None when it is gone)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)$")


def scrape(url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value} (labels as written)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if m and not line.startswith("#"):
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def _sum(metrics: dict[str, float], name: str, label_filter: str = "") -> float:
    return sum(v for k, v in metrics.items()
               if (k == name or k.startswith(name + "{")) and label_filter in k)


class _Producer(threading.Thread):
    """Sends ``rate`` observations per second (in 20 ticks per second) until stopped."""

    def __init__(self, bootstrap: str, topic: str, rate: float, n_series: int):
        super().__init__(name="soak-producer", daemon=True)
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
        self.topic, self.rate, self.n_series = topic, rate, n_series
        self.sent = 0
        self.stop_event = threading.Event()
        self.slot = [0] * n_series

    def run(self) -> None:
        import math

        start = time.monotonic()
        k = 0
        while not self.stop_event.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while self.sent < due:
                s = k % self.n_series
                k += 1
                sid = f"soak-{s:05d}"
                slot = self.slot[s]
                self.slot[s] += 1
                value = 10 + 3 * math.sin(slot / (7 + s % 13)) + (s % 5)
                raw = b'{"series_id":"%s","timestamp":%d,"value":%.4f}' % (sid.encode(), T0 + slot * FREQ_MS, value)
                self.producer.send(self.topic, key=sid.encode(), value=raw)
                self.sent += 1
            self.stop_event.wait(0.05)
        self.producer.flush()
        self.producer.close()


def _write_config(path: Path, model: str | None, throttle_ms: int) -> Path:
    worker = {"device": "cpu", "batch_deadline_ms": 50, "throttle_ms": throttle_ms}
    if model:
        worker["model_path"] = str(model)
    cfg = {
        "kafka": {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000},
        "worker": worker,
        "defaults": {"horizon": 48, "num_samples": 20},
        "groups": [{"name": "soak", "match": "soak-*", "frequency": "1min"}],
    }
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def run_soak(*, minutes: float, rate: float, n_series: int, sample_s: float, throttle_ms: int = 0,
             model: str | None = None, run_dir: Path | None = None, log=print) -> dict[str, Any]:
    """Run the soak and return its figures (see the module docstring)."""

    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="sf-soak-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = _write_config(run_dir / "soak.yaml", model, throttle_ms)
    stack = EmbeddedStack(run_dir / "stack", partitions=4, config_path=cfg_path, ingest=1, workers=1)
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    prod = None
    sup = None
    try:
        stack.start_services()
        stack.start_children()
        sup = threading.Thread(target=stack.run, args=(stop,), name="soak-supervisor", daemon=True)
        sup.start()
        desc = stack.describe()
        ingest_url, worker_url = desc["metrics"]["ingest"][0], desc["metrics"]["worker"][0]
        start_pids = {"broker": desc["pids"]["broker"], "redis": desc["pids"]["redis"],
                      "ingest": desc["pids"]["ingest"][0], "worker": desc["pids"]["worker"][0]}
        prod = _Producer(stack.kafka_bootstrap, stack.topics["observations"], rate, n_series)
        t_start = time.monotonic()
        prod.start()
        duration = minutes * 60
        log(f"soak: {minutes:g} min at {rate:g} obs/s over {n_series} series "
            f"(worker throttle {throttle_ms} ms), run dir {run_dir}")
        log(f"{'t_s':>6} {'sent':>9} {'obs_lag':>8} {'patch_lag':>9} {'wlag':>6} "
            f"{'broker':>7} {'redis':>6} {'ingest':>7} {'worker':>7}  (RSS MiB)")
        next_t = 0.0
        while True:
            now = time.monotonic() - t_start
            if now >= next_t or now >= duration:
                d = stack.describe()
                pids = {"broker": d["pids"]["broker"], "redis": d["pids"]["redis"],
                        "ingest": d["pids"]["ingest"][0], "worker": d["pids"]["worker"][0]}
                try:
                    im, wm = scrape(ingest_url), scrape(worker_url)
                    read = _sum(im, "streamflame_ingest_records_total")
                    patches = _sum(im, "streamflame_ingest_patches_total")
                    handled = (_sum(wm, "streamflame_worker_patches_total", 'outcome="applied"')
                               + _sum(wm, "streamflame_worker_patches_total", 'outcome="skipped"'))
                    wlag = _sum(wm, "streamflame_worker_consumer_lag")
                except OSError as e:  # a child restarting: its metrics are away for a moment
                    log(f"  metrics unavailable: {e!r}")
                    read = patches = handled = wlag = float("nan")
                row = {"t_s": round(now, 1), "sent": prod.sent, "obs_lag": prod.sent - read,
                       "patch_lag": patches - handled, "worker_consumer_lag": wlag,
                       "patches": patches, "rss_mib": {k: rss_mib(v) for k, v in pids.items()}, "pids": pids}
                samples.append(row)
                r = row["rss_mib"]
                log(f"{now:6.0f} {prod.sent:9d} {row['obs_lag']:8.0f} {row['patch_lag']:9.0f} {wlag:6.0f} "
                    f"{r['broker']!s:>7} {r['redis']!s:>6} {r['ingest']!s:>7} {r['worker']!s:>7}")
                next_t += sample_s
                if now >= duration:
                    break
            time.sleep(min(0.5, max(0.05, min(next_t, duration) - now)))
        prod.stop_event.set()
        prod.join(30)
        restarts = {name: pid for name, pid in samples[-1]["pids"].items() if pid != start_pids[name]}
    finally:
        if prod is not None:
            prod.stop_event.set()
        stop.set()
        if sup is not None:
            sup.join(10)
        stack.stop()
    first, last = samples[0], samples[-1]
    mid = samples[len(samples) // 2]
    finite = [s for s in samples if s["obs_lag"] == s["obs_lag"]]
    return {
        "minutes": minutes, "rate_obs_per_s": rate, "series": n_series, "worker_throttle_ms": throttle_ms,
        "sent": last["sent"], "patches": last["patches"], "achieved_obs_per_s": round(last["sent"] / max(last["t_s"], 1e-9), 1),
        "rss_start_mib": first["rss_mib"], "rss_end_mib": last["rss_mib"],
        "rss_max_mib": {k: max((s["rss_mib"][k] or 0) for s in samples) for k in first["rss_mib"]},
        "obs_lag": {"start": first["obs_lag"], "mid": mid["obs_lag"], "end": last["obs_lag"],
                    "max": max((s["obs_lag"] for s in finite), default=None)},
        "patch_lag": {"start": first["patch_lag"], "mid": mid["patch_lag"], "end": last["patch_lag"],
                      "max": max((s["patch_lag"] for s in finite), default=None)},
        "restarts": restarts,
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamflame bench soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--rate", type=float, default=400.0, help="observations per second (default 400)")
    ap.add_argument("--series", type=int, default=200)
    ap.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples (default 30)")
    ap.add_argument("--worker-throttle-ms", type=int, default=0, help="worker.throttle_ms (default 0)")
    ap.add_argument("--model", help="checkpoint directory (default: the shipped model)")
    ap.add_argument("--json", help="also write the figures (with every sample) to this file")
    args = ap.parse_args(argv)
    import os
    import platform


    configure_logging("WARNING")
    res = run_soak(minutes=args.minutes, rate=args.rate, n_series=args.series, sample_s=args.sample_s,
                   throttle_ms=args.worker_throttle_ms, model=args.model,
                   log=lambda *a: print(*a, flush=True))  # live progress when redirected to a file
    res["machine"] = f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}"
    res["date_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    for k, v in res.items():
        if k != "samples":
            print(f"{k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 1 if res["restarts"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
