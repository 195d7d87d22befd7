"""Training smoke test: a tiny CPU run lowers the loss, checkpoints round-trip and resume."""
import json
import re

import numpy as np
import pytest

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


def test_sampler_gives_each_sequence_its_calendar():
    """A real sequence's calendar is its series' step times the aggregation factor; a synthetic
    family's is its own step; the values are the same as without calendars."""
    from streamflame.data.synthetic import CALENDAR_STEP_MINUTES, STEP_MINUTES
    from streamflame.model.perception import calendar_steps

    cfg = TrainConfig(batch=64, seq_patches=4, real_fraction=0.5, seed=3,
                      synthetic={"calendar_fraction": 0.3, "weather_fraction": 0.1})
    real = {"hourly": [np.sin(np.arange(2000.0) / 3.8)], "monthly": [np.arange(500.0)]}
    s = SequenceSampler(cfg, 48, real_series=real, real_steps={"hourly": [3600.0], "monthly": [None]})
    tb = s.batch_with_calendar(7)
    assert np.array_equal(tb.values, s.batch(7), equal_nan=True) and tb.calendar.shape == (64, 2)
    hourly = {calendar_steps(3600.0 * f) for f in (1, 2, 3, 4)}
    synthetic = {calendar_steps(60.0 * m) for m in set(STEP_MINUTES) | set(CALENDAR_STEP_MINUTES) | {5, 10, 30, 60}}
    got = {tuple(c) for c in tb.calendar.tolist()}
    assert got <= hourly | synthetic | {(0.0, 0.0)}
    assert got & hourly and (0.0, 0.0) in got                 # real hourly rows; monthly / KernelSynth rows


