"""Seasonal memory: calendar profiles longer than the window, and a tracked choice of seasonal hint.

Shapes: b series, p = patch_len, L steps, C = len(CANDIDATES), NB = sum(BINS).

When the sampling step is known, the day and the week are known periods in steps (state ``cal``).
For each of them the state keeps a per-phase exponentially weighted profile over BINS[c] phase bins
(``profile`` (NB, 2): weight and sum of x - ref per bin), updated O(1) per patch:
    bin(t) = floor((t mod P_c) * B_c / P_c)           (t: steps since the series' first patch)
    (w, s)_bin <- g^(n_bin / width_c) (w, s)_bin + (n_bin, sum of x - ref over the bin's observations)
with g = exp(-1 / PROFILE_MEMORY) per visit of a bin and width_c = max(1, P_c / B_c) steps per bin;
the profile value is ref + s / w. It carries a weekly cycle of a 5-minute series (2,016 steps) that
the 1,024-step window cannot hold, averaged over a few cycles instead of one.

Hint candidates for the steps after a boundary: the window's seasonal naive (value one detected or
calendar period earlier, else the last value), the day profile, the week profile, the last value.
Each candidate's prediction for the next patch is kept in the state (``next`` (C, p), raw); when that
patch arrives its mean absolute error over observed steps, in units of the causal RevIN std, enters an
exponentially weighted mean (``herr`` (C, 2): weight, sum; memory ERROR_MEMORY patches). The hint the
model sees is the seasonal candidate (first three) with the lowest tracked error; ``features`` give the
network every candidate's error (log) so it learns how far to trust the hint.
Everything is causal, per series, and stored in the state: streaming equals batch.
"""
from __future__ import annotations

import math

import torch

BINS = (96, 168)                    # phase bins of the day and the week profile
PROFILE_MEMORY = 4.0                # visits: a profile bin forgets with exp(-1/4) per cycle
ERROR_MEMORY = 16.0                 # patches: the tracked hint errors' memory
CANDIDATES = ("window", "day", "week", "last")
SEASONAL = 3                        # the first three are seasonal hints; "last" is the reference
N_FEATURES = 2 * len(CANDIDATES) + 1
_MIN_WEIGHT = 1.5                   # a candidate competes once it was scored on ~2 patches


def _offsets() -> list[int]:
    return [sum(BINS[:c]) for c in range(len(BINS))]


