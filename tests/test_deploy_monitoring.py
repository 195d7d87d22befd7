"""Monitoring in deploy/: Prometheus alerting rules, their scrape config and the Grafana
dashboard, wired into the compose stack.

- `promtool` (Debian's prometheus package; `bash scripts/sf setup` installs it) accepts
  the rules and the config (`check rules`, `check config`), and the rules' unit tests
  (`test rules`, deploy/prometheus/alerts_test.yml) show each alert firing on its
  condition and quiet otherwise; a broken rule is refused;
- every metric name and label in the dashboard's queries and the rules is one that a
  live ingest and worker expose on /metrics (scraped here after real data went through
  a real broker and redis-server), besides Prometheus' own ``up`` and ``ALERTS``;
- the dashboard has the panels operators need, on the provisioned datasource, and
  compose mounts what Prometheus and Grafana read, scraping the services' metrics port.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from test_deploy import COMPOSE_FILE, DEPLOY, _render, compose  # noqa: F401 (fixture)
from test_pipeline_e2e import read_topic
from test_worker import model_dir  # noqa: F401 (fixture)

from streamflame.config import ServiceConfig
from streamflame.core.constants import PATCH_LEN
from streamflame.pipeline.ingest.consumer import IngestConsumer
from streamflame.pipeline.ingest.metrics import serve as serve_ingest
from streamflame.pipeline.worker.worker import Worker

PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamflame.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
JOBS = {"streamflame-ingest", "streamflame-worker"}
PROMETHEUS_OWN = {"up", "ALERTS"}
FUNCTIONS = {"sum", "avg", "max", "min", "count", "rate", "irate", "increase", "deriv", "absent",
             "histogram_quantile", "avg_over_time", "max_over_time", "min_over_time", "vector", "clamp_min",
             "clamp_max", "abs", "topk", "bottomk"}
KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left", "group_right"}
TARGET_LABELS = {"job", "instance"}


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `apt-get install prometheus` (bash scripts/sf setup does it)"
    return path


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([_promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dash: dict) -> list[dict]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def _expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard query and alerting rule."""
    out = [(f"panel {p['title']!r}", t["expr"]) for p in _panels(_dashboard()) for t in p["targets"]]
    return out + [(f"alert {r['alert']}", r["expr"]) for r in _rules()]


