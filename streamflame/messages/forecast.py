"""The forecasts topic: one forecast of one series, and the sampling seed it was drawn with."""
from __future__ import annotations

import hashlib
import time
from typing import Sequence

from pydantic import Field, model_validator

from streamflame.core.frequency import format_frequency, format_level
from streamflame.core.timefmt import iso_ms
from streamflame.messages.codec import WireMessage, decode_as

def forecast_seed(global_seed: int, series_id: str, seq: int) -> int:
    """Sampling seed of the forecast made after patch ``seq`` of ``series_id``.

    Definition (stable across processes, platforms and Python versions)::

        blake2b(b"%d\\x00%d\\x00" % (global_seed, seq) + series_id.encode("utf-8"),
                digest_size=8, person=b"streamflame.seed")
        -> first 8 bytes as little-endian unsigned int, top bit cleared (63 bits)
    """
    h = hashlib.blake2b(
        b"%d\x00%d\x00" % (int(global_seed), int(seq)) + series_id.encode("utf-8", "surrogatepass"),
        digest_size=8,
        person=b"streamflame.seed",
    )
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


class ForecastMessage(WireMessage):
    """A rolling probabilistic forecast (topic ``streamflame.forecasts``, key = series_id).

    Step ``k`` (1-based, k = 1..horizon) is at ``origin_ms + k * freq_ms``;
    ``start`` is step 1. ``mean[k-1]`` and ``quantiles[level][k-1]`` belong to
    step k. Array values are what ``Forecaster.forecast`` gives: float64 on a decimal grid
    of 1e-7 of the series' scale, the float32 model's resolution (docs/schemas.md).
    """

    series_id: str
    seq: int = Field(ge=0, description="sequence number of the patch after which this forecast was made")
    origin: str = Field(description="ISO-8601 of the last grid slot fed to the model")
    origin_ms: int
    frequency: str = Field(description="grid step, e.g. '10min'")
    freq_ms: int = Field(gt=0)
    horizon: int = Field(ge=1)
    start: str = Field(description="ISO-8601 of step 1 = origin + freq")
    mean: list[float | None]
    quantiles: dict[str, list[float | None]] = Field(description='{"0.1": [H], ...}, keys from format_level')
    samples: list[list[float | None]] | None = Field(default=None, description="[S][H] sample paths, only when configured")
    model_id: str
    produced_at: str = Field(description="ISO-8601 wall-clock time of publication")
    group: str | None = Field(default=None, description="name of the series group whose settings were used")

    @model_validator(mode="after")
    def _check_shapes(self) -> "ForecastMessage":
        h = self.horizon
        if len(self.mean) != h:
            raise ValueError(f"mean has {len(self.mean)} steps, horizon is {h}")
        for k, v in self.quantiles.items():
            if len(v) != h:
                raise ValueError(f"quantiles[{k!r}] has {len(v)} steps, horizon is {h}")
        for i, path in enumerate(self.samples or ()):
            if len(path) != h:
                raise ValueError(f"samples[{i}] has {len(path)} steps, horizon is {h}")
        return self

    def step_ms(self, k: int) -> int:
        """Epoch ms of step k (1-based)."""
        return self.origin_ms + k * self.freq_ms

    def step_timestamps_ms(self) -> list[int]:
        return [self.origin_ms + k * self.freq_ms for k in range(1, self.horizon + 1)]

    @classmethod
    def build(
        cls,
        *,
        series_id: str,
        seq: int,
        origin_ms: int,
        freq_ms: int,
        mean: Sequence[float],
        quantile_levels: Sequence[float],
        quantiles: Sequence[Sequence[float]],
        model_id: str,
        samples: Sequence[Sequence[float]] | None = None,
        produced_at_ms: int | None = None,
        frequency: str | None = None,
        group: str | None = None,
    ) -> "ForecastMessage":
        """Assemble from model outputs without per-number validation (fast).

        ``mean`` (H,), ``quantiles`` (Q, H) aligned with ``quantile_levels``,
        ``samples`` (S, H) or None; numpy arrays are kept as they are and written
        by :func:`encode` without a Python-float round trip.
        """
        horizon = len(mean)
        if len(quantiles) != len(quantile_levels):
            raise ValueError(f"{len(quantiles)} quantile rows for {len(quantile_levels)} levels")
        produced = int(time.time() * 1000) if produced_at_ms is None else produced_at_ms
        return cls.model_construct(
            series_id=series_id,
            seq=int(seq),
            origin=iso_ms(origin_ms),
            origin_ms=int(origin_ms),
            frequency=frequency or format_frequency(freq_ms),
            freq_ms=int(freq_ms),
            horizon=horizon,
            start=iso_ms(origin_ms + freq_ms),
            mean=mean,
            quantiles={format_level(q): row for q, row in zip(quantile_levels, quantiles)},
            samples=samples,
            model_id=model_id,
            produced_at=iso_ms(produced),
            group=group,
        )


def decode_forecast(raw: bytes | str) -> ForecastMessage:
    return decode_as(ForecastMessage, raw)
