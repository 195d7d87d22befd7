"""`streamflame eval` end to end: windows, the forecast file contract, scoring, baselines, model plug-in."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamflame.cli import main as cli
from streamflame.data.loader import load_table
from streamflame.eval.metrics import QUANTILES
from streamflame.eval.run import StreamFlameAdapter, sibling_path, window_lengths

CONTRACT = ["series_id", "origin", "step", "mean"] + [f"q{q:g}" for q in QUANTILES]
H, W = 24, 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two series at different frequencies in one zone: 10-min crossing DST, hourly in winter.
    (A file mixing offset-aware and naive timestamps is a known gap: see the eval issue.)"""
    rng = np.random.default_rng(0)
    ts_a = pd.date_range("2024-03-29 00:00", periods=720, freq="10min", tz="Europe/Berlin")
    a = 20 + 3 * np.sin(2 * np.pi * np.arange(720) / 144) + rng.normal(0, 0.3, 720)
    a[100:130] = np.nan
    ts_b = pd.date_range("2024-01-01", periods=400, freq="h", tz="Europe/Berlin")
    b = 100 + 30 * np.sin(2 * np.pi * np.arange(400) / 24) + rng.normal(0, 3, 400)
    frame = pd.concat([
        pd.DataFrame({"series_id": "room/temp", "timestamp": ts_a.strftime("%Y-%m-%dT%H:%M:%S%z"), "value": a}),
        pd.DataFrame({"series_id": "site/load", "timestamp": ts_b.strftime("%Y-%m-%dT%H:%M:%S%z"), "value": b}),
    ])
    frame["timestamp"] = frame["timestamp"].str.replace(r"(\+\d\d)(\d\d)$", r"\1:\2", regex=True)
    frame = frame.dropna()
    path = tmp_path_factory.mktemp("eval") / "data.csv"
    frame.to_csv(path, index=False)
    return path, {"room/temp": (ts_a, a), "site/load": (ts_b, b)}


def test_window_lengths_count_back_from_the_end():
    assert window_lengths(100, 10, 3, 1) == [70, 80, 90]
    assert window_lengths(100, 30, 5, 1) == [10, 40, 70]
    assert window_lengths(100, 30, 5, 20) == [40, 70]
    assert window_lengths(20, 30, 2, 1) == []


def test_seasonal_naive_run_writes_the_exact_contract(data, tmp_path, capsys):
    path, truth = data
    out = tmp_path / "F.csv"
    metrics = tmp_path / "m.json"
    rc = cli(["eval", str(path), "--horizon", str(H), "--windows", str(W), "--output", str(out),
              "--model", "none", "--baselines", "seasonal_naive", "--metrics", str(metrics)])
    assert rc == 0
    assert not out.exists()  # no model ran
    table = pd.read_csv(sibling_path(out, "seasonal_naive"), dtype={"origin": str})
    assert list(table.columns) == CONTRACT
    assert len(table) == 2 * W * H
    for sid, (ts, values) in truth.items():
        rows = table[table["series_id"] == sid]
        n = len(values)
        expected_origins = [ts[n - w * H - 1].strftime("%Y-%m-%dT%H:%M:%S") for w in range(W, 0, -1)]
        assert list(dict.fromkeys(rows["origin"])) == expected_origins  # input's local wall time
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", o) for o in rows["origin"])
        for _, g in rows.groupby("origin"):
            assert list(g["step"]) == list(range(1, H + 1))
        q = rows[CONTRACT[4:]].to_numpy()
        assert np.all(np.diff(q, axis=1) >= -1e-9)
    doc = json.loads(metrics.read_text())
    (ref,) = doc["summary"]
    assert ref["model"] == "seasonal_naive" and ref["wql_ratio"] == 1.0 and ref["mase_ratio"] == 1.0
    assert ref["n_targets"] == 2 * W * H
    assert "seasonal_naive" in capsys.readouterr().out


