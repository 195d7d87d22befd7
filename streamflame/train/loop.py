"""Training: every patch boundary of long sequences in one pass, flow NLL, AdamW.

    streamflame train --config configs/train/default.yaml [--resume] [--steps N] [--minutes M]

Each batch holds `batch` sequences of `seq_patches` patches, drawn from real series shipped in
PyPI packages (training split only; see streamflame.data.packaged) and from the seeded
synthetic generator. The model scores the forecast of the next patches from *every* boundary
of each sequence at once (FlowState's parallel prediction) through `Flame.advance`, the same
code path as `Forecaster.state_from_history`.

Checkpoints are safetensors + JSON only (no pickle): weights, AdamW moments, step, RNG state.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
import yaml

from streamflame.core.fields import from_fields
from streamflame.model.config import ModelConfig
from streamflame.model.flame import Flame, load_compatible, sequence_features
from streamflame.model.forecaster import Forecaster, _model_id
from streamflame.model.perception import DataFeatures, calendar_steps
from streamflame.train.distill import (DistillConfig, TeacherSet, distill_loss, export_teacher_set, gate_teacher_set,
                                      teacher_config)
from streamflame.train.mix import AugmentConfig, augment, tsmixup


def _named_by(name: str, prefix: str) -> bool:
    """A ``trainable`` entry names the parameters whose names start with it."""
    return name.startswith(prefix)


@dataclass
class TrainConfig:
    model: dict = field(default_factory=dict)       # ModelConfig overrides
    out_dir: str = "runs/default"
    seed: int = 0
    steps: int = 4000
    batch: int = 16
    seq_patches: int = 48                           # sequence length in patches
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 200
    min_lr_ratio: float = 0.1                        # cosine decay down to lr * min_lr_ratio
    clip: float = 1.0
    future_per_step: int = 3                        # future patches scored per step (always the next one)
    real_fraction: float = 0.5                      # share of sequences from real packaged data
    tsmixup_fraction: float = 0.0                   # share of TSMixup sequences (mixes of real ones)
    source_weights: bool = True                     # draw real sources by their registry weight (else uniformly)
    augment: dict = field(default_factory=dict)     # AugmentConfig overrides (streamflame/train/mix.py)
    target_noise: float = 0.0                       # dequantisation noise on normalised targets (Flame.loss)
    ar_sampled_prev: float = 0.0                    # ar_patches: share of scored patches conditioned on a
                                                    # sampled predecessor (scheduled sampling, Flame.loss)
    seam_weight: float = 0.0                        # ar_patches: weight of the zero-noise paths' bend at patch
                                                    # boundaries (Flame._seam), beside the NLL
    calendar: bool = True                           # each sequence's day and week in steps reach the model (cal)
    min_observed: float = 0.75                      # a future patch is scored from this observed share on
    synthetic_seed: int = 1
    synthetic: dict = field(default_factory=dict)   # SynthConfig overrides (families, gaps)
    checkpoint_every: int = 250
    log_every: int = 25
    max_minutes: float | None = None                # stop (with a checkpoint) after this wall time
    device: str = "auto"
    amp: bool = True                                # bf16 autocast on CUDA
    cpu_amp: bool = False                           # bf16 autocast on CPU too (AVX-512 BF16 / AMX);
                                                    # the data-only features stay in float32/64
    data: str | None = None                         # .npz from `--export-data` (None: packaged data)
    loader_workers: int = 0                         # processes drawing batches (and their data-only
                                                    # perception features) ahead (0: in-loop)
    threads: int = 0                                # torch intra-op threads of the step (0: torch's default)
    init_from: str | None = None                    # start from these weights (fresh optimizer/schedule)
    init_values: dict = field(default_factory=dict)  # parameter name -> constant it starts at (after
                                                    # init_from; e.g. a new lever's start away from zero)
    trainable: list = field(default_factory=list)   # parameter-name prefixes to train (e.g. flow.prev);
                                                    # the rest stay as loaded. Empty: all
    distill: dict = field(default_factory=dict)     # DistillConfig overrides (streamflame/train/distill.py)

    def trains(self, name: str) -> bool:
        """Whether the parameter ``name`` is trained: every one without ``trainable``."""
        return not self.trainable or any(_named_by(name, t) for t in self.trainable)

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> "TrainConfig":
        """The training config a run directory's last checkpoint was written with."""
        state = Path(run_dir) / "train_state.json"
        if not state.is_file():
            raise ValueError(f"{run_dir}: no train_state.json (not a training run directory)")
        return cls.from_dict(json.loads(state.read_text())["train_config"], str(state))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {}, str(path))

    @classmethod
    def from_dict(cls, raw: dict, path: str = "config") -> "TrainConfig":
        try:
            cfg = from_fields(cls, raw, "training config")
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        ModelConfig.from_dict(cfg.model)            # validate early, with the model's own message
        synth_config(cfg.synthetic)
        augment_config(cfg.augment)
        DistillConfig.from_dict(cfg.distill)
        for name in ("threads", "loader_workers"):
            if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 0:
                raise ValueError(f"{path}: {name} must be a whole number >= 0")
        if not 0 <= cfg.real_fraction + cfg.tsmixup_fraction <= 1:
            raise ValueError(f"{path}: real_fraction + tsmixup_fraction must be in [0, 1]")
        if not 0 <= cfg.ar_sampled_prev <= 1:
            raise ValueError(f"{path}: ar_sampled_prev must be in [0, 1]")
        if cfg.ar_sampled_prev > 0 and not cfg.model.get("ar_patches"):
            raise ValueError(f"{path}: ar_sampled_prev needs model: {{ar_patches: true}}")
        if cfg.seam_weight < 0:
            raise ValueError(f"{path}: seam_weight must be >= 0")
        if cfg.seam_weight > 0 and not cfg.model.get("ar_patches"):
            raise ValueError(f"{path}: seam_weight needs model: {{ar_patches: true}}")
        if not isinstance(cfg.trainable, list) or not all(isinstance(t, str) and t for t in cfg.trainable):
            raise ValueError(f"{path}: trainable must be a list of parameter-name prefixes")
        if not isinstance(cfg.init_values, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in cfg.init_values.values()):
            raise ValueError(f"{path}: init_values must map parameter names to finite numbers")
        names = ([n for n, _ in Flame(ModelConfig.from_dict(cfg.model)).named_parameters()]
                 if cfg.trainable or cfg.init_values else [])
        missing = sorted(set(cfg.init_values) - set(names))
        if missing:
            raise ValueError(f"{path}: init_values {missing} name no parameter of this model")
        unknown = [t for t in cfg.trainable if not any(_named_by(n, t) for n in names)]
        if unknown:
            raise ValueError(f"{path}: trainable {unknown} match no parameter of this model "
                             f"(e.g. {', '.join(sorted({n.rsplit('.', 1)[0] for n in names})[:6])}, ...)")
        return cfg


