"""Message shapes on every StreamFlame topic, in one place.

Wire format is JSON (UTF-8) on all topics. This module holds

* timestamp helpers: :func:`to_epoch_ms` (ISO-8601 or epoch milliseconds ->
  int epoch ms) and :func:`iso_ms` (epoch ms -> ``2024-01-01T00:00:00Z``);
* the observation decoder :func:`decode_observation_message` (hot path:
  hand-written checks over ``orjson``, no pydantic per observation), which
  raises :class:`RejectedMessage` with a short machine-readable reason code;
* pydantic v2 models for the other topics: :class:`PatchMessage`
  (internal), :class:`ForecastMessage`, :class:`AlertMessage`,
  :class:`DeadLetter`;
* :func:`encode` (model -> JSON bytes) and ``decode_*`` helpers;
* :func:`forecast_seed`, the sampling seed of one forecast.

See docs/schemas.md for examples and the reject-reason table.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import numbers
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, NamedTuple, Sequence

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PATCH_LEN = 48
"""Observations per patch; equals the model's ``config.patch_len``."""

MAX_ABS_VALUE = 3.4028234663852886e38
"""Largest accepted |value|: float32's maximum. The model computes in float32; a larger
finite value would become +-inf there and leave the series' state non-finite for good."""

# Datetime range Python can represent: 0001-01-01 .. 9999-12-31T23:59:59.999Z.
MIN_EPOCH_MS = -62_135_596_800_000
MAX_EPOCH_MS = 253_402_300_799_999

# ---------------------------------------------------------------------------
# Reject reasons (DLQ ``reason`` codes). One table for every component.
# ---------------------------------------------------------------------------

REJECT_REASONS: dict[str, str] = {
    # decode_observation_message (per message; the whole message is rejected)
    "empty_message": "the Kafka record has no value (tombstone) or zero bytes",
    "too_large": "message bytes above max_message_bytes, or a batch above max_batch observations",
    "invalid_utf8": "the bytes are not valid UTF-8",
    "invalid_json": "not parseable as JSON",
    "not_an_object": "the JSON value is not an object",
    "missing_field": "a required field (series_id, timestamp/value or timestamps/values) is absent",
    "ambiguous_form": "both the single form (timestamp/value) and the batch form (timestamps/values) fields are present",
    "bad_series_id": "series_id is not a non-empty string without control characters",
    "series_id_too_long": "series_id has more than max_series_id_len characters",
    "bad_timestamp": "a timestamp is not ISO-8601 or epoch milliseconds (or is out of range)",
    "bad_value": "a value is not a number or null (strings and booleans are not numbers)",
    "non_finite_value": "a value is NaN or +/-Infinity (send null for a missing value)",
    "value_out_of_range": "a finite value with |value| above 3.4028234663852886e38 (float32's maximum: the model computes in float32)",
    "length_mismatch": "timestamps and values have different lengths, or are not arrays",
    "key_mismatch": "the record key is not the series_id (a series must stay in one partition)",
    # ingest, per observation (series grid and ordering)
    "off_grid": "timestamp further than grid_tolerance of a step from the series' grid",
    "timestamp_too_far": "timestamp more than max_gap_steps grid steps after the last one",
    "future_timestamp": "timestamp more than future_tolerance_ms after the wall clock",
    "late": "timestamp at or before a slot already inside an emitted patch",
    "duplicate": "a second observation for a slot of the open patch",
    # worker
    "bad_patch": "a patches-topic record that does not decode as PatchMessage",
    "corrupt_state": "the stored state of the series could not be decoded",
    "patch_gap": "a patch whose seq is more than one past the series' stored state (patches missing in between); not applied",
    "series_quarantined": "a patch of a series whose stored state is quarantined; not applied",
}


