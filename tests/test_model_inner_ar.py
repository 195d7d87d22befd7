"""inner_ar: the flow's base noise is a stationary AR(1) inside a patch (model/flow.py)."""
import math

import numpy as np
import pytest
import torch

from streamflame import Forecaster
from streamflame.model import tiny_config
from streamflame.model.flame import Flame, load_compatible


def _pair(**kw):
    """A model and the same weights with inner_ar switched on (zero-initialised a)."""
    torch.manual_seed(0)
    plain = Flame(tiny_config(**kw))
    inner = Flame(tiny_config(inner_ar=True, **kw))
    load_compatible(inner, plain, "test")
    return plain, inner


@pytest.mark.parametrize("ar", [False, True])
def test_inner_ar_starts_as_the_same_function(ar):
    """a = 0 at initialisation: the loss (masked steps included) and the samples equal the model
    without it, bit for bit; a model without it loads into one with it (an additive lever)."""
    plain, inner = _pair(ar_patches=ar)
    x = torch.randn(3, 7, 48, dtype=torch.float32).cumsum(-1)
    x[1, 3, 10:30] = float("nan")
    assert torch.equal(plain.loss(x, future=[0, 1, 2]), inner.loss(x, future=[0, 1, 2]))
    state, _ = plain.advance(plain.empty_state(3), x, torch.ones(3))
    noise = torch.randn(3, 5, 2, 48, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain.sample(state, 2, noise), inner.sample(state, 2, noise))
    known = x[:, -1, :17].clone()
    assert torch.equal(plain.sample(state, 2, noise, known=known), inner.sample(state, 2, noise, known=known))


def _set_a(model: Flame, a: float) -> None:
    with torch.no_grad():
        model.flow.inner.weight.zero_()
        model.flow.inner.bias.fill_(math.atanh(a / 0.999))


def test_the_base_density_is_the_stationary_ar1_gaussian():
    """log_prob with inner_ar is the exact density: the base term equals a multivariate normal with
    covariance a^|i-j| (unit variance at every step), and sampling then inverting gives back the
    white noise as the AR(1) innovations."""
    _, m = _pair(ar_patches=True)
    _set_a(m, 0.8)
    flow, p = m.flow, 48
    c = torch.randn(4, 2, m.cfg.d_cond, dtype=torch.float64)
    hint = torch.randn(4, 2, 2 * p, dtype=torch.float64)
    flow.double()
    y = torch.randn(4, 2, p, dtype=torch.float64)
    prev = torch.randn(4, 2, 1, dtype=torch.float64)
    eps, logdet = flow._inverse(y, c, hint, prev)
    lag = (torch.arange(p)[:, None] - torch.arange(p)[None, :]).abs().double()
    a = flow._ar_coef(c)[..., None]                                   # (4, 2, 1, 1)
    mvn = torch.distributions.MultivariateNormal(torch.zeros(p, dtype=torch.float64), a ** lag)
    want = mvn.log_prob(eps) - logdet.sum(-1)
    assert torch.allclose(flow.log_prob(y, c, hint, prev), want, atol=1e-8)
    # round trip: noise -> patch -> the inverse's innovations are the noise again
    z = torch.randn(4, 5, p, dtype=torch.float64)
    yk, _ = flow.sample_patch(c[:, :1].expand(4, 5, -1), hint[:, :1].expand(4, 5, -1), prev[:, :1].expand(4, 5, -1), z)
    e, _ = flow._inverse(yk, c[:, :1].expand(4, 5, -1), hint[:, :1].expand(4, 5, -1), prev[:, :1].expand(4, 5, -1))
    av = flow._ar_coef(c[:, :1])
    innov = (e[..., 1:] - av * e[..., :-1]) / torch.sqrt(1 - av * av)
    assert torch.allclose(e[..., 0], z[..., 0], atol=1e-9) and torch.allclose(innov, z[..., 1:], atol=1e-8)


