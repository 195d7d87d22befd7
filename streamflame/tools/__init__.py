"""Operator commands around a running stack: `streamflame replay`, `tail`, `plot`.

Each finds the stack the same way (:func:`connection`): ``--config FILE``, else the
``run.json`` of ``--run-dir`` (default ``.streamflame``, written by
``streamflame up --detach``), else ``$STREAMFLAME_CONFIG``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from streamflame.config import CONFIG_ENV, ConfigError, ServiceConfig, load_config, load_config_defaults
from streamflame.embedded.stack import read_run_json

class UsageError(Exception):
    """A problem the user can fix; printed as ``error: ...``, exit code 2."""


def add_connection_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("connection (first found wins)")
    g.add_argument("--config", metavar="FILE", help="service config YAML (Kafka, Redis, topics)")
    g.add_argument("--run-dir", metavar="DIR", default=".streamflame",
                   help="run directory of `streamflame up --detach`; its run.json names the broker, "
                        "Redis and topics (default: .streamflame)")


def connection(config: str | None, run_dir: str | os.PathLike | None) -> tuple[ServiceConfig, str]:
    """(config, where it came from) for ``--config`` / ``--run-dir`` (see module docstring)."""

    try:
        if config:
            return load_config(config), config
        info = read_run_json(run_dir) if run_dir else None
        if info is not None:
            base = load_config(info["config"]) if info.get("config") else load_config_defaults()
            cfg = base.model_copy(update={
                "kafka": base.kafka.model_copy(update={"bootstrap": info["kafka_bootstrap"]}),
                "redis": base.redis.model_copy(update={"url": info["redis_url"]}),
                "topics": base.topics.model_copy(update=info.get("topics") or {}),
            })
            return cfg, str(Path(run_dir) / "run.json")
        if os.environ.get(CONFIG_ENV):
            return load_config(None), os.environ[CONFIG_ENV]
    except ConfigError as e:
        raise UsageError("\n".join(f"{e.source or 'environment'}: {p}" for p in e.problems)) from None
    raise UsageError(f"no stack found: no --config, no {Path(run_dir or '.streamflame') / 'run.json'} "
                     f"and no ${CONFIG_ENV}; start one with `streamflame up --detach` or pass --config FILE")


def fail(message: str, code: int = 2) -> int:
    for line in str(message).splitlines():
        print(f"error: {line}", file=sys.stderr)
    return code
