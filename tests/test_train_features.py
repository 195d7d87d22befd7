"""The data-only perception features computed beside the step (DataLoader workers) give the same
training as computing them in the step: same features, same loss, same weights, bit for bit."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from streamflame.model.config import ModelConfig
from streamflame.model.flame import Flame, sequence_features
from streamflame.model.perception import DataFeatures
from streamflame.train.loop import SequenceSampler, TrainConfig, _Batches, batch_stream, main, train


def _smoke(tmp_path, name: str, **over) -> TrainConfig:
    cfg = TrainConfig.from_yaml("configs/train/smoke.yaml")
    cfg.out_dir, cfg.steps, cfg.checkpoint_every = str(tmp_path / name), 5, 1000
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def test_features_given_give_the_same_loss_and_gradients():
    """loss(features=sequence_features(...)) == loss() for the default model on sampled batches
    with calendars and gaps (real rows: NaN runs), and its gradients are the same bits."""
    cfg = TrainConfig.from_yaml("configs/train/default.yaml")
    cfg.batch, cfg.seq_patches = 6, 24
    real = {"a": [np.where(np.arange(5000) % 700 < 40, np.nan, np.sin(np.arange(5000.0) / 3.8))]}
    s = SequenceSampler(cfg, 48, real_series=real, real_steps={"a": [3600.0]})
    mcfg = ModelConfig.from_dict(cfg.model)
    torch.manual_seed(0)
    model = Flame(mcfg)
    for step in (0, 1):
        tb = s.batch_with_calendar(step).tensors()
        assert torch.isnan(tb.values).any()
        feats = _Batches(s, 0, 10, mcfg)[step].features
        assert isinstance(feats, DataFeatures) and feats.period.shape == (6, 24)
        assert (feats.period > 0).any()
        runs = []
        for given in (None, feats):
            model.zero_grad()
            loss = model.loss(tb.values, future=[0, 3], calendar=tb.calendar, features=given)
            loss.backward()
            runs.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        assert torch.equal(runs[0][0], runs[1][0])
        assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
        # features of other data give another loss: the comparison can fail
        other = sequence_features(mcfg, tb.values.flip(1), tb.calendar)
        assert not torch.equal(model.loss(tb.values, future=[0, 3], calendar=tb.calendar, features=other),
                               runs[0][0])


def test_features_of_the_wrong_shape_are_refused():
    mcfg = ModelConfig.from_dict(TrainConfig.from_yaml("configs/train/smoke.yaml").model)
    model = Flame(mcfg)
    x = torch.randn(3, 6, 48)
    feats = sequence_features(mcfg, x[:, :5])
    with pytest.raises(ValueError, match="features"):
        model.loss(x, features=feats)


def test_training_with_loader_workers_is_bit_identical(tmp_path):
    """5 steps drawn and featured in a DataLoader worker (one step thread) == 5 steps in the loop:
    weights and AdamW moments bit for bit; the thread count is restored after the run."""
    before = torch.get_num_threads()
    train(_smoke(tmp_path, "loop"), progress=lambda m: None)
    train(_smoke(tmp_path, "workers", loader_workers=1, threads=1), progress=lambda m: None)
    assert torch.get_num_threads() == before
    a = load_file(str(tmp_path / "loop" / "train_state.safetensors"))
    b = load_file(str(tmp_path / "workers" / "train_state.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("opt.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_batch_stream_hands_the_same_batches_with_and_without_workers():
    cfg = TrainConfig.from_yaml("configs/train/smoke.yaml")
    cfg.steps, cfg.calendar = 7, True
    cfg.synthetic = {"calendar_fraction": 1.0}
    mcfg = ModelConfig.from_dict(cfg.model)
    s = SequenceSampler(cfg, 48)
    inloop = list(batch_stream(cfg, s, mcfg, 3, torch.device("cpu")))
    cfg.loader_workers = 1
    ahead = list(batch_stream(cfg, s, mcfg, 3, torch.device("cpu")))
    assert len(inloop) == len(ahead) == 4
    for a, b in zip(inloop, ahead):
        assert a.features is None and b.features is not None
        assert torch.equal(a.values.nan_to_num(-7), b.values.nan_to_num(-7)) and torch.equal(a.calendar, b.calendar)
        want = sequence_features(mcfg, a.values, a.calendar)
        assert torch.equal(want.period, b.features.period) and torch.equal(want.env, b.features.env)
    assert (ahead[0].calendar > 0).any()


def test_bad_thread_or_worker_counts_are_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 10\nthreads: -1\n")
    assert main(["--config", str(bad)]) == 2
    assert "threads" in capsys.readouterr().err


def test_bench_train_prints_every_figure_and_restores_threads(capsys):
    from streamflame.bench.train import main as bench

    before = torch.get_num_threads()
    assert bench(["--config", "configs/train/smoke.yaml", "--steps", "2", "--workers", "1", "--threads", "1"]) == 0
    assert torch.get_num_threads() == before
    out = capsys.readouterr().out
    assert "1 threads, 1 loader workers" in out
    for name in ("data   (sampler alone)", "data + features", "step   (fwd+bwd+AdamW)", "step, features given",
                 "loop   (as train runs)"):
        line = next(x for x in out.splitlines() if x.startswith(name))
        assert float(line.split()[-2].replace(",", "")) > 0, line


def test_the_loops_multi_tensor_adamw_is_the_for_loop_adamw_bit_for_bit():
    from streamflame.train.loop import make_optimizer

    cfg = TrainConfig.from_yaml("configs/train/smoke.yaml")
    mcfg = ModelConfig.from_dict(cfg.model)
    models = []
    for foreach in (True, False):
        torch.manual_seed(0)
        m = Flame(mcfg)
        opt = make_optimizer(m, cfg)
        if not foreach:
            for g in opt.param_groups:
                g["foreach"] = False
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        models.append(m)
    assert all(g["foreach"] for g in make_optimizer(models[0], cfg).param_groups)
    a, b = (dict(m.named_parameters()) for m in models)
    torch.manual_seed(0)
    init = Flame(mcfg).state_dict()
    assert all(not torch.equal(a[k], init[k]) for k in a)                          # every one moved
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_bf16_step_computes_the_features_as_serving_does_and_stays_near_float32():
    """Under CPU bf16 autocast (cpu_amp) step_loss computes the data-only features before the
    autocast, in float32/64: the same bits as sequence_features, so a bf16-trained model conditions
    on the features serving gives it. Its loss and gradients stay near the float32 step's (bf16
    matmuls: loss within 2 %, every gradient's cosine to the float32 one > 0.98). Inside the autocast
    the LegT projection would run as a bf16 bmm (on CPU torch refuses to mix it into float32)."""
    from streamflame.train.loop import autocast_on, step_loss
    cfg = TrainConfig.from_yaml("configs/train/default.yaml")
    cfg.batch, cfg.seq_patches, cfg.cpu_amp = 6, 24, True
    assert autocast_on(cfg, torch.device("cpu"))
    assert not autocast_on(TrainConfig.from_yaml("configs/train/default.yaml"), torch.device("cpu"))
    real = {"a": [np.where(np.arange(5000) % 700 < 40, np.nan, np.sin(np.arange(5000.0) / 3.8) + 0.1 * np.arange(5000.0) % 7)]}
    s = SequenceSampler(cfg, 48, real_series=real, real_steps={"a": [3600.0]})
    mcfg = ModelConfig.from_dict(cfg.model)
    torch.manual_seed(0)
    model = Flame(mcfg)
    for p in model.parameters():                       # the zero-initialised flow outputs too
        p.data.add_(0.01 * torch.randn_like(p))
    tb = s.batch_with_calendar(3).tensors()
    exact = sequence_features(mcfg, tb.values, tb.calendar)
    seen = []
    real_loss = model.loss

    def spy(*a, **k):
        seen.append(k["features"])
        return real_loss(*a, **k)
    model.loss = spy
    runs = {}
    for amp in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = step_loss(model, cfg, 3, tb.values, tb.calendar, None, amp)
        loss.backward()
        runs[amp] = (loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert seen[0] is None and torch.equal(seen[1].period, exact.period) and torch.equal(seen[1].env, exact.env)
    with pytest.raises(RuntimeError), torch.autocast("cpu", dtype=torch.bfloat16):
        sequence_features(mcfg, tb.values, tb.calendar)            # inside it: a bf16 LegT bmm, refused here
    (l32, g32), (l16, g16) = runs[False], runs[True]
    assert l16.dtype == torch.float32 and 0 < abs(float(l16 - l32)) < 0.02 * abs(float(l32))
    assert len(g32) == len(g16) > 0
    cos = [float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) for a, b in zip(g32, g16)
           if a.norm() > 0]
    assert min(cos) > 0.98, sorted(cos)[:5]
