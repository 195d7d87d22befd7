"""Distillation from fracast (streamflame/train/distill.py): the teacher set, the loss, resuming."""
import numpy as np
import pytest
import torch

from streamflame.eval.baselines import Fracast
from streamflame.model.config import ModelConfig
from streamflame.model.flame import Flame
from streamflame.train.distill import MIN_CUT, DistillConfig, TeacherSet, distill_loss, teacher_config
from streamflame.train.loop import SequenceSampler, TrainConfig, main, train


def _smoke(tmp_path, **over) -> TrainConfig:
    cfg = TrainConfig.from_yaml("configs/train/smoke.yaml")
    cfg.out_dir = str(tmp_path / "run")
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def test_distill_config_is_checked():
    with pytest.raises(ValueError, match="nope"):
        TrainConfig.from_dict({"distill": {"nope": 1}})
    with pytest.raises(ValueError, match="path"):
        TrainConfig.from_dict({"distill": {"weight": 1.0}})
    with pytest.raises(ValueError, match="samples"):
        TrainConfig.from_dict({"distill": {"path": "x.npz", "weight": 1.0, "samples": 1}})
    assert not DistillConfig.from_dict({"path": "x.npz"}).on          # weight 0: off


def test_teacher_set_holds_fracast_quantiles_of_prefixes_drawn_apart_from_training(tmp_path, capsys):
    """--export-distill: sequences from the run's sampler under another seed (never a training
    step's batch), cut points after MIN_CUT patches, and at each cut exactly what fracast forecasts
    from that prefix (the teacher reads nothing after the cut)."""
    import yaml

    cfg = _smoke(tmp_path)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({k: getattr(cfg, k) for k in ("model", "seq_patches", "real_fraction", "batch")}))
    out = tmp_path / "teacher.npz"
    assert main(["--config", str(path), "--export-distill", str(out), "--distill-sequences", "3",
                 "--distill-cuts", "2"]) == 0
    assert '"teacher": "fracast"' in capsys.readouterr().out
    ts = TeacherSet.load(out)
    T = cfg.seq_patches
    assert ts.values.shape == (3, T, 48) and ts.cuts.shape == (3, 2) and ts.quantiles.shape == (3, 2, 9, 96)
    assert (ts.cuts >= MIN_CUT).all() and (ts.cuts <= T).all() and (np.diff(ts.cuts, axis=1) > 0).all()
    assert np.all(np.diff(ts.quantiles, axis=2) >= 0)                    # quantiles ordered by level
    # the same values as the run's sampler under the teacher seed, and none of the run's own batches
    again = SequenceSampler(teacher_config(cfg), 48).batch_with_calendar(0)
    np.testing.assert_array_equal(ts.values, again.values[:3])
    for step in range(5):
        own = SequenceSampler(cfg, 48).batch(step)
        assert not any(np.array_equal(a, b, equal_nan=True) for a in own for b in ts.values)
    # fracast from the prefix alone: changing everything after the cut changes nothing
    i, k = 1, int(ts.cuts[1, 0])
    prefix = ts.values[i].reshape(-1)[:k * 48]
    _, q = Fracast().predict([prefix], 96, [1])
    np.testing.assert_allclose(ts.quantiles[i, 0], q[0], rtol=1e-5, atol=1e-5)


def _tiny_model(seed=0) -> Flame:
    torch.manual_seed(seed)
    cfg = TrainConfig.from_yaml("configs/train/smoke.yaml")
    return Flame(ModelConfig.from_dict({**cfg.model, "seasonal_memory": True, "hint_features": True}))


def _walks(n=6, T=12, seed=0) -> TeacherSet:
    rng = np.random.default_rng(seed)
    values = (10 + np.cumsum(rng.normal(size=(n, T * 48)), 1)).astype(np.float32).reshape(n, T, 48)
    cuts = np.tile(np.array([MIN_CUT, T]), (n, 1))
    last = values.reshape(n, -1)[np.arange(n)[:, None], cuts * 48 - 1]                 # (n, C)
    offsets = np.linspace(-3, 3, 9)                                                    # a wide, flat teacher
    q = (last[:, :, None, None] + offsets[None, None, :, None] + np.zeros(96)).astype(np.float32)
    return TeacherSet(values, np.zeros((n, 2)), cuts, q)


