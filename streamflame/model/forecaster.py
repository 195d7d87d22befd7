"""The public Python API: load a model, update a series, get a forecast.

    f = Forecaster.load()                       # shipped checkpoint (or from_config for random weights)
    s = f.init_state()
    s = f.update(s, values)                     # any number of observations, NaN allowed
    fc = f.forecast(s, horizon=96, seed=0)      # fc.mean (H,), fc.quantiles (Q, H), fc.samples (S, H)

`update_many` / `forecast_many` are the batched forms the worker uses; they give the same
numbers as the single-series calls.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.constants import DEFAULT_QUANTILES
from .config import ModelConfig
from .arithmetic import Arithmetic, bucket
from .flame import STATE_FIELDS, Flame
from .noise import series_keys, standard_normal
from .perception import calendar_steps, mean_std
from .batch import StateBatch
from .state import SeriesState, StateDecodeError

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "default"
MAX_BLOCK = 256          # patches per parallel block in state_from_history / long updates
# CPU GEMM kernels pick a different reduction order for very small row counts and for the
# tail rows of a batch, so one series could get last-bit different numbers depending on the
# batch it lands in. The batched calls pad every batch to a multiple of MIN_ROWS series
# (repeating the first) -- the flow head over samples to a multiple of MIN_ROWS sample rows
# (_flow_rows) -- which makes their results independent of batch composition on CPU:
# replays and retried worker batches publish bit-identical forecasts and states. Single-series
# `forecast` and one-patch `update` calls are padded the same way, so they equal the batched
# calls bit for bit; multi-patch updates take the parallel scan (equal to float precision).
MIN_ROWS = 16
# forecast_many on CPU samples at most this many series per pass: beyond it the (series x
# samples, hidden) activations leave the cache and a series costs ~1.5x more (measured on
# the 2-core machine: 1.43 ms/series at 128, 2.13 at 512). A multiple of MIN_ROWS, so the
# chunks are padded exactly as one call for them would be (results are unchanged).
CPU_FORECAST_CHUNK = 128
# On other devices, this many series per pass (a multiple of MIN_ROWS): the flow's activations of
# 65,536 series x 200 sample rows x 128 hidden are 6.7 GB a tensor, and the float64 samples, their
# sort and its indices another 15 GB; chunks of 16,384 keep a pass within ~12 GB, large enough
# that the GPU's kernels stay full.
DEVICE_FORECAST_CHUNK = 16_384


def _padded(n: int) -> int:
    return max(MIN_ROWS, -(-n // MIN_ROWS) * MIN_ROWS)


def _flow_rows(n: int, rows_per_series: int) -> int:
    """Series to run through the flow head for ``n`` real ones: the least m >= n whose
    m * rows_per_series sample rows are a multiple of MIN_ROWS (at most _padded(n)); e.g. with
    100 samples x 2 patches a lone series takes 2 rows of samples instead of 16."""
    m = n
    while (m * rows_per_series) % MIN_ROWS:
        m += 1
    return m


_TORCH = {"float32": torch.float32, "float64": torch.float64}
_DTYPE_NAMES = {v: k for k, v in _TORCH.items()}


@dataclass
class Forecast:
    mean: np.ndarray                 # (H,)
    quantiles: np.ndarray            # (Q, H), rows follow quantile_levels
    samples: np.ndarray | None       # (S, H); None when the call asked for no samples
    quantile_levels: tuple[float, ...]

    @property
    def horizon(self) -> int:
        return int(self.mean.shape[0])

    def quantile(self, q: float) -> np.ndarray:
        return self.quantiles[self.quantile_levels.index(q)]


@dataclass
class BatchForecast:
    """``forecast_batch``'s forecasts of n series, as its chunks computed them (not copied
    together): chunk c holds series [c * chunk, (c + 1) * chunk) as mean (b, H), quantiles
    (Q, b, H), samples (b, S, H) or None (``samples=False``)."""
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]
    chunk: int
    quantile_levels: tuple[float, ...]

    def __len__(self) -> int:
        return sum(int(c[0].shape[0]) for c in self.chunks)

    def get(self, j: int) -> Forecast:
        """Series j's forecast (views of its chunk's arrays)."""
        mean, qs, samples = self.chunks[j // self.chunk]
        k = j % self.chunk
        return Forecast(mean[k], qs[:, k], None if samples is None else samples[k], self.quantile_levels)


class Forecaster:
    def __init__(self, model: Flame, model_id: str, temperature: float = 1.0, antithetic: bool = False,
                 floors: bool = False):
        self.model = model.eval()
        self.model_id = model_id
        self.temperature = 1.0
        self.set_temperature(temperature)
        self.antithetic = False
        self.set_antithetic(antithetic)
        self.floors = False
        self.set_floors(floors)
        # Module.to() converts parameters in place, so this one tensor always shows the
        # model's device and dtype (next(model.parameters()) walks every module: ~10 us,
        # and the batched calls ask several times per series).
        self._p0 = next(model.parameters())
        self._empty: dict[str, dict[str, np.ndarray]] = {}   # dtype -> init_state's arrays
        self.arithmetic = Arithmetic()          # exact float32 sampling unless set_arithmetic says otherwise
        self._compiled_sample = None

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ModelConfig | None = None, seed: int = 0) -> "Forecaster":
        config = config or ModelConfig()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Flame(config)
        return cls(model, _model_id(model))

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Forecaster":
        """Load a checkpoint directory (config.json + model.safetensors); None = shipped default."""
        from safetensors.torch import load_file
        path = Path(path) if path is not None else CHECKPOINT_DIR
        if path.is_file():
            path = path.parent
        cfg_file, w_file = path / "config.json", path / "model.safetensors"
        if not (cfg_file.is_file() and w_file.is_file()):
            raise FileNotFoundError(f"no StreamFlame checkpoint at {path} (need config.json and model.safetensors)")
        meta = json.loads(cfg_file.read_text())
        model = Flame(ModelConfig.from_dict(meta["model"]))
        weights = load_file(str(w_file))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint {path} does not match its config: missing={missing} unexpected={unexpected}")
        sampling = meta.get("sampling", {})
        return cls(model, _model_id(model), float(sampling.get("temperature", 1.0)), sampling.get("antithetic", False),
                   sampling.get("floors", False))

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.model.state_dict().items()}
        save_file(weights, str(path / "model.safetensors"))
        sampling = {**({"temperature": self.temperature} if self.temperature != 1.0 else {}),
                    **({"antithetic": True} if self.antithetic else {}), **({"floors": True} if self.floors else {})}
        meta = {"model": json.loads(self.config.to_json()), "model_id": self.model_id,
                **({"sampling": sampling} if sampling else {}), **(extra or {})}
        (path / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return path

    def to(self, device=None, dtype=None) -> "Forecaster":
        self.model.to(device=device, dtype=dtype)
        self._compiled_sample = None
        return self

    def set_temperature(self, temperature: float) -> "Forecaster":
        """Scale the flow's base noise: samples are drawn from N(0, temperature^2) through the flow
        (post-hoc calibration of the predictive spread; 1.0 = as trained). Kept in the checkpoint
        (``config.json`` ``sampling.temperature``), not in ``model_id``: a state means the same
        whatever the temperature."""
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and 0.0 < temperature <= 2.0):
            raise ValueError(f"temperature must be a number in (0, 2], got {temperature!r}")
        self.temperature = float(temperature)
        return self

    def set_antithetic(self, on: bool) -> "Forecaster":
        """Antithetic sampling: the second half of a forecast's paths is drawn with the negated noise
        of the first half (path S//2 + i from -z_i; an odd S's middle path alone), so the sample
        mean and quantiles of a symmetric-noise flow vary less for the same number of paths, and
        half the noise is generated. Kept in the checkpoint (``sampling.antithetic``) like the
        temperature; off by default (the paths as each draws its own noise)."""
        if not isinstance(on, bool):
            raise ValueError(f"antithetic must be true or false, got {on!r}")
        self.antithetic = on
        return self

    def set_floors(self, on: bool) -> "Forecaster":
        """Hold the floor and ceiling a series shows: no sample path goes below its window's minimum
        (above its maximum) where at least 5 % of the window's observations sit exactly there
        (perception.floors: zero rain, load, counts; humidity at 100 %). The flow is unbounded, so
        without it a zero-floored series gets negative lower quantiles, which no observation can
        reach. Kept in the checkpoint (``sampling.floors``); off by default."""
        if not isinstance(on, bool):
            raise ValueError(f"floors must be true or false, got {on!r}")
        self.floors = on
        return self

    def set_arithmetic(self, matmul: str = "float32", compile: bool = False) -> "Forecaster":
        """Cheaper arithmetic for the sampling pass (model/arithmetic.py; off by default): matmul
        "float32" (exact), "bf16" or "tf32" (CUDA); compile: torch.compile at bucketed batch sizes
        (CUDA graphs on CUDA). Changes the published numbers within the errors in docs/model.md."""
        self.arithmetic = Arithmetic(matmul, compile)
        self._compiled_sample = None
        return self

    # ---- facts ---------------------------------------------------------------------------
    @property
    def config(self) -> ModelConfig:
        return self.model.cfg

    @property
    def device(self) -> torch.device:
        return self._p0.device

    @property
    def dtype(self) -> str:
        d = self._p0.dtype
        return _DTYPE_NAMES.get(d) or str(d).removeprefix("torch.")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # ---- single series -------------------------------------------------------------------
    def init_state(self, scale: float = 1.0, step_seconds: float | None = None) -> SeriesState:
        """A fresh state. ``step_seconds``: the series' sampling step, if known; the day and the
        week in steps then become period candidates (state field ``cal``)."""
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        if step_seconds is not None and not (isinstance(step_seconds, (int, float)) and math.isfinite(step_seconds)
                                             and step_seconds > 0):
            raise ValueError(f"step_seconds must be a finite number > 0 or None, got {step_seconds!r}")
        empty = self._empty.get(self.dtype)
        if empty is None:  # built once (~80 us each time otherwise); read-only, shared by every fresh state
            st = self.model.empty_state(1, "cpu", _TORCH[self.dtype])
            empty = self._empty[self.dtype] = {k: v[0].numpy() for k, v in st.items()}
            for a in empty.values():
                a.flags.writeable = False
        tensors = dict(empty)
        if step_seconds is not None:
            tensors["cal"] = np.asarray(calendar_steps(step_seconds), dtype=np.float64)
        return SeriesState(self.model_id, self.dtype, tensors, np.zeros(0, dtype=self.dtype), scale=float(scale))

    def update(self, state: SeriesState, values) -> SeriesState:
        """Feed any number of new observations (1-D, NaN = missing). Returns the new state."""
        self._check(state)
        v = _as_values(values, self.dtype)
        seq = np.concatenate([state.buffer, v])
        p = self.config.patch_len
        n_full = len(seq) // p
        new = state
        for start in range(0, n_full, MAX_BLOCK):
            stop = min(n_full, start + MAX_BLOCK)
            new = self._advance([new], seq[start * p: stop * p].reshape(1, stop - start, p), pad=stop - start == 1)[0]
        return SeriesState(self.model_id, self.dtype, new.tensors, seq[n_full * p:].copy(),
                           n_obs=state.n_obs + len(v), n_patches=state.n_patches + n_full, scale=state.scale)

    def state_from_history(self, values, scale: float = 1.0, step_seconds: float | None = None) -> SeriesState:
        """The state after `values`, computed with the parallel scan (blocks of MAX_BLOCK patches)."""
        return self.update(self.init_state(scale, step_seconds), values)

    def forecast(self, state: SeriesState, horizon: int, quantiles=DEFAULT_QUANTILES,
                 num_samples: int = 100, seed: int | None = None) -> Forecast:
        """Sample `num_samples` paths of `horizon` steps after the last observation fed."""
        return self._forecast([state], horizon, quantiles, num_samples, [seed], pad=True)[0]

    # ---- batched (worker) ----------------------------------------------------------------
    def update_many(self, states: list[SeriesState], patches) -> list[SeriesState]:
        """Apply exactly one patch to each state. patches (B, patch_len); buffers must be empty."""
        p = self.config.patch_len
        patches = np.asarray(patches, dtype=np.float64)
        if patches.shape != (len(states), p):
            raise ValueError(f"patches must have shape ({len(states)}, {p}), got {patches.shape}")
        _check_range(patches, self.dtype)
        for s in states:
            self._check(s)
            if len(s.buffer):
                raise ValueError("update_many needs states without a partial patch; use update()")
        new = self._advance(states, patches.astype(self.dtype)[:, None, :], pad=True) if states else []
        return [SeriesState(self.model_id, self.dtype, n.tensors, s.buffer.copy(), n_obs=s.n_obs + p,
                            n_patches=s.n_patches + 1, scale=s.scale) for s, n in zip(states, new)]

    def forecast_many(self, states: list[SeriesState], horizon: int, quantiles=DEFAULT_QUANTILES,
                      num_samples: int = 100, seeds: list[int | None] | None = None,
                      samples: bool = True) -> list[Forecast]:
        """`forecast` for many series at once (one seed each), bit-identical for any batch.
        ``samples=False``: the sample paths stay on the device (``Forecast.samples`` is None);
        only the mean and the quantiles are copied back."""
        return self._forecast(states, horizon, quantiles, num_samples, seeds, pad=True, with_samples=samples)

    @torch.no_grad()
    def _forecast(self, states, horizon, quantiles, num_samples, seeds, pad: bool,
                  with_samples: bool = True) -> list[Forecast]:
        cfg = self.config
        levels = self._forecast_args(horizon, quantiles, num_samples)
        seeds = list(seeds) if seeds is not None else [None] * len(states)
        if len(seeds) != len(states):
            raise ValueError("one seed per state")
        out: list[Forecast | None] = [None] * len(states)
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(states):
            self._check(s)
            if s.n_patches < 1:
                raise ValueError("a forecast needs at least one complete patch "
                                 f"({cfg.patch_len} observations); this series has {s.n_obs}")
            groups.setdefault(len(s.buffer), []).append(i)
        chunk = self._forecast_chunk()
        jobs = [(skip, group[a:a + chunk]) for skip, group in groups.items() for a in range(0, len(group), chunk)]
        for skip, idx in jobs:
            extra = _padded(len(idx)) - len(idx) if pad else 0
            stacked = self._stack([states[i] for i in idx], extra)
            known = known_steps([states[i] for i in idx + idx[:1] * extra])
            means, qs, samples = self._forecast_stacked(stacked, [seeds[i] for i in idx], skip, horizon, levels,
                                                        num_samples, pad, with_samples, known)
            for j, i in enumerate(idx):
                out[i] = Forecast(means[j].numpy(), qs[:, j].numpy(),
                                  samples[j].numpy() if samples is not None else None, levels)
        return out

    def _forecast_args(self, horizon, quantiles, num_samples) -> tuple[float, ...]:
        """Check a forecast's settings; returns the quantile levels as floats."""
        cfg = self.config
        if not isinstance(horizon, (int, np.integer)) or not 1 <= horizon <= cfg.max_horizon:
            raise ValueError(f"horizon must be an integer in [1, {cfg.max_horizon}], got {horizon!r}")
        levels = tuple(float(q) for q in quantiles)
        if not levels or any(not 0 < q < 1 for q in levels):
            raise ValueError(f"quantile levels must lie strictly between 0 and 1, got {quantiles!r}")
        if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        return levels

    def _forecast_stacked(self, stacked: dict[str, torch.Tensor], seeds: list, skip: int, horizon: int,
                          levels: tuple[float, ...], num_samples: int, pad: bool, with_samples: bool = True,
                          known: torch.Tensor | None = None):
        """Sample one chunk of already-stacked states (shared by ``_forecast`` and ``forecast_batch``).
        stacked: STATE_FIELDS -> (m, ...) on the model's device, m >= n = len(seeds) (rows past n pad:
        _padded(n) rows when ``pad``); every state has ``skip`` buffered observations, ``known``
        (m, skip) (rows as stacked): the paths start with them and are drawn given them.
        seeds: n ints / None, or an (n, 2) int64 tensor of noise.series_keys.
        Returns CPU tensors means (n, H), quantiles (Q, n, H), samples (n, S, H) or None; the
        noise, the mean and the quantiles are computed on the model's device."""
        cfg = self.config
        keys = seeds if isinstance(seeds, torch.Tensor) else series_keys(seeds)
        n = keys.shape[0]
        K = -(-(horizon + skip) // cfg.patch_len)
        # The per-series layers run on the padded rows; the flow over samples (most of the
        # cost) only on as many rows as make its matrices a multiple of MIN_ROWS tall.
        # (with ar_patches the flow runs one future patch at a time: num_samples rows per series)
        rows = num_samples if cfg.ar_patches else K * num_samples
        n_flow = _flow_rows(n, rows) if pad else n
        keys = torch.cat([keys, keys[:1].expand(n_flow - n, 2)]).to(self.device)    # pad rows: row 0's noise
        noise = _sampling_noise(keys, num_samples, (K, cfg.patch_len), _TORCH[self.dtype], self.antithetic)
        if self.temperature != 1.0:
            noise = noise * self.temperature
        with self.arithmetic.sampling(self.device):
            samples = self._sample(stacked, K, noise, known)[:n, :, skip:skip + horizon]
        means = samples.mean(1)
        qs = sample_quantiles(samples, torch.tensor(levels, dtype=torch.float64, device=samples.device))
        if self.dtype == "float32":                 # published at the float32 model's resolution
            std = mean_std(stacked["stats"][:n], stacked["ref"][:n])[1]
            means, qs = round_to_scale(means, std), round_to_scale(qs, std, dim=1)
        return means.cpu(), qs.cpu(), samples.cpu() if with_samples else None

    # ---- state batches (the worker's hot path: model/batch.py) ------------------------------
    def state_batch(self, capacity: int) -> StateBatch:
        """An empty StateBatch for up to ``capacity`` series of this model, on its device (its rows
        are rounded up to a multiple of MIN_ROWS: the padding of the batched calls fits in place)."""
        return StateBatch.for_forecaster(self, _padded(capacity))

    @torch.no_grad()
    def step_batch(self, batch: StateBatch, patches, rows=None) -> None:
        """``update_many`` on a StateBatch, in place: one patch per row of ``rows`` (default: all, in
        order); patches (len(rows), patch_len). The same numbers as update_many, for any rows."""
        self._check_batch(batch)
        rows = list(range(batch.size)) if rows is None else list(rows)
        n, p = len(rows), self.config.patch_len
        patches = np.asarray(patches, dtype=np.float64)
        if patches.shape != (n, p):
            raise ValueError(f"patches must have shape ({n}, {p}), got {patches.shape}")
        _check_range(patches, self.dtype)
        if not n:
            return
        m = _padded(n)
        idx = np.asarray(rows + rows[:1] * (m - n))
        x = patches.astype(self.dtype)
        if m > n:
            x = np.concatenate([x, np.repeat(x[:1], m - n, 0)])
        x = torch.from_numpy(x[:, None, :])
        scale = torch.from_numpy(batch.scale[idx]).to(_TORCH[self.dtype])
        new, _ = self.model.advance(batch.gather(rows, m), x.to(self.device), scale.to(self.device))
        batch.put(rows, {k: new[k] for k in STATE_FIELDS})
        batch.n_obs[idx[:n]] += p
        batch.n_patches[idx[:n]] += 1

    @torch.no_grad()
    def forecast_batch(self, batch: StateBatch, rows, horizon: int, quantiles=DEFAULT_QUANTILES,
                       num_samples: int = 100, seeds: list[int | None] | None = None,
                       samples: bool = True) -> BatchForecast:
        """``forecast_many`` of the states in ``rows`` of a StateBatch (None: all), one seed each:
        the same numbers, chunked and padded as forecast_many is. ``samples=False``: the sample
        paths are not copied back (``Forecast.samples`` is None)."""
        self._check_batch(batch)
        levels = self._forecast_args(horizon, quantiles, num_samples)
        rows = list(range(batch.size)) if rows is None else list(rows)
        seeds = list(seeds) if seeds is not None else [None] * len(rows)
        if len(seeds) != len(rows):
            raise ValueError("one seed per state")
        if rows and batch.n_patches[rows].min() < 1:
            short = [r for r in rows if batch.n_patches[r] < 1]
            raise ValueError("a forecast needs at least one complete patch "
                             f"({self.config.patch_len} observations); row {short[0]} has {batch.n_obs[short[0]]}")
        chunk = self._forecast_chunk()
        parts = [self._forecast_stacked(batch.gather(rows[a:a + chunk], _padded(len(rows[a:a + chunk]))),
                                        seeds[a:a + chunk], 0, horizon, levels, num_samples, True, samples)
                 for a in range(0, len(rows), chunk)]
        return BatchForecast([tuple(None if x is None else x.numpy() for x in part) for part in parts], chunk, levels)

    def _check_batch(self, batch: StateBatch) -> None:
        if not isinstance(batch, StateBatch):
            raise TypeError(f"expected a StateBatch, got {type(batch).__name__}")
        if batch.layout.model_id != self.model_id or batch.layout.dtype != self.dtype:
            raise StateDecodeError(f"the batch holds states of model {batch.layout.model_id} "
                                   f"({batch.layout.dtype}); this forecaster is {self.model_id} ({self.dtype})")

    # ---- internals -----------------------------------------------------------------------
    def _forecast_chunk(self) -> int:
        """Series per sampling pass (forecast_many and forecast_batch alike)."""
        return CPU_FORECAST_CHUNK if self.device.type == "cpu" else DEVICE_FORECAST_CHUNK

    def _sample(self, stacked: dict[str, torch.Tensor], K: int, noise: torch.Tensor,
                known: torch.Tensor | None = None) -> torch.Tensor:
        """model.sample, or with ``compile`` its compiled form on rows padded to whole buckets
        (repeats of row 0), so varying batches reuse a few graphs. A partial patch (``known``: a
        forecast between patches, never the worker's) runs uncompiled: one graph per length is not worth it."""
        if known is not None:
            return self.model.sample(stacked, K, noise, self.floors, known.to(self.device))
        if not self.arithmetic.compile:
            return self.model.sample(stacked, K, noise, self.floors)
        if self._compiled_sample is None:
            # one graph per (bucket, patches sampled): up to 11 buckets x a few K, beyond dynamo's default 8
            import torch._dynamo.config as dynamo_config   # lazy: dynamo is loaded only with compile=True
            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
            self._compiled_sample = torch.compile(self.model.sample, mode="reduce-overhead", dynamic=False)
        m, n = next(iter(stacked.values())).shape[0], noise.shape[0]
        mb, nb = bucket(m), bucket(n)
        stacked = {k: torch.cat([v, v[:1].expand(mb - m, *v.shape[1:])]) for k, v in stacked.items()}
        noise = torch.cat([noise, noise[:1].expand(nb - n, *noise.shape[1:])])
        return self._compiled_sample(stacked, K, noise, self.floors)[:n].clone()

    def _check(self, state: SeriesState) -> None:
        if not isinstance(state, SeriesState):
            raise TypeError(f"expected a SeriesState, got {type(state).__name__}")
        if state.model_id != self.model_id:
            raise StateDecodeError(f"state belongs to model {state.model_id}, this forecaster is {self.model_id}")
        if state.dtype != self.dtype:
            raise StateDecodeError(f"state dtype {state.dtype} does not match the forecaster's {self.dtype}")

    def _stack(self, states: list[SeriesState], extra: int = 0) -> dict[str, torch.Tensor]:
        """Stack states into (len + extra, ...) tensors; the extra rows repeat the first state."""
        states = states + [states[0]] * extra
        empty = self.init_state().tensors            # fields a state stored before they existed lack
        return {k: torch.from_numpy(np.stack([s.tensors.get(k, empty[k]) for s in states])).to(self.device)
                for k in STATE_FIELDS}

    @torch.no_grad()
    def _advance(self, states: list[SeriesState], patches: np.ndarray, pad: bool = False) -> list[SeriesState]:
        pad = _padded(len(states)) - len(states) if pad else 0
        stacked = self._stack(states, pad)
        scale = torch.tensor([s.scale for s in states] + [states[0].scale] * pad, dtype=_TORCH[self.dtype])
        patches = torch.from_numpy(np.concatenate([patches, np.repeat(patches[:1], pad, 0)]))
        new, _ = self.model.advance(stacked, patches.to(self.device), scale.to(self.device))
        new = {k: v.cpu().numpy() for k, v in new.items()}
        return [SeriesState(self.model_id, self.dtype, {k: new[k][i] for k in STATE_FIELDS}, s.buffer,
                            s.n_obs, s.n_patches, s.scale) for i, s in enumerate(states)]


def _as_values(values, dtype: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be a 1-D array of observations, got shape {v.shape}")
    _check_range(v, dtype)
    return v.astype(dtype)


def _check_range(v: np.ndarray, dtype: str) -> None:
    """Values must be NaN (missing) or finite in the model's dtype: a float64 value beyond
    float32's range would become +-inf in the cast and leave the state non-finite for good."""
    top = float(np.finfo(dtype).max)
    if not v.size or max(np.fmax.reduce(v, axis=None), -np.fmin.reduce(v, axis=None)) <= top:
        return                            # the usual case: fmax / fmin skip NaN, no temporaries
    with np.errstate(invalid="ignore"):
        if (np.abs(v) > top).any():
            raise ValueError(f"values must be finite or NaN (missing), with |value| <= {top!r} ({dtype}); "
                             f"got {float(v[np.abs(v) > top].flat[0])!r}")


def sample_quantiles(samples: torch.Tensor, q: torch.Tensor, numpy_sort: bool | None = None) -> torch.Tensor:
    """``torch.quantile(samples, q, dim=1)`` (linear interpolation, NaN rows -> NaN), bit
    for bit, on the samples' device: (b, S, H) samples, (Q,) float64 levels -> (Q, b, H).
    On CPU the sort is numpy's: torch's own is the cost there (60 of 68 ms for 128 series x
    100 samples x 96 steps on the 2-core machine, ~10 ms this way); elsewhere torch.sort.
    (``numpy_sort``: force either, for tests; None = by device.) The rank, gather and lerp
    steps below are torch.quantile's. Reference checks: tests/test_model_parts.py::
    test_sample_quantiles_equal_torch_quantile, tests/test_arithmetic.py (the torch.sort path)."""
    b, n, h = samples.shape
    q = q.to(samples.device)
    if numpy_sort if numpy_sort is not None else samples.device.type == "cpu":
        srt = torch.from_numpy(np.sort(samples.numpy(), axis=1))
    else:
        srt = samples.sort(dim=1).values                                     # NaN last, as numpy
    srt = srt.permute(0, 2, 1)                                               # (b, H, S), NaN last
    ranks = (q * (n - 1)).expand(b, h, len(q)).contiguous()                   # (b, H, Q)
    ranks = ranks.masked_fill(srt[..., -1:].isnan(), n - 1)                    # NaN in a row -> NaN
    below = ranks.long()
    lo = srt.gather(-1, below)
    hi = srt.gather(-1, ranks.ceil().long())
    # contiguous: each (level, series) row is then written by orjson without a tolist() copy
    return lo.lerp_(hi, ranks - below).permute(2, 0, 1).contiguous()


RESOLUTION_DIGITS = 7                     # float32: 2**-23 = 1.2e-7 relative
_POW10 = {"cpu": torch.tensor([float(10 ** k) for k in range(23)], dtype=torch.float64)}   # exact; per device


def known_steps(states: list[SeriesState]) -> torch.Tensor | None:
    """(b, s): the s observations each state buffered since its last whole patch (all share s),
    which condition patch 0 of a forecast between boundaries; None at a boundary (s = 0)."""
    if not len(states[0].buffer):
        return None
    return torch.from_numpy(np.stack([s.buffer for s in states]))


def round_to_scale(x: torch.Tensor, std: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Forecast values on the decimal grid the float32 model resolves: x (float64, raw units),
    std (b,) the series' causal std along ``dim`` of x -> x rounded to a multiple of
    ``10**e``, ``e = floor(log10(std)) - 7``, per series.

    A value is ``mean + std * y`` with y the model's float32 output, resolved to ~1.2e-7 of
    |y|: the grid moves a value by at most half of 1e-7 std, below that resolution, and its
    shortest decimal then has ~9-10 significant digits instead of float64's 17 (a forecast
    record of 11 quantiles x 96 steps: 22 -> 13 KB). Rounded as k / 10**-e (or k * 10**e),
    which is the nearest float64 to that decimal. Left unchanged: NaN and inf, grids beyond
    1e+-22, and values of 2**52 grid steps or more (the grid cannot hold them exactly).
    Elementwise, so batched and single-series forecasts stay bit-identical. Runs on x's device.
    """
    e = torch.floor(torch.log10(std.to(torch.float64))) - RESOLUTION_DIGITS
    shape = [1] * x.dim()
    shape[dim] = -1
    e = e.reshape(shape)
    ok = e.abs() <= 22
    pow10 = _POW10.get(str(x.device))
    if pow10 is None:
        pow10 = _POW10[str(x.device)] = _POW10["cpu"].to(x.device)
    p = pow10[torch.where(ok, e.abs(), 0).long()]
    fine = e < 0                                   # step 10**e < 1: scale up by p = 10**-e
    scaled = torch.where(fine, x * p, x / p)
    k = torch.round(scaled)
    y = torch.where(fine, k / p, k * p)
    keep = ok & (scaled.abs() < 2.0 ** 52)       # False for NaN and inf as well
    return torch.where(keep, y, x)


def _noise(keys: torch.Tensor, shape, dtype) -> torch.Tensor:
    """(n, *shape) standard normal noise on keys' device, series i's from keys[i] alone (model/noise.py)."""
    return standard_normal(keys, shape, dtype, keys.device)


def _sampling_noise(keys: torch.Tensor, num_samples: int, shape, dtype, antithetic: bool) -> torch.Tensor:
    """(n, num_samples, *shape) noise of a forecast's paths; antithetic: paths ceil(S/2).. are the
    negated noise of paths 0.., drawn as a (ceil(S/2), *shape) block (still series i's alone)."""
    if not antithetic:
        return _noise(keys, (num_samples, *shape), dtype)
    half = _noise(keys, (-(-num_samples // 2), *shape), dtype)
    return torch.cat([half, -half[:, :num_samples // 2]], 1)


def _model_id(model: Flame) -> str:
    h = hashlib.sha256(model.cfg.identity_json().encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "sf-" + h.hexdigest()[:16]
