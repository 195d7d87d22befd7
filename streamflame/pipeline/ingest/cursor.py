"""The ingest cursor: what ingest persists per series (position, open patch, alert state) and
reads back on a restart or a rebalance; :class:`ObsRef`, the reference to an observation's record it keeps."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from streamflame.core.timefmt import iso_ms

class ObsRef(NamedTuple):
    """Where an observation came from, so a rejection can quote the original
    record in the DLQ: its value bytes, key bytes and index inside a batch
    message (None for the single form)."""

    raw: bytes | None
    key: bytes | None
    index: int | None


class CursorDecodeError(ValueError):
    """A stored ingest cursor that cannot be decoded."""


@dataclass
class IngestCursor:
    """Persisted per-series assembly position (Redis ``sf:{sid}:ingest``).

    ``next_seq`` is the seq of the open patch (= patches emitted so far, counting
    all-missing ones). ``last_partition``/``last_offset`` locate the last
    observation the cursor covers (``last_index``: its index inside a batch
    message, 0 for the single form) and ``last_obs_ms``/``last_slot`` its time;
    observations at or before that position are skipped on resume. ``n_covered`` counts the
    observations covered (accepted ones, or buffered ones while the frequency is
    still being inferred); ``(next_seq, n_covered)`` is the version that a
    cursor write may never lower. ``open_slots``
    (``[[slot_in_patch, value], ...]``) and ``pending`` (inference buffer
    ``[[ts_ms, value, partition, offset, index, ref], ...]``) are only set when the
    open state was spilled; ``open_partition``/``open_first_offset`` then locate
    the first observation of the spilled open patch.
    """

    series_id: str
    freq_ms: int | None = None
    anchor_ms: int | None = None
    next_seq: int = 0
    last_slot: int | None = None
    last_obs_ms: int | None = None
    last_partition: int | None = None
    last_offset: int | None = None
    last_index: int = 0
    n_covered: int = 0
    open_slots: list | None = None
    open_partition: int | None = None
    open_first_offset: int | None = None
    open_last_offset: int | None = None
    pending: list | None = None
    alerts: list | None = None      # SeriesAlerts.to_list() after the last covered observation
    alerted: int | None = None      # key of the last published alert event (2 x slot, + 1 for a dropout by
    # silence); not in the JSON: its own field of the cursor's hash (ingest/cursors.py)

    @property
    def version(self) -> tuple[int, int]:
        """Order of cursors of one series: a write may never go below the stored one."""
        return (self.next_seq, self.n_covered)

    def to_json(self) -> bytes:
        d = {k: v for k, v in self.__dict__.items() if v is not None and k != "alerted"}
        if self.pending is not None:
            d["pending"] = [[t, v, p, o, i, _ref_to_json(r)] for t, v, p, o, i, r in self.pending]
        if self.last_obs_ms is not None:
            d["last_obs"] = iso_ms(self.last_obs_ms)  # for humans reading Redis
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes | str) -> "IngestCursor":
        try:
            d = orjson.loads(raw)
            d.pop("last_obs", None)
            c = cls(**d)
            if c.pending is not None:
                c.pending = [(t, v, p, o, i, _ref_from_json(r)) for t, v, p, o, i, r in c.pending]
        except (orjson.JSONDecodeError, TypeError, ValueError) as e:
            raise CursorDecodeError(f"ingest cursor does not decode: {e}") from None
        if not isinstance(c.series_id, str) or not isinstance(c.next_seq, int) or c.next_seq < 0:
            raise CursorDecodeError(f"ingest cursor has invalid fields: {str(raw)[:200]}")
        if c.freq_ms is not None and (not isinstance(c.freq_ms, int) or c.freq_ms <= 0):
            raise CursorDecodeError(f"ingest cursor has invalid freq_ms {c.freq_ms!r}")
        return c


def copy_list(x: list) -> list:
    """A deep copy of a plain JSON-able list (the detector state taken at a patch boundary)."""
    return orjson.loads(orjson.dumps(x))


def _ref_to_json(r: ObsRef | None):
    if r is None:
        return None
    b64 = lambda b: None if b is None else base64.b64encode(b).decode("ascii")  # noqa: E731
    return [b64(r.raw), b64(r.key), r.index]


def _ref_from_json(j) -> ObsRef | None:
    if j is None:
        return None
    unb64 = lambda s: None if s is None else base64.b64decode(s)  # noqa: E731
    return ObsRef(unb64(j[0]), unb64(j[1]), j[2])
