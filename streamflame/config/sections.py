"""The sections of the service config: kafka, topics, redis, ingest, worker, metrics (one class each)."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator


ENV_PREFIX = "STREAMFLAME_"
CONFIG_ENV = "STREAMFLAME_CONFIG"
MAX_HORIZON = 10_000
"""Upper bound the config accepts; the worker also checks the model's own max_horizon."""


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
        "Read at start (streamflame/pipeline/publisher.py)")


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
    retain_freed_memory: bool = Field(
        True, description="keep freed memory for the next model pass instead of returning it to the kernel "
        "(glibc mallopt: blocks up to 32 MB from the heap, trimmed only past 1 GB free; streamflame/core/memory.py): "
        "each forecast pass otherwise faults its buffers in again, 1.28-1.43x the series refreshed per second on "
        "the 2-core machine (docs/benchmarks.md). The process keeps its peak working set. No effect off glibc")
    state_cache_series: int = Field(
        10_000, ge=0, le=10_000_000, description="series whose last written state the worker keeps in memory "
        "(decoded, ~30 KB each with the default model), so their next patch needs no Redis read; the write is "
        "still compare-and-set against Redis, which stays the truth (docs/architecture.md, \"State cache\"). "
        "0 = off")
    publisher: Literal["process", "inline"] = Field(
        "process", description="where a batch is published and its states written: process = a publisher "
        "process of the worker's own, while the model computes the next batch (which is published only once "
        "every write of the one before is seen applied); inline = in the worker process, one batch after "
        "the other (streamflame/pipeline/publisher.py)")
    read_ahead: bool = Field(
        True, description="poll the next batch before computing one and read its states from Redis in a "
        "background thread meanwhile (series of the batch being computed or written are not read: they carry "
        "over in memory); nothing is written ahead, so a crash behaves as without it "
        "(streamflame/pipeline/worker/readahead.py)")
    model_path: str | None = Field(None, description="checkpoint; None = the shipped default")
    matmul: Literal["float32", "bf16", "tf32"] = Field(
        "float32", description="arithmetic of the forecasts' sampling pass (model/arithmetic.py): float32 = the "
        "model's own numbers; bf16 = bf16 matmuls (CPUs with AVX-512 BF16, CUDA; 1.3-1.7x the series/s on the "
        "2-core CPU, WQL +0.1 %: docs/model.md); tf32 = CUDA tensor cores (needs a CUDA device)")
    compile: bool = Field(False, description="torch.compile the sampling pass at bucketed batch sizes (CUDA "
                          "graphs on CUDA); the first batch of each size compiles")
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

    @model_validator(mode="after")
    def _check_matmul(self) -> "WorkerSettings":
        if self.matmul == "tf32" and self.device == "cpu":
            raise ValueError("matmul tf32 needs a CUDA device (device is cpu): use float32 or bf16")
        return self


class MetricsSettings(_Section):
    port: int | None = Field(None, ge=0, le=65_535, description="Prometheus port; None = off, 0 = any free port")
    host: str = "127.0.0.1"


