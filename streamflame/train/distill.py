"""Knowledge distillation from fracast (#14's optional lever): its quantiles as an auxiliary loss.

    streamflame train --config CFG --export-distill NPZ [--distill-sequences N]   # the teacher set
    streamflame train --config CFG     # with  distill: {path: NPZ, weight: w}  in CFG

Teacher set: N sequences (b, T, p) drawn by the run's own SequenceSampler under another seed
(``seed + DISTILL_SEED_OFFSET``: never a training step's batch, same sources, mix and
augmentations), each with C cut points k (a prefix of k whole patches, k >= MIN_CUT). fracast
(Apache-2.0, weights inside its wheel) reads each prefix - its last 2,048 values, as
`streamflame eval` feeds it - and forecasts the next H = K p steps; its 9 quantiles
(0.1 ... 0.9) are stored with the sequence. A prefix fracast cannot read (fewer than 8
observed values) stores NaN and is not scored.

Training: each step also draws ``batch`` sequences of the set (seeded by the step, so a resumed
run draws the same), runs the student over each once from an empty state (the same
`Flame.advance` as serving) and, at each cut, draws ``samples`` reparameterised paths of its
next K patches. The loss, in the normalised units of the student's causal statistics at that
cut (so every series weighs alike, as the NLL does): the mean over levels tau, steps and cuts of
|Q_student(tau) - Q_teacher(tau)|, Q_student the sample quantile of the paths.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from streamflame.core.constants import DEFAULT_QUANTILES
from streamflame.core.fields import from_fields
from streamflame.model.flame import Flame, _calendar
from streamflame.model.perception import mean_std, normalise

DISTILL_SEED_OFFSET = 10_007      # the teacher set's sampler seed = the run's seed + this
MIN_CUT = 8                       # a cut has at least this many patches of context


@dataclass(frozen=True)
class DistillConfig:
    path: str | None = None        # the teacher set (.npz from --export-distill); None: no distillation
    weight: float = 0.0            # the auxiliary loss's weight beside the flow NLL
    batch: int = 4                 # teacher-set sequences per step (each scored at all its cuts)
    samples: int = 32              # reparameterised paths per cut for the student's quantiles

    @classmethod
    def from_dict(cls, raw: dict) -> "DistillConfig":
        cfg = from_fields(cls, raw, "distill config")
        if cfg.weight < 0 or cfg.batch < 1 or cfg.samples < 2:
            raise ValueError("distill: weight must be >= 0, batch >= 1, samples >= 2")
        if cfg.weight > 0 and not cfg.path:
            raise ValueError("distill: a weight needs the teacher set's path")
        return cfg

    @property
    def on(self) -> bool:
        return bool(self.path) and self.weight > 0


class TeacherSet(NamedTuple):
    values: np.ndarray      # (N, T, p) float32, NaN = missing
    calendar: np.ndarray    # (N, 2) float64: day and week in steps (0 = unknown)
    cuts: np.ndarray        # (N, C) int64: prefix lengths in patches, MIN_CUT <= k <= T
    quantiles: np.ndarray   # (N, C, 9, H) float32 raw units; NaN where the teacher could not read

    def save(self, path: str | Path, meta: dict) -> None:
        np.savez_compressed(path, values=self.values, calendar=self.calendar, cuts=self.cuts,
                            quantiles=self.quantiles, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path) -> "TeacherSet":
        with np.load(path, allow_pickle=False) as z:
            ts = cls(z["values"], z["calendar"], z["cuts"].astype(np.int64), z["quantiles"])
        n, T, p = ts.values.shape
        if ts.cuts.shape[0] != n or ts.quantiles.shape[:2] != ts.cuts.shape or ts.quantiles.shape[2] != len(DEFAULT_QUANTILES) \
                or ts.quantiles.shape[3] % p or ts.cuts.min() < 1 or ts.cuts.max() > T:
            raise ValueError(f"{path}: not a teacher set (shapes {ts.values.shape}, {ts.cuts.shape}, {ts.quantiles.shape})")
        return ts

    def draw(self, step: int, seed: int, batch: int) -> "TeacherSet":
        """The ``batch`` sequences step ``step`` scores (seeded: a resumed run draws the same)."""
        idx = np.random.default_rng([seed, step, 13]).choice(len(self.values), size=min(batch, len(self.values)),
                                                              replace=False)
        idx.sort()
        return TeacherSet(self.values[idx], self.calendar[idx], self.cuts[idx], self.quantiles[idx])


def export_teacher_set(sampler, path: str | Path, sequences: int, cuts: int = 4, horizon: int = 96,
                       progress=print) -> dict:
    """Draw ``sequences`` sequences with ``sampler`` (the run's SequenceSampler built with
    :func:`teacher_config`), ``cuts`` cut points each, and store fracast's quantiles of the
    next ``horizon`` steps after each cut."""
    from streamflame.eval.baselines import Fracast  # lazy: the teacher (fracast) only for this export

    cfg, p = sampler.cfg, sampler.p
    if horizon % p:
        raise ValueError(f"horizon {horizon} is not a whole number of {p}-step patches")
    T = cfg.seq_patches
    if T < MIN_CUT + cuts:
        raise ValueError(f"seq_patches {T} leaves fewer than {cuts} cuts after {MIN_CUT} patches")
    vals, cals = [], []
    for k in range(-(-sequences // cfg.batch)):
        tb = sampler.batch_with_calendar(k)
        vals.append(tb.values), cals.append(tb.calendar)
    values = np.concatenate(vals)[:sequences]
    calendar = np.concatenate(cals)[:sequences]
    rng = np.random.default_rng([cfg.seed, 17])   # cfg.seed: already the teacher seed
    cut = np.sort(np.stack([rng.choice(np.arange(MIN_CUT, T + 1), size=cuts, replace=False)
                            for _ in range(sequences)]), 1)
    teacher = Fracast()
    flat = values.reshape(sequences, T * p)
    contexts = [flat[i, :k * p] for i in range(sequences) for k in cut[i]]
    readable = np.array([teacher.readable(c) for c in contexts], dtype=bool)
    quant = np.full((len(contexts), len(DEFAULT_QUANTILES), horizon), np.nan, np.float32)
    todo = np.flatnonzero(readable)
    chunk = 256
    for s in range(0, len(todo), chunk):
        idx = todo[s:s + chunk]
        _, q = teacher.predict([contexts[i] for i in idx], horizon, [1] * len(idx))
        quant[idx] = q
        progress(f"teacher: {min(s + chunk, len(todo))}/{len(todo)} prefixes")
    ts = TeacherSet(values, calendar, cut.astype(np.int64), quant.reshape(sequences, cuts, -1, horizon))
    meta = {"teacher": "fracast", "sequences": sequences, "cuts": cuts, "horizon": horizon,
            "sampler_seed": cfg.seed, "unreadable": int((~readable).sum()), "seq_patches": T}
    ts.save(path, meta)
    return meta


def teacher_config(cfg):
    """The training config whose sampler draws the teacher set: the run's, under another seed."""
    return replace(cfg, seed=cfg.seed + DISTILL_SEED_OFFSET, batch=64)


