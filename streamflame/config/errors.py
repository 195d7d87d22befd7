"""The one error type of the config: its lines read ``<field path>: <problem>``."""
from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration. ``problems``: lines ``<field path>: <problem>``."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + p for p in self.problems))


