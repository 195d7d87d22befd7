"""Spikes: a value that jumps away from the one before and comes back at the next.

A natural jump in a sensor stream (a weather front, a machine switching on) stays; an
injected or faulty spike returns. So a spike is judged on two one-step changes,
``d_t = y_t - y_{t-1}`` and the return ``y_t - y_{t+1}``: both must be past ``z_confirm``
running scales of the series' one-step changes, in opposite directions of travel (the
value is a local extreme). Under a normal model the two tails must both occur, which is
rare (settings.py ``_z_confirm_for``); on heavy-tailed real data it is far rarer than a
single large change.

The scale is that of the raw one-step changes (the naive forecast), not of the judge's
trackers: for the random-walk-like series that sensors mostly are, the last value is the
best one-step reference, and its changes have the smallest scale (measured on the
training split, docs/benchmarks.md). Pure floats, O(1) per observation; the persisted
form is ``to_list`` / ``from_list``.
"""
from __future__ import annotations

from dataclasses import dataclass

from streamflame.alerts.judge import _ABS_TO_SD, TrackerParams

__all__ = ["JumpScale"]


@dataclass
class JumpScale:
    """Running scale of one series' one-step changes (mutable)."""

    mean_abs: float = 0.0     # running mean of |d| (each clipped to clip_scale scales once calibrated)
    count: int = 0
    quantum: float = 0.0      # smallest non-zero |d| seen (the sensor's resolution; 0 = none yet)

    def z(self, d: float, p: TrackerParams) -> float:
        """``d`` in running scales (0.0 while uncalibrated); the scale is never below one quantum."""
        if self.count < p.min_count or self.mean_abs <= 0.0:
            return 0.0
        sd = _ABS_TO_SD * self.mean_abs
        if self.quantum > sd:
            sd = self.quantum
        return d / sd

    def update(self, d: float, p: TrackerParams) -> None:
        ad = d if d >= 0.0 else -d
        if ad > 0.0 and (ad < self.quantum or self.quantum == 0.0):
            self.quantum = ad
        v = self.mean_abs
        if self.count >= p.min_count and v > 0.0:
            lim = p.clip_scale * _ABS_TO_SD * v
            if ad > lim:
                ad = lim
        self.count += 1
        if self.count < 1.0 / p.gamma:
            self.mean_abs = v + (ad - v) / self.count
        else:
            self.mean_abs = v + p.gamma * (ad - v)

    def to_list(self) -> list:
        return [self.mean_abs, self.count, self.quantum]

    @classmethod
    def from_list(cls, d: list) -> "JumpScale":
        return cls(float(d[0]), int(d[1]), float(d[2]))
