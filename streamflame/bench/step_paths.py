"""The worker's host overhead per series: the list path against the StateBatch path, in one run.

    python -m streamflame.bench step --path list,batch [--tiny] [--batch 256] [--rounds 5]

One refresh of B series = stored bytes -> states -> one patch each -> 100-sample H = 96
forecasts -> bytes, as the worker does it:
    list   SeriesState.from_bytes x B, update_many, forecast_many, to_bytes x B (the old path)
    batch  StateBatch.append_many, step_batch, encode, forecast_batch (model/batch.py,
           model/state_bulk.py), as the worker calls them (the new states are encoded before
           the forecasts, while the step's tensors are in cache); the sample paths not copied
           back (samples=False), as the worker asks unless a group publishes them
host overhead per series = (a path's time - the time of its model calls in that same call) / B,
the model calls being the tensor work: Flame.advance and each forecast chunk's noise, flow,
mean and quantiles (Forecaster._forecast_stacked), timed around each call. Measured within
one call, it stays readable on a busy machine where whole-call times swing by tens of
percent; the paths run in alternating rounds, medians over the rounds are printed. ``--tiny`` times the
small test config, where the tensor work is small and the host's share shows.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from streamflame.model import Forecaster, SeriesState


def _prepare(f: Forecaster, B: int, rng, series) -> tuple[list[bytes], np.ndarray]:
    p = f.config.patch_len
    base = [f.state_from_history(series(4 * p, rng), step_seconds=600.0) for _ in range(min(B, 16))]
    blobs = [base[i % len(base)].to_bytes() for i in range(B)]
    return blobs, np.stack([series(p, rng) for _ in range(B)])


def compare_paths(f: Forecaster, args, series) -> None:
    rng = np.random.default_rng(1)
    B, H, S = args.batch, args.horizon, args.samples
    blobs, patches = _prepare(f, B, rng, series)
    seeds = list(range(B))
    sync = (lambda: torch.cuda.synchronize()) if f.device.type == "cuda" else (lambda: None)
    sb = f.state_batch(B)

    def run_list():
        states = [SeriesState.from_bytes(b) for b in blobs]
        new = f.update_many(states, patches)
        f.forecast_many(new, H, num_samples=S, seeds=seeds)
        return [s.to_bytes() for s in new]

    codec: list[tuple[float, float]] = []                     # the batch path's decode and encode CPU time

    def run_batch():
        c = time.process_time()
        sb.clear()
        rows = sb.append_many(blobs)
        sb.seal()
        c = time.process_time() - c
        f.step_batch(sb, patches, rows)
        e = time.process_time()
        out = sb.encode(rows)               # as the worker: the new states before the forecasts
        codec.append((c, time.process_time() - e))
        f.forecast_batch(sb, rows, H, num_samples=S, seeds=seeds, samples=False)   # as the worker asks
        return out

    assert run_list() == run_batch(), "the two paths wrote different state bytes"
    paths = {"list": run_list, "batch": run_batch}
    chosen = [p for p in args.path.split(",") if p]
    for p in chosen:
        if p not in paths:
            raise SystemExit(f"--path: unknown path {p!r} (list, batch)")
    inner = _TensorClock(f, sync)
    # per path and clock (wall, cpu = this process' CPU time): the call's time and its model calls'
    total = {(p, c): [] for p in chosen for c in ("wall", "cpu")}
    model = {k: [] for k in total}
    with torch.no_grad(), inner:
        for _ in range(args.rounds + 1):                       # the first round warms up, not counted
            for name in chosen:
                sync()
                inner.wall = inner.cpu = 0.0
                t, c = time.perf_counter(), time.process_time()
                paths[name]()
                sync()
                total[name, "wall"].append(time.perf_counter() - t)
                total[name, "cpu"].append(time.process_time() - c)
                model[name, "wall"].append(inner.wall)
                model[name, "cpu"].append(inner.cpu)
    us = 1e6 / B
    print(f"\n## host overhead per series: batch of {B}, S={S}, H={H}, {args.rounds} alternating rounds, "
          f"torch threads {torch.get_num_threads()}")
    print("host = the call's time less its model calls' (medians); cpu = this process' CPU time, all threads")
    print(f"{'path':<6} {'clock':<5} {'total us':>9} {'model us':>9} {'host us':>8} {'series/s':>9}  host us per round")
    med = {}
    for (k, c), tot in total.items():
        host = [a - b for a, b in zip(tot[1:], model[k, c][1:])]
        med[k, c] = statistics.median(host) * us
        print(f"{k:<6} {c:<5} {statistics.median(tot[1:]) * us:>9.1f} {statistics.median(model[k, c][1:]) * us:>9.1f} "
              f"{med[k, c]:>8.1f} {B / statistics.median(tot[1:]):>9.0f}  " + " ".join(f"{h * us:.1f}" for h in host))
    if "batch" in chosen:
        host = [a - b for a, b in zip(total["batch", "cpu"][1:], model["batch", "cpu"][1:])]
        dec, enc = (statistics.median(x) * us for x in zip(*codec[2:]))
        calls = statistics.median(h - c - e for h, (c, e) in zip(host, codec[2:])) * us
        print(f"batch path host, cpu us/series: decode {dec:.1f} (append_many + seal), encode {enc:.1f} (encode), "
              f"step_batch + forecast_batch around the model calls {calls:.1f}")
    if "list" in chosen and "batch" in chosen:
        for c in ("wall", "cpu"):
            print(f"host overhead per series ({c}): list {med['list', c]:.1f} us -> batch {med['batch', c]:.1f} us "
                  f"({med['list', c] / med['batch', c]:.1f}x less)")


class _TensorClock:
    """Times the model's tensor work inside a path: Flame.advance and Forecaster._forecast_stacked
    (noise, flow, mean, quantiles of one chunk of stacked states) add their time to ``wall``
    and their CPU time to ``cpu``."""

    def __init__(self, f: Forecaster, sync):
        self.f, self.sync, self.wall, self.cpu = f, sync, 0.0, 0.0

    def _timed(self, fn):
        def call(*a, **k):
            self.sync()
            t, c = time.perf_counter(), time.process_time()
            out = fn(*a, **k)
            self.sync()
            self.wall += time.perf_counter() - t
            self.cpu += time.process_time() - c
            return out
        return call

    def __enter__(self):
        self.f.model.advance = self._timed(self.f.model.advance)
        self.f._forecast_stacked = self._timed(self.f._forecast_stacked)
        return self

    def __exit__(self, *exc):
        del self.f.model.advance, self.f._forecast_stacked
