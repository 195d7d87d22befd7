"""Training throughput: observations per second of `streamflame train` on this machine.

    streamflame bench train [--config configs/train/default.yaml] [--steps 20] [--device cpu|cuda]
                            [--threads N] [--batch B] [--seq-patches T]

Three figures, each the median over --steps steps after 3 warm-up steps:
- data: the sampler alone (batches drawn in the loop when loader_workers = 0);
- step: forward + backward + AdamW on batches drawn beforehand (the model's own cost);
- loop: both, as `train` runs them (what a training run gets).
An observation is one value of a training sequence (batch x seq_patches x 48 per step).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from streamflame.model.config import ModelConfig
from streamflame.model.flame import Flame
from streamflame.train.loop import SequenceSampler, TrainConfig


def measure(cfg: TrainConfig, steps: int, device: torch.device) -> dict:
    mcfg = ModelConfig.from_dict(cfg.model)
    torch.manual_seed(cfg.seed)
    model = Flame(mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sampler = SequenceSampler(cfg, mcfg.patch_len)
    K = mcfg.max_future_patches

    def draw(i: int) -> torch.Tensor:
        return torch.from_numpy(sampler.batch(i))

    def step(x: torch.Tensor, i: int) -> None:
        g = np.random.default_rng([cfg.seed, i, 7])
        future = sorted({0, *g.choice(np.arange(1, K), size=min(cfg.future_per_step, K) - 1, replace=False)})
        loss = model.loss(x.to(device), future=future)
        opt.zero_grad(set_to_none=True)
        loss.backward()
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
    batches = [draw(200 + i) for i in range(steps)]
    compute = [timed(lambda: step(batches[i], i)) for i in range(steps)]
    loop = [timed(lambda: step(draw(300 + i), i)) for i in range(steps)]
    obs = cfg.batch * cfg.seq_patches * mcfg.patch_len
    return {"obs_per_step": obs, **{k: obs / statistics.median(v) for k, v in
                                    (("data", data), ("step", compute), ("loop", loop))}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamflame bench train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/train/default.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq-patches", type=int)
    args = ap.parse_args(argv)
    cfg = TrainConfig.from_yaml(args.config)
    if args.batch:
        cfg.batch = args.batch
    if args.seq_patches:
        cfg.seq_patches = args.seq_patches
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    print(f"bench train: {args.config}, batch {cfg.batch} x {cfg.seq_patches} patches, "
          f"real {cfg.real_fraction:g} / tsmixup {cfg.tsmixup_fraction:g}, {name}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    r = measure(cfg, args.steps, device)
    print(f"observations per step   {r['obs_per_step']:>12,}")
    print(f"data   (sampler alone)  {r['data']:>12,.0f} obs/s")
    print(f"step   (fwd+bwd+AdamW)  {r['step']:>12,.0f} obs/s")
    print(f"loop   (as train runs)  {r['loop']:>12,.0f} obs/s")
    return 0
