"""Service configuration: one YAML file plus environment overrides.

Precedence (highest first): keyword arguments to ``ServiceConfig(...)``,
environment variables ``STREAMFLAME_<SECTION>__<FIELD>`` (e.g.
``STREAMFLAME_KAFKA__BOOTSTRAP``; lists/objects as JSON, ``null`` for None),
the legacy ``STREAMFLAME_METRICS_PORT``, the YAML file, built-in defaults.
``load_config(path)`` reads the file (``path`` or, when None, the file named by
``STREAMFLAME_CONFIG``; neither = defaults only). Problems raise
:class:`ConfigError` whose lines read ``<field path>: <problem>``.

Series groups: the first group whose ``match`` (glob, case-sensitive) or
``regex`` (full match) fits a series_id gives its settings; a setting a group
leaves out is taken from ``defaults``, which also serves unmatched series.

``streamflame config check FILE`` / ``streamflame config show [FILE]``: see
:func:`main` and docs/configuration.md.
"""
from __future__ import annotations

import argparse
import contextvars
import difflib
import fnmatch
import functools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from streamflame.alerts.settings import AlertSettings
from streamflame.schemas import format_level

ENV_PREFIX = "STREAMFLAME_"
CONFIG_ENV = "STREAMFLAME_CONFIG"
MAX_HORIZON = 10_000
"""Upper bound the config accepts; the worker also checks the model's own max_horizon."""

DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


# ---------------------------------------------------------------------------
# Frequencies
# ---------------------------------------------------------------------------

