"""Alert episodes of one series: the detectors and the open/update/resolve life cycle.

:class:`SeriesAlerts` is fed every grid slot of its series in order (by the ingest
assembler, which owns the grid) and returns :class:`AlertEvent` s. It is a pure
function of the slots fed to it and its persisted form (``to_list``/``from_list``),
so ingest replaying a series from its cursor produces the same events again.

Kinds
    ``deviation``     one of the judge's tests (judge.py) passes its threshold derived
                      from the false-alarm budget (settings.py): a window longer than
                      one (from the series' tail of ``|z|`` once known, else ``z_open``); a spike, i.e. the jump from the value before and
                      the next value's return both past ``z_confirm`` scales of the
                      series' one-step changes (judge.py ``zd``; opened at that next
                      value: a natural jump that stays is no spike); or
                      ``|z_1|`` alone past ``z_now`` (at once). Stays open while any
                      statistic is above ``z_close``; resolves after ``resolve_after``
                      quiet observations.
    ``flatline``      the same value ``flatline_window`` times in a row, more times than
                      the series ever repeated a value before (reported runs included: a
                      pattern that recurs is reported once), and a run that the series'
                      own rate of repeats ``r`` (exponentially weighted share of values
                      equal to the one before) makes rarer than the budget:
                      ``r ** (run - 1) * observations per week <= false_alarm_budget``;
                      resolves at the first different value.
    ``dropout``       ``dropout_slots`` grid slots in a row without a value, judged on
                      event time (no wall clock): explicit nulls open it at the null that
                      completes the run; a series that sends nothing is found silent by
                      :meth:`SeriesAlerts.silent` once the event time of its partition
                      (other series' observations) is past the slot completing the
                      run; a gap only seen when the next observation arrives (within
                      one ingest batch) opens and resolves it then, with the same
                      ``open`` message. Resolves at the next value.
    ``out_of_range``  a value outside the group's ``range``; resolves after
                      ``resolve_after`` values inside.

Every episode has ``alert_id = "<series_id>/<kind>/<started_ms>"`` (stable over its
life and over replays). A kind that resolved opens again only ``min_gap``
observations later. ``update`` is published when an open episode's severity rises.
Deviation and flatline judgement start after ``suppress_patches`` patches of a new
series (the tracker still learns from them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from streamflame.alerts.judge import JudgeState, TrackerParams, observe, skip
from streamflame.alerts.settings import (SEVERITIES, AlertSettings, Thresholds, confirm_probability,
                                         tail_probability)

__all__ = ["AlertEvent", "SeriesAlerts", "Verdict", "KINDS", "PARAMS"]

KINDS = ("deviation", "flatline", "dropout", "out_of_range")
_KIND_SEVERITY = {"flatline": "major", "dropout": "major", "out_of_range": "critical"}
PARAMS = TrackerParams()
"""The deviation judge's parameters (the same for every series)."""
_PARAMS = PARAMS


class Verdict(NamedTuple):
    """The judge's word on one value, when it was judged apart (alerts/lockstep.py) before
    :meth:`SeriesAlerts.feed`: ``Judgement.z``, ``.window``, ``.expected``, ``n_before``
    = ``judge.count[0]`` just before the value, and ``Judgement.z1``, ``.zd``, ``.tail_rate``,
    ``.tail_excess``, ``.wtail_rate``, ``.wtail_excess``."""

    z: float
    window: int
    expected: float
    n_before: int
    z1: float = 0.0
    zd: float = 0.0
    tail_rate: float = 0.0
    tail_excess: float = 0.0
    wtail_rate: float = 0.0
    wtail_excess: float = 0.0
_REPEAT_GAMMA = 0.01


@dataclass(frozen=True)
class AlertEvent:
    """One episode event (field meanings: messages.AlertEpisode)."""

    event: str          # open, update, resolve
    kind: str
    slot: int           # grid slot of the observation that caused it
    timestamp_ms: int
    started_ms: int
    severity: str
    score: float
    value: float | None
    expected: float | None = None
    p_value: float | None = None
    direction: str | None = None
    observations: int = 1
    silent: bool = False  # opened by silent(): ordered right after the observation at ``slot``

    @property
    def key(self) -> int:
        """Order of the events of a series: 2 x slot, + 1 for one opened by silence."""
        return 2 * self.slot + self.silent


@dataclass
class _Episode:
    started_ms: int
    severity: str
    score: float
    quiet: int = 0
    observations: int = 1

    def to_list(self) -> list:
        return [self.started_ms, self.severity, self.score, self.quiet, self.observations]


