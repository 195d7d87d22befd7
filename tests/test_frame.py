"""SeriesForecaster: many series in memory, DataFrames in and out; equal to the
single-series Forecaster calls; gaps, unsorted input, streaming; the README example."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import streamflame

from streamflame import Forecaster, SeriesForecaster
from streamflame.messages import forecast_seed
from streamflame.model import tiny_config

STEP = pd.Timedelta("10min")
LEVELS = (0.1, 0.5, 0.9)


@pytest.fixture(scope="module")
def f() -> Forecaster:
    return Forecaster.from_config(tiny_config(), seed=3)


def make_data(seed: int = 0):
    """Three series with their own start, length, missing values and dropped rows.
    Returns (long DataFrame, {sid: (start, reference grid values with NaN)})."""
    rng = np.random.default_rng(seed)
    rows, ref = [], {}
    for i, (n, phase) in enumerate([(260, 0), (131, 3), (97, 7)]):
        sid = f"site-{i}/flow"
        start = pd.Timestamp("2024-03-01") + phase * STEP
        v = 20 + 5 * np.sin(np.arange(n) / (6 + i)) + rng.normal(0, 0.5, n)
        v[rng.random(n) < 0.05] = np.nan                   # explicit missing values
        keep = rng.random(n) > 0.1                          # dropped rows: gaps on the grid
        keep[0] = keep[-1] = True
        grid = np.where(keep, v, np.nan)
        ref[sid] = (start, grid)
        t = start + STEP * np.arange(n)
        rows.append(pd.DataFrame({"series_id": sid, "timestamp": t[keep], "value": v[keep]}))
    df = pd.concat(rows, ignore_index=True)
    return df, ref


def reference(f: Forecaster, sid: str, values: np.ndarray, horizon: int, seed: int = 0):
    """Single-series calls: one `update` per patch, the rest buffered, one `forecast`."""
    s = f.init_state()
    p = f.config.patch_len
    n_full = len(values) // p
    for k in range(n_full):
        s = f.update(s, values[k * p:(k + 1) * p])
    s = f.update(s, values[n_full * p:])
    return f.forecast(s, horizon, LEVELS, 50, seed=forecast_seed(seed, sid, len(values)))


def test_predict_df_equals_single_series_calls_streaming_unsorted_gaps(f, monkeypatch):
    df, ref = make_data()
    calls = {"update_many": [], "forecast_many": 0}
    real_um, real_fm = f.update_many, f.forecast_many
    monkeypatch.setattr(f, "update_many", lambda states, patches: calls["update_many"].append(len(states))
                        or real_um(states, patches))
    monkeypatch.setattr(f, "forecast_many", lambda *a, **k: calls.__setitem__("forecast_many", calls["forecast_many"] + 1)
                        or real_fm(*a, **k))
    sf = SeriesForecaster(f)
    # Streaming: three calls split by time, each shuffled (unsorted input).
    cut1, cut2 = pd.Timestamp("2024-03-01 09:00"), pd.Timestamp("2024-03-01 20:00")
    chunks = [df[df.timestamp < cut1], df[(df.timestamp >= cut1) & (df.timestamp < cut2)], df[df.timestamp >= cut2]]
    for c in chunks:
        sf.update_df(c.sample(frac=1.0, random_state=1))
    out = sf.predict_df(30, LEVELS, num_samples=50)

    assert list(out.columns) == ["series_id", "timestamp", "mean", "0.1", "0.5", "0.9"]
    assert sorted(out.series_id.unique()) == sorted(ref)
    # Patches were applied in batches: 260 grid points -> 5 rounds, the first ones for all three series.
    assert sum(calls["update_many"]) == 260 // 48 + 131 // 48 + 97 // 48 and max(calls["update_many"]) == 3
    assert calls["forecast_many"] == 1
    for sid, (start, grid) in ref.items():
        fc = reference(f, sid, grid, 30)
        got = out[out.series_id == sid]
        np.testing.assert_array_equal(got["mean"].to_numpy(), fc.mean.astype(np.float64))
        for j, q in enumerate(LEVELS):
            np.testing.assert_array_equal(got[str(q)].to_numpy(), fc.quantiles[j].astype(np.float64))
        expected_ts = start + STEP * np.arange(len(grid), len(grid) + 30)
        assert list(got.timestamp) == list(expected_ts)

    # The same numbers as feeding everything at once in time order (parallel scan: float precision).
    one = SeriesForecaster(Forecaster.from_config(tiny_config(), seed=3)).update_df(df).predict_df(30, LEVELS, num_samples=50)
    one, srt = (x.sort_values(["series_id", "timestamp"]) for x in (one, out))
    assert list(one.timestamp) == list(srt.timestamp)
    np.testing.assert_allclose(one["mean"].to_numpy(), srt["mean"].to_numpy(), rtol=1e-5, atol=1e-5)

    # Later observations: the series continue from where they were.
    sid, (start, grid) = next(iter(ref.items()))
    more_t = start + STEP * np.arange(len(grid) + 2, len(grid) + 60)      # two grid points missing first
    more_v = np.cos(np.arange(58) / 5)
    sf.update_df(pd.DataFrame({"series_id": sid, "timestamp": more_t, "value": more_v}))
    full = np.concatenate([grid, [np.nan, np.nan], more_v])
    got = sf.predict_df(12, LEVELS, num_samples=50, series_ids=[sid])
    fc = reference(f, sid, full, 12)
    np.testing.assert_array_equal(got["mean"].to_numpy(), fc.mean.astype(np.float64))
    assert got.timestamp.iloc[0] == start + STEP * len(full)


def test_late_rows_short_series_inference_and_time_zones(f):
    sf = SeriesForecaster(f)
    t = pd.date_range("2024-06-01T00:00:00+02:00", periods=100, freq="h")
    sf.update_df(pd.DataFrame({"id": "a", "ds": t.astype(str), "y": np.arange(100.0)}))   # other column spellings
    sf.update_df(pd.DataFrame({"series_id": ["b"], "timestamp": [t[0]], "value": [1.0]}))   # one row: step unknown yet
    assert sf.series_ids == ["a", "b"]
    with pytest.warns(UserWarning, match="fewer than 48 grid points"):
        out = sf.predict_df(5)
    assert set(out.series_id) == {"a"}
    assert out.timestamp.iloc[0] == t[-1] + pd.Timedelta("1h") and str(out.timestamp.iloc[0].tz) == "UTC+02:00"
    with pytest.warns(UserWarning, match=r"dropped observations .*'a': 2"):
        sf.update_df(pd.DataFrame({"series_id": "a", "timestamp": [t[10], t[99]], "value": [5.0, 6.0]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sf.predict_df(5, series_ids=["a"]).timestamp.iloc[0] == out.timestamp.iloc[0]  # nothing changed
    with pytest.raises(ValueError, match="series_id, timestamp and value"):
        sf.update_df(pd.DataFrame({"series_id": ["a"], "when": [1], "value": [1.0]}))
    with pytest.raises(KeyError, match="nope"):
        sf.predict_df(5, series_ids=["nope"])


def readme_python_block(marker: str = "SeriesForecaster") -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if marker in b]
    assert len(blocks) == 1, f"expected one README python block using {marker}, found {len(blocks)}"
    return blocks[0]


def test_readme_series_forecaster_example_runs():
    ns: dict = {}
    exec(compile(readme_python_block(), "README.md", "exec"), ns)
    fc = ns["fc"]
    assert isinstance(fc, pd.DataFrame) and list(fc.columns[:3]) == ["series_id", "timestamp", "mean"]
    assert set(fc.series_id) == {"pump-1", "pump-2"} and len(fc) == 2 * 24
    assert (fc["0.1"] <= fc["0.9"]).all()
    assert streamflame.SeriesForecaster is SeriesForecaster
