"""The dead-letter topic: a rejected input with its reason and the original bytes."""
from __future__ import annotations

import base64
import time
from typing import Literal

from pydantic import Field

from streamflame.core.timefmt import iso_ms
from streamflame.messages.codec import WireMessage, decode_as

class DeadLetter(WireMessage):
    """A rejected input (topic ``streamflame.dlq``).

    ``original`` is base64 of the original record value so any bytes (invalid
    UTF-8 included) survive; ``key`` is the record key as text when it is UTF-8,
    ``key_b64`` its base64 (both None when the record had no key). Both are whole unless
    ``key_truncated`` / ``original_truncated`` give the full length (the letter must fit
    one Kafka request: :class:`streamflame.adapters.kafka_io.DeadLetterWriter`).
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


def decode_dead_letter(raw: bytes | str) -> DeadLetter:
    return decode_as(DeadLetter, raw)