_UNIT_MS = {
    "ms": 1, "l": 1,
    "s": 1000, "sec": 1000,
    "min": 60_000, "t": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
}
_FREQ_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)?\s*([a-zA-Z]+)\s*$")
_ISO_DURATION_RE = re.compile(
    r"^P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_frequency(text: str) -> int:
    """A grid step as integer milliseconds.

    Accepts ``<number><unit>`` with unit ms, s, min, h, d, w (case-insensitive;
    pandas aliases T = min, L = ms; a bare unit means 1) or an ISO-8601 duration
    without years/months (``PT15M``, ``P1D``, ``PT1H30M``). Raises ValueError for
    anything else, for zero, and for steps that are not a whole number of ms.
    """
    if not isinstance(text, str):
        raise ValueError(f"frequency must be a string such as '10min' or 'PT10M', got {type(text).__name__}")
    s = text.strip()
    ms: float
    if s[:1].upper() == "P":
        m = _ISO_DURATION_RE.match(s.upper())
        if not m or s.upper() in ("P", "PT") or s.upper().endswith("T"):
            raise ValueError(f"{text!r} is not an ISO-8601 duration with fixed length (years and months are not allowed)")
        parts = {k: float(v) for k, v in m.groupdict().items() if v}
        ms = (parts.get("w", 0) * 7 * 86400 + parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600
              + parts.get("m", 0) * 60 + parts.get("s", 0)) * 1000
    else:
        m = _FREQ_RE.match(s)
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNIT_MS:
            raise ValueError(f"{text!r} is not a frequency; use e.g. '500ms', '1s', '10min', '1h', '1d' or 'PT15M'")
        ms = float(m.group(1) or 1) * _UNIT_MS[unit]
    if ms <= 0:
        raise ValueError(f"frequency {text!r} must be positive")
    if ms != int(ms):
        raise ValueError(f"frequency {text!r} is not a whole number of milliseconds")
    return int(ms)


def format_frequency(ms: int) -> str:
    """Integer ms -> the shortest exact string: 600000 -> "10min", 5400000 -> "90min"."""
    ms = int(ms)
    if ms <= 0:
        raise ValueError(f"frequency must be positive, got {ms} ms")
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


class _Base(BaseModel):
    """Shared validation: unknown fields are errors; YAML ``true``/``false`` is not a number."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, bool):
            ann = cls.model_fields[info.field_name].annotation
            if ann in (int, float) or any(a in (int, float) for a in getattr(ann, "__args__", ())):
                raise ValueError("expected a number, got a boolean")
        return v


class _Section(_Base):
    pass


class KafkaSettings(_Section):
    """Kafka connection (kafka-python)."""

    bootstrap: str = Field("127.0.0.1:9092", description="comma-separated host:port list")
    client_id: str = "streamflame"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    partitions: int = Field(4, ge=1, le=10_000, description="partitions of observations and patches (created if absent)")
    replication_factor: int = Field(1, ge=1, le=16)
    compression: Literal["lz4", "zstd", "gzip", "snappy"] | None = None
    linger_ms: int = Field(5, ge=0, le=60_000, description="producer batching delay")
    batch_bytes: int = Field(
        524_288, ge=1024, le=1_000_000, description="producer batch size per partition (kafka batch.size). A "
        "forecast message is ~10-20 KB, above Kafka's 16 KB default, which would send each one alone (measured "
        "3.5x slower to the embedded broker); at most ~1 MB, the broker's default message.max.bytes")
    idempotent_producer: bool = Field(
        True, description="idempotent producers (enable_idempotence); false = acks=all with one request in flight "
        "per connection (order kept, a retry may duplicate). The embedded Tansu broker needs false: across a broker "
        "restart it loses acknowledged records of idempotent producers (measured, docs/reliability.md)")
    fetch_max_wait_ms: int = Field(
        50, ge=1, le=10_000, description="longest a consumer's fetch waits for new records. Apache Kafka answers a "
        "waiting fetch as soon as records arrive; the embedded Tansu broker answers late (measured: median 129 ms "
        "per hop at Kafka's default 500, 22 ms at 100, 5 ms at 20), so this bounds each hop's added latency")
    session_timeout_ms: int = Field(6000, ge=1000, description="consumer group session timeout")
    heartbeat_interval_ms: int = Field(1000, ge=100)

    @field_validator("bootstrap")
    @classmethod
    def _check_bootstrap(cls, v: str) -> str:
        hosts = [h.strip() for h in v.split(",")]
        for h in hosts:
            host, sep, port = h.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{h!r} is not host:port")
        return ",".join(hosts)

    @model_validator(mode="after")
    def _check_security(self) -> "KafkaSettings":
        if self.security_protocol.startswith("SASL"):
            missing = [n for n in ("sasl_mechanism", "sasl_username", "sasl_password") if getattr(self, n) is None]
            if missing:
                env = ", ".join(f"{ENV_PREFIX}KAFKA__{n.upper()}" for n in missing)
                raise ValueError(f"security_protocol {self.security_protocol} needs {', '.join(missing)} (or set {env})")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        return self

    def client_kwargs(self, role: Literal["consumer", "producer", "admin"] = "consumer") -> dict[str, Any]:
        """Keyword arguments for kafka-python ``KafkaConsumer``/``KafkaProducer``/``KafkaAdminClient``.

        Connection and security settings for every role; producers also get
        compression and linger, consumers the group session/heartbeat timeouts.
        Behavioural options (group_id, auto commit, ...) stay with the caller.
        """
        if role not in ("consumer", "producer", "admin"):
            raise ValueError(f"role must be consumer, producer or admin, got {role!r}")
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.security_protocol.endswith("SSL"):
            kw["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name):
                    kw[name] = getattr(self, name)
        if role == "producer":
            kw["linger_ms"] = self.linger_ms
            kw["batch_size"] = self.batch_bytes
            if self.compression:
                kw["compression_type"] = self.compression
        elif role == "consumer":
            kw["fetch_max_wait_ms"] = self.fetch_max_wait_ms
            kw["session_timeout_ms"] = self.session_timeout_ms
            kw["heartbeat_interval_ms"] = self.heartbeat_interval_ms
        return kw


class TopicSettings(_Section):
    observations: str = "streamflame.observations"
    patches: str = "streamflame.patches"
    forecasts: str = "streamflame.forecasts"
    alerts: str = "streamflame.alerts"
    dlq: str = "streamflame.dlq"

    @field_validator("*")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", v):
            raise ValueError(f"{v!r} is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)")
        return v


class RedisSettings(_Section):
    """Redis connection (redis-py) and key layout."""

    url: str = Field("redis://127.0.0.1:6379/0", description="redis://, rediss:// or unix:// URL")
    username: str | None = None
    password: SecretStr | None = None
    ssl: bool = Field(False, description="use TLS (also implied by a rediss:// url)")
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    key_prefix: str = "sf"
    cluster: bool = Field(False, description="connect with redis.cluster.RedisCluster")

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if not re.match(r"^(redis|rediss|unix)://", v):
            raise ValueError(f"{v!r} must start with redis://, rediss:// or unix://")
        return v

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", v) or "{" in v:
            raise ValueError(f"{v!r}: use 1-64 letters, digits or _ . : -")
        return v

    @property
    def tls(self) -> bool:
        return self.ssl or self.url.startswith("rediss://")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis.from_url(**kw)`` (or
        ``redis.cluster.RedisCluster.from_url(**kw)`` when ``cluster``); ``url``
        is included and switched to ``rediss://`` when ``ssl`` is set."""
        url = self.url
        if self.ssl and url.startswith("redis://"):
            url = "rediss://" + url[len("redis://"):]
        kw: dict[str, Any] = {"url": url}
        if self.username:
            kw["username"] = self.username
        if self.password is not None:
            kw["password"] = self.password.get_secret_value()
        if self.tls:
            for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name):
                    kw[name] = getattr(self, name)
        return kw

    def series_key(self, series_id: str, kind: Literal["ingest", "state"]) -> str:
        """``<prefix>:{<series_id>}:<kind>``; the hash tag keeps a series' keys in one cluster slot."""
        return f"{self.key_prefix}:{{{series_id}}}:{kind}"


