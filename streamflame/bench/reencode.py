"""The re-encoding comparison: a Chronos-Bolt-small-sized forecaster, random weights, refreshing
every series by reading its whole context again.

    python -m streamflame.bench reencode [--batch 4096] [--context 2048] [--device cuda] [--dtype bf16]

Plain torch, nothing vendored: a T5-style encoder-decoder with Chronos-Bolt-small's sizes
(d_model 512, 8 heads, d_ff 2048, 6 encoder + 6 decoder layers, input patches of 16 with a
residual-MLP patch embedding, one [REG] token, one decoder token, a residual-MLP head to 9
quantiles x 64 steps; 47.8M parameters at context 2048 against Chronos-Bolt-small's 47.7M). One forward pass
per refresh (Chronos-Bolt's 64-step horizon; it would need a second pass for 96 steps, so the
figure flatters it). Speed does not depend on the weights. Prints series refreshed per second.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn

PATCH, HORIZON, QUANTILES = 16, 64, 9


class ResidualMLP(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.hidden = nn.Linear(d_in, d_hidden)
        self.out = nn.Linear(d_hidden, d_out)
        self.skip = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x))) + self.skip(x)


class BoltSized(nn.Module):
    """Chronos-Bolt-small's shapes in torch.nn layers (LayerNorm and learned positions instead of
    T5's RMSNorm and relative bias: the same matmuls)."""

    def __init__(self, context: int, d_model: int = 512, heads: int = 8, d_ff: int = 2048, layers: int = 6):
        super().__init__()
        self.n_patches = context // PATCH
        self.embed = ResidualMLP(2 * PATCH, d_ff, d_model)             # values + observed mask
        self.reg = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(torch.zeros(1, self.n_patches + 1, d_model))
        self.dec_token = nn.Parameter(torch.zeros(1, 1, d_model))
        warnings.filterwarnings("ignore", message="enable_nested_tensor is True")   # norm_first: no nested path
        self.core = nn.Transformer(d_model, heads, layers, layers, d_ff, dropout=0.0, batch_first=True,
                                   norm_first=True, bias=False)
        self.head = ResidualMLP(d_model, d_ff, QUANTILES * HORIZON)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """context (b, L) raw values, NaN = missing -> quantiles (b, 9, 64) in raw units."""
        b = context.shape[0]
        x = context[:, -self.n_patches * PATCH:]
        obs = ~torch.isnan(x)
        x = torch.where(obs, x, 0)
        n = obs.sum(1, keepdim=True).clamp(min=1)
        loc = x.sum(1, keepdim=True) / n
        scale = ((torch.where(obs, x - loc, 0) ** 2).sum(1, keepdim=True) / n).sqrt().clamp(min=1e-5)
        z = ((x - loc) / scale).reshape(b, self.n_patches, PATCH)
        tokens = self.embed(torch.cat([z, obs.reshape(b, self.n_patches, PATCH).to(z.dtype)], -1))
        tokens = torch.cat([tokens, self.reg.expand(b, 1, -1)], 1) + self.pos
        out = self.core(tokens, self.dec_token.expand(b, 1, -1))
        q = self.head(out[:, 0]).reshape(b, QUANTILES, HORIZON)
        return loc[:, :, None] + scale[:, :, None] * q.float()


def main(argv: list[str] | None = None) -> int:
    """The benchmark; torch's global grad mode are as before afterwards (it also runs
    in-process, e.g. in tests)."""
    grad = torch.is_grad_enabled()
    try:
        return _main(argv)
    finally:
        torch.set_grad_enabled(grad)


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamflame bench reencode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4096, help="series per forward pass")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "float32"], default="bf16")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = BoltSized(args.context).to(dev).eval()
    n_params = sum(p.numel() for p in model.parameters())
    ctx = torch.randn(args.batch, args.context, device=dev).cumsum(1)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            return model(ctx)
    out = run()
    assert out.shape == (args.batch, QUANTILES, HORIZON) and bool(torch.isfinite(out).all())
    times = []
    for _ in range(args.reps):
        sync()
        t = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"# streamflame bench reencode | Chronos-Bolt-small-sized ({n_params / 1e6:.1f}M params, random weights) "
          f"| {name} | {args.dtype} | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"context {args.context}, batch {args.batch}: {med * 1e3:.1f} ms per pass, "
          f"series refreshed/s: {args.batch / med:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
