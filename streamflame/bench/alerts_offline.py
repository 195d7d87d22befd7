"""`streamflame bench alerts-offline`: the detectors alone (no broker, no ingest process) on
real series with the same injections and scoring as ``streamflame bench alerts``, in seconds.

    streamflame bench alerts-offline [--split train|validation] [--series 24] [--budget 1.0]
                                     [--alpha 0.8] [--beta 0.1] [--windows 1,2,3,5,8]

Detector changes are tuned on ``--split train`` (sensor-like series of the training sources,
at most hourly, 4,032 slots each, spread over sources) and reported once on the held-out
series through ``streamflame bench alerts``: the validation series are never tuned on.
Each series' slots go through :class:`~streamflame.alerts.episodes.SeriesAlerts` as ingest
feeds them (NaN slots are missing, not fed).
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from streamflame.alerts import episodes
from streamflame.alerts.episodes import SeriesAlerts
from streamflame.alerts.judge import TrackerParams
from streamflame.alerts.settings import WEEK_MS, AlertSettings, thresholds
from streamflame.bench import inject as I
from streamflame.bench.alerts import _aggregate, _series, print_by_movement

LENGTH = 4032
MAX_FREQ_MS = 3_600_000


def training_pick(n: int, seed: int = 0) -> list[tuple[str, int, np.ndarray]]:
    """``n`` series of the training sources (sub-hourly to hourly, the last LENGTH slots >= 95 %
    observed), taken in turn from each source."""
    from streamflame.data.registry import training_series  # lazy: pandas

    rng = np.random.default_rng(seed)
    by_source: dict[str, list] = {}
    for s in training_series():
        try:
            ms = int(s.freq.nanos // 1_000_000)
        except ValueError:          # calendar frequencies (monthly, yearly)
            continue
        if ms > MAX_FREQ_MS or len(s.values) < LENGTH:
            continue
        v = s.values[-LENGTH:]
        if not np.all(np.isfinite(v[:64])) or np.mean(np.isfinite(v)) < 0.95 or np.nanstd(v) == 0:
            continue
        by_source.setdefault(s.series_id.split("/")[0], []).append((s.series_id, ms, v))
    out, keys, i = [], sorted(by_source), 0
    while len(out) < n and any(by_source.values()):
        lst = by_source[keys[i % len(keys)]]
        i += 1
        if lst:
            out.append(lst.pop(int(rng.integers(len(lst)))))
    return out


def opens(v: np.ndarray, freq: int, s: AlertSettings, params: TrackerParams) -> list[tuple[str, int]]:
    """(kind, slot) of every episode opened on ``v``."""
    thr = thresholds(s, freq)
    saved, episodes._PARAMS = episodes._PARAMS, params
    try:
        sa, out = SeriesAlerts(), []
        for q, y in enumerate(v):
            if np.isfinite(y):
                sa.feed(q, q * freq, float(y), freq, s, thr, out)
    finally:
        episodes._PARAMS = saved
    return [(e.kind, e.slot) for e in out if e.event == "open"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamflame bench alerts-offline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=("train", "validation"), default="train")
    ap.add_argument("--series", type=int, default=24)
    ap.add_argument("--budget", type=float, default=AlertSettings().false_alarm_budget)
    ap.add_argument("--windows", default=",".join(map(str, AlertSettings().windows)))
    ap.add_argument("--alpha", type=float, default=TrackerParams().alpha)
    ap.add_argument("--beta", type=float, default=TrackerParams().beta)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-gap", type=int, default=None, help="AlertSettings.min_gap (default: its default)")
    ap.add_argument("--resolve-after", type=int, default=None, help="AlertSettings.resolve_after")
    args = ap.parse_args(argv)
    if args.split == "train":
        base = training_pick(args.series, args.seed)
    else:
        base = _series(args.series, LENGTH)
    s = AlertSettings(false_alarm_budget=args.budget, windows=tuple(int(w) for w in args.windows.split(",")),
                      **({"min_gap": args.min_gap} if args.min_gap is not None else {}),
                      **({"resolve_after": args.resolve_after} if args.resolve_after is not None else {}))
    params = TrackerParams(alpha=args.alpha, beta=args.beta)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    labels: dict[str, list] = {}
    found: dict[str, list] = {}
    false_eps: Counter = Counter()
    weeks = 0.0
    kind_of: dict[str, str] = {}                      # series -> I.movement of its clean values
    series_fe: dict[str, int] = {}
    series_weeks: dict[str, float] = {}
    for sid, freq, v in base:
        labels[sid] = injs = I.plan(v, rng, 2 * 48 + 100, 240)
        found[sid] = opens(I.apply(v, injs, rng), freq, s, params)
        fe = [k for k, _ in opens(v, freq, s, params)]
        false_eps.update(fe)
        series_fe[sid] = len(fe)
        series_weeks[sid] = float(np.isfinite(v[96:]).sum()) * freq / WEEK_MS
        weeks += series_weeks[sid]
        kind_of[sid] = I.movement(v)
    agg, episodes, matched = _aggregate(labels, lambda sid, injs: I.score(injs, found[sid]))
    print(f"# streamflame bench alerts-offline | {time.strftime('%Y-%m-%d %H:%M')} | split {args.split}, "
          f"{len(base)} series x {LENGTH} slots ({', '.join(f'{k} {n}' for k, n in sorted(Counter(b[0].split('/')[0] for b in base).items()))}) "
          f"| budget {s.false_alarm_budget}, windows {list(s.windows)}, alpha {params.alpha}, beta {params.beta} "
          f"| {time.perf_counter() - t0:.1f} s")
    print("kind          size  injected  recall  median delay (obs)")
    for (kind, size), (n, d, dl) in sorted(agg.items()):
        print(f"{kind:12s} {size:4.0f}σ {n:9d}  {d / n:6.2f}  {np.median(dl) if dl else float('nan'):6.0f}")
    print(f"precision {matched}/{episodes} = {matched / max(episodes, 1):.2f} | false episodes per series-week "
          f"(clean, {weeks:.1f} series-weeks): {sum(false_eps.values()) / weeks:.2f} ("
          + ", ".join(f"{k} {n / weeks:.2f}" for k, n in sorted(false_eps.items())) + ")")
    print_by_movement(kind_of, labels, lambda sid, injs: I.score(injs, found[sid]), series_fe, series_weeks)
    return 0
