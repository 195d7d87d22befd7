"""Series groups: the settings a group of series shares (``defaults`` and each ``groups[i]``)."""
from __future__ import annotations

import fnmatch
import functools
import re
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from streamflame.alerts.settings import AlertSettings
from streamflame.config.sections import MAX_HORIZON, _Base
from streamflame.core.constants import DEFAULT_QUANTILES
from streamflame.core.frequency import format_frequency, format_level, parse_frequency

# ---------------------------------------------------------------------------
# Series groups
# ---------------------------------------------------------------------------

_GROUP_SETTING_FIELDS = (
    "frequency", "horizon", "quantiles", "num_samples", "scale",
    "alert_levels", "min_history_patches", "include_samples", "alerts",
)


class GroupSettings(_Base):
    """Forecast settings of one series group (read-only once built).

    ``quantiles`` already contains both ``alert_levels`` (they are added when
    absent), so ``quantiles`` is exactly the key set of a forecast's quantiles.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    name: str = "default"
    frequency: str | None = Field(None, description="grid step ('10min', 'PT15M'); None = infer from the first observations")
    horizon: int = Field(96, ge=1, le=MAX_HORIZON)
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    num_samples: int = Field(100, ge=1, le=10_000)
    scale: float = Field(1.0, gt=0, allow_inf_nan=False, description="sampling-rate scale factor of the model")
    alert_levels: tuple[float, float] | None = Field(
        None, description="(lo, hi) quantile levels of the worker's per-point alerts; None (the default) = "
        "none: alert episodes (``alerts``) are the alerting product. A 98% interval, (0.01, 0.99), flags ~1 "
        "observation in 50 of a well-calibrated series")
    min_history_patches: int = Field(1, ge=1, le=100_000)
    include_samples: bool = False
    alerts: AlertSettings = Field(AlertSettings(), description="alert episodes judged in ingest (streamflame/alerts/)")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", v):
            raise ValueError(f"{v!r}: use 1-64 letters, digits or _ . : -")
        return v

    @field_validator("frequency", mode="before")
    @classmethod
    def _check_frequency(cls, v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, str):
            raise ValueError(f"give a duration string such as '10min' or 'PT10M', got {v!r}")
        return format_frequency(parse_frequency(v))

    @field_validator("quantiles")
    @classmethod
    def _check_quantiles(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v:
            raise ValueError("must not be empty")
        if len(v) > 99:
            raise ValueError(f"at most 99 levels, got {len(v)}")
        for q in v:
            if not 0.0 < q < 1.0:
                raise ValueError(f"{q} is not strictly between 0 and 1")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("must be strictly increasing (sorted, no duplicates)")
        _check_level_keys(v)
        return v

    @field_validator("alert_levels")
    @classmethod
    def _check_alert_levels(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is None:
            return None
        lo, hi = v
        if not 0.0 < lo < hi < 1.0:
            raise ValueError(f"need 0 < lo < hi < 1, got ({lo}, {hi})")
        return v

    @model_validator(mode="after")
    def _add_alert_levels(self) -> "GroupSettings":
        if self.alert_levels is not None:
            keys = {format_level(q) for q in self.quantiles}
            extra = [q for q in self.alert_levels if format_level(q) not in keys]
            if extra:
                merged = tuple(sorted(self.quantiles + tuple(extra)))
                _check_level_keys(merged)
                self.__dict__["quantiles"] = merged  # frozen model: set once, here
        return self

    @functools.cached_property
    def freq_ms(self) -> int | None:
        """Grid step in ms, or None when the frequency is inferred."""
        return None if self.frequency is None else parse_frequency(self.frequency)

    @property
    def quantile_keys(self) -> list[str]:
        """Keys of ``ForecastMessage.quantiles``, in level order."""
        return [format_level(q) for q in self.quantiles]


def _check_level_keys(levels: tuple[float, ...]) -> None:
    keys = [format_level(q) for q in levels]
    if len(set(keys)) != len(keys):
        raise ValueError(f"levels {list(levels)} collide when rounded to 6 decimals")


class SeriesGroup(GroupSettings):
    """A named group: exactly one of ``match`` (glob) or ``regex`` (full match)."""

    name: str
    match: str | None = Field(None, description="glob on series_id (fnmatch, case-sensitive; * also matches dots)")
    regex: str | None = Field(None, description="regular expression that must match the whole series_id")

    @field_validator("match")
    @classmethod
    def _check_match(cls, v: str | None) -> str | None:
        if v is not None and not v:
            raise ValueError("must not be empty")
        return v

    @field_validator("regex")
    @classmethod
    def _check_regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"invalid regular expression: {e}") from None
        return v

    @model_validator(mode="after")
    def _check_one_matcher(self) -> "SeriesGroup":
        if (self.match is None) == (self.regex is None):
            raise ValueError("give exactly one of match (glob) or regex")
        return self

    def matches(self, series_id: str) -> bool:
        if self.match is not None:
            return fnmatch.fnmatchcase(series_id, self.match)
        return self._compiled.fullmatch(series_id) is not None

    @functools.cached_property
    def _compiled(self) -> re.Pattern[str]:
        return re.compile(self.regex or "")


