"""Timestamps: ISO-8601 / epoch milliseconds in (:func:`to_epoch_ms`), ISO-8601 out (:func:`iso_ms`)."""
from __future__ import annotations

import functools
import numbers
from datetime import datetime, timedelta, timezone
from typing import Any

# Datetime range Python can represent: 0001-01-01 .. 9999-12-31T23:59:59.999Z.
MIN_EPOCH_MS = -62_135_596_800_000
MAX_EPOCH_MS = 253_402_300_799_999


def to_epoch_ms(x: Any) -> int:
    """Convert a timestamp to integer epoch milliseconds (UTC).

    Accepts an ISO-8601 string (``2024-01-01T00:00:00Z``, ``...+02:00``,
    fractional seconds, date only; a string without offset is UTC) or a number
    of epoch *milliseconds* (int, or float rounded to the nearest ms; numpy
    scalars too). Booleans, numeric strings, NaN/inf and instants outside years
    1..9999 raise ValueError.
    """
    t = type(x)
    if t is str:
        try:
            dt = datetime.fromisoformat(x)
        except ValueError:
            raise ValueError(f"{x[:64]!r} is not an ISO-8601 timestamp") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        try:
            delta = dt - _EPOCH
        except OverflowError:  # e.g. 0001-01-01T00:00:00+05:00
            raise ValueError(f"{x[:64]!r} is outside years 1..9999") from None
        # Exact integer arithmetic (no float rounding of the microseconds).
        ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    elif t is int:
        ms = x
    elif t is float:
        if x - x != 0.0:
            raise ValueError(f"timestamp {x!r} is not finite")
        ms = round(x)
    elif isinstance(x, bool) or not isinstance(x, (numbers.Integral, numbers.Real)):
        raise ValueError(f"timestamp must be an ISO-8601 string or epoch milliseconds, got {json_type_name(x)}")
    else:  # numpy scalars and other number types
        return to_epoch_ms(int(x) if isinstance(x, numbers.Integral) else float(x))
    if not MIN_EPOCH_MS <= ms <= MAX_EPOCH_MS:
        raise ValueError(f"timestamp {x!r} is outside years 1..9999")
    return ms


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def iso_ms(ms: int) -> str:
    """Epoch ms -> ISO-8601 UTC with a ``Z``; milliseconds only when non-zero.

    ``iso_ms(1704067200000) == "2024-01-01T00:00:00Z"``,
    ``iso_ms(1704067200123) == "2024-01-01T00:00:00.123Z"``.

    Never raises for an int: an instant outside years 1..9999 (a forecast step
    after an observation near 9999-12-31, say) is written in the ISO-8601
    expanded form with a sign and at least 5 year digits (``+10000-01-01T00:00:00Z``,
    ``-0001-12-31T00:00:00Z``, proleptic Gregorian; year 0 is 1 BC).
    """
    ms = int(ms)
    milli = ms % 1000
    if MIN_EPOCH_MS <= ms <= MAX_EPOCH_MS:
        day, rest = divmod(ms // 1000, 86_400)
        hh, rest = divmod(rest, 3600)
        mm, ss = divmod(rest, 60)
        base = f"{_iso_day(day)}T{hh:02d}:{mm:02d}:{ss:02d}"
    else:
        days, rest = divmod(ms // 1000, 86_400)
        y, m, dd = _civil_from_days(days)
        hh, rest = divmod(rest, 3600)
        mm, ss = divmod(rest, 60)
        year = f"+{y:05d}" if y > 9999 else f"-{-y:04d}" if y < 0 else f"{y:04d}"
        base = f"{year}-{m:02d}-{dd:02d}T{hh:02d}:{mm:02d}:{ss:02d}"
    return f"{base}.{milli:03d}Z" if milli else f"{base}Z"


@functools.lru_cache(maxsize=4096)
def _iso_day(days: int) -> str:
    """YYYY-MM-DD of a day number since 1970-01-01 (years 1..9999)."""
    d = _EPOCH + timedelta(days=days)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"


def _civil_from_days(z: int) -> tuple[int, int, int]:
    """Days since 1970-01-01 -> proleptic Gregorian (year, month, day), any int
    (H. Hinnant's ``civil_from_days``)."""
    z += 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


def json_type_name(x: Any) -> str:
    """The JSON name of a decoded value's type (for error messages): null, boolean, number, ..."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "boolean"
    if isinstance(x, (int, float)):
        return "number"
    if isinstance(x, str):
        return "string"
    if isinstance(x, list):
        return "array"
    if isinstance(x, dict):
        return "object"
    return type(x).__name__
