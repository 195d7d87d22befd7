"""WiSE-FT interpolation of a run's start and end (streamflame/train/soup.py): alpha = 0 is the
start the run began from (init_from + the run's new levers as initialised), alpha = 1 its final
weights, anything between the straight line; the checkpoint keeps the end's temperature and lineage."""
from __future__ import annotations

import json

import pytest
import torch

from streamflame.model import Forecaster, tiny_config
from streamflame.model.flame import Flame, load_compatible
from streamflame.train.soup import interpolate, main


def _run(tmp_path, seed: int = 3):
    init = tmp_path / "init"
    Forecaster.from_config(tiny_config(), seed=1).save(init)
    torch.manual_seed(seed)
    end = Flame(tiny_config(ar_patches=True))
    load_compatible(end, Forecaster.load(init).model, "init")
    with torch.no_grad():                   # "training": every weight moves, the new lever too
        for p in end.parameters():
            p.add_(0.01 * torch.randn_like(p) + 0.02)
    f = Forecaster(end, "x", temperature=0.85)
    from streamflame.model.forecaster import _model_id
    f.model_id = _model_id(end)
    run = tmp_path / "run"
    f.save(run / "final", extra={"train_config": {"init_from": str(init), "seed": seed}, "lineage": [{"a": 1}]})
    return run, init, end


def test_the_ends_of_the_line_are_the_runs_start_and_final(tmp_path):
    run, init, end = _run(tmp_path)
    f0, _ = interpolate(run, 0.0)
    f1, extra = interpolate(run, 1.0)
    fh, _ = interpolate(run, 0.5)
    torch.manual_seed(3)
    start = Flame(tiny_config(ar_patches=True))
    load_compatible(start, Forecaster.load(init).model, "init")
    s0, s1, sh, e, st = (f0.model.state_dict(), f1.model.state_dict(), fh.model.state_dict(),
                         end.state_dict(), start.state_dict())
    assert all(torch.equal(s0[k], st[k]) for k in st)
    assert all(torch.equal(s1[k], e[k]) for k in e)
    assert all(torch.allclose(sh[k], (e[k] + st[k]) / 2, atol=1e-7) for k in e if e[k].is_floating_point())
    assert any(not torch.equal(sh[k], e[k]) for k in e)
    assert f1.temperature == 0.85 and extra["lineage"] == [{"a": 1}] and extra["interpolation"]["alpha"] == 1.0
    assert f1.model_id == Forecaster.load(run / "final").model_id != fh.model_id


def test_the_command_writes_a_loadable_checkpoint_and_rejects_bad_input(tmp_path, capsys):
    run, _, _ = _run(tmp_path)
    assert main([str(run), "--alpha", "0.5", "--out", str(tmp_path / "soup")]) == 0
    got = json.loads(capsys.readouterr().out)
    f = Forecaster.load(tmp_path / "soup")
    assert f.model_id == got["model_id"] and f.temperature == 0.85
    meta = json.loads((tmp_path / "soup" / "config.json").read_text())
    assert meta["interpolation"]["alpha"] == 0.5 and meta["train_config"]["seed"] == 3
    assert main([str(run), "--alpha", "1.5", "--out", str(tmp_path / "x")]) == 2
    assert "alpha must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="did not start from a checkpoint"):
        Forecaster.load(run / "final").save(tmp_path / "r2" / "final", extra={"train_config": {}})
        interpolate(tmp_path / "r2", 0.5)