def test_distillation_pulls_the_students_quantiles_to_the_teachers():
    """The loss reaches the flow's weights through reparameterised samples: a few Adam steps on it
    alone move the student's quantiles towards the teacher's."""
    model, ts = _tiny_model(), _walks()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(40):
        loss = distill_loss(model, ts, 16, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_prefixes_the_teacher_could_not_read_are_not_scored():
    model, ts = _tiny_model(), _walks()
    g = lambda: torch.Generator().manual_seed(3)
    full = distill_loss(model, ts, 8, g()).detach()
    q = ts.quantiles.copy()
    q[:, 1] = np.nan                                    # the second cut of every sequence unreadable
    part = distill_loss(model, ts._replace(quantiles=q), 8, g()).detach()
    assert torch.isfinite(part) and float(part) != float(full)
    none = distill_loss(model, ts._replace(quantiles=np.full_like(q, np.nan)), 8, g())
    assert float(none.detach()) == 0.0
    none.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_resume_with_distillation_continues_bit_for_bit(tmp_path):
    """The teacher-set draws and the student's sampling noise are seeded by the step: 4 steps
    in one go == 2 steps, stop, resume 2."""
    from safetensors.torch import load_file

    ts = _walks(n=5)
    ts.save(tmp_path / "t.npz", {"teacher": "test"})

    def cfg_for(name, steps):
        return _smoke(tmp_path, out_dir=str(tmp_path / name), steps=steps, checkpoint_every=1000,
                      distill={"path": str(tmp_path / "t.npz"), "weight": 0.5, "batch": 2, "samples": 4})

    logs = []
    train(cfg_for("straight", 4), progress=logs.append)
    assert any("distill" in m for m in logs)
    train(cfg_for("split", 2), progress=lambda m: None)
    assert main(["--resume", str(tmp_path / "split"), "--steps", "4"]) == 0
    a = load_file(str(tmp_path / "straight" / "train_state.safetensors"))
    b = load_file(str(tmp_path / "split" / "train_state.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the teacher matters: without it the weights differ
    cfg = cfg_for("plain", 4)
    cfg.distill = {}
    train(cfg, progress=lambda m: None)
    c = load_file(str(tmp_path / "plain" / "train_state.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_gating_keeps_the_teacher_only_where_it_beats_the_student_on_the_continuation():
    """--gate-distill: a cut whose teacher quantiles sit on the sequence's own next 96 values is
    kept, one whose teacher is far off is dropped, and a cut with no continuation in the sequence
    (the last patch) cannot be judged and is dropped."""
    from streamflame.train.distill import gate_teacher_set, quantile_loss

    model, ts = _tiny_model(), _walks(n=4, T=12)
    flat = ts.values.reshape(4, -1).astype(np.float64)
    cuts = np.tile(np.array([MIN_CUT, 10, 12]), (4, 1))                   # 12 = T: nothing after it
    q = np.zeros((4, 3, 9, 96), np.float32)
    for i in range(4):
        future = flat[i, 10 * 48:10 * 48 + 96]
        q[i, 0] = flat[i, MIN_CUT * 48:MIN_CUT * 48 + 96] + np.linspace(-1e-3, 1e-3, 9)[:, None]   # the truth
        q[i, 1] = future + 1e4 + np.arange(9)[:, None]                                          # far off
        q[i, 2] = 0.0
    gated, info = gate_teacher_set(ts._replace(cuts=cuts, quantiles=q), model, samples=16)
    assert info == {"judged": 8, "kept": 4, "cuts": 12}
    assert np.isfinite(gated.quantiles[:, 0]).all()
    assert np.isnan(gated.quantiles[:, 1:]).all()
    # the loss it judges by: the summed pinball loss, 0 for quantiles on the values
    y = np.array([1.0, 2.0, np.nan])
    assert quantile_loss(np.tile(y, (9, 1)), y) == 0.0
    assert np.isnan(quantile_loss(np.zeros((9, 3)), np.full(3, np.nan)))


def test_fracast_reads_contexts_with_8_observed_values_in_its_window_and_falls_back_otherwise():
    """One rule, used by the eval baseline and by the distillation teacher set: fracast reads a
    context with at least 8 observed values among its last 2048; otherwise the baseline gives the
    seasonal naive forecast and counts a fallback."""
    from streamflame.eval.baselines import seasonal_naive
    f = Fracast()
    old = np.full(3000, np.nan)
    old[:100] = 1.0                                           # observed, but before the last 2048
    seven, eight = np.full(500, np.nan), np.full(500, np.nan)
    seven[-7:], eight[-8:] = 2.0, 2.0
    assert [f.readable(c) for c in (old, seven, eight)] == [False, False, True]
    mean, quant = f.predict([old, seven, eight], 12, [4, 4, 4])
    assert f.fallbacks == 2
    for i, c in enumerate((old, seven)):
        m, q = seasonal_naive(c, 12, 4)
        np.testing.assert_array_equal(mean[i], m)
    assert np.isfinite(quant[2]).all() and abs(mean[2] - 2.0).max() < 1.0
