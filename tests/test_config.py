"""Service configuration: YAML + environment, validation messages, series
groups, the `config check` CLI, client kwargs against real services, reload."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from streamflame.config import (
    ConfigError,
    ConfigWatcher,
    GroupSettings,
    ServiceConfig,
    changed_paths,
    default_config_path,
    load_config,
    main,
    needs_restart,
)
from streamflame.core.frequency import format_frequency, parse_frequency

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No STREAMFLAME_* variable from the outer environment leaks into a test."""
    for name in list(os.environ):
        if name.startswith("STREAMFLAME_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def check(capsys, path) -> tuple[int, str, str]:
    rc = main(["check", str(path)])
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- frequencies


@pytest.mark.parametrize(
    "text, ms",
    [("1s", 1000), ("10min", 600_000), ("1h", 3_600_000), ("1d", 86_400_000), ("500ms", 500), ("2w", 1_209_600_000),
     ("h", 3_600_000), ("15T", 900_000), ("1H", 3_600_000), ("1.5s", 1500), ("PT15M", 900_000), ("P1D", 86_400_000),
     ("PT1H30M", 5_400_000), ("PT0.5S", 500), ("pt10s", 10_000)],
)
def test_parse_frequency(text, ms):
    assert parse_frequency(text) == ms


@pytest.mark.parametrize("bad", ["", "10", "10 parsecs", "0s", "P1M", "P1Y", "PT", "P", "1.0005s", "-5min", 600_000])
def test_parse_frequency_rejects(bad):
    with pytest.raises(ValueError):
        parse_frequency(bad)


@pytest.mark.parametrize("ms, text", [(600_000, "10min"), (5_400_000, "90min"), (86_400_000, "1d"), (1500, "1500ms"),
                                      (3_600_000, "1h"), (2000, "2s")])
def test_format_frequency(ms, text):
    assert format_frequency(ms) == text
    assert parse_frequency(text) == ms


# --------------------------------------------------------------------------- loading and precedence


def test_defaults_without_file(tmp_path):
    cfg = load_config()
    assert cfg.kafka.bootstrap == "127.0.0.1:9092" and cfg.topics.dlq == "streamflame.dlq"
    assert cfg.redis.url == "redis://127.0.0.1:6379/0" and cfg.metrics.port is None
    g = cfg.resolve_group("anything")
    assert g.name == "default" and g.frequency is None and g.freq_ms is None
    # no per-point alerts by default (the episodes are the alerting product): nothing added to the quantiles
    assert g.quantiles == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9) and g.alert_levels is None
    assert g.alerts.enabled
    on = load_config(write(tmp_path, "defaults: {alert_levels: [0.01, 0.99]}\n")).resolve_group("x")
    assert on.quantiles == (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)    # + alert levels
    assert (g.horizon, g.num_samples, g.min_history_patches, g.include_samples) == (96, 100, 1, False)


def test_file_then_environment_wins(tmp_path, monkeypatch):
    path = write(tmp_path, """
        kafka: {bootstrap: "file-host:9092", partitions: 3}
        redis: {url: "redis://file-host:6379/1"}
        defaults: {horizon: 48}
    """)
    cfg = load_config(path)
    assert (cfg.kafka.bootstrap, cfg.kafka.partitions, cfg.defaults.horizon) == ("file-host:9092", 3, 48)
    monkeypatch.setenv("STREAMFLAME_KAFKA__BOOTSTRAP", "env-host:9093")
    monkeypatch.setenv("STREAMFLAME_DEFAULTS__QUANTILES", "[0.25, 0.5, 0.75]")
    monkeypatch.setenv("STREAMFLAME_WORKER__DEVICE", "cpu")
    cfg = load_config(path)
    assert cfg.kafka.bootstrap == "env-host:9093" and cfg.kafka.partitions == 3  # sibling from the file survives
    assert cfg.redis.url == "redis://file-host:6379/1"
    assert cfg.defaults.quantiles == (0.25, 0.5, 0.75)
    assert cfg.worker.device == "cpu"


def test_config_env_names_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, "worker: {seed: 77}\n")
    monkeypatch.setenv("STREAMFLAME_CONFIG", str(path))
    assert load_config().worker.seed == 77
    assert load_config(write(tmp_path, "worker: {seed: 5}\n", "other.yaml")).worker.seed == 5  # explicit path wins