@dataclass
class SeriesAlerts:
    """Detector and episode state of one series (persisted in its ingest cursor)."""

    judge: JudgeState = field(default_factory=JudgeState)
    last_slot: int | None = None
    last_value: float | None = None
    run: int = 0            # identical values in a row, ending at last_value
    max_run: int = 1        # longest such run before
    repeat_rate: float = 0.0  # exponentially weighted share of values equal to the one before
    run_rate: float = 0.0     # repeat_rate when the current run began (the run does not raise its own bar)
    nulls: int = 0          # explicit nulls in a row
    null_start_ms: int | None = None
    open: dict = field(default_factory=dict)        # kind -> _Episode
    resolved_at: dict = field(default_factory=dict)  # kind -> slot of its last resolve
    spike: list | None = None  # a spike candidate at the last slot: [slot, ts_ms, value, previous, expected, z]

    # ---------------------------------------------------------------- persisted form

    def to_list(self) -> list:
        return [self.judge.to_list(), self.last_slot, self.last_value, self.run, self.max_run, self.repeat_rate,
                self.run_rate, self.nulls,
                self.null_start_ms, {k: e.to_list() for k, e in self.open.items()}, dict(self.resolved_at),
                self.spike]

    @classmethod
    def from_list(cls, d: list) -> "SeriesAlerts":
        """The persisted form; one of 11 items (written before spike confirmation) has no candidate."""
        j, last_slot, last_value, run, max_run, rate, run_rate, nulls, null_start, opened, resolved = d[:11]
        spike = d[11] if len(d) > 11 else None
        return cls(JudgeState.from_list(j), last_slot, last_value, int(run), int(max_run), float(rate),
                   float(run_rate), int(nulls), null_start,
                   {k: _Episode(int(a), str(b), float(c), int(q), int(o)) for k, (a, b, c, q, o) in opened.items()},
                   {k: int(v) for k, v in resolved.items()},
                   None if spike is None else [int(spike[0]), int(spike[1])] + [float(x) for x in spike[2:6]])

    # ---------------------------------------------------------------- input

    def silent(self, event_slot: int, freq_ms: int, anchor_ms: int, s: AlertSettings,
               out: list[AlertEvent]) -> None:
        """Event time has reached grid slot ``event_slot`` (another series of the partition has
        an observation there) and nothing came from this series after ``last_slot``: open a
        dropout once ``dropout_slots`` slots are missing. Only the slots *before* ``event_slot``
        count: this series' own record for ``event_slot`` may still follow in the partition
        (records of one slot arrive series after series, and a batch can end between them), and
        opening on it would make the events depend on where batches end. The event is ordered
        right after the last observation (``AlertEvent.key``); its timestamp is the slot
        completing the run."""
        if s.dropout_slots is None or self.last_slot is None or "dropout" in self.open:
            return
        missing = event_slot - self.last_slot - 1 + self.nulls
        if missing < s.dropout_slots or not self._may_open("dropout", self.last_slot, s):
            return
        done = self.last_slot + s.dropout_slots - self.nulls
        start = self.null_start_ms if self.nulls else anchor_ms + (self.last_slot + 1) * freq_ms
        self.open["dropout"] = _Episode(start, _KIND_SEVERITY["dropout"], 1.0)
        out.append(AlertEvent("open", "dropout", self.last_slot, anchor_ms + done * freq_ms, start,
                              _KIND_SEVERITY["dropout"], 1.0, None, observations=1, silent=True))

    def feed(self, slot: int, ts_ms: int, value: float | None, freq_ms: int, s: AlertSettings,
             thr: Thresholds, out: list[AlertEvent], alerted: int | None = None,
             judged_apart: bool = False, verdict: Verdict | None = None) -> None:
        """Judge one grid slot (``value`` None = explicit null) and append its events to ``out``.
        ``alerted``: the key of the last event already published (a dropout that :meth:`silent`
        opened before a restart is then taken as open, not opened again). ``judged_apart``: the
        deviation judge's state has been moved over this slot already (alerts/lockstep.py),
        and ``verdict`` is what it said about ``value``; the judge is then left alone."""
        prev = self.last_slot
        gap = 0 if prev is None else slot - prev - 1
        self.last_slot = slot
        pending, self.spike = self.spike, None   # a spike candidate is judged by the very next slot only
        if gap > 0:
            if not judged_apart:
                skip(self.judge, gap)
            if s.dropout_slots is not None and gap + self.nulls >= s.dropout_slots and "dropout" not in self.open:
                # the same open as silent() would have made (only found now: the data came back)
                start = self.null_start_ms if self.nulls else ts_ms - gap * freq_ms
                done_ms = ts_ms - (slot - (prev + s.dropout_slots - self.nulls)) * freq_ms
                if alerted is not None and alerted >= 2 * prev + 1:  # silent() opened it, published
                    self.open["dropout"] = _Episode(start, _KIND_SEVERITY["dropout"], 1.0)
                elif self._may_open("dropout", slot, s):
                    self.open["dropout"] = _Episode(start, _KIND_SEVERITY["dropout"], 1.0)
                    out.append(AlertEvent("open", "dropout", slot, done_ms, start, _KIND_SEVERITY["dropout"], 1.0,
                                          None, observations=1))
            self.run = 0
            self.last_value = None
        if value is None:
            if not judged_apart:
                skip(self.judge, 1)
            if self.nulls == 0:
                self.null_start_ms = ts_ms
            self.nulls += 1
            if (s.dropout_slots is not None and self.nulls + max(gap, 0) >= s.dropout_slots
                    and "dropout" not in self.open and self._may_open("dropout", slot, s)):
                self._open("dropout", slot, ts_ms, self.null_start_ms, self.nulls / s.dropout_slots, None, out,
                           severity=_KIND_SEVERITY["dropout"])
            elif "dropout" in self.open:
                self.open["dropout"].observations += 1
            self._quiet_others(slot, ts_ms, None, s, out, keep=("dropout",))
            self.run = 0
            self.last_value = None
            return
        self.nulls = 0
        if "dropout" in self.open:
            self._resolve("dropout", slot, ts_ms, value, out)
        judging = slot >= s.suppress_patches * 48
        before = self.last_value     # the value of the slot before (None after a gap or null)
        # flatline
        same = value == self.last_value
        if "flatline" not in self.open:
            # values judged so far: a plain mean at first
            n = verdict.n_before if judged_apart else (self.judge.count[0] if self.judge.count else 0)
            self.repeat_rate += max(_REPEAT_GAMMA, 1.0 / (n + 1)) * ((1.0 if same else 0.0) - self.repeat_rate)
        if same:
            self.run += 1
        else:
            if "flatline" in self.open:
                self._resolve("flatline", slot, ts_ms, value, out)
            if self.run > self.max_run:  # a flatline's run too: a pattern that recurs (a night of zeros) is learnt
                self.max_run = self.run
            self.run = 1
            self.last_value = value
            self.run_rate = self.repeat_rate
        if s.flatline_window is not None and judging and self.run >= s.flatline_window:
            need = max(s.flatline_window, self.max_run + 1, _budget_run(self.run_rate, s, thr))
            ep = self.open.get("flatline")
            if ep is not None:
                ep.observations += 1
                ep.score = self.run / need
            elif self.run >= need and self._may_open("flatline", slot, s):
                self._open("flatline", slot, ts_ms, ts_ms - (self.run - 1) * freq_ms, self.run / need, value, out,
                           severity=_KIND_SEVERITY["flatline"])
        # out of range
        if s.range is not None:
            lo, hi = s.range
            ep = self.open.get("out_of_range")
            if value < lo or value > hi:
                dist = (lo - value if value < lo else value - hi) / (hi - lo)
                if ep is not None:
                    ep.quiet = 0
                    ep.observations += 1
                    ep.score = max(ep.score, 1.0 + dist)
                elif self._may_open("out_of_range", slot, s):
                    self._open("out_of_range", slot, ts_ms, ts_ms, 1.0 + dist, value, out,
                               severity=_KIND_SEVERITY["out_of_range"],
                               direction="below" if value < lo else "above")
            elif ep is not None:
                ep.quiet += 1
                ep.observations += 1
                if ep.quiet >= s.resolve_after:
                    self._resolve("out_of_range", slot, ts_ms, value, out)
        # deviation
        j = verdict if judged_apart else observe(self.judge, float(value), s.windows, _PARAMS)
        self._deviation(slot, ts_ms, value, freq_ms, s, thr, out, j, pending if judging else None, judging,
                        before)

    def _deviation(self, slot: int, ts_ms: int, value: float, freq_ms: int, s: AlertSettings, thr: Thresholds,
                   out: list[AlertEvent], j, pending: list | None, judging: bool, before: float | None) -> None:
        """The deviation tests of one value (``j``: its judgement; ``before``: the value of the
        slot before, if any); ``pending``: the spike candidate of the slot before, if any."""
        az, az1 = abs(j.z), abs(j.z1)
        ep = self.open.get("deviation")
        if ep is not None:
            ep.observations += 1
            windows = az >= az1                     # which statistic speaks: the windows' or z1
            zs, az = (j.z, az) if windows else (j.z1, az1)
            if az >= thr.z_close:
                ep.quiet = 0
                sev = _severity(az, thr.z_severity)
                if SEVERITIES.index(sev) > SEVERITIES.index(ep.severity):
                    ep.severity, ep.score = sev, az / thr.z_open
                    out.append(AlertEvent("update", "deviation", slot, ts_ms, ep.started_ms, sev, az / thr.z_open,
                                          value, j.expected, tail_probability(zs, thr.n_windows if windows else 1),
                                          "above" if zs > 0 else "below", ep.observations))
                else:
                    ep.score = max(ep.score, az / thr.z_open)
            else:
                ep.quiet += 1
                if ep.quiet >= s.resolve_after:
                    self._resolve("deviation", slot, ts_ms, value, out, expected=j.expected)
            return
        if not judging or not self._may_open("deviation", slot, s):
            return
        if pending is not None and pending[0] == slot - 1:
            p_slot, p_ts, p_value, p_before, p_expected, p_zd = pending
            e, back = p_value - p_before, p_value - value
            if (e > 0.0) == (back > 0.0) and e != 0.0 and back != 0.0:
                ae, ab = abs(e), abs(back)
                zc = (ae if ae < ab else ab) * abs(p_zd) / ae     # in one-step scales
                if zc >= thr.z_confirm:
                    self._open("deviation", slot, ts_ms, p_ts, zc / thr.z_confirm, p_value, out,
                               severity=_severity(zc, thr.z_confirm_severity), expected=p_expected,
                               p_value=confirm_probability(zc), direction="above" if e > 0 else "below")
                    return
        # the one-value test (its thresholds are never below min(tail_u, z_now): no logs below that)
        sev = SEVERITIES.index(s.min_severity)
        now = _now_levels(j, thr) if az1 >= min(_PARAMS.tail_u, thr.z_now) else None
        z_now = now[sev] if now is not None else math.inf
        # the windows' test, likewise (never below min(tail_u, z_open))
        long = _long_levels(j, thr) if az >= min(_PARAMS.tail_u, thr.z_open) else None
        z_open = long[sev] if long is not None else math.inf
        if az1 >= z_now:
            self._open("deviation", slot, ts_ms, ts_ms, az1 / z_now, value, out,
                       severity=_severity(az1, now), expected=j.expected,
                       p_value=tail_probability(j.z1), direction="above" if j.z1 > 0 else "below")
        elif az >= z_open:
            self._open("deviation", slot, ts_ms, ts_ms - (j.window - 1) * freq_ms, az / z_open, value, out,
                       severity=_severity(az, long), expected=j.expected,
                       p_value=tail_probability(j.z, thr.n_windows), direction="above" if j.z > 0 else "below")
        elif (j.zd if j.zd >= 0.0 else -j.zd) >= thr.z_confirm and before is not None:
            self.spike = [slot, ts_ms, value, before, j.expected, j.zd]

    def feed_judged(self, slot: int, values: list, freq_ms: int, anchor_ms: int, s: AlertSettings,
                    thr: Thresholds, verdicts, i: int, alerted: int | None, events: list) -> int:
        """:meth:`feed` (``judged_apart``) of consecutive slots ``slot, slot + 1, ...`` whose values'
        verdicts are ``verdicts.z[i:]``, ``.window[i:]``, ``.expected[i:]``, ``.n_before[i:]``
        (alerts/lockstep.py ``Judged``); ``(key, event)`` pairs of slots after ``alerted`` go to
        ``events``. Returns the index of the next verdict. The quiet case (nothing open, a new
        value right after the last one, no range, below the opening threshold) is done here
        with feed's own operations; everything else goes through feed."""
        zs, ws, es, ns, z1s, zds = (verdicts.z, verdicts.window, verdicts.expected, verdicts.n_before, verdicts.z1,
                                    verdicts.zd)
        z_open, z_confirm = min(thr.z_open, _PARAMS.tail_u), thr.z_confirm   # no windows' threshold is below this
        z1_quiet = min(z_confirm, _PARAMS.tail_u, thr.z_now)   # no one-value threshold is below this
        quiet_ok = s.range is None
        for value in values:
            if value is not None:
                z, z1, zd = zs[i], z1s[i], zds[i]
                if (quiet_ok and not self.open and not self.nulls and self.last_slot == slot - 1
                        and self.spike is None and value != self.last_value and -z_open < z < z_open
                        and -z1_quiet < z1 < z1_quiet and -z_confirm < zd < z_confirm):
                    self.last_slot = slot
                    rate = self.repeat_rate
                    g = 1.0 / (ns[i] + 1)           # max(_REPEAT_GAMMA, 1 / (n + 1)), as feed
                    rate += (g if g > _REPEAT_GAMMA else _REPEAT_GAMMA) * (0.0 - rate)
                    self.repeat_rate = self.run_rate = rate
                    if self.run > self.max_run:
                        self.max_run = self.run
                    self.run = 1
                    self.last_value = value
                    i += 1
                    slot += 1
                    continue
                verdict = Verdict(z, ws[i], es[i], ns[i], z1, zd, verdicts.tail_rate[i], verdicts.tail_excess[i],
                                  verdicts.wtail_rate[i], verdicts.wtail_excess[i])
                i += 1
            else:
                verdict = None
            out: list[AlertEvent] = []
            self.feed(slot, anchor_ms + slot * freq_ms, value, freq_ms, s, thr, out, alerted, True, verdict)
            if out and (alerted is None or 2 * slot > alerted):
                events += [(ev.key, ev) for ev in out]
            slot += 1
        return i

    # ---------------------------------------------------------------- helpers

    def _may_open(self, kind: str, slot: int, s: AlertSettings) -> bool:
        sev = _KIND_SEVERITY.get(kind)
        if sev is not None and SEVERITIES.index(sev) < SEVERITIES.index(s.min_severity):
            return False
        last = self.resolved_at.get(kind)
        return last is None or slot - last > s.min_gap

    def _open(self, kind: str, slot: int, ts_ms: int, started_ms: int, score: float, value, out: list, *,
              severity: str, expected=None, p_value=None, direction=None) -> None:
        self.open[kind] = _Episode(started_ms, severity, score)
        out.append(AlertEvent("open", kind, slot, ts_ms, started_ms, severity, score, value, expected, p_value,
                              direction, 1))

    def _resolve(self, kind: str, slot: int, ts_ms: int, value, out: list, expected=None) -> None:
        ep = self.open.pop(kind)
        self.resolved_at[kind] = slot
        out.append(AlertEvent("resolve", kind, slot, ts_ms, ep.started_ms, ep.severity, ep.score, value, expected,
                              None, None, ep.observations))

    def _quiet_others(self, slot, ts_ms, value, s: AlertSettings, out, keep=()) -> None:
        """A null slot counts as quiet for episodes that resolve on quiet observations."""
        for kind in ("deviation", "out_of_range"):
            ep = self.open.get(kind)
            if ep is not None and kind not in keep:
                ep.quiet += 1
                ep.observations += 1
                if ep.quiet >= s.resolve_after:
                    self._resolve(kind, slot, ts_ms, value, out)


