"""The FLAME-style streaming model in one module.

Shapes: b series, T new patches, p = patch_len, W = window, d = d_model, K future patches.

    patch k (p raw values) --causal RevIN--> normalised patch  --Linear--> token_k
    last W raw values --FFT autocorrelation--> period P --LegT of last cycle--> + token_k
    token_k --[SSD layer (LegS-initialised decays) + MLP] x n_layers--> h_k
    h_k --Legendre basis over future patches--> c_1..c_K  (+ seasonal hints from P)
    c_j, hint_j, noise --flow head--> future patch j  --de-normalise with stats_k-->

All per-series memory lives in a *state*: a dict of batched tensors (see STATE_FIELDS).
:meth:`Flame.advance` applies T patches to a state: T == 1 runs the recurrent step, T > 1
the chunked parallel scan; both give the same numbers. Training runs `advance` over long
sequences from an empty state and scores the forecast from every patch boundary at once.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from .config import LATE_FIELDS, ModelConfig
from .flow import FlowHead
from .hippo import legendre
from .perception import (STATS, DataFeatures, data_features, dominant_period, first_reference, last_observed,
                         floors, mean_std, normalise, patch_moments, prev_bounds, scan_stats, seasonal_hint)
from .seasonal import BINS, CANDIDATES, N_FEATURES, candidates, choice, features, update_errors, update_profiles
from .ssd import RMSNorm, SSDLayer

# name -> (shape given cfg, float64?)  -- the state codec and the batching use this table
STATE_FIELDS = {
    "stats": (lambda c: (STATS,), True),                       # (w, s1, s2) causal RevIN sums
    "ref": (lambda c: (), True),                               # first observed value (NaN before)
    "window": (lambda c: (c.window,), False),                  # last W raw observations (NaN-padded)
    "h": (lambda c: (c.d_model,), False),                      # top-layer output at the last patch
    "conv": (lambda c: (c.n_layers, c.d_conv - 1, c.conv_dim), False),
    "ssm": (lambda c: (c.n_layers, c.n_heads, c.headdim, c.d_state), False),
    "cal": (lambda c: (2,), True),                             # calendar periods in steps (day, week; 0 = unknown)
    "clock": (lambda c: (), True),                             # steps applied (complete patches x p)
    "profile": (lambda c: (sum(BINS), 2), True),               # seasonal memory: day and week profiles
    "herr": (lambda c: (len(CANDIDATES), 2), True),            # tracked error of each hint candidate
    "next": (lambda c: (len(CANDIDATES), c.patch_len), True),  # each candidate's prediction of the next patch
}

def normalised_windows(cfg: ModelConfig, state, patches):
    """What advance derives from a state's ref/stats/window and T new patches (b, T, p):
    ref (b,), causal RevIN stats (b, T, 3), mean/std (b, T) float64, windows (b, T, W) raw
    (a view) ending at each patch."""
    b, T, p = patches.shape
    decay = 1.0 - 1.0 / cfg.norm_memory if cfg.norm_memory else 1.0
    ref = first_reference(patches, state["ref"])
    stats = scan_stats(patch_moments(patches, ref), state["stats"], decay)   # (b,T,3)
    mean, std = mean_std(stats, ref[:, None])                                # (b,T)
    seq = torch.cat([state["window"], patches.reshape(b, T * p)], 1)          # (b, W + T p)
    return ref, stats, mean, std, seq.unfold(1, cfg.window, p)[:, 1:]


def sequence_features(cfg: ModelConfig, patches: torch.Tensor, calendar=None) -> DataFeatures:
    """The data-only features Flame.loss computes for sequences (b, T, p) from an empty state with
    ``calendar`` (b, 2) (None: unknown): the same functions on the same numbers, so passing them
    to loss(features=...) gives the same bits. Training computes them in DataLoader workers."""
    b = patches.shape[0]
    state = {"ref": torch.full((b,), float("nan"), dtype=torch.float64, device=patches.device),
             "stats": torch.zeros((b, STATS), dtype=torch.float64, device=patches.device),
             "window": torch.full((b, cfg.window), float("nan"), dtype=patches.dtype, device=patches.device),
             "cal": _calendar(calendar, b, patches.device)}
    _, _, mean, std, windows = normalised_windows(cfg, state, patches)
    return data_features(windows, mean, std, state["cal"], cfg)


def _calendar(calendar, b: int, device) -> torch.Tensor:
    if calendar is None:
        return torch.zeros((b, 2), dtype=torch.float64, device=device)
    return torch.as_tensor(calendar, dtype=torch.float64, device=device).reshape(b, 2)


# Fields where NaN marks "unknown" (no observation yet, no prediction); never +-inf. Every other
# field is finite in a healthy state.
NAN_FIELDS = frozenset({"ref", "window", "next"})


class Flame(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        p, d = cfg.patch_len, cfg.d_model
        self.embed_patch = nn.Linear(2 * p, d)                 # normalised values + observed mask
        self.embed_env = nn.Linear(cfg.legt_order + 2, d)      # LegT of the last cycle (+ 2 extras)
        self.layers = nn.ModuleList(SSDLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(d)
        K, J = cfg.max_future_patches, cfg.basis_order
        self.coef = nn.Linear(d, J * cfg.d_cond)               # Legendre coefficients of c(tau)
        self.embed_hint = nn.Linear(2 * p, cfg.d_cond)
        if cfg.hint_features:                                  # the hint candidates' tracked errors
            self.embed_seas = nn.Linear(N_FEATURES, cfg.d_cond)
            nn.init.zeros_(self.embed_seas.weight), nn.init.zeros_(self.embed_seas.bias)
        tau = -1 + (2 * torch.arange(K, dtype=torch.float64) + 1) / K
        self.register_buffer("basis", legendre(J, tau).float(), persistent=False)   # (K, J)
        self.flow = FlowHead(cfg)

    # ---- state ---------------------------------------------------------------------------
    def empty_state(self, b: int, device=None, dtype=None) -> dict[str, torch.Tensor]:
        dtype = dtype or next(self.parameters()).dtype
        st = {}
        for name, (shape, f64) in STATE_FIELDS.items():
            st[name] = torch.zeros((b, *shape(self.cfg)), dtype=torch.float64 if f64 else dtype, device=device)
        st["ref"].fill_(float("nan"))
        st["window"].fill_(float("nan"))
        st["next"].fill_(float("nan"))
        return st

    # ---- encoder -------------------------------------------------------------------------
    def advance(self, state, patches, scale, features: DataFeatures | None = None):
        """Apply T patches. state: dict of (b, ...) tensors; patches (b, T, p) raw (NaN = missing);
        scale (b,); ``features``: the data-only features of these patches from this state when
        computed beforehand (:func:`sequence_features` for an empty state), else computed here. Returns (new_state, aux) with aux = per-boundary h (b,T,d), stats (b,T,3),
        ref (b,), windows (b,T,W) for training."""
        cfg = self.cfg
        b, T, p = patches.shape
        ref, stats, mean, std, windows = normalised_windows(cfg, state, patches)
        if features is None:                                                     # data-only features
            features = data_features(windows, mean, std, state["cal"], cfg)
        elif features.period.shape != (b, T) or features.env.shape != (b, T, cfg.legt_order + 2):
            raise ValueError(f"features for {tuple(features.period.shape)} boundaries, patches {(b, T)}")
        period, env = features.period, features.env.to(patches.dtype)
        z = normalise(patches, mean, std, cfg.clip)
        obs = ~torch.isnan(patches)
        z = torch.where(obs, z, 0).to(patches.dtype)
        tok = self.embed_patch(torch.cat([z, obs.to(patches.dtype)], -1))
        tok = tok + self.embed_env(env)
        conv, ssm = [], []
        for i, layer in enumerate(self.layers):
            tok, c_i, s_i = layer(tok, state["conv"][:, i], state["ssm"][:, i], scale)
            conv.append(c_i)
            ssm.append(s_i)
        h = self.norm(tok)                                                        # (b, T, d)
        new = {"stats": stats[:, -1], "ref": ref, "window": windows[:, -1], "h": h[:, -1],
               "conv": torch.stack(conv, 1), "ssm": torch.stack(ssm, 1), "cal": state["cal"]}
        aux = {"h": h, "stats": stats, "ref": ref, "windows": windows, "period": period}
        if self.seasonal:
            seas = self.seasonal_memory(state, patches, windows, period, std, ref)
            new.update({k: v[:, -1] for k, v in seas.items()})
            aux.update(seas)
        else:                                                     # kept as they are (empty)
            new.update({k: state[k] for k in ("clock", "profile", "herr", "next")})
        return new, aux

    @property
    def seasonal(self) -> bool:
        """Whether the seasonal memory is kept (either seasonal lever on)."""
        return self.cfg.seasonal_memory or self.cfg.hint_features

    @torch.no_grad()
    def seasonal_memory(self, state, patches, windows, period, std, ref):
        """The seasonal memory after each of the T patches (model/seasonal.py), one patch at a time
        whatever T: -> clock (b,T), profile (b,T,NB,2), herr (b,T,C,2), next (b,T,C,p)."""
        p = self.cfg.patch_len
        clock, profile, herr, nxt, cal = state["clock"], state["profile"], state["herr"], state["next"], state["cal"]
        out = {"clock": [], "profile": [], "herr": [], "next": []}
        for k in range(patches.shape[1]):
            herr = update_errors(herr, nxt, patches[:, k], std[:, k])
            profile = update_profiles(profile, patches[:, k], ref, clock, cal)
            clock = clock + p
            nxt = candidates(seasonal_hint(windows[:, k], period[:, k], p), last_observed(windows[:, k]),
                             profile, ref, clock, cal)
            for name, v in (("clock", clock), ("profile", profile), ("herr", herr), ("next", nxt)):
                out[name].append(v)
        return {k: torch.stack(v, 1) for k, v in out.items()}

    # ---- decoder -------------------------------------------------------------------------
    def condition(self, h, window, period, mean, std, K, seas, future=None):
        """h (m, d), window (m, W), period (m,), mean/std (m,) float64, seas: the rows' ref (m,),
        clock (m,), cal (m, 2), profile (m, NB, 2), herr (m, C, 2)
        -> c (m, K, d_cond), hint (m, K, 2p) normalised: the seasonal hint (value one period
        earlier, or the last value without a period; with ``seasonal_memory`` the candidate of lowest
        tracked error, model/seasonal.py) and the last observed value (0 where unknown).
        ``future``: only these future patches (indices < K; training scores a few), in place of K."""
        cfg = self.cfg
        m, p = h.shape[0], cfg.patch_len
        coef = self.coef(h).reshape(m, cfg.basis_order, cfg.d_cond)
        basis = self.basis[:K] if future is None else self.basis[future]
        c = torch.einsum("kj,mjc->mkc", basis.to(h.dtype), coef)
        with torch.no_grad():
            raw = seasonal_hint(window, period, K * p)
            pick = choice(seas["herr"]) if cfg.seasonal_memory else torch.zeros(m, dtype=torch.int64, device=h.device)
            if cfg.seasonal_memory:
                cand = candidates(raw, last_observed(window), seas["profile"], seas["ref"], seas["clock"], seas["cal"])
                chosen = cand.gather(1, pick[:, None, None].expand(m, 1, K * p))[:, 0]
                raw = torch.where(torch.isnan(chosen), raw.double(), chosen)
            raw = raw.reshape(m, K, p)
            if future is not None:
                raw = raw[:, future]
            known = ~torch.isnan(raw)
            hint = normalise(raw, mean, std, cfg.clip)
            hint = torch.where(known, hint, 0).to(h.dtype)
            last = normalise(last_observed(window), mean, std, cfg.clip)
            last = torch.nan_to_num(last, nan=0.0).to(h.dtype)[:, None, None].expand(*raw.shape)
        c = c + self.embed_hint(torch.cat([hint, known.to(h.dtype)], -1))
        if cfg.hint_features:
            c = c + self.embed_seas(features(seas["herr"], pick).to(h.dtype))[:, None, :]
        return F.gelu(c), torch.cat([hint, last], -1)

    def sample(self, state, K, noise, hold_floors: bool = False, known=None):
        """Sample K future patches for the first n series of the state's b (n <= b: the
        per-series layers see all b rows, the flow over samples only n).
        noise (n, S, K, p) -> samples (n, S, K*p) in raw units (float64). ``hold_floors``: no
        sample below (above) a floor (ceiling) the window holds (perception.floors); with
        ar_patches a drawn end conditions the next patch within it too, as observed ends did.
        ``known`` (b, s) raw, s < p, NaN = missing: the observations after the state's last patch
        (a partial patch); every path starts with them and is drawn given them (FlowHead.sample)."""
        mean, std = mean_std(state["stats"], state["ref"])
        period = dominant_period(state["window"], self.cfg.min_period, state["cal"])
        seas = {k: state[k] for k in ("ref", "clock", "cal", "profile", "herr")}
        c, hint = self.condition(state["h"], state["window"], period, mean, std, K, seas)
        if known is not None and known.shape[1]:         # normalised as training's targets; missing: the hint
            y = normalise(known, mean, std, self.cfg.clip)
            known = torch.where(torch.isnan(y), hint[:, 0, :known.shape[1]].double(), y).to(hint.dtype)
        lim = floors(state["window"]) if hold_floors else None                  # (b, 2) raw, +-inf: none
        bounds = None
        if self.flow.ar:
            bounds = prev_bounds(state["window"], mean, std, self.cfg.clip)
            if lim is not None:
                held = (lim - mean[:, None]) / std[:, None]
                bounds = torch.stack([bounds[:, 0].maximum(held[:, 0]), bounds[:, 1].minimum(held[:, 1])], -1)
        y = self.flow.sample(c, hint, noise.transpose(1, 2), bounds, known).transpose(1, 2)  # (n, S, K, p)
        n, S = noise.shape[:2]
        out = mean[:n, None, None] + std[:n, None, None] * y.double().reshape(n, S, -1)
        return out if lim is None else out.clamp(lim[:n, :1, None], lim[:n, 1:, None])

    @staticmethod
    def _prev_ends(y, last):
        """Where each future patch's predecessor ended, for teacher forcing with ar_patches.

        y (m, K, p) normalised future patches (NaN = missing), last (m,) the last observation
        -> (m, K, 1): entry j is the last observed value among the history's end and patches
        0..j-1 (for j = 0, the last observation itself)."""
        m, K, p = y.shape
        seq = torch.cat([last[:, None], y.reshape(m, K * p)], 1)              # (m, 1 + K p)
        obs = ~torch.isnan(seq)
        obs[:, 0] = True
        pos = torch.where(obs, torch.arange(seq.shape[1], device=y.device), 0).cummax(1).values
        filled = seq.gather(1, pos)
        return filled[:, torch.arange(K, device=y.device) * p].unsqueeze(-1)

    def loss(self, patches, scale=None, future=None, target_noise: float = 0.0, generator=None,
             min_observed: float = 0.75, calendar=None, features: DataFeatures | None = None,
             sampled_prev: float = 0.0, seam_weight: float = 0.0, parts: dict | None = None):
        """Mean flow NLL (nats per observed value) of the next K patches from every boundary.

        patches (b, T, p) raw, an empty state at the start. `future`: which future patches
        (0-based offsets < max_future_patches) to score, default all; training samples a few
        per step to save time. Masked: a future patch counts when at least ``min_observed`` of it is
        observed, and only its observed steps are scored (the flow's density factorises over the
        steps of a patch: log p(y_j | y_<j)); missing steps are filled with the seasonal hint as
        the condition of the later ones. Lower ``min_observed`` lets opening-hours series, whose
        every 24-hour patch has closed hours, contribute targets. ``target_noise`` adds
        Gaussian noise of that std (normalised units, drawn from ``generator``) to the targets:
        dequantisation, so flat or quantised stretches (counts, rain, clipped sensors) cannot
        drive the density to infinity. ``calendar`` (b, 2): each sequence's day and week in steps
        (0 = unknown), as the state's ``cal``. ``features``: :func:`sequence_features` of these
        patches and calendar, computed beforehand (the same bits as computing them here).
        ``sampled_prev`` (ar_patches): the share of scored patches after the first whose predecessor's
        end is drawn from the model (one path of that patch, no gradient, noise from ``generator``)
        instead of the observed one: scheduled sampling, so training also sees the predecessors
        that sampling feeds it.
        ``seam_weight`` (ar_patches): adds that weight times :meth:`_seam` of the scored patches after the
        first: each patch's zero-noise path continued from its predecessor's should bend at the boundary
        no more than a smooth curve does. ``parts``: a dict that receives the terms ("nll", "seam")."""
        cfg = self.cfg
        b, T, p = patches.shape
        K = min(cfg.max_future_patches, T - 1)
        future = torch.arange(K) if future is None else torch.as_tensor([j for j in future if j < K])
        scale = torch.ones(b, dtype=patches.dtype, device=patches.device) if scale is None else scale
        state0 = self.empty_state(b, patches.device, patches.dtype)
        if calendar is not None:
            state0["cal"] = _calendar(calendar, b, patches.device)
        _, aux = self.advance(state0, patches, scale, features)
        n = T - 1                                                          # boundaries with a future
        mean, std = mean_std(aux["stats"][:, :n], aux["ref"][:, None])     # (b, n)
        flat = lambda x: x.reshape(b * n, *x.shape[2:])
        seas = {}
        if self.seasonal:
            seas = {k: flat(aux[k][:, :n]) for k in ("clock", "profile", "herr")}
            seas["ref"] = aux["ref"][:, None].expand(b, n).reshape(b * n)
            seas["cal"] = state0["cal"][:, None].expand(b, n, 2).reshape(b * n, 2)
        later = bool((future > 0).any())
        draw = self.flow.ar and sampled_prev > 0 and later
        seam = self.flow.ar and seam_weight > 0 and later
        preds = (draw or self.flow.carry or seam) and later                     # c, hint of predecessors needed
        need = torch.as_tensor(sorted({*future.tolist(), *(future[future > 0] - 1).tolist()})) if preds else future
        c, hint = self.condition(flat(aux["h"][:, :n]), flat(aux["windows"][:, :n]),
                                 flat(aux["period"][:, :n]), flat(mean), flat(std), K, seas, need)
        if preds:                                  # c, hint of the predecessors; then of the scored patches
            at = {j: i for i, j in enumerate(need.tolist())}
            pred = torch.as_tensor([at[max(j - 1, 0)] for j in future.tolist()])
            mine = torch.as_tensor([at[j] for j in future.tolist()])
            c_pred, hint_pred, c, hint = c[:, pred], hint[:, pred], c[:, mine], hint[:, mine]
        # targets: patches k+1 .. k+K for boundary k (padded with NaN past the end)
        padded = F.pad(patches, (0, 0, 0, K), value=float("nan"))
        fut = padded.unfold(1, K, 1)[:, 1:n + 1].permute(0, 1, 3, 2)           # (b, n, K, p)
        y_all = flat(normalise(fut, mean, std, cfg.clip).to(patches.dtype))   # (bn, K, p)
        ends = bounds = None
        if self.flow.ar:                           # observed ends, bounded as sampling bounds drawn ones
            bounds = prev_bounds(flat(aux["windows"][:, :n]), flat(mean), flat(std), cfg.clip)[:, None]
            ends = self.flow.bound(self._prev_ends(y_all, hint[:, 0, p]), bounds)        # (bn, K, 1)
        prev = ends[:, future] if self.flow.ar else None
        kp = (future - 1).clamp_min(0)                                     # each scored patch's predecessor
        m = future > 0                                                     # the scored patches after the first
        obs_pred = y_all[:, kp[m]] if preds else None                      # their observed predecessors
        carry = None
        if self.flow.carry:                        # the observed predecessor's last base value; NaN: fresh
            carry = torch.full((b * n, len(future), 1), float("nan"), dtype=patches.dtype, device=patches.device)
            if preds:                              # patches after the first only: patch 0 starts fresh
                hint_m = hint_pred[:, m]
                y_pred = torch.where(torch.isnan(obs_pred), hint_m[..., :p], obs_pred)
                carry[:, m] = self.flow.carried(y_pred, c_pred[:, m], hint_m, ends[:, kp[m]]).to(carry.dtype)
        y = y_all[:, future]                                # c and hint: for these future patches only
        obs = ~torch.isnan(y)
        if target_noise > 0:
            y = y + target_noise * torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
        if draw:
            with torch.no_grad():
                z = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
                pick = torch.rand(y.shape[:2], generator=generator).to(y.device) < sampled_prev
                pick &= m.to(y.device)[None, :]
                r, k = pick.nonzero(as_tuple=True)                      # draw the picked rows only
                before = ends[:, kp]                                     # the predecessor's own prev
                drawn, e = self.flow.sample_patch(c_pred[r, k], hint_pred[r, k], before[r, k], z[r, k])
                drawn = self.flow.bound(drawn[..., -1:], bounds[r, 0]).to(prev.dtype)
            prev = prev.index_put((r, k), drawn)
            if carry is not None:                  # the drawn predecessor (itself started fresh) ends there
                carry = carry.index_put((r, k), e.to(carry.dtype))
        scored = obs & (obs.to(patches.dtype).mean(-1, keepdim=True) >= min_observed)   # (bn, K, p)
        y = torch.where(obs, y, hint[..., :p])
        lp = self.flow.log_prob(y, c, hint, prev, per_step=True, carry=carry)   # (bn, K, p)
        nll = -torch.where(scored, lp, 0).sum() / scored.to(patches.dtype).sum().clamp_min(1)
        if parts is not None:
            parts["nll"] = nll.detach()
        if not seam:
            return nll
        seen = torch.cat([obs_pred, y_all[:, future[m]]], -1)              # (bn, k, 2p), NaN = missing
        bend = self._seam(c_pred[:, m], hint_pred[:, m], ends[:, kp[m]], c[:, m], hint[:, m], bounds, seen)
        if parts is not None:
            parts["seam"] = bend.detach()
        return nll + seam_weight * bend

    def _seam(self, c_pred, hint_pred, prev_pred, c, hint, bounds, seen=None):
        """How much more the zero-noise paths bend at patch boundaries than inside patches (ar_patches):
        c_pred, hint_pred (m, k, .) of k predecessor patches, prev_pred (m, k, 1) where each of those
        started from (teacher-forced), c, hint of the patches after them, bounds (m, 1, 2), seen
        (m, k, 2p) the two patches' observations, NaN = missing (None: not used) -> scalar.

        Each patch is drawn at zero noise, the later one continued from the earlier one's end as
        sampling chains them. The predecessor carries no gradient: the later patch is the one that
        moves to close a seam, not the one nearer the data. d1, d2 are the curve's second differences
        at the boundary's two sides. Each is allowed the larger of the curve's mean |second difference|
        inside the two patches (a trend or a slow cycle bends the same everywhere) and the observations'
        own |d| at the same place (where the data steps at the boundary, so may the forecast: opening
        hours, counts); neither allowance carries gradient (the curve is not paid to wiggle). The
        excess over it costs a Huber penalty (quadratic up to 1 normalised unit, linear beyond: series
        normalised by a young window's tiny spread can bend by hundreds). docs/model.md rows 26-27:
        without the observations' allowance, the series that step lost accuracy at H = 48."""
        z = torch.zeros(*c.shape[:-1], self.cfg.patch_len, dtype=c.dtype, device=c.device)
        with torch.no_grad():
            before, _ = self.flow.sample_patch(c_pred, hint_pred, prev_pred, z)            # (m, k, p)
        after, _ = self.flow.sample_patch(c, hint, self.flow.bound(before[..., -1:], bounds), z)
        p = self.cfg.patch_len
        bends = torch.cat([before, after], -1).diff(2, dim=-1).float()   # (m, k, 2p-2): entry i at step i+1
        d = bends[..., p - 2:p]                                          # at steps p-1, p: the boundary
        with torch.no_grad():
            allow = torch.cat([bends[..., :p - 2], bends[..., p:]], -1).abs().mean(-1, keepdim=True)
            if seen is not None:                                         # (m, k, 1) -> (m, k, 2)
                allow = torch.maximum(allow, seen.diff(2, dim=-1)[..., p - 2:p].float().abs().nan_to_num(0.0))
        excess = F.relu(d.abs() - allow)
        return F.huber_loss(excess, torch.zeros_like(excess), delta=1.0)



# Config fields that add zero-initialised parameters: weights without them still give the same function.
# (seasonal_memory adds no parameters; switched on, the same weights see the tracked best hint.)
ADDITIVE_FIELDS = {"ar_patches": False, "seasonal_memory": False, "hint_features": False, **LATE_FIELDS}


def load_compatible(model: Flame, src: Flame, what: str) -> None:
    """Copy src's weights into model. The configs must be equal, except that the model may switch on
    an ADDITIVE_FIELDS lever that src lacks: its new parameters keep their zero initialisation."""
    a, b = asdict(model.cfg), asdict(src.cfg)
    for name, off in ADDITIVE_FIELDS.items():
        if b[name] == off:
            a[name] = b[name] = off
    if a != b:
        diff = sorted(k for k in a if a[k] != b[k])
        raise ValueError(f"{what}: its model config differs from this run's ({', '.join(diff)})")
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    new = {n for n, _ in model.named_parameters()} - set(src.state_dict())
    if unexpected or set(missing) - new:
        raise ValueError(f"{what}: weights do not fit ({sorted(unexpected) + sorted(set(missing) - new)})")
