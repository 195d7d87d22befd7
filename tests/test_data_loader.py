"""The CSV/Parquet loader: layouts, aliases, time zones, gaps, duplicates, errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streamflame.data.loader import DataError, load_table
from streamflame.data.series import Series, infer_freq, parse_freq, seasonality, to_grid


def _by_id(series: list[Series]) -> dict[str, Series]:
    return {s.series_id: s for s in series}


def test_long_csv_with_aliases_gaps_duplicates_and_off_grid(tmp_path):
    path = tmp_path / "obs.csv"
    pd.DataFrame({
        "Item_ID": ["a", "a", "a", "a", "a", "b", "b", "b"],
        "DS": ["2024-01-01 00:00", "2024-01-01 00:10", "2024-01-01 00:10", "2024-01-01 00:40",
               "2024-01-01 00:21", "2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 03:00"],
        "Target": [1.0, 2.0, 4.0, 7.0, 5.0, 10.0, 11.0, 13.0],
    }).to_csv(path, index=False)
    series = _by_id(load_table(path))
    a, b = series["a"], series["b"]
    assert a.freq == parse_freq("10min") and b.freq == parse_freq("h")
    assert a.start == pd.Timestamp("2024-01-01 00:00")
    # 00:10 duplicates averaged, 00:21 snapped to 00:20, 00:30 missing.
    np.testing.assert_array_equal(a.values, [1.0, 3.0, 5.0, np.nan, 7.0])
    np.testing.assert_array_equal(b.values, [10.0, 11.0, np.nan, 13.0])
    assert list(series) == ["a", "b"]  # order of first appearance


def test_wide_csv_one_series_per_column(tmp_path):
    path = tmp_path / "wide.csv"
    ts = pd.date_range("2024-03-01", periods=6, freq="15min")
    pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S"), "t1": np.arange(6.0),
                  "t2": [1.0, np.nan, 3.0, 4.0, 5.0, 6.0]}).to_csv(path, index=False)
    series = _by_id(load_table(path))
    assert set(series) == {"t1", "t2"}
    assert series["t1"].freq == parse_freq("15min")
    np.testing.assert_array_equal(series["t2"].values, [1.0, np.nan, 3.0, 4.0, 5.0, 6.0])
    assert list(series["t1"].timestamps()) == list(ts)


def test_time_and_value_only_is_one_series_named_after_the_file(tmp_path):
    path = tmp_path / "boiler_temp.csv"
    pd.DataFrame({"time": ["2024-01-01T00:00:00", "2024-01-01T00:05:00", "2024-01-01T00:10:00"],
                  "value": [1, 2, 3]}).to_csv(path, index=False)
    (s,) = load_table(path)
    assert s.series_id == "boiler_temp" and s.freq == parse_freq("5min")


def test_parquet_keeps_time_zone(tmp_path):
    path = tmp_path / "obs.parquet"
    ts = pd.date_range("2024-03-30 22:00", periods=8, freq="h", tz="Europe/Berlin")  # crosses DST
    pd.DataFrame({"series_id": "x", "timestamp": ts, "value": np.arange(8.0)}).to_parquet(path)
    (s,) = load_table(path)
    assert str(s.tz) == "Europe/Berlin"
    assert list(s.timestamps()) == list(ts)
    np.testing.assert_array_equal(s.values, np.arange(8.0))


def test_offsets_in_strings_are_kept_and_tz_argument_localises(tmp_path):
    path = tmp_path / "obs.csv"
    pd.DataFrame({"series_id": "x", "timestamp": ["2024-01-01T00:00:00+05:30", "2024-01-01T01:00:00+05:30",
                                                  "2024-01-01T02:00:00+05:30"], "value": [1, 2, 3]}).to_csv(path, index=False)
    (s,) = load_table(path)
    assert s.start.utcoffset() == pd.Timedelta("5h30min")
    assert s.start.strftime("%H:%M") == "00:00"

    naive = tmp_path / "naive.csv"
    pd.DataFrame({"series_id": "x", "timestamp": ["2024-01-01 00:00", "2024-01-01 01:00"],
                  "value": [1, 2]}).to_csv(naive, index=False)
    (s,) = load_table(naive, tz="America/New_York")
    assert str(s.tz) == "America/New_York" and s.start.hour == 0


def test_mixed_offsets_become_one_zone(tmp_path):
    path = tmp_path / "dst.csv"
    pd.DataFrame({"series_id": "x", "timestamp": ["2024-03-31T01:00:00+01:00", "2024-03-31T03:00:00+02:00",
                                                  "2024-03-31T04:00:00+02:00"], "value": [1, 2, 3]}).to_csv(path, index=False)
    (s,) = load_table(path)
    np.testing.assert_array_equal(s.values, [1, 2, 3])  # 00:00, 01:00, 02:00 UTC: regular
    # A DST zone consistent with both offsets is found, so local times are the input's.
    assert "/" in str(s.tz)
    assert [t.strftime("%H:%M%z") for t in s.timestamps()] == ["01:00+0100", "03:00+0200", "04:00+0200"]
    (utc,) = load_table(path, tz="UTC")
    assert [t.strftime("%H:%M") for t in utc.timestamps()] == ["00:00", "01:00", "02:00"]


def test_epoch_milliseconds_and_seconds(tmp_path):
    ms = 1_700_000_000_000 + 60_000 * np.arange(4)
    p1, p2 = tmp_path / "ms.csv", tmp_path / "s.csv"
    pd.DataFrame({"series_id": "x", "timestamp": ms, "value": [1, 2, 3, 4]}).to_csv(p1, index=False)
    pd.DataFrame({"series_id": "x", "timestamp": ms // 1000, "value": [1, 2, 3, 4]}).to_csv(p2, index=False)
    (a,), (b,) = load_table(p1), load_table(p2)
    assert a.start == b.start == pd.Timestamp(1_700_000_000_000, unit="ms", tz="UTC")
    assert a.freq == parse_freq("1min")


def test_freq_argument_overrides_inference(tmp_path):
    path = tmp_path / "obs.csv"
    pd.DataFrame({"series_id": "x", "timestamp": ["2024-01-01 00:00", "2024-01-01 00:30", "2024-01-01 01:00"],
                  "value": [1, 2, 3]}).to_csv(path, index=False)
    (s,) = load_table(path, freq="10min")
    assert len(s) == 7 and np.count_nonzero(~np.isnan(s.values)) == 3


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"series_id": ["a"], "when": ["2024-01-01"], "value": [1]}), "no time column"),
    (pd.DataFrame({"series_id": ["a", "a"], "timestamp": ["2024-01-01", "2024-01-02"], "reading": [1, 2]}),
     "has no value column"),
    (pd.DataFrame({"series_id": ["a", "a"], "timestamp": ["2024-01-01", "yesterday-ish"], "value": [1, 2]}),
     "cannot parse timestamp 'yesterday-ish'"),
    (pd.DataFrame({"series_id": ["a", "a"], "timestamp": ["2024-01-01", "2024-01-02"], "value": [1, "hot"]}),
     "non-numeric value 'hot' at row 1"),
    (pd.DataFrame({"series_id": ["a"], "timestamp": ["2024-01-01"], "value": [1]}), "fewer than 2 distinct timestamps"),
])
def test_bad_input_names_file_and_column(tmp_path, frame, message):
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        load_table(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_table(tmp_path / "absent.csv")
    other = tmp_path / "data.json"
    other.write_text("{}")
    with pytest.raises(DataError, match="unsupported file type"):
        load_table(other)


def test_infer_freq_regular_with_gaps_jitter_and_calendar():
    base = pd.Timestamp("2024-01-01")
    gaps = pd.DatetimeIndex([base + pd.Timedelta(minutes=m) for m in (0, 5, 10, 25, 30, 50)])
    assert infer_freq(gaps) == parse_freq("5min")
    rng = np.random.default_rng(0)
    jitter = pd.DatetimeIndex([base + pd.Timedelta(minutes=30 * k, seconds=int(s))
                               for k, s in enumerate(rng.integers(-90, 90, 50))])
    assert infer_freq(jitter) == parse_freq("30min")
    months = pd.date_range("2020-01-01", periods=12, freq="MS").delete([3, 7])
    assert infer_freq(months) == parse_freq("MS")


def test_to_grid_jittered_clock_lands_on_round_times():
    times = pd.DatetimeIndex(["2016-10-04 07:59:42", "2016-10-04 08:30:15", "2016-10-04 08:59:48",
                              "2016-10-04 10:01:02"])
    start, freq, values = to_grid(times, np.array([1.0, 2.0, 3.0, 4.0]), parse_freq("30min"))
    assert start == pd.Timestamp("2016-10-04 08:00") and freq == parse_freq("30min")
    np.testing.assert_array_equal(values, [1.0, 2.0, 3.0, np.nan, 4.0])


@pytest.mark.parametrize("freq, expected", [
    ("1min", 1440), ("5min", 288), ("10min", 144), ("15min", 96), ("30min", 48), ("h", 24), ("2h", 12),
    ("D", 1), ("W", 1), ("MS", 12), ("QS", 4), ("7min", 1), ("30s", 120),
])
def test_seasonality_follows_the_gluonts_table(freq, expected):
    assert seasonality(freq) == expected


def test_each_series_keeps_its_own_zone_in_one_long_file(tmp_path):
    berlin = pd.date_range("2024-03-31 00:00", periods=5, freq="h", tz="Europe/Berlin")  # DST switch
    texts = [t.isoformat() for t in berlin]
    path = tmp_path / "zones.csv"
    pd.DataFrame({"series_id": ["dst"] * 5 + ["plain"] * 3,
                  "timestamp": texts + ["2024-03-31T00:00:00", "2024-03-31T01:00:00", "2024-03-31T02:00:00"],
                  "value": np.arange(8.0)}).to_csv(path, index=False)
    series = _by_id(load_table(path))
    assert [t.isoformat() for t in series["dst"].timestamps()] == texts
    assert series["plain"].tz is None
    assert [t.strftime("%H:%M") for t in series["plain"].timestamps()] == ["00:00", "01:00", "02:00"]
