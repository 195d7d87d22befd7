"""`streamflame bench pipeline` at toy size: every stage runs on a real embedded stack and the
SUMMARY line carries every figure (the benchmark's numbers themselves are in
docs/benchmarks.md; timing targets are not asserted here)."""
from __future__ import annotations

import math

from streamflame.bench import pipeline


def test_bench_pipeline_runs_every_stage_and_prints_its_summary(capsys):
    assert pipeline.main(["--series", "60", "--patches", "3", "--worker-batch", "32", "--latency-seconds", "3",
                          "--latency-series", "30", "--repeats", "2", "--batch-patches", "3",
                          "--ingest-publisher", "inline"]) == 0
    out = capsys.readouterr().out
    assert "publishers: ingest inline, worker process" in out.splitlines()[0]
    (line,) = [ln for ln in out.splitlines() if ln.startswith("SUMMARY ")]
    figures = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    assert set(figures) == {
        "ingest_single_obs_per_s", "ceiling_single_obs_per_s", "ingest_batch_obs_per_s", "ceiling_batch_obs_per_s",
        "ceiling_single_orjson", "ceiling_batch_orjson", "worker_forecasts_per_s", "model_forecasts_per_s",
        "max_sustained_obs_per_s", "p50_ms", "p99_ms"}
    assert all(math.isfinite(v) and v > 0 for v in figures.values()), figures
    assert figures["p50_ms"] <= figures["p99_ms"]
    assert out.count("ingest round") == 2 and out.count("worker round") == 2
    # the latency stage saw a forecast for every patch it completed
    lat = [ln for ln in out.splitlines() if ln.startswith("latency at half")][0]
    n_patches = int(lat.split(" patches,")[0].rsplit(" ", 1)[1])
    n_forecasts = int(lat.split(" forecasts)")[0].rsplit(" ", 1)[1])
    assert n_patches > 0 and n_forecasts == n_patches


def test_bench_pipeline_read_ahead_compare_runs_the_worker_both_ways(capsys):
    assert pipeline.main(["--series", "60", "--patches", "3", "--worker-batch", "32", "--repeats", "2",
                          "--state-cache", "0", "--read-ahead-compare"]) == 0
    out = capsys.readouterr().out
    assert "worker state cache 0, read-ahead off and on" in out.splitlines()[0]
    rounds = [ln for ln in out.splitlines() if ln.startswith("read-ahead round")]
    assert len(rounds) == 2 and "(serial first)" in rounds[0] and "(read-ahead first)" in rounds[1]
    assert all(int(ln.split(" states read ahead")[0].rsplit("(", 1)[1].replace(",", "")) > 0 for ln in rounds)
    (line,) = [ln for ln in out.splitlines() if ln.startswith("SUMMARY ")]
    figures = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    assert set(figures) == {"worker_serial_forecasts_per_s", "worker_read_ahead_forecasts_per_s", "read_ahead_ratio"}
    assert all(math.isfinite(v) and v > 0 for v in figures.values()), figures
    assert "ingest round" not in out and "latency at half" not in out
