"""Alert settings of a series group (``defaults.alerts`` / ``groups[i].alerts``) and the
thresholds derived from them.

The false-alarm budget is the number of false episodes per series per week the group
accepts. The deviation judge (judge.py, episodes.py) opens an episode on one of three
tests, each given a share of the budget (``SHARES``) and a threshold that spends that
share under a normal model, ``observations_per_week`` chances a week:

- ``long``: the windows longer than one observation (level shifts, drifts). Their threshold
  comes from the series' own tail of ``|z|`` (judge.py ``wtail_*``), ``tail_u + m ln(r / p)``
  with ``p = long_tail share * budget / observations_per_week``, as ``now``'s does; until that
  tail is known, the normal one, Bonferroni over the windows: two-sided
  ``p = long share * budget / (n_long * observations_per_week)``;
- ``confirm``: a spike, i.e. the jump from the value before and the next value's return
  both past ``z`` scales of the one-step changes (judge.py ``zd``; two tails that must both
  occur: ``p = (2 Phi(-z))^2``);
- ``now``: ``|z_1|`` alone, opened at the same observation. Its threshold comes from the
  series' own tail of ``|z_1|`` (judge.py: the rate ``r`` past ``tail_u`` and the mean
  excess ``m``): ``tail_u + m ln(r / p)``, so each series spends its share whatever its
  tails; until that tail is known (``tail_min`` values), the normal quantile of
  ``NOW_WARMUP_SHARE`` of the budget (gross errors only).

The shares of the tests with a normal-model threshold (``long``, ``confirm``) are far below
1 because real sensor data are heavy-tailed: one-step changes of 4-5 standard deviations
come several times a week in hourly weather data, so a test that spends the whole budget
under the normal model opens several times it; ``now`` is calibrated on each series' own
tail and takes the largest share. They were set on the training split (``streamflame bench
alerts-offline``) so that the realised rate of false episodes is about the budget;
docs/benchmarks.md has the figures. The same rules with
the budget divided by 10 and by 100 set the ``major`` and ``critical`` severities;
``min_severity`` raises the opening thresholds to that severity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["AlertSettings", "Thresholds", "thresholds", "tail_probability", "confirm_probability", "SEVERITIES",
           "SHARES", "NOW_WARMUP_SHARE", "WEEK_MS"]

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


P_FLOOR = 1e-300
"""The smallest p_value published: the normal tail underflows to 0 past |z| ~ 38, and a
p_value of 0 would claim certainty."""
SHARES = {"long": 0.01, "long_tail": 0.1, "confirm": 0.0006, "now": 0.6}
NOW_WARMUP_SHARE = 1e-4
"""The share of the false-alarm budget each deviation test spends under the normal model."""


@dataclass(frozen=True)
class Thresholds:
    """Deviation thresholds in units of the statistics' own scales (|z|), per severity
    (minor, major, critical); ``z_open``, ``z_confirm``, ``z_now`` are those at ``min_severity``."""

    z_open: float            # a window longer than one opens an episode
    z_close: float           # every statistic below this for resolve_after observations resolves
    z_severity: tuple[float, float, float]
    z_confirm: float         # a spike confirmed by the next value opens an episode
    z_confirm_severity: tuple[float, float, float]
    z_now: float             # |z_1| alone opens an episode at once (until the series' tail is known)
    z_now_severity: tuple[float, float, float]
    p_now: tuple[float, float, float]   # per observation, what the one-value test may spend (its tail known)
    p_long: tuple[float, float, float]  # ... and the windows' test (their tail known)
    obs_per_week: float
    n_windows: int           # windows longer than one (the Bonferroni count of ``long``)


def _z_for(budget: float, obs_per_week: float, n_windows: int) -> float:
    p = budget / (obs_per_week * n_windows)
    p = min(max(p, 1e-15), 0.5)
    return -_NORMAL.inv_cdf(p / 2)


def _z_confirm_for(budget: float, obs_per_week: float) -> float:
    """The ``z`` that two independent two-sided tails both pass with probability ``p``."""
    p = min(max(budget / obs_per_week, 1e-30), 0.25)
    return -_NORMAL.inv_cdf(math.sqrt(p) / 2)


def thresholds(s: AlertSettings, freq_ms: int) -> Thresholds:
    """The thresholds for a series of grid step ``freq_ms`` (the ``long`` and ``now`` ones
    never below 3, ``confirm`` never below 2)."""
    if freq_ms <= 0:
        raise ValueError(f"freq_ms must be positive, got {freq_ms}")
    opw = WEEK_MS / freq_ms
    nw = max(1, len(s.windows) - (s.windows[0] == 1))
    b = [s.false_alarm_budget / _SEVERITY_DIVISOR[k] for k in SEVERITIES]
    long = tuple(max(3.0, _z_for(x * SHARES["long"], opw, nw)) for x in b)
    confirm = tuple(max(2.0, _z_confirm_for(x * SHARES["confirm"], opw)) for x in b)
    now = tuple(max(3.0, _z_for(x * NOW_WARMUP_SHARE, opw, 1)) for x in b)
    p_now = tuple(min(0.5, x * SHARES["now"] / opw) for x in b)
    p_long = tuple(min(0.5, x * SHARES["long_tail"] / opw) for x in b)
    i = SEVERITIES.index(s.min_severity)
    return Thresholds(z_open=long[i], z_close=max(2.0, 0.6 * long[i]), z_severity=long,  # type: ignore[arg-type]
                      z_confirm=confirm[i], z_confirm_severity=confirm,  # type: ignore[arg-type]
                      z_now=now[i], z_now_severity=now, p_now=p_now, p_long=p_long,  # type: ignore[arg-type]
                      obs_per_week=opw, n_windows=nw)


def confirm_probability(z: float) -> float:
    """Probability that both two-sided tails of a confirmed spike pass ``|z|`` under N(0, 1)
    (never below ``P_FLOOR``)."""
    return min(1.0, max(P_FLOOR, (2.0 * _NORMAL.cdf(-abs(z))) ** 2))


def tail_probability(z: float, n_windows: int = 1) -> float:
    """Two-sided tail probability of |z| under N(0, 1), Bonferroni-adjusted over windows (never
    below ``P_FLOOR``)."""
    return min(1.0, max(P_FLOOR, n_windows * 2.0 * _NORMAL.cdf(-abs(z))))
