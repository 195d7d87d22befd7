"""Alert settings of a series group (``defaults.alerts`` / ``groups[i].alerts``) and the
thresholds derived from them.

The false-alarm budget is the number of false episodes per series per week the group
accepts. The deviation judge tests each observation with ``len(windows)`` window sums
(see judge.py); it opens an episode when one of them has a two-sided tail probability
below ``p_open``, where ``p_open * len(windows) * observations_per_week = budget``
(a Bonferroni split of the budget over the windows, each observation counted as one
chance of a false episode). The same budget rule, with the budget divided by 10 and by
100, sets the ``major`` and ``critical`` severities; ``min_severity`` raises the opening
threshold to that severity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["AlertSettings", "Thresholds", "thresholds", "tail_probability", "SEVERITIES", "WEEK_MS"]

WEEK_MS = 7 * 86_400_000
SEVERITIES = ("minor", "major", "critical")
_SEVERITY_DIVISOR = {"minor": 1.0, "major": 10.0, "critical": 100.0}
_NORMAL = NormalDist()


class AlertSettings(BaseModel):
    """Per-group alert settings (read-only). ``None`` switches a detector off."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    enabled: bool = Field(True, description="judge observations in ingest and publish episodes")
    false_alarm_budget: float = Field(
        1.0, gt=0, le=10_000, allow_inf_nan=False,
        description="expected false episodes per series per week; sets the deviation thresholds")
    min_severity: Literal["minor", "major", "critical"] = Field(
        "minor", description="open deviation episodes only from this severity on")
    suppress_patches: int = Field(
        2, ge=0, le=10_000, description="no deviation or flatline judgement during a new series' first patches")
    windows: tuple[int, ...] = Field(
        (1, 2, 3, 5, 8), description="window lengths (observations) of the deviation test; 1 catches spikes")
    resolve_after: int = Field(3, ge=1, le=10_000, description="quiet observations that resolve an episode")
    min_gap: int = Field(6, ge=0, le=100_000, description="observations after a resolve before the same kind opens again")
    flatline_window: int | None = Field(
        12, ge=2, le=100_000, description="identical values in a row that open a flatline (and more than the series "
        "ever repeated before)")
    dropout_slots: int | None = Field(6, ge=1, le=100_000, description="missing grid slots in a row that make a dropout")
    range: tuple[float, float] | None = Field(None, description="[min, max] physical range; values outside open out_of_range")

    @field_validator("windows")
    @classmethod
    def _check_windows(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("give at least one window length, e.g. [1, 2, 3, 5, 8]")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"window lengths must be strictly increasing, got {list(v)}")
        if v[0] < 1 or v[-1] > 64:
            raise ValueError(f"window lengths must lie in 1..64, got {list(v)}")
        return v

    @field_validator("range")
    @classmethod
    def _check_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None:
            lo, hi = v
            if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
                raise ValueError(f"need finite min < max, got [{lo}, {hi}]")
        return v


@dataclass(frozen=True)
class Thresholds:
    """Deviation thresholds in units of the window's own scale (|z|)."""

    z_open: float            # opens an episode (at min_severity)
    z_close: float           # every window below this for resolve_after observations resolves
    z_severity: tuple[float, float, float]   # minor, major, critical
    obs_per_week: float
    n_windows: int


def _z_for(budget: float, obs_per_week: float, n_windows: int) -> float:
    p = budget / (obs_per_week * n_windows)
    p = min(max(p, 1e-15), 0.5)
    return -_NORMAL.inv_cdf(p / 2)


def thresholds(s: AlertSettings, freq_ms: int) -> Thresholds:
    """The thresholds for a series of grid step ``freq_ms`` (z never below 3)."""
    if freq_ms <= 0:
        raise ValueError(f"freq_ms must be positive, got {freq_ms}")
    opw = WEEK_MS / freq_ms
    nw = len(s.windows)
    sev = tuple(max(3.0, _z_for(s.false_alarm_budget / _SEVERITY_DIVISOR[k], opw, nw)) for k in SEVERITIES)
    z_open = sev[SEVERITIES.index(s.min_severity)]
    return Thresholds(z_open=z_open, z_close=max(2.0, 0.6 * z_open), z_severity=sev,  # type: ignore[arg-type]
                      obs_per_week=opw, n_windows=nw)


def tail_probability(z: float, n_windows: int = 1) -> float:
    """Two-sided tail probability of |z| under N(0, 1), Bonferroni-adjusted over windows."""
    return min(1.0, n_windows * 2.0 * _NORMAL.cdf(-abs(z)))
