"""streamflame/core/memory.py: with freed memory kept (glibc mallopt), a process that allocates
and frees the same large buffers pass after pass stops page-faulting them in again."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from streamflame.core.memory import retain_freed_memory

PASSES = """
import json, resource, sys
import numpy as np
from streamflame.core.memory import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else None
def one_pass():              # a model pass: a few large buffers, written, then all freed
    bufs = [np.ones(n, np.float32) for n in (3 << 20, 2 << 20, 5 << 20, 1 << 20)]
    return sum(float(b[::4096].sum()) for b in bufs)
one_pass()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    one_pass()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PASSES, mode], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_kept_memory_is_not_faulted_in_again_pass_after_pass():
    plain, kept = _run("plain"), _run("retain")
    if platform.libc_ver()[0] != "glibc":       # mallopt is glibc's: elsewhere nothing is changed
        assert kept["applied"] is False
        return
    assert kept["applied"] is True
    # 10 passes x 44 MB: with glibc's defaults a good part is faulted in again every pass (20k pages here)
    assert plain["faults"] > 5_000, plain
    assert kept["faults"] < plain["faults"] / 10, (plain, kept)


def test_bad_thresholds_are_refused():
    with pytest.raises(ValueError, match="trim_threshold"):
        retain_freed_memory(1 << 20)
    with pytest.raises(ValueError, match="trim_threshold"):
        retain_freed_memory(1 << 31)
