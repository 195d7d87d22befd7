"""The embedded stack: broker + redis + topics + supervised ingest/worker
processes, and the `streamflame up` / `streamflame down` commands.

Run directory layout (default ``./.streamflame``)::

    run.json            where everything is (rewritten atomically on every pid change)
    logs/<name>.log     one log per process (broker, redis, s3, ingest-0, worker-0, supervisor)
    redis/              redis data (AOF when enabled: `streamflame up` without --ephemeral)
    broker-data/        the durable broker's objects, one file each (localbucket)
    ready/<name>        a child may create this file (path in $STREAMFLAME_READY_FILE) once it is ready

Children are ``python -m streamflame ingest|worker`` with the connection passed
by environment: ``STREAMFLAME_KAFKA__BOOTSTRAP``, ``STREAMFLAME_REDIS__URL``,
``STREAMFLAME_KAFKA__PARTITIONS``, ``STREAMFLAME_METRICS_PORT`` (a free port per
child, kept across restarts), ``STREAMFLAME_READY_FILE`` and, with ``--config``,
``STREAMFLAME_CONFIG``. A child that exits (even SIGKILLed) is restarted after
an exponential backoff (0.5 s doubling to 10 s; reset after 30 s of uptime).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import orjson
import structlog

from streamflame.adapters.state.client import connect
from streamflame.config import load_config
from streamflame.embedded.broker import Broker, create_topics, kafka_ready
from streamflame.embedded.process import (
    StartupError,
    free_port,
    log_tail,
    spawn,
    stop_process,
    sync_filesystem,
    wait_until,
)
from streamflame.embedded.redis_server import RedisServer

log = structlog.get_logger("streamflame.embedded.stack")

DEFAULT_RUN_DIR = Path(".streamflame")
RUN_JSON = "run.json"
ROLES = ("ingest", "worker")
TOPIC_KEYS = ("observations", "patches", "forecasts", "alerts", "dlq")

BACKOFF_START_S = 0.5
BACKOFF_CAP_S = 10.0
STABLE_AFTER_S = 30.0
BROKER_BATCHES_WARN = 800
"""Warn (log, run.json, status) at this many batch objects in one partition of a durable broker."""
BROKER_SYNC_S = 1.0
"""A durable broker's data is synced to disk this often: its power-loss window (like Redis's everysec)."""
READY_GRACE_S = 1.0
"""With ``wait_ready_file=False``, a child counts as ready once it has stayed alive this long."""

ChildCommand = Callable[[str, int], Sequence[str]]


def default_child_command(role: str, index: int) -> list[str]:
    """``python -m streamflame ingest`` / ``... worker`` (config comes by environment)."""
    return [sys.executable, "-m", "streamflame", role]


def read_run_json(run_dir: str | Path) -> dict[str, Any] | None:
    """The run.json of a run directory, or None if there is none."""
    path = Path(run_dir) / RUN_JSON
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None


@dataclass
class _Child:
    """One supervised ingest/worker slot; its process changes on restarts."""

    role: str
    index: int
    argv: list[str]
    metrics_port: int
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive short-lived runs, drives the backoff
    restarts: int = 0
    restart_at: float | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


class EmbeddedStack:
    """Broker, redis, topics and supervised children under one run directory.

    Python use (tests, `streamflame demo`)::

        with EmbeddedStack(run_dir, partitions=4) as stack:   # starts broker, redis, topics
            stack.kafka_bootstrap, stack.redis_url, stack.topics
            stack.start_children()                            # only if ingest/workers > 0
            stack.supervise_once()                            # or stack.run(stop_event)

    A Kafka bootstrap or Redis URL set in the config (file or environment)
    means an external service: it is used as is and not started here.
    """

    def __init__(
        self,
        run_dir: str | Path = DEFAULT_RUN_DIR,
        *,
        partitions: int | None = None,
        durable: bool = False,
        config_path: str | Path | None = None,
        ingest: int = 0,
        workers: int = 0,
        child_command: ChildCommand = default_child_command,
        redis_appendonly: bool = False,
        redis_appendfsync: str = "everysec",
        redis_password: str | None = None,
        ready_timeout_s: float = 120.0,
        backoff_s: tuple[float, float] = (BACKOFF_START_S, BACKOFF_CAP_S),
        wait_ready_file: bool | None = None,
    ) -> None:

        if ingest < 0 or workers < 0:
            raise ValueError(f"ingest and workers must be >= 0, got {ingest} and {workers}")
        if partitions is not None and partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.run_dir = Path(run_dir).resolve()
        self.config_path = Path(config_path).resolve() if config_path is not None else None
        self.config = load_config(self.config_path)
        self.partitions = int(partitions if partitions is not None else self.config.kafka.partitions)
        self.topics = {key: getattr(self.config.topics, key) for key in TOPIC_KEYS}
        self.ready_timeout_s = ready_timeout_s
        self.backoff_start_s, self.backoff_cap_s = backoff_s
        self.child_command = child_command
        # ingest and worker touch $STREAMFLAME_READY_FILE once they joined their group;
        # an injected command may not, so it counts as ready after READY_GRACE_S alive.
        self.wait_ready_file = (child_command is default_child_command) if wait_ready_file is None \
            else wait_ready_file
        self.counts = {"ingest": ingest, "worker": workers}

        external_kafka = "bootstrap" in self.config.kafka.model_fields_set
        external_redis = "url" in self.config.redis.model_fields_set
        self.broker = None if external_kafka else Broker(self.run_dir, durable=durable)
        self.redis = None if external_redis else RedisServer(
            self.run_dir, appendonly=redis_appendonly, appendfsync=redis_appendfsync, password=redis_password
        )
        self.incarnation = None  # streamflame.embedded.incarnation.Incarnation, set by start_services
        self.broker_batches_max = 0  # most batch objects in one partition (durable broker), every 30 s
        self._batches_warned = 0
        self.children: list[_Child] = []
        self.ready = False
        self._stopped = False

    # -- addresses -----------------------------------------------------------
    @property
    def kafka_bootstrap(self) -> str:
        return self.broker.bootstrap if self.broker is not None else self.config.kafka.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.url if self.redis is not None else self.config.redis.url

    @property
    def run_json_path(self) -> Path:
        return self.run_dir / RUN_JSON

    # -- services --------------------------------------------------------------
    def start_services(self) -> "EmbeddedStack":
        """Start broker and redis (unless external), wait for both, create the topics."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.broker is not None:
            self.broker.start()
            log.info("broker_ready", bootstrap=self.kafka_bootstrap, pid=self.broker.pid,
                     storage=self.broker.storage_url)
        else:
            kwargs = self.config.kafka.client_kwargs("admin")
            wait_until(lambda: kafka_ready(self.kafka_bootstrap, **kwargs), timeout=30,
                       what=f"external Kafka at {self.kafka_bootstrap}")
        if self.redis is not None:
            self.redis.start()
            log.info("redis_ready", url=self.redis.url.split("@")[-1], pid=self.redis.pid)
        else:
            self._check_external_redis()
        self._create_topics()
        self._check_incarnation()
        self.write_run_json()
        return self

    def _check_incarnation(self) -> None:
        """Do broker data and Redis data belong together? Repairs and logs a mismatch
        (streamflame.embedded.incarnation) before any ingest or worker starts."""
        from streamflame.embedded import incarnation  # lazy: redis-py

        settings = self.config.redis.model_copy(update={"url": self.redis_url})
        client = connect(settings)
        try:
            self.incarnation = incarnation.check(
                self.kafka_bootstrap, client, observations_topic=self.topics["observations"],
                key_prefix=self.config.redis.key_prefix,
                kafka_client_kwargs={} if self.broker is not None else self.config.kafka.client_kwargs("admin"),
                broker_keeps_data=self.broker is None or self.broker.durable)
        finally:
            client.close()

    def _check_external_redis(self) -> None:
        import redis

        kwargs = self.config.redis.client_kwargs()

        def ping() -> bool:
            client = redis.Redis.from_url(**kwargs, socket_connect_timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()

        wait_until(ping, timeout=30, what=f"external Redis at {self.config.redis.url}")

    def _create_topics(self) -> None:
        p = self.partitions
        wanted = {self.topics["observations"]: p, self.topics["patches"]: p, self.topics["forecasts"]: p,
                  self.topics["alerts"]: 1, self.topics["dlq"]: 1}
        kwargs = {} if self.broker is not None else self.config.kafka.client_kwargs("admin")
        counts = create_topics(self.kafka_bootstrap, wanted,
                               replication_factor=self.config.kafka.replication_factor, **kwargs)
        obs, patches = counts[self.topics["observations"]], counts[self.topics["patches"]]
        if obs != patches:
            raise StartupError(
                f"topics {self.topics['observations']} ({obs} partitions) and {self.topics['patches']} "
                f"({patches}) must have the same partition count"
            )
        self.partitions = obs
        log.info("topics_ready", partitions=obs, **self.topics)

    # -- children ----------------------------------------------------------------
    def start_children(self, stop: threading.Event | None = None) -> None:
        """Spawn the ingest and worker processes and wait until each is ready
        (its ready file exists; with ``wait_ready_file=False`` also once it
        stayed alive READY_GRACE_S). A child that exits during this first start
        is an error, with its log tail. Returns early once `stop` is set."""
        for role in ROLES:
            for index in range(self.counts[role]):
                child = _Child(role, index, list(self.child_command(role, index)), free_port())
                child.env = self._child_env(child)
                self.children.append(child)
                self._spawn(child)
        self.write_run_json()
        deadline = time.monotonic() + self.ready_timeout_s
        pending = list(self.children)
        while pending:
            if stop is not None and stop.is_set():
                return
            for child in list(pending):
                assert child.proc is not None
                if child.proc.poll() is not None:
                    raise StartupError(
                        f"{child.name} exited with code {child.proc.returncode} while starting "
                        f"({' '.join(child.argv)})\n--- last lines of {self._log_path(child)} ---\n"
                        + log_tail(self._log_path(child))
                    )
                alive_long_enough = (not self.wait_ready_file
                                     and time.monotonic() - child.started_at >= READY_GRACE_S)
                if self._ready_file(child).exists() or alive_long_enough:
                    pending.remove(child)
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise StartupError(f"{names} not ready after {self.ready_timeout_s:.0f} s (logs in {self.run_dir / 'logs'})")
            time.sleep(0.05)
        self.ready = True
        self.write_run_json()

    def _child_env(self, child: _Child) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "STREAMFLAME_KAFKA__BOOTSTRAP": self.kafka_bootstrap,
            "STREAMFLAME_REDIS__URL": self.redis_url,
            "STREAMFLAME_KAFKA__PARTITIONS": str(self.partitions),
            "STREAMFLAME_METRICS_PORT": str(child.metrics_port),
            "STREAMFLAME_READY_FILE": str(self._ready_file(child)),
        })
        if self.broker is not None:  # Tansu loses idempotent batches in flight across a restart
            env["STREAMFLAME_KAFKA__IDEMPOTENT_PRODUCER"] = "false"
        if self.config_path is not None:
            env["STREAMFLAME_CONFIG"] = str(self.config_path)
        return env

    def _ready_file(self, child: _Child) -> Path:
        return self.run_dir / "ready" / child.name

    def _log_path(self, child: _Child) -> Path:
        return self.run_dir / "logs" / f"{child.name}.log"

    def _spawn(self, child: _Child) -> None:
        ready = self._ready_file(child)
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.unlink(missing_ok=True)
        child.proc = spawn(child.argv, log_path=self._log_path(child), env=child.env, cwd=Path.cwd())
        child.started_at = time.monotonic()
        child.restart_at = None

    def supervise_once(self) -> bool:
        """One supervision pass: notice exited children and services, restart
        what is due. Returns True if a pid changed (run.json was rewritten)."""
        changed = False
        now = time.monotonic()
        for child in self.children:
            proc = child.proc
            if proc is not None and proc.poll() is not None and child.restart_at is None:
                uptime = now - child.started_at
                child.failures = 0 if uptime >= STABLE_AFTER_S else child.failures + 1
                delay = min(self.backoff_cap_s, self.backoff_start_s * 2 ** max(child.failures - 1, 0))
                child.restart_at = now + delay
                code = proc.returncode
                log.warning("child_exited", child=child.name, pid=proc.pid, exit_code=code,
                            signal=signal.Signals(-code).name if code < 0 else None,
                            uptime_s=round(uptime, 2), restart_in_s=delay)
                changed = True
            if child.restart_at is not None and now >= child.restart_at:
                old_pid = proc.pid if proc is not None else None
                self._spawn(child)
                child.restarts += 1
                assert child.proc is not None
                log.info("child_restarted", child=child.name, old_pid=old_pid, pid=child.proc.pid,
                         restarts=child.restarts)
                changed = True
        changed |= self._supervise_services()
        if changed:
            self.write_run_json()
        return changed

    def _supervise_services(self) -> bool:
        changed = False
        for service in (self.redis, self.broker):
            if service is None or service.alive:
                continue
            code = service.proc.returncode if service.proc is not None else None
            log.error("service_exited", service=service.name, exit_code=code, port=service.port)
            try:
                service.start()
                if service is self.broker:
                    self._create_topics()  # a memory broker comes back empty
                log.info("service_restarted", service=service.name, pid=service.pid, port=service.port)
                changed = True
            except StartupError as exc:
                log.error("service_restart_failed", service=service.name, error=str(exc).splitlines()[0])
        return changed

    def run(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """Supervise until `stop` is set; with a durable broker, also sync its data
        to disk every BROKER_SYNC_S (localbucket writes without fsync)."""
        last_sync = last_count = time.monotonic()
        while not stop.wait(interval_s):
            self.supervise_once()
            if self.broker is not None and self.broker.durable and time.monotonic() - last_sync >= BROKER_SYNC_S:
                last_sync = time.monotonic()
                self.sync_broker_data()
            if self.broker is not None and self.broker.durable and time.monotonic() - last_count >= 30.0:
                last_count = time.monotonic()
                self._check_broker_batches()

    def broker_batches(self) -> int:
        """Most batch objects in one partition of the durable broker (0 without one).
        Tansu 0.6's S3 engine lists all of a partition's batch objects on every fetch
        and answers empty when that outlasts the fetch's max wait: measured on
        localbucket, fetches at fetch_max_wait_ms 50 stall between 1,000 and 2,000
        objects, at 500 they take ~130 ms at 2,000 and ~220 ms at 3,000."""
        data_dir = getattr(self.broker.s3 if self.broker is not None else None, "data_dir", None)
        most = 0
        if data_dir is None:
            return 0
        for records in Path(data_dir).glob("*/clusters/*/topics/*/partitions/*/records"):
            try:
                most = max(most, sum(1 for e in os.scandir(records) if e.name.endswith(".batch")))
            except OSError:
                continue
        return most

    def _check_broker_batches(self) -> None:
        most = self.broker_batches()
        if most >= BROKER_BATCHES_WARN and self._batches_warned < most // BROKER_BATCHES_WARN:
            self._batches_warned = most // BROKER_BATCHES_WARN
            log.warning("broker_storage_large", batches_in_a_partition=most,
                        detail="Tansu's S3 engine lists every batch object of a partition on each fetch; "
                               "fetches stall near 1,000-2,000 objects at fetch_max_wait_ms 50 "
                               "(docs/reliability.md): start afresh (--ephemeral or a new run dir) or use an "
                               "external Kafka for long runs")
        if most != self.broker_batches_max:
            self.broker_batches_max = most
            self.write_run_json()

    def sync_broker_data(self) -> float:
        """syncfs(2) of the broker's data directory; returns the seconds it took
        (logged when slow)."""
        data_dir = getattr(self.broker.s3 if self.broker is not None else None, "data_dir", None)
        if data_dir is None or not Path(data_dir).is_dir():
            return 0.0
        t = time.perf_counter()
        sync_filesystem(data_dir)
        took = time.perf_counter() - t
        if took > 0.5:
            log.warning("broker_sync_slow", seconds=round(took, 3), data_dir=str(data_dir))
        return took

    # -- run.json ---------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The content of run.json."""
        by_role = {role: [c for c in self.children if c.role == role] for role in ROLES}
        s3 = self.broker.s3 if self.broker is not None else None
        persistence = {
            "redis": (f"AOF appendfsync {self.redis.appendfsync} in {self.redis.data_dir}" if self.redis.appendonly
                      else "memory only") if self.redis is not None else "external",
            "broker": (f"files in {s3.data_dir}" if getattr(s3, "data_dir", None) else
                       "S3 at " + s3.endpoint if s3 is not None else "memory only")
            if self.broker is not None else "external",
            "check": self.incarnation.to_dict() if self.incarnation is not None else None,
            "broker_batches_max": self.broker_batches_max,
        }
        return {
            "kafka_bootstrap": self.kafka_bootstrap,
            "redis_url": self.redis_url,
            "topics": dict(self.topics),
            "partitions": self.partitions,
            "durable": bool(self.broker is not None and self.broker.durable),
            "persistence": persistence,
            "run_dir": str(self.run_dir),
            "logs": str(self.run_dir / "logs"),
            "config": str(self.config_path) if self.config_path else None,
            "ready": self.ready,
            "metrics": {role: [c.metrics_url for c in by_role[role]] for role in ROLES},
            "pids": {
                "supervisor": os.getpid(),
                "broker": self.broker.pid if self.broker is not None else None,
                "redis": self.redis.pid if self.redis is not None else None,
                "s3": s3.pid if s3 is not None else None,
                **{role: [c.pid for c in by_role[role]] for role in ROLES},
            },
        }

    def write_run_json(self) -> Path:
        """Atomically (write + rename) rewrite run.json; mode 0600 (it may hold a password)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_json_path.with_name(f".{RUN_JSON}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(self.describe(), option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.run_json_path)
        return self.run_json_path

    # -- shutdown ----------------------------------------------------------------
    def stop(self, timeout_s: float = 10.0) -> None:
        """Children (SIGTERM together, SIGKILL after `timeout_s`), then redis,
        then the broker; removes run.json. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        for child in self.children:
            child.restart_at = None
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in self.children:
            stop_process(child.proc, timeout=timeout_s)
        if self.redis is not None:
            self.redis.stop(timeout_s)
        if self.broker is not None:
            self.broker.stop(timeout_s)
            if self.broker.durable:
                self.sync_broker_data()  # the broker's object files reach the disk (localbucket does not fsync)
        self.run_json_path.unlink(missing_ok=True)
        log.info("stack_stopped", run_dir=str(self.run_dir))

    def __enter__(self) -> "EmbeddedStack":
        try:
            return self.start_services()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
