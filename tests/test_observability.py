"""Metrics, logs, online accuracy and `streamflame status` of real processes:
`python -m streamflame ingest` and `... worker` on the session's Tansu broker
and redis-server, scraped over HTTP, their stderr parsed as JSON lines."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamflame import Forecaster
from streamflame.config import ServiceConfig, dump_yaml
from streamflame.core.constants import PATCH_LEN
from streamflame.eval.metrics import coverage, quantile_loss, seasonal_error, wql
from streamflame.messages import decode_forecast
from streamflame.model import tiny_config
from streamflame.tools.status import histogram_quantile

REPO = Path(__file__).resolve().parent.parent
FREQ = 60_000
HALFLIFE = 1.0  # online gauges: the previous scored patch of a group weighs 1/2

INGEST_METRICS = [  # the list, ingest side
    "streamflame_ingest_observations_total", "streamflame_ingest_rejected_total", "streamflame_ingest_patches_total",
    "streamflame_ingest_batch_records_bucket", "streamflame_ingest_batch_seconds_bucket",
    "streamflame_ingest_lag", "streamflame_ingest_redis_seconds_bucket", "streamflame_ingest_batches_total",
]
WORKER_METRICS = [  # worker side
    "streamflame_worker_records_total", "streamflame_worker_patches_total",
    "streamflame_worker_forecasts_published_total", "streamflame_worker_alerts_published_total",
    "streamflame_worker_batch_size_bucket", "streamflame_worker_step_seconds_bucket",
    "streamflame_worker_batch_seconds_bucket", "streamflame_worker_e2e_latency_seconds_bucket",
    "streamflame_worker_patch_latency_seconds_bucket", "streamflame_worker_consumer_lag",
    "streamflame_worker_redis_seconds_bucket", "streamflame_worker_state_record_bytes",
    "streamflame_worker_online_wql", "streamflame_worker_online_mase", "streamflame_worker_online_coverage",
    "streamflame_worker_online_scored_patches_total", "streamflame_worker_online_scored_points_total",
    "streamflame_worker_online_quantile_loss_total", "streamflame_worker_online_abs_target_total",
    "streamflame_worker_online_inside_total",
]


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def names(values: dict[str, float]) -> set[str]:
    return {k.split("{", 1)[0] for k in values}


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Proc:
    """`python -m streamflame ROLE --config FILE` with a free metrics port; stderr JSON lines collected."""

    def __init__(self, role: str, conf: Path, tmp: Path):
        self.role = role
        ready = tmp / f"{role}.ready"
        env = {**os.environ, "PYTHONPATH": str(REPO), "STREAMFLAME_READY_FILE": str(ready),
               "STREAMFLAME_METRICS_PORT": "0"}
        env.pop("STREAMFLAME_CONFIG", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "streamflame", role, "--config", str(conf)],
                                     env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self.other: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        wait_for(lambda: ready.exists() or self.proc.poll() is not None, 90, f"{role} to get ready")
        assert self.proc.poll() is None, self.other[-20:]
        (self.url,) = wait_for(lambda: [x["url"] for x in self.lines if x["event"] == f"{role}.metrics"], 10,
                               f"{role} metrics url")

    def _read(self):
        for line in self.proc.stderr:
            (self.lines.append(orjson.loads(line)) if line.startswith("{") else self.other.append(line))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.reader.join(5)


@pytest.fixture()
def cfg(service_config, tmp_path_factory) -> ServiceConfig:
    model = Forecaster.from_config(tiny_config(), seed=3).save(tmp_path_factory.mktemp("model") / "ckpt")
    data = service_config.effective(mask_secrets=False)
    data["worker"].update({"model_path": str(model), "device": "cpu", "batch_deadline_ms": 30,
                           "accuracy_halflife_patches": HALFLIFE})
    data["defaults"].update({"frequency": "1min", "horizon": 60, "num_samples": 16, "alert_levels": [0.1, 0.9]})
    data["groups"] = [{"name": "pumps", "match": "pump-*"}]
    return ServiceConfig(**data)


def read_forecasts(cfg: ServiceConfig, want: int) -> dict:
    c = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(cfg.topics.forecasts, p) for p in c.partitions_for_topic(cfg.topics.forecasts)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out: dict = {}
    deadline = time.monotonic() + 90
    while len(out) < want and time.monotonic() < deadline:
        for msgs in c.poll(timeout_ms=200).values():
            for m in msgs:
                f = decode_forecast(m.value)
                out[(f.series_id, f.seq)] = f
    c.close()
    assert len(out) == want, sorted(out)
    return out


def expected_accuracy(v: np.ndarray, fcs: dict, sid: str, quantiles) -> dict:
    """Online accuracy of one series by hand: patch k against the published forecast k-1."""
    Q = len(quantiles)
    per = []
    for k in (1, 2):
        y = v[k * PATCH_LEN:(k + 1) * PATCH_LEN]
        f = fcs[(sid, k - 1)]
        q = np.array([f.quantiles[key][:PATCH_LEN] for key in f.quantiles])
        levels = [float(key) for key in f.quantiles]
        assert tuple(levels) == tuple(quantiles)
        keep = ~np.isnan(y)
        scale = seasonal_error(v[:k * PATCH_LEN], 1)  # naive MAE of everything before patch k
        per.append({"ql": quantile_loss(y, q, levels) / Q, "abs": np.abs(y[keep]).sum(), "n": keep.sum(),
                    "wql": wql(y, q, levels),
                    "se": np.abs(y[keep] - np.asarray(f.mean[:PATCH_LEN])[keep]).sum() / scale,
                    "in80": coverage(y, q[levels.index(0.1)], q[levels.index(0.9)]) * keep.sum()})
    d = 0.5 ** (1 / HALFLIFE)
    a, b = per
    return {
        "per": per,
        "ql_total": a["ql"] + b["ql"], "abs_total": a["abs"] + b["abs"], "points": a["n"] + b["n"],
        "se_total": a["se"] + b["se"], "in80_total": a["in80"] + b["in80"],
        "ew_wql": (d * a["ql"] + b["ql"]) / (d * a["abs"] + b["abs"]),
        "ew_mase": (d * a["se"] + b["se"]) / (d * a["n"] + b["n"]),
        "ew_cov80": (d * a["in80"] + b["in80"]) / (d * a["n"] + b["n"]),
    }


def test_metrics_logs_accuracy_and_status_of_real_ingest_and_worker(cfg, redis_client, tmp_path, capsys):
    conf = tmp_path / "service.yaml"
    conf.write_text(dump_yaml(cfg.effective(mask_secrets=False)))
    ingest = Proc("ingest", conf, tmp_path)
    worker = Proc("worker", conf, tmp_path)
    try:
        before_i, before_w = scrape(ingest.url), scrape(worker.url)
        assert before_i["streamflame_ingest_observations_total"] == 0
        assert before_w["streamflame_worker_forecasts_published_total"] == 0
        assert before_w["streamflame_worker_batch_seconds_count"] == 0

        # Live timestamps (so the end-to-end latency applies): pump-1's third patch ends ~6 min ago.
        now_min = int(time.time() * 1000) // FREQ * FREQ
        t0 = now_min - (3 * PATCH_LEN + 4) * FREQ
        rng = np.random.default_rng(7)
        n = 3 * PATCH_LEN + 2
        v = 20 + 5 * np.sin(np.arange(n) / 6) + rng.normal(0, 0.5, n)
        v[PATCH_LEN + 3] = np.nan  # a missing target in the first scored patch
        prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, linger_ms=5)
        obs = cfg.topics.observations
        for i, x in enumerate(v):  # one observation per message: still one log line per batch
            prod.send(obs, key=b"pump-1", value=orjson.dumps(
                {"series_id": "pump-1", "timestamp": t0 + i * FREQ, "value": None if np.isnan(x) else float(x)}))
        others = {f"other-{k}": 50 + rng.normal(0, 2, 2 * PATCH_LEN + 1) for k in range(4)}
        for sid, w in others.items():
            prod.send(obs, key=sid.encode(), value=orjson.dumps(
                {"series_id": sid, "timestamps": [t0 + i * FREQ for i in range(len(w))], "values": w.tolist()}))
        prod.send(obs, key=b"pump-1", value=b"{not json")
        prod.flush()
        prod.close()
        n_obs = n + sum(len(w) for w in others.values())

        fcs = read_forecasts(cfg, 3 + 2 * len(others))
        w_after = wait_for(lambda: (lambda m: m if m.get('streamflame_worker_online_scored_patches_total{group="default"}')
                                    == len(others) and m.get('streamflame_worker_online_scored_patches_total{group="pumps"}') == 2
                                    else None)(scrape(worker.url)), 20, "the scores of the applied patches")
        # Ingest writes a batch's cursors after its next poll (IngestConsumer.settle), which can come
        # after the forecasts: wait for that write too, not only for the rejection.
        i_after = wait_for(lambda: (lambda m: m if m.get('streamflame_ingest_rejected_total{reason="invalid_json"}') == 1
                                    and m.get('streamflame_ingest_redis_seconds_count{op="save"}', 0) >= 1
                                    else None)(scrape(ingest.url)), 20, "the rejection counted and the cursors written")

        # The metric list is all there, and the counters moved.
        assert set(INGEST_METRICS) <= names(i_after), set(INGEST_METRICS) - names(i_after)
        assert set(WORKER_METRICS) <= names(w_after), set(WORKER_METRICS) - names(w_after)
        assert i_after["streamflame_ingest_observations_total"] == n_obs
        assert i_after["streamflame_ingest_patches_total"] == 3 + 2 * len(others)
        assert i_after["streamflame_ingest_batches_total"] > before_i["streamflame_ingest_batches_total"]
        assert i_after['streamflame_ingest_redis_seconds_count{op="save"}'] >= 1
        assert w_after["streamflame_worker_forecasts_published_total"] == 3 + 2 * len(others)
        assert w_after['streamflame_worker_patches_total{outcome="applied"}'] == 3 + 2 * len(others)
        assert w_after["streamflame_worker_records_total"] == 3 + 2 * len(others)
        assert w_after["streamflame_worker_e2e_latency_seconds_count"] >= 1  # pump-1's live patches
        assert w_after["streamflame_worker_state_record_bytes"] > 0

        # Online accuracy against a hand computation with streamflame.eval.metrics.
        exp = expected_accuracy(v, fcs, "pump-1", cfg.resolve_group("pump-1").quantiles)
        g = '{group="pumps"}'
        assert w_after["streamflame_worker_online_scored_points_total" + g] == exp["points"] == 2 * PATCH_LEN - 1
        assert w_after["streamflame_worker_online_quantile_loss_total" + g] == pytest.approx(exp["ql_total"], rel=1e-5)
        assert w_after["streamflame_worker_online_abs_target_total" + g] == pytest.approx(exp["abs_total"], rel=1e-9)
        assert w_after["streamflame_worker_online_scaled_error_total" + g] == pytest.approx(exp["se_total"], rel=1e-5)
        assert w_after['streamflame_worker_online_inside_total{group="pumps",level="0.8"}'] == exp["in80_total"]
        assert w_after["streamflame_worker_online_wql" + g] == pytest.approx(exp["ew_wql"], rel=1e-5)
        assert w_after["streamflame_worker_online_mase" + g] == pytest.approx(exp["ew_mase"], rel=1e-5)
        assert w_after['streamflame_worker_online_coverage{group="pumps",level="0.8"}'] == pytest.approx(exp["ew_cov80"])
        # (the weighting matters: the gauge differs from the pooled since-start ratio)
        assert exp["ew_wql"] != pytest.approx(exp["ql_total"] / exp["abs_total"], rel=1e-6)

        # `streamflame status --metrics ... --json` on the same endpoints.
        from streamflame.cli import main as cli

        capsys.readouterr()
        assert cli(["status", "--metrics", f"{ingest.url},{worker.url}", "--json"]) == 0
        st = orjson.loads(capsys.readouterr().out)
        assert st["ingest"]["observations"] == n_obs and st["ingest"]["rejected_by_reason"] == {"invalid_json": 1}
        assert st["ingest"]["patches"] == 3 + 2 * len(others)
        assert st["worker"]["forecasts"] == 3 + 2 * len(others) and st["worker"]["patches"]["applied"] == 11
        assert st["worker"]["alerts"] == w_after["streamflame_worker_alerts_published_total"]
        assert set(st["worker"]["lag"]) <= {str(p) for p in range(cfg.kafka.partitions)} and st["worker"]["lag"]
        e2e = st["worker"]["e2e_latency_seconds"]
        assert e2e["count"] == w_after["streamflame_worker_e2e_latency_seconds_count"] >= 1
        # The data ends minutes before now: beyond the top finite bucket (30 s), shown as a lower bound.
        assert e2e["p50"] == 30.0 and e2e["p50_above_range"]
        acc = st["accuracy"]["pumps"]
        assert acc["patches"] == 2 and acc["points"] == exp["points"]
        assert acc["wql"] == pytest.approx(exp["ql_total"] / exp["abs_total"], rel=1e-5)
        assert acc["mase"] == pytest.approx(exp["se_total"] / exp["points"], rel=1e-5)
        assert acc["coverage"]["0.8"] == pytest.approx(exp["in80_total"] / exp["points"])
        assert acc["recent"]["wql"] == pytest.approx(exp["ew_wql"], rel=1e-5)
        assert st["accuracy"]["default"]["patches"] == len(others)
        # The text form names the same things.
        assert cli(["status", "--metrics", f"{ingest.url},{worker.url}"]) == 0
        text = capsys.readouterr().out
        assert f"{n_obs} in, 1 rejected (invalid_json 1)" in text
        assert "11 published" in text and "pumps: 2 patches" in text and "end-to-end    p50 >30000 ms" in text
    finally:
        rc_i, rc_w = ingest.stop(), worker.stop()
    assert rc_i == 0 and rc_w == 0

    # Logs: one JSON line per batch at info, with partition/offset context; nothing per observation.
    for p, batches in ((ingest, i_after["streamflame_ingest_batches_total"]),
                       (worker, w_after["streamflame_worker_batches_total"])):
        batch_lines = [x for x in p.lines if x["event"] == f"{p.role}.batch"]
        assert len(batch_lines) == batches, (p.role, len(batch_lines), batches)
        for x in batch_lines:
            assert x["level"] == "info" and x["offsets"]
            for part, (first, last) in x["offsets"].items():
                assert 0 <= int(part) < cfg.kafka.partitions and 0 <= first <= last
        assert len(p.lines) <= len(batch_lines) + 12, [x["event"] for x in p.lines]
    # Every observation record was read by a batch whose offsets say so.
    read = sum(last - first + 1 for x in ingest.lines if x["event"] == "ingest.batch"
               for first, last in x["offsets"].values())
    assert read == n + len(others) + 1
    assert sum(x["records"] for x in ingest.lines if x["event"] == "ingest.batch") == read


def test_histogram_quantile_matches_promql():
    # 10 observations: 4 in (0, 0.1], 4 in (0.1, 0.5], 2 in (0.5, +Inf)
    b = [(0.1, 4), (0.5, 8), (float("inf"), 10)]
    assert histogram_quantile(0.2, b) == pytest.approx(0.05)   # rank 2 of 4 in the first bucket
    assert histogram_quantile(0.5, b) == pytest.approx(0.2)    # rank 5: 1/4 of the way into (0.1, 0.5]
    assert histogram_quantile(0.99, b) == 0.5                   # +Inf bucket: the highest finite bound
    assert histogram_quantile(0.5, [(0.1, 0), (float("inf"), 0)]) is None


def test_status_without_a_running_stack_says_so(tmp_path):
    out = subprocess.run([sys.executable, "-m", "streamflame", "status", "--run-dir", str(tmp_path / "none")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert out.returncode == 1 and "nothing is running" in out.stderr and "streamflame up --detach" in out.stderr
    # A stale run.json (its supervisor is gone) is not mistaken for a running stack.
    run = tmp_path / "stale"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "run.json").write_bytes(orjson.dumps({"metrics": {"ingest": [], "worker": []},
                                                 "pids": {"supervisor": dead.pid, "ingest": [], "worker": []}}))
    out = subprocess.run([sys.executable, "-m", "streamflame", "status", "--run-dir", str(run)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert out.returncode == 1 and "is not running" in out.stderr