def test_metrics_port_env(monkeypatch):
    monkeypatch.setenv("STREAMFLAME_METRICS_PORT", "9109")
    assert load_config().metrics.port == 9109
    monkeypatch.setenv("STREAMFLAME_METRICS__PORT", "9200")  # the nested form wins
    assert load_config().metrics.port == 9200
    monkeypatch.setenv("STREAMFLAME_METRICS__PORT", "null")
    assert load_config().metrics.port is None


def test_groups_from_environment_json(monkeypatch):
    monkeypatch.setenv("STREAMFLAME_GROUPS", '[{"name": "pumps", "match": "pump-*", "frequency": "1min"}]')
    assert load_config().resolve_group("pump-7").freq_ms == 60_000


def test_keyword_arguments_beat_environment(monkeypatch):
    monkeypatch.setenv("STREAMFLAME_REDIS__KEY_PREFIX", "envp")
    assert ServiceConfig(redis={"key_prefix": "kw"}).redis.key_prefix == "kw"
    assert ServiceConfig().redis.key_prefix == "envp"


def test_shipped_configs_are_valid(monkeypatch):
    # The packaged file `up` runs without --config is the documented configs/default.yaml.
    assert default_config_path().read_text() == (REPO / "configs" / "default.yaml").read_text()
    cfg = load_config(default_config_path())
    assert cfg.resolve_group("sensors.temp.kitchen").name == "temperature"
    assert cfg.resolve_group("power.site-12.meter").name == "power"
    assert cfg.resolve_group("power.site-x.meter").name == "default"
    prod = REPO / "configs" / "examples" / "production.yaml"
    with pytest.raises(ConfigError, match="sasl_username, sasl_password"):
        load_config(prod)
    for name, value in [("KAFKA__SASL_USERNAME", "sf"), ("KAFKA__SASL_PASSWORD", "pw"), ("REDIS__PASSWORD", "rpw")]:
        monkeypatch.setenv("STREAMFLAME_" + name, value)
    cfg = load_config(prod)
    assert cfg.kafka.security_protocol == "SASL_SSL" and cfg.redis.tls and cfg.worker.device == "cuda"


# --------------------------------------------------------------------------- series groups


GROUPS = """
    defaults:
      horizon: 48
      quantiles: [0.1, 0.5, 0.9]
      num_samples: 20
    groups:
      - name: temp
        match: "sensors.temp.*"
        frequency: 1h
        alert_levels: [0.05, 0.95]
      - name: pumps
        regex: 'pump-[0-9]+'
        frequency: PT15M
        horizon: 192
        alert_levels: null
      - name: catch-sensors
        match: "sensors.*"
        include_samples: true
"""


def test_group_resolution_order_and_inheritance(tmp_path):
    cfg = load_config(write(tmp_path, GROUPS))
    temp = cfg.resolve_group("sensors.temp.a.b")  # glob * crosses dots
    assert temp.name == "temp" and temp.freq_ms == 3_600_000 and temp.horizon == 48 and temp.num_samples == 20
    assert temp.quantiles == (0.05, 0.1, 0.5, 0.9, 0.95)  # alert levels added to the inherited quantiles
    assert temp.quantile_keys == ["0.05", "0.1", "0.5", "0.9", "0.95"]
    assert cfg.resolve_group("sensors.hum.1").name == "catch-sensors"  # first match wins, later groups too
    assert cfg.resolve_group("sensors.hum.1").include_samples is True
    pumps = cfg.resolve_group("pump-12")
    assert pumps.name == "pumps" and pumps.frequency == "15min" and pumps.horizon == 192 and pumps.alert_levels is None
    assert pumps.quantiles == (0.1, 0.5, 0.9)
    assert cfg.resolve_group("pump-12b").name == "default"  # regex must match the whole id
    assert cfg.resolve_group("Sensors.temp.x").name == "default"  # globs are case-sensitive
    assert cfg.resolve_group("pump-12") is pumps  # cached
    assert cfg == load_config(write(tmp_path, GROUPS, "same.yaml"))  # the cache is not part of equality
    assert cfg.group_names() == ["temp", "pumps", "catch-sensors", "default"]


def test_group_settings_are_read_only():
    g = GroupSettings()
    with pytest.raises(Exception):
        g.horizon = 5  # type: ignore[misc]


