"""Regression: a log line with a non-str dict key used to raise inside the JSON
renderer (orjson: "Dict key must be str") and killed the worker on its first
rewind (``log.warning("worker.rewind", partitions={partition: offset})``), i.e.
every time Redis lost recent state writes. Found by `streamflame chaos redis`."""
from __future__ import annotations

import json

import structlog

from streamflame.core.logs import configure_logging

def test_log_line_with_int_keys_is_written(capsys):
    try:
        configure_logging("info")
        structlog.get_logger("streamflame.worker").warning("worker.rewind", partitions={0: 12, 3: 7})
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        structlog.reset_defaults()
    ev = json.loads(line)
    assert ev["event"] == "worker.rewind" and ev["partitions"] == {"0": 12, "3": 7}
