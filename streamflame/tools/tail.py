"""`streamflame tail`: forecasts and alerts as they arrive, one line each.

    FCST  sensors.temp.kitchen  seq=3  origin=2024-01-01T07:50:00Z  H=96  mean=[21.40 21.38 21.35 21.30]  p10..p90=[20.10 22.71]
    ALERT sensors.temp.kitchen  2024-01-01T08:10:00Z  value=30.20  above [20.10, 22.71] score=2.31  (forecast seq=3, step 2)
    OPEN     deviation     sensors.temp.kitchen  2024-01-01T08:10:00Z  major     value=30.20 expected=21.40 above  p=3.1e-09
    RESOLVED deviation     sensors.temp.kitchen  2024-01-01T08:40:00Z  after 7 obs since 2024-01-01T08:10:00Z, peak critical (score 2.41)

Alert episodes (ingest, docs/schemas.md) show one line when they open and one when they
resolve; their `update` events (a higher severity) are folded into the resolve line's
peak, unless `--updates` prints them too (`UPDATE` lines).

`mean` shows the first four steps; `p10..p90` the 10 % and 90 % quantiles of step 1
(or the outermost levels the forecast has). Alerts are highlighted (red on a terminal).
Starts at the end of the topics unless `--from-beginning`.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
import time

from streamflame.alerts.settings import SEVERITIES
from streamflame.messages import AlertEpisode, decode_alert_any, decode_forecast
from streamflame.tools import UsageError, add_connection_args, connection, fail

RED, BOLD, RESET = "\033[31m", "\033[1m", "\033[0m"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="streamflame tail", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", metavar="GLOB", help="only series whose id matches this shell glob")
    ap.add_argument("--from-beginning", action="store_true", help="print what the topics already hold first")
    ap.add_argument("--max", type=int, metavar="N", help="stop after N printed messages")
    ap.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds without a new message")
    ap.add_argument("--no-forecasts", action="store_true", help="alerts only")
    ap.add_argument("--no-alerts", action="store_true", help="forecasts only")
    ap.add_argument("--updates", action="store_true", help="print the update events of alert episodes as well")
    ap.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                    help="highlight alerts with ANSI colours (auto: when stdout is a terminal)")
    add_connection_args(ap)
    return ap


def _num(x) -> str:
    return "nan" if x is None else f"{x:.2f}"


def format_forecast(fc) -> str:
    levels = sorted(fc.quantiles, key=float)
    lo = "0.1" if "0.1" in fc.quantiles else levels[0]
    hi = "0.9" if "0.9" in fc.quantiles else levels[-1]
    band = f"p{float(lo) * 100:g}..p{float(hi) * 100:g}=[{_num(fc.quantiles[lo][0])} {_num(fc.quantiles[hi][0])}]"
    mean = " ".join(_num(v) for v in fc.mean[:4])
    return f"FCST  {fc.series_id}  seq={fc.seq}  origin={fc.origin}  H={fc.horizon}  mean=[{mean}]  {band}"


def format_alert(al, color: bool = False) -> str:
    line = (f"ALERT {al.series_id}  {al.timestamp}  value={_num(al.value)}  {al.direction} "
            f"[{_num(al.lower)}, {_num(al.upper)}] score={al.score:.2f}  "
            f"(forecast seq={al.forecast_seq}, step {al.step})")
    return f"{BOLD}{RED}{line}{RESET}" if color else line


class EpisodeFolder:
    """Formats episode events: open and resolve lines; updates folded into the peak
    severity shown at the resolve (or printed with ``updates``)."""

    def __init__(self, updates: bool = False):
        self.updates = updates
        self.peak: dict[str, tuple[str, float]] = {}  # alert_id -> (severity, score), open episodes

    def format(self, ev, color: bool = False) -> str | None:

        sev, score = ev.severity, ev.score
        old = self.peak.get(ev.alert_id)
        if old is not None and (SEVERITIES.index(old[0]), old[1]) > (SEVERITIES.index(sev), score):
            sev, score = old
        if ev.event == "resolve":
            self.peak.pop(ev.alert_id, None)
            line = (f"RESOLVED {ev.kind:<13} {ev.series_id}  {ev.timestamp}  after {ev.observations} obs since "
                    f"{ev.started_at}, peak {sev} (score {score:.2f})")
            return f"{BOLD}{line}{RESET}" if color else line
        self.peak[ev.alert_id] = (sev, score)
        if ev.event == "update" and not self.updates:
            return None
        head = "OPEN    " if ev.event == "open" else "UPDATE  "
        extra = f"value={_num(ev.value)}"
        if ev.expected is not None:
            extra += f" expected={_num(ev.expected)}"
        if ev.direction:
            extra += f" {ev.direction}"
        if ev.p_value is not None:
            extra += f"  p={ev.p_value:.2g}"
        line = f"{head} {ev.kind:<13} {ev.series_id}  {ev.timestamp}  {ev.severity:<9} {extra}"
        return f"{BOLD}{RED}{line}{RESET}" if color else line


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.no_forecasts and args.no_alerts:
        return fail("--no-forecasts and --no-alerts leave nothing to show")
    try:
        cfg, _ = connection(args.config, args.run_dir)
    except UsageError as e:
        return fail(str(e))
    from pydantic import ValidationError

    from streamflame.adapters.kafka_io import TopicPartition, make_reader  # lazy: kafka-python

    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    topics = {}
    if not args.no_forecasts:
        topics[cfg.topics.forecasts] = decode_forecast
    if not args.no_alerts:
        topics[cfg.topics.alerts] = decode_alert_any
    episodes = EpisodeFolder(args.updates)
    consumer = make_reader(cfg)
    try:
        tps = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                return fail(f"topic {topic} does not exist on {cfg.kafka.bootstrap}", 1)
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if args.from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        printed = 0
        start_end: dict = {}
        last = time.monotonic()
        while args.max is None or printed < args.max:
            if args.timeout is not None and time.monotonic() - last > args.timeout:
                break
            polled = consumer.poll(timeout_ms=200)
            for tp in tps:  # the true end of each partition when tail started: its first fetch's high-water mark
                if tp not in start_end and consumer.highwater(tp) is not None:
                    start_end[tp] = consumer.highwater(tp)
            for tp, records in polled.items():
                for r in records:
                    last = time.monotonic()
                    if not args.from_beginning and r.offset < start_end.get(tp, 0):
                        continue  # older than tail (seek_to_end can land early: Tansu under-reports the end)
                    if args.series and r.key and not fnmatch.fnmatchcase(r.key.decode(errors="replace"), args.series):
                        continue  # cheap key check before decoding
                    try:
                        msg = topics[tp.topic](r.value)
                    except ValidationError:
                        print(f"?     {tp.topic}[{tp.partition}]@{r.offset}: not a valid message", file=sys.stderr)
                        continue
                    if args.series and not fnmatch.fnmatchcase(msg.series_id, args.series):
                        continue
                    if isinstance(msg, AlertEpisode):
                        line = episodes.format(msg, color)
                        if line is None:
                            continue
                    elif tp.topic == cfg.topics.alerts:
                        line = format_alert(msg, color)
                    else:
                        line = format_forecast(msg)
                    print(line, flush=True)
                    printed += 1
                    if args.max is not None and printed >= args.max:
                        break
                if args.max is not None and printed >= args.max:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