def test_check_horizons_against_model():
    cfg = ServiceConfig(groups=[{"name": "long", "match": "x*", "horizon": 500}])
    cfg.check_horizons(500)
    with pytest.raises(ConfigError, match=r"groups\[0\].horizon: 500 exceeds the model's max_horizon 384"):
        cfg.check_horizons(384)


# --------------------------------------------------------------------------- validation messages

BAD_FILES = [
    ("groups:\n  - {name: a, match: 'x*', quantiles: [0.5, 0.2]}\n",
     ["groups[0].quantiles: must be strictly increasing (sorted, no duplicates)"]),
    ("groups:\n  - {name: a, match: 'x*'}\n  - {name: b, match: 'y*', quantiles: [0.1, 1.0]}\n",
     ["groups[1].quantiles: 1.0 is not strictly between 0 and 1"]),
    ("groups:\n  - {name: a, match: 'x*', regex: 'x.*'}\n", ["groups[0]: give exactly one of match (glob) or regex"]),
    ("groups:\n  - {name: a}\n", ["groups[0]: give exactly one of match (glob) or regex"]),
    ("groups:\n  - {name: a, regex: '(unclosed'}\n",
     ["groups[0].regex: invalid regular expression: missing ), unterminated subpattern at position 0"]),
    ("groups:\n  - {name: a, match: 'x*'}\n  - {name: a, match: 'y*'}\n",
     ["groups[1].name: 'a' is already used by groups[0]"]),
    ("groups:\n  - {name: a, match: 'x*', frequency: 10 minutes}\n",
     ["groups[0].frequency: '10 minutes' is not a frequency; use e.g. '500ms', '1s', '10min', '1h', '1d' or 'PT15M'"]),
    ("groups:\n  - {name: a, match: 'x*', frequency: 600}\n",
     ["groups[0].frequency: give a duration string such as '10min' or 'PT10M', got 600"]),
    ("defaults: {horizon: 0, alert_levels: [0.9, 0.1]}\n",
     ["defaults.horizon: Input should be greater than or equal to 1 (got 0)",
      "defaults.alert_levels: need 0 < lo < hi < 1, got (0.9, 0.1)"]),
    ("kafka: {partitons: 8}\n", ["kafka.partitons: unknown field (did you mean 'partitions'?)"]),
    ("kafka: {security_protocol: TLS}\n",
     ["kafka.security_protocol: Input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL' (got 'TLS')"]),
    ("kafka: {bootstrap: 'broker'}\n", ["kafka.bootstrap: 'broker' is not host:port"]),
    ("redis: {url: 'http://x'}\n", ["redis.url: 'http://x' must start with redis://, rediss:// or unix://"]),
    ("worker: {device: gpu, batch_size: -1}\n",
     ["worker.batch_size: Input should be greater than or equal to 1 (got -1)",
      "worker.device: 'gpu': use auto, cpu, cuda or cuda:N"]),
    ("ingest: {grid_tolerance: 0.5}\n", ["ingest.grid_tolerance: Input should be less than 0.5 (got 0.5)"]),
    ("defaults: {horizon: true}\nmetrics: {port: false}\n",
     ["metrics.port: expected a number, got a boolean", "defaults.horizon: expected a number, got a boolean"]),
    ("wokrer: {seed: 1}\n", ["wokrer: unknown field (did you mean 'worker'?)"]),
    ("kafka: [1, 2]\n", ["kafka: must be a mapping of settings, got a list"]),
    ("- just\n- a list\n", ["the top level must be a mapping of sections, got a list"]),
    ("kafka:\n  bootstrap: a:1\n  bootstrap: b:2\n", ["line 3 column 3: invalid YAML: duplicate key 'bootstrap'"]),
    ("kafka: {bootstrap: [}\n", ["line 1 column 21: invalid YAML: expected the node content, but found '}'"]),
]


@pytest.mark.parametrize("text, problems", BAD_FILES)
def test_config_check_names_field_and_problem(tmp_path, capsys, text, problems):
    path = write(tmp_path, text)
    rc, out, err = check(capsys, path)
    assert rc == 2 and out == ""
    assert err.splitlines() == [f"error: {path}: {p}" for p in problems]
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.problems == problems


def test_missing_file(tmp_path, capsys):
    rc, _, err = check(capsys, tmp_path / "nope.yaml")
    assert rc == 2 and err == f"error: {tmp_path / 'nope.yaml'}: no such file\n"


