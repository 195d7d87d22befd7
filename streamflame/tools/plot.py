"""`streamflame plot SERIES`: a fan chart PNG of a series' history and its latest forecast.

Two sources:

* a live stack (default): the latest forecast of SERIES from the forecasts topic and
  its history from the observations topic (both read from the beginning);
* an evaluation run: `--eval FORECASTS.csv --data DATA` (the forecast file contract of
  docs/evaluation.md and the data it was made from); the latest origin of SERIES unless
  `--origin`. What was observed after the origin is drawn in grey.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from streamflame.tools import UsageError, add_connection_args, connection, fail


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="streamflame plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  streamflame plot sensors.temp.kitchen                 # from the stack in .streamflame/\n"
               "  streamflame plot T1 --eval fc.csv --data data.csv -o T1.png")
    ap.add_argument("series", metavar="SERIES", help="series_id")
    ap.add_argument("-o", "--output", metavar="PNG", help="output file (default: fan_<SERIES>.png)")
    ap.add_argument("--history", type=int, default=432, metavar="N", help="grid steps of history shown (default 432)")
    ev = ap.add_argument_group("from an evaluation run")
    ev.add_argument("--eval", metavar="FORECASTS.csv", help="forecast file (streamflame eval --output)")
    ev.add_argument("--data", metavar="DATA", help="the data file the forecasts were made from")
    ev.add_argument("--origin", help="which window: its origin as written in the file (default: the latest)")
    ev.add_argument("--freq", help="grid step of the data (default: inferred, as `streamflame eval`)")
    ev.add_argument("--tz", help="time zone of the data (as `streamflame eval --tz`)")
    add_connection_args(ap)
    return ap


def from_eval(series_id: str, forecasts: str, data: str, origin: str | None, history: int,
              freq: str | None = None, tz: str | None = None) -> dict:
    """Fan chart arguments for one window of an eval forecast file."""
    from streamflame.data.loader import load_table
    from streamflame.eval.scoring import QUANTILE_COLUMNS, check_contract, origin_lengths

    df = check_contract(pd.read_csv(forecasts, dtype={"series_id": str, "origin": str}), forecasts)
    df = df[df.series_id == series_id]
    if df.empty:
        raise UsageError(f"{forecasts}: no forecasts for series {series_id!r}")
    series = {s.series_id: s for s in load_table(data, freq=freq, tz=tz) if s.series_id == series_id}
    if not series:
        raise UsageError(f"{data}: no series {series_id!r}")
    s = series[series_id]
    lengths = origin_lengths(df, series, forecasts)
    if origin is not None:
        pick = (df.origin == origin).to_numpy()
        if not pick.any():
            raise UsageError(f"{forecasts}: series {series_id!r} has no origin {origin!r} "
                             f"(origins: {', '.join(sorted(df.origin.unique())[-5:])} ...)")
        length = int(lengths[pick][0])
    else:
        length = int(lengths.max())
    win = df[lengths == length].sort_values("step")
    h = int(win.step.max())
    ts = s.timestamps()
    fc_x = pd.date_range(s.timestamp_at(length - 1), periods=h + 1, freq=s.freq)[1:]  # past the data's end too
    lo = max(0, length - history)
    return dict(hist_x=ts[lo:length], hist_y=s.values[lo:length], fc_x=fc_x, mean=win["mean"].to_numpy(),
                quantiles={c[1:]: win[c].to_numpy() for c in QUANTILE_COLUMNS},
                actual_x=ts[length:length + h], actual_y=s.values[length:length + h],
                title=f"{series_id}: forecast from {win.origin.iloc[0]} ({Path(forecasts).name}), {h} steps")


def read_topic(cfg, topic: str, key: bytes, timeout_s: float = 60.0) -> list:
    """Every record of ``topic`` with this key, from the beginning to the current end."""
    from kafka import KafkaConsumer, TopicPartition

    kw = cfg.kafka.client_kwargs("consumer")
    for k in ("session_timeout_ms", "heartbeat_interval_ms"):
        kw.pop(k, None)
    consumer = KafkaConsumer(enable_auto_commit=False, **kw)
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise UsageError(f"topic {topic} does not exist on {cfg.kafka.bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out = []
        deadline = time.monotonic() + timeout_s
        # Up to the high-water mark each partition's last fetch reported (Tansu's
        # end_offsets() is not the true end).
        while True:
            for tp, records in consumer.poll(timeout_ms=300).items():
                out += [r for r in records if r.key == key]
            if all(consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp)
                   for tp in tps):
                break
            if time.monotonic() > deadline:
                raise UsageError(f"reading {topic} timed out")
        return out
    finally:
        consumer.close()


def from_stack(cfg, series_id: str, history: int) -> dict:
    """Fan chart arguments for the latest forecast of a series on a live stack."""
    from streamflame.schemas import RejectedMessage, decode_forecast, decode_observation_message

    key = series_id.encode()
    fcs = [decode_forecast(r.value) for r in read_topic(cfg, cfg.topics.forecasts, key)]
    fcs = [f for f in fcs if f.series_id == series_id]
    if not fcs:
        raise UsageError(f"no forecast for series {series_id!r} in {cfg.topics.forecasts}")
    fc = max(fcs, key=lambda f: f.seq)
    obs: dict[int, float] = {}
    ing = cfg.ingest
    for r in read_topic(cfg, cfg.topics.observations, key):
        try:
            batch = decode_observation_message(r.value, max_series_id_len=ing.max_series_id_len,
                                               max_message_bytes=ing.max_message_bytes, max_batch=ing.max_batch)
        except RejectedMessage:
            continue
        obs.update({o.timestamp_ms: o.value for o in batch if o.series_id == series_id and o.value is not None})
    t = np.array(sorted(obs), dtype=np.int64)
    t = t[t > fc.origin_ms - history * fc.freq_ms]
    past, after = t[t <= fc.origin_ms], t[t > fc.origin_ms]
    as_dt = lambda ms: pd.to_datetime(ms, unit="ms", utc=True)  # noqa: E731
    return dict(hist_x=as_dt(past), hist_y=[obs[x] for x in past], fc_x=as_dt(np.array(fc.step_timestamps_ms())),
                mean=fc.mean, quantiles=fc.quantiles, actual_x=as_dt(after), actual_y=[obs[x] for x in after],
                title=f"{series_id}: forecast after patch {fc.seq}, origin {fc.origin}, {fc.horizon} x {fc.frequency}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (args.eval is None) != (args.data is None):
        return fail("--eval and --data go together")
    if args.history < 1:
        return fail("--history must be at least 1")
    from streamflame.viz import save_fan_charts

    out = Path(args.output or f"fan_{re.sub(r'[^A-Za-z0-9._-]+', '_', args.series)}.png")
    try:
        if args.eval:
            from streamflame.data.loader import DataError
            from streamflame.eval.scoring import ForecastFileError

            try:
                panel = from_eval(args.series, args.eval, args.data, args.origin, args.history, args.freq, args.tz)
            except (DataError, ForecastFileError) as e:
                return fail(str(e), 1)
        else:
            cfg, _ = connection(args.config, args.run_dir)
            panel = from_stack(cfg, args.series, args.history)
    except UsageError as e:
        return fail(str(e), 1)
    save_fan_charts([panel], out)
    print(out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
