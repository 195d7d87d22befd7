"""`streamflame demo` runs the full embedded pipeline on real bundled data and summarises it."""
import os
import re
import subprocess
import sys


def test_demo_streams_real_data_end_to_end_and_prints_summary(tmp_path):
    out = tmp_path / "demo"
    tmp = tmp_path / "tmp"   # the demo's temporary run directory goes here (no --run-dir) and is removed
    tmp.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "streamflame", "demo", "--series", "2", "--steps", "240", "--speed", "0",
         "--horizon", "24", "--out", str(out)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "TMPDIR": str(tmp)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"run dir {tmp}/streamflame-demo-" in proc.stdout
    assert list(tmp.iterdir()) == []
    m = re.search(r"^SUMMARY observations=(\d+) forecasts=(\d+) obs_per_s=(\d+) p50_ms=(\d+) p99_ms=(\d+)$",
                  proc.stdout, re.M)
    assert m, proc.stdout[-2000:]
    obs, forecasts = int(m.group(1)), int(m.group(2))
    assert obs == 2 * 240 and forecasts == 2 * (240 // 48)     # one forecast per (series, patch)
    assert int(m.group(4)) <= int(m.group(5))
    # the alert episodes ingest opened: a count per kind that adds up, and an OPEN line for each shown
    a = re.search(r"^alert episodes: (\d+) opened \(([^)]*)\), (\d+) resolved$", proc.stdout, re.M)
    assert a, proc.stdout[-2000:]
    per_kind = [int(x.rsplit(" ", 1)[1]) for x in a.group(2).split(", ")] if a.group(2) != "none" else []
    assert sum(per_kind) == int(a.group(1)) and int(a.group(3)) <= int(a.group(1))
    assert len(re.findall(r"^OPEN ", proc.stdout, re.M)) == min(int(a.group(1)), 10)
    png = out / "fan_chart.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
