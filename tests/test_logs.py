"""Every line a StreamFlame process logs is one JSON object, also the standard-library
logging of kafka-python and other libraries (issue 19: a plain-text kafka-python warning
stood between the worker's JSON lines)."""
from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import logging, structlog
from streamflame.core.logs import configure_logging
configure_logging("info")
logging.getLogger("kafka.coordinator").warning("Heartbeat failed for group %s because it is rebalancing", "g1")
logging.getLogger("kafka.conn").info("not shown: below warning")
structlog.get_logger("streamflame.worker").info("worker.batch", size=3)
configure_logging("debug")            # a hot reload configures again: still one line per record
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("kafka.conn").error("connection failed", exc_info=True)
"""


def test_stdlib_and_structlog_lines_are_json():
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(line) for line in p.stderr.splitlines()]   # every line is JSON
    assert [(x["event"], x["level"], x.get("logger")) for x in lines] == [
        ("Heartbeat failed for group g1 because it is rebalancing", "warning", "kafka.coordinator"),
        ("worker.batch", "info", None),
        ("connection failed", "error", "kafka.conn"),
    ]
    assert all(x["timestamp"].endswith("Z") for x in lines)
    assert "ZeroDivisionError" in lines[2]["exception"]
