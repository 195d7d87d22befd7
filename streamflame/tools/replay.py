"""`streamflame replay FILE`: a CSV/Parquet file of observations into the observations topic.

The file is read by the eval loader (`streamflame.data.load_table`: long
`series_id,timestamp,value` or wide, any order, time zones kept) and its series
are sent in time order, interleaved as live sensors would send them (key =
series_id). Grid points without a value (gaps in the file) are not sent.
Timestamps go out as epoch milliseconds (naive times are taken as UTC).
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
import time

import numpy as np

from streamflame.messages import ObservationBatchMessage, ObservationMessage, encode
from streamflame.tools import UsageError, add_connection_args, connection, fail

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="streamflame replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  streamflame replay data.csv                     # as fast as possible\n"
               "  streamflame replay data.parquet --rate 500      # 500 observations per second\n"
               "  streamflame replay data.csv --speedup 3600 --batch 48   # 1 h of data per second, 48 per message")
    ap.add_argument("file", metavar="FILE", help="CSV (optionally compressed) or Parquet, long or wide")
    speed = ap.add_mutually_exclusive_group()
    speed.add_argument("--rate", type=float, metavar="OBS_PER_S", help="send this many observations per second")
    speed.add_argument("--speedup", type=float, metavar="X",
                       help="follow the file's timestamps, X times faster than real time "
                            "(a batch message goes out when its last observation is due)")
    ap.add_argument("--batch", type=int, default=1, metavar="N",
                    help="up to N observations of one series per message (the batch message form); default 1")
    ap.add_argument("--series", metavar="GLOB", help="only series whose id matches this shell glob")
    ap.add_argument("--freq", help="grid step of every series (default: inferred per series)")
    ap.add_argument("--tz", help="time zone for naive timestamps (default: UTC)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_connection_args(ap)
    return ap


def plan(series, batch: int) -> list[tuple[int, str, np.ndarray, np.ndarray]]:
    """Messages as (send-time ms, series_id, timestamps ms, values), in time order:
    each series cut into runs of ``batch`` observations, runs ordered by their last timestamp."""
    from streamflame.data.times import epoch_ms  # lazy: pandas

    out = []
    for s in series:
        ok = ~np.isnan(s.values)
        ts = epoch_ms(s.timestamps())[ok]
        vals = s.values[ok]
        for i in range(0, len(ts), batch):
            out.append((int(ts[min(i + batch, len(ts)) - 1]), s.series_id, ts[i:i + batch], vals[i:i + batch]))
    out.sort(key=lambda m: (m[0], m[1]))
    return out


def encode_message(sid: str, ts: np.ndarray, vals: np.ndarray, batch: bool) -> bytes:

    if batch:
        return encode(ObservationBatchMessage(series_id=sid, timestamps=ts.tolist(), values=vals.tolist()))
    return encode(ObservationMessage(series_id=sid, timestamp=int(ts[0]), value=float(vals[0])))


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, a line
    every few seconds otherwise)."""

    def __init__(self, total: int, enabled: bool = True, width: int = 30):
        self.total, self.enabled, self.width = max(1, total), enabled, width
        self.tty = sys.stderr.isatty()
        self.t0 = self.last = time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < (0.2 if self.tty else 5.0)):
            return
        self.last = now
        frac = min(1.0, done / self.total)
        bar = "#" * int(frac * self.width)
        rate = done / max(1e-9, now - self.t0)
        line = f"[{bar:<{self.width}}] {100 * frac:5.1f}% {done}/{self.total} obs {rate:,.0f} obs/s"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self, done: int) -> None:
        self.update(done, force=True)
        if self.enabled and self.tty:
            print(file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.batch < 1:
        return fail("--batch must be at least 1")
    if (args.rate is not None and args.rate <= 0) or (args.speedup is not None and args.speedup <= 0):
        return fail("--rate and --speedup must be positive")
    from streamflame.data.loader import DataError, load_table  # lazy: pandas

    try:
        cfg, source = connection(args.config, args.run_dir)
        series = load_table(args.file, freq=args.freq, tz=args.tz)
    except (UsageError, DataError) as e:
        return fail(str(e), 2 if isinstance(e, UsageError) else 1)
    if args.series:
        series = [s for s in series if fnmatch.fnmatchcase(s.series_id, args.series)]
        if not series:
            return fail(f"no series in {args.file} matches {args.series!r}", 1)
    messages = plan(series, args.batch)
    total = sum(len(m[2]) for m in messages)

    from streamflame.adapters.kafka_io import make_producer  # lazy: kafka-python

    topic = cfg.topics.observations
    print(f"replaying {total} observations of {len(series)} series from {args.file} into {topic} "
          f"({cfg.kafka.bootstrap}, from {source})", file=sys.stderr)
    producer = make_producer(cfg)
    progress = Progress(total, enabled=not args.no_progress)
    sent = n_msgs = 0
    t_start = time.monotonic()
    t0_data = min((int(m[2][0]) for m in messages), default=0)  # the data's first timestamp
    failures: list[BaseException] = []
    try:
        for due_ms, sid, ts, vals in messages:
            if args.rate:
                wait = sent / args.rate - (time.monotonic() - t_start)
            elif args.speedup:
                wait = (due_ms - t0_data) / 1000 / args.speedup - (time.monotonic() - t_start)
            else:
                wait = 0.0
            if wait > 0:
                producer.flush()
                time.sleep(wait)
            fut = producer.send(topic, key=sid.encode(), value=encode_message(sid, ts, vals, args.batch > 1))
            fut.add_errback(failures.append)
            sent += len(ts)
            n_msgs += 1
            progress.update(sent)
        producer.flush()
    except KeyboardInterrupt:
        producer.flush()
        progress.close(sent)
        print(f"interrupted: sent {sent} observations in {n_msgs} messages", file=sys.stderr)
        return 130
    finally:
        producer.close()
    progress.close(sent)
    elapsed = time.monotonic() - t_start
    if failures:
        return fail(f"{len(failures)} messages were not delivered: {failures[0]!r}", 1)
    print(f"sent {sent} observations of {len(series)} series in {n_msgs} messages to {topic} "
          f"in {elapsed:.1f} s ({sent / max(elapsed, 1e-9):,.0f} obs/s)")
    return 0
