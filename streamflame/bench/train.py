"""Training throughput: observations per second of `streamflame train` on this machine.

    streamflame bench train [--config configs/train/default.yaml] [--steps 20] [--device cpu|cuda]
                            [--threads N] [--workers N] [--batch B] [--seq-patches T]

Figures, each the median over --steps steps after 3 warm-up steps:
- data: the sampler alone (what the loop draws when loader_workers = 0);
- data + features: the sampler and the model's data-only features (period search, LegT
  environment) on one thread: what one DataLoader worker does per batch when loader_workers > 0;
- step: forward + backward + gradient clipping + AdamW (as train builds it, bf16 autocast where the
  config or --cpu-amp says) on batches drawn beforehand, the features computed in the step
  ("step") or given ("step, features given": the model's own cost);
- loop: both, as `train` runs them (the config's loader_workers and threads, or --workers and
  --threads): what a training run gets.
An observation is one value of a training sequence (batch x seq_patches x 48 per step).
"""
from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time

import torch

from streamflame.model.config import ModelConfig
from streamflame.model.flame import Flame
from streamflame.train.loop import (SequenceSampler, TrainBatch, TrainConfig, _Batches, autocast_on, batch_stream,
                                   features_on, make_optimizer, step_loss)


def measure(cfg: TrainConfig, steps: int, device: torch.device) -> dict:
    mcfg = ModelConfig.from_dict(cfg.model)
    torch.manual_seed(cfg.seed)
    model = Flame(mcfg).to(device)
    opt = make_optimizer(model, cfg)
    sampler = SequenceSampler(cfg, mcfg.patch_len)
    ahead = _Batches(sampler, 0, 10**9, mcfg, cfg.calendar)
    amp = autocast_on(cfg, device)

    def draw(i: int) -> TrainBatch:
        return sampler.batch_with_calendar(i).tensors()

    def step(xb: TrainBatch, i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = step_loss(model, cfg, i, xb.values.to(device), xb.calendar.to(device) if cfg.calendar else None,
                             features_on(xb.features, device), amp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    for i in range(3):
        step(draw(i), i)
    data = [timed(lambda: draw(100 + i)) for i in range(steps)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                  # as in a DataLoader worker
    try:
        ahead_t = [timed(lambda: ahead[150 + i]) for i in range(steps)]
    finally:
        torch.set_num_threads(threads)
    batches = [draw(200 + i) for i in range(steps)]
    compute = [timed(lambda: step(batches[i], i)) for i in range(steps)]
    given = [ahead[200 + i].tensors() for i in range(steps)]
    compute_given = [timed(lambda: step(given[i], i)) for i in range(steps)]
    loop_cfg = TrainConfig(**{**cfg.__dict__, "steps": 300 + 3 + steps})
    stream = batch_stream(loop_cfg, sampler, mcfg, 300, device)
    for i, xb in enumerate(itertools.islice(stream, 3)):        # workers start, queue fills
        step(xb, i)
    loop = []
    t = time.perf_counter()
    for i, xb in enumerate(stream):
        step(xb, i)
        loop.append(time.perf_counter() - t)
        t = time.perf_counter()
    obs = cfg.batch * cfg.seq_patches * mcfg.patch_len
    return {"obs_per_step": obs, **{k: obs / statistics.median(v) for k, v in
                                    (("data", data), ("ahead", ahead_t), ("step", compute),
                                     ("given", compute_given), ("loop", loop))}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamflame bench train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/train/default.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, help="torch intra-op threads of the step (default: the config's)")
    ap.add_argument("--workers", type=int, help="DataLoader workers of the loop (default: the config's)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq-patches", type=int)
    ap.add_argument("--cpu-amp", choices=("on", "off"), help="bf16 autocast on CPU (default: the config's cpu_amp)")
    args = ap.parse_args(argv)
    cfg = TrainConfig.from_yaml(args.config)
    if args.batch:
        cfg.batch = args.batch
    if args.seq_patches:
        cfg.seq_patches = args.seq_patches
    if args.threads is not None:
        cfg.threads = args.threads
    if args.workers is not None:
        cfg.loader_workers = args.workers
    if args.cpu_amp:
        cfg.cpu_amp = args.cpu_amp == "on"
    before = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
        print(f"bench train: {args.config}, batch {cfg.batch} x {cfg.seq_patches} patches, "
              f"real {cfg.real_fraction:g} / tsmixup {cfg.tsmixup_fraction:g}, {name}, "
              f"{torch.get_num_threads()} threads, {cfg.loader_workers} loader workers, "
              f"bf16 autocast {'on' if autocast_on(cfg, device) else 'off'}, torch {torch.__version__}, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        r = measure(cfg, args.steps, device)
    finally:
        torch.set_num_threads(before)
    print(f"observations per step   {r['obs_per_step']:>12,}")
    print(f"data   (sampler alone)  {r['data']:>12,.0f} obs/s")
    print(f"data + features (1 thr) {r['ahead']:>12,.0f} obs/s")
    print(f"step   (fwd+bwd+AdamW)  {r['step']:>12,.0f} obs/s")
    print(f"step, features given    {r['given']:>12,.0f} obs/s")
    print(f"loop   (as train runs)  {r['loop']:>12,.0f} obs/s")
    return 0
