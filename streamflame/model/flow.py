"""Normalising-flow head: noise z (p,) -> one normalised patch y (p,), given a condition c.

    y_0 = mu(c) + alpha(c) * hint + beta(c) * last + gamma(c) * (prev - last) + exp(sigma(c)) * z
          (conditional affine base; hint = seasonal-naive values, last = last observed value, prev =
          where the previous future patch ended, all normalised; gamma only with ar_patches)
    layer k, split point b_k (time order inside the patch):
        y[:b] <- y[:b] * exp(s0_k(c)) + t0_k(c)
        y[b:] <- y[b:] * exp(s_k(y[:b], c)) + t_k(y[:b], c)           (masked affine coupling)
Every output dim j depends only on noise dims <= j (block-autoregressive within the patch),
the Jacobian is triangular, so log|det| = sum of the log-scales. Both directions are one
parallel pass per layer: sampling (serving) and exact log-likelihood (training) are cheap.
The condition's contribution to each layer's first linear map is computed once per
(series, patch) and broadcast over samples.

With ``ar_patches`` the future patches of a sample path are drawn in order (FAR-TS's factorised
autoregressive generation): patch j's base location moves with gamma(c_j) * (prev_j - last), where
prev_j is the last value of the same path's patch j-1 (for j = 0, the last observation: no move),
bounded to the context window's range widened by half its width (perception.prev_bounds), as
training's teacher-forced inputs are. Training scores patch j given the observed end of patch
j-1 (teacher forcing). gamma starts at zero,
so a model without it is the same function until trained.

With ``inner_ar`` the base noise inside a patch is a stationary AR(1) instead of white (FAR-TS's
autoregression, inside the patch): eps_0 = z_0, eps_j = a(c) eps_{j-1} + sqrt(1 - a(c)^2) z_j, every
eps_j still N(0, 1), |a| < 1, a = 0 at initialisation (the same function until trained). The
couplings let step j see the steps before it only in blocks (a step right after a split point sees
nothing newer than that split), so without it a path continued from observed steps (``known``
below) forgets the last ones; with it the base of step j carries the deviation of step j-1. The
density stays triangular: log p(eps_j | eps_<j) = log N(eps_j; a eps_{j-1}, 1 - a^2).

With ``carry_ar`` as well, the AR(1) runs on across the boundaries between future patches: patch j's
first base value continues from where the same path's patch j-1 ended in the base, eps_0 =
a(c_j) e + sqrt(1 - a(c_j)^2) z_0 with e = eps_(p-1) of patch j-1 (bounded to +-CARRY_MAX), so a path's
deviation from the mean no longer restarts at every boundary. Patch 0 starts fresh (the last observed
patch's base noise would need the condition before the state's last step). Training feeds e
teacher-forced: the observed patch j-1 mapped to the base, as ar_patches feeds its observed end.

Because y_j depends only on z_<=j, a forecast made inside a patch can condition on the steps of it
already observed (``known``): the couplings' inverse maps them to the base, where they replace the
first s dims of patch 0's base draw, so every path starts from what was observed and its later steps
are drawn from p(y_>=s | y_<s, c) exactly (missing steps take the seasonal hint, as in training's
masked loss).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SPLITS = (24, 12, 36, 6, 42, 18, 30)   # for p = 48; scaled for other patch lengths
AR_MAX = 0.999                         # |a| bound of inner_ar's base noise (its innovation variance >= 2e-3)
CARRY_MAX = 5.0                        # |e| bound of carry_ar's carried base value (teacher-forced ones
                                       # can lie far out; drawn ones almost never reach it)


class Coupling(nn.Module):
    def __init__(self, p: int, split: int, d_cond: int, hidden: int, clamp: float):
        super().__init__()
        self.split, self.clamp = split, clamp
        self.inp = nn.Linear(p, hidden, bias=False)      # sees y[:split] only (masked input)
        self.cond = nn.Linear(d_cond, hidden)
        self.hid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2 * p)
        self.elem = nn.Linear(d_cond, 2 * p)              # s0, t0 for dims < split
        nn.init.zeros_(self.out.weight), nn.init.zeros_(self.out.bias)
        nn.init.zeros_(self.elem.weight), nn.init.zeros_(self.elem.bias)
        mask = torch.zeros(p)
        mask[:split] = 1
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("first", mask.bool(), persistent=False)

    def params(self, y, hc, ec):
        """y (..., p), hc = cond(c) (..., hidden), ec = elem(c) (..., 2p) -> log-scale, shift (..., p)."""
        h = F.gelu(self.inp(y * self.mask) + hc)
        s, t = self.out(F.gelu(self.hid(h))).chunk(2, -1)
        s0, t0 = ec.chunk(2, -1)
        # dims < split take the condition-only (s0, t0), the rest the coupling's (s, t):
        # where() equals m * s0 + (1 - m) * s for the 0/1 mask, in two passes instead of six.
        s = torch.where(self.first, s0, s)
        t = torch.where(self.first, t0, t)
        return self.clamp * torch.tanh(s / self.clamp), t

    def forward(self, y, hc, ec):
        s, t = self.params(y, hc, ec)
        return y * torch.exp(s) + t, s

    def inverse(self, y, hc, ec):
        # dims < split depend on c only (s0, t0): invert them first, then the rest given them
        s0, t0 = ec.chunk(2, -1)
        s0 = self.clamp * torch.tanh(s0 / self.clamp)
        x = self.mask * (y - t0) * torch.exp(-s0) + (1 - self.mask) * y
        s, t = self.params(x, hc, ec)
        x = self.mask * x + (1 - self.mask) * (y - t) * torch.exp(-s)
        return x, s


class FlowHead(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        p = cfg.patch_len
        self.p = p
        self.base = nn.Linear(cfg.d_cond, 4 * p)          # mu, sigma, alpha, beta
        nn.init.zeros_(self.base.weight)
        with torch.no_grad():
            self.base.bias.zero_()
            self.base.bias[2 * p:] = 0.5                   # start as the mean of seasonal and last value
        splits = [max(1, min(p - 1, round(s * p / 48))) for s in SPLITS]
        self.layers = nn.ModuleList(
            Coupling(p, splits[k % len(splits)], cfg.d_cond, cfg.flow_hidden, cfg.flow_scale_clamp)
            for k in range(cfg.flow_layers))
        self.ar = bool(getattr(cfg, "ar_patches", False))
        self.clip = float(cfg.clip)                         # prev's range: training's teacher-forced inputs
        if self.ar:
            self.prev = nn.Linear(cfg.d_cond, p)            # gamma(c): how far each step follows prev
            nn.init.zeros_(self.prev.weight), nn.init.zeros_(self.prev.bias)
        self.inner_ar = bool(getattr(cfg, "inner_ar", False))
        if self.inner_ar:
            self.inner = nn.Linear(cfg.d_cond, 1)           # a(c): AR(1) coefficient of the base noise
            nn.init.zeros_(self.inner.weight), nn.init.zeros_(self.inner.bias)
            lag = torch.arange(p)[:, None] - torch.arange(p)[None, :]
            self.register_buffer("lag", lag.clamp(min=0), persistent=False)          # (p, p): j - i
            self.register_buffer("lower", lag >= 0, persistent=False)                # i <= j
        self.carry = bool(getattr(cfg, "carry_ar", False))  # ModelConfig checks: with inner_ar and ar_patches

    def _ar_coef(self, c):
        """c (..., d_cond) -> a (..., 1) in (-AR_MAX, AR_MAX): the base noise's AR(1) coefficient."""
        return AR_MAX * torch.tanh(self.inner(c))

    def _powers(self, a):
        """a (..., 1) -> (..., p): a^0, a^1, ..., a^(p-1) (a product, so a = 0 has finite gradients)."""
        return torch.cumprod(torch.cat([torch.ones_like(a), a.expand(*a.shape[:-1], self.p - 1)], -1), -1)

    def _correlate(self, z, a, loc=None, scale=None, start=None, carry=None):
        """White noise z (..., S, p) -> AR(1) noise eps (..., S, p) with coefficient a (..., 1), i.e.
        eps = z L^T with L_ji = a^(j-i) (i = 0) or a^(j-i) sqrt(1 - a^2) (0 < i <= j). With ``start``
        (..., 1, s), the observed first s base dims: eps_j for j >= s continues from the observed
        eps_(s-1) = (start_(s-1) - loc_(s-1)) / scale_(s-1) instead of the drawn one (the recurrence is
        linear, so the difference decays as a^(j-s+1)). With ``carry`` (..., S, 1), the previous
        patch's last base value e (carry_ar): eps_0 = a e + sqrt(1 - a^2) z_0 instead of z_0."""
        if a is None:
            return z
        pw = self._powers(a)                                                # (..., p)
        col = torch.sqrt(1 - a * a).expand(*a.shape[:-1], self.p).clone()
        col[..., 0] = 1
        L = torch.where(self.lower, pw[..., self.lag], 0) * col[..., None, :]            # (..., p, p)
        eps = z @ L.transpose(-1, -2) if z.dim() == L.dim() else (L @ z.unsqueeze(-1)).squeeze(-1)
        if start is not None:
            k = start.shape[-1]
            seen = (start[..., k - 1:k] - loc[..., k - 1:k]) / scale[..., k - 1:k]       # (..., 1, 1)
            eps = eps.clone()
            eps[..., k:] = eps[..., k:] + (seen - eps[..., k - 1:k]) * pw[..., None, 1:self.p - k + 1]
        if carry is not None:                       # eps_0 moves by a e + (sqrt(1 - a^2) - 1) z_0, and
            if z.dim() == L.dim():                  # eps_j with it by a^j (over the samples dim S)
                a, pw = a.unsqueeze(-2), pw.unsqueeze(-2)
            z0 = z[..., :1]
            eps = eps + (a * carry + (torch.sqrt(1 - a * a) - 1) * z0) * pw
        return eps

    def _cond(self, c):
        return [(l.cond(c), l.elem(c)) for l in self.layers]

    def _loc(self, c, hint):
        mu, sig, alpha, beta = self.base(c).chunk(4, -1)
        p = self.p
        return mu + alpha * hint[..., :p] + beta * hint[..., p:], sig

    def sample(self, c, hint, z, bounds=None, known=None):
        """c (b, K, d_cond), hint (b, K, 2p) = (seasonal, last) normalised, z (n, K, S, p)
        -> y (n, K, S, p) for the first n <= b rows (the condition terms are computed on all b).
        bounds (>= n, 2) normalised (ar_patches): the range a drawn patch's end is clamped to before
        it conditions the next patch (perception.prev_bounds); default +-clip.
        known (b, s) normalised, s < p: the observed first s steps of patch 0; every path starts
        with them (up to rounding) and continues from them."""
        n = z.shape[0]
        start = None                                        # (n, 1, s): patch 0's first s base dims
        if known is not None and known.shape[-1]:
            y0 = torch.cat([known.to(hint.dtype), hint[:, 0, known.shape[-1]:self.p]], -1)   # steps >= s: any
            start = self._unflow(y0, c[:, 0])[0][:n, None, :known.shape[-1]]    # on all b rows, as cond
        loc, sig = self._loc(c, hint)
        loc, scale = loc[:n].unsqueeze(-2), torch.exp(sig[:n]).unsqueeze(-2)      # (n, K, 1, p)
        cond = [(hc[:n].unsqueeze(-2), ec[:n].unsqueeze(-2)) for hc, ec in self._cond(c)]
        a = self._ar_coef(c[:n]) if self.inner_ar else None                       # (n, K, 1)
        if not self.ar:
            eps = self._correlate(z, a)
            if a is not None and start is not None:                               # patch 0 continues
                eps[:, 0] = self._correlate(z[:, 0], a[:, 0], loc=loc[:, 0], scale=scale[:, 0], start=start)
            y = loc + scale * eps
            _put_start(y[:, 0], start)                                            # patch 0's view
            return self._couple(y, cond)
        gamma = self.prev(c)[:n].unsqueeze(-2)              # (n, K, 1, p); all b rows, as the cond terms
        last = hint[:n, 0, self.p:self.p + 1].unsqueeze(-2)                       # (n, 1, 1)
        prev, carry, out = last, None, []
        for j in range(z.shape[1]):                                               # patches in order
            y, e = self._patch(loc[:, j], scale[:, j], gamma[:, j], prev, last, z[:, j],
                               [(hc[:, j], ec[:, j]) for hc, ec in cond], start if j == 0 else None,
                               None if a is None else a[:, j], carry)                     # (n, S, p)
            carry = e if self.carry else None
            out.append(y)
            prev = self.bound(y[..., -1:], None if bounds is None else bounds[:n, None])   # (n, S, 1)
        return torch.stack(out, 1)

    def bound(self, prev, bounds=None):
        """prev (..., 1) within bounds (..., 2) (broadcastable), and always within +-clip: what
        training fed the model (clipped data, teacher-forced ends bounded the same way)."""
        prev = prev.clamp(-self.clip, self.clip)
        if bounds is None:
            return prev
        return torch.minimum(torch.maximum(prev, bounds[..., :1].to(prev.dtype)), bounds[..., 1:].to(prev.dtype))

    def _patch(self, loc, scale, gamma, prev, last, z, cond, start=None, a=None, carry=None):
        """One ar_patches patch: the base moved by gamma * (prev - last), then the couplings;
        ``start`` (n, 1, s): the first s base dims (observed steps, mapped to the base); ``a`` (n, 1):
        inner_ar's coefficient (None: white noise); ``carry`` (n, S, 1): the previous patch's last base
        value (carry_ar). -> the patch (n, S, p) and its last base value (n, S, 1), bounded for carrying."""
        loc = loc + gamma * (prev - last)
        eps = self._correlate(z, a, loc=loc, scale=scale, start=start, carry=carry)
        y = loc + scale * eps
        _put_start(y, start)
        return self._couple(y, cond), eps[..., -1:].clamp(-CARRY_MAX, CARRY_MAX)

    def _couple(self, y, cond):
        """Base draws y (..., p) through the coupling layers (their condition terms ``cond``)."""
        for layer, (hc, ec) in zip(self.layers, cond):
            y, _ = layer(y, hc, ec)
        return y

    def sample_patch(self, c, hint, prev, z, carry=None):
        """One patch per row given where its predecessor ended (ar_patches): c (..., d_cond), hint
        (..., 2p), prev (..., 1) normalised, z (..., p), carry (..., 1) (carry_ar; None: fresh) -> y
        (..., p) and its last base value (..., 1); the step of ``sample`` for one patch. Training draws
        predecessors with it (scheduled sampling, Flame.loss)."""
        loc, sig = self._loc(c, hint)
        return self._patch(loc, torch.exp(sig), self.prev(c), prev, hint[..., self.p:self.p + 1], z, self._cond(c),
                           a=self._ar_coef(c) if self.inner_ar else None, carry=carry)

    def carried(self, y, c, hint, prev):
        """carry_ar's teacher-forced input: observed patches y (..., p) given their c, hint, prev ->
        their last base value (..., 1), bounded as sampling bounds a drawn one."""
        return self._inverse(y, c, hint, prev)[0][..., -1:].clamp(-CARRY_MAX, CARRY_MAX)

    def log_prob(self, y, c, hint, prev=None, per_step: bool = False, carry=None):
        """Exact log density of normalised patches y (..., p) given c, hint (and, with ar_patches,
        prev (..., 1): where the previous patch ended; with carry_ar, carry (..., 1): the previous
        patch's last base value, NaN for a patch that starts fresh) -> (...,).

        per_step: the (..., p) terms log p(y_j | y_<j, c) instead of their sum. Output dim j depends
        only on noise dims <= j (the Jacobian is triangular), so the density factorises over the
        steps of a patch: a masked loss sums the terms of the observed steps only."""
        z, logdet = self._inverse(y, c, hint, prev)
        if self.inner_ar:                   # AR(1) base: z_j given z_(j-1), innovation variance 1 - a^2
            ft = torch.promote_types(z.dtype, torch.float32)          # 1 - a^2 near 0: never in bf16
            a, z, logdet = self._ar_coef(c).to(ft), z.to(ft), logdet.to(ft)
            var = torch.cat([torch.ones_like(a), (1 - a * a).expand(*a.shape[:-1], self.p - 1)], -1)
            before = F.pad(z[..., :-1], (1, 0))
            if carry is not None:           # eps_0 given the previous patch's e: N(a e, 1 - a^2)
                fresh = torch.isnan(carry)
                before[..., :1] = torch.where(fresh, 0, carry).to(ft)
                var = torch.cat([torch.where(fresh, 1, 1 - a * a), var[..., 1:]], -1)
            innov = z - a * before
            terms = -0.5 * innov * innov / var - 0.5 * math.log(2 * math.pi) - 0.5 * torch.log(var) - logdet
            return terms if per_step else terms.sum(-1)
        terms = -0.5 * z * z - 0.5 * math.log(2 * math.pi) - logdet
        return terms if per_step else terms.sum(-1)

    def _inverse(self, y, c, hint, prev=None):
        """The noise z (..., p) that maps to y (..., p) given c, hint (and prev with ar_patches),
        and the per-step log-scales (..., p) of that map (the triangular Jacobian's diagonal)."""
        y, logdet = self._unflow(y, c)
        loc, sig = self._loc(c, hint)
        if self.ar:
            loc = loc + self.prev(c) * (prev - hint[..., self.p:self.p + 1])
        return (y - loc) * torch.exp(-sig), logdet + sig

    def _unflow(self, y, c):
        """The couplings' inverse: y (..., p) -> their input (the base draw) and its log-scales (..., p)."""
        logdet = torch.zeros(y.shape, dtype=y.dtype, device=y.device)
        for layer, (hc, ec) in reversed(list(zip(self.layers, self._cond(c)))):
            y, ld = layer.inverse(y, hc, ec)
            logdet = logdet + ld
        return y, logdet


def _put_start(y: torch.Tensor, start: torch.Tensor | None) -> None:
    """y (..., p) base draws: the first s dims become ``start`` (..., s), in place (observed steps
    mapped to the base, so every path continues from them); nothing without ``start``."""
    if start is not None:
        y[..., :start.shape[-1]] = start