def synth_config(overrides: dict):
    """The generator's SynthConfig with a training config's `synthetic` overrides."""
    from streamflame.data.synthetic import DEFAULT, SynthConfig  # lazy: only for synthetic overrides
    if not overrides:
        return DEFAULT
    return from_fields(SynthConfig, {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()},
                       "synthetic config")


def augment_config(overrides: dict) -> AugmentConfig:
    return from_fields(AugmentConfig, overrides, "augment config")


# ---- data -----------------------------------------------------------------------------------
class TrainBatch(NamedTuple):
    values: np.ndarray        # (batch, seq_patches, p) float32, NaN = missing
    calendar: np.ndarray      # (batch, 2) float64: each sequence's day and week in steps (0 = unknown)
    features: DataFeatures | None = None   # the model's data-only features, when drawn ahead

    def tensors(self) -> "TrainBatch":
        """The same batch with torch tensors (what a DataLoader hands over)."""
        return TrainBatch(torch.from_numpy(self.values), torch.from_numpy(self.calendar), self.features)


class SequenceSampler:
    """Draws (batch, seq_patches, 48) float32 arrays; deterministic for a seed and step.

    A sequence is plain real (``real_fraction``), a TSMixup of real ones (``tsmixup_fraction``)
    or synthetic (the rest); then augmented (``augment``). Real sequences pick a source first -
    by its weight in the registry (``source_weights``), or uniformly - then a series within it,
    so a source with a thousand files weighs no more than its weight says. Each sequence also
    carries its calendar (the day and the week in steps) where its sampling step is known: a real
    series' step times its aggregation factor, a synthetic family's step; TSMixup of series with
    different steps and KernelSynth shapes have none."""

    def __init__(self, cfg: TrainConfig, patch_len: int,
                 real_series: list[np.ndarray] | dict[str, list[np.ndarray]] | None = None,
                 weights: dict[str, float] | None = None,
                 real_steps: dict[str, list[float | None]] | None = None):
        self.cfg, self.p = cfg, patch_len
        self.length = cfg.seq_patches * patch_len
        self.synth = synth_config(cfg.synthetic)
        self.aug = augment_config(cfg.augment)
        needs_real = cfg.real_fraction + cfg.tsmixup_fraction > 0
        if real_series is None:
            if not needs_real:
                real_series = {}
            elif cfg.data:
                real_series, real_steps = load_training_data(cfg.data), load_training_steps(cfg.data)
            else:
                real_series, real_steps = load_real_training_values(with_steps=True)
            if weights is None and cfg.source_weights:
                weights = training_source_weights()
        if not isinstance(real_series, dict):
            real_series = {"real": list(real_series)} if len(real_series) else {}
        names = [k for k, v in sorted(real_series.items()) if v]
        self.real = [real_series[k] for k in names]
        self.real_steps = [(real_steps or {}).get(k) or [None] * len(real_series[k]) for k in names]
        w = np.array([(weights or {}).get(k, 1.0) if cfg.source_weights else 1.0 for k in names], dtype=np.float64)
        self.source_p = w / w.sum() if len(w) and w.sum() > 0 else None
        if needs_real and not self.real:
            raise RuntimeError("real_fraction or tsmixup_fraction > 0 but no packaged training data is installed")

    def batch(self, step: int) -> np.ndarray:
        return self.batch_with_calendar(step).values

    def batch_with_calendar(self, step: int) -> TrainBatch:
        rng = np.random.default_rng([self.cfg.seed, step])
        out = np.empty((self.cfg.batch, self.length), dtype=np.float32)
        cal = np.zeros((self.cfg.batch, 2))
        mixing = self.cfg.tsmixup_fraction > 0
        augmenting = self.aug != AugmentConfig(tsmixup_k=self.aug.tsmixup_k, tsmixup_alpha=self.aug.tsmixup_alpha)
        for i in range(self.cfg.batch):
            u = rng.random() if self.real else 1.0      # no draw without real data (the old stream)
            if self.real and u < self.cfg.real_fraction:
                x, step_s = self._real(rng)
            elif self.real and mixing and u < self.cfg.real_fraction + self.cfg.tsmixup_fraction:
                k = int(rng.integers(1, self.aug.tsmixup_k + 1))
                parts = [self._real(rng, rescale=False) for _ in range(k)]
                x = self._rescale(tsmixup([a for a, _ in parts], rng, self.aug.tsmixup_alpha), rng)
                steps = {st for _, st in parts}
                step_s = steps.pop() if len(steps) == 1 else None
            else:
                x, step_s = self._synthetic(rng)
            out[i] = augment(x, rng, self.aug) if augmenting else x
            cal[i] = calendar_steps(step_s)
        return TrainBatch(out.reshape(self.cfg.batch, self.cfg.seq_patches, self.p), cal)

    def _synthetic(self, rng) -> tuple[np.ndarray, float | None]:
        from streamflame.data.synthetic import generate_one  # lazy: imported in each DataLoader worker on use
        info: dict = {}
        x = generate_one(int(rng.integers(0, 2**31)), self.length, seed=self.cfg.synthetic_seed,
                         config=self.synth, info=info)
        return x, (60.0 * info["step_minutes"] if info.get("step_minutes") else None)

    def _real(self, rng, rescale: bool = True) -> tuple[np.ndarray, float | None]:
        """A real sequence and its sampling step in seconds (None if unknown)."""
        i = int(rng.integers(len(self.real))) if self.source_p is None else \
            int(rng.choice(len(self.real), p=self.source_p))
        source = self.real[i]
        j = int(rng.integers(len(source)))
        x, step_s = source[j], self.real_steps[i][j]
        factor = int(rng.choice([1, 1, 1, 2, 3, 4]))           # aggregate to coarser sampling rates
        if factor > 1 and len(x) >= factor * self.length // 2:
            n = len(x) // factor * factor
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN blocks stay NaN
                x = np.nanmean(x[:n].reshape(-1, factor), axis=1)
            step_s = step_s * factor if step_s else None
        L = self.length
        if len(x) >= L:
            a = int(rng.integers(0, len(x) - L + 1))
            seg = x[a:a + L]
        else:                                                   # a young series: missing past
            seg = np.concatenate([np.full(L - len(x), np.nan), x])
        return (self._rescale(seg, rng) if rescale else seg), step_s

    @staticmethod
    def _rescale(seg: np.ndarray, rng) -> np.ndarray:
        scale = 10 ** rng.uniform(-2, 3) * rng.choice([-1.0, 1.0]) if rng.random() < 0.3 else 1.0
        return (seg * scale + (rng.normal(0, 100) if rng.random() < 0.2 else 0.0)).astype(np.float32)


