"""The one service shell of ``streamflame ingest`` and ``streamflame worker``: the config from
``--config`` (else ``$STREAMFLAME_CONFIG``, else the defaults), the logging set-up, the metrics
endpoint, the signals (SIGTERM/SIGINT stop, SIGHUP re-reads the config file) and the run."""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, Protocol

import structlog

from streamflame.config import CONFIG_ENV, ConfigError, ServiceConfig, load_config
from streamflame.core.logs import configure_logging

class Service(Protocol):
    def run(self) -> None: ...
    def stop(self) -> None: ...
    def request_reload(self) -> None: ...


class ServiceControls:
    """``stop`` and ``request_reload`` of a :class:`Service` (ingest, worker), which sets
    ``_stop`` (the event its ``run`` loop watches), ``reloader`` (the config file's
    ``HotReloader``, None without a file) and ``component``."""

    component = "service"
    _stop: threading.Event
    reloader = None

    def stop(self) -> None:
        """Ask ``run()`` to finish its batch, commit and return (thread/signal safe)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the config file before the next batch (SIGHUP; signal safe)."""
        if self.reloader is not None:
            self.reloader.request()
        else:
            structlog.get_logger(f"streamflame.{self.component}").warning(
                "config.reload_unavailable", detail=f"{self.component} runs without a config file")


def load(config: str | None) -> tuple[ServiceConfig | None, str | None]:
    """(the config, the file to watch for hot reload); (None, None) after printing its problems."""
    try:
        cfg = load_config(config)
    except ConfigError as e:
        for p in e.problems:
            print(f"error: {e.source or 'environment'}: {p}", file=sys.stderr)
        return None, None
    configure_logging(cfg.log_level)
    return cfg, config or os.environ.get(CONFIG_ENV) or None


def run(service: Service, component: str, cfg: ServiceConfig, serve_metrics: Callable[[int, str], int]) -> int:
    """Serve metrics (``metrics.port``), handle the signals and run ``service`` until it stops.
    A ConfigError at start (e.g. a group horizon beyond the model's max_horizon) is exit code 2."""
    log = structlog.get_logger(f"streamflame.{component}")

    def on_signal(signum, _frame):
        log.info(f"{component}.signal", signal=signal.Signals(signum).name)
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda _s, _f: service.request_reload())
    if cfg.metrics.port is not None:
        port = serve_metrics(cfg.metrics.port, cfg.metrics.host)
        log.info(f"{component}.metrics", url=f"http://{cfg.metrics.host}:{port}/metrics")
    try:
        service.run()
    except ConfigError as e:
        for p in e.problems:
            print(f"error: {p}", file=sys.stderr)
        return 2
    return 0
