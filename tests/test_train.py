"""Training smoke test: a tiny CPU run lowers the loss, checkpoints round-trip and resume."""
import json

import numpy as np

from streamflame import Forecaster
from streamflame.train.loop import SequenceSampler, TrainConfig, main, train


def test_tiny_training_lowers_loss_and_checkpoint_roundtrips(tmp_path):
    cfg = TrainConfig.from_yaml("configs/train/smoke.yaml")
    cfg.out_dir = str(tmp_path / "run")
    cfg.steps = 80
    logs = []
    res = train(cfg, progress=logs.append)
    assert res["step"] == 80 and any("obs/s" in m for m in logs)
    assert res["loss_last"] < res["loss_first"] - 0.3, res
    f = Forecaster.load(tmp_path / "run" / "final")
    s = f.state_from_history(np.sin(np.arange(300) / 4.0))
    fc = f.forecast(s, 60, seed=0)
    assert np.all(np.isfinite(fc.samples)) and fc.mean.shape == (60,)
    # resume continues from the stored step with the stored optimizer state
    meta = json.loads((tmp_path / "run" / "train_state.json").read_text())
    assert meta["step"] == 80 and meta["adam_steps"]
    cfg.steps = 85
    res2 = train(cfg, resume=True, progress=logs.append)
    assert res2["step"] == 85 and any("resumed" in m for m in logs)


def test_sampler_is_deterministic_and_mixes_real_values():
    cfg = TrainConfig(batch=6, seq_patches=5, real_fraction=0.5, seed=3)
    real = [np.arange(1000.0), np.full(100, 7.0)]
    a = SequenceSampler(cfg, 48, real_series=real).batch(11)
    b = SequenceSampler(cfg, 48, real_series=real).batch(11)
    assert a.shape == (6, 5, 48) and np.array_equal(a, b, equal_nan=True)
    assert not np.array_equal(a, SequenceSampler(cfg, 48, real_series=real).batch(12), equal_nan=True)


def test_bad_training_config_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 10\nlearning_rate: 3\n")
    assert main(["--config", str(bad)]) == 2
    assert "learning_rate" in capsys.readouterr().err