def test_score_form_scores_other_files(data, tmp_path, capsys):
    path, truth = data
    out = tmp_path / "F.csv"
    assert cli(["eval", str(path), "-H", str(H), "-W", str(W), "-o", str(out), "--model", "none"]) == 0
    naive = pd.read_csv(sibling_path(out, "seasonal_naive"), dtype={"origin": str})
    worse = naive.copy()
    cols = CONTRACT[3:]
    worse[cols] = worse[cols] + 5.0  # a biased forecast must score worse
    worse_path = tmp_path / "other.csv"
    worse.to_csv(worse_path, index=False)
    metrics = tmp_path / "s.csv"
    assert cli(["eval", "score", str(sibling_path(out, "seasonal_naive")), str(worse_path), str(path),
                "--metrics", str(metrics)]) == 0
    summary = pd.read_csv(metrics).set_index("model")
    assert summary.loc["seasonal_naive", "wql_ratio"] == 1.0
    # The re-read seasonal naive file (10 significant digits) scores 1 against the reference.
    assert summary.loc["seasonal_naive", "wql_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert summary.loc["other", "wql_ratio"] > 1.05 and summary.loc["other", "mase_ratio"] > 1.05
    per_series = pd.read_csv(sibling_path(metrics, "per_series"))
    assert set(per_series["series_id"]) == set(truth)

    broken = naive.drop(columns=["q0.9"])
    broken.to_csv(tmp_path / "broken.csv", index=False)
    capsys.readouterr()
    assert cli(["eval", "score", str(tmp_path / "broken.csv"), str(path)]) == 1
    assert "missing column(s) q0.9" in capsys.readouterr().err
    off = naive.copy()
    off.loc[0, "origin"] = "2024-03-29T00:03:00"
    off.to_csv(tmp_path / "off.csv", index=False)
    assert cli(["eval", "score", str(tmp_path / "off.csv"), str(path)]) == 1
    assert "is not a timestamp of the series' grid" in capsys.readouterr().err


def test_autoets_and_fracast_baselines_on_a_tiny_input(data, tmp_path):
    path, _ = data
    out = tmp_path / "F.csv"
    assert cli(["eval", str(path), "-H", str(H), "-W", "2", "-o", str(out), "--model", "none",
                "--baselines", "seasonal_naive,autoets,fracast", "--jobs", "1"]) == 0
    for name in ("autoets", "fracast"):
        table = pd.read_csv(sibling_path(out, name))
        assert list(table.columns) == CONTRACT and len(table) == 2 * 2 * H
        q = table[CONTRACT[4:]].to_numpy()
        assert np.isfinite(q).all() and np.all(np.diff(q, axis=1) >= -1e-9)
        # Both actually forecast the seasonal series (not the wild guess of a broken wiring).
        assert table["mean"].between(-50, 250).all()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from streamflame.model import Forecaster, tiny_config

    f = Forecaster.from_config(tiny_config(), seed=0)
    return f, f.save(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_model_streams_each_series_once_like_a_fresh_recompute(tiny_checkpoint, data):
    f, _ = tiny_checkpoint
    path, _ = data
    series = {s.series_id: s for s in load_table(path)}["site/load"]
    adapter = StreamFlameAdapter(f, num_samples=20, seed=7)
    lengths = window_lengths(len(series), H, 3, 48)
    assert lengths[0] % f.config.patch_len != 0  # origins inside a patch: forecast from the partial buffer
    mean, quantiles = adapter.forecast_series(series, lengths, H)
    assert mean.shape == (3, H) and quantiles.shape == (3, len(QUANTILES), H)
    from streamflame.messages import forecast_seed

    for k, length in enumerate(lengths):
        state = f.state_from_history(series.values[:length], step_seconds=series.step_seconds)
        assert state.n_obs == length
        fc = f.forecast(state, H, quantiles=QUANTILES, num_samples=20, seed=forecast_seed(7, series.series_id, length))
        np.testing.assert_allclose(mean[k], fc.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(quantiles[k], fc.quantiles, rtol=1e-5, atol=1e-6)


def test_model_checkpoint_plugs_into_the_command(tiny_checkpoint, data, tmp_path):
    _, ckpt = tiny_checkpoint
    path, _ = data
    out = tmp_path / "F.csv"
    metrics = tmp_path / "m.json"
    assert cli(["eval", str(path), "-H", str(H), "-W", "2", "-o", str(out), "--model", str(ckpt),
                "--num-samples", "20", "--metrics", str(metrics)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == CONTRACT and len(table) == 2 * 2 * H
    assert np.isfinite(table[CONTRACT[3:]].to_numpy()).all()
    models = [r["model"] for r in json.loads(metrics.read_text())["summary"]]
    assert models == ["seasonal_naive", "streamflame"]
    # A horizon beyond the model's max_horizon is refused up front.
    with pytest.raises(ValueError, match="max_horizon"):
        cli(["eval", str(path), "-H", "500", "-W", "1", "-o", str(out), "--model", str(ckpt)])


def test_scale_option_sets_every_series_state_scale(data, tmp_path):
    """``--scale`` is init_state's sampling-rate scale for every series: the command's forecasts
    equal the API's with that scale, differ from scale 1's, and a scale <= 0 is refused."""
    import torch

    from streamflame.model import Forecaster, tiny_config
    f = Forecaster.from_config(tiny_config(), seed=0)
    with torch.no_grad():          # the untrained flow ignores its condition (zero-initialised maps): wake it
        g = torch.Generator().manual_seed(0)
        for prm in f.model.flow.parameters():
            prm.add_(0.05 * torch.randn(prm.shape, generator=g))
    ckpt = f.save(tmp_path / "woken")
    path, _ = data
    out = {}
    for s in ("1", "3"):
        out[s] = tmp_path / f"F{s}.csv"
        assert cli(["eval", str(path), "-H", str(H), "-W", "1", "-o", str(out[s]), "--model", str(ckpt),
                    "--num-samples", "20", "--baselines", "none", "--scale", s]) == 0
    one, three = pd.read_csv(out["1"]), pd.read_csv(out["3"])
    assert not np.allclose(one["mean"], three["mean"])
    series = {x.series_id: x for x in load_table(path)}["site/load"]
    got = StreamFlameAdapter(f, num_samples=20, seed=0, scale=3.0).forecast_series(
        series, window_lengths(len(series), H, 1, 96), H)[0]
    np.testing.assert_allclose(three[three.series_id == "site/load"]["mean"], got[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(SystemExit, match="scale"):
        cli(["eval", str(path), "-H", str(H), "-W", "1", "-o", str(out["1"]), "--model", str(ckpt), "--scale", "0"])


def test_score_names_files_that_share_a_tag_by_their_own_names():
    """`eval score` names a file by its sibling tag (F.autoets.csv -> autoets); files whose tags
    collide (every run's F.fc.csv) are named by their own names, then with their folders."""
    from streamflame.eval.run import model_names
    assert model_names(["a/F.csv", "a/F.autoets.csv"]) == ["F", "autoets"]
    assert model_names(["e/val_row13_h48.fc.csv", "e/val_row14_t0.9.fc.csv", "e/x.autoets.csv"]) == [
        "val_row13_h48.fc", "val_row14_t0.9.fc", "autoets"]
    assert model_names(["a/m.fc.csv", "b/m.fc.csv"]) == ["a/m.fc", "b/m.fc"]
    assert model_names(["a/m.fc.csv", "a/m.fc.csv"]) == ["a/m.fc", "a/m.fc_"]


def test_sibling_paths_keep_dots_inside_the_name():
    """A baseline's forecasts and the per-series scores go beside the given file, the tag before
    its extension-like suffixes only: a dot inside the name (a temperature, a version) stays."""
    cases = {"runs/fc.csv": "runs/fc.fracast.csv",
             "runs/eval/seas_h48.metrics.csv": "runs/eval/seas_h48.fracast.metrics.csv",
             "runs/eval/temp0.9_h48.metrics.csv": "runs/eval/temp0.9_h48.fracast.metrics.csv",
             "fc-v1.2.csv": "fc-v1.2.fracast.csv",
             "fc.parquet": "fc.fracast.parquet",
             "fc": "fc.fracast.csv"}
    for given, want in cases.items():
        assert sibling_path(Path(given), "fracast") == Path(want), given