def test_a_path_continued_inside_a_patch_is_the_exact_conditional_draw(monkeypatch):
    """With observed steps (known), every path starts with them and its later base noise continues
    the AR(1) from the *observed* step s-1: inverting the drawn patch, the innovations of steps >= s
    are the drawn white noise, so steps >= s are a draw from p(y_>=s | y_<s) exactly."""
    _, m = _pair(ar_patches=True)
    _set_a(m, 0.95)
    m.double()
    x = torch.randn(2, 6, 48, dtype=torch.float64).cumsum(-1)
    state, _ = m.advance(m.empty_state(2, dtype=torch.float64), x, torch.ones(2, dtype=torch.float64))
    seen, real = {}, m.flow.sample

    def spy(c, hint, z, bounds=None, known=None):
        seen.update(c=c, hint=hint)
        seen["y"] = real(c, hint, z, bounds, known)
        return seen["y"]
    monkeypatch.setattr(m.flow, "sample", spy)
    s = 17
    known = x[:, -1, :s] + 0.5
    z = torch.randn(2, 64, 1, 48, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    raw = m.sample(state, 1, z, known=known)                          # (2, 64, 48)
    assert torch.allclose(raw[..., :s], known[:, None].expand(-1, 64, -1), atol=1e-6)
    c, hint, y = seen["c"][:, :1].expand(2, 64, -1), seen["hint"][:, :1].expand(2, 64, -1), seen["y"][:, 0]
    e, _ = m.flow._inverse(y, c, hint, hint[..., 48:49])            # patch 0: prev = last
    a = m.flow._ar_coef(c)                                            # (2, 64, 1)
    innov = (e[..., s:] - a * e[..., s - 1:-1]) / torch.sqrt(1 - a * a)
    assert torch.allclose(innov, z[:, :, 0, s:], atol=1e-7)


def test_forecaster_with_inner_ar_keeps_batch_identity_and_saves():
    """The serving guarantees hold with the lever on: forecast_many equals one-at-a-time forecasts,
    a forecast inside a patch starts from its observed steps, and the checkpoint round-trips."""
    import tempfile
    base = Forecaster.from_config(tiny_config(ar_patches=True, inner_ar=True), seed=2)
    with torch.no_grad():
        base.model.flow.inner.bias.fill_(1.5)
    with tempfile.TemporaryDirectory() as d:
        base.save(d)
        f = Forecaster.load(d)                                        # its model_id hashes the new weights
    assert f.config.inner_ar and f.model_id != base.model_id
    rng = np.random.default_rng(0)
    states = [f.state_from_history(np.cumsum(rng.normal(size=n))) for n in (240, 480, 96)]
    many = f.forecast_many(states, 60, seeds=[1, 2, 3])
    for k, st in enumerate(states):
        one = f.forecast(st, 60, seed=k + 1)
        assert np.array_equal(one.samples, many[k].samples)
    partial = f.update(states[0], np.array([5.0, 5.5, 6.0]))
    fc = f.forecast(partial, 20, num_samples=8, seed=0)
    assert fc.samples.shape == (8, 20) and np.isfinite(fc.samples).all()


def test_adding_a_lever_keeps_the_shipped_checkpoints_model_id():
    """The model id hashes the config and the weights. A lever added later (LATE_FIELDS) stays out of
    the hash while off, so the shipped checkpoint keeps the id its config.json records, and its
    series' stored states stay valid; switched on, it is another model."""
    import json
    from dataclasses import replace
    from pathlib import Path

    from streamflame.model.config import LATE_FIELDS
    from streamflame.model.forecaster import _model_id

    f = Forecaster.load()
    meta = json.loads((Path(__file__).parents[1] / "streamflame/checkpoints/default/config.json").read_text())
    assert f.model_id == meta["model_id"]
    assert {"inner_ar", "carry_ar"} <= set(LATE_FIELDS) and f.config.inner_ar is False
    on = Flame(replace(f.config, inner_ar=True))
    load_compatible(on, f.model, "test")
    assert _model_id(on) != f.model_id


def _carry_model(a: float) -> Flame:
    """inner_ar + carry_ar with a constant a for every patch, in float64, trained-looking couplings."""
    _, m = _pair(ar_patches=True)
    on = Flame(tiny_config(ar_patches=True, inner_ar=True, carry_ar=True))
    load_compatible(on, m, "test")
    with torch.no_grad():
        for w in on.flow.layers.parameters():
            w.add_(0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(w.numel())))
        on.flow.prev.bias.fill_(0.3)
    _set_a(on, a)
    return on.double()


