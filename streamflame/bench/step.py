"""Model cost: advancing a state by one patch vs rebuilding it from the whole history, and forecasting.

    python -m streamflame.bench step [--histories 512,2048,8192] [--batch 256] [--device cpu|cuda]
    python -m streamflame.bench step --path list,batch [--tiny]   # host overhead per series (bench/step_paths.py)
    python -m streamflame.bench step --refresh batch:float32,batch:bf16 [--baseline-tree DIR]   # series/s (step_refresh.py)

Single-series figures use the public calls (`update`, `state_from_history`, `forecast`).
Batched figures (per series, amortised over --batch series) use the worker's calls
(`update_many`, `forecast_many`) and the same parallel path as `state_from_history` over a batch.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from streamflame.bench.step_paths import compare_paths
from streamflame.bench.step_refresh import compare_refresh
from streamflame.core.memory import retain_freed_memory
from streamflame.model import Forecaster, tiny_config
from streamflame.model.forecaster import _TORCH, known_steps
from streamflame.model.flame import Flame, load_compatible


def timeit(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


STEP = 600.0   # the series below are 10-minute data (a day = 144 steps): calendar periods are live


def series(n: int, rng) -> np.ndarray:
    t = np.arange(n)
    return 20 + 5 * np.sin(2 * np.pi * t / 144) + np.cumsum(rng.normal(0, 0.05, n)) + rng.normal(0, 0.3, n)


def main(argv: list[str] | None = None) -> int:
    """The benchmark; torch's global grad mode and thread count are as before afterwards (it also runs
    in-process, e.g. in tests)."""
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    try:
        return _main(argv)
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamflame bench step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--histories", default="512,2048,8192")
    ap.add_argument("--batch", type=int, default=256, help="series per batched call")
    ap.add_argument("--horizon", type=int, default=96)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rebuild-chunk", type=int, default=512, help="series per parallel rebuild call")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--checkpoint", default=None, help="checkpoint dir (default: random default config)")
    ap.add_argument("--ar", action="store_true",
                    help="also time update_many + forecast_many with ar_patches (the same weights plus a non-zero "
                         "gamma), alternating with the model as loaded, in this run")
    ap.add_argument("--seasonal", action="store_true",
                    help="also time them with the seasonal memory (seasonal_memory + hint_features; with --ar, "
                         "both levers together as well), alternating with the model as loaded")
    ap.add_argument("--inner-ar", action="store_true",
                    help="also time them with inner_ar (the same weights plus a non-zero AR(1) coefficient), and "
                         "for a model with ar_patches also with carry_ar, alternating with the model as loaded")
    ap.add_argument("--floors", action="store_true",
                    help="also time them with sampling.floors on against off (the model as loaded, floors off, "
                         "is the base of every lever in this run)")
    ap.add_argument("--partial", type=int, default=0, metavar="S",
                    help="also time forecast_many S observations into a patch against at the boundary, and "
                         "the conditioning on those S observations alone (model.sample with and without them)")
    ap.add_argument("--path", default="",
                    help="only time the worker's refresh of --batch series from state bytes to state bytes by these "
                         "paths (list = SeriesState + update_many/forecast_many, batch = StateBatch), in alternating "
                         "rounds: the host overhead per series, time outside the model calls (bench/step_paths.py)")
    ap.add_argument("--tiny", action="store_true", help="the small test config (random weights) instead")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds for --path and --refresh")
    ap.add_argument("--refresh", default="",
                    help="only time series refreshed per second by these paths, [list:|batch:]MATMUL[/compile][+SAMPLES] "
                         "comma-separated (bench/step_refresh.py), in alternating rounds")
    ap.add_argument("--baseline-tree", default=None,
                    help="with --refresh: also time the list path of the StreamFlame source tree in this directory "
                         "(e.g. today's code: git archive REV streamflame | tar -x -C DIR) as 'baseline'")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--malloc", choices=("retain", "default"), default="retain",
                    help="retain = freed memory kept for the next pass, as the worker runs by default "
                         "(worker.retain_freed_memory, streamflame/core/memory.py); default = glibc's own thresholds")
    args = ap.parse_args(argv)
    kept = retain_freed_memory() if args.malloc == "retain" else False
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    f = (Forecaster.load(args.checkpoint) if args.checkpoint else
         Forecaster.from_config(tiny_config() if args.tiny else None))
    f.to(device=args.device)
    rng = np.random.default_rng(0)
    p = f.config.patch_len
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"# streamflame bench step | device={args.device} ({name}) threads={torch.get_num_threads()} "
          f"malloc={'retain' if kept else 'default'} "
          f"| params={f.num_parameters()} state_bytes={f.init_state().nbytes} | {time.strftime('%Y-%m-%d')}")
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    if args.refresh:
        compare_refresh(f, args, series, STEP)
        return 0
    if args.path:
        compare_paths(f, args, series)
        return 0

    print("\n## single series (public API)")
    print(f"{'history':>8} {'update ms':>10} {'rebuild ms':>11} {'rebuild/update':>15}")
    update_ms = {}
    for n in map(int, args.histories.split(",")):
        x = series(n + p, rng)
        st = f.state_from_history(x[:n])
        u = timeit(lambda: f.update(st, x[n:n + p]), args.reps)
        r = timeit(lambda: f.state_from_history(x[:n + p]), max(3, args.reps // 4))
        update_ms[n] = u * 1e3
        print(f"{n:>8} {u * 1e3:>10.3f} {r * 1e3:>11.3f} {r / u:>15.1f}")
    hs = sorted(update_ms)
    print(f"update flatness: {hs[-1]} vs {hs[0]} = {update_ms[hs[-1]] / update_ms[hs[0]]:.2f}x")
    n0 = 2048 if 2048 in update_ms else hs[0]
    st = f.state_from_history(series(n0, rng))
    fc = timeit(lambda: f.forecast(st, args.horizon, num_samples=args.samples, seed=0), args.reps)
    print(f"forecast (S={args.samples}, H={args.horizon}): {fc * 1e3:.3f} ms = {fc * 1e3 / update_ms[n0]:.1f} x one update")

    B = args.batch
    print(f"\n## batched, per series (batch of {B}, device {args.device})")
    print(f"{'history':>8} {'update us':>10} {'rebuild us':>11} {'rebuild/update':>15}")
    dt = _TORCH[f.dtype]
    for n in map(int, args.histories.split(",")):
        T = n // p
        hist = torch.from_numpy(np.stack([series(n + p, rng) for _ in range(B)]).astype(f.dtype))
        states = [f.state_from_history(h[:T * p].numpy(), step_seconds=STEP) for h in hist[: min(B, 8)]]
        states = (states * (B // len(states) + 1))[:B]
        nxt = hist[:, T * p:(T + 1) * p].numpy()
        u = timeit(lambda: f.update_many(states, nxt), max(3, args.reps // 4))
        patches = hist[:, :(T + 1) * p].reshape(B, T + 1, p).to(dev)
        scale = torch.ones(B, dtype=dt, device=dev)

        def rebuild():   # in sub-batches: the full history's activations of 4096 series overflow a GPU
            for a in range(0, B, args.rebuild_chunk):
                b = min(B, a + args.rebuild_chunk)
                f.model.advance(f.model.empty_state(b - a, dev, dt), patches[a:b], scale[a:b])
            sync()
        r = timeit(rebuild, 3, warmup=1)
        print(f"{n:>8} {u / B * 1e6:>10.1f} {r / B * 1e6:>11.1f} {r / u:>15.1f}")
    st_many = f.update_many(states, nxt)
    fm = timeit(lambda: f.forecast_many(st_many, args.horizon, num_samples=args.samples,
                                        seeds=list(range(B))), 3, warmup=1)
    upd = timeit(lambda: f.update_many(states, nxt), 3, warmup=1)
    print(f"forecast_many (S={args.samples}, H={args.horizon}): {fm / B * 1e6:.1f} us/series = "
          f"{fm / upd:.1f} x one batched update")
    print(f"series-updates/s incl. forecast: {B / (fm + upd):.0f}")
    levers = ([{"ar_patches": True}] if args.ar else []) + ([{"seasonal_memory": True, "hint_features": True}]
                                                            if args.seasonal else [])
    if args.ar and args.seasonal:
        levers.append({"ar_patches": True, "seasonal_memory": True, "hint_features": True})
    if args.inner_ar:
        levers += [{"inner_ar": True}] + ([{"inner_ar": True, "carry_ar": True}] if f.config.ar_patches else [])
    if args.floors:
        f.set_floors(False)
        levers.append({"floors": True})
    if levers:
        compare_levers(f, states, nxt, levers, args)
    if args.partial:
        compare_partial(f, st_many, args, rng)
    return 0


def compare_partial(f: Forecaster, states, args, rng) -> None:
    """A forecast between boundaries: S buffered observations condition patch 0 (FlowHead.sample's
    ``known``) and K covers S + H steps. Alternating rounds, batch of len(states)."""
    B, S, p, H = len(states), args.partial, f.config.patch_len, args.horizon
    if not 0 < S < p:
        raise SystemExit(f"--partial must be in [1, {p - 1}]")
    inside = [f.update(s, series(S, rng)) for s in states]
    seeds = list(range(B))
    at, mid = [], []
    for _ in range(3):
        at.append(timeit(lambda: f.forecast_many(states, H, num_samples=args.samples, seeds=seeds), 1, warmup=1))
        mid.append(timeit(lambda: f.forecast_many(inside, H, num_samples=args.samples, seeds=seeds), 1, warmup=1))
    a, b = statistics.median(at), statistics.median(mid)
    K = -(-(H + S) // p)
    print(f"\n## forecast_many {S} observations into a patch, batch of {B} (S={args.samples}, H={H}: {K} patches drawn)")
    print(f"at the boundary {a / B * 1e6:>8.1f} us/series, inside {b / B * 1e6:>8.1f} = {b / a:.2f}x")
    stacked = f._stack(inside)
    known = known_steps(inside).to(f.device)
    noise = torch.randn(B, args.samples, K, p, dtype=_TORCH[f.dtype], device=f.device)
    plain, cond = [], []
    for _ in range(3):
        plain.append(timeit(lambda: f.model.sample(stacked, K, noise, f.floors), 1, warmup=1))
        cond.append(timeit(lambda: f.model.sample(stacked, K, noise, f.floors, known), 1, warmup=1))
    a, b = statistics.median(plain), statistics.median(cond)
    print(f"model.sample without the {S} known steps {a / B * 1e6:>8.1f} us/series, with {b / B * 1e6:>8.1f} = {b / a:.2f}x")


def with_levers(f: Forecaster, levers: dict) -> Forecaster:
    """The same weights with these model levers on, their new weights non-zero (as if trained);
    ``floors`` is the sampling option (Forecaster.set_floors), not a model field."""
    from dataclasses import replace

    levers = dict(levers)
    floors = levers.pop("floors", False)
    model = Flame(replace(f.config, **levers)).to(device=f.device, dtype=_TORCH[f.dtype])
    load_compatible(model, f.model, "bench")
    with torch.no_grad():
        if model.cfg.ar_patches:
            model.flow.prev.bias.fill_(0.5)
        if model.cfg.inner_ar:
            model.flow.inner.bias.fill_(1.5)
        if model.cfg.hint_features:
            model.embed_seas.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    g = Forecaster(model.eval(), "", f.temperature, f.antithetic, floors)
    g.model_id = f.model_id                      # the same states
    return g


def compare_levers(f: Forecaster, states, nxt, levers: list[dict], args) -> None:
    """update_many + forecast_many per series with each set of levers against the model as loaded,
    in alternating rounds (so a busy machine slows both alike)."""
    B = len(states)
    seeds = list(range(B))

    def run(g):
        new = g.update_many(states, nxt)
        g.forecast_many(new, args.horizon, num_samples=args.samples, seeds=seeds)
    print(f"\n## model levers: update_many + forecast_many, batch of {B}, rounds alternating")
    for lv in levers:
        g = with_levers(f, lv)
        base, other = [], []
        for _ in range(3):
            base.append(timeit(lambda: run(f), 1, warmup=1))
            other.append(timeit(lambda: run(g), 1, warmup=1))
        b, c = statistics.median(base), statistics.median(other)
        name = " + ".join(k for k in lv if k != "hint_features") or "none"
        print(f"{name:<32} {b / B * 1e6:>8.1f} us/series as loaded, {c / B * 1e6:>8.1f} with = {c / b:.2f}x")
