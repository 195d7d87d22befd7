"""bench step --refresh: series refreshed per second -- one patch of update plus a forecast (--samples
paths, --horizon steps) for each of --batch series -- by several paths, in alternating rounds (a busy
machine slows them alike).

    python -m streamflame.bench step --refresh batch:float32,batch:bf16 [--baseline-tree DIR] [--checkpoint DIR]

A refresh is what the worker does per series: stored state bytes -> state, one patch, a forecast,
state bytes. Each name in --refresh, [list:|batch:]MATMUL[/compile][+SAMPLES], is a path of this
tree: ``list`` = SeriesState.from_bytes, update_many, forecast_many, to_bytes (the worker before
#16); ``batch`` = StateBatch.append_many, step_batch, forecast_batch, encode (the default), with
that sampling arithmetic (``Forecaster.set_arithmetic``): "batch:bf16/compile+64" = bf16 matmuls,
compiled, 64 samples instead of --samples. --baseline-tree DIR also times another StreamFlame
source tree (today's code: ``git archive REV streamflame | tar -x -C DIR``) on the same weights and
histories, as "baseline", by the list path exactly as that revision's worker called it. Ratios are
against the first path.
"""
from __future__ import annotations

import importlib
import importlib.util
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import streamflame.model as this

BASELINE_PACKAGE = "_streamflame_baseline"


@dataclass
class RefreshPath:
    name: str
    run: Callable[[], None]          # one refresh of the whole batch
    samples: int


def load_baseline(tree: str | Path):
    """The ``model`` package of the StreamFlame source under ``tree`` (its model/ and core/ use
    relative imports only), imported as a separate package beside this one."""
    pkg = Path(tree) / "streamflame"
    if not (pkg / "model" / "forecaster.py").is_file():
        raise FileNotFoundError(f"no streamflame/model/forecaster.py under {tree}")
    loaded = sys.modules.get(BASELINE_PACKAGE)
    if loaded is not None and list(loaded.__path__) != [str(pkg)]:
        raise ValueError(f"a baseline tree is already loaded from {loaded.__path__[0]}; one per process")
    if loaded is None:
        spec = importlib.util.spec_from_file_location(BASELINE_PACKAGE, pkg / "__init__.py",
                                                      submodule_search_locations=[str(pkg)])
        sys.modules[BASELINE_PACKAGE] = importlib.util.module_from_spec(spec)   # its __init__ is not run
    return importlib.import_module(BASELINE_PACKAGE + ".model")


def _path(f, name: str, histories: np.ndarray, nxt: np.ndarray, step: float, args) -> RefreshPath:
    """One refresh of the batch as the worker does it: stored state bytes -> states -> one patch
    each -> forecasts -> state bytes. ``list`` = SeriesState.from_bytes, update_many, forecast_many,
    to_bytes (the worker before #16); ``batch`` = StateBatch, step_batch, forecast_batch."""
    kind, _, spec = name.rpartition(":")
    arith, _, s = spec.partition("+")
    samples = int(s) if s else args.samples
    matmul, _, comp = arith.partition("/")
    if kind not in ("", "list", "batch") or comp not in ("", "compile"):
        raise ValueError(f"--refresh: {name!r}: use [list:|batch:]MATMUL[/compile][+SAMPLES], e.g. batch:bf16+64")
    new_api = hasattr(f, "set_arithmetic")
    kind = kind or ("batch" if hasattr(f, "state_batch") else "list")
    if new_api:
        f.set_arithmetic(matmul if matmul != "baseline" else "float32", compile=comp == "compile")
    from_bytes = type(f.init_state()).from_bytes
    base = [f.state_from_history(h, step_seconds=step).to_bytes() for h in histories]
    B = len(nxt)
    blobs = [base[i % len(base)] for i in range(B)]
    seeds = list(range(B))
    H = args.horizon
    if kind == "list":
        lean = {"samples": False} if new_api else {}

        def run():
            states = f.update_many([from_bytes(b) for b in blobs], nxt)
            f.forecast_many(states, H, num_samples=samples, seeds=seeds, **lean)
            return [st.to_bytes() for st in states]
    else:
        sb = f.state_batch(B)

        def run():
            sb.clear()
            rows = sb.append_many(blobs)
            sb.seal()
            f.step_batch(sb, nxt, rows)
            f.forecast_batch(sb, rows, H, num_samples=samples, seeds=seeds, samples=False)
            return sb.encode(rows)
    return RefreshPath(f"{kind}:{spec}" if name != "baseline" else name, run, samples)


def _new(model_pkg, args):
    """A Forecaster of ``model_pkg`` (streamflame.model or a baseline tree's) as bench step builds one."""
    F = model_pkg.Forecaster
    if args.checkpoint:
        f = F.load(args.checkpoint)
    else:
        f = F.from_config(model_pkg.tiny_config() if getattr(args, "tiny", False) else None)
    return f.to(device=args.device)


def compare_refresh(f, args, series: Callable, step: float) -> None:
    names = [n.strip() for n in args.refresh.split(",") if n.strip()]
    rng = np.random.default_rng(0)
    p, B = f.config.patch_len, args.batch
    n_hist = 2016 // p * p
    histories = np.stack([series(n_hist, rng) for _ in range(8)])
    nxt = np.stack([series(p, rng) for _ in range(B)])
    paths = []
    if args.baseline_tree:
        paths.append(_path(_new(load_baseline(args.baseline_tree), args), "baseline", histories, nxt, step, args))
    for name in names:   # one Forecaster per path: each keeps its own arithmetic setting
        paths.append(_path(_new(this, args), name, histories, nxt, step, args))
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {q.name: [] for q in paths}
    cpu: dict[str, list[float]] = {q.name: [] for q in paths}     # this process' CPU time, all threads
    written = [q.run() for q in paths]               # warm-up (compiles, caches) and a check
    same = all(w == written[0] for w in written)
    for _ in range(args.rounds):
        for q in paths:
            sync()
            t, c = time.perf_counter(), time.process_time()
            q.run()
            sync()
            times[q.name].append(time.perf_counter() - t)
            cpu[q.name].append(time.process_time() - c)
    print(f"\n## refresh = state bytes -> one patch -> forecast (H={args.horizon}) -> state bytes, batch of {B}, "
          f"{args.rounds} rounds alternating, {args.device}, torch threads {torch.get_num_threads()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("state bytes written: " + ("the same by every path" if same else "DIFFERENT between paths"))
    print("wall = elapsed (medians over rounds); cpu = this process' CPU time, all threads (on a shared machine the "
          "steadier of the two: other processes' load moves it less)")
    print(f"{'path':<20} {'samples':>7} {'series/s':>9} {'ms/batch':>9} {'min ms':>8} {'vs first':>9} "
          f"{'cpu series/s':>13} {'cpu ms':>8} {'vs first':>9}")
    first, first_c = statistics.median(times[paths[0].name]), statistics.median(cpu[paths[0].name])
    for q in paths:
        med, mc = statistics.median(times[q.name]), statistics.median(cpu[q.name])
        print(f"{q.name:<20} {q.samples:>7} {B / med:>9.0f} {med * 1e3:>9.1f} {min(times[q.name]) * 1e3:>8.1f} "
              f"{first / med:>8.2f}x {B / mc:>13.0f} {mc * 1e3:>8.1f} {first_c / mc:>8.2f}x")