class RejectedMessage(ValueError):
    """An input message that cannot be accepted.

    ``reason`` is a short code from :data:`REJECT_REASONS`; ``detail`` says what
    exactly was wrong, for humans (it names the field and, in a batch, the index).
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------


def to_epoch_ms(x: Any) -> int:
    """Convert a timestamp to integer epoch milliseconds (UTC).

    Accepts an ISO-8601 string (``2024-01-01T00:00:00Z``, ``...+02:00``,
    fractional seconds, date only; a string without offset is UTC) or a number
    of epoch *milliseconds* (int, or float rounded to the nearest ms; numpy
    scalars too). Booleans, numeric strings, NaN/inf and instants outside years
    1..9999 raise ValueError.
    """
    t = type(x)
    if t is str:
        try:
            dt = datetime.fromisoformat(x)
        except ValueError:
            raise ValueError(f"{x[:64]!r} is not an ISO-8601 timestamp") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        try:
            delta = dt - _EPOCH
        except OverflowError:  # e.g. 0001-01-01T00:00:00+05:00
            raise ValueError(f"{x[:64]!r} is outside years 1..9999") from None
        # Exact integer arithmetic (no float rounding of the microseconds).
        ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    elif t is int:
        ms = x
    elif t is float:
        if x - x != 0.0:
            raise ValueError(f"timestamp {x!r} is not finite")
        ms = round(x)
    elif isinstance(x, bool) or not isinstance(x, (numbers.Integral, numbers.Real)):
        raise ValueError(f"timestamp must be an ISO-8601 string or epoch milliseconds, got {_type_name(x)}")
    else:  # numpy scalars and other number types
        return to_epoch_ms(int(x) if isinstance(x, numbers.Integral) else float(x))
    if not MIN_EPOCH_MS <= ms <= MAX_EPOCH_MS:
        raise ValueError(f"timestamp {x!r} is outside years 1..9999")
    return ms


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def iso_ms(ms: int) -> str:
    """Epoch ms -> ISO-8601 UTC with a ``Z``; milliseconds only when non-zero.

    ``iso_ms(1704067200000) == "2024-01-01T00:00:00Z"``,
    ``iso_ms(1704067200123) == "2024-01-01T00:00:00.123Z"``.

    Never raises for an int: an instant outside years 1..9999 (a forecast step
    after an observation near 9999-12-31, say) is written in the ISO-8601
    expanded form with a sign and at least 5 year digits (``+10000-01-01T00:00:00Z``,
    ``-0001-12-31T00:00:00Z``, proleptic Gregorian; year 0 is 1 BC).
    """
    ms = int(ms)
    milli = ms % 1000
    if MIN_EPOCH_MS <= ms <= MAX_EPOCH_MS:
        day, rest = divmod(ms // 1000, 86_400)
        hh, rest = divmod(rest, 3600)
        mm, ss = divmod(rest, 60)
        base = f"{_iso_day(day)}T{hh:02d}:{mm:02d}:{ss:02d}"
    else:
        days, rest = divmod(ms // 1000, 86_400)
        y, m, dd = _civil_from_days(days)
        hh, rest = divmod(rest, 3600)
        mm, ss = divmod(rest, 60)
        year = f"+{y:05d}" if y > 9999 else f"-{-y:04d}" if y < 0 else f"{y:04d}"
        base = f"{year}-{m:02d}-{dd:02d}T{hh:02d}:{mm:02d}:{ss:02d}"
    return f"{base}.{milli:03d}Z" if milli else f"{base}Z"


@functools.lru_cache(maxsize=4096)
def _iso_day(days: int) -> str:
    """YYYY-MM-DD of a day number since 1970-01-01 (years 1..9999)."""
    d = _EPOCH + timedelta(days=days)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"


def _civil_from_days(z: int) -> tuple[int, int, int]:
    """Days since 1970-01-01 -> proleptic Gregorian (year, month, day), any int
    (H. Hinnant's ``civil_from_days``)."""
    z += 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


def _type_name(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "boolean"
    if isinstance(x, (int, float)):
        return "number"
    if isinstance(x, str):
        return "string"
    if isinstance(x, list):
        return "array"
    if isinstance(x, dict):
        return "object"
    return type(x).__name__


# ---------------------------------------------------------------------------
# Observations (hot path)
# ---------------------------------------------------------------------------


class Observation(NamedTuple):
    """One decoded observation. ``value`` None = explicitly missing."""

    series_id: str
    timestamp_ms: int
    value: float | None


class ObservationRun(NamedTuple):
    """One decoded observation message without per-element objects (ingest's hot
    path): element i is ``(timestamps_ms[i], values[i])``; a value None = missing."""

    series_id: str
    timestamps_ms: list[int]
    values: list[float | None]


class ObservationMessage(BaseModel):
    """Single form on ``streamflame.observations`` (documentation/schema model;
    the hot path uses :func:`decode_observation_message`)."""

    series_id: str
    timestamp: str | int | float = Field(description="ISO-8601 (naive = UTC) or epoch milliseconds")
    value: float | None = Field(description="finite number, or null for missing")


class ObservationBatchMessage(BaseModel):
    """Batch form on ``streamflame.observations``: element i is (timestamps[i], values[i])."""

    series_id: str
    timestamps: list[str | int | float]
    values: list[float | None]


_BAD_ID_CHARS = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def _check_value(v: Any, where: str) -> float | None:
    t = type(v)
    if t is int:
        try:
            v, t = float(v), float
        except OverflowError:  # an integer literal beyond the double range (stdlib fallback only)
            raise RejectedMessage("non_finite_value", f"{where} overflows a double") from None
    if t is float:
        if v - v != 0.0:  # NaN or +/-inf
            raise RejectedMessage("non_finite_value", f"{where} is {v!r}; send null for a missing value")
        if not -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE:
            raise RejectedMessage("value_out_of_range", f"{where} is {v!r}; |value| must be at most "
                                  f"{MAX_ABS_VALUE!r} (float32's maximum: the model computes in float32)")
        return v
    if v is None:
        return None
    raise RejectedMessage("bad_value", f"{where} must be a number or null, got {_type_name(v)}")


def _check_ts(x: Any, where: str) -> int:
    try:
        return to_epoch_ms(x)
    except ValueError as e:
        raise RejectedMessage("bad_timestamp", f"{where}: {e}") from None


_FLOAT_ONLY = {float}
_NUMBERS = {float, int}


def _validate_doc(doc: Any, max_series_id_len: int, max_batch: int) -> ObservationRun:
    if type(doc) is not dict:
        raise RejectedMessage("not_an_object", f"expected a JSON object, got {_type_name(doc)}")
    try:
        sid = doc["series_id"]
    except KeyError:
        raise RejectedMessage("missing_field", "series_id is missing") from None
    if type(sid) is not str or not sid or _BAD_ID_CHARS.search(sid):
        what = _type_name(sid) if type(sid) is not str else ("empty" if not sid else "contains control characters")
        raise RejectedMessage("bad_series_id", f"series_id must be a non-empty string without control characters ({what})")
    if len(sid) > max_series_id_len:
        raise RejectedMessage("series_id_too_long", f"series_id has {len(sid)} characters, the limit is {max_series_id_len}")

    batch = "timestamps" in doc or "values" in doc
    if batch:
        if "timestamp" in doc or "value" in doc:
            raise RejectedMessage("ambiguous_form", "give either timestamp/value or timestamps/values, not both")
        for name in ("timestamps", "values"):
            if name not in doc:
                raise RejectedMessage("missing_field", f"{name} is missing (batch form)")
        ts, vs = doc["timestamps"], doc["values"]
        if type(ts) is not list or type(vs) is not list:
            bad = "timestamps" if type(ts) is not list else "values"
            raise RejectedMessage("length_mismatch", f"{bad} must be an array, got {_type_name(doc[bad])}")
        if len(ts) != len(vs):
            raise RejectedMessage("length_mismatch", f"{len(ts)} timestamps but {len(vs)} values")
        if len(ts) > max_batch:
            raise RejectedMessage("too_large", f"batch of {len(ts)} observations, the limit is {max_batch}")
        if not ts:
            return ObservationRun(sid, [], [])
        # Fast path, loops in C: every timestamp an int epoch-ms in range, every value a
        # number whose sum is finite (a NaN/inf element makes the sum non-finite; a sum
        # that overflows only sends the message to the exact checks below) and within
        # +-MAX_ABS_VALUE.
        if set(map(type, ts)) == {int} and MIN_EPOCH_MS <= min(ts) and max(ts) <= MAX_EPOCH_MS:
            kinds = set(map(type, vs))
            if kinds <= _NUMBERS:
                try:
                    total = sum(vs)
                except OverflowError:
                    total = math.inf
                if total - total == 0.0 and -MAX_ABS_VALUE <= min(vs) and max(vs) <= MAX_ABS_VALUE:
                    return ObservationRun(sid, ts, vs if kinds == _FLOAT_ONLY else list(map(float, vs)))
        # The exact checks, which name the element. Error texts are built only on error.
        out_t: list[int] = []
        out_v: list[float | None] = []
        for i, (t, v) in enumerate(zip(ts, vs)):
            if (type(t) is not int or type(v) is not float or not -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE
                    or not MIN_EPOCH_MS <= t <= MAX_EPOCH_MS):
                t, v = _check_ts(t, f"timestamps[{i}]"), _check_value(v, f"values[{i}]")
            out_t.append(t)
            out_v.append(v)
        return ObservationRun(sid, out_t, out_v)

    try:
        t, v = doc["timestamp"], doc["value"]
    except KeyError:
        raise RejectedMessage("missing_field", f"{'timestamp' if 'timestamp' not in doc else 'value'} is missing") from None
    if (type(t) is not int or type(v) is not float or not -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE
            or not MIN_EPOCH_MS <= t <= MAX_EPOCH_MS):
        t, v = _check_ts(t, "timestamp"), _check_value(v, "value")
    return ObservationRun(sid, [t], [v])


def decode_observation_message(
    raw: bytes | bytearray | memoryview | str | None,
    *,
    max_series_id_len: int = 256,
    max_message_bytes: int = 1_000_000,
    max_batch: int = 100_000,
) -> list[Observation]:
    """Decode one ``streamflame.observations`` record value.

    Accepts ``{"series_id", "timestamp", "value"}`` or
    ``{"series_id", "timestamps": [...], "values": [...]}``; other keys are
    ignored. Returns the observations in message order (a batch may be empty).

    Policy: the message is the unit of rejection. One bad element of a batch
    rejects the whole message (the detail names its index) so that a message is
    either applied entirely or lands in the DLQ entirely. Raises only
    :class:`RejectedMessage`. :func:`decode_observation_run` is the same decoder
    returning lists instead of one object per observation.
    """
    sid, ts, vs = decode_observation_run(raw, max_series_id_len=max_series_id_len,
                                         max_message_bytes=max_message_bytes, max_batch=max_batch)
    return [Observation(sid, t, v) for t, v in zip(ts, vs)]


def decode_observation_run(
    raw: bytes | bytearray | memoryview | str | None,
    *,
    max_series_id_len: int = 256,
    max_message_bytes: int = 1_000_000,
    max_batch: int = 100_000,
) -> ObservationRun:
    """:func:`decode_observation_message` as one :class:`ObservationRun` (ingest's hot path)."""
    if raw is None or len(raw) == 0:
        raise RejectedMessage("empty_message", "the record has no value")
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > max_message_bytes:
        raise RejectedMessage("too_large", f"{len(raw)} bytes, the limit is {max_message_bytes}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        _raise_decode_failure(bytes(raw), e, max_series_id_len, max_batch)
    return _validate_doc(doc, max_series_id_len, max_batch)


def _raise_decode_failure(raw: bytes, err: Exception, max_series_id_len: int, max_batch: int):
    """orjson refused the bytes: find the most useful reason and raise it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RejectedMessage("invalid_utf8", f"byte {e.start}: {e.reason}") from None
    # The stdlib parser accepts NaN/Infinity/1e400 (Python's json.dumps writes
    # NaN by default); report those as non_finite_value rather than invalid_json.
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        doc = None
    else:
        try:
            _validate_doc(doc, max_series_id_len, max_batch)
        except RejectedMessage as rej:
            if rej.reason == "non_finite_value":
                raise rej from None
    raise RejectedMessage("invalid_json", str(err)) from None


# ---------------------------------------------------------------------------
# Forecast seed
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Models for the other topics
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def format_level(q: float) -> str:
    """Quantile level -> its key in ``quantiles``: 0.1 -> "0.1", 0.05 -> "0.05", 0.975 -> "0.975".

    Rounded to 6 decimals so float32 levels and 0.1+0.2 style noise map to the
    same key (the config refuses levels that differ only beyond 6 decimals).
    """
    s = f"{round(float(q), 6):.6f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False)


class PatchMessage(_Msg):
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


class ForecastMessage(_Msg):
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
        from streamflame.config import format_frequency  # frequency strings live in config

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


def alert_score(value: float, lower: float, upper: float) -> tuple[str, float] | None:
    """Direction and score of ``value`` against the interval [lower, upper].

    Returns None inside the interval (bounds included), else ("above", (value -
    upper) / width) or ("below", (lower - value) / width) with width = upper -
    lower, floored at 1e-9 * max(1, |lower|, |upper|) so a collapsed interval
    still gives a finite score.
    """
    if lower <= value <= upper:
        return None
    width = max(upper - lower, 1e-9 * max(1.0, abs(lower), abs(upper)))
    if value > upper:
        return "above", (value - upper) / width
    return "below", (lower - value) / width


class AlertMessage(_Msg):
    """An observation outside the interval of the forecast published before it
    (topic ``streamflame.alerts``, key = series_id)."""

    series_id: str
    timestamp: str = Field(description="ISO-8601 of the observation")
    timestamp_ms: int
    value: float
    lower: float = Field(description="forecast quantile at levels[0] for this step")
    upper: float = Field(description="forecast quantile at levels[1] for this step")
    levels: tuple[float, float]
    forecast_seq: int = Field(ge=0, description="seq of the forecast whose interval is broken")
    step: int = Field(ge=1, description="1-based step of that forecast")
    score: float = Field(ge=0, description="distance outside the interval in interval widths")
    direction: Literal["above", "below"]


class AlertEpisode(_Msg):
    """An event of an alert episode (topic ``streamflame.alerts``, key = series_id),
    published by ingest as the observation that causes it is read
    (``streamflame.alerts.episodes``; docs/schemas.md)."""

    event: Literal["open", "update", "resolve"]
    alert_id: str = Field(description="<series_id>/<kind>/<started_ms>: the same for every event of an episode")
    series_id: str
    kind: Literal["deviation", "flatline", "dropout", "out_of_range"]
    timestamp: str = Field(description="ISO-8601 of the observation (grid slot) that caused the event")
    timestamp_ms: int
    started_at: str = Field(description="ISO-8601 of the first anomalous slot of the episode")
    started_ms: int
    severity: Literal["minor", "major", "critical"]
    score: float = Field(ge=0, description="how far past the opening threshold (>= 1 when it opened)")
    value: float | None = Field(description="the observation (null for a missing one)")
    expected: float | None = None
    p_value: float | None = Field(None, description="deviation: tail probability, adjusted over the windows")
    direction: Literal["above", "below"] | None = None
    observations: int = Field(ge=1, description="observations in the episode so far")
    group: str | None = None


def decode_alert_any(raw: bytes | str) -> "AlertMessage | AlertEpisode":
    """A record of ``streamflame.alerts``: an episode event (it has ``event``) or a
    worker's per-point alert."""
    if (b'"event"' if isinstance(raw, (bytes, bytearray)) else '"event"') in raw:
        return _decode(AlertEpisode, raw)
    return _decode(AlertMessage, raw)


class DeadLetter(_Msg):
    """A rejected input (topic ``streamflame.dlq``).

    ``original`` is base64 of the original record value so any bytes (invalid
    UTF-8 included) survive; ``key`` is the record key as text when it is UTF-8,
    ``key_b64`` its base64 (both None when the record had no key). Both are whole unless
    ``key_truncated`` / ``original_truncated`` give the full length (the letter must fit
    one Kafka request: :class:`streamflame.kafka_io.DeadLetterWriter`).
    """

    reason: str
    detail: str
    source_topic: str
    partition: int
    offset: int
    key: str | None = None
    key_b64: str | None = None
    original: str | None = Field(default=None, description="base64 of the original value bytes")
    index: int | None = Field(default=None, description="element index inside a batch message, when one element was rejected")
    indices: list[int] | None = Field(
        default=None, description="all rejected element indices when several elements of one batch message were "
        "rejected for the same reason (one dead letter for them; index is the first)")
    series_id: str | None = None
    rejected_at: str
    component: Literal["ingest", "worker"]
    key_truncated: int | None = Field(
        default=None, description="the source key's length in bytes when key/key_b64 hold only its first bytes")
    original_truncated: int | None = Field(
        default=None, description="the source value's length in bytes when original holds only its first bytes")

    @classmethod
    def build(
        cls,
        reason: str,
        detail: str,
        *,
        source_topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        original: bytes | None,
        component: Literal["ingest", "worker"],
        series_id: str | None = None,
        index: int | None = None,
        indices: list[int] | None = None,
        rejected_at_ms: int | None = None,
        key_truncated: int | None = None,
        original_truncated: int | None = None,
    ) -> "DeadLetter":
        key_text = None
        if key is not None:
            try:
                key_text = bytes(key).decode("utf-8")
            except UnicodeDecodeError:
                key_text = None
        now = int(time.time() * 1000) if rejected_at_ms is None else rejected_at_ms
        return cls(
            reason=reason,
            detail=detail,
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            key=key_text,
            key_b64=None if key is None else base64.b64encode(bytes(key)).decode("ascii"),
            original=None if original is None else base64.b64encode(bytes(original)).decode("ascii"),
            index=index,
            indices=indices,
            series_id=series_id,
            rejected_at=iso_ms(now),
            component=component,
            key_truncated=key_truncated,
            original_truncated=original_truncated,
        )

    def original_bytes(self) -> bytes | None:
        return None if self.original is None else base64.b64decode(self.original)

    def key_bytes(self) -> bytes | None:
        return None if self.key_b64 is None else base64.b64decode(self.key_b64)


# ---------------------------------------------------------------------------
# Encode / decode
# ---------------------------------------------------------------------------

_ENCODE_OPTS = orjson.OPT_SERIALIZE_NUMPY


def _fields(model: BaseModel) -> dict[str, Any]:
    """The fields to write: the model's own field dict (pydantic keeps them in declaration
    order; every message ignores extra fields), without an unset optional array."""
    d = model.__dict__
    if any(d.get(k, 0) is None for k in _OMIT_NONE):
        return {k: v for k, v in d.items() if not (v is None and k in _OMIT_NONE)}
    return d


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return _fields(obj)
    if hasattr(obj, "tolist"):  # numpy scalars / non-contiguous arrays
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


_OMIT_NONE = frozenset({"samples"})  # optional arrays are left out rather than written as null


def encode(model: BaseModel) -> bytes:
    """Model -> compact JSON bytes (orjson; numpy arrays written directly, NaN -> null).

    The top-level fields go to orjson as a dict (``_fields``), not through the default hook:
    the same bytes, ~5 us less per message."""
    return orjson.dumps(_fields(model), default=_default, option=_ENCODE_OPTS)


def _decode(cls, raw: bytes | str):
    return cls.model_validate_json(raw)


def decode_patch(raw: bytes | str) -> PatchMessage:
    """Raises pydantic.ValidationError on a malformed record."""
    return _decode(PatchMessage, raw)


def decode_forecast(raw: bytes | str) -> ForecastMessage:
    return _decode(ForecastMessage, raw)


def decode_alert(raw: bytes | str) -> AlertMessage:
    return _decode(AlertMessage, raw)


def decode_dead_letter(raw: bytes | str) -> DeadLetter:
    return _decode(DeadLetter, raw)
