"""`streamflame up` without --config runs the packaged configs/default.yaml (its groups apply)
and run.json names the config in effect."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamflame.config import default_config_path
from streamflame.embedded.stack import read_run_json
from streamflame.messages import decode_forecast

REPO = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000


def _streamflame(*args: str, cwd: Path, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamflame", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_up_without_config_applies_the_embedded_default(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFLAME_")}
    up = _streamflame("up", "--detach", "--ephemeral", "--partitions", "1", cwd=tmp_path, env=env)
    assert up.returncode == 0, up.stderr
    info = read_run_json(tmp_path / ".streamflame")
    try:
        # The packaged file (a copy inside site-packages in a plain `pip install .`).
        assert info["config"] is not None and Path(info["config"]).name == default_config_path().name
        assert Path(info["config"]).read_text() == (REPO / "configs" / "default.yaml").read_text()
        # 48 hourly values of a temperature series and of an unmatched one: one patch each.
        producer = KafkaProducer(bootstrap_servers=info["kafka_bootstrap"])
        for sid, step in (("sensors.temp.kitchen", 3_600_000), ("pump-1", 60_000)):
            batch = {"series_id": sid, "timestamps": [T0 + step * i for i in range(48)],
                     "values": [20.0 + (i % 5) for i in range(48)]}
            producer.send(info["topics"]["observations"], key=sid.encode(), value=json.dumps(batch).encode())
        producer.flush()
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=info["kafka_bootstrap"], enable_auto_commit=False)
        consumer.assign([TopicPartition(info["topics"]["forecasts"], 0)])
        consumer.seek_to_beginning()
        got = {}
        deadline = time.monotonic() + 120
        while len(got) < 2 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    f = decode_forecast(r.value)
                    got[f.series_id] = f
        consumer.close()
        assert set(got) == {"sensors.temp.kitchen", "pump-1"}, f"logs in {info['logs']}"
        temp, pump = got["sensors.temp.kitchen"], got["pump-1"]
        # configs/default.yaml: group temperature = 1h, horizon 48, alert levels 0.05/0.95.
        assert (temp.horizon, temp.frequency, temp.freq_ms) == (48, "1h", 3_600_000)
        assert {"0.05", "0.95"} <= set(temp.quantiles) and "0.01" not in temp.quantiles
        # ... and the defaults section for a series no group matches.
        assert (pump.horizon, pump.frequency) == (96, "1min")
        assert (temp.group, pump.group) == ("temperature", "default")     # each forecast names its group
        # the defaults have no per-point alerts (episodes are the alerting product): no alert levels added
        assert "0.01" not in pump.quantiles and "0.5" in pump.quantiles
    finally:
        down = _streamflame("down", cwd=tmp_path, env=env)
    assert down.returncode == 0, down.stderr


def test_up_names_the_config_of_the_environment(tmp_path):
    """$STREAMFLAME_CONFIG is the config in effect when --config is absent: run.json says so."""
    conf = tmp_path / "mine.yaml"
    conf.write_text("kafka: {session_timeout_ms: 2000, heartbeat_interval_ms: 600}\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STREAMFLAME_")},
           "STREAMFLAME_CONFIG": str(conf)}
    child = json.dumps([sys.executable, "-c", "import time; time.sleep(1e6)"])
    up = _streamflame("up", "--detach", "--ephemeral", "--ingest", "1", "--workers", "0", "--child-command", child,
                      cwd=tmp_path, env=env)
    assert up.returncode == 0, up.stderr
    try:
        assert read_run_json(tmp_path / ".streamflame")["config"] == str(conf)
    finally:
        down = _streamflame("down", cwd=tmp_path, env=env)
    assert down.returncode == 0, down.stderr


def test_up_runs_what_config_check_prints(tmp_path):
    """`config check` output fed back unchanged to `up` (which passes it to the real ingest and
    worker): the embedded broker and redis start, as with the file it came from."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFLAME_")}
    check = _streamflame("config", "check", str(REPO / "configs" / "default.yaml"), cwd=tmp_path, env=env)
    assert check.returncode == 0, check.stderr
    (tmp_path / "echo.yaml").write_text(check.stdout)
    up = _streamflame("up", "--detach", "--ephemeral", "--partitions", "1", "--config", "echo.yaml", cwd=tmp_path,
                      env=env)
    assert up.returncode == 0, up.stderr
    info = read_run_json(tmp_path / ".streamflame")
    try:
        assert info["config"] == str(tmp_path / "echo.yaml") and info["ready"]
        assert info["pids"]["broker"] is not None and info["pids"]["redis"] is not None   # embedded, not external
        assert len(info["pids"]["ingest"]) == len(info["pids"]["worker"]) == 1
    finally:
        down = _streamflame("down", cwd=tmp_path, env=env)
    assert down.returncode == 0, down.stderr
