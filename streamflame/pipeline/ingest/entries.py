"""What the ingest poll loop hands to the assemblers, per series and in Kafka order: typed records.

A chunk is ``{series_id: [entry, ...]}``; an entry is either

* a :class:`FastRun`: consecutive single-observation records of the series on one partition that
  the fast path accepted (``{"series_id", "timestamp": int, "value": float}``, key known), or
* a :class:`DecodedRecord`: one record decoded by the full decoder
  (:func:`streamflame.messages.decode_observation_run`), single or batch form.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

from streamflame.messages import ObservationRun

@dataclass(slots=True)
class FastRun:
    """Consecutive fast-path records of one series on one partition (lists aligned by index)."""

    partition: int
    offsets: list[int] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)   # the kafka ConsumerRecords (key, value for dead letters)
    timestamps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


class DecodedRecord(NamedTuple):
    """One record through the full decoder."""

    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    run: ObservationRun
    ts_limit: int | None  # produce time + ingest.future_tolerance_ms; None = no limit


Entry = Union[FastRun, DecodedRecord]
