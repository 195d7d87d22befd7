"""`streamflame demo` runs the full embedded pipeline on real bundled data and summarises it."""
import re
import subprocess
import sys


def test_demo_streams_real_data_end_to_end_and_prints_summary(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "streamflame", "demo", "--series", "2", "--steps", "240", "--speed", "0",
         "--horizon", "24", "--out", str(out), "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    m = re.search(r"^SUMMARY observations=(\d+) forecasts=(\d+) obs_per_s=(\d+) p50_ms=(\d+) p99_ms=(\d+)$",
                  proc.stdout, re.M)
    assert m, proc.stdout[-2000:]
    obs, forecasts = int(m.group(1)), int(m.group(2))
    assert obs == 2 * 240 and forecasts == 2 * (240 // 48)     # one forecast per (series, patch)
    assert int(m.group(4)) <= int(m.group(5))
    png = out / "fan_chart.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
