"""The processes of a chaos run: an ingest or worker child (:class:`Child`), waiting for it to be
ready, and reading a whole topic back."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from streamflame.embedded.process import log_tail, spawn, stop_process

class Child:
    """One ingest/worker process (``python -m streamflame ROLE --config FILE``)."""

    def __init__(self, role: str, index: int, run_dir: Path, config_path: Path):
        self.role, self.index = role, index
        self.name = f"{role}-{index}"
        self.run_dir, self.config_path = run_dir, config_path
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.starts = 0
        self.expected_exit = False
        self.unexpected_exits: list[int] = []

    @property
    def log_path(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    @property
    def ready_file(self) -> Path:
        return self.run_dir / "ready" / self.name

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:

        self.ready_file.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        env = {**os.environ, "STREAMFLAME_READY_FILE": str(self.ready_file)}
        env.pop("STREAMFLAME_CONFIG", None)
        self.proc = spawn([sys.executable, "-m", "streamflame", self.role, "--config", str(self.config_path)],
                          log_path=self.log_path, env=env)
        self.started_at = time.monotonic()
        self.starts += 1
        self.expected_exit = False

    def kill(self) -> int | None:
        if not self.alive:
            return None
        assert self.proc is not None
        self.expected_exit = True
        pid = self.proc.pid
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return pid

    def stop(self, timeout: float = 30.0) -> int | None:

        if self.proc is None:
            return None
        self.expected_exit = True
        return stop_process(self.proc, timeout=timeout)

    def check(self) -> bool:
        """True if the process exited without being asked to (it is restarted)."""
        if self.proc is not None and self.proc.poll() is not None and not self.expected_exit:
            self.unexpected_exits.append(self.proc.returncode)
            self.start()
            return True
        return False


def wait_ready(children: list[Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(c.ready_file.exists() for c in children):
        for c in children:
            if c.proc is not None and c.proc.poll() is not None and not c.expected_exit:

                raise RuntimeError(f"{c.name} exited with {c.proc.returncode} while starting:\n{log_tail(c.log_path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout:.0f} s: "
                               + ", ".join(c.name for c in children if not c.ready_file.exists()))
        time.sleep(0.05)


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list:
    """Every record of ``topic``, each partition read up to the high-water mark
    returned with fetched data (Tansu's ``end_offsets()`` under-reports)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_bytes=52_428_800)
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: list = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=300, max_records=50_000).values():
                out += recs
            if all(c.highwater(tp) is not None and c.position(tp) >= c.highwater(tp) for tp in tps):
                return out
        raise RuntimeError(f"could not read {topic} to its end within {timeout:.0f} s")
    finally:
        c.close()
