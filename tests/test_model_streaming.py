"""Streaming equals batch: the recurrent update and the parallel rebuild give the same forecasts."""
import numpy as np
import pytest
import torch

from streamflame import Forecaster, SeriesState
from streamflame.model import tiny_config

P = 48


def random_series(rng, n):
    t = np.arange(n)
    period = rng.integers(5, 60)
    x = rng.normal(0, 3) + np.sin(2 * np.pi * t / period) * rng.uniform(0.5, 5) + rng.normal(0, 0.3, n)
    x += np.cumsum(rng.normal(0, 0.05, n)) * rng.integers(0, 2)
    for _ in range(rng.integers(0, 4)):                        # NaN runs
        a = rng.integers(0, n)
        x[a:a + rng.integers(1, 70)] = np.nan
    return x * 10 ** rng.uniform(-2, 3)


def random_config(rng):
    return tiny_config(
        d_model=int(rng.choice([16, 32])), n_layers=int(rng.integers(1, 3)), headdim=8,
        d_inner=int(rng.choice([16, 32])), d_state=int(rng.integers(2, 6)), d_conv=int(rng.integers(1, 4)),
        window=int(rng.choice([96, 160, 200])), chunk_len=int(rng.choice([3, 4, 8])),
        norm_memory=float(rng.choice([0.0, 4.0, 32.0])), flow_layers=int(rng.integers(1, 4)),
        max_horizon=int(rng.choice([50, 96, 130])), dt_min=0.05, dt_max=0.9)  # large dt: the SSD matters


