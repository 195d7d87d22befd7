"""Service configuration: one YAML file plus environment overrides.

Precedence (highest first): keyword arguments to ``ServiceConfig(...)``,
environment variables ``STREAMFLAME_<SECTION>__<FIELD>`` (e.g.
``STREAMFLAME_KAFKA__BOOTSTRAP``; lists/objects as JSON, ``null`` for None),
the legacy ``STREAMFLAME_METRICS_PORT``, the YAML file, built-in defaults.
``load_config(path)`` reads the file (``path`` or, when None, the file named by
``STREAMFLAME_CONFIG``; neither = defaults only). Problems raise
:class:`ConfigError` whose lines read ``<field path>: <problem>``.

Series groups: the first group whose ``match`` (glob, case-sensitive) or
``regex`` (full match) fits a series_id gives its settings; a setting a group
leaves out is taken from ``defaults``, which also serves unmatched series.

``streamflame config check FILE`` / ``streamflame config show [FILE]``: see
:mod:`streamflame.config.cli` and docs/configuration.md.

One module per concern: :mod:`~streamflame.config.sections` (kafka, topics, redis, ingest,
worker, metrics), :mod:`~streamflame.config.groups` (series groups),
:mod:`~streamflame.config.service` (:class:`ServiceConfig`), :mod:`~streamflame.config.loading`
(files, errors as lines), :mod:`~streamflame.config.reload` (hot reload),
:mod:`~streamflame.config.cli`; this package exports their public names.
"""
from __future__ import annotations

from streamflame.config.cli import dump_yaml, main
from streamflame.config.errors import ConfigError
from streamflame.config.groups import GroupSettings, SeriesGroup
from streamflame.config.loading import (
    config_in_effect,
    config_problems,
    default_config_path,
    load_config,
    load_config_defaults,
    read_yaml,
)
from streamflame.config.reload import HOT_RELOADABLE, ConfigWatcher, HotReloader, changed_paths, needs_restart
from streamflame.config.sections import (
    CONFIG_ENV,
    ENV_PREFIX,
    MAX_HORIZON,
    IngestSettings,
    KafkaSettings,
    MetricsSettings,
    RedisSettings,
    TopicSettings,
    WorkerSettings,
)
from streamflame.config.service import ServiceConfig

__all__ = [
    "CONFIG_ENV", "ENV_PREFIX", "HOT_RELOADABLE", "MAX_HORIZON", "ConfigError", "ConfigWatcher", "GroupSettings",
    "HotReloader", "IngestSettings", "KafkaSettings", "MetricsSettings", "RedisSettings", "SeriesGroup",
    "ServiceConfig", "TopicSettings", "WorkerSettings", "changed_paths", "config_in_effect", "config_problems",
    "default_config_path", "dump_yaml", "load_config", "load_config_defaults", "main", "needs_restart", "read_yaml",
]
