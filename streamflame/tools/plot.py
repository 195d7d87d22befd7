"""`streamflame plot SERIES`: a fan chart PNG of a series' history and its latest forecast.

Two sources:

* a live stack (default): the latest forecast of SERIES from the forecasts topic and the
  observations ingest accepted (its completed patches, from the patches topic: what went to
  the DLQ is not drawn, nor the open patch), both read backwards from the end of the
  series' partition only as far as needed; time (UTC) on the x-axis, gaps as breaks;
* an evaluation run: `--eval FORECASTS.csv --data DATA` (the forecast file contract of
  docs/evaluation.md and the data it was made from); the latest origin of SERIES unless
  `--origin`. What was observed after the origin is drawn in grey.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from streamflame.core.constants import PATCH_LEN
from streamflame.data.loader import DataError, load_table
from streamflame.eval.scoring import QUANTILE_COLUMNS, ForecastFileError, check_contract, origin_lengths
from streamflame.messages import decode_forecast, decode_patch
from streamflame.tools import UsageError, add_connection_args, connection, fail
from streamflame.tools.viz import save_fan_charts

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


def accepted_history(patches: list, since_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """(epoch ms, value) of every grid slot after ``since_ms`` in these patches of one
    series, in time order: the observations ingest accepted, NaN where a slot had none.
    A patch seen twice (re-emitted after a restart) counts once."""
    by_seq = {p.seq: p for p in patches}
    if not by_seq:
        return np.array([], dtype=np.int64), np.array([], dtype=float)
    ordered = [by_seq[k] for k in sorted(by_seq)]
    t = np.concatenate([p.start_ms + p.freq_ms * np.arange(PATCH_LEN, dtype=np.int64) for p in ordered])
    v = np.concatenate([p.values_array() for p in ordered])
    keep = t > since_ms
    return t[keep], v[keep]


def _messages(records: list, decode, series_id: str) -> list:
    """The records' messages of this series; a record that does not decode (not written by
    StreamFlame) is left out."""
    out = []
    for r in records:
        try:
            m = decode(r.value)
        except ValueError:
            continue
        if m.series_id == series_id:
            out.append(m)
    return out


def _utc(ms: np.ndarray) -> np.ndarray:
    return np.asarray(ms, dtype=np.int64).astype("datetime64[ms]")


def from_stack(cfg, series_id: str, history: int) -> dict:
    """Fan chart arguments for the latest forecast of a series on a live stack.

    History is what ingest accepted: the completed patches of the patches topic (late,
    duplicate and invalid observations went to the DLQ and are not there; the open patch
    is not drawn), read from the end of the series' partition backwards as far as
    ``history`` grid steps need; the forecast likewise from the forecasts topic."""
    from streamflame.adapters.kafka_io import make_reader  # lazy: kafka-python
    from streamflame.tools.keytail import read_key_tail  # lazy: kafka-python

    key = series_id.encode()
    consumer = make_reader(cfg)
    try:
        tail = read_key_tail(consumer, cfg.topics.forecasts, key,
                             enough=lambda recs: bool(_messages(recs, decode_forecast, series_id)))
        fcs = _messages(tail.records, decode_forecast, series_id)
        if not fcs:
            raise UsageError(f"no forecast for series {series_id!r} in {cfg.topics.forecasts}")
        fc = max(fcs, key=lambda f: f.seq)
        since = fc.origin_ms - history * fc.freq_ms
        tail = read_key_tail(consumer, cfg.topics.patches, key, enough=lambda recs: any(
            p.start_ms <= since for p in _messages(recs[:1], decode_patch, series_id)))
    finally:
        consumer.close()
    patches = _messages(tail.records, decode_patch, series_id)
    t, v = accepted_history(patches, since)
    past = t <= fc.origin_ms
    return dict(hist_x=_utc(t[past]), hist_y=v[past], fc_x=_utc(np.array(fc.step_timestamps_ms())),
                mean=fc.mean, quantiles=fc.quantiles, actual_x=_utc(t[~past]), actual_y=v[~past],
                title=f"{series_id}: accepted observations and the forecast after patch {fc.seq} "
                      f"(origin {fc.origin}, {fc.horizon} x {fc.frequency}), UTC")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (args.eval is None) != (args.data is None):
        return fail("--eval and --data go together")
    if args.history < 1:
        return fail("--history must be at least 1")

    out = Path(args.output or f"fan_{re.sub(r'[^A-Za-z0-9._-]+', '_', args.series)}.png")
    try:
        if args.eval:

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
