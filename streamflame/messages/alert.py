"""The alerts topic: per-point alerts (:class:`AlertMessage`, and how one is scored) and alert
episodes (:class:`AlertEpisode`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from streamflame.messages.codec import WireMessage, decode_as

def alert_score(value: float, lower: float, upper: float) -> tuple[str, float] | None:
    """Direction and score of ``value`` against the interval [lower, upper].

    Returns None inside the interval (bounds included), else ("above", (value -
    upper) / width) or ("below", (lower - value) / width) with width = upper -
    lower, floored at 1e-9 * max(1, |lower|, |upper|) so a collapsed interval
    still gives a finite score.
    """
    if lower <= value <= upper:
        return None
    width = max(upper - lower, 1e-9 * max(1.0, abs(lower), abs(upper)))
    if value > upper:
        return "above", (value - upper) / width
    return "below", (lower - value) / width


class AlertMessage(WireMessage):
    """An observation outside the interval of the forecast published before it
    (topic ``streamflame.alerts``, key = series_id)."""

    series_id: str
    timestamp: str = Field(description="ISO-8601 of the observation")
    timestamp_ms: int
    value: float
    lower: float = Field(description="forecast quantile at levels[0] for this step")
    upper: float = Field(description="forecast quantile at levels[1] for this step")
    levels: tuple[float, float]
    forecast_seq: int = Field(ge=0, description="seq of the forecast whose interval is broken")
    step: int = Field(ge=1, description="1-based step of that forecast")
    score: float = Field(ge=0, description="distance outside the interval in interval widths")
    direction: Literal["above", "below"]


class AlertEpisode(WireMessage):
    """An event of an alert episode (topic ``streamflame.alerts``, key = series_id),
    published by ingest as the observation that causes it is read
    (``streamflame.alerts.episodes``; docs/schemas.md)."""

    event: Literal["open", "update", "resolve"]
    alert_id: str = Field(description="<series_id>/<kind>/<started_ms>: the same for every event of an episode")
    series_id: str
    kind: Literal["deviation", "flatline", "dropout", "out_of_range"]
    timestamp: str = Field(description="ISO-8601 of the observation (grid slot) that caused the event")
    timestamp_ms: int
    started_at: str = Field(description="ISO-8601 of the first anomalous slot of the episode")
    started_ms: int
    severity: Literal["minor", "major", "critical"]
    score: float = Field(ge=0, description="how far past the opening threshold (>= 1 when it opened)")
    value: float | None = Field(description="the observation (null for a missing one)")
    expected: float | None = None
    p_value: float | None = Field(None, description="deviation: tail probability, adjusted over the windows")
    direction: Literal["above", "below"] | None = None
    observations: int = Field(ge=1, description="observations in the episode so far")
    group: str | None = None


def decode_alert(raw: bytes | str) -> AlertMessage:
    return decode_as(AlertMessage, raw)


def decode_alert_any(raw: bytes | str) -> "AlertMessage | AlertEpisode":
    """A record of ``streamflame.alerts``: an episode event (it has ``event``) or a
    worker's per-point alert."""
    if (b'"event"' if isinstance(raw, (bytes, bytearray)) else '"event"') in raw:
        return decode_as(AlertEpisode, raw)
    return decode_as(AlertMessage, raw)
