"""`Service`: one server process owned by the embedded stack.

A service picks a free loopback port on its first start and keeps it, so a
restart (after a crash or a deliberate kill in a test) comes back at the same
address with the same data directory.
"""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from streamflame.embedded.process import (
    StartupError,
    free_port,
    owns_listening_port,
    spawn,
    stop_process,
    wait_until,
)


class Service:
    """Base class: subclasses give `name`, `command()`, `ready()` and
    optionally `env()` and `prepare()` (write config files)."""

    name = "service"
    startup_timeout = 30.0

    def __init__(self, run_dir: str | Path, port: int | None = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.port = port
        self._port_fixed = port is not None
        self.proc: subprocess.Popen | None = None

    # -- to override ---------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def prepare(self) -> None:
        """Called before every (re)start, after the port is known."""

    def ready(self) -> bool:
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float | None = None) -> "Service":
        """Start (or restart) the process and wait until `ready()`.

        A port chosen here may be grabbed by someone else before the server
        binds it, so a first start on an auto-chosen port tries three ports."""
        if self.alive:
            return self
        attempts = 1 if self._port_fixed else 3
        for attempt in range(attempts):
            if self.port is None:
                self.port = free_port()
            try:
                self._start_once(self.startup_timeout if timeout is None else timeout)
            except StartupError:
                if attempt + 1 == attempts:
                    raise
                self.port = None
            else:
                self._port_fixed = True  # restarts come back on the same port
                return self
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        self.proc = spawn(self.command(), log_path=self.log_path, env=self.env())
        proc, port = self.proc, self.port

        def ours_and_ready() -> bool:
            return owns_listening_port(proc.pid, port) and self.ready()

        try:
            wait_until(
                ours_and_ready,
                timeout=timeout,
                what=f"{self.name} on 127.0.0.1:{self.port}",
                proc=self.proc,
                log_path=self.log_path,
            )
        except BaseException:
            stop_process(self.proc, timeout=5.0)
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` s."""
        stop_process(self.proc, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL without any chance to clean up (crash simulation)."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.alive else "stopped"
        return f"<{type(self).__name__} 127.0.0.1:{self.port} {state}>"
