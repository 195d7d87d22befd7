"""One logging set-up for every StreamFlame process: structlog, one JSON object per line on stderr.

Other libraries' standard-library logging (kafka-python's warnings, redis-py) goes through the
same processors: a JSON line with ``event`` (the message), ``level``, ``timestamp`` and ``logger``
(e.g. ``kafka.coordinator``), warnings and above only."""
from __future__ import annotations

import logging
import sys

import orjson
import structlog


def _dumps(obj, **_kw) -> str:
    # Non-str keys (e.g. the worker's {partition: offset} rewind maps) are allowed:
    # a log line must never be what stops a process.
    return orjson.dumps(obj, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


_STDLIB_HANDLER = "streamflame-json"


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of each line, not the one at set-up: a
    command run in-process (``streamflame eval``'s main under pytest's capture, an embedded tool)
    must not leave every later logger writing to a stream that has since been closed."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info") -> None:
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    render = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(serializer=_dumps)]
    handler = logging.StreamHandler(_CurrentStderr())
    handler.set_name(_STDLIB_HANDLER)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render]))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _STDLIB_HANDLER]:   # called again on a reload
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),
        # Not cached: a hot-reloaded log_level (configure_logging again) reaches loggers already in use.
        cache_logger_on_first_use=False,
    )