def test_bad_environment_value_is_attributed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STREAMFLAME_KAFKA__PARTITIONS", "many")
    rc, _, err = check(capsys, write(tmp_path, "{}\n"))
    assert rc == 2
    assert "kafka.partitions: Input should be a valid integer" in err
    assert "(from environment variable STREAMFLAME_KAFKA__PARTITIONS)" in err


def test_config_check_prints_effective_settings_without_secrets(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, textwrap.dedent(GROUPS) + "redis: {username: app}\n")
    monkeypatch.setenv("STREAMFLAME_REDIS__PASSWORD", "hunter2")
    monkeypatch.setenv("STREAMFLAME_KAFKA__BOOTSTRAP", "k1:9092,k2:9092")
    rc, out, err = check(capsys, path)
    assert rc == 0 and err == ""
    assert "hunter2" not in out
    assert "# environment overrides: STREAMFLAME_KAFKA__BOOTSTRAP, STREAMFLAME_REDIS__PASSWORD" in out
    assert ("# redis.password is set but not printed: give it again (STREAMFLAME_REDIS__PASSWORD)" in out
            and "# redis.url not set: `streamflame up` starts its own" in out)
    shown = yaml.safe_load(out)
    assert "password" not in shown["redis"] and "url" not in shown["redis"] and shown["redis"]["username"] == "app"
    assert shown["kafka"]["bootstrap"] == "k1:9092,k2:9092"
    temp = shown["groups"][0]
    assert temp["name"] == "temp" and temp["match"] == "sensors.temp.*" and "regex" not in temp
    assert temp["quantiles"] == [0.05, 0.1, 0.5, 0.9, 0.95] and temp["horizon"] == 48
    # What check printed, fed back unchanged (same environment), loads to the same settings.
    (tmp_path / "echo.yaml").write_text(out)
    echo, orig = load_config(tmp_path / "echo.yaml"), load_config(path)
    assert echo == orig and echo.redis.password.get_secret_value() == "hunter2"
    assert "url" not in echo.redis.model_fields_set


@pytest.mark.parametrize("name", ["configs/default.yaml", "configs/examples/production.yaml"])
def test_printed_config_round_trips(tmp_path, capsys, monkeypatch, name):
    """`config check FILE` output is a config that loads to the same settings and, for `up`,
    names the same services: an unset kafka.bootstrap / redis.url stays unset (embedded)."""
    for var in ("KAFKA__SASL_USERNAME", "KAFKA__SASL_PASSWORD", "REDIS__PASSWORD"):
        monkeypatch.setenv("STREAMFLAME_" + var, "s3cret-" + var.lower())
    rc, out, _ = check(capsys, REPO / name)
    assert rc == 0 and "s3cret-kafka__sasl_password" not in out and "s3cret-redis__password" not in out
    (tmp_path / "echo.yaml").write_text(out)
    rc, again, _ = check(capsys, tmp_path / "echo.yaml")
    assert rc == 0 and again.splitlines()[1:] == out.splitlines()[1:]   # the first line names the file
    echo, orig = load_config(tmp_path / "echo.yaml"), load_config(REPO / name)
    assert echo == orig
    for section, field in (("kafka", "bootstrap"), ("redis", "url")):
        assert (field in getattr(echo, section).model_fields_set) == (field in getattr(orig, section).model_fields_set)


def test_config_check_reports_every_problem_in_one_pass(tmp_path, capsys, monkeypatch):
    """Group errors that pydantic reports only once the others are fixed (names, one matcher)
    come in the same pass, in group order."""
    path = write(tmp_path, """\
        kafka: {partitons: 3}
        defaults: {horizon: 0}
        groups:
          - {name: a, match: "x.*", horizon: -1}
          - {name: a, match: "y.*", quantiles: [0.5, 0.1]}
          - {name: c, match: "z.*", regex: "z.*", num_samples: 0}
          - {name: default, match: w}
          - {name: e, frequency: 10min}
        """)
    rc, out, err = check(capsys, path)
    assert rc == 2 and out == ""
    assert err.splitlines() == [f"error: {path}: {p}" for p in [
        "kafka.partitons: unknown field (did you mean 'partitions'?)",
        "defaults.horizon: Input should be greater than or equal to 1 (got 0)",
        "groups[0].horizon: Input should be greater than or equal to 1 (got -1)",
        "groups[1].quantiles: must be strictly increasing (sorted, no duplicates)",
        "groups[1].name: 'a' is already used by groups[0]",
        "groups[2].num_samples: Input should be greater than or equal to 1 (got 0)",
        "groups[2]: give exactly one of match (glob) or regex",
        "groups[3].name: 'default' is reserved for the defaults section",
        "groups[4]: give exactly one of match (glob) or regex",
    ]]
    # The same problems from STREAMFLAME_GROUPS.
    env_groups = '[{"name": "a", "match": "x"}, {"name": "a", "regex": "y", "horizon": 0}]'
    monkeypatch.setenv("STREAMFLAME_GROUPS", env_groups)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "{}\n", "empty.yaml"))
    assert e.value.problems == ["groups[1].horizon: Input should be greater than or equal to 1 (got 0)",
                                "groups[1].name: 'a' is already used by groups[0]"]