def feed_in_chunks(f, values, rng, state=None, boundaries=None):
    """Stream `values` through update() in random chunk sizes; record the state at each boundary."""
    state = state or f.init_state()
    i = 0
    while i < len(values):
        k = int(rng.integers(1, 3 * P))
        before = state.n_patches
        state = f.update(state, values[i:i + k])
        i += k
        if boundaries is not None and state.n_patches > before and len(state.buffer) == 0:
            boundaries[state.n_patches] = state
    return state


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
@pytest.mark.parametrize("case", range(4))
def test_update_equals_state_from_history_at_every_boundary(dtype, tol, case):
    rng = np.random.default_rng(100 + case)
    f = Forecaster.from_config(random_config(rng), seed=case).to(dtype=dtype)
    n = int(rng.integers(6, 14)) * P + int(rng.integers(1, P))        # not a multiple of 48
    x = random_series(rng, n)
    H = int(rng.integers(1, f.config.max_horizon + 1))
    # stream one patch at a time so that every boundary is visited
    state = f.init_state()
    for k in range(n // P):
        state = f.update(state, x[k * P:(k + 1) * P])
        ref = f.state_from_history(x[:(k + 1) * P])
        a = f.forecast(state, H, seed=k, num_samples=16)
        b = f.forecast(ref, H, seed=k, num_samples=16)
        assert rel_err(a.samples, b.samples) < tol, f"boundary {k + 1}"
        assert rel_err(a.quantiles, b.quantiles) < tol
    # random chunk sizes, ending inside a patch: forecasts start after the buffered values
    chunked = feed_in_chunks(f, x, rng)
    full = f.state_from_history(x)
    assert chunked.n_obs == full.n_obs == n and len(full.buffer) == n % P
    assert rel_err(f.forecast(chunked, H, seed=7).samples, f.forecast(full, H, seed=7).samples) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_split_roundtrip_and_continue(dtype, tol):
    rng = np.random.default_rng(7)
    for case in range(3):
        f = Forecaster.from_config(random_config(rng), seed=case).to(dtype=dtype)
        x = random_series(rng, int(rng.integers(8, 16)) * P + int(rng.integers(0, P)))
        cuts = np.sort(rng.choice(np.arange(1, len(x)), size=3, replace=False))
        state = f.init_state()
        for a, b in zip([0, *cuts], [*cuts, len(x)]):
            state = f.update(state, x[a:b])
            blob = state.to_bytes()
            state = SeriesState.from_bytes(blob)
            assert state.to_bytes() == blob
        full = f.state_from_history(x)
        H = int(rng.integers(1, f.config.max_horizon + 1))
        assert rel_err(f.forecast(state, H, seed=1).samples, f.forecast(full, H, seed=1).samples) < tol


@pytest.mark.parametrize("ar,inner,carry", [(False, False, False), (True, False, False), (True, True, False),
                                            (True, True, True)])
def test_batched_calls_equal_single_calls_bit_for_bit(ar, inner, carry):
    rng = np.random.default_rng(3)
    f = Forecaster.from_config(tiny_config(ar_patches=ar, inner_ar=inner, carry_ar=carry), seed=1)
    if ar:                                                       # a trained-looking gamma, not zero
        with torch.no_grad():
            f.model.flow.prev.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
            f.model.flow.prev.bias.fill_(0.5)
    if inner:                                                    # and a trained-looking inner AR(1)
        with torch.no_grad():
            f.model.flow.inner.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
            f.model.flow.inner.bias.fill_(1.0)
    states = [f.state_from_history(random_series(rng, P * int(rng.integers(2, 6)))) for _ in range(21)]
    patches = np.stack([random_series(rng, P) for _ in range(21)])
    many = f.update_many(states, patches)
    for s, p_, m in zip(states, patches, many):
        assert f.update_many([s], p_[None])[0].to_bytes() == m.to_bytes()
        assert f.update(s, p_).to_bytes() == m.to_bytes()          # one-patch update == batched step
    seeds = list(range(21))
    S = 30 if ar else 32                                         # ar: 30 rows per pass, not a multiple of 16
    fm = f.forecast_many(many, 60, num_samples=S, seeds=seeds)
    for s, seed, fc in zip(many, seeds, fm):
        assert np.array_equal(f.forecast_many([s], 60, num_samples=S, seeds=[seed])[0].samples, fc.samples)
        one = f.forecast(s, 60, num_samples=S, seed=seed)
        assert np.array_equal(one.samples, fc.samples) and np.array_equal(one.quantiles, fc.quantiles)
    # a sub-batch in another order gives the same bytes again (batch-composition invariance)
    order = rng.permutation(21)[:9]
    again = f.update_many([states[i] for i in order], patches[order])
    assert all(a.to_bytes() == many[i].to_bytes() for a, i in zip(again, order))


def test_forecast_many_in_cpu_chunks_equals_one_pass(monkeypatch):
    """forecast_many samples at most CPU_FORECAST_CHUNK series per pass on CPU (cache-sized);
    the chunks, partial buffers of several lengths mixed in, give the one-pass numbers."""
    import streamflame.model.forecaster as fm

    rng = np.random.default_rng(4)
    f = Forecaster.from_config(tiny_config(), seed=2)
    states = [f.state_from_history(random_series(rng, int(rng.integers(P, 4 * P)))) for _ in range(45)]
    seeds = list(range(45))
    whole = f.forecast_many(states, 70, num_samples=16, seeds=seeds)
    monkeypatch.setattr(fm, "CPU_FORECAST_CHUNK", 16)
    chunked = f.forecast_many(states, 70, num_samples=16, seeds=seeds)
    assert len({len(s.buffer) for s in states}) > 3
    for a, b in zip(whole, chunked):
        assert np.array_equal(a.samples, b.samples) and np.array_equal(a.quantiles, b.quantiles)


@pytest.mark.parametrize("num_samples,horizon", [(100, 96), (7, 30), (25, 130), (1, 48)])
def test_shipped_model_forecasts_are_bit_identical_in_any_batch(num_samples, horizon):
    """The shipped checkpoint, sample counts whose sample rows are not a multiple of 16 per
    series (the flow head then runs on a few extra padding rows, not on 16 series): every
    series' forecast is the same bytes alone, in batches of 3, 5, 16 and 21, and in another
    order (forecasts are reproducible whatever batch a worker puts a series in)."""
    rng = np.random.default_rng(num_samples)
    f = Forecaster.load()
    states = [f.state_from_history(random_series(rng, P * int(rng.integers(1, 5)) + int(rng.integers(0, 3)) * 7))
              for _ in range(21)]
    seeds = [int(x) for x in rng.integers(0, 2**62, 21)]
    alone = [f.forecast(s, horizon, num_samples=num_samples, seed=k) for s, k in zip(states, seeds)]
    for size in (3, 5, 16, 21):
        order = rng.permutation(21)[:size]
        got = f.forecast_many([states[i] for i in order], horizon, num_samples=num_samples,
                              seeds=[seeds[i] for i in order])
        for i, fc in zip(order, got):
            assert np.array_equal(fc.samples, alone[i].samples), (size, i)
            assert np.array_equal(fc.quantiles, alone[i].quantiles) and np.array_equal(fc.mean, alone[i].mean)


def test_shipped_model_updates_are_bit_identical_in_any_batch_with_several_threads():
    """The worker runs the model on cores - 1 threads: with 8 BLAS threads, a series' new state is
    the same bytes whether it is updated alone or in a batch where other series share its LegT
    window length (theta) — a threaded BLAS sums a lone (1, W) @ (W, n) product in another order."""
    rng = np.random.default_rng(0)
    f = Forecaster.load()
    states = []
    for _ in range(12):
        period = int(rng.choice([24, 48, 96, 144, 288, 60, 168]))
        t = np.arange(P * int(rng.integers(22, 40)))
        states.append(f.state_from_history(np.sin(2 * np.pi * t / period) + 0.3 * rng.standard_normal(len(t))
                                           + rng.normal()))
    patches = [np.sin(np.arange(P) / 7.0) + 0.1 * k for k in range(12)]
    before = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        alone = [bytes(f.update(s, x).to_bytes()) for s, x in zip(states, patches)]
        for size in (2, 5, 12):
            order = rng.permutation(12)[:size]
            got = f.update_many([states[i] for i in order], [patches[i] for i in order])
            assert [bytes(g.to_bytes()) for g in got] == [alone[i] for i in order], size
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("ar,inner,carry", [(False, False, False), (True, False, False), (True, True, False),
                                            (False, True, False), (True, True, True)])
def test_a_forecast_inside_a_patch_continues_from_its_observed_start(ar, inner, carry):
    """Between patch boundaries the forecast conditions on the observations already in the
    partial patch: the flow is triangular, so feeding the first s steps of one of its own sample
    paths (same seed) gives back that path's remaining steps, and only that path's (the other paths
    start from someone else's beginning and move). With ar_patches the later patches follow too."""
    rng = np.random.default_rng(11 + ar)
    f = Forecaster.from_config(tiny_config(ar_patches=ar, inner_ar=inner, carry_ar=carry, flow_layers=3), seed=3)
    with torch.no_grad():                      # trained-like weights: the couplings and gamma non-zero
        for w in f.model.flow.parameters():
            w.add_(0.15 * torch.randn(w.shape, generator=torch.Generator().manual_seed(w.numel())))
        if inner:                              # a moderate inner AR(1), the same for every patch
            f.model.flow.inner.weight.zero_(), f.model.flow.inner.bias.fill_(0.8)
    t = np.arange(6 * P)
    x = 20 + 5 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.5, len(t))
    state = f.state_from_history(x)
    H = P + 40
    paths = f.forecast(state, H, num_samples=16, seed=9).samples               # (16, H) from the boundary
    # a path to feed back: one the normalisation does not clip (these random weights draw some that
    # leave +-clip; fed back, such a path is clipped and is no longer the path that was drawn)
    from streamflame.model.perception import mean_std
    mean, std = (float(v[0]) for v in mean_std(*(f._stack([state])[k] for k in ("stats", "ref"))))
    j = int(np.flatnonzero(np.abs((paths - mean) / std).max(1) < f.config.clip)[0])
    for s in (1, 17, P - 1):
        later = f.forecast(f.update(state, paths[j, :s]), H - s, num_samples=16, seed=9).samples
        scale = np.abs(paths[j]).max()
        assert np.abs(later[j] - paths[j, s:]).max() < 1e-4 * scale, s
        moved = np.abs(later - paths[:, s:]).max(1)
        assert (np.delete(moved, j) > 1e-3 * scale).all()
        cond = f.forecast(f.update(state, np.where(np.arange(s) % 3 == 1, np.nan, paths[j, :s])), H - s,
                          num_samples=16, seed=9)                              # missing steps: the hint
        assert np.isfinite(cond.samples).all() and np.isfinite(cond.quantiles).all()


def test_a_partial_patch_moves_the_forecast_toward_what_it_observed():
    """The shipped checkpoint, a forecast made 24 steps into a patch: with those steps 3 std above
    the path the model expects, the rest of the patch's median follows them up; the forecasts
    from the boundary did not know them."""
    f = Forecaster.load()
    t = np.arange(30 * P)
    x = 10 + 3 * np.sin(2 * np.pi * t / 24) + np.random.default_rng(2).normal(0, 0.3, len(t))
    state = f.state_from_history(x)
    base = f.forecast(state, P, num_samples=100, seed=1)
    median = base.quantile(0.5)
    up = f.forecast(f.update(state, median[:24] + 9.0), P - 24, num_samples=100, seed=1)
    lift = up.quantile(0.5)[:8] - median[24:32]
    assert (lift > 1.0).all(), lift
