"""The whole service config: :class:`ServiceConfig` and the sources it is read from."""
from __future__ import annotations

import contextvars
import functools
import json
import os
from typing import Any, Literal

from pydantic import PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from streamflame.config.errors import ConfigError
from streamflame.config.groups import _GROUP_SETTING_FIELDS, GroupSettings, SeriesGroup
from streamflame.config.sections import (
    ENV_PREFIX,
    IngestSettings,
    KafkaSettings,
    MetricsSettings,
    RedisSettings,
    TopicSettings,
    WorkerSettings,
)

# ---------------------------------------------------------------------------
# The whole configuration
# ---------------------------------------------------------------------------

_FILE_DATA: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("streamflame_file_data", default={})
_SECRETS = (("kafka", "sasl_password"), ("redis", "password"))
_EMBEDDED_WHEN_UNSET = (("kafka", "bootstrap"), ("redis", "url"))
"""Connection settings whose absence tells `streamflame up` to start the embedded service."""


def _group_name_problems(names: list[Any]) -> list[str]:
    """Every reserved or repeated group name (names that are not strings are reported elsewhere)."""
    seen: dict[str, int] = {}
    out = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name == "default":
            out.append(f"groups[{i}].name: 'default' is reserved for the defaults section")
        elif name in seen:
            out.append(f"groups[{i}].name: {name!r} is already used by groups[{seen[name]}]")
        else:
            seen[name] = i
    return out


def _raw_group_problems(data: dict[str, Any]) -> list[str]:
    """Group problems pydantic reports only once every group is otherwise valid (names) or once
    the group's fields are (one matcher), found in the raw input so that one pass shows them all."""
    groups = data.get("groups")
    env = os.environ.get(ENV_PREFIX + "GROUPS")
    if env:
        try:
            groups = json.loads(env)
        except ValueError:
            return []
    if not isinstance(groups, list):
        return []
    out = _group_name_problems([g.get("name") if isinstance(g, dict) else None for g in groups])
    for i, g in enumerate(groups):
        if isinstance(g, dict) and (g.get("match") is None) == (g.get("regex") is None):
            out.append(f"groups[{i}]: give exactly one of match (glob) or regex")
    return out


class _FileSource(PydanticBaseSettingsSource):
    """The parsed YAML of the file being loaded (set by :func:`load_config`)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused, __call__ does it all
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _FILE_DATA.get()


class _MetricsPortEnvSource(PydanticBaseSettingsSource):
    """``STREAMFLAME_METRICS_PORT`` (single underscore), below ``STREAMFLAME_METRICS__PORT``."""

    def get_field_value(self, field, field_name):  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        v = os.environ.get("STREAMFLAME_METRICS_PORT", "")
        if not v:
            return {}
        return {"metrics": {"port": None if v.lower() in ("null", "none", "off") else v}}


class ServiceConfig(BaseSettings):
    """Everything ingest and worker need. See docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_parse_none_str="null",
        env_ignore_empty=True,
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    ingest: IngestSettings = IngestSettings()
    worker: WorkerSettings = WorkerSettings()
    metrics: MetricsSettings = MetricsSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    defaults: GroupSettings = GroupSettings()
    groups: list[SeriesGroup] = []

    _resolve_cached: Any = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _MetricsPortEnvSource(settings_cls), _FileSource(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _inherit_defaults(cls, data: Any) -> Any:
        """Fill each group's unset settings from ``defaults`` (raw input level, so
        a problem is reported at the group that wrote the value)."""
        if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
            return data
        raw_defaults = data.get("defaults") or {}
        if isinstance(raw_defaults, GroupSettings):
            raw_defaults = {f: getattr(raw_defaults, f) for f in raw_defaults.model_fields_set}
        if not isinstance(raw_defaults, dict):
            return data
        try:
            GroupSettings.model_validate(raw_defaults)
        except ValidationError:
            return data  # reported under defaults.*; groups keep built-in defaults
        inherited = {k: v for k, v in raw_defaults.items() if k in _GROUP_SETTING_FIELDS}
        groups = []
        for g in data["groups"]:
            if isinstance(g, SeriesGroup):
                g = g.model_dump(include=g.model_fields_set | {"name", "match", "regex"})
            groups.append({**inherited, **g} if isinstance(g, dict) else g)
        return {**data, "groups": groups}

    @field_validator("groups")
    @classmethod
    def _unique_names(cls, groups: list[SeriesGroup]) -> list[SeriesGroup]:
        problems = _group_name_problems([g.name for g in groups])
        if problems:
            raise ValueError("\n".join(problems))
        return groups

    def __eq__(self, other: object) -> bool:
        """Equal settings (the resolve_group cache does not count)."""
        if not isinstance(other, ServiceConfig):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]

    def resolve_group(self, series_id: str) -> GroupSettings:
        """Settings for a series: the first group that matches, else ``defaults`` (cached)."""
        if self._resolve_cached is None:
            groups, defaults = tuple(self.groups), self.defaults

            @functools.lru_cache(maxsize=1 << 18)
            def resolve(sid: str) -> GroupSettings:
                for g in groups:
                    if g.matches(sid):
                        return g
                return defaults

            self._resolve_cached = resolve
        return self._resolve_cached(series_id)

    def group_names(self) -> list[str]:
        return [g.name for g in self.groups] + ["default"]

    def check_horizons(self, max_horizon: int) -> None:
        """Raise ConfigError if a group asks for more steps than the model can give."""
        problems = [
            f"{path}.horizon: {g.horizon} exceeds the model's max_horizon {max_horizon}"
            for path, g in [("defaults", self.defaults)] + [(f"groups[{i}]", g) for i, g in enumerate(self.groups)]
            if g.horizon > max_horizon
        ]
        if problems:
            raise ConfigError(problems)

    def as_file(self) -> tuple[dict[str, Any], list[str]]:
        """The effective settings as a config file that loads back to the same settings, for
        `streamflame up`, ingest and worker alike (`config check` / `show` print it), and notes
        on what it leaves out: ``kafka.bootstrap`` / ``redis.url`` when not set (unset, `up`
        starts its embedded broker and redis; spelled out, they would name external ones) and
        secrets (never printed; given again by their environment variables)."""
        d = self.effective(mask_secrets=False)
        notes = []
        for section, name in _EMBEDDED_WHEN_UNSET:
            if name not in getattr(self, section).model_fields_set:
                default = d[section].pop(name)
                notes.append(f"{section}.{name} not set: `streamflame up` starts its own; "
                             f"ingest and worker alone use {default}")
        for section, name in _SECRETS:
            if d[section][name] is not None:
                del d[section][name]
                notes.append(f"{section}.{name} is set but not printed: give it again "
                             f"({ENV_PREFIX}{section.upper()}__{name.upper()})")
        return d, notes

    def effective(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        """Plain dict of the effective settings (secrets masked), as `config show` prints it."""
        d = self.model_dump(mode="json")
        if not mask_secrets:
            for section, name in _SECRETS:
                secret = getattr(getattr(self, section), name)
                d[section][name] = secret.get_secret_value() if secret is not None else None
        d["groups"] = [
            {"name": g["name"], **{k: g[k] for k in ("match", "regex") if g[k] is not None},
             **{k: v for k, v in g.items() if k not in ("name", "match", "regex")}}
            for g in d["groups"]
        ]
        return d


