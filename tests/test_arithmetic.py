"""The device-side forecast path and the cheaper-arithmetic options (model/arithmetic.py):
the torch.sort quantiles (the CUDA path) equal torch.quantile, the published numbers need no
samples copied back, and each option's error against float32 stays within what docs/model.md
states."""
import numpy as np
import pytest
import torch

from streamflame.model import Forecaster
from streamflame.model.config import tiny_config
from streamflame.model.forecaster import sample_quantiles

P = 48


def _states(f, rng, n, lo=1, hi=5):
    t = np.arange(hi * P + P)
    out = []
    for _ in range(n):
        x = 20 + 5 * np.sin(2 * np.pi * t / 24 + rng.uniform(0, 6)) + rng.normal(0, 1, len(t))
        out.append(f.state_from_history(x[: P * int(rng.integers(lo, hi)) + int(rng.integers(0, 3)) * 7]))
    return out


@pytest.mark.parametrize("shape", [(16, 100, 96), (3, 7, 5), (1, 1, 4), (5, 1000, 3)])
def test_torch_sort_quantiles_equal_torch_quantile(shape):
    """The device path of sample_quantiles (torch.sort instead of numpy's), run on CPU."""
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * 10 ** rng.uniform(-5, 5, size=(shape[0], 1, 1))
    if shape[1] > 3:
        x[:, 1] = x[:, 2]                                         # ties
    x[0, 0, 0] = np.nan
    xt = torch.from_numpy(x)
    for lv in [(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), (0.5,), tuple(rng.uniform(0.001, 0.999, 5))]:
        q = torch.tensor(lv, dtype=torch.float64)
        got, ref = sample_quantiles(xt, q, numpy_sort=False), torch.quantile(xt, q, dim=1)
        assert torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.nan_to_num(), ref.nan_to_num())
        assert torch.equal(got.nan_to_num(), sample_quantiles(xt, q, numpy_sort=True).nan_to_num())


def test_published_numbers_need_no_samples_copied_back():
    rng = np.random.default_rng(1)
    f = Forecaster.from_config(tiny_config(), seed=0)
    states = _states(f, rng, 9)
    full = f.forecast_many(states, 60, num_samples=20, seeds=list(range(9)))
    lean = f.forecast_many(states, 60, num_samples=20, seeds=list(range(9)), samples=False)
    for a, b in zip(full, lean):
        assert b.samples is None and a.samples.shape == (20, 60)
        assert np.array_equal(a.mean, b.mean) and np.array_equal(a.quantiles, b.quantiles)


def test_settings_are_checked():
    f = Forecaster.from_config(tiny_config(), seed=0)
    with pytest.raises(ValueError, match="matmul must be one of"):
        f.set_arithmetic("fp8")
    with pytest.raises(TypeError, match="compile must be True or False"):
        f.set_arithmetic("float32", compile="yes")
    s = _states(f, np.random.default_rng(0), 1)[0]
    f.set_arithmetic("tf32")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        f.forecast(s, 10, seed=0)


def _spread_errors(got, ref):
    """|got - ref| over the reference's 10-90 % interval width, for the quantiles and the mean."""
    lv = ref[0].quantile_levels
    i10, i90 = lv.index(0.1), lv.index(0.9)
    eq, em = [], []
    for a, b in zip(got, ref):
        w = np.maximum(b.quantiles[i90] - b.quantiles[i10], 1e-12)
        eq.append((np.abs(a.quantiles - b.quantiles) / w).ravel())
        em.append(np.abs(a.mean - b.mean) / w)
    return np.concatenate(eq), np.concatenate(em)


def test_bf16_sampling_error_against_float32_on_the_shipped_model():
    """docs/model.md: on the validation series (2026-12-06) |bf16 - float32| was a median 0.2 %
    and a 99th percentile 4 % of the 10-90 % interval width; here the same measure on synthetic
    daily series with the shipped checkpoint, bounds 1 % and 10 %. bf16 on CPU still gives a
    series the same bits in any batch (the padding to 16 rows holds for bf16 GEMMs too)."""
    rng = np.random.default_rng(2)
    f = Forecaster.load()
    states = _states(f, rng, 21, lo=4, hi=20)
    seeds = list(range(21))
    ref = f.forecast_many(states, 96, num_samples=100, seeds=seeds)
    f.set_arithmetic("bf16")
    got = f.forecast_many(states, 96, num_samples=100, seeds=seeds)
    eq, em = _spread_errors(got, ref)
    assert np.median(eq) < 0.01 and np.quantile(eq, 0.99) < 0.10 and np.median(em) < 0.01
    assert not all(np.array_equal(a.quantiles, b.quantiles) for a, b in zip(got, ref))    # it is not float32
    part = f.forecast_many(states[4:11], 96, num_samples=100, seeds=seeds[4:11])
    assert all(np.array_equal(a.quantiles, b.quantiles) and np.array_equal(a.samples, b.samples)
               for a, b in zip(part, got[4:11]))
    assert np.array_equal(f.forecast(states[7], 96, seed=7).quantiles, got[7].quantiles)


def test_compiled_sampling_matches_eager_and_any_batch():
    """compile=True (torch.compile of the sampling pass at bucketed batch sizes; CUDA graphs on
    CUDA) on CPU with the tiny model: within 1e-5 of the interval width of eager float32 (it was
    equal in the 2026-12-06 run), and a series' numbers do not depend on its batch."""
    rng = np.random.default_rng(3)
    f = Forecaster.from_config(tiny_config(), seed=0)
    states = _states(f, rng, 10)
    ref = f.forecast_many(states, 30, num_samples=16, seeds=list(range(10)))
    f.set_arithmetic("float32", compile=True)
    got = f.forecast_many(states, 30, num_samples=16, seeds=list(range(10)))
    eq, em = _spread_errors(got, ref)
    assert eq.max() < 1e-5 and em.max() < 1e-5
    part = f.forecast_many(states[2:9], 30, num_samples=16, seeds=list(range(2, 9)))
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(part, got[2:9]))
