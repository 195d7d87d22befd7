"""Alert episodes in `streamflame tail` (one line per open/resolve, updates folded) and
in `streamflame status` (open episodes per group), against a real broker and redis-server
and a real ingest consumer's metrics endpoint."""
from __future__ import annotations

import json
import threading
import time

from kafka import KafkaProducer

from test_alerts_ingest import config, messages, produce
from test_cli_tools import run_json

from streamflame.cli import main as cli
from streamflame.pipeline.ingest.consumer import IngestConsumer
from streamflame.pipeline.ingest.metrics import serve

T0 = 1_704_067_200_000


def _event(event: str, alert_id_ms: int, sid: str, ts: int, severity: str, score: float, **kw) -> bytes:
    d = {"event": event, "alert_id": f"{sid}/deviation/{alert_id_ms}", "series_id": sid, "kind": "deviation",
         "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts / 1000)), "timestamp_ms": ts,
         "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(alert_id_ms / 1000)),
         "started_ms": alert_id_ms, "severity": severity, "score": score, "value": 30.2, "expected": 21.4,
         "p_value": 3.1e-9 if event != "resolve" else None, "direction": "above" if event != "resolve" else None,
         "observations": kw.get("observations", 1), "group": "default"}
    return json.dumps(d).encode()


def test_tail_prints_one_line_per_open_and_resolve_with_updates_folded(service_config, tmp_path, capsys):
    cfg = service_config
    prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap)
    m = 60_000
    for value in (_event("open", T0, "pump-1", T0, "major", 1.2),
                  _event("open", T0 + m, "pump-2", T0 + m, "minor", 1.0),
                  _event("update", T0, "pump-1", T0 + 2 * m, "critical", 2.4, observations=3),
                  _event("resolve", T0, "pump-1", T0 + 7 * m, "major", 1.2, observations=8)):
        prod.send(cfg.topics.alerts, key=b"pump", value=value)
    prod.flush()
    prod.close()
    rd = run_json(tmp_path / "run", cfg)
    assert cli(["tail", "--run-dir", str(rd), "--from-beginning", "--no-forecasts", "--timeout", "3",
                "--color", "never"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "OPEN     deviation     pump-1  2024-01-01T00:00:00Z  major     value=30.20 expected=21.40 above  p=3.1e-09",
        "OPEN     deviation     pump-2  2024-01-01T00:01:00Z  minor     value=30.20 expected=21.40 above  p=3.1e-09",
        "RESOLVED deviation     pump-1  2024-01-01T00:07:00Z  after 8 obs since 2024-01-01T00:00:00Z, "
        "peak critical (score 2.40)"]
    assert cli(["tail", "--run-dir", str(rd), "--from-beginning", "--no-forecasts", "--timeout", "3",
                "--color", "never", "--updates"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[2].startswith("UPDATE   deviation     pump-1  2024-01-01T00:02:00Z  critical")


def test_status_shows_open_episodes_per_group(service_config, redis_client, capsys):
    cfg = config(service_config)
    # two series: one ends inside a dropout (explicit nulls), one ends out of range (a deviation too)
    obs = {"fix-a": [(T0 + i * 60_000, None if i >= 300 else 20.0 + (i % 7) * 0.1) for i in range(310)],
           "fix-b": [(T0 + i * 60_000, 500.0 if i >= 300 else 20.0 + (i % 5) * 0.1) for i in range(305)]}
    produce(cfg, messages(obs))
    ing = IngestConsumer(cfg, redis_client=redis_client)
    port = serve(ing, 0)
    th = threading.Thread(target=ing.run, daemon=True)
    th.start()
    try:
        deadline = time.monotonic() + 30
        while ing.counters["observations"] < 615 and time.monotonic() < deadline:
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/metrics"
        assert cli(["status", "--metrics", url, "--json"]) == 0
        lines = capsys.readouterr().out.splitlines()  # the ingest thread logs to stdout too
        st = json.loads("\n".join(lines[lines.index("{"):len(lines) - lines[::-1].index("}")]))
        assert st["ingest"]["episodes_open"] == {"fixed": {"deviation": 1, "dropout": 1, "out_of_range": 1}}
        assert st["ingest"]["alert_events"] >= 2
        assert cli(["status", "--metrics", url]) == 0
        assert "open: fixed: deviation 1, dropout 1, out_of_range 1" in capsys.readouterr().out
    finally:
        ing.stop()
        th.join(timeout=15)
