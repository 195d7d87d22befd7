#!/usr/bin/env python
"""Batch ingest with the alert detectors on and off, alternating over one topic (the
`bench pipeline` stage-2 workload without its ceiling), to measure what judging costs.

    python scripts/ingest_alerts_ab.py SERIES PATCHES [prof]   # prof: cProfile of the "on" runs to /tmp
"""
import json, sys, tempfile, time, os
from pathlib import Path
import numpy as np
from streamflame.bench.pipeline import series_values, produce, run_ingest, T0_MS, FREQ_MS, FAST_GROUP, PARTITIONS
from streamflame.config import ServiceConfig
from streamflame.embedded import RedisServer
from streamflame.embedded.broker import Broker
S, PB = int(sys.argv[1]), int(sys.argv[2])
prof = len(sys.argv) > 3
wd = Path(tempfile.mkdtemp())
broker, rs = Broker(wd / "b"), RedisServer(wd / "r"); broker.start(); rs.start()
import redis
rc = redis.Redis.from_url(rs.url)
topics = {"batch": "t.batch", "alerts": "t.alerts", "dlq": "t.dlq"} | {f"p{i}": f"t.p{i}" for i in range(8)}
broker.create_topics({t: 1 if k in ("alerts", "dlq") else PARTITIONS for k, t in topics.items()})
rng = np.random.default_rng(0)
vals = [series_values(i, PB * 48, rng) for i in range(S)]
msgs = ((f"s-{i:06d}".encode(), json.dumps({"series_id": f"s-{i:06d}", "timestamps": [T0_MS + k * FREQ_MS for k in range(a, a + 48)],
         "values": [float(v) for v in vals[i][a:a + 48]]}).encode()) for a in range(0, PB * 48, 48) for i in range(S))
produce(broker.bootstrap, topics["batch"], msgs)
def cfg(r, alerts):
    return ServiceConfig(kafka={"bootstrap": broker.bootstrap, "partitions": PARTITIONS, **FAST_GROUP},
        redis={"url": rs.url, "key_prefix": f"x{r}"},
        topics={"observations": topics["batch"], "patches": topics[f"p{r}"], "forecasts": "t.f", "alerts": topics["alerts"], "dlq": topics["dlq"]},
        ingest={"group_id": f"g{r}"}, defaults={"frequency": "1min", "alerts": {"enabled": alerts}})
try:
    for r in range(4):
        on = r % 2 == 0
        if prof and on:
            import cProfile; pr = cProfile.Profile(); pr.enable()
        res = run_ingest(cfg(r, on), rc, S * PB * 48, S * PB)
        if prof and on:
            pr.disable(); pr.dump_stats(f"/tmp/ing_on{r}.prof")
        print("alerts", "on " if on else "off", f"{res['obs_per_s']:,.0f} obs/s", flush=True)
finally:
    broker.stop(); rs.stop()
