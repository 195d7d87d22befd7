"""Patch assembly: one series' ordered observations -> 48-slot patches on a grid.

Pure logic (no I/O). :class:`SeriesAssembler` receives the observations of one
series in Kafka order and returns completed :class:`Patch` es plus
:class:`Rejection` s; the ingest consumer does everything else (decode, Kafka,
Redis). All times are integer epoch milliseconds.

Policy
------
Grid
    The grid step ``freq_ms`` comes from the series' group config. When the
    group gives none, the first ``freq_inference_points`` observations are
    buffered and the step is the (lower) median of their positive timestamp
    differences; they are then replayed through the rules below. While
    buffering, an observation at the same timestamp as the previous buffered one
    is ``duplicate`` and one before it is ``late``.
    The grid is anchored at the series' first observation: slot ``k`` is at
    ``anchor_ms + k * freq_ms`` and patch ``seq`` holds slots
    ``seq * 48 .. seq * 48 + 47``. Patch ``seq`` numbers start at 0.
Snapping
    A timestamp within ``grid_tolerance * freq_ms`` of a slot snaps to it;
    otherwise it is rejected ``off_grid``.
Order
    Let ``last`` be the slot of the last accepted observation.
    A slot inside an already emitted patch is ``late``; a slot of the open
    patch that already holds an observation is ``duplicate`` (whatever its
    value); a slot before ``last`` is ``late``. Nothing is ever applied out of
    order or twice.
Gaps
    Slots skipped between accepted observations are missing (NaN / null). An
    observation more than ``max_gap_steps`` slots after ``last`` is rejected
    ``timestamp_too_far``. An observation beyond the open patch closes it (its
    tail stays missing) and emits every whole patch skipped in between as an
    all-missing patch, so ``seq`` always counts grid patches from the anchor.
Missing values
    ``value = None`` is an explicit missing value: the slot counts as observed
    (it cannot be filled again, it counts for ordering) but stays NaN; it does
    not count in :attr:`Patch.n_observed`, which counts non-null slots.

Determinism
    Emitted patches and rejections are a function of the observation sequence
    only. The :class:`IngestCursor` (what the consumer persists after emitting
    patches) is enough to resume: :meth:`SeriesAssembler.from_cursor` followed by
    the observations after ``cursor.last_offset`` produces exactly what the
    uninterrupted assembler would have produced. A cursor normally covers only
    observations inside emitted patches (the open patch is rebuilt by re-reading
    Kafka); :meth:`SeriesAssembler.cursor` with ``include_open=True`` also
    carries the open patch / inference buffer (used to spill idle series out of
    memory).

Alerts
    With ``alert_settings`` (the series group's ``alerts``), every accepted grid slot
    is also fed, in order, to the series' :class:`~streamflame.alerts.episodes.SeriesAlerts`;
    its events collect in :attr:`SeriesAssembler.alert_events` for the consumer to
    publish. The cursor carries the detector state as it was after the last
    observation it covers (``alerts``), so a resumed assembler judges the re-read
    observations exactly as before, and ``alerted``, the key of the last published
    event (``AlertEvent.key``: 2 x the slot of the observation that caused it, + 1 for
    a dropout found by silence): re-generated events at or before it are dropped, so a replay publishes no event twice. (``alerted`` is written with
    the batch's cursors, after its events are acknowledged, but in a field of its own:
    series with events and no completed patch get only that field written.)
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import median_low
from typing import Any, NamedTuple

from streamflame.alerts.episodes import SeriesAlerts
from streamflame.core.constants import PATCH_LEN
from streamflame.core.timefmt import iso_ms
from streamflame.pipeline.ingest.cursor import CursorDecodeError, IngestCursor, ObsRef, copy_list
from streamflame.pipeline.ingest.judging import SeriesJudging

__all__ = ["AssemblerSettings", "Patch", "Rejection", "SeriesAssembler"]


@dataclass(frozen=True)
class AssemblerSettings:
    """Assembly knobs (from the ingest config).

    ``grid_tolerance`` is a fraction of the grid step in [0, 0.5).
    """

    patch_len: int = PATCH_LEN
    freq_inference_points: int = 8
    max_gap_steps: int = 10_000
    grid_tolerance: float = 0.1

    def __post_init__(self) -> None:
        if self.patch_len < 1:
            raise ValueError(f"patch_len must be >= 1, got {self.patch_len}")
        if self.freq_inference_points < 2:
            raise ValueError(f"freq_inference_points must be >= 2, got {self.freq_inference_points}")
        if self.max_gap_steps < 1:
            raise ValueError(f"max_gap_steps must be >= 1, got {self.max_gap_steps}")
        if not 0.0 <= self.grid_tolerance < 0.5:
            raise ValueError(f"grid_tolerance must be in [0, 0.5), got {self.grid_tolerance}")


ACCEPTED, REJECTED, SKIPPED = 1, 0, 2
"""Results of :meth:`SeriesAssembler.add`."""



class Patch(NamedTuple):
    """A completed patch; field meanings as :class:`streamflame.messages.PatchMessage`."""

    series_id: str
    seq: int
    start_ms: int
    freq_ms: int
    values: list  # patch_len x (float | None)
    n_observed: int
    last_obs_ms: int
    partition: int
    first_offset: int
    last_offset: int

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


class Rejection(NamedTuple):
    """One rejected observation: a reason code of ``messages.REJECT_REASONS``."""

    reason: str
    detail: str
    timestamp_ms: int
    partition: int
    offset: int
    ref: ObsRef | None







class SeriesAssembler(SeriesJudging):
    """Assembles the patches of one series (see the module docstring for the policy).

    ``freq_ms`` is the configured grid step or None to infer it. Feed
    observations in Kafka order with :meth:`add`; completed patches are appended
    to ``patches_out`` and rejections to ``rejects_out``.
    """

    __slots__ = (
        "series_id", "settings", "freq_ms", "anchor_ms", "seq", "last_slot", "last_obs_ms",
        "_values", "_seen", "_n_open", "_open_first", "_open_last", "_open_partition",
        "_pending", "n_accepted", "_covered", "_tol_ms", "pin_offset", "pin_partition",
        "_skip_partition", "_skip_offset", "_skip_index", "_open_last_index",
        "alert_settings", "alerts", "alert_events", "alerted", "_covered_alerts", "_thr", "deferred", "_defer",
    )

    def __init__(self, series_id: str, settings: AssemblerSettings, freq_ms: int | None = None,
                 alert_settings=None):
        if freq_ms is not None and (type(freq_ms) is not int or freq_ms <= 0):
            raise ValueError(f"freq_ms must be a positive int or None, got {freq_ms!r}")
        self.series_id = series_id
        self.settings = settings
        self.freq_ms = freq_ms
        self.anchor_ms: int | None = None
        self.seq = 0  # seq of the open patch
        self.last_slot: int | None = None  # slot of the last accepted observation
        self.last_obs_ms: int | None = None
        n = settings.patch_len
        self._values: list = [None] * n
        self._seen = bytearray(n)
        self._n_open = 0  # accepted observations in the open patch
        self._open_first = -1  # offset of the first / last of them
        self._open_last = -1
        self._open_last_index = 0
        self._open_partition = -1
        self._pending: list | None = [] if freq_ms is None else None
        self.n_accepted = 0
        # (n_accepted, partition, offset, index, slot, ms) of the last observation inside an emitted patch
        self._covered: tuple = (0, None, None, 0, None, None)
        self._tol_ms = int(settings.grid_tolerance * freq_ms) if freq_ms else 0
        # Earliest (partition, offset) that must be re-read to rebuild the
        # in-memory state from the last persisted cursor; None when nothing is open.
        self.pin_offset: int | None = None
        self.pin_partition: int | None = None
        # Observations at or before this position are already covered by the
        # cursor this assembler was resumed from: skipped, not re-applied.
        self._skip_partition: int | None = None
        self._skip_offset = -1
        self._skip_index = 0
        # Alert episodes (module docstring, "Alerts"); alert_settings None = off.
        self.alert_settings = alert_settings
        self.alerts = SeriesAlerts() if alert_settings is not None else None
        self.alert_events: list = []  # (slot, AlertEvent) not yet handed to the consumer's job
        self.alerted: int | None = None
        self._covered_alerts: list | None = None
        self._thr = None  # (settings, freq_ms, Thresholds) cache
        self.deferred = None  # DeferredJudging while judging is deferred (see defer_judging())
        self._defer = False

    # ------------------------------------------------------------------ state

    @property
    def is_clean(self) -> bool:
        """True when nothing is buffered (open patch and inference buffer empty)."""
        return self._n_open == 0 and not self._pending

    @property
    def buffered(self) -> int:
        """Observations held in memory (open patch + inference buffer)."""
        return self._n_open + (len(self._pending) if self._pending else 0)

    def cursor(self, include_open: bool = False) -> IngestCursor:
        """The persisted form. Without ``include_open`` it covers the observations
        inside emitted patches only; with it, also the open patch and the
        inference buffer (then nothing needs re-reading from Kafka)."""
        self.flush_alerts()
        n_cov, part, off, idx, slot, ms = self._covered
        c = IngestCursor(
            series_id=self.series_id, freq_ms=self.freq_ms, anchor_ms=self.anchor_ms,
            next_seq=self.seq, last_slot=slot, last_obs_ms=ms, last_partition=part,
            last_offset=off, last_index=idx, n_covered=n_cov,
            alerts=self._covered_alerts,
        )
        if include_open and self.alerts is not None and (self._pending or self._n_open):
            c.alerts = copy_list(self.alerts.to_list())
        if include_open:
            if self._pending:
                c.pending = list(self._pending)
                last = self._pending[-1]
                c.last_partition, c.last_offset, c.last_index, c.last_obs_ms = last[2], last[3], last[4], last[0]
                c.n_covered = len(self._pending)
            elif self._n_open:
                c.open_slots = [[i, self._values[i]] for i in range(len(self._seen)) if self._seen[i]]
                c.open_partition, c.open_first_offset, c.open_last_offset = (
                    self._open_partition, self._open_first, self._open_last)
                c.last_partition, c.last_offset = self._open_partition, self._open_last
                c.last_index = self._open_last_index
                c.last_slot, c.last_obs_ms = self.last_slot, self.last_obs_ms
                c.n_covered = self.n_accepted
        return c

    @classmethod
    def from_cursor(cls, cursor: IngestCursor, settings: AssemblerSettings,
                    freq_ms: int | None = None, alert_settings=None) -> "SeriesAssembler":
        """Resume from a persisted cursor. A cursor that already fixed the grid
        keeps its own ``freq_ms`` (a config change applies to new series only)."""
        a = cls(cursor.series_id, settings, cursor.freq_ms if cursor.freq_ms is not None else freq_ms,
                alert_settings)
        a.alerted = cursor.alerted
        if a.alerts is not None and cursor.alerts is not None:
            try:
                a.alerts = SeriesAlerts.from_list(cursor.alerts)
            except (TypeError, ValueError, KeyError) as e:
                raise CursorDecodeError(f"ingest cursor has an unreadable alerts state: {e}") from None
            a._covered_alerts = None if cursor.open_slots or cursor.pending else cursor.alerts
        if cursor.last_offset is not None:
            a._skip_partition, a._skip_offset = cursor.last_partition, cursor.last_offset
            a._skip_index = cursor.last_index
        if cursor.pending:
            a.freq_ms, a._tol_ms = None, 0
            a._pending = [tuple(p) for p in cursor.pending]
            return a
        if a.freq_ms is not None and a._pending is not None:
            a._pending = None  # configured frequency, nothing observed yet
        a.anchor_ms = cursor.anchor_ms
        a.seq = cursor.next_seq
        a.n_accepted = cursor.n_covered
        a.last_slot, a.last_obs_ms = cursor.last_slot, cursor.last_obs_ms
        if cursor.open_slots:
            n_open = len(cursor.open_slots)
            for i, v in cursor.open_slots:
                a._values[i] = v
                a._seen[i] = 1
            a._n_open = n_open
            a._open_partition = cursor.open_partition
            a._open_first, a._open_last = cursor.open_first_offset, cursor.open_last_offset
            a._open_last_index = cursor.last_index
            # the emitted prefix ends before the open patch; its exact position is
            # not kept in a spilled cursor, only its count (for cursor versions)
            a._covered = (cursor.n_covered - n_open, None, None, 0, None, None)
        else:
            a._covered = (cursor.n_covered, cursor.last_partition, cursor.last_offset,
                          cursor.last_index, cursor.last_slot, cursor.last_obs_ms)
        return a

    # ------------------------------------------------------------------ input

    def add(self, ts_ms: int, value: float | None, partition: int, offset: int, index: int,
            ref: ObsRef | None, patches_out: list, rejects_out: list) -> int:
        """Feed one observation: Kafka ``partition``/``offset`` of its record and
        its ``index`` inside a batch message (0 for the single form).

        Returns :data:`ACCEPTED` (applied, or buffered for frequency inference),
        :data:`REJECTED` (a :class:`Rejection` was appended to ``rejects_out``) or
        :data:`SKIPPED` (at or before the position of the cursor resumed from).
        """
        if offset <= self._skip_offset and partition == self._skip_partition and (
                offset < self._skip_offset or index <= self._skip_index):
            return SKIPPED
        if self._pending is not None:
            return self._add_pending(ts_ms, value, partition, offset, index, ref, patches_out, rejects_out)
        return self._add_grid(ts_ms, value, partition, offset, index, ref, patches_out, rejects_out)

    def add_run(self, ts_ms: list[int], values: list, partition: int, offset: int | list[int],
                patches_out: list, limit_ms: int | None = None) -> bool:
        """Bulk form of :meth:`add` for observations whose timestamps are exactly the
        grid slots right after the last accepted one (the usual shape of a sensor's
        stream). ``offset`` is either one record's offset (a batch message: element
        ``i`` has index ``i``) or a list of offsets, one per element (consecutive
        single-observation records of this series on ``partition``, each index 0).
        Returns False, having changed nothing, when that is not the case (or the
        frequency is still being inferred, or the records lie in the region a resumed
        cursor skips); the caller then feeds the observations one by one. When it
        returns True the assembler is exactly as after ``add`` of each element
        (tests/test_ingest_assembler.py checks both forms), and nothing was rejected.
        """
        n_new = len(ts_ms)
        per_record = type(offset) is list
        first_offset = offset[0] if per_record and n_new else offset
        if (n_new < 1 or self._pending is not None
                or (first_offset <= self._skip_offset and partition == self._skip_partition)
                or (limit_ms is not None and ts_ms[-1] > limit_ms)):
            return False
        freq = self.freq_ms
        if self.anchor_ms is None:      # a new series of known frequency: its first timestamp anchors the grid
            if self.last_slot is not None or self.seq != 0:
                return False
            anchor, q0 = ts_ms[0], 0
        elif self.last_slot is None:
            return False
        else:
            anchor, q0 = self.anchor_ms, self.last_slot + 1
        t0 = anchor + q0 * freq
        if ts_ms[0] != t0 or ts_ms[-1] != t0 + (n_new - 1) * freq or ts_ms != list(range(t0, t0 + n_new * freq, freq)):
            return False
        self.anchor_ms = anchor
        n = self.settings.patch_len
        pos = 0
        while pos < n_new:
            i = q0 + pos - self.seq * n                 # slot inside the open patch (0 <= i < n)
            take = min(n - i, n_new - pos)
            if per_record:
                o_first, o_last, last_index = offset[pos], offset[pos + take - 1], 0
            else:
                o_first = o_last = offset
                last_index = pos + take - 1
            self._values[i:i + take] = values[pos:pos + take]
            self._seen[i:i + take] = b"\x01" * take
            if self._n_open == 0:
                self._open_first, self._open_partition = o_first, partition
            self._n_open += take
            self._open_last = o_last
            self._open_last_index = last_index
            self.last_slot = q0 + pos + take - 1
            self.last_obs_ms = ts_ms[pos + take - 1]
            self.n_accepted += take
            self._pin(partition, o_first)
            if self.deferred is not None:
                self.deferred.add_run(q0 + pos, values[pos:pos + take])
            elif self.alerts is not None:
                for j in range(take):
                    self._judge(q0 + pos + j, values[pos + j])
            pos += take
            if i + take == n:
                self._emit(patches_out, partition, o_last)
        return True

    def _pin(self, partition: int, offset: int) -> None:
        if self.pin_offset is None:
            self.pin_offset, self.pin_partition = offset, partition

    def _add_pending(self, ts_ms, value, partition, offset, index, ref, patches_out, rejects_out) -> int:
        pend = self._pending
        if pend:
            prev = pend[-1][0]
            if ts_ms <= prev:
                reason = "duplicate" if ts_ms == prev else "late"
                rejects_out.append(Rejection(
                    reason, f"timestamp {iso_ms(ts_ms)} is {'equal to' if ts_ms == prev else 'before'} "
                    f"the previous observation {iso_ms(prev)} (frequency not yet inferred)",
                    ts_ms, partition, offset, ref))
                return REJECTED
        pend.append((ts_ms, value, partition, offset, index, ref))
        self._pin(partition, offset)
        if len(pend) < self.settings.freq_inference_points:
            return ACCEPTED
        # Enough points: fix the grid and replay the buffer through the grid rules.
        # The first buffered observation becomes the anchor (always accepted), so
        # the pin set by the replay is again the first buffered offset.
        self.freq_ms = median_low([b[0] - a[0] for a, b in zip(pend, pend[1:])])
        self._tol_ms = int(self.settings.grid_tolerance * self.freq_ms)
        self._pending = None
        self.pin_offset = self.pin_partition = None
        for t, v, p, o, i, r in pend:
            self._add_grid(t, v, p, o, i, r, patches_out, rejects_out)
        return ACCEPTED

    def _add_grid(self, ts_ms, value, partition, offset, index, ref, patches_out, rejects_out) -> int:
        freq = self.freq_ms
        if self.anchor_ms is None:
            self.anchor_ms = ts_ms
        q, rem = divmod(ts_ms - self.anchor_ms, freq)
        if rem > self._tol_ms:
            if freq - rem <= self._tol_ms:
                q += 1
            else:
                rejects_out.append(Rejection(
                    "off_grid", f"timestamp {iso_ms(ts_ms)} is {rem} ms after a grid slot of step "
                    f"{freq} ms anchored at {iso_ms(self.anchor_ms)} (tolerance {self._tol_ms} ms)",
                    ts_ms, partition, offset, ref))
                return REJECTED
        n = self.settings.patch_len
        start = self.seq * n
        last = self.last_slot
        if q < start:
            rejects_out.append(Rejection(
                "late", f"slot {iso_ms(self.anchor_ms + q * freq)} is inside an emitted patch "
                f"(the open patch starts at {iso_ms(self.anchor_ms + start * freq)})",
                ts_ms, partition, offset, ref))
            return REJECTED
        if last is not None:
            if q <= last:
                if q < start + n and self._seen[q - start]:
                    rejects_out.append(Rejection(
                        "duplicate", f"slot {iso_ms(self.anchor_ms + q * freq)} already has an observation",
                        ts_ms, partition, offset, ref))
                else:
                    rejects_out.append(Rejection(
                        "late", f"slot {iso_ms(self.anchor_ms + q * freq)} is before the last observed slot "
                        f"{iso_ms(self.anchor_ms + last * freq)}", ts_ms, partition, offset, ref))
                return REJECTED
            if q - last > self.settings.max_gap_steps:
                rejects_out.append(Rejection(
                    "timestamp_too_far", f"timestamp {iso_ms(ts_ms)} is {q - last} steps after the last "
                    f"observation {iso_ms(self.anchor_ms + last * freq)} (max_gap_steps "
                    f"{self.settings.max_gap_steps})", ts_ms, partition, offset, ref))
                return REJECTED
        # Accepted. Close the open patch and any whole patches skipped by a gap.
        if q >= start + n:
            self._emit(patches_out, partition, offset)
            target = q // n
            while self.seq < target:
                self._emit(patches_out, partition, offset)
        i = q - self.seq * n
        self._values[i] = value
        self._seen[i] = 1
        if self._n_open == 0:
            self._open_first, self._open_partition = offset, partition
        self._n_open += 1
        self._open_last = offset
        self._open_last_index = index
        self.last_slot = q
        self.last_obs_ms = ts_ms
        self.n_accepted += 1
        self._pin(partition, offset)
        if self.alerts is not None:
            self._judge(q, value)
        if i == n - 1:
            self._emit(patches_out, partition, offset)
        return ACCEPTED

    def _emit(self, patches_out: list, partition: int, offset: int) -> None:
        """Close the open patch (possibly empty) as patch ``self.seq``."""
        n = self.settings.patch_len
        values = self._values
        if self._n_open:
            first, last, part = self._open_first, self._open_last, self._open_partition
            # everything accepted so far is inside an emitted patch now
            self._covered = (self.n_accepted, part, last, self._open_last_index, self.last_slot, self.last_obs_ms)
            self.pin_offset = self.pin_partition = None
            if self.deferred is not None:
                self.deferred.snapshot()
            elif self.alerts is not None:
                self._covered_alerts = copy_list(self.alerts.to_list())
        else:  # an all-missing patch skipped by a gap: located at the observation closing it
            first = last = offset
            part = partition
        n_observed = n - values.count(None)
        patches_out.append(Patch(
            self.series_id, self.seq, self.anchor_ms + self.seq * n * self.freq_ms, self.freq_ms,
            values, n_observed, self.last_obs_ms, part, first, last))
        self.seq += 1
        self._values = [None] * n
        self._seen = bytearray(n)
        self._n_open = 0