class _Batches(torch.utils.data.Dataset):
    """step -> batch, so DataLoader workers draw the same batches as the loop would. With a model
    config, each batch also carries the model's data-only features (period search, LegT
    environment: flame.sequence_features, with the calendar where ``calendar``), so the worker
    computes them beside the step instead of the step itself."""

    def __init__(self, sampler: SequenceSampler, start: int, stop: int, model: ModelConfig | None = None,
                 calendar: bool = True):
        self.sampler, self.start, self.stop, self.model, self.calendar = sampler, start, stop, model, calendar

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> TrainBatch:
        tb = self.sampler.batch_with_calendar(self.start + i)
        if self.model is None:
            return tb
        feats = sequence_features(self.model, torch.from_numpy(tb.values),
                                  tb.calendar if self.calendar else None)
        return tb._replace(features=feats)


def batch_stream(cfg: TrainConfig, sampler: SequenceSampler, mcfg: ModelConfig, start: int,
                 device: torch.device) -> Iterator[TrainBatch]:
    """The batches of steps start, start + 1, ... < cfg.steps as tensors: drawn in the loop
    (loader_workers = 0; the step computes the features), or by loader_workers processes that
    also compute the data-only features (the same bits: tests/test_train.py)."""
    if cfg.loader_workers <= 0:
        for step in range(start, cfg.steps):
            yield sampler.batch_with_calendar(step).tensors()
        return
    yield from torch.utils.data.DataLoader(
        _Batches(sampler, start, cfg.steps, mcfg, cfg.calendar), batch_size=None, shuffle=False,
        num_workers=cfg.loader_workers, prefetch_factor=4, pin_memory=device.type == "cuda",
        worker_init_fn=_yield_to_the_step)


