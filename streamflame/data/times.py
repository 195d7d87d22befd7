"""pandas times as integers, whatever resolution pandas stores them in: the one place for it.

pandas 3 parses text to microseconds, pandas 2 to nanoseconds, Parquet keeps the file's unit,
and ``DatetimeIndex.asi8`` counts in the index's own unit. Every integer view of a time or a
step goes through these functions, which convert to the unit they name first.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

_NS = pd.Timedelta(1, "ns")


def epoch_ns(times) -> np.ndarray:
    """int64 nanoseconds since the epoch (UTC instants for tz-aware times; naive times as they are)."""
    return pd.DatetimeIndex(times).as_unit("ns").asi8


def epoch_ms(times) -> np.ndarray:
    """int64 milliseconds since the epoch (floor), as the observation messages carry them."""
    return epoch_ns(times) // 1_000_000


def step_ns(step) -> int:
    """A fixed step (``"15min"``, a Timedelta, a Tick offset) in nanoseconds."""
    return int(pd.Timedelta(step) // _NS)


def timestamp_ns(ts) -> int:
    """One timestamp as nanoseconds since the epoch."""
    return int(epoch_ns([pd.Timestamp(ts)])[0])


def from_epoch_ns(ns, tz=None) -> pd.DatetimeIndex:
    """The inverse of :func:`epoch_ns`: nanoseconds (UTC when ``tz`` is given) to a DatetimeIndex."""
    idx = pd.DatetimeIndex(np.asarray(ns, dtype="datetime64[ns]"))
    return idx.tz_localize("UTC").tz_convert(tz) if tz is not None else idx