def _budget_run(rate: float, s: AlertSettings, thr: Thresholds) -> int:
    """The shortest run whose chance ``rate ** (run - 1)`` per observation spends at most the budget."""
    if rate <= 0.0:
        return 0
    if rate >= 0.999:
        return 1 << 30  # a series that hardly ever changes: no flatline
    return 1 + math.ceil(math.log(s.false_alarm_budget / thr.obs_per_week) / math.log(rate))


def _now_levels(j, thr: Thresholds) -> tuple[float, float, float]:
    """The one-value test's thresholds per severity (the series' tail of ``|z_1|``)."""
    return _tail_levels(j.tail_rate, j.tail_excess, thr.p_now, thr.z_now_severity)


def _long_levels(j, thr: Thresholds) -> tuple[float, float, float]:
    """The windows' test thresholds per severity (the series' tail of ``|z|``)."""
    return _tail_levels(j.wtail_rate, j.wtail_excess, thr.p_long, thr.z_severity)


def _tail_levels(r: float, m: float, p_levels, normal) -> tuple[float, float, float]:
    """Thresholds per severity from a series' tail (rate ``r`` past ``tail_u``, mean excess ``m``)
    when it is known: ``tail_u + m ln(r / p)``, never below ``tail_u``; else ``normal``."""
    if r <= 0.0:
        return normal
    u = _PARAMS.tail_u
    return tuple(u + m * math.log(r / p) if r > p else u for p in p_levels)  # type: ignore[return-value]


def _severity(az: float, levels: tuple[float, float, float]) -> str:
    sev = "minor"
    for name, z in zip(SEVERITIES, levels):
        if az >= z:
            sev = name
    return sev