def test_carry_ar_runs_the_ar1_across_the_patch_boundary():
    """carry_ar: two consecutive patches' base noise is one stationary AR(1) over 2p steps. The
    density of patch 1 given the carried end of patch 0 times that of patch 0 equals the multivariate
    normal with covariance a^|i-j| over both patches (the couplings' log-determinants apart); a NaN
    carry is a fresh start; and sampling two patches, then inverting them, gives back the white
    noise as the innovations across the boundary too."""
    m = _carry_model(0.8)
    flow, p = m.flow, 48
    g = torch.Generator().manual_seed(5)
    c = torch.randn(4, 2, m.cfg.d_cond, generator=g, dtype=torch.float64)
    hint = torch.randn(4, 2, 2 * p, generator=g, dtype=torch.float64)
    hint[:, 1, p:] = hint[:, 0, p:]                                       # the last value: one per series
    y = torch.randn(4, 2, p, generator=g, dtype=torch.float64)
    prev = torch.randn(4, 2, 1, generator=g, dtype=torch.float64)
    e0, ld0 = flow._inverse(y[:, 0], c[:, 0], hint[:, 0], prev[:, 0])
    e1, ld1 = flow._inverse(y[:, 1], c[:, 1], hint[:, 1], prev[:, 1])
    carry = flow.carried(y[:, 0], c[:, 0], hint[:, 0], prev[:, 0])
    assert torch.equal(carry, e0[..., -1:]) and carry.abs().max() < 5   # the bound does not bind here
    lag = (torch.arange(2 * p)[:, None] - torch.arange(2 * p)[None, :]).abs().double()
    mvn = torch.distributions.MultivariateNormal(torch.zeros(2 * p, dtype=torch.float64), 0.8 ** lag)
    want = mvn.log_prob(torch.cat([e0, e1], -1)) - ld0.sum(-1) - ld1.sum(-1)
    got = flow.log_prob(y[:, 0], c[:, 0], hint[:, 0], prev[:, 0]) + flow.log_prob(
        y[:, 1], c[:, 1], hint[:, 1], prev[:, 1], carry=carry)
    assert torch.allclose(got, want, atol=1e-8)
    fresh = torch.full_like(carry, float("nan"))
    assert torch.equal(flow.log_prob(y[:, 1], c[:, 1], hint[:, 1], prev[:, 1], carry=fresh),
                       flow.log_prob(y[:, 1], c[:, 1], hint[:, 1], prev[:, 1]))
    # sampling: patch 1 continues the AR from where the same path's patch 0 ended in the base
    z = torch.randn(4, 2, 6, p, generator=g, dtype=torch.float64)
    ys = flow.sample(c, hint, z)                                          # (4, 2, 6, p)
    e = []
    for j in range(2):
        pj = hint[:, 0, p:p + 1, None].expand(4, 6, 1) if j == 0 else flow.bound(ys[:, 0, :, -1:])
        e.append(flow._inverse(ys[:, j], c[:, j, None].expand(4, 6, -1), hint[:, j, None].expand(4, 6, -1), pj)[0])
    e = torch.cat(e, -1)                                                  # (4, 6, 2p)
    innov = (e[..., 1:] - 0.8 * e[..., :-1]) / math.sqrt(1 - 0.64)
    assert torch.allclose(e[..., 0], z[:, 0, :, 0], atol=1e-8)
    assert torch.allclose(innov, torch.cat([z[:, 0, :, 1:], z[:, 1]], -1), atol=1e-7)


def test_carry_ar_in_the_loss_starts_as_inner_ar_and_feeds_the_observed_predecessor():
    """Flame.loss with carry_ar: at a = 0 it is the loss without it (bit for bit, scheduled sampling
    too); with a != 0 patch 0's term is unchanged (it starts fresh) and later patches' terms move
    (they continue the observed predecessor's end), gradients finite; a config without inner_ar
    and ar_patches is refused."""
    x = torch.randn(3, 7, 48, dtype=torch.float64).cumsum(-1)
    x[1, 3, 10:30] = float("nan")
    m = _carry_model(0.8)
    plain = Flame(tiny_config(ar_patches=True, inner_ar=True)).double()
    plain.load_state_dict(m.state_dict())                             # carry_ar adds no parameters
    gen = lambda: torch.Generator().manual_seed(4)
    assert torch.equal(m.loss(x, future=[0]), plain.loss(x, future=[0]))
    assert not torch.allclose(m.loss(x, future=[1, 2]), plain.loss(x, future=[1, 2]))
    loss = m.loss(x, future=[0, 1, 2], sampled_prev=0.5, generator=gen())
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(w.grad).all() for w in m.parameters() if w.grad is not None)
    assert m.flow.inner.bias.grad.abs() > 0
    _set_a(m, 0.0), _set_a(plain, 0.0)
    for q in (0.0, 0.5):
        assert torch.equal(m.loss(x, future=[0, 1, 2], sampled_prev=q, generator=gen()),
                           plain.loss(x, future=[0, 1, 2], sampled_prev=q, generator=gen()))
    with pytest.raises(ValueError, match="carry_ar needs"):
        tiny_config(inner_ar=True, carry_ar=True)
