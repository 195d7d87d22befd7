"""`streamflame status` as a shell user meets it: piped into a reader that stops early, and an
empty end-to-end latency that says why."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streamflame.pipeline.worker.metrics import WorkerMetrics
from streamflame.tools.status import render, scrape, summarize

@pytest.mark.parametrize("args", [["status", "--metrics", "http://127.0.0.1:9/metrics", "--json"],
                                  ["config", "show"]])
def test_output_into_a_closed_pipe_has_no_traceback(args):
    """`streamflame status --json | head`: the reader is gone before the command writes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFLAME_")}
    proc = subprocess.Popen([sys.executable, "-m", "streamflame", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()                     # what `head` does once it has its lines
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert proc.returncode == 1


def _status(m: WorkerMetrics, tmp_path) -> dict:
    port = m.serve(0)
    return summarize({f"http://127.0.0.1:{port}/metrics": scrape(f"http://127.0.0.1:{port}/metrics")})


def test_end_to_end_latency_says_why_it_has_no_data(tmp_path):
    m = WorkerMetrics()
    text = render(_status(m, tmp_path))
    assert "end-to-end    no data: no forecast published yet" in text
    for _ in range(3):                      # replayed history: patch latency only
        m.patch_latency.observe(0.2)
    text = render(_status(m, tmp_path))
    assert ("end-to-end    no data: measured only for live data (a patch's last observation at most 1 h "
            "before its forecast is published); the 3 patches so far carry older timestamps") in text
    m.e2e_latency.observe(0.3)              # live data
    text = render(_status(m, tmp_path))
    assert "end-to-end    p50 " in text and "(n=1)" in text