def test_promtool_accepts_rules_and_config_and_the_rule_tests_pass():
    checked = _run("check", "rules", str(PROM / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout
    config = _run("check", "config", str(PROM / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    tested = _run("test", "rules", "alerts_test.yml", cwd=PROM)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr

    names = {r["alert"] for r in _rules()}
    assert {"StreamFlameIngestLagGrowing", "StreamFlameWorkerLagGrowing", "StreamFlameDeadLetterRate",
            "StreamFlameWorkerDown", "StreamFlameNoWorker", "StreamFlameAccuracyDegraded"} <= names
    # Every alert has a rule test that expects it to fire.
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert fired == names


def test_promtool_refuses_broken_rules(tmp_path):
    """The checks above can fail: a syntax error in an expression, or a rule test whose
    alert does not fire."""
    broken = tmp_path / "alerts.yml"
    broken.write_text((PROM / "alerts.yml").read_text().replace("up{job=\"streamflame-worker\"} == 0",
                                                               "up{job=\"streamflame-worker\" == 0", 1))
    out = _run("check", "rules", str(broken))
    assert out.returncode != 0 and "StreamFlameWorkerDown" in out.stderr and "parse error" in out.stderr
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    (quiet / "alerts.yml").write_text((PROM / "alerts.yml").read_text().replace("for: 2m", "for: 20m"))
    shutil.copy(PROM / "alerts_test.yml", quiet / "alerts_test.yml")
    out = _run("test", "rules", "alerts_test.yml", cwd=quiet)
    assert out.returncode != 0 and "StreamFlameWorkerDown" in out.stdout + out.stderr


def _parse(expr: str) -> tuple[set[str], set[str], set[str]]:
    """(metric names, label names, function names) used in a PromQL expression."""
    labels: set[str] = set()
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                     # string contents
    for block in re.findall(r"\{([^}]*)\}", text):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", block))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)                             # ranges, subqueries
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        labels |= {x.strip() for x in clause.split(",") if x.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?[smhdwy]?\b", " ", text)   # numbers, durations
    functions = set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", text))
    words = set(re.findall(r"\b([A-Za-z_:][\w:]*)\b", text))
    return words - functions - KEYWORDS, labels, functions


def test_expression_parser_finds_names():
    metrics, labels, functions = _parse(
        'sum by (reason) (rate(streamflame_x_total{job="a", b=~"c.*"}[5m] offset 1h)) > 0.5 '
        'and absent(up{job="w"} == 1)')
    assert metrics == {"streamflame_x_total", "up"}
    assert labels == {"reason", "job", "b"} and functions == {"sum", "rate", "absent"}


@pytest.fixture()
def live_metrics(service_config, model_dir, redis_client):  # noqa: F811
    """/metrics of a real ingest and worker after 2 series x 3 patches of live data (timestamps
    up to now, one value out of its group's range), a bad observation message and a bad patch
    record: metric name -> label names."""
    data = service_config.effective(mask_secrets=False)
    data["worker"].update({"model_path": str(model_dir), "device": "cpu", "batch_deadline_ms": 30})
    data["defaults"].update({"frequency": "1min", "horizon": 60, "num_samples": 8, "quantiles": [0.1, 0.5, 0.9]})
    data["groups"] = [{"name": "tanks", "match": "tank-*", "alerts": {"range": [0.0, 100.0]}}]
    cfg = ServiceConfig(**data)
    ingest, worker = IngestConsumer(cfg, redis_client=redis_client), Worker(cfg)
    urls = [f"http://127.0.0.1:{port}/metrics" for port in (serve_ingest(ingest, 0), worker.metrics.serve(0))]
    threads = [threading.Thread(target=x.run, daemon=True) for x in (ingest, worker)]
    for t in threads:
        t.start()
    try:
        n = 3 * PATCH_LEN + 2
        t0 = (int(time.time()) // 60 - n) * 60_000
        prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, linger_ms=5)
        for sid in ("tank-1", "pump-1"):
            v = 10 + np.sin(np.arange(n) / 5)
            v[100:] = 500.0                                 # an out_of_range alert episode, open at the end
            prod.send(cfg.topics.observations, key=sid.encode(), value=json.dumps(
                {"series_id": sid, "timestamps": [t0 + k * 60_000 for k in range(n)], "values": v.tolist()}).encode())
        prod.send(cfg.topics.observations, key=b"tank-1", value=b'{"series_id": "tank-1", "timestamp": ')
        prod.send(cfg.topics.patches, key=b"tank-9", value=b"not a patch")
        prod.flush()
        prod.close()
        read_topic(cfg.kafka.bootstrap, cfg.topics.forecasts, want=6, timeout=60)
        read_topic(cfg.kafka.bootstrap, cfg.topics.dlq, want=2, timeout=30)
        time.sleep(0.5)
        exposed: dict[str, set[str]] = {}
        for url in urls:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            for fam in text_string_to_metric_families(text):
                suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(fam.type, [""])
                for s in suffixes:
                    exposed.setdefault(fam.name + s, set())
                for sample in fam.samples:
                    exposed.setdefault(sample.name, set()).update(sample.labels)
        yield exposed
    finally:
        ingest.stop()
        worker.stop()
        for t in threads:
            t.join(30)


def test_queries_use_only_exposed_metrics_and_labels(live_metrics):
    # The scrape itself: both services, the labelled families with samples.
    for name, labels in {"streamflame_ingest_rejected_total": {"reason"}, "streamflame_ingest_lag": {"partition"},
                         "streamflame_worker_dead_letters_total": {"reason"},
                         "streamflame_worker_online_coverage": {"group", "level"},
                         "streamflame_ingest_alert_episodes_open": {"group", "kind"},
                         "streamflame_worker_e2e_latency_seconds_bucket": {"le"}}.items():
        assert labels <= live_metrics.get(name, set()), (name, live_metrics.get(name))

    used = set()
    for where, expr in _expressions():
        metrics, labels, functions = _parse(expr)
        assert metrics, f"{where}: no metric in {expr!r}"
        assert functions <= FUNCTIONS, f"{where}: unknown function {functions - FUNCTIONS}"
        unknown = {m for m in metrics if m not in live_metrics and m not in PROMETHEUS_OWN}
        assert not unknown, f"{where}: {sorted(unknown)} not exposed by ingest or worker"
        known_labels = set().union(*(live_metrics.get(m, set()) for m in metrics)) | TARGET_LABELS
        if metrics & PROMETHEUS_OWN:
            known_labels |= {"alertname", "alertstate"}
        assert labels <= known_labels, f"{where}: labels {labels - known_labels} not on {sorted(metrics)}"
        used |= metrics
    # What the panels and alerts are about is really there.
    for name in ("streamflame_ingest_observations_total", "streamflame_worker_forecasts_published_total",
                 "streamflame_ingest_lag", "streamflame_worker_consumer_lag",
                 "streamflame_worker_patch_latency_seconds_bucket", "streamflame_worker_online_quantile_loss_total",
                 "streamflame_worker_alerts_published_total", "streamflame_ingest_rejected_total", "up"):
        assert name in used, name


def test_dashboard_panels_and_datasource():
    dash = _dashboard()
    assert dash["uid"] == "streamflame" and dash["schemaVersion"] >= 36
    titles = " | ".join(p["title"].lower() for p in _panels(dash))
    for topic in ("throughput", "lag", "latency", "wql", "alerts", "dead letters by reason"):
        assert topic in titles, topic
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    ids = {p["id"] for p in dash["panels"]}
    assert len(ids) == len(dash["panels"])
    for p in _panels(dash):
        assert p["datasource"] == {"type": "prometheus", "uid": source["uid"]}, p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == source["uid"] and t["expr"] for t in p["targets"])
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
    jobs = set(re.findall(r'job=~?"([^"]+)"', " ".join(e for _, e in _expressions())))
    assert jobs and all(j in JOBS or re.fullmatch(j, "streamflame-worker") for j in jobs), jobs


def test_compose_runs_prometheus_and_grafana_on_these_files(compose):  # noqa: F811
    stack = _render(compose, COMPOSE_FILE)
    services = stack["services"]
    prom, graf = services["prometheus"], services["grafana"]

    def mounts(svc):
        return {v["target"]: Path(v["source"]) for v in svc["volumes"] if v["type"] == "bind"}

    assert mounts(prom)["/etc/prometheus"] == PROM
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert mounts(graf)["/etc/grafana/provisioning"] == PROVISIONING
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "streamflame.yml").read_text())["providers"]
    assert mounts(graf)[provider["options"]["path"]] == DASHBOARD.parent
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and any(p["target"] == 9090 for p in prom["ports"])

    # Scrape jobs: each compose app service on its metrics port, named as the rules expect.
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == JOBS
    for job, spec in jobs.items():
        (sd,) = spec["dns_sd_configs"]
        (name,) = sd["names"]
        assert job == f"streamflame-{name}" and name in services
        assert str(sd["port"]) == str(services[name]["environment"]["STREAMFLAME_METRICS__PORT"])
