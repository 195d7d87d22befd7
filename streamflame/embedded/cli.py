"""``streamflame up`` / ``streamflame down``: the embedded stack in the foreground or detached."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import structlog

from streamflame.config import config_in_effect
from streamflame.core.logs import configure_logging
from streamflame.embedded.process import StartupError, log_tail, pid_alive, spawn, stop_pid
from streamflame.embedded.stack import (
    DEFAULT_RUN_DIR,
    RUN_JSON,
    ChildCommand,
    EmbeddedStack,
    default_child_command,
    read_run_json,
)

log = structlog.get_logger("streamflame.embedded.stack")


def _up_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamflame up", description="Start the embedded stack: broker, redis, "
                                "topics, ingest and worker processes (supervised).")
    p.add_argument("--detach", action="store_true", help="run in the background; return once everything is ready")
    p.add_argument("--config", metavar="FILE", help="service config (YAML; default $STREAMFLAME_CONFIG, else the "
                   "packaged configs/default.yaml); an external Kafka/Redis in it is used")
    p.add_argument("--run-dir", metavar="DIR", default=str(DEFAULT_RUN_DIR),
                   help="logs, data and run.json (default: ./.streamflame)")
    p.add_argument("--ingest", type=int, default=1, metavar="N", help="ingest processes (default 1)")
    p.add_argument("--workers", type=int, default=1, metavar="M", help="worker processes (default 1)")
    p.add_argument("--durable", action="store_true",
                   help="also keep the broker's data, in files under the run directory (localbucket): every "
                        "accepted observation survives down/up. Limit: Tansu lists every stored batch of a "
                        "partition on each fetch and has no retention, so fetches slow down and finally stall "
                        "after some thousands of produce requests per partition (docs/reliability.md)")
    p.add_argument("--ephemeral", action="store_true",
                   help="keep nothing: memory-only broker and Redis (demos, throwaway runs). Default: Redis with "
                        "an AOF in the run directory (every series' state survives down/up), broker in memory")
    p.add_argument("--redis-fsync", choices=("everysec", "always"), default="everysec",
                   help="Redis appendfsync: everysec (a crash loses at most ~1 s of writes) or always "
                        "(nothing, slower); ignored with --ephemeral")
    p.add_argument("--partitions", type=int, metavar="P",
                   help="partitions of observations and patches (default: kafka.partitions of the config, 4)")
    p.add_argument("--ready-timeout", type=float, default=180.0, metavar="S", help=argparse.SUPPRESS)
    p.add_argument("--child-command", metavar="ARGV",
                   help=argparse.SUPPRESS)  # tests: a JSON list; '{role}'/'{index}' are substituted
    return p


def _child_command_from_json(text: str) -> ChildCommand:
    template = orjson.loads(text)
    if not isinstance(template, list) or not template or not all(isinstance(a, str) for a in template):
        raise ValueError(f"--child-command must be a JSON list of strings, got {text!r}")
    return lambda role, index: [a.replace("{role}", role).replace("{index}", str(index)) for a in template]


def _running_supervisor(run_dir: Path) -> int | None:
    info = read_run_json(run_dir)
    pid = (info or {}).get("pids", {}).get("supervisor")
    return pid if pid_alive(pid) else None


def main_up(argv: list[str]) -> int:
    args = _up_parser().parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    for name in ("ingest", "workers", "partitions"):
        value = getattr(args, name)
        if value is not None and value < (1 if name == "partitions" else 0):
            print(f"streamflame up: --{name} must be >= {1 if name == 'partitions' else 0}, got {value}",
                  file=sys.stderr)
            return 2
    if args.durable and args.ephemeral:
        print("streamflame up: --durable and --ephemeral exclude each other",
              file=sys.stderr)
        return 2
    if args.config and not Path(args.config).is_file():
        print(f"streamflame up: --config {args.config}: no such file", file=sys.stderr)
        return 2
    running = _running_supervisor(run_dir)
    if running is not None:
        print(f"streamflame up: a stack is already running from {run_dir} (supervisor pid {running}); "
              f"stop it with `streamflame down --run-dir {run_dir}`", file=sys.stderr)
        return 1
    (run_dir / RUN_JSON).unlink(missing_ok=True)  # stale: its supervisor is gone
    if args.detach:
        return _up_detached(argv, run_dir, args.ready_timeout)
    return _up_foreground(args, run_dir)


def _up_foreground(args: argparse.Namespace, run_dir: Path) -> int:

    configure_logging("info")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack = EmbeddedStack(
            run_dir,
            partitions=args.partitions,
            durable=args.durable,
            redis_appendonly=not args.ephemeral,
            redis_appendfsync=args.redis_fsync,
            config_path=config_in_effect(args.config),   # none given: the packaged configs/default.yaml
            ingest=args.ingest,
            workers=args.workers,
            child_command=_child_command_from_json(args.child_command) if args.child_command
            else default_child_command,
            ready_timeout_s=args.ready_timeout,
        )
    except ValueError as exc:  # ConfigError is a ValueError
        print(f"streamflame up: {exc}", file=sys.stderr)
        return 2
    try:
        stack.start_services()
        if not stop.is_set():
            stack.start_children(stop)
        if not stop.is_set():
            log.info("stack_ready", run_json=str(stack.run_json_path), config=str(stack.config_path),
                     kafka_bootstrap=stack.kafka_bootstrap,
                     ingest=args.ingest, workers=args.workers)
            stack.run(stop)
        return 0
    except StartupError as exc:
        log.error("startup_failed", error=str(exc))
        print(f"streamflame up: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


def _up_detached(argv: list[str], run_dir: Path, timeout_s: float) -> int:
    """Start the foreground `up` as a background process in its own session;
    return once its run.json says ready (or report why not)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    args = [a for a in argv if a != "--detach"] + ["--run-dir", str(run_dir)]
    log_path = run_dir / "logs" / "supervisor.log"
    proc = spawn([sys.executable, "-m", "streamflame", "up", *args], log_path=log_path, die_with_parent=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = read_run_json(run_dir)
        if info and info.get("ready") and info["pids"].get("supervisor") == proc.pid:
            print(run_dir / RUN_JSON)
            return 0
        if proc.poll() is not None:
            print(f"streamflame up: the stack failed to start (exit code {proc.returncode})\n"
                  f"--- last lines of {log_path} ---\n{log_tail(log_path)}", file=sys.stderr)
            return 1
        time.sleep(0.1)
    stop_pid(proc.pid, timeout=15)
    print(f"streamflame up: not ready after {timeout_s:.0f} s; stopped it. See {log_path}", file=sys.stderr)
    return 1


def main_down(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="streamflame down", description="Stop a stack started by `streamflame up`.")
    p.add_argument("--run-dir", metavar="DIR", default=str(DEFAULT_RUN_DIR),
                   help="run directory given to `up` (default: ./.streamflame)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for a clean shutdown before SIGKILL (default 30)")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    info = read_run_json(run_dir)
    if info is None:
        print(f"streamflame down: no stack found (no {run_dir / RUN_JSON})", file=sys.stderr)
        return 1
    pids = info.get("pids", {})
    supervisor = pids.get("supervisor")
    if not pid_alive(supervisor):
        (run_dir / RUN_JSON).unlink(missing_ok=True)
        print(f"streamflame down: supervisor {supervisor} was not running; removed stale {run_dir / RUN_JSON}")
        return 0
    clean = stop_pid(supervisor, timeout=args.timeout)
    # Whatever the supervisor could not stop (it was SIGKILLed, or hung) goes now.
    leftovers = [pid for key in ("ingest", "worker") for pid in pids.get(key, [])]
    leftovers += [pids.get(key) for key in ("redis", "broker", "s3")]
    for pid in leftovers:
        if pid is not None and pid_alive(pid):
            clean = False
            stop_pid(pid, timeout=5.0)
    (run_dir / RUN_JSON).unlink(missing_ok=True)
    print(f"stopped the stack in {run_dir}" + ("" if clean else " (some processes had to be killed)"))
    return 0
