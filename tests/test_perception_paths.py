"""The faster perception arithmetic against the formulas it replaced (kept here as references):
the observed-pair counts in closed form, |X|^2 as re^2 + im^2, and the LegT projection without
a gathered copy of the basis. Same periods and same environment bits on training batches."""
import numpy as np
import torch

from streamflame.model.config import ModelConfig
from streamflame.model.flame import normalised_windows, sequence_features
from streamflame.model.hippo import legendre, legt_coefficients
from streamflame.model.perception import autocorrelation, dominant_period, env_features
from streamflame.train.loop import SequenceSampler, TrainConfig


def reference_autocorrelation(window: torch.Tensor) -> torch.Tensor:
    """autocorrelation as it was: abs()^2 of the spectrum, the mask FFT for every window with a gap."""
    x = window.double()
    m = ~torch.isnan(x)
    mf = m.double()
    cnt = mf.sum(-1, keepdim=True).clamp_min(1)
    x = torch.where(m, x - torch.where(m, x, 0).sum(-1, keepdim=True) / cnt, 0)
    t = torch.arange(x.shape[-1], dtype=x.dtype)
    t = torch.where(m, t - (t * mf).sum(-1, keepdim=True) / cnt, 0)
    x = torch.where(m, x - t * (t * x).sum(-1, keepdim=True) / (t * t).sum(-1, keepdim=True).clamp_min(1e-12), 0)
    n = x.shape[-1]
    corr = lambda a: torch.fft.irfft(torch.fft.rfft(a, n=2 * n).abs().pow(2), n=2 * n)[..., :n]
    pairs = corr(mf).round()
    acf = corr(x) / pairs.clamp_min(1)
    return torch.where(pairs >= n // 4, acf, 0) / acf[..., :1].clamp_min(1e-300)


def reference_legt(window, valid, theta, n):
    W = window.shape[-1]
    i = torch.arange(W, dtype=window.dtype)
    th = theta.to(window.dtype).unsqueeze(-1)
    inside = (i >= (W - th)) & valid
    u = -1 + (2 * (i - (W - th)) + 1) / th
    P = legendre(n, u.clamp(-1, 1))
    w = inside.to(window.dtype)
    k = torch.arange(n, dtype=window.dtype)
    return (2 * k + 1) * torch.einsum("...w,...wn->...n", window * w, P) / w.sum(-1, keepdim=True).clamp_min(1)


def _windows(seed: int, rows: int = 64, W: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(W, dtype=torch.float64)
    x = torch.sin(2 * torch.pi * t / torch.randint(4, 90, (rows, 1), generator=g)) + \
        0.3 * torch.randn(rows, W, generator=g, dtype=torch.float64)
    start = torch.randint(0, W, (rows, 1), generator=g)               # missing starts (young series)
    start[: rows // 4] = 0
    x = torch.where(t < start, float("nan"), x)
    holes = torch.rand(rows, W, generator=g) < 0.05                  # gaps inside in a quarter of rows
    x = torch.where(holes & (torch.arange(rows)[:, None] % 4 == 1), float("nan"), x)
    x[-1] = float("nan")                                             # nothing observed
    return x.float()


def test_autocorrelation_matches_the_old_formula_to_rounding():
    for seed in range(4):
        w = _windows(seed)
        new, old = autocorrelation(w), reference_autocorrelation(w)
        assert torch.equal(new == 0, old == 0)                     # the same lags counted (pairs exact)
        assert (new - old).abs().max() < 1e-12
        old_period = _with_reference_acf(lambda: dominant_period(w, 4))
        assert torch.equal(dominant_period(w, 4), old_period) and (old_period > 0).sum() > 10


def _with_reference_acf(fn):
    import streamflame.model.perception as perception

    fast = perception.autocorrelation
    try:
        perception.autocorrelation = reference_autocorrelation
        return fn()
    finally:
        perception.autocorrelation = fast


def test_periods_and_environment_on_training_batches_are_the_old_ones():
    """Default model, sampled training batches with calendars: the periods from the new
    autocorrelation equal those of the old formula everywhere, and the environment is the same bits."""
    cfg = TrainConfig.from_yaml("configs/train/default.yaml")
    cfg.batch, cfg.seq_patches = 8, 32
    real = {"a": [np.where(np.arange(9000) % 900 < 30, np.nan, np.cos(np.arange(9000.0) / 7.7))]}
    s = SequenceSampler(cfg, 48, real_series=real, real_steps={"a": [600.0]})
    mcfg = ModelConfig.from_dict(cfg.model)
    for step in range(3):
        tb = s.batch_with_calendar(step).tensors()
        b, T, _ = tb.values.shape
        state = {"ref": torch.full((b,), float("nan"), dtype=torch.float64),
                 "stats": torch.zeros(b, 3, dtype=torch.float64),
                 "window": torch.full((b, mcfg.window), float("nan")), "cal": tb.calendar}
        _, _, mean, std, w = normalised_windows(mcfg, state, tb.values)
        new = sequence_features(mcfg, tb.values, tb.calendar)
        old_period = _with_reference_acf(
            lambda: dominant_period(w, mcfg.min_period, tb.calendar[:, None].expand(b, T, 2)))
        assert torch.equal(new.period, old_period) and (old_period > 0).any()
        assert torch.equal(new.env, env_features(w, old_period, mean, std, mcfg))


def test_legt_projection_is_the_gathered_basis_bit_for_bit():
    g = torch.Generator().manual_seed(3)
    for shape in ((5,), (40,), (4, 33)):
        W, n = 192, 12
        x = torch.randn(*shape, W, generator=g)
        valid = torch.rand(*shape, W, generator=g) > 0.1
        x = torch.where(valid, x, 0)
        theta = torch.randint(1, W + 1, shape, generator=g)
        theta.view(-1)[::3] = 48                                    # repeated periods share a basis
        assert torch.equal(legt_coefficients(x, valid, theta, n), reference_legt(x, valid, theta, n))
