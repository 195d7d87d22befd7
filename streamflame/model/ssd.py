"""SSD (Mamba-2 state-space duality) with a scalar decay per head: scan, step and layer.

Recurrence per head h (state S in R^{P x N}):
    S_t = exp(a_t) S_{t-1} + x_t B_t^T          a_t = dt_t * A_h  (A_h < 0)
    y_t = S_t C_t
x is pre-multiplied by dt (as in Mamba's ssd_minimal). Three implementations:
- :func:`ssd_naive` - the loop above (the reference),
- :func:`ssd_step`  - one step of it (the streaming path),
- :func:`ssd_chunked` - the chunked parallel scan with initial and final states (the batch
  and training path; a stored state can resume over any chunk).
Tests assert they agree.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .hippo import legs


def segsum(a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T): out[i, j] = a[j+1] + ... + a[i] for j <= i, -inf above."""
    T = a.shape[-1]
    x = a.unsqueeze(-1).expand(*a.shape, T)                        # x[..., i, j] = a[i]
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), -1)
    x = x.masked_fill(~lower, 0).cumsum(-2)                         # sum over i' in (j, i]
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return x.masked_fill(~keep, -torch.inf)


def ssd_naive(x, a, B, C, S0):
    """x (b,T,H,P), a (b,T,H), B/C (b,T,N), S0 (b,H,P,N) -> y (b,T,H,P), S_T (b,H,P,N)."""
    S, ys = S0, []
    for t in range(x.shape[1]):
        S, y = ssd_step(x[:, t], a[:, t], B[:, t], C[:, t], S)
        ys.append(y)
    return torch.stack(ys, 1), S


def ssd_step(x, a, B, C, S):
    """One recurrence step: x (b,H,P), a (b,H), B/C (b,N), S (b,H,P,N) -> S', y (b,H,P)."""
    S = S * torch.exp(a)[..., None, None] + x[..., None] * B[:, None, None, :]
    return S, torch.einsum("bhpn,bn->bhp", S, C)


def ssd_chunked(x, a, B, C, S0, chunk: int):
    """Chunked scan, same shapes as :func:`ssd_naive`; O(T * chunk) work, T/chunk sequential hops."""
    b, T, H, P = x.shape
    chunk = min(chunk, T)          # one chunk as long as the sequence, not padded to chunk_len
    pad = (-T) % chunk
    if pad:  # a = 0 (no decay) and x = 0 (no input) leave the state unchanged
        x, a = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(a, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    c = x.shape[1] // chunk
    x = x.reshape(b, c, chunk, H, P)
    B = B.reshape(b, c, chunk, -1)
    C = C.reshape(b, c, chunk, -1)
    a = a.reshape(b, c, chunk, H).permute(0, 3, 1, 2)                # (b, H, c, l)
    a_cum = a.cumsum(-1)
    # 1. outputs from inputs inside the same chunk
    L = torch.exp(segsum(a))                                         # (b, H, c, l, s)
    y_diag = torch.einsum("bcln,bcsn,bhcls,bcshp->bclhp", C, B, L, x)
    # 2. each chunk's contribution to the state at its end
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)                # (b, H, c, l)
    states = torch.einsum("bcln,bhcl,bclhp->bchpn", B, decay_to_end, x)
    # 3. hop across chunks, starting from S0
    states = torch.cat([S0.unsqueeze(1), states], dim=1)             # (b, c+1, H, P, N)
    hop = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))           # (b, H, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", hop, states)
    S_in, S_T = states[:, :-1], states[:, -1]
    # 4. outputs from the state entering each chunk
    y_off = torch.einsum("bcln,bchpn,bhcl->bclhp", C, S_in, torch.exp(a_cum))
    y = (y_diag + y_off).reshape(b, c * chunk, H, P)[:, :T]
    return y, S_T


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SSDLayer(nn.Module):
    """Mamba-2 block (scalar decay per head, one B/C group) + an MLP, both pre-norm residual.

    Decays are initialised from the diagonal of the LegS matrix (FLAME): A_h = -(h + 1).
    The sampling-rate scale s multiplies dt (FlowState's Delta scaling).
    """

    def __init__(self, cfg):
        super().__init__()
        d, di, N, H = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.n_heads
        self.cfg = cfg
        self.norm = RMSNorm(d)
        self.in_proj = nn.Linear(d, 2 * di + 2 * N + H, bias=False)   # z, x, B, C, dt
        self.conv_w = nn.Parameter(torch.randn(cfg.conv_dim, cfg.d_conv) / math.sqrt(cfg.d_conv))
        self.conv_b = nn.Parameter(torch.zeros(cfg.conv_dim))
        dt = torch.exp(torch.rand(H) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        legs_diag = -torch.from_numpy(legs(H)[0].diagonal().copy()).float()  # q + 1
        self.A_log = nn.Parameter(torch.log(legs_diag))
        self.D = nn.Parameter(torch.ones(H))
        self.out_norm = RMSNorm(di)
        self.out_proj = nn.Linear(di, d, bias=False)
        self.mlp_norm = RMSNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(), nn.Linear(cfg.mlp_ratio * d, d))

    def forward(self, u, conv_state, ssm_state, scale):
        """u (b,T,d), conv_state (b,d_conv-1,conv_dim), ssm_state (b,H,P,N), scale (b,)
        -> u' (b,T,d), conv_state', ssm_state'. T == 1 takes the recurrent step."""
        cfg = self.cfg
        b, T, _ = u.shape
        di, N, H, P = cfg.d_inner, cfg.d_state, cfg.n_heads, cfg.headdim
        z, xBC, dt = torch.split(self.in_proj(self.norm(u)), [di, di + 2 * N, H], dim=-1)
        # causal depthwise conv over tokens, resuming from the stored last d_conv-1 inputs
        seq = torch.cat([conv_state, xBC], dim=1)                     # (b, d_conv-1+T, conv_dim)
        conv_state = seq[:, seq.shape[1] - (cfg.d_conv - 1):]
        xBC = F.silu(seq.unfold(1, cfg.d_conv, 1).mul(self.conv_w).sum(-1) + self.conv_b)
        x, Bm, Cm = torch.split(xBC, [di, N, N], dim=-1)
        dt = F.softplus(dt + self.dt_bias) * scale[:, None, None]      # (b, T, H)
        a = dt * -torch.exp(self.A_log)
        xh = x.reshape(b, T, H, P)
        xdt = xh * dt[..., None]
        if T == 1:
            ssm_state, y = ssd_step(xdt[:, 0], a[:, 0], Bm[:, 0], Cm[:, 0], ssm_state)
            y = y[:, None]
        else:
            y, ssm_state = ssd_chunked(xdt, a, Bm, Cm, ssm_state, cfg.chunk_len)
        y = y + xh * self.D[:, None]
        y = self.out_norm(y.reshape(b, T, di) * F.silu(z))
        u = u + self.out_proj(y)
        u = u + self.mlp(self.mlp_norm(u))
        return u, conv_state, ssm_state
