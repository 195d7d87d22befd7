"""The cheaper training step against the formulation it replaced: the condition built only for
the scored future patches (not all K, then selected) and a sequence shorter than chunk_len scanned
as one chunk of its own length (not padded). Same loss; gradients equal up to float32 rounding."""
import numpy as np
import torch
import torch.nn.functional as F

import streamflame.model.ssd as ssd
from streamflame.model.config import ModelConfig
from streamflame.model.flame import Flame
from streamflame.train.loop import SequenceSampler, TrainConfig, _Batches


def padded_ssd_chunked(x, a, B, C, S0, chunk: int):
    """ssd_chunked as it was: a short sequence padded to a whole chunk."""
    b, T, H, P = x.shape
    pad = (-T) % chunk
    if pad:
        x, a = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(a, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    y, S_T = FAST(x, a, B, C, S0, chunk)
    return y[:, :T], S_T


FAST = ssd.ssd_chunked


def _loss_and_grads(model, tb, future, reference: bool):
    if reference:
        cond = Flame.condition

        def all_then_select(self, h, window, period, mean, std, K, seas, future=None):
            c, hint = cond(self, h, window, period, mean, std, K, seas)
            return c[:, future], hint[:, future]
        model.condition = all_then_select.__get__(model)
        ssd.ssd_chunked = padded_ssd_chunked
    try:
        model.zero_grad()
        loss = model.loss(tb.values, future=future, calendar=tb.calendar, features=tb.features)
        loss.backward()
    finally:
        ssd.ssd_chunked = FAST
        model.__dict__.pop("condition", None)
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_step_equals_the_old_formulation_to_float_rounding():
    """Default model (chunk_len 64) on training batches of 32 patches, and the ar/seasonal levers:
    the loss to 1e-6 (it came out bit-identical here), every gradient to 1e-5 of its norm (6e-8 seen)."""
    cfg = TrainConfig.from_yaml("configs/train/default.yaml")
    cfg.batch = 6
    real = {"a": [np.where(np.arange(5000) % 700 < 40, np.nan, np.sin(np.arange(5000.0) / 3.8))]}
    s = SequenceSampler(cfg, 48, real_series=real, real_steps={"a": [3600.0]})
    for levers in ({}, {"ar_patches": True, "seasonal_memory": True, "hint_features": True}):
        mcfg = ModelConfig(**levers)
        torch.manual_seed(0)
        model = Flame(mcfg)
        for p in model.parameters():                       # the levers' zero-initialised weights too
            p.data.add_(0.01 * torch.randn_like(p))
        batches = _Batches(s, 0, 10, mcfg)
        for step, future in ((0, [0, 2, 5]), (1, [0, 7, 8])):
            tb = batches[step].tensors()
            new_loss, new_g = _loss_and_grads(model, tb, future, reference=False)
            old_loss, old_g = _loss_and_grads(model, tb, future, reference=True)
            assert torch.isfinite(new_loss)
            assert torch.allclose(new_loss, old_loss, rtol=1e-6, atol=0), (new_loss, old_loss)
            for a, b in zip(new_g, old_g):
                assert (a - b).norm() <= 1e-5 * b.norm() + 1e-12
            # the reference really is another computation path: a different future changes the loss
            other, _ = _loss_and_grads(model, tb, [0, 1, 3], reference=True)
            assert not torch.equal(other, old_loss)