class IngestSettings(_Section):
    group_id: str = "streamflame-ingest"
    max_poll_records: int = Field(10_000, ge=1, le=1_000_000)
    commit_interval_ms: int = Field(1000, ge=0)
    max_series_id_len: int = Field(256, ge=1, le=65_536)
    max_message_bytes: int = Field(1_000_000, ge=64)
    max_batch: int = Field(100_000, ge=1, description="observations per batch message")
    max_gap_steps: int = Field(10_000, ge=1, description="a forward jump of more grid steps is rejected as timestamp_too_far")
    grid_tolerance: float = Field(
        0.1, ge=0, lt=0.5, description="fraction of a step within which an off-grid timestamp snaps to the grid"
    )
    freq_inference_points: int = Field(3, ge=2, le=1000, description="first observations used to infer an unset frequency")
    max_buffered_patches: int = Field(10_000, ge=1, description="completed patches held before ingest pauses consuming")
    future_tolerance_ms: int | None = Field(None, ge=0, description="reject timestamps this far past the wall clock; None = off")
    commit_delay_ms: int = Field(
        2000, ge=0, le=600_000,
        description="Kafka offsets are committed only once the Redis cursor writes they rely on are this old "
        "(covers Redis appendfsync everysec losing its last second on a crash)")
    max_series_in_memory: int = Field(
        200_000, ge=1, description="series held in memory per ingest process; beyond it the least recently seen "
        "are evicted, their open patch written into their Redis cursor")
    max_pin_lag: int = Field(
        1_000_000, ge=1, description="a series whose open patch began more than this many records behind its "
        "partition's read position has the open patch written to Redis, so it no longer holds the commit back")
    publisher: Literal["process", "inline"] = Field(
        "process", description="where a batch's patches and dead letters are sent and its cursors written: "
        "process = a publisher process of the consumer's own, while the consumer polls and assembles the next "
        "batch; inline = in the consumer process (sends at once, flush and cursor writes after the next poll). "
        "Read at start (streamflame/sink.py)")


class WorkerSettings(_Section):
    group_id: str = "streamflame-worker"
    batch_size: int = Field(512, ge=1, le=65_536)
    batch_deadline_ms: int = Field(50, ge=0, le=60_000)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    commit_delay_ms: int = Field(
        2000, ge=0, le=600_000,
        description="Kafka offsets are committed only once the Redis state writes they rely on are this old "
        "(Redis appendfsync everysec can lose its last second on a crash; a restarted worker then re-reads "
        "those patches instead of leaving a series' last lost write undetected)")
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads for the model (torch.set_num_threads); None = cores - 1, "
        "at least 1: the Kafka client's I/O thread and the processes beside the worker keep a core (on the "
        "2-core machine, 2 threads under that load made a 4-series forecast 2x slower: measured in docs/benchmarks.md)")
    state_cache_series: int = Field(
        10_000, ge=0, le=10_000_000, description="series whose last written state the worker keeps in memory "
        "(decoded, ~30 KB each with the default model), so their next patch needs no Redis read; the write is "
        "still compare-and-set against Redis, which stays the truth (docs/architecture.md, \"State cache\"). "
        "0 = off")
    publisher: Literal["process", "inline"] = Field(
        "process", description="where a batch is published and its states written: process = a publisher "
        "process of the worker's own, while the model computes the next batch (which is published only once "
        "every write of the one before is seen applied); inline = in the worker process, one batch after "
        "the other (streamflame/sink.py)")
    model_path: str | None = Field(None, description="checkpoint; None = the shipped default")
    seed: int = Field(0, ge=0, lt=2**63, description="global forecast seed")
    on_corrupt_state: Literal["reinit", "quarantine"] = "reinit"
    accuracy_halflife_patches: float = Field(
        1000, gt=0, le=1e9, description="online accuracy gauges: half-life in scored patches per group")
    throttle_ms: int = Field(
        0, ge=0, le=60_000, description="test/ops knob: sleep this long after every batch, to simulate a slow "
        "worker (backpressure tests, soak); 0 = off")

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"{v!r}: use auto, cpu, cuda or cuda:N")
        return v