LOADER_NICE = 5     # a loader worker's niceness above the step's: it fills the step's idle moments


def _yield_to_the_step(worker_id: int) -> None:
    """On a machine with as few cores as the step has threads, the step's threads go first; the
    workers keep prefetch_factor batches queued in what time is left (their data is the same)."""
    if LOADER_NICE:
        os.nice(LOADER_NICE)


def autocast_on(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the step runs under bf16 autocast: ``amp`` on CUDA, ``cpu_amp`` on CPU."""
    return cfg.amp if device.type == "cuda" else (cfg.cpu_amp and device.type == "cpu")


def step_loss(model: Flame, cfg: TrainConfig, step: int, x: torch.Tensor,
              calendar: torch.Tensor | None, features: DataFeatures | None, amp: bool,
              parts: dict | None = None) -> torch.Tensor:
    """The model's loss at training step ``step`` on x (b, T, p), as `train` computes it (without
    distillation): the scored future patches and the target noise seeded by the step. Call it in
    the step's autocast context; under autocast (``amp``) the data-only features are computed
    first outside it, in the arithmetic serving computes them in (float32/64), whatever the device.
    ``parts``: receives the loss's terms (Flame.loss)."""
    mcfg = model.cfg
    K = mcfg.max_future_patches
    g = np.random.default_rng([cfg.seed, step, 7])
    future = sorted({0, *g.choice(np.arange(1, K), size=min(cfg.future_per_step, K) - 1, replace=False)})
    noise_gen = (torch.Generator().manual_seed(int(g.integers(2**62)))
                 if cfg.target_noise > 0 or cfg.ar_sampled_prev > 0 else None)
    if amp and features is None:
        with torch.autocast(x.device.type, enabled=False):
            features = sequence_features(mcfg, x, calendar)
    return model.loss(x, future=future, target_noise=cfg.target_noise, generator=noise_gen,
                      min_observed=cfg.min_observed, calendar=calendar, features=features,
                      sampled_prev=cfg.ar_sampled_prev, seam_weight=cfg.seam_weight, parts=parts)