def test_config_show_defaults(capsys):
    assert main(["show"]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert "bootstrap" not in shown["kafka"] and shown["groups"] == []
    assert "# kafka.bootstrap not set: `streamflame up` starts its own; ingest and worker alone use 127.0.0.1:9092" in out


def test_cli_entry_point(tmp_path):
    good = write(tmp_path, GROUPS)
    bad = write(tmp_path, "defaults: {num_samples: 0}\n", "bad.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFLAME_")}
    run = lambda *a: subprocess.run([sys.executable, "-m", "streamflame", "config", *a],  # noqa: E731
                                    capture_output=True, text=True, env=env, cwd=REPO)
    ok = run("check", str(good))
    assert ok.returncode == 0 and yaml.safe_load(ok.stdout)["groups"][1]["name"] == "pumps"
    ko = run("check", str(bad))
    assert ko.returncode == 2
    assert ko.stderr.strip() == f"error: {bad}: defaults.num_samples: Input should be greater than or equal to 1 (got 0)"


# --------------------------------------------------------------------------- client kwargs


def test_kafka_kwargs_are_kafka_python_options():
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    k = ServiceConfig(kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                             "sasl_username": "u", "sasl_password": "p", "ssl_cafile": "/ca.pem",
                             "compression": "zstd", "bootstrap": "a:1, b:2"}).kafka
    for role, cls in [("consumer", KafkaConsumer), ("producer", KafkaProducer), ("admin", KafkaAdminClient)]:
        kw = k.client_kwargs(role)
        assert set(kw) <= set(cls.DEFAULT_CONFIG), set(kw) - set(cls.DEFAULT_CONFIG)
        assert kw["bootstrap_servers"] == ["a:1", "b:2"] and kw["sasl_plain_password"] == "p"
        assert kw["ssl_cafile"] == "/ca.pem"
        assert (kw.get("fetch_max_wait_ms") == 50) == (role == "consumer")      # kafka.fetch_max_wait_ms
    assert k.client_kwargs("producer")["compression_type"] == "zstd"
    assert k.client_kwargs("producer")["batch_size"] == 524_288          # kafka.batch_bytes
    assert ServiceConfig(kafka={"batch_bytes": 65536}).kafka.client_kwargs("producer")["batch_size"] == 65536
    with pytest.raises(ValueError, match="batch_bytes"):
        ServiceConfig(kafka={"batch_bytes": 8 * 2**20})                 # above a broker's message.max.bytes
    assert "sasl_mechanism" not in ServiceConfig().kafka.client_kwargs()


def test_kafka_kwargs_reach_a_real_broker(embedded_kafka):
    from kafka import KafkaAdminClient

    cfg = ServiceConfig(kafka={"bootstrap": embedded_kafka, "client_id": "cfg-test"})
    admin = KafkaAdminClient(**cfg.kafka.client_kwargs("admin"))
    try:
        assert isinstance(admin.list_topics(), list)
    finally:
        admin.close()


def test_redis_kwargs_with_acl_user_against_real_server(embedded_redis, redis_client):
    import redis

    redis_client.acl_setuser("sf-app", enabled=True, passwords=["+s3cret"], keys=["sf:*"], commands=["+@all"])
    cfg = ServiceConfig(redis={"url": embedded_redis, "username": "sf-app", "password": "s3cret"})
    client = redis.Redis.from_url(**cfg.redis.client_kwargs())
    try:
        assert client.acl_whoami() == "sf-app"
        client.set(cfg.redis.series_key("pump-1", "state"), b"x")
        assert redis_client.get("sf:{pump-1}:state") == b"x"
    finally:
        client.close()
    wrong = ServiceConfig(redis={"url": embedded_redis, "username": "sf-app", "password": "nope"})
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(**wrong.redis.client_kwargs()).ping()


