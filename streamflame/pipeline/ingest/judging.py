"""Alert judgement of a whole ingest batch at once.

The assembler of a series normally feeds each accepted slot to its
:class:`~streamflame.alerts.episodes.SeriesAlerts` right away. The ingest consumer instead
lets its assemblers *defer* that (:meth:`SeriesAssembler.defer_judging`): each collects its
accepted slots, the missing ones between them and the points where a patch closed (where
the cursor keeps a copy of the detector state) in a :class:`DeferredJudging`; after the
batch is assembled, :func:`judge_deferred` moves every series' deviation judge over its
values in lockstep (alerts/lockstep.py, one numpy operation per step over all series) and
then runs each series' episode logic over the same slots with the judge's verdicts.

Same events, same cursor bytes as judging each slot as it comes (the lockstep judge is
bit-identical to judge.py; tests/test_alerts_lockstep.py, tests/test_ingest_judging.py), so
replays and restarts behave as before; the judge's Python loop, ~4 µs per observation, is
gone from batch ingest.
"""
from __future__ import annotations

from streamflame.alerts.episodes import PARAMS, SeriesAlerts
from streamflame.alerts.lockstep import SNAPSHOT, Judged, Ops, judge_many, judge_one
from streamflame.alerts.settings import thresholds
from streamflame.pipeline.ingest.cursor import copy_list

__all__ = ["DeferredJudging", "SeriesJudging", "judge_deferred", "LOCKSTEP_MIN_SERIES"]

LOCKSTEP_MIN_SERIES = 32
"""Fewer series than this with work in a batch are judged one by one (numpy's per-call cost
would exceed the Python loop's)."""


class DeferredJudging:
    """What one series' alert detectors still have to see, in order: ``runs`` of consecutive
    grid slots ``(first slot, values)`` (a value None = explicit null) and :data:`SNAPSHOT`
    marks; ``ops`` is the same for the deviation judge (values, and skips for the missing
    slots and nulls, exactly as :meth:`SeriesAlerts.feed` would skip)."""

    __slots__ = ("ops", "runs", "last_slot", "_snap")

    def __init__(self, alerts: SeriesAlerts):
        self.reset(alerts)

    def reset(self, alerts: SeriesAlerts) -> None:
        self.ops = Ops(alerts.judge)
        self.runs: list = []
        self.last_slot: int | None = alerts.last_slot
        self._snap: tuple[int, int] | None = None   # (position in ops.side, in runs) of the snapshot mark

    @property
    def pending(self) -> bool:
        return bool(self.runs)

    def add_run(self, slot: int, values: list) -> None:
        """Accepted values at slots ``slot, slot + 1, ...`` (after every slot added before)."""
        ops, prev = self.ops, self.last_slot
        if prev is not None and slot - prev > 1:
            ops.add_side(slot - prev - 1)
        self.last_slot = slot + len(values) - 1
        self.runs.append((slot, values))
        if None not in values:
            ops.values.extend(map(float, values))
            return
        for v in values:
            if v is None:
                ops.add_side(1)
            else:
                ops.values.append(float(v))

    def snapshot(self) -> None:
        """The detector state is wanted here (a patch closed): see ``Judged.snapshots``. Only
        the last one until the next judgement is kept: the cursor copy it feeds is replaced by
        each later one and read only after the judgement."""
        ops = self.ops
        if self._snap is not None:
            k, i = self._snap
            ops.side[k].remove(SNAPSHOT)
            if not ops.side[k]:
                del ops.side[k]
            del self.runs[i]
        self._snap = (len(ops.values), len(self.runs))
        ops.add_side(SNAPSHOT)
        self.runs.append(SNAPSHOT)


def judge_deferred(assemblers, lockstep_min: int = LOCKSTEP_MIN_SERIES) -> None:
    """Judge what every assembler in ``assemblers`` deferred (those with nothing pending are
    passed over): the deviation judges in lockstep per window setting, then each series'
    episodes (``SeriesAssembler.apply_judged``)."""
    groups: dict[tuple[int, ...], list] = {}
    for a in assemblers:
        d = a.deferred
        if d is not None and d.runs:
            groups.setdefault(a.alert_settings.windows, []).append(a)
    for windows, group in groups.items():
        ops = [a.deferred.ops for a in group]
        judged: list[Judged] = (judge_many(ops, windows, PARAMS) if len(group) >= lockstep_min
                                else [judge_one(o, windows, PARAMS) for o in ops])
        for a, j in zip(group, judged):
            a.apply_judged(j)