def features_on(feats: DataFeatures | None, device: torch.device) -> DataFeatures | None:
    return None if feats is None else DataFeatures(feats.period.to(device), feats.env.to(device))


def load_real_training_values(min_len: int = 3 * 48, per_source: int | None = None, with_steps: bool = False):
    """Values of every training-split series with at least `min_len` observations, by registry
    source; `per_source` caps the series of a source (seeded sub-sample; None = all of them).
    With ``with_steps``: (values, sampling steps in seconds, None for calendar frequencies)."""
    from streamflame.data.registry import training_series  # lazy: pandas and every data package's loader
    by_source: dict[str, list[tuple[np.ndarray, float | None]]] = {}
    for s in training_series():
        v = np.asarray(s.values, dtype=np.float64)
        if np.sum(~np.isnan(v)) >= min_len and np.nanstd(v) > 0:
            by_source.setdefault(_source_name(s), []).append((v, s.step_seconds))
    rng = np.random.default_rng(0)
    out, steps = {}, {}
    for src in sorted(by_source):
        vs = by_source[src]
        idx = rng.permutation(len(vs))[:per_source] if per_source else range(len(vs))
        out[src] = [vs[i][0] for i in sorted(idx)]
        steps[src] = [vs[i][1] for i in sorted(idx)]
    return (out, steps) if with_steps else out


def _source_name(series) -> str:
    """The registry source a series belongs to (DIBS series carry the short source 'dibs')."""
    return "dibs/weather" if series.source == "dibs" else series.source


def training_source_weights() -> dict[str, float]:
    from streamflame.data.registry import training_sources  # lazy: pandas and every data package's loader
    return {s.name: s.weight for s in training_sources(skip_missing=False)}


def export_training_data(path: str | Path, max_len: int = 200_000) -> dict:
    """Write the training values to one compressed .npz (for a machine without the data
    packages, e.g. a GPU box). Each series keeps its newest `max_len` values, in float32."""
    data, steps = load_real_training_values(with_steps=True)
    arrays, index = {}, []
    for src, vs in data.items():
        for j, v in enumerate(vs):
            key = f"s{len(index)}"
            arrays[key] = v[-max_len:].astype(np.float32)
            index.append([src, key, steps[src][j]])
    arrays["index"] = np.array(json.dumps(index))
    np.savez_compressed(path, **arrays)
    return {"series": len(index), "sources": len(data), "values": int(sum(a.size for k, a in arrays.items() if k != "index"))}


