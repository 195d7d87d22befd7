"""Benchmarks that print figures (timing goals live here, never in tests).

    streamflame bench step       # model: update vs rebuild vs forecast cost (python -m streamflame.bench step)
    streamflame bench pipeline   # the embedded stack end to end, each figure beside its ceiling
    streamflame bench soak       # steady rate through the embedded stack: RSS per process and lag over time
    streamflame bench alerts     # injected anomalies in held-out series through ingest: recall, delay, false episodes
    streamflame bench alerts-offline  # the same scoring on the detectors alone, on training series (for tuning)
    streamflame bench alerts-limit    # what any test of a statistic could catch at the budget (an oracle bound)
    streamflame bench train      # training throughput (observations/s): sampler, model step, the loop
    streamflame bench reencode   # a Chronos-Bolt-small-sized model re-reading each context (the comparison)
"""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {"step": "streamflame.bench.step", "pipeline": "streamflame.bench.pipeline",
               "soak": "streamflame.bench.soak", "alerts": "streamflame.bench.alerts",
               "alerts-offline": "streamflame.bench.alerts_offline",
               "alerts-limit": "streamflame.bench.alerts_limit", "train": "streamflame.bench.train",
               "reencode": "streamflame.bench.reencode"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        print("usage: streamflame bench {" + ",".join(SUBCOMMANDS) + "} [options]  (--help per benchmark)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return int(importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:]) or 0)
