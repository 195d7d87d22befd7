"""Dataclass configs from plain dicts (YAML, JSON): an unknown key is a clear error naming it,
not a TypeError from the constructor."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def from_fields(cls: type[T], raw: dict[str, Any], what: str) -> T:
    """cls(**raw) when every key of raw is a field of the dataclass cls; else ValueError
    "unknown {what} fields [...]"."""
    unknown = set(raw) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} fields {sorted(unknown)}")
    return cls(**raw)