def test_redis_tls_kwargs():
    r = ServiceConfig(redis={"url": "redis://h:6380/0", "ssl": True, "ssl_ca_certs": "/ca.pem"}).redis
    assert r.client_kwargs() == {"url": "rediss://h:6380/0", "ssl_ca_certs": "/ca.pem"}
    plain = ServiceConfig(redis={"ssl_ca_certs": "/ca.pem"}).redis  # CA without TLS is not passed
    assert plain.client_kwargs() == {"url": "redis://127.0.0.1:6379/0"}


# --------------------------------------------------------------------------- reload support


def test_watcher_reloads_and_keeps_old_config_on_a_bad_file(tmp_path):
    path = write(tmp_path, GROUPS)
    now = [0.0]
    w = ConfigWatcher(path, settle_s=0.3, clock=lambda: now[0])
    assert w.poll() is None and w.config.resolve_group("pump-1").horizon == 192
    path.write_text(path.read_text().replace("horizon: 192", "horizon: 24"))
    os.utime(path, ns=(1, 1))  # make the change visible even within one mtime tick
    assert w.poll() is None  # changed just now: not read until it has held still for settle_s
    now[0] += 0.2
    assert w.poll() is None
    now[0] += 0.1
    new = w.poll()
    assert new is not None and new.resolve_group("pump-1").horizon == 24 and w.config is new
    assert w.poll() is None  # read once
    assert changed_paths(load_config(write(tmp_path, GROUPS, "old.yaml")), new) == ["groups"]
    path.write_text(path.read_text().replace("horizon: 24", "horizon: -3"))
    os.utime(path, ns=(2, 2))
    assert w.poll() is None
    now[0] += 0.3
    with pytest.raises(ConfigError, match=r"groups\[1\].horizon"):
        w.poll()
    assert w.config is new  # the old good config keeps running
    now[0] += 5
    assert w.poll() is None  # the same broken file is reported once
    with pytest.raises(ConfigError):
        w.reload()  # an explicit reload (SIGHUP) reports it again


def test_changed_paths_and_restart_classification():
    a = ServiceConfig()
    b = ServiceConfig(kafka={"bootstrap": "other:9092"}, worker={"batch_size": 64}, defaults={"horizon": 12})
    paths = changed_paths(a, b)
    assert paths == ["kafka.bootstrap", "worker.batch_size", "defaults"]
    assert needs_restart(paths) == ["kafka.bootstrap"]


def test_every_setting_is_documented():
    from streamflame.config import SeriesGroup

    doc = (REPO / "docs" / "configuration.md").read_text()
    for section in ("kafka", "topics", "redis", "ingest", "worker", "metrics"):
        for name in ServiceConfig.model_fields[section].annotation.model_fields:
            assert f"| `{section}.{name}` |" in doc, f"{section}.{name} is missing from docs/configuration.md"
    for name in SeriesGroup.model_fields:
        assert f"| `{name}` |" in doc or f"| `groups[].{name}` |" in doc, name
    assert "| `log_level` |" in doc


def test_embedded_default_leaves_connections_unset():
    """`streamflame up` starts its own broker/redis only when the config does not
    name them (model_fields_set), so the embedded default must not."""
    cfg = load_config(default_config_path())
    assert "bootstrap" not in cfg.kafka.model_fields_set and "url" not in cfg.redis.model_fields_set
    assert (cfg.kafka.session_timeout_ms, cfg.kafka.heartbeat_interval_ms) == (2000, 600)  # fast Tansu joins


@pytest.mark.parametrize("text, words", [
    ("worker: {matmul: fp16}\n", "worker.matmul"),
    ("worker: {matmul: tf32, device: cpu}\n", "tf32 needs a CUDA device"),
    ("worker: {compile: maybe}\n", "worker.compile"),
])
def test_worker_arithmetic_settings_are_checked(tmp_path, text, words):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert words in str(e.value), str(e.value)
    ok = load_config(write(tmp_path, "worker: {matmul: bf16, compile: true}\n", "ok.yaml")).worker
    assert (ok.matmul, ok.compile) == ("bf16", True)
