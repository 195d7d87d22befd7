"""Grid steps and quantile levels as text: ``"10min"`` <-> 600000 ms, 0.1 -> ``"0.1"``."""
from __future__ import annotations

import functools
import re

_UNIT_MS = {
    "ms": 1, "l": 1,
    "s": 1000, "sec": 1000,
    "min": 60_000, "t": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
}
_FREQ_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)?\s*([a-zA-Z]+)\s*$")
_ISO_DURATION_RE = re.compile(
    r"^P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_frequency(text: str) -> int:
    """A grid step as integer milliseconds.

    Accepts ``<number><unit>`` with unit ms, s, min, h, d, w (case-insensitive;
    pandas aliases T = min, L = ms; a bare unit means 1) or an ISO-8601 duration
    without years/months (``PT15M``, ``P1D``, ``PT1H30M``). Raises ValueError for
    anything else, for zero, and for steps that are not a whole number of ms.
    """
    if not isinstance(text, str):
        raise ValueError(f"frequency must be a string such as '10min' or 'PT10M', got {type(text).__name__}")
    s = text.strip()
    ms: float
    if s[:1].upper() == "P":
        m = _ISO_DURATION_RE.match(s.upper())
        if not m or s.upper() in ("P", "PT") or s.upper().endswith("T"):
            raise ValueError(f"{text!r} is not an ISO-8601 duration with fixed length (years and months are not allowed)")
        parts = {k: float(v) for k, v in m.groupdict().items() if v}
        ms = (parts.get("w", 0) * 7 * 86400 + parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600
              + parts.get("m", 0) * 60 + parts.get("s", 0)) * 1000
    else:
        m = _FREQ_RE.match(s)
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNIT_MS:
            raise ValueError(f"{text!r} is not a frequency; use e.g. '500ms', '1s', '10min', '1h', '1d' or 'PT15M'")
        ms = float(m.group(1) or 1) * _UNIT_MS[unit]
    if ms <= 0:
        raise ValueError(f"frequency {text!r} must be positive")
    if ms != int(ms):
        raise ValueError(f"frequency {text!r} is not a whole number of milliseconds")
    return int(ms)


def format_frequency(ms: int) -> str:
    """Integer ms -> the shortest exact string: 600000 -> "10min", 5400000 -> "90min"."""
    ms = int(ms)
    if ms <= 0:
        raise ValueError(f"frequency must be positive, got {ms} ms")
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@functools.lru_cache(maxsize=4096)
def format_level(q: float) -> str:
    """Quantile level -> its key in ``quantiles``: 0.1 -> "0.1", 0.05 -> "0.05", 0.975 -> "0.975".

    Rounded to 6 decimals so float32 levels and 0.1+0.2 style noise map to the
    same key (the config refuses levels that differ only beyond 6 decimals).
    """
    s = f"{round(float(q), 6):.6f}".rstrip("0")
    return s + "0" if s.endswith(".") else s