class SeriesJudging:
    """The alert side of :class:`~streamflame.pipeline.ingest.assembler.SeriesAssembler` (its
    attributes ``alerts``, ``alert_settings``, ``alert_events``, ``alerted``, ``deferred``, ...
    are declared there): each accepted slot to the detectors, now or deferred."""

    __slots__ = ()

    def set_alert_settings(self, alert_settings) -> None:
        """New settings (config reload); None switches the detectors off, and on again afresh."""
        self.flush_alerts()
        if alert_settings is None:
            self.alerts = self._covered_alerts = None
        elif self.alerts is None:
            self.alerts = SeriesAlerts()
        self.alert_settings = alert_settings
        if self._defer:
            self.defer_judging()

    def defer_judging(self) -> None:
        """Collect accepted slots for :func:`~streamflame.pipeline.ingest.judging.judge_deferred`
        (the ingest consumer judges a whole batch at once) instead of judging each as it comes.
        Whatever reads the detectors' state here (:meth:`cursor`, :meth:`check_silence`, a
        reload) judges what is pending first, so the deferral never shows."""
        self._defer = True
        self.deferred = DeferredJudging(self.alerts) if self.alerts is not None else None

    def flush_alerts(self) -> None:
        """Judge what was deferred now (one series alone)."""
        if self.deferred is not None and self.deferred.runs:
            judge_deferred([self], lockstep_min=2)

    def _thresholds(self):
        s, freq = self.alert_settings, self.freq_ms
        thr = self._thr
        if thr is None or thr[0] is not s or thr[1] != freq:
            thr = self._thr = (s, freq, thresholds(s, freq))
        return thr[2]

    def apply_judged(self, j: Judged) -> None:
        """The episode logic over the deferred slots, with the verdicts of the deviation judge
        (which has already moved over them); the cursor copies at the patch boundaries."""
        s, freq, anchor, alerts, alerted = self.alert_settings, self.freq_ms, self.anchor_ms, self.alerts, self.alerted
        thr = self._thresholds()
        snaps = iter(j.snapshots)
        i = 0
        for run in self.deferred.runs:
            if run is SNAPSHOT:
                state = alerts.to_list()
                state[0] = next(snaps)
                self._covered_alerts = copy_list(state)
            else:
                i = alerts.feed_judged(run[0], run[1], freq, anchor, s, thr, j, i, alerted, self.alert_events)
        self.deferred.reset(alerts)

    def _judge(self, slot: int, value) -> None:
        """Feed one accepted slot to the alert detectors (events before ``alerted`` were published already)."""
        if self.deferred is not None:
            self.deferred.add_run(slot, [value])
            return
        freq = self.freq_ms
        out: list = []
        self.alerts.feed(slot, self.anchor_ms + slot * freq, value, freq, self.alert_settings, self._thresholds(),
                         out, self.alerted)
        if out and (self.alerted is None or 2 * slot > self.alerted):
            self.alert_events += [(ev.key, ev) for ev in out]

    def check_silence(self, event_ms: int) -> None:
        """Event time of the series' partition has reached ``event_ms``: a dropout if this
        series has been silent for ``dropout_slots`` slots (``SeriesAlerts.silent``)."""
        if self.alerts is None or self.anchor_ms is None or self.last_slot is None or self._pending:
            return
        self.flush_alerts()
        event_slot = (event_ms - self.anchor_ms) // self.freq_ms
        if event_slot <= self.last_slot:
            return
        out: list = []
        self.alerts.silent(event_slot, self.freq_ms, self.anchor_ms, self.alert_settings, out)
        self.alert_events += [(ev.key, ev) for ev in out if self.alerted is None or ev.key > self.alerted]

