"""An embedded `redis-server` (from the OS package) with a generated config.

Persistence: ``appendonly=True`` writes an AOF into the data directory, so a
restart on the same port and directory gets the data back. With the default
``appendfsync="everysec"`` a crash (SIGKILL, power loss) may lose the last
1-2 s of acknowledged writes; ``"always"`` loses none and is slower. Without
AOF, snapshots are off too (`save ""`): the data lives only in memory.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import quote

from streamflame.embedded.process import StartupError, free_port
from streamflame.embedded.service import Service


@dataclass(frozen=True)
class RedisTLS:
    """Files for an additional TLS listener (PEM paths)."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    require_client_cert: bool = False


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise StartupError("redis-server not found on PATH (Debian: apt-get install redis-server)")
    return found


def _quote_conf(value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise ValueError(f"unsupported character in redis config value {value!r}")
    return f'"{value}"'


class RedisServer(Service):
    """`redis-server` on a free loopback port with its data in `data_dir`
    (default `run_dir/redis`). `url` is what clients connect to."""

    name = "redis"

    def __init__(
        self,
        run_dir: str | Path,
        port: int | None = None,
        *,
        data_dir: str | Path | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        password: str | None = None,
        users: Mapping[str, str] | None = None,
        tls: RedisTLS | None = None,
        tls_port: int | None = None,
    ) -> None:
        super().__init__(run_dir, port)
        self.data_dir = Path(data_dir).resolve() if data_dir else self.run_dir / "redis"
        if appendfsync not in ("everysec", "always", "no"):
            raise ValueError(f"appendfsync must be everysec, always or no, got {appendfsync!r}")
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password
        self.users = dict(users or {})
        for name, secret in self.users.items():
            if not name or any(c.isspace() for c in name + secret) or not secret:
                raise ValueError(f"redis ACL user {name!r}: name and password must be non-empty, without spaces")
        self.tls = tls
        self.tls_port = tls_port

    @property
    def config_path(self) -> Path:
        return self.run_dir / "redis.conf"

    @property
    def url(self) -> str:
        """`redis://[:password@]127.0.0.1:PORT/0` (plain-text listener)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def tls_url(self) -> str | None:
        """`rediss://...` for the TLS listener, if one is configured."""
        if self.tls is None:
            return None
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"rediss://{auth}127.0.0.1:{self.tls_port}/0"

    def config_text(self) -> str:
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f"dir {_quote_conf(str(self.data_dir))}",
            "daemonize no",
            'logfile ""',
            'save ""',
        ]
        if self.appendonly:
            lines += ["appendonly yes", f"appendfsync {self.appendfsync}"]
        else:
            lines += ["appendonly no"]
        if self.password:
            lines.append(f"requirepass {_quote_conf(self.password)}")
        for name, secret in self.users.items():
            lines.append(f"user {name} on >{secret} ~* &* +@all")
        if self.tls is not None:
            lines += [
                f"tls-port {self.tls_port}",
                f"tls-cert-file {_quote_conf(str(self.tls.cert_file))}",
                f"tls-key-file {_quote_conf(str(self.tls.key_file))}",
                f"tls-ca-cert-file {_quote_conf(str(self.tls.ca_file))}",
                f"tls-auth-clients {'yes' if self.tls.require_client_cert else 'no'}",
            ]
        return "\n".join(lines) + "\n"

    def prepare(self) -> None:
        if self.tls is not None and self.tls_port is None:
            self.tls_port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        self.config_path.chmod(0o600)  # may hold passwords

    def command(self) -> list[str]:
        return [find_redis_server(), str(self.config_path)]

    def client(self, **kwargs):
        """A `redis.Redis` for the plain-text listener."""
        import redis

        return redis.Redis.from_url(self.url, **kwargs)

    def flush(self, timeout: float = 10.0) -> bool:
        """Rewrite the AOF (BGREWRITEAOF: a compact file, quick to load on the next
        start) and wait for it; True when done. No-op without AOF."""
        if not (self.appendonly and self.alive):
            return False
        import time

        client = self.client(socket_timeout=timeout)
        try:
            client.bgrewriteaof()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                info = client.info("persistence")
                if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
                    return info.get("aof_last_bgrewrite_status") == "ok"
                time.sleep(0.05)
            return False
        except Exception:  # noqa: BLE001 - a flush that fails must not block the stop
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Flush (AOF rewrite) then SIGTERM: redis-server fsyncs the AOF as it shuts down."""
        self.flush(timeout)
        super().stop(timeout)

    def ready(self) -> bool:
        # PING fails with LOADING while an AOF is replayed: ready means loaded.
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = self.client(socket_timeout=2.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))
        try:
            return bool(client.ping())
        finally:
            client.close()
