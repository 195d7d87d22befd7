"""One logging set-up for every StreamFlame process: structlog, one JSON object per line on stderr."""
from __future__ import annotations

import logging
import sys

import orjson
import structlog


def _dumps(obj, **_kw) -> str:
    # Non-str keys (e.g. the worker's {partition: offset} rewind maps) are allowed:
    # a log line must never be what stops a process.
    return orjson.dumps(obj, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        # Not cached: a hot-reloaded log_level (configure_logging again) reaches loggers already in use.
        cache_logger_on_first_use=False,
    )
