"""Rejections: the reason codes of dead letters (one table for every component), the error that
carries one, and the largest value accepted."""
from __future__ import annotations



MAX_ABS_VALUE = 3.4028234663852886e38
"""Largest accepted |value|: float32's maximum. The model computes in float32; a larger
finite value would become +-inf there and leave the series' state non-finite for good."""


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
