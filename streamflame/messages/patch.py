"""The patches topic (internal): one completed patch of one series."""
from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from streamflame.core.constants import PATCH_LEN
from streamflame.messages.codec import WireMessage, decode_as
from streamflame.messages.rejects import MAX_ABS_VALUE

class PatchMessage(WireMessage):
    """One completed patch of one series (internal topic ``streamflame.patches``).

    ``values[i]`` is the observation at ``start_ms + i * freq_ms`` or None when
    the slot had no (valid) observation.
    """

    series_id: str = Field(min_length=1)
    seq: int = Field(ge=0, description="0-based patch index of the series")
    start_ms: int = Field(description="epoch ms of slot 0")
    freq_ms: int = Field(gt=0, description="grid step, ms")
    values: list[float | None]
    n_observed: int = Field(ge=0, le=PATCH_LEN, description="slots with a real observation")
    last_obs_ms: int = Field(description="timestamp of the last real observation of the series when the patch closed")
    partition: int = Field(ge=0)
    first_offset: int = Field(description="offset of the first observation inside the patch")
    last_offset: int = Field(description="offset of the last observation inside the patch")

    @field_validator("values")
    @classmethod
    def _check_values(cls, v: list[float | None]) -> list[float | None]:
        if len(v) != PATCH_LEN:
            raise ValueError(f"must have {PATCH_LEN} entries, got {len(v)}")
        # NaN is accepted in-process and travels as null (orjson writes NaN as null).
        out: list[float | None] = []
        for x in v:
            if x is None or x != x:
                out.append(None)
            elif -MAX_ABS_VALUE <= x <= MAX_ABS_VALUE:
                out.append(x)
            else:
                raise ValueError(f"values must be finite with |value| <= {MAX_ABS_VALUE!r} (float32's maximum)")
        return out

    @model_validator(mode="after")
    def _check_counts(self) -> "PatchMessage":
        observed = sum(x is not None for x in self.values)
        if observed != self.n_observed:
            raise ValueError(f"n_observed={self.n_observed} but {observed} values are not null")
        if self.first_offset > self.last_offset:
            raise ValueError(f"first_offset {self.first_offset} > last_offset {self.last_offset}")
        return self

    @property
    def end_ms(self) -> int:
        """Epoch ms just after the last slot: ``start_ms + 48 * freq_ms``."""
        return self.start_ms + PATCH_LEN * self.freq_ms

    def values_array(self):
        """Values as a float64 numpy array of shape (48,), NaN for missing."""
        import numpy as np

        return np.array([np.nan if x is None else x for x in self.values], dtype=np.float64)


def decode_patch(raw: bytes | str) -> PatchMessage:
    """Raises pydantic.ValidationError on a malformed record."""
    return decode_as(PatchMessage, raw)
