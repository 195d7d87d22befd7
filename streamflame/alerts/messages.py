"""Alert events -> ``streamflame.alerts`` records (the fields of messages.AlertEpisode, in order)."""
from __future__ import annotations

import math

import orjson

from streamflame.alerts.episodes import AlertEvent
from streamflame.core.timefmt import iso_ms

__all__ = ["encode_event", "alert_id"]


def alert_id(series_id: str, kind: str, started_ms: int) -> str:
    return f"{series_id}/{kind}/{started_ms}"


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def encode_event(ev: AlertEvent, series_id: str, group: str | None) -> bytes:
    return orjson.dumps({
        "event": ev.event, "alert_id": alert_id(series_id, ev.kind, ev.started_ms), "series_id": series_id,
        "kind": ev.kind, "timestamp": iso_ms(ev.timestamp_ms), "timestamp_ms": ev.timestamp_ms,
        "started_at": iso_ms(ev.started_ms), "started_ms": ev.started_ms, "severity": ev.severity,
        "score": round(ev.score, 4), "value": _num(ev.value), "expected": _num(ev.expected),
        "p_value": None if ev.p_value is None else float(f"{ev.p_value:.4g}"), "direction": ev.direction,
        "observations": ev.observations, "group": group,
    })
