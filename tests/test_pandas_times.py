"""Times stay right whatever resolution pandas stores them in.

pandas 3 parses text to microseconds (pandas 2: nanoseconds); Parquet files and
``as_unit`` give seconds or milliseconds. Code that reads ``.asi8`` as nanoseconds
computes times 1,000x too small there (issue 19: ``streamflame eval`` on a 15-minute CSV
failed with "origin '1970-01-20T03:47:22' is not a timestamp of the series' grid").
Here every resolution is fed explicitly, so these tests fail on such code under pandas 2
too. `bash scripts/sf test` also runs this file in a plain `pip install .` environment
(no extras) with the newest pandas: the command-line tests below then run that
environment's installed `streamflame` command.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
import subprocess

import numpy as np
import pandas as pd
import pytest
from pandas.tseries.frequencies import to_offset

from streamflame import SeriesForecaster
from streamflame.data.loader import load_table, parse_timestamps
from streamflame.data.series import infer_freq, to_grid
from streamflame.model import Forecaster, tiny_config

UNITS = ("s", "ms", "us", "ns")
T0 = pd.Timestamp("2024-01-18 22:15:00")
STEP = pd.Timedelta("15min")


def grid(n: int, unit: str, start=T0, tz=None) -> pd.DatetimeIndex:
    t = pd.date_range(start, periods=n, freq=STEP).as_unit(unit)
    return t.tz_localize(tz) if tz else t


@pytest.mark.parametrize("unit", UNITS)
def test_grid_and_frequency_inference_in_every_resolution(unit):
    t = grid(300, unit)
    rng = np.random.default_rng(0)
    v = rng.normal(size=300)
    start, freq, values = to_grid(t, v)
    assert (start, freq) == (T0, to_offset("15min"))
    np.testing.assert_array_equal(values, v)
    gappy = t.delete([3, 4, 5, 100])                       # regular apart from gaps: the mode path
    assert infer_freq(gappy) == to_offset("15min")
    start, _, values = to_grid(gappy, np.delete(v, [3, 4, 5, 100]))
    assert start == T0 and len(values) == 300 and np.isnan(values[[3, 4, 5, 100]]).all()
    jitter = pd.to_timedelta(rng.integers(-20, 20, 300), unit="s")
    jittered = pd.DatetimeIndex(t + jitter).as_unit(unit)  # a jittered clock: the median path, snapped
    assert infer_freq(jittered) == to_offset("15min")
    start, freq, values = to_grid(jittered, v)
    assert (start, freq, len(values)) == (T0, to_offset("15min"), 300)


@pytest.mark.parametrize("unit", ("s", "ms", "us"))
def test_loader_reads_parquet_times_of_any_resolution(tmp_path, unit):
    t = grid(200, unit, tz="Europe/Berlin")
    df = pd.DataFrame({"series_id": "kitchen", "timestamp": t, "value": np.arange(200.0)})
    df.to_parquet(tmp_path / "d.parquet")
    (s,) = load_table(tmp_path / "d.parquet")
    assert s.start == t[0] and s.freq == to_offset("15min") and len(s) == 200
    assert s.freq_ms == 900_000
    assert list(s.timestamps()) == list(t)


def test_mixed_utc_offsets_find_their_zone_in_every_resolution():
    t = pd.date_range("2024-03-30 12:00", periods=96, freq="30min", tz="Europe/Berlin")   # DST change
    text = pd.Series(t.strftime("%Y-%m-%dT%H:%M:%S%z")).str.replace(r"(\d\d)(\d\d)$", r"\1:\2", regex=True)
    idx = parse_timestamps(text, where="test")
    assert str(idx.tz) == "Europe/Berlin" and list(idx) == list(t)


@pytest.mark.parametrize("unit", UNITS)
def test_series_forecaster_times_in_every_resolution(unit):
    f = Forecaster.from_config(tiny_config(), seed=0)
    sf = SeriesForecaster(f)
    t = grid(150, unit, tz="UTC")
    v = 20 + np.sin(np.arange(150) / 7)
    sf.update_df(pd.DataFrame({"series_id": "a", "timestamp": t[:100], "value": v[:100]}))
    # Streaming: newer rows (one late row, one gap) in another resolution.
    later = pd.DatetimeIndex(t[[99, 100, 101, 103]]).as_unit("ns" if unit != "ns" else "s")
    with pytest.warns(UserWarning, match="dropped observations"):
        sf.update_df(pd.DataFrame({"series_id": "a", "timestamp": later, "value": v[[99, 100, 101, 103]]}))
    fc = sf.predict_df(horizon=5, quantiles=[0.5])
    assert list(fc["timestamp"]) == list(t[104:109])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """This environment's installed `streamflame` command, outside the repository (in the
    plain-install environment it imports the installed package, not the working tree)."""
    exe = Path(sys.executable).with_name("streamflame")
    assert exe.is_file(), f"no streamflame command next to {sys.executable}"
    p = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def write_15min_csv(path: Path, n: int = 400) -> pd.DataFrame:
    """Two series of naive 15-minute text timestamps (the issue's case), one with a gap."""
    rng = np.random.default_rng(1)
    frames = []
    for i, sid in enumerate(("sensors.temp.kitchen", "sensors.temp.garage")):
        t = grid(n, "ns", start=T0 + i * STEP)
        v = 20 + 3 * np.sin(2 * np.pi * np.arange(n) / 96) + rng.normal(0, 0.2, n)
        df = pd.DataFrame({"series_id": sid, "timestamp": t.strftime("%Y-%m-%d %H:%M:%S"), "value": v})
        frames.append(df.drop(index=range(50, 60)) if i else df)
    df = pd.concat(frames, ignore_index=True)
    df.to_csv(path, index=False)
    return df


def test_eval_command_on_a_15_minute_csv(tmp_path):
    data = write_15min_csv(tmp_path / "d.csv")
    out, metrics = tmp_path / "F.csv", tmp_path / "m.json"
    p = _cli("eval", str(tmp_path / "d.csv"), "-H", "24", "-W", "2", "-o", str(out), "--model", "default",
             "--num-samples", "20", "--metrics", str(metrics), cwd=tmp_path)
    table = pd.read_csv(out, dtype={"origin": str})
    for sid, rows in table.groupby("series_id"):
        stamps = pd.to_datetime(data.loc[data.series_id == sid, "timestamp"])
        n = len(pd.date_range(stamps.min(), stamps.max(), freq=STEP))
        want = [(stamps.min() + (n - w * 24 - 1) * STEP).strftime("%Y-%m-%dT%H:%M:%S") for w in (2, 1)]
        assert list(dict.fromkeys(rows["origin"])) == want, p.stderr
    doc = json.loads(metrics.read_text())
    assert {r["model"] for r in doc["summary"]} == {"streamflame", "seasonal_naive"}
    _cli("eval", "score", str(out), str(tmp_path / "d.csv"), cwd=tmp_path)


def test_replay_command_sends_the_csv_times(service_config, tmp_path):
    from streamflame.config import dump_yaml
    from test_cli_tools import epoch_ms, observations

    data = write_15min_csv(tmp_path / "d.csv", n=120)
    conf = tmp_path / "c.yaml"
    conf.write_text(dump_yaml(service_config.effective(mask_secrets=False)))
    _cli("replay", str(tmp_path / "d.csv"), "--config", str(conf), "--batch", "48", "--no-progress", cwd=tmp_path)
    got = observations(service_config, 6)
    sent: dict[str, list[int]] = {}
    for key, _, msgs in got:
        sent.setdefault(key, []).extend(o.timestamp_ms for o in msgs)
    for sid, rows in data.groupby("series_id"):
        assert sent[sid] == epoch_ms(pd.to_datetime(rows["timestamp"]))   # naive times are taken as UTC