def test_bad_training_config_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 10\nlearning_rate: 3\n")
    assert main(["--config", str(bad)]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_sampler_balances_sources_and_exported_data_roundtrips(tmp_path, monkeypatch):
    """A real sequence picks its source uniformly first: a source with 50 series weighs as
    much as one with a single series. The .npz export (for a machine without the data
    packages) gives back the same series by source."""
    import streamflame.train.loop as loop

    big = [np.full(2000, 1.0) for _ in range(50)]            # constant rows
    small = [np.arange(2000.0)]                              # a ramp: never a constant row
    cfg = TrainConfig(batch=600, seq_patches=2, real_fraction=1.0, seed=5)
    rows = SequenceSampler(cfg, 48, real_series={"big": big, "small": small}).batch(0).reshape(600, -1)
    ramps = int(np.sum(np.ptp(rows, axis=1) > 0))
    assert 240 < ramps < 360, ramps                          # ~1/2 of the draws, not 1/51

    data = {"a": [np.arange(300.0), np.array([1.0, np.nan, 3.0])], "b": [np.linspace(0, 1, 250)]}
    steps = {"a": [3600.0, None], "b": [60.0]}
    monkeypatch.setattr(loop, "load_real_training_values",
                        lambda with_steps=False: (data, steps) if with_steps else data)
    info = loop.export_training_data(tmp_path / "d.npz", max_len=200)
    assert loop.load_training_steps(tmp_path / "d.npz") == steps
    assert info == {"series": 3, "sources": 2, "values": 200 + 3 + 200}
    back = loop.load_training_data(tmp_path / "d.npz")
    assert sorted(back) == ["a", "b"]
    assert np.array_equal(back["a"][0], np.arange(100.0, 300.0))            # newest 200 kept
    assert np.array_equal(back["a"][1], data["a"][1], equal_nan=True)
    assert np.allclose(back["b"][0], data["b"][0][-200:], atol=1e-7)


def test_loader_workers_draw_the_same_batches(tmp_path):
    """DataLoader workers produce exactly the batches the in-loop sampler would (step-seeded)."""
    import torch
    from streamflame.train.loop import _Batches

    cfg = TrainConfig(batch=3, seq_patches=4, real_fraction=0.5, seed=2)
    s = SequenceSampler(cfg, 48, real_series={"x": [np.sin(np.arange(900.0) / 5)]})
    dl = torch.utils.data.DataLoader(_Batches(s, 7, 12), batch_size=None, num_workers=2)
    got = list(dl)
    assert len(got) == 5
    for i, g in enumerate(got):
        want = s.batch_with_calendar(7 + i)
        assert np.array_equal(g.values.numpy(), want.values, equal_nan=True)
        assert np.array_equal(g.calendar.numpy(), want.calendar)


def test_synthetic_mix_from_the_training_config(tmp_path):
    cfg = TrainConfig(batch=64, seq_patches=8, real_fraction=0.0, seed=1,
                      synthetic={"calendar_fraction": 1.0, "closed_hours_probability": 1.0})
    x = SequenceSampler(cfg, 48).batch(0)
    assert np.isnan(x).reshape(64, -1).mean(axis=1).min() > 0.1     # every series has closed hours
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 10\nsynthetic: {weekly: 0.3}\n")
    assert main(["--config", str(bad)]) == 2
    for text, why in (("ar_sampled_prev: 0.5\n", "needs model: {ar_patches: true}"),
                      ("ar_sampled_prev: 1.5\nmodel: {ar_patches: true}\n", "must be in [0, 1]"),
                      ("seam_weight: 1.0\n", "seam_weight needs model: {ar_patches: true}"),
                      ("seam_weight: -1.0\nmodel: {ar_patches: true}\n", "seam_weight must be >= 0")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=re.escape(why)):
            TrainConfig.from_yaml(bad)
    TrainConfig.from_yaml("configs/train/gpu_mix.yaml")


@pytest.mark.parametrize("cpu_amp", [False, True])
def test_resume_continues_bit_for_bit_like_an_uninterrupted_run(tmp_path, cpu_amp):
    """Weights, AdamW moments and the data position: 6 steps in one go == 3 steps, stop, resume 3,
    in float32 and under CPU bf16 autocast. The run directory records each segment (steps,
    observations, device, arithmetic) and the total."""
    import torch
    from safetensors.torch import load_file

    def cfg_for(name: str, steps: int) -> TrainConfig:
        cfg = TrainConfig.from_yaml("configs/train/smoke.yaml")
        cfg.out_dir, cfg.steps, cfg.checkpoint_every = str(tmp_path / name), steps, 1000
        cfg.real_fraction, cfg.augment = 0.0, {"spikes": 0.5, "censor": 0.3, "amplitude_modulation": 0.5}
        cfg.target_noise, cfg.model = 0.05, {**cfg.model, "ar_patches": True}
        cfg.cpu_amp, cfg.ar_sampled_prev = cpu_amp, 0.5          # scheduled sampling draws from the step's generator
        cfg.seam_weight = 1.0
        return cfg

    train(cfg_for("straight", 6), progress=lambda m: None)
    train(cfg_for("split", 3), progress=lambda m: None)
    assert main(["--resume", str(tmp_path / "split"), "--steps", "6"]) == 0
    a = load_file(str(tmp_path / "straight" / "train_state.safetensors"))
    b = load_file(str(tmp_path / "split" / "train_state.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("opt.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    meta = json.loads((tmp_path / "split" / "train_state.json").read_text())
    assert meta["step"] == 6 and [(s["start_step"], s["end_step"]) for s in meta["lineage"]] == [(0, 3), (3, 6)]
    per_step = 8 * 12 * 48                                     # smoke.yaml: batch 8 x 12 patches x 48
    assert [s["observations"] for s in meta["lineage"]] == [3 * per_step, 3 * per_step]
    assert meta["observations_seen"] == 6 * per_step
    assert all(s["device"] == "cpu" and s["device_name"] for s in meta["lineage"])
    assert [s["bf16_autocast"] for s in meta["lineage"]] == [cpu_amp, cpu_amp]
    final = json.loads((tmp_path / "split" / "final" / "config.json").read_text())
    assert final["observations_seen"] == 6 * per_step
    # a different data position gives different weights: the comparison above can fail
    cfg = cfg_for("other", 6)
    cfg.seed = 1
    train(cfg, progress=lambda m: None)
    c = load_file(str(tmp_path / "other" / "train_state.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_of_a_directory_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    assert main(["--resume", str(tmp_path)]) == 2
    assert "train_state.json" in capsys.readouterr().err


def test_sampler_draws_sources_by_registry_weight_and_mixes():
    cfg = TrainConfig(batch=2000, seq_patches=2, real_fraction=1.0, seed=5)
    data = {"heavy": [np.arange(2000.0)], "light": [np.full(2000, 1.0)]}
    rows = SequenceSampler(cfg, 48, real_series=data, weights={"heavy": 0.9, "light": 0.1}).batch(0)
    ramps = int(np.sum(np.ptp(rows.reshape(2000, -1), axis=1) > 0))
    assert 1700 < ramps < 1900, ramps                          # ~90 %, not 50 %
    # TSMixup only: every row is a convex mix of standardised series (never a plain constant)
    mix = TrainConfig(batch=200, seq_patches=2, real_fraction=0.0, tsmixup_fraction=1.0, seed=2)
    data = {"a": [np.sin(np.arange(3000.0) / 7)], "b": [np.arange(3000.0) % 48]}
    x = SequenceSampler(mix, 48, real_series=data).batch(0).reshape(200, -1)
    assert np.isfinite(x).all() and np.all(np.ptp(x, axis=1) > 0)


def test_augmentations_change_what_they_say_and_nothing_else():
    from streamflame.train import mix

    rng = np.random.default_rng(0)
    x = np.sin(np.arange(960) / 10.0) + 5
    x[100:110] = np.nan
    c = mix.censor(x, np.random.default_rng(1))
    assert np.array_equal(np.isnan(c), np.isnan(x))
    assert np.nanmax(c) < np.nanmax(x) or np.nanmin(c) > np.nanmin(x)
    s = mix.spikes(x, rng)
    changed = np.flatnonzero(np.nan_to_num(s - x) != 0)
    assert 1 <= len(changed) <= 5 and np.all(np.abs((s - x)[changed]) > 3 * np.std(np.diff(x[:100])))
    a = mix.amplitude_modulation(x, rng)
    assert np.array_equal(np.isnan(a), np.isnan(x)) and not np.allclose(a[~np.isnan(x)], x[~np.isnan(x)])
    assert abs(np.nanmean(a) - np.nanmean(x)) < 1.0               # the level stays, the amplitude moves
    m = mix.tsmixup([x, np.arange(960.0)], rng, 1.5)
    assert np.isnan(m[105]) and abs(np.nanmean(m)) < 0.05           # standardised parts: mean ~0
    cfg = TrainConfig(augment={"nope": 1})
    try:
        SequenceSampler(cfg, 48, real_series={})
    except ValueError as e:
        assert "nope" in str(e)
    else:
        raise AssertionError("unknown augment field accepted")


def test_every_training_config_in_the_repo_parses():
    """configs/train/*.yaml are commands in docs/model.md: each must load (fields, model, mix, distill)."""
    from pathlib import Path

    paths = sorted(Path("configs/train").glob("*.yaml"))
    assert len(paths) >= 5
    for p in paths:
        TrainConfig.from_yaml(p)


def test_trainable_prefixes_train_those_weights_and_leave_the_rest_as_loaded(tmp_path):
    """trainable: [flow.prev] from a checkpoint: after a few steps only gamma's weights moved (the
    trunk and the rest of the flow are bit-identical to the start), AdamW holds moments for them
    alone, and the run resumes; an unknown prefix is a clear error."""
    import torch

    cfg = TrainConfig.from_yaml("configs/train/smoke.yaml")
    cfg.out_dir, cfg.steps, cfg.checkpoint_every = str(tmp_path / "base"), 2, 1000
    train(cfg, progress=lambda m: None)
    start = Forecaster.load(tmp_path / "base" / "final").model.state_dict()
    cfg.out_dir, cfg.steps, cfg.lr, cfg.warmup = str(tmp_path / "gamma"), 4, 1e-2, 1
    cfg.init_from, cfg.model, cfg.trainable = str(tmp_path / "base" / "final"), {**cfg.model, "ar_patches": True}, ["flow.prev"]
    train(cfg, progress=lambda m: None)
    end = Forecaster.load(tmp_path / "gamma" / "final").model.state_dict()
    moved = {k for k in end if k not in start or not torch.equal(start[k], end[k])}
    assert moved == {"flow.prev.weight", "flow.prev.bias"}
    assert end["flow.prev.weight"].abs().sum() > 0                     # zero-initialised, now trained
    meta = json.loads((tmp_path / "gamma" / "train_state.json").read_text())
    assert set(meta["adam_steps"]) == {"flow.prev.weight", "flow.prev.bias"}
    cfg.steps = 6
    assert train(cfg, resume=True, progress=lambda m: None)["step"] == 6
    with pytest.raises(ValueError, match="match no parameter"):
        TrainConfig.from_dict({"trainable": ["flow.nothing"]})


def test_init_values_start_a_new_lever_away_from_zero_and_resume_keeps_the_trained_value(tmp_path):
    """init_values set named parameters after init_from (here inner_ar's coefficient bias, so that
    the run starts at a = 0.9 instead of 0); a resumed run keeps what training made of them; a name
    that is no parameter, or a value that is no finite number, is a clear error."""
    import math

    import torch

    cfg = TrainConfig.from_yaml("configs/train/smoke.yaml")
    cfg.out_dir, cfg.steps, cfg.checkpoint_every = str(tmp_path / "base"), 2, 1000
    train(cfg, progress=lambda m: None)
    start = math.atanh(0.9 / 0.999)
    cfg.out_dir, cfg.steps, cfg.lr, cfg.warmup = str(tmp_path / "inner"), 3, 1e-2, 1
    cfg.init_from, cfg.model = str(tmp_path / "base" / "final"), {**cfg.model, "ar_patches": True, "inner_ar": True}
    cfg.trainable, cfg.init_values = ["flow.inner"], {"flow.inner.bias": start}
    logs = []
    train(cfg, progress=logs.append)
    assert any("flow.inner.bias" in m for m in logs)
    bias = Forecaster.load(tmp_path / "inner" / "final").model.flow.inner.bias
    assert abs(float(bias) - start) < 0.1 and float(bias) != start      # started there, then trained
    cfg.steps = 5
    train(cfg, resume=True, progress=lambda m: None)
    resumed = Forecaster.load(tmp_path / "inner" / "final").model.flow.inner.bias
    assert not torch.equal(resumed, torch.full_like(resumed, start)) and abs(float(resumed) - start) < 0.2
    with pytest.raises(ValueError, match="name no parameter"):
        TrainConfig.from_dict({"init_values": {"flow.nothing": 1.0}})
    with pytest.raises(ValueError, match="finite numbers"):
        TrainConfig.from_dict({"init_values": {"flow.base.bias": "x"}})
