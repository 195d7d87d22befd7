"""bench step --refresh (streamflame/bench/step_refresh.py): every path writes the same state bytes,
and another source tree can be timed beside this one (here: this tree again, as a second package).
Figures only, no timing assertions."""
from pathlib import Path

import pytest

from streamflame.bench import step
from streamflame.bench.step_refresh import load_baseline

ROOT = Path(__file__).resolve().parent.parent


def test_refresh_paths_write_the_same_bytes_and_print_a_row_each(capsys):
    import torch

    threads = torch.get_num_threads()
    assert step.main(["--refresh", "list:float32,batch:float32+8,batch:bf16", "--baseline-tree", str(ROOT),
                      "--tiny", "--batch", "16", "--rounds", "1", "--device", "cpu", "--threads", "1"]) == 0
    # run in-process, it leaves torch as it found it (a test after it trains a model)
    assert torch.is_grad_enabled() and torch.get_num_threads() == threads
    out = capsys.readouterr().out
    assert "state bytes written: the same by every path" in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()
            if line.startswith(("baseline", "list:", "batch:"))}
    assert rows == {"baseline": "100", "list:float32": "100", "batch:float32+8": "8", "batch:bf16": "100"}
    baseline = load_baseline(ROOT)
    assert baseline.__name__ != "streamflame.model" and baseline.Forecaster.__module__.startswith("_streamflame")


def test_refresh_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"\[list:\|batch:\]MATMUL"):
        step.main(["--refresh", "gpu:float32", "--tiny", "--batch", "16", "--rounds", "1", "--device", "cpu"])
    with pytest.raises(FileNotFoundError, match="no streamflame/model/forecaster.py"):
        load_baseline(tmp_path)


def test_bench_step_partial_times_forecasts_inside_a_patch(capsys):
    """bench step --partial S: a row for forecast_many S steps into a patch against at the boundary
    (K covers S + H steps), and one for the conditioning alone; S must lie inside a patch."""
    assert step.main(["--tiny", "--histories", "96", "--batch", "16", "--reps", "1", "--horizon", "40",
                      "--samples", "8", "--partial", "20", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "## forecast_many 20 observations into a patch, batch of 16 (S=8, H=40: 2 patches drawn)" in out
    assert "at the boundary" in out and "model.sample without the 20 known steps" in out
    with pytest.raises(SystemExit, match="--partial must be in"):
        step.main(["--tiny", "--histories", "96", "--batch", "16", "--reps", "1", "--partial", "48", "--device", "cpu"])