def student_quantiles(model: Flame, ts: TeacherSet, samples: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu"):
    """The student's quantiles after each cut of ``ts``, from ``samples`` reparameterised paths
    (differentiable): (q (m, 9, H) normalised, mean (m,), std (m,)) with m = b C in cut order,
    mean/std the student's causal statistics at each cut (raw = mean + std * normalised)."""
    patches = torch.as_tensor(ts.values, device=device)
    b, T, p = patches.shape
    C, H = ts.cuts.shape[1], ts.quantiles.shape[-1]
    K = H // p
    state = model.empty_state(b, device, patches.dtype)
    state["cal"] = _calendar(ts.calendar, b, device)
    _, aux = model.advance(state, patches, torch.ones(b, dtype=patches.dtype, device=device))
    rows = torch.arange(b, device=device)[:, None].expand(b, C).reshape(-1)          # (m,) m = b C
    at = torch.as_tensor(ts.cuts - 1, device=device).reshape(-1)                       # state after the cut
    mean, std = mean_std(aux["stats"][rows, at], aux["ref"][rows])                     # (m,)
    seas = {}
    if model.seasonal:
        seas = {k: aux[k][rows, at] for k in ("clock", "profile", "herr")}
        seas["ref"], seas["cal"] = aux["ref"][rows], state["cal"][rows]
    c, hint = model.condition(aux["h"][rows, at], aux["windows"][rows, at], aux["period"][rows, at],
                              mean, std, K, seas)
    m = b * C
    z = torch.randn((m, K, samples, p), generator=generator, dtype=c.dtype).to(device)
    y = model.flow.sample(c, hint, z)                                                  # (m, K, S, p)
    y = y.float()                    # torch.quantile takes float32/64 only (bf16 under CUDA autocast)
    levels = torch.tensor(DEFAULT_QUANTILES, dtype=y.dtype, device=device)
    q = torch.quantile(y, levels, dim=2).permute(1, 0, 2, 3).reshape(m, len(levels), H)      # (m, 9, H)
    return q, mean, std


def distill_loss(model: Flame, ts: TeacherSet, samples: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Mean |Q_student(tau) - Q_teacher(tau)| in normalised units over the cuts of ``ts`` (see the
    module's docstring). values (b, T, p), cuts (b, C), quantiles (b, C, 9, H = K p)."""
    q_s, mean, std = student_quantiles(model, ts, samples, generator, device)
    m, nq, H = q_s.shape
    q_t = torch.as_tensor(ts.quantiles, device=device).reshape(m, nq, H).double()
    q_t = normalise(q_t, mean, std, model.cfg.clip)
    ok = torch.isfinite(q_t)
    diff = (q_s - torch.where(ok, q_t, 0).to(q_s.dtype)).abs()
    return torch.where(ok, diff, 0).sum() / ok.sum().clamp_min(1)


def quantile_loss(q: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Summed pinball loss of quantiles q (..., 9, H) at DEFAULT_QUANTILES against y (..., H),
    over the observed steps -> (...,); NaN where y has no observed step."""
    tau = np.asarray(DEFAULT_QUANTILES)[:, None]
    d = y[..., None, :] - q
    pin = np.where(np.isnan(d), 0.0, np.maximum(tau * d, (tau - 1) * d)).sum((-2, -1))
    return np.where(np.isfinite(y).any(-1), pin, np.nan)


def gate_teacher_set(ts: TeacherSet, model: Flame, samples: int = 100, chunk: int = 25,
                     seed: int = 0) -> tuple[TeacherSet, dict]:
    """Selective distillation: keep the teacher's quantiles only at cuts where the teacher beats
    ``model`` (the student as it starts) on the sequence's own continuation - the quantile loss
    over the next H steps, which the sequence holds for cuts up to T - H / p. Every other cut
    (the student already as good, or no continuation to judge) becomes NaN: not scored."""
    b, T, p = ts.values.shape
    C, H = ts.cuts.shape[1], ts.quantiles.shape[-1]
    flat = ts.values.reshape(b, T * p).astype(np.float64)
    keep = np.zeros((b, C), bool)
    judged = np.zeros((b, C), bool)
    g = torch.Generator().manual_seed(seed)
    for a in range(0, b, chunk):
        part = TeacherSet(*(x[a:a + chunk] for x in ts))
        with torch.no_grad():
            q, mean, std = student_quantiles(model, part, samples, g)
        q_s = (mean[:, None, None] + std[:, None, None] * q.double()).numpy().reshape(len(part.values), C, -1, H)
        for i in range(len(part.values)):
            for j, k in enumerate(part.cuts[i]):
                y = flat[a + i, k * p:k * p + H]
                if k * p + H > T * p or not np.isfinite(part.quantiles[i, j]).all() or not np.isfinite(y).any():
                    continue
                judged[a + i, j] = True
                keep[a + i, j] = quantile_loss(part.quantiles[i, j].astype(np.float64), y) < quantile_loss(q_s[i, j], y)
    quant = np.where(keep[:, :, None, None], ts.quantiles, np.nan).astype(np.float32)
    return ts._replace(quantiles=quant), {"judged": int(judged.sum()), "kept": int(keep.sum()), "cuts": int(b * C)}
