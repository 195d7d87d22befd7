"""The seam penalty (Flame._seam, ``seam_weight`` in training): zero-noise paths chained across a patch
boundary, their bend there beyond their bend inside patches."""
import pytest
import torch

from streamflame.model import tiny_config
from streamflame.model.flame import Flame


def _model() -> Flame:
    """A tiny ar_patches model with every weight drawn (its flow is not the identity at zero noise)."""
    torch.manual_seed(3)
    m = Flame(tiny_config(ar_patches=True)).double()
    with torch.no_grad():
        for w in m.flow.parameters():
            w.add_(0.05 * torch.randn_like(w))
    return m


def test_the_seam_term_is_the_chained_zero_noise_paths_bend_beyond_their_own():
    """_seam against the definition written out (its gradient reaches the later patch's condition,
    not the predecessor's): the predecessor drawn at zero noise from its teacher-forced start, the
    later patch from the predecessor's end, second differences at the boundary's two sides less the
    larger of the mean |second difference| inside and the observations' own there (missing: none),
    Huber-penalised where positive."""
    m = _model()
    g = torch.Generator().manual_seed(0)
    c_pred, c = (torch.randn(4, 2, m.cfg.d_cond, generator=g, dtype=torch.float64) for _ in range(2))
    hint_pred, hint = (torch.randn(4, 2, 96, generator=g, dtype=torch.float64) for _ in range(2))
    prev = torch.randn(4, 2, 1, generator=g, dtype=torch.float64)
    bounds = torch.tensor([[-3.0, 3.0]], dtype=torch.float64).expand(4, 1, 2)
    c_pred.requires_grad_(), c.requires_grad_()
    seen = 2 * torch.randn(4, 2, 96, generator=g, dtype=torch.float64)
    seen[0, 0, 47] = float("nan")                                      # a missing step: no allowance there
    got = m._seam(c_pred, hint_pred, prev, c, hint, bounds, seen)
    got.backward()
    assert c_pred.grad is None and c.grad.abs().sum() > 0           # the later patch closes the seam

    zero = torch.zeros(4, 2, 48, dtype=torch.float64)
    a, _ = m.flow.sample_patch(c_pred, hint_pred, prev, zero)
    b, _ = m.flow.sample_patch(c.detach(), hint, a[..., -1:].clamp(-3, 3), zero)
    curve = torch.cat([a, b], -1)                                      # (4, 2, 96): the chained path
    second = curve[..., 2:] - 2 * curve[..., 1:-1] + curve[..., :-2]  # entry i bends at step i + 1
    at = second[..., 46:48]                                            # at steps 47 and 48: the seam
    inside = torch.cat([second[..., :46], second[..., 48:]], -1).abs().mean(-1, keepdim=True)
    observed = (seen[..., 2:] - 2 * seen[..., 1:-1] + seen[..., :-2])[..., 46:48].abs()
    huber = lambda e: torch.where(e < 1, 0.5 * e ** 2, e - 0.5).mean()
    for allowance, value in ((inside.maximum(observed.nan_to_num(0.0)), got), (inside, m._seam(
            c_pred, hint_pred, prev, c.detach(), hint, bounds))):
        want = huber((at.abs() - allowance).clamp_min(0))
        assert value.item() == pytest.approx(want.item(), rel=1e-6) and want > 0
    assert got < m._seam(c_pred, hint_pred, prev, c.detach(), hint, bounds)   # the data's bends allow more


def test_a_chain_that_continues_its_predecessor_costs_nothing_and_a_jump_costs_its_size():
    """The penalty itself on hand-made curves (FlowHead.sample_patch replaced on this instance): a
    line continued across the boundary costs 0; the same with the later patch lifted by h costs the
    Huber of h - (its mean inside bend, 0 for a line) at each of the two boundary bends, less where
    the observations themselves step there (by s: Huber of h - s), nothing where they step by h."""
    m = _model()
    t = torch.arange(96, dtype=torch.float64)
    line = 0.3 * t
    for lift, data_step, want in ((0.0, None, 0.0), (0.5, None, 0.125), (3.0, None, 2.5),
                                  (3.0, 0.0, 2.5), (3.0, 1.0, 1.5), (3.0, 3.0, 0.0), (0.5, 3.0, 0.0)):
        curve = line + lift * (t >= 48)
        halves = iter([curve[:48], curve[48:]])                        # the predecessor, then the patch
        m.flow.sample_patch = lambda c, hint, prev, z, carry=None: (next(halves).expand(*c.shape[:-1], 48), None)
        x = torch.zeros(3, 1, 8, dtype=torch.float64)
        seen = None if data_step is None else (line + data_step * (t >= 48)).expand(3, 1, 96)
        got = m._seam(x, x, x[..., :1], x, x, torch.tensor([[-1e9, 1e9]], dtype=torch.float64).expand(3, 1, 2), seen)
        assert got.item() == pytest.approx(want, abs=1e-12), (lift, data_step)


def test_the_loss_adds_the_weighted_seam_to_the_nll_and_trains_it():
    """Flame.loss(seam_weight=w) = the NLL (its value without the term, up to rounding) + w * seam, both reported in
    ``parts``; patch 0 alone has no boundary to score; a few gradient steps on the term lower it."""
    m = _model()
    x = torch.randn(3, 7, 48, dtype=torch.float64).cumsum(-1)
    x[1, 3, 10:30] = float("nan")
    parts: dict = {}
    total = m.loss(x, future=[0, 2, 4], seam_weight=2.0, parts=parts)
    # (the predecessors' conditions are computed beside the scored ones': the same up to rounding)
    assert parts["nll"].item() == pytest.approx(m.loss(x, future=[0, 2, 4]).item(), rel=1e-12)
    assert total.item() == pytest.approx((parts["nll"] + 2.0 * parts["seam"]).item(), rel=1e-12)
    assert parts["seam"] > 0
    only0: dict = {}
    assert torch.equal(m.loss(x, future=[0], seam_weight=2.0, parts=only0), m.loss(x, future=[0]))
    assert "seam" not in only0
    opt = torch.optim.Adam(m.flow.parameters(), lr=1e-3)
    seams = []
    for _ in range(30):
        parts = {}
        loss = m.loss(x, future=[0, 2, 4], seam_weight=10.0, parts=parts)
        seams.append(float(parts["seam"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert seams[-1] < 0.5 * seams[0]