class MetricsSettings(_Section):
    port: int | None = Field(None, ge=0, le=65_535, description="Prometheus port; None = off, 0 = any free port")
    host: str = "127.0.0.1"


# ---------------------------------------------------------------------------
# Series groups
# ---------------------------------------------------------------------------

_GROUP_SETTING_FIELDS = (
    "frequency", "horizon", "quantiles", "num_samples", "scale",
    "alert_levels", "min_history_patches", "include_samples", "alerts",
)


class GroupSettings(_Base):
    """Forecast settings of one series group (read-only once built).

    ``quantiles`` already contains both ``alert_levels`` (they are added when
    absent), so ``quantiles`` is exactly the key set of a forecast's quantiles.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    name: str = "default"
    frequency: str | None = Field(None, description="grid step ('10min', 'PT15M'); None = infer from the first observations")
    horizon: int = Field(96, ge=1, le=MAX_HORIZON)
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    num_samples: int = Field(100, ge=1, le=10_000)
    scale: float = Field(1.0, gt=0, allow_inf_nan=False, description="sampling-rate scale factor of the model")
    alert_levels: tuple[float, float] | None = Field(
        (0.01, 0.99), description="(lo, hi) quantile levels; None = no alerts. The default 98% interval "
        "flags ~1 observation in 50 of a well-calibrated series: an 80% interval would flag 1 in 5, noise "
        "for an alerting consumer (and ~10 alert messages per patch)")
    min_history_patches: int = Field(1, ge=1, le=100_000)
    include_samples: bool = False
    alerts: AlertSettings = Field(AlertSettings(), description="alert episodes judged in ingest (streamflame/alerts/)")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", v):
            raise ValueError(f"{v!r}: use 1-64 letters, digits or _ . : -")
        return v

    @field_validator("frequency", mode="before")
    @classmethod
    def _check_frequency(cls, v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, str):
            raise ValueError(f"give a duration string such as '10min' or 'PT10M', got {v!r}")
        return format_frequency(parse_frequency(v))

    @field_validator("quantiles")
    @classmethod
    def _check_quantiles(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v:
            raise ValueError("must not be empty")
        if len(v) > 99:
            raise ValueError(f"at most 99 levels, got {len(v)}")
        for q in v:
            if not 0.0 < q < 1.0:
                raise ValueError(f"{q} is not strictly between 0 and 1")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("must be strictly increasing (sorted, no duplicates)")
        _check_level_keys(v)
        return v

    @field_validator("alert_levels")
    @classmethod
    def _check_alert_levels(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is None:
            return None
        lo, hi = v
        if not 0.0 < lo < hi < 1.0:
            raise ValueError(f"need 0 < lo < hi < 1, got ({lo}, {hi})")
        return v

    @model_validator(mode="after")
    def _add_alert_levels(self) -> "GroupSettings":
        if self.alert_levels is not None:
            keys = {format_level(q) for q in self.quantiles}
            extra = [q for q in self.alert_levels if format_level(q) not in keys]
            if extra:
                merged = tuple(sorted(self.quantiles + tuple(extra)))
                _check_level_keys(merged)
                self.__dict__["quantiles"] = merged  # frozen model: set once, here
        return self

    @functools.cached_property
    def freq_ms(self) -> int | None:
        """Grid step in ms, or None when the frequency is inferred."""
        return None if self.frequency is None else parse_frequency(self.frequency)

    @property
    def quantile_keys(self) -> list[str]:
        """Keys of ``ForecastMessage.quantiles``, in level order."""
        return [format_level(q) for q in self.quantiles]


def _check_level_keys(levels: tuple[float, ...]) -> None:
    keys = [format_level(q) for q in levels]
    if len(set(keys)) != len(keys):
        raise ValueError(f"levels {list(levels)} collide when rounded to 6 decimals")


class SeriesGroup(GroupSettings):
    """A named group: exactly one of ``match`` (glob) or ``regex`` (full match)."""

    name: str
    match: str | None = Field(None, description="glob on series_id (fnmatch, case-sensitive; * also matches dots)")
    regex: str | None = Field(None, description="regular expression that must match the whole series_id")

    @field_validator("match")
    @classmethod
    def _check_match(cls, v: str | None) -> str | None:
        if v is not None and not v:
            raise ValueError("must not be empty")
        return v

    @field_validator("regex")
    @classmethod
    def _check_regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"invalid regular expression: {e}") from None
        return v

    @model_validator(mode="after")
    def _check_one_matcher(self) -> "SeriesGroup":
        if (self.match is None) == (self.regex is None):
            raise ValueError("give exactly one of match (glob) or regex")
        return self

    def matches(self, series_id: str) -> bool:
        if self.match is not None:
            return fnmatch.fnmatchcase(series_id, self.match)
        return self._compiled.fullmatch(series_id) is not None

    @functools.cached_property
    def _compiled(self) -> re.Pattern[str]:
        return re.compile(self.regex or "")


# ---------------------------------------------------------------------------
# The whole configuration
# ---------------------------------------------------------------------------

_FILE_DATA: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("streamflame_file_data", default={})
_SECRETS = (("kafka", "sasl_password"), ("redis", "password"))
_EMBEDDED_WHEN_UNSET = (("kafka", "bootstrap"), ("redis", "url"))
"""Connection settings whose absence tells `streamflame up` to start the embedded service."""


def _group_name_problems(names: list[Any]) -> list[str]:
    """Every reserved or repeated group name (names that are not strings are reported elsewhere)."""
    seen: dict[str, int] = {}
    out = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name == "default":
            out.append(f"groups[{i}].name: 'default' is reserved for the defaults section")
        elif name in seen:
            out.append(f"groups[{i}].name: {name!r} is already used by groups[{seen[name]}]")
        else:
            seen[name] = i
    return out


def _raw_group_problems(data: dict[str, Any]) -> list[str]:
    """Group problems pydantic reports only once every group is otherwise valid (names) or once
    the group's fields are (one matcher), found in the raw input so that one pass shows them all."""
    groups = data.get("groups")
    env = os.environ.get(ENV_PREFIX + "GROUPS")
    if env:
        try:
            groups = json.loads(env)
        except ValueError:
            return []
    if not isinstance(groups, list):
        return []
    out = _group_name_problems([g.get("name") if isinstance(g, dict) else None for g in groups])
    for i, g in enumerate(groups):
        if isinstance(g, dict) and (g.get("match") is None) == (g.get("regex") is None):
            out.append(f"groups[{i}]: give exactly one of match (glob) or regex")
    return out