def bins_of(clock: torch.Tensor, cal: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Profile bin of each of the L steps after ``clock`` (b,) for each cycle of ``cal`` (b, 2)
    -> index into the NB bins (b, 2, L) int64, and whether that cycle is known (b, 2, 1)."""
    t = clock[:, None] + torch.arange(L, dtype=torch.float64, device=clock.device)           # (b, L)
    P = cal.double()                                                                          # (b, 2)
    known = P >= 2
    Psafe = torch.where(known, P, torch.ones_like(P))
    phase = torch.remainder(t[:, None, :], Psafe[..., None])                                  # (b, 2, L)
    nb = torch.tensor(BINS, dtype=torch.float64, device=clock.device)[None, :, None]
    idx = torch.minimum((phase * nb / Psafe[..., None]).floor(), nb - 1).to(torch.int64)
    idx = idx + torch.tensor(_offsets(), device=clock.device)[None, :, None]
    return idx, known[..., None]


def update_profiles(profile: torch.Tensor, patch: torch.Tensor, ref: torch.Tensor, clock: torch.Tensor,
                    cal: torch.Tensor) -> torch.Tensor:
    """profile (b, NB, 2), patch (b, p) raw with NaN, ref (b,) f64, clock (b,) f64 (steps before this
    patch), cal (b, 2) -> the profile after the patch."""
    b, p = patch.shape
    idx, known = bins_of(clock, cal, p)                                      # (b, 2, p), (b, 2, 1)
    x = patch.double() - torch.nan_to_num(ref, nan=0.0)[:, None]
    obs = (~torch.isnan(patch))[:, None, :] & known                          # (b, 2, p)
    flat = idx.reshape(b, -1)
    n = torch.zeros(b, profile.shape[1], dtype=torch.float64, device=patch.device)
    s = torch.zeros_like(n)
    n.scatter_add_(1, flat, obs.double().reshape(b, -1))
    s.scatter_add_(1, flat, torch.where(obs, x[:, None, :], 0).reshape(b, -1))
    width = torch.cat([(cal[:, c:c + 1].double() / BINS[c]).clamp_min(1).expand(b, BINS[c])
                       for c in range(len(BINS))], 1)                          # (b, NB)
    decay = torch.exp(-n / (width * PROFILE_MEMORY))
    w = decay * profile[..., 0].double() + n
    ssum = decay * profile[..., 1].double() + s
    return torch.stack([w, ssum], -1).to(profile.dtype)


def profile_values(profile: torch.Tensor, ref: torch.Tensor, clock: torch.Tensor, cal: torch.Tensor,
                   L: int) -> torch.Tensor:
    """The day and week profiles over the L steps after ``clock`` -> (b, 2, L) raw f64, NaN where unknown."""
    b = profile.shape[0]
    idx, known = bins_of(clock, cal, L)
    w = profile[..., 0].double().gather(1, idx.reshape(b, -1)).reshape(idx.shape)
    s = profile[..., 1].double().gather(1, idx.reshape(b, -1)).reshape(idx.shape)
    ok = known & (w > 0)
    return torch.where(ok, torch.nan_to_num(ref, nan=0.0)[:, None, None] + s / torch.where(ok, w, 1), math.nan)


def candidates(window_hint: torch.Tensor, last: torch.Tensor, profile: torch.Tensor, ref: torch.Tensor,
               clock: torch.Tensor, cal: torch.Tensor) -> torch.Tensor:
    """window_hint (b, L) raw (the window's seasonal naive), last (b,) the last observation
    -> (b, C, L) raw f64 predictions of every candidate (NaN where it has none)."""
    L = window_hint.shape[1]
    prof = profile_values(profile, ref, clock, cal, L)
    return torch.cat([window_hint.double()[:, None], prof, last.double()[:, None, None].expand(-1, 1, L)], 1)


def update_errors(herr: torch.Tensor, pred: torch.Tensor, patch: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """herr (b, C, 2) f64, pred (b, C, p) what each candidate said of this patch, patch (b, p) raw,
    std (b,) f64 the causal std -> herr after scoring the candidates on the patch's observed steps."""
    err = (pred - patch.double()[:, None, :]).abs() / std[:, None, None]
    ok = ~torch.isnan(err)
    cnt = ok.double().sum(-1)
    mae = torch.where(ok, err, 0).sum(-1) / cnt.clamp_min(1)
    seen = cnt > 0
    g = math.exp(-1.0 / ERROR_MEMORY)
    w = torch.where(seen, g * herr[..., 0] + 1, herr[..., 0])
    s = torch.where(seen, g * herr[..., 1] + mae, herr[..., 1])
    return torch.stack([w, s], -1)


def choice(herr: torch.Tensor) -> torch.Tensor:
    """herr (..., C, 2) -> the seasonal candidate with the lowest tracked error (...,) int64; the
    window's seasonal naive (0) until another has been scored and beats it."""
    w, s = herr[..., :SEASONAL, 0], herr[..., :SEASONAL, 1]
    err = torch.where(w >= _MIN_WEIGHT, s / w.clamp_min(1e-12), math.inf)
    err[..., 0] = torch.where(w[..., 0] >= _MIN_WEIGHT, err[..., 0], -1.0)   # the default while unscored
    return err.argmin(-1)


def features(herr: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """herr (..., C, 2), pick (...,) -> (..., 2C + 1): the picked hint's log tracked error relative to
    the last value's, every candidate's (the last value's own log error last; 0 where unknown), and
    which candidates are known."""
    w, s = herr[..., 0], herr[..., 1]
    has = w >= _MIN_WEIGHT
    e = torch.log(s / w.clamp_min(1e-12) + 1e-3)
    rel = torch.where(has & has[..., -1:], e - e[..., -1:], 0)
    rel[..., -1] = torch.where(has[..., -1], e[..., -1], 0)                   # the last value's own (log)
    picked = rel.gather(-1, pick[..., None])
    return torch.cat([picked, rel, has.to(rel.dtype)], -1).float()