def load_training_data(path: str | Path) -> dict[str, list[np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        out: dict[str, list[np.ndarray]] = {}
        for src, key, *_ in json.loads(str(z["index"])):
            out.setdefault(src, []).append(z[key].astype(np.float64))
    return out


def load_training_steps(path: str | Path) -> dict[str, list[float | None]]:
    """The sampling step (seconds) of each series in an export, in load_training_data's order
    (None where unknown, e.g. an export written before steps were recorded)."""
    with np.load(path, allow_pickle=False) as z:
        out: dict[str, list[float | None]] = {}
        for src, _, *rest in json.loads(str(z["index"])):
            out.setdefault(src, []).append(rest[0] if rest else None)
    return out


# ---- checkpoints (safetensors + JSON, no pickle) ------------------------------------------------
def save_checkpoint(path: Path, model: Flame, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig,
                    history: list[dict], lineage: list[dict] | None = None) -> None:
    from safetensors.torch import save_file
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    steps = {}
    for p, st in opt.state.items():
        n = names[id(p)]
        tensors[f"opt.{n}.exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
        tensors[f"opt.{n}.exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
        steps[n] = float(st["step"])
    tmp = path / "train_state.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(path / "train_state.safetensors")
    meta = {"step": step, "train_config": asdict(cfg), "model_config": json.loads(model.cfg.to_json()),
            "adam_steps": steps, "history": history[-200:], "lineage": lineage or [],
            "observations_seen": int(sum(seg["observations"] for seg in lineage or []))}
    (path / "train_state.json.tmp").write_text(json.dumps(meta, indent=1))
    (path / "train_state.json.tmp").replace(path / "train_state.json")


def load_checkpoint(path: Path, model: Flame, opt: torch.optim.Optimizer) -> tuple[int, list[dict], list[dict]]:
    from safetensors.torch import load_file
    meta = json.loads((path / "train_state.json").read_text())
    tensors = load_file(str(path / "train_state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    params = dict(model.named_parameters())
    for n, s in meta["adam_steps"].items():
        p = params[n]
        opt.state[p] = {"step": torch.tensor(s), "exp_avg": tensors[f"opt.{n}.exp_avg"].to(p.device),
                        "exp_avg_sq": tensors[f"opt.{n}.exp_avg_sq"].to(p.device)}
    return int(meta["step"]), list(meta.get("history", [])), list(meta.get("lineage", []))


# ---- loop ---------------------------------------------------------------------------------------
def lr_at(step: int, cfg: TrainConfig, time_frac: float = 0.0) -> float:
    """Linear warm-up, then cosine decay over whichever budget runs out first: the steps, or
    (with max_minutes) the wall time, so a time-boxed run still ends at the low learning rate."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, max((step - cfg.warmup) / max(1, cfg.steps - cfg.warmup), time_frac))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(model: Flame, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only. foreach: one multi-tensor kernel per update
    term instead of a Python loop over 100+ parameters (the same bits here: tests/test_train_features.py).
    With ``trainable``, only the parameters named by those prefixes get gradients and updates."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not cfg.trains(n):
            p.requires_grad_(False)
            continue
        (no_decay if p.ndim < 2 or n.endswith(("A_log", "dt_bias", "D")) else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98),
                             foreach=True)


def train(cfg: TrainConfig, resume: bool = False, sampler: SequenceSampler | None = None,
          progress=print) -> dict:
    """Run (or resume) training; returns {'step', 'loss_first', 'loss_last', 'out_dir'}. With
    ``threads``, torch's intra-op thread count is set for the run and restored after it."""
    before = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, resume, sampler, progress)
    finally:
        torch.set_num_threads(before)


def _train(cfg: TrainConfig, resume: bool, sampler: SequenceSampler | None, progress) -> dict:
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True   # float32 weights, TF32 matrix units
        torch.backends.cudnn.allow_tf32 = True
    mcfg = ModelConfig.from_dict(cfg.model)
    model = Flame(mcfg).to(device)
    opt = make_optimizer(model, cfg)
    out = Path(cfg.out_dir)
    step, history, lineage = 0, [], []
    if resume and (out / "train_state.json").is_file():
        step, history, lineage = load_checkpoint(out, model, opt)
        progress(f"resumed from {out} at step {step} "
                 f"({sum(seg['observations'] for seg in lineage):,} observations seen in {len(lineage)} segments)")
    elif cfg.init_from:
        src = Forecaster.load(cfg.init_from)
        load_compatible(model, src.model, f"init_from {cfg.init_from}")
        progress(f"initialised from {cfg.init_from} ({src.model_id})")
    if cfg.init_values and not (resume and step):
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in cfg.init_values.items():
                params[name].fill_(float(value))
        progress(f"set {', '.join(f'{k} = {v}' for k, v in cfg.init_values.items())}")
    sampler = sampler or SequenceSampler(cfg, mcfg.patch_len)
    dcfg = DistillConfig.from_dict(cfg.distill)
    teacher = TeacherSet.load(dcfg.path) if dcfg.on else None
    amp = autocast_on(cfg, device)
    t0, obs_seen, started = time.time(), 0, step
    segment = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "start_step": step,
               "end_step": step, "device": device.type, "device_name": _device_name(device),
               "threads": torch.get_num_threads(), "bf16_autocast": amp, "wall_s": 0.0, "observations": 0}
    lineage.append(segment)

    def checkpoint() -> None:
        segment.update(end_step=step, wall_s=round(time.time() - t0, 1), observations=int(obs_seen))
        save_checkpoint(out, model, opt, step, cfg, history, lineage)

    first = None
    model.train()
    batches = batch_stream(cfg, sampler, mcfg, step, device)
    while step < cfg.steps:
        if cfg.max_minutes is not None and time.time() - t0 > cfg.max_minutes * 60:
            progress(f"time budget of {cfg.max_minutes} min reached at step {step}")
            break
        xb = next(batches)
        x = xb.values.to(device, non_blocking=True)
        calendar = xb.calendar.to(device) if cfg.calendar else None
        time_frac = (time.time() - t0) / (cfg.max_minutes * 60) if cfg.max_minutes else 0.0
        lr = lr_at(step, cfg, time_frac)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            parts: dict = {}
            loss = step_loss(model, cfg, step, x, calendar, features_on(xb.features, device), amp, parts)
            dloss = None
            if teacher is not None:
                dgen = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, step, 19]).integers(2**62)))
                dloss = distill_loss(model, teacher.draw(step, cfg.seed, dcfg.batch), dcfg.samples, dgen, device)
                loss = loss + dcfg.weight * dloss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        if torch.isfinite(gnorm):
            opt.step()
        step += 1
        obs_seen += x.numel()
        val = float(loss.detach())
        first = val if first is None else first
        history.append({"step": step, "loss": val, **({} if dloss is None else {"distill": float(dloss.detach())}),
                        **({"seam": float(parts["seam"])} if "seam" in parts else {})})
        if step % cfg.log_every == 0 or step == cfg.steps:
            el = time.time() - t0
            recent = np.mean([h["loss"] for h in history[-cfg.log_every:]])
            dmean = [h["distill"] for h in history[-cfg.log_every:] if "distill" in h]
            smean = [h["seam"] for h in history[-cfg.log_every:] if "seam" in h]
            dtext = (f" (distill {np.mean(dmean):.4f})" if dmean else "") + (f" (seam {np.mean(smean):.4f})" if smean else "")
            progress(f"step {step}/{cfg.steps} loss {recent:.4f}{dtext} lr {lr:.2e} "
                     f"gnorm {float(gnorm):.2f} {obs_seen / el:,.0f} obs/s {(step - started) / el:.2f} it/s")
        if step % cfg.checkpoint_every == 0:
            checkpoint()
    checkpoint()
    model.eval()
    f = Forecaster(model.float().cpu(), "")
    f.model_id = _model_id(f.model)
    f.save(out / "final", extra={"trained_steps": step, "train_config": asdict(cfg), "lineage": lineage,
                                 "observations_seen": int(sum(seg["observations"] for seg in lineage))})
    return {"step": step, "loss_first": first, "loss_last": float(np.mean([h["loss"] for h in history[-10:]])),
            "out_dir": str(out)}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"{platform.machine()} CPU ({os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamflame train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="training YAML (see configs/train/)")
    ap.add_argument("--resume", nargs="?", const=True, metavar="RUN_DIR",
                    help="continue from the last checkpoint (weights, optimiser, data position) of RUN_DIR, "
                         "with the training config stored there, or of --config's out_dir")
    ap.add_argument("--steps", type=int, help="override total steps")
    ap.add_argument("--minutes", type=float, help="override the wall-time budget")
    ap.add_argument("--out-dir", help="override out_dir")
    ap.add_argument("--data", help="training values from this .npz instead of the packaged datasets")
    ap.add_argument("--init-from", help="start from this checkpoint's weights (fresh optimizer)")
    ap.add_argument("--workers", type=int, help="DataLoader processes drawing batches (and their features) ahead")
    ap.add_argument("--threads", type=int, help="torch intra-op threads of the step (0: torch's default)")
    ap.add_argument("--cpu-amp", choices=("on", "off"), help="bf16 autocast on CPU (default: the config's cpu_amp)")
    ap.add_argument("--export-distill", metavar="NPZ",
                    help="write a teacher set (fracast's quantiles after cut points of sequences drawn by "
                         "--config's sampler under another seed) to NPZ and exit")
    ap.add_argument("--gate-distill", nargs=2, metavar=("NPZ_IN", "NPZ_OUT"),
                    help="selective distillation: keep the teacher only at cuts where it beats --config's "
                         "init_from weights on the sequence's own continuation; write NPZ_OUT and exit")
    ap.add_argument("--distill-sequences", type=int, default=2000, help="sequences in the teacher set")
    ap.add_argument("--distill-cuts", type=int, default=4, help="cut points per teacher-set sequence")
    ap.add_argument("--export-data", metavar="NPZ",
                    help="write the packaged training values to NPZ and exit (no --config needed)")
    args = ap.parse_args(argv)
    if args.export_data:
        print(json.dumps(export_training_data(args.export_data)))
        return 0
    run_dir = args.resume if isinstance(args.resume, str) else None
    if not args.config and not run_dir:
        ap.error("--config (or --resume RUN_DIR) is required")
    try:
        cfg = TrainConfig.from_yaml(args.config) if args.config else TrainConfig.from_run_dir(run_dir)
    except (OSError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.export_distill:
        sampler = SequenceSampler(teacher_config(cfg), ModelConfig.from_dict(cfg.model).patch_len)
        print(json.dumps(export_teacher_set(sampler, args.export_distill, args.distill_sequences, args.distill_cuts,
                                            progress=lambda m: print(m, flush=True))))
        return 0
    if args.gate_distill:
        if not cfg.init_from:
            print("error: --gate-distill needs init_from (the student as it starts) in the config", file=sys.stderr)
            return 2
        src, dst = args.gate_distill
        gated, info = gate_teacher_set(TeacherSet.load(src), Forecaster.load(cfg.init_from).model.eval())
        gated.save(dst, {"gated_from": src, "student": cfg.init_from, **info})
        print(json.dumps(info))
        return 0
    if run_dir:
        cfg.out_dir = run_dir
    if args.steps is not None:
        cfg.steps = args.steps
    if args.minutes is not None:
        cfg.max_minutes = args.minutes
    if args.out_dir:
        cfg.out_dir = args.out_dir
    for name in ("data", "init_from"):
        if getattr(args, name):
            setattr(cfg, name, getattr(args, name))
    if args.workers is not None:
        cfg.loader_workers = args.workers
    if args.threads is not None:
        cfg.threads = args.threads
    if args.cpu_amp:
        cfg.cpu_amp = args.cpu_amp == "on"
    res = train(cfg, resume=bool(args.resume), progress=lambda m: print(m, flush=True))
    print(json.dumps(res))
    return 0