class _FileSource(PydanticBaseSettingsSource):
    """The parsed YAML of the file being loaded (set by :func:`load_config`)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused, __call__ does it all
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _FILE_DATA.get()


class _MetricsPortEnvSource(PydanticBaseSettingsSource):
    """``STREAMFLAME_METRICS_PORT`` (single underscore), below ``STREAMFLAME_METRICS__PORT``."""

    def get_field_value(self, field, field_name):  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        v = os.environ.get("STREAMFLAME_METRICS_PORT", "")
        if not v:
            return {}
        return {"metrics": {"port": None if v.lower() in ("null", "none", "off") else v}}


class ServiceConfig(BaseSettings):
    """Everything ingest and worker need. See docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_parse_none_str="null",
        env_ignore_empty=True,
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    ingest: IngestSettings = IngestSettings()
    worker: WorkerSettings = WorkerSettings()
    metrics: MetricsSettings = MetricsSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    defaults: GroupSettings = GroupSettings()
    groups: list[SeriesGroup] = []

    _resolve_cached: Any = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _MetricsPortEnvSource(settings_cls), _FileSource(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _inherit_defaults(cls, data: Any) -> Any:
        """Fill each group's unset settings from ``defaults`` (raw input level, so
        a problem is reported at the group that wrote the value)."""
        if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
            return data
        raw_defaults = data.get("defaults") or {}
        if isinstance(raw_defaults, GroupSettings):
            raw_defaults = {f: getattr(raw_defaults, f) for f in raw_defaults.model_fields_set}
        if not isinstance(raw_defaults, dict):
            return data
        try:
            GroupSettings.model_validate(raw_defaults)
        except ValidationError:
            return data  # reported under defaults.*; groups keep built-in defaults
        inherited = {k: v for k, v in raw_defaults.items() if k in _GROUP_SETTING_FIELDS}
        groups = []
        for g in data["groups"]:
            if isinstance(g, SeriesGroup):
                g = g.model_dump(include=g.model_fields_set | {"name", "match", "regex"})
            groups.append({**inherited, **g} if isinstance(g, dict) else g)
        return {**data, "groups": groups}

    @field_validator("groups")
    @classmethod
    def _unique_names(cls, groups: list[SeriesGroup]) -> list[SeriesGroup]:
        problems = _group_name_problems([g.name for g in groups])
        if problems:
            raise ValueError("\n".join(problems))
        return groups

    def __eq__(self, other: object) -> bool:
        """Equal settings (the resolve_group cache does not count)."""
        if not isinstance(other, ServiceConfig):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]

    def resolve_group(self, series_id: str) -> GroupSettings:
        """Settings for a series: the first group that matches, else ``defaults`` (cached)."""
        if self._resolve_cached is None:
            groups, defaults = tuple(self.groups), self.defaults

            @functools.lru_cache(maxsize=1 << 18)
            def resolve(sid: str) -> GroupSettings:
                for g in groups:
                    if g.matches(sid):
                        return g
                return defaults

            self._resolve_cached = resolve
        return self._resolve_cached(series_id)

    def group_names(self) -> list[str]:
        return [g.name for g in self.groups] + ["default"]

    def check_horizons(self, max_horizon: int) -> None:
        """Raise ConfigError if a group asks for more steps than the model can give."""
        problems = [
            f"{path}.horizon: {g.horizon} exceeds the model's max_horizon {max_horizon}"
            for path, g in [("defaults", self.defaults)] + [(f"groups[{i}]", g) for i, g in enumerate(self.groups)]
            if g.horizon > max_horizon
        ]
        if problems:
            raise ConfigError(problems)

    def as_file(self) -> tuple[dict[str, Any], list[str]]:
        """The effective settings as a config file that loads back to the same settings, for
        `streamflame up`, ingest and worker alike (`config check` / `show` print it), and notes
        on what it leaves out: ``kafka.bootstrap`` / ``redis.url`` when not set (unset, `up`
        starts its embedded broker and redis; spelled out, they would name external ones) and
        secrets (never printed; given again by their environment variables)."""
        d = self.effective(mask_secrets=False)
        notes = []
        for section, name in _EMBEDDED_WHEN_UNSET:
            if name not in getattr(self, section).model_fields_set:
                default = d[section].pop(name)
                notes.append(f"{section}.{name} not set: `streamflame up` starts its own; "
                             f"ingest and worker alone use {default}")
        for section, name in _SECRETS:
            if d[section][name] is not None:
                del d[section][name]
                notes.append(f"{section}.{name} is set but not printed: give it again "
                             f"({ENV_PREFIX}{section.upper()}__{name.upper()})")
        return d, notes

    def effective(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        """Plain dict of the effective settings (secrets masked), as `config show` prints it."""
        d = self.model_dump(mode="json")
        if not mask_secrets:
            for section, name in _SECRETS:
                secret = getattr(getattr(self, section), name)
                d[section][name] = secret.get_secret_value() if secret is not None else None
        d["groups"] = [
            {"name": g["name"], **{k: g[k] for k in ("match", "regex") if g[k] is not None},
             **{k: v for k, v in g.items() if k not in ("name", "match", "regex")}}
            for g in d["groups"]
        ]
        return d


# ---------------------------------------------------------------------------
# Loading and errors
# ---------------------------------------------------------------------------


class ConfigError(ValueError):
    """An invalid configuration. ``problems``: lines ``<field path>: <problem>``."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + p for p in self.problems))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (a silent override otherwise)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a config file into a dict; ConfigError on a missing/unreadable/invalid file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["no such file"], str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"cannot read: {e}"], str(path)) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{where}invalid YAML: {problem}"], str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"the top level must be a mapping of sections, got {_yaml_type(data)}"], str(path))
    return data


def _loc_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    model: Any = ServiceConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        model = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    # Errors inside a tagged union / function validator carry extra loc parts; drop type tags.
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
    path = _loc_path(loc)
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err["type"] == "extra_forbidden":
        name = str(loc[-1]) if loc else ""
        close = difflib.get_close_matches(name, _known_fields(loc[:-1]), n=1)
        msg = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
    elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        msg = f"must be a mapping of settings, got {_yaml_type(err.get('input'))}"
    elif err["type"] not in ("value_error", "assertion_error", "missing") and "input" in err:
        shown = repr(err["input"])
        if len(shown) <= 60 and not isinstance(err["input"], (dict, list)):
            msg += f" (got {shown})"
    # Attribute the value to its environment variable when one is set for this path.
    str_parts = [p for p in loc if isinstance(p, str)]
    if len(str_parts) == len(loc) and loc:
        env_name = ENV_PREFIX + "__".join(p.upper() for p in str_parts)
        for cand in (env_name, ENV_PREFIX + "__".join(p.upper() for p in str_parts[:1])):
            if os.environ.get(cand):
                msg += f" (from environment variable {cand})"
                break
    if path.startswith("groups: ") or (msg.startswith("groups[") and path == "groups"):
        return msg
    return f"{path}: {msg}" if path else msg


def _yaml_type(x: Any) -> str:
    if x is None:
        return "null"
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(type(x), type(x).__name__)


def config_problems(err: ValidationError, data: dict[str, Any] | None = None) -> list[str]:
    """One line per problem; with the raw input ``data`` also the group problems that pydantic
    holds back behind others, group lines in group order."""
    problems = [line for e in err.errors(include_url=False) for line in _describe(e).split("\n")]
    problems += [p for p in (_raw_group_problems(data) if data is not None else []) if p not in problems]
    group = [re.match(r"groups\[(\d+)\]", p) for p in problems]
    order = sorted(range(len(problems)), key=lambda i: (1, int(group[i].group(1))) if group[i] else (0, 0))
    return [problems[i] for i in order]


def load_config(path: str | os.PathLike | None = None) -> ServiceConfig:
    """Load the YAML file at ``path`` (or ``$STREAMFLAME_CONFIG``; none = defaults)
    and apply environment overrides. Raises ConfigError."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    data = read_yaml(path) if path is not None else {}
    token = _FILE_DATA.set(data)
    try:
        return ServiceConfig()
    except ValidationError as e:
        raise ConfigError(config_problems(e, data), str(path) if path is not None else None) from None
    finally:
        _FILE_DATA.reset(token)


def default_config_path() -> Path:
    """The embedded default configuration that `streamflame up` runs without ``--config``:
    ``configs/default.yaml``, shipped inside the package (``streamflame/configs/default.yaml``
    is a link to it in a source checkout, a copy in an installed package)."""
    return Path(__file__).parent / "configs" / "default.yaml"


def config_in_effect(path: str | os.PathLike | None) -> Path:
    """The file `streamflame up` runs with: ``path``, else ``$STREAMFLAME_CONFIG``, else
    :func:`default_config_path` (built-in defaults alone are never what `up` runs)."""
    chosen = path or os.environ.get(CONFIG_ENV) or default_config_path()
    return Path(chosen).resolve()


# ---------------------------------------------------------------------------
# Hot reload support
# ---------------------------------------------------------------------------

HOT_RELOADABLE = ("defaults", "groups", "log_level", "worker.batch_size", "worker.batch_deadline_ms")
"""Settings a running service may pick up without a restart; others need one."""


def changed_paths(old: ServiceConfig, new: ServiceConfig) -> list[str]:
    """Dotted paths of settings that differ (sections compared field by field;
    ``groups`` as a whole)."""
    a, b = old.effective(mask_secrets=False), new.effective(mask_secrets=False)
    out = []
    for key in a:
        if isinstance(a[key], dict) and key != "defaults":
            out += [f"{key}.{f}" for f in a[key] if a[key][f] != b[key].get(f)]
        elif a[key] != b[key]:
            out.append(key)
    return out


def needs_restart(paths: list[str]) -> list[str]:
    """The subset of ``changed_paths`` output that is not hot-reloadable."""
    return [p for p in paths if not any(p == h or p.startswith(h + ".") for h in HOT_RELOADABLE)]


class ConfigWatcher:
    """Re-reads a config file when it changes (mtime, size or inode) or on demand.

    ``poll()`` returns the new ServiceConfig after a successful reload, None when
    the file did not change, and raises ConfigError for an invalid new file —
    ``config`` then keeps the previous good config and the same broken file is
    not reported again until it changes.
    """

    def __init__(self, path: str | os.PathLike, config: ServiceConfig | None = None):
        self.path = Path(path)
        self._stamp = self._stat()
        self.config = config if config is not None else load_config(self.path)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> bool:
        return self._stat() != self._stamp

    def reload(self) -> ServiceConfig:
        """Load now (e.g. on SIGHUP). Raises ConfigError and keeps the old config."""
        self._stamp = self._stat()
        new = load_config(self.path)
        self.config = new
        return new

    def poll(self) -> ServiceConfig | None:
        return self.reload() if self.changed() else None


class HotReloader:
    """Hot reload for a running service: a :class:`ConfigWatcher` plus the policy.

    ``request()`` (async-signal safe: only sets a flag; call it from a SIGHUP
    handler) forces a reload at the next :meth:`check`; otherwise ``check()``
    reloads when the file changed. The service calls ``check()`` between
    batches; it returns the config to run with from now on, or None when nothing
    changed or the new file was rejected. The returned config takes the
    hot-reloadable settings (:data:`HOT_RELOADABLE`) from the new file and keeps
    every other section of the running config; a change to one of those is
    logged as a warning (``config.restart_required``). An invalid file is logged
    as an error (``config.reload_failed``, one problem per line) and the running
    config is kept. ``validate(cfg)`` may raise ConfigError to refuse a config
    that is valid as a file but not for this process (e.g. a horizon beyond the
    model's max_horizon).
    """

    def __init__(self, path: str | os.PathLike, config: ServiceConfig, log: Any, *,
                 validate: Any = None, component: str = "service"):
        self.watcher = ConfigWatcher(path, config)
        self.config = config
        self.log = log
        self.validate = validate
        self.component = component
        self._requested = False
        self.reloads = 0
        self.failures = 0

    def request(self) -> None:
        self._requested = True

    def check(self) -> ServiceConfig | None:
        requested, self._requested = self._requested, False
        if not requested and not self.watcher.changed():
            return None
        trigger = "signal" if requested else "file_change"
        try:
            new = self.watcher.reload()
        except ConfigError as e:
            self.watcher.config = self.config
            return self._refuse(trigger, e)
        changed = changed_paths(self.config, new)
        if not changed:
            self.log.info("config.reload_unchanged", path=str(self.watcher.path), trigger=trigger)
            return None
        restart = needs_restart(changed)
        hot = [p for p in changed if p not in restart]
        applied = self.config.model_copy(update={
            "defaults": new.defaults, "groups": new.groups, "log_level": new.log_level,
            "worker": self.config.worker.model_copy(update={
                "batch_size": new.worker.batch_size, "batch_deadline_ms": new.worker.batch_deadline_ms}),
        })
        applied._resolve_cached = None  # model_copy copies the old groups' resolver cache
        if self.validate is not None:
            try:
                self.validate(applied)
            except ConfigError as e:
                self.watcher.config = self.config
                return self._refuse(trigger, ConfigError(e.problems, str(self.watcher.path)))
        if restart:
            self.log.warning("config.restart_required", path=str(self.watcher.path), component=self.component,
                             fields=restart, detail="these settings keep their old values until a restart")
        self.config = self.watcher.config = applied
        self.reloads += 1
        self.log.info("config.reloaded", path=str(self.watcher.path), component=self.component,
                      trigger=trigger, applied=hot)
        return applied if hot else None

    def _refuse(self, trigger: str, e: ConfigError) -> None:
        self.failures += 1
        self.log.error("config.reload_failed", path=str(self.watcher.path), component=self.component,
                       trigger=trigger, problems=e.problems,
                       detail="the new file is rejected; the running configuration is kept")
        return None


# ---------------------------------------------------------------------------
# CLI: streamflame config check FILE | show [FILE]
# ---------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of scalars (quantiles, levels) on one line."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(x, (list, dict)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def _print_effective(cfg: ServiceConfig, source: str | None) -> None:
    env = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k != CONFIG_ENV and os.environ[k])
    data, notes = cfg.as_file()
    print(f"# effective settings: {source or 'built-in defaults'}")
    if env:
        print("# environment overrides: " + ", ".join(env))
    for note in notes:
        print(f"# {note}")
    print(dump_yaml(data), end="")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="streamflame config",
        description="Validate a configuration file and print the effective settings "
        "(file + STREAMFLAME_* environment overrides, secrets masked).",
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{check,show}")
    p_check = sub.add_parser("check", help="validate FILE; print effective settings (exit 0) or errors (exit 2)")
    p_check.add_argument("file")
    p_show = sub.add_parser("show", help="print effective settings of FILE, $STREAMFLAME_CONFIG or the defaults")
    p_show.add_argument("file", nargs="?")
    args = parser.parse_args(argv)

    path = args.file if args.cmd == "check" else (args.file or os.environ.get(CONFIG_ENV) or None)
    try:
        cfg = load_config(path) if path is not None else load_config_defaults()
    except ConfigError as e:
        for p in e.problems:
            print(f"error: {e.source or 'environment'}: {p}", file=sys.stderr)
        return 2
    _print_effective(cfg, path)
    return 0


def load_config_defaults() -> ServiceConfig:
    """Built-in defaults plus environment overrides, ignoring ``$STREAMFLAME_CONFIG``."""
    token = _FILE_DATA.set({})
    try:
        return ServiceConfig()
    except ValidationError as e:
        raise ConfigError(config_problems(e, {})) from None
    finally:
        _FILE_DATA.reset(token)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
