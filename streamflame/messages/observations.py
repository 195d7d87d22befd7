"""The observations topic: the two message forms and their hot-path decoder (hand-written checks over
``orjson``, no pydantic per observation), which raises :class:`~streamflame.messages.rejects.RejectedMessage`."""
from __future__ import annotations

import json
import math
import re
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, Field

from streamflame.core.timefmt import MAX_EPOCH_MS, MIN_EPOCH_MS, json_type_name as _type_name, to_epoch_ms
from streamflame.messages.rejects import MAX_ABS_VALUE, RejectedMessage

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
