"""`streamflame up` / `down` and EmbeddedStack supervision, with real broker and
redis processes and trivial stand-in children (injected commands), so these
tests exercise the stack itself, not ingest or worker."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import structlog
from kafka import KafkaAdminClient

from streamflame.embedded.process import StartupError, pid_alive
from streamflame.embedded.stack import EmbeddedStack, read_run_json

# A stand-in child: records its STREAMFLAME_* environment, then sleeps.
RECORD_ENV_AND_SLEEP = (
    "import json, os, sys, time; "
    "env = {k: v for k, v in os.environ.items() if k.startswith('STREAMFLAME_')}; "
    "open(sys.argv[1], 'w').write(json.dumps(env)); "
    "time.sleep(1e6)"
)


def _streamflame(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamflame", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _all_pids(info: dict) -> list[int]:
    pids = info["pids"]
    return [p for p in (pids["supervisor"], pids["broker"], pids["redis"], pids["s3"],
                        *pids["ingest"], *pids["worker"]) if p is not None]


def _partitions(bootstrap: str, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        (desc,) = admin.describe_topics([topic])
        return len(desc["partitions"])
    finally:
        admin.close()


def test_up_detach_supervises_and_down_stops_everything(tmp_path):
    child = json.dumps([sys.executable, "-c", RECORD_ENV_AND_SLEEP, str(tmp_path / "env-{role}-{index}.json")])
    up = _streamflame("up", "--detach", "--ephemeral", "--ingest", "2", "--workers", "1", "--partitions", "3",
                      "--child-command", child, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    run_json = tmp_path / ".streamflame" / "run.json"
    assert up.stdout.strip() == str(run_json)
    info = json.loads(run_json.read_text())
    try:
        assert info["ready"] is True
        assert all(pid_alive(p) for p in _all_pids(info))
        assert len(info["pids"]["ingest"]) == 2 and len(info["pids"]["worker"]) == 1
        assert info["pids"]["s3"] is None and info["durable"] is False
        assert info["persistence"]["redis"] == info["persistence"]["broker"] == "memory only"

        # Real services at the advertised addresses, topics with the asked partitions.
        assert redis.Redis.from_url(info["redis_url"]).ping()
        assert set(info["topics"]) == {"observations", "patches", "forecasts", "alerts", "dlq"}
        assert _partitions(info["kafka_bootstrap"], info["topics"]["observations"]) == 3
        assert _partitions(info["kafka_bootstrap"], info["topics"]["patches"]) == 3

        # Each child got the connection, its own metrics port and ready file by environment.
        urls = info["metrics"]["ingest"] + info["metrics"]["worker"]
        assert len(set(urls)) == 3
        env = json.loads(_wait_for(lambda: (tmp_path / "env-ingest-1.json").exists()
                                   and (tmp_path / "env-ingest-1.json").read_text(), 10, "child env"))
        assert env["STREAMFLAME_KAFKA__BOOTSTRAP"] == info["kafka_bootstrap"]
        assert env["STREAMFLAME_REDIS__URL"] == info["redis_url"]
        assert env["STREAMFLAME_KAFKA__PARTITIONS"] == "3"
        assert info["metrics"]["ingest"][1] == f"http://127.0.0.1:{env['STREAMFLAME_METRICS_PORT']}/metrics"
        assert env["STREAMFLAME_READY_FILE"].endswith("ready/ingest-1")

        # A second `up` on the same run directory refuses.
        again = _streamflame("up", "--detach", "--child-command", child, cwd=tmp_path)
        assert again.returncode == 1 and "already running" in again.stderr

        # SIGKILL a child: the supervisor restarts it and rewrites run.json.
        victim = info["pids"]["ingest"][0]
        os.kill(victim, signal.SIGKILL)

        def restarted():
            current = read_run_json(tmp_path / ".streamflame")
            new = current["pids"]["ingest"][0]
            return current if new not in (None, victim) and pid_alive(new) else None

        info = _wait_for(restarted, 15, "the killed ingest child to be restarted")
        events = [json.loads(line) for line in (tmp_path / ".streamflame/logs/supervisor.log").read_text().splitlines()
                  if line.startswith("{")]
        exited = [e for e in events if e["event"] == "child_exited"]
        assert exited and exited[0]["child"] == "ingest-0" and exited[0]["signal"] == "SIGKILL"
        assert any(e["event"] == "child_restarted" and e["pid"] == info["pids"]["ingest"][0] for e in events)
    finally:
        down = _streamflame("down", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert not run_json.exists()
    _wait_for(lambda: not any(pid_alive(p) for p in _all_pids(info)), 10, "every process to exit")


def test_foreground_up_stops_cleanly_on_sigint(tmp_path):
    run_dir = tmp_path / "rd"
    child = json.dumps([sys.executable, "-c", "import time; time.sleep(1e6)"])
    proc = subprocess.Popen([sys.executable, "-m", "streamflame", "up", "--run-dir", str(run_dir),
                             "--ingest", "1", "--workers", "1", "--child-command", child],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = _wait_for(lambda: (read_run_json(run_dir) or {}).get("ready") and read_run_json(run_dir),
                         90, "the stack to be ready")
        # the default: Redis with an AOF in the run dir, the broker in memory (--durable keeps its data too)
        assert info["durable"] is False and info["pids"]["s3"] is None
        assert info["persistence"]["broker"] == "memory only"
        assert info["persistence"]["redis"] == f"AOF appendfsync everysec in {run_dir / 'redis'}"
        assert info["pids"]["supervisor"] == proc.pid
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "stack_stopped" in stderr
    assert not (run_dir / "run.json").exists()
    assert not any(pid_alive(p) for p in _all_pids(info))


def test_down_without_a_stack_says_so(tmp_path):
    down = _streamflame("down", "--run-dir", str(tmp_path / "nothing"), cwd=tmp_path)
    assert down.returncode == 1
    assert "no stack found" in down.stderr


def test_up_rejects_bad_arguments(tmp_path):
    bad = _streamflame("up", "--workers", "-1", cwd=tmp_path)
    assert bad.returncode == 2 and "--workers must be >= 0" in bad.stderr
    missing = _streamflame("up", "--config", "nope.yaml", cwd=tmp_path)
    assert missing.returncode == 2 and "nope.yaml: no such file" in missing.stderr
    both = _streamflame("up", "--durable", "--ephemeral", cwd=tmp_path)
    assert both.returncode == 2 and "exclude each other" in both.stderr
    fsync = _streamflame("up", "--redis-fsync", "never", cwd=tmp_path)
    assert fsync.returncode == 2 and "invalid choice: 'never'" in fsync.stderr


def test_child_that_dies_while_starting_is_reported_with_its_log(tmp_run_dir):
    child = [sys.executable, "-c", "import sys; print('boom: bad settings', file=sys.stderr); sys.exit(3)"]
    with EmbeddedStack(tmp_run_dir, ingest=1, child_command=lambda role, index: child) as stack:
        with pytest.raises(StartupError, match=r"(?s)ingest-0 exited with code 3.*boom: bad settings"):
            stack.start_children()


def test_restart_backoff_doubles_up_to_the_cap(tmp_run_dir):
    # Each run: signal ready at once, die 0.1 s later.
    crash = ("import os, pathlib, sys, time; pathlib.Path(os.environ['STREAMFLAME_READY_FILE']).touch(); "
             "time.sleep(0.1); sys.exit(7)")
    stack = EmbeddedStack(tmp_run_dir, workers=1, backoff_s=(0.1, 0.4),
                          child_command=lambda role, index: [sys.executable, "-c", crash])
    with stack, structlog.testing.capture_logs() as logs:
        stack.start_children()
        pids = {stack.children[0].pid}
        deadline = time.monotonic() + 30
        while len([e for e in logs if e["event"] == "child_exited"]) < 5 and time.monotonic() < deadline:
            stack.supervise_once()
            pids.add(stack.children[0].pid)
            time.sleep(0.02)
    delays = [e["restart_in_s"] for e in logs if e["event"] == "child_exited"]
    assert delays[:5] == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert all(e["exit_code"] == 7 for e in logs if e["event"] == "child_exited")
    assert len(pids - {None}) >= 5  # every restart is a new process


def test_stack_uses_external_kafka_and_redis_from_config(tmp_path, embedded_kafka, embedded_redis):
    tag = os.urandom(4).hex()
    config = tmp_path / "service.yaml"
    config.write_text(
        f"kafka:\n  bootstrap: '{embedded_kafka}'\n  partitions: 2\n"
        f"redis:\n  url: '{embedded_redis}'\n"
        f"topics:\n  observations: ext-{tag}.obs\n  patches: ext-{tag}.patches\n"
    )
    with EmbeddedStack(tmp_path / "run", config_path=config) as stack:
        assert stack.broker is None and stack.redis is None
        assert stack.kafka_bootstrap == embedded_kafka and stack.redis_url == embedded_redis
        info = read_run_json(tmp_path / "run")
        assert info["pids"]["broker"] is None and info["pids"]["redis"] is None
        assert info["topics"]["observations"] == f"ext-{tag}.obs"
        assert _partitions(embedded_kafka, f"ext-{tag}.obs") == 2
        assert _partitions(embedded_kafka, f"ext-{tag}.patches") == 2
    assert read_run_json(tmp_path / "run") is None


def test_mismatched_partitions_on_existing_topics_are_refused(tmp_path, embedded_broker, embedded_redis):
    tag = os.urandom(4).hex()
    embedded_broker.create_topics({f"mm-{tag}.obs": 2, f"mm-{tag}.patches": 3})
    config = tmp_path / "service.yaml"
    config.write_text(
        f"kafka:\n  bootstrap: '{embedded_broker.bootstrap}'\n"
        f"redis:\n  url: '{embedded_redis}'\n"
        f"topics:\n  observations: mm-{tag}.obs\n  patches: mm-{tag}.patches\n"
    )
    with pytest.raises(StartupError, match=r"same partition count"):
        with EmbeddedStack(tmp_path / "run", config_path=config):
            pass


def test_start_children_waits_for_the_ready_file(tmp_run_dir):
    late = ("import os, pathlib, time; time.sleep(1.5); "
            "pathlib.Path(os.environ['STREAMFLAME_READY_FILE']).touch(); time.sleep(1e6)")
    stack = EmbeddedStack(tmp_run_dir, ingest=1, wait_ready_file=True,
                          child_command=lambda role, index: [sys.executable, "-c", late])
    with stack:
        began = time.monotonic()
        stack.start_children()
        assert time.monotonic() - began >= 1.5
        assert (tmp_run_dir / "ready" / "ingest-0").exists()
        assert read_run_json(tmp_run_dir)["ready"] is True


def test_child_that_never_gets_ready_times_out_with_a_clear_error(tmp_run_dir):
    stack = EmbeddedStack(tmp_run_dir, workers=1, wait_ready_file=True, ready_timeout_s=1.0,
                          child_command=lambda role, index: [sys.executable, "-c", "import time; time.sleep(1e6)"])
    with stack:
        with pytest.raises(StartupError, match=r"worker-0 not ready after 1 s"):
            stack.start_children()


def test_up_runs_the_real_ingest_and_worker_end_to_end(tmp_path):
    """`streamflame up` with the real children: observations in, forecasts out."""
    import urllib.request

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from streamflame import Forecaster
    from streamflame.messages import decode_forecast

    model = Forecaster.from_config(seed=0)
    model.save(tmp_path / "ckpt")
    config = tmp_path / "service.yaml"
    config.write_text(
        "kafka: {session_timeout_ms: 2000, heartbeat_interval_ms: 600}\n"
        f"worker: {{model_path: '{tmp_path / 'ckpt'}', device: cpu, batch_deadline_ms: 20}}\n"
        "defaults: {frequency: 1min, horizon: 12, num_samples: 8}\n"
    )
    up = _streamflame("up", "--detach", "--ephemeral", "--config", str(config), "--partitions", "2", cwd=tmp_path,
                      timeout=240)
    assert up.returncode == 0, up.stderr
    info = read_run_json(tmp_path / ".streamflame")
    try:
        assert (tmp_path / ".streamflame/ready/ingest-0").exists()
        assert (tmp_path / ".streamflame/ready/worker-0").exists()
        t0 = 1_700_000_000_000
        batch = {"series_id": "sensor-1", "timestamps": [t0 + 60_000 * i for i in range(100)],
                 "values": [float(i % 7) for i in range(100)]}
        producer = KafkaProducer(bootstrap_servers=info["kafka_bootstrap"])
        producer.send(info["topics"]["observations"], key=b"sensor-1", value=json.dumps(batch).encode())
        producer.flush()
        producer.close()

        consumer = KafkaConsumer(bootstrap_servers=info["kafka_bootstrap"], enable_auto_commit=False)
        consumer.assign([TopicPartition(info["topics"]["forecasts"], p) for p in range(2)])
        consumer.seek_to_beginning()
        forecasts = {}
        deadline = time.monotonic() + 90
        while 1 not in forecasts and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    f = decode_forecast(record.value)
                    forecasts[f.seq] = f
        consumer.close()
        assert sorted(forecasts) == [0, 1], f"forecasts: {sorted(forecasts)}; logs in {info['logs']}"
        last = forecasts[1]
        assert last.series_id == "sensor-1" and last.horizon == 12 and len(last.mean) == 12
        assert last.freq_ms == 60_000 and last.model_id == model.model_id
        # The metrics endpoints named in run.json answer.
        for url in info["metrics"]["ingest"] + info["metrics"]["worker"]:
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200 and response.read()

        # `streamflame status` finds the stack through .streamflame/run.json.
        def status_json():
            st = _streamflame("status", "--json", cwd=tmp_path, timeout=60)
            assert st.returncode == 0, st.stdout + st.stderr
            got = json.loads(st.stdout)
            return got if got.get("accuracy", {}).get("default", {}).get("patches") == 1 else None

        st = _wait_for(status_json, 30, "status to show the scored patch")
        procs = {p["name"]: p for p in st["processes"]}
        assert procs["ingest-0"]["pid"] == info["pids"]["ingest"][0] and procs["ingest-0"]["up"]
        assert procs["worker-0"]["pid"] == info["pids"]["worker"][0] and procs["worker-0"]["up"]
        assert procs["broker"]["up"] and procs["redis"]["up"] and procs["supervisor"]["up"]
        assert st["ingest"]["observations"] == 100 and st["ingest"]["patches"] == 2
        assert st["worker"]["forecasts"] == 2 and st["worker"]["patches"]["applied"] == 2
        # Patch 1 scored against forecast 0: its 12 steps (horizon 12 < 48).
        assert st["accuracy"]["default"]["points"] == 12 and st["accuracy"]["default"]["wql"] > 0
        text = _streamflame("status", cwd=tmp_path, timeout=60)
        assert text.returncode == 0 and "worker-0" in text.stdout and "100 in, 0 rejected" in text.stdout
    finally:
        down = _streamflame("down", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    gone = _streamflame("status", cwd=tmp_path)
    assert gone.returncode == 1 and "nothing is running" in gone.stderr
