"""Message shapes on every StreamFlame topic: one module per topic, this package exports them.

Wire format is JSON (UTF-8) on all topics:

* :mod:`~streamflame.messages.observations`: the two observation forms and their hot-path decoder
  :func:`decode_observation_message` (hand-written checks over ``orjson``, no pydantic per
  observation), which raises :class:`RejectedMessage` with a short machine-readable reason code
  (:mod:`~streamflame.messages.rejects`: :data:`REJECT_REASONS`, one table for every component);
* pydantic v2 models for the other topics: :class:`PatchMessage` (internal,
  :mod:`~streamflame.messages.patch`), :class:`ForecastMessage` and :func:`forecast_seed`, the
  sampling seed of one forecast (:mod:`~streamflame.messages.forecast`), :class:`AlertMessage` /
  :class:`AlertEpisode` (:mod:`~streamflame.messages.alert`), :class:`DeadLetter`
  (:mod:`~streamflame.messages.dead_letter`);
* :func:`encode` (model -> JSON bytes) and ``decode_*`` helpers (:mod:`~streamflame.messages.codec`).

Timestamps, frequencies and the patch length live in :mod:`streamflame.core`.
See docs/schemas.md for examples and the reject-reason table.
"""
from __future__ import annotations

from streamflame.messages.alert import AlertEpisode, AlertMessage, alert_score, decode_alert, decode_alert_any
from streamflame.messages.codec import encode
from streamflame.messages.dead_letter import DeadLetter, decode_dead_letter
from streamflame.messages.forecast import ForecastMessage, decode_forecast, forecast_seed
from streamflame.messages.observations import (
    Observation,
    ObservationBatchMessage,
    ObservationMessage,
    ObservationRun,
    decode_observation_message,
    decode_observation_run,
)
from streamflame.messages.patch import PatchMessage, decode_patch
from streamflame.messages.rejects import MAX_ABS_VALUE, REJECT_REASONS, RejectedMessage

__all__ = [
    "MAX_ABS_VALUE", "REJECT_REASONS", "AlertEpisode", "AlertMessage", "DeadLetter", "ForecastMessage", "Observation",
    "ObservationBatchMessage", "ObservationMessage", "ObservationRun", "PatchMessage", "RejectedMessage",
    "alert_score", "decode_alert", "decode_alert_any", "decode_dead_letter", "decode_forecast",
    "decode_observation_message", "decode_observation_run", "decode_patch", "encode", "forecast_seed",
]
