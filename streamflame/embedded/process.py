"""Process plumbing shared by the embedded services: free ports, readiness
waits, log files and a clean SIGTERM-then-SIGKILL shutdown."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

LOOPBACK = "127.0.0.1"


class StartupError(RuntimeError):
    """A service did not become ready; the message carries the tail of its log."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (bind port 0, read it back, close).

    The usual small race applies: another process may take the port before the
    caller binds it. Callers that start a server retry on a fresh port if needed.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_cluster_port(host: str = LOOPBACK, tries: int = 200) -> int:
    """A free port for a Redis Cluster node: at most 55535, with the cluster bus
    port (port + 10000) free too. Redis refuses higher ports in cluster mode, and
    the kernel's ephemeral range (what `free_port` returns) often lies above it."""
    import random

    rng = random.Random()
    for _ in range(tries):
        port = rng.randint(20000, 55535)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as b:
                a.bind((host, port))
                b.bind((host, port + 10000))
            return port
        except OSError:
            continue
    raise StartupError(f"no free cluster port pair found on {host} after {tries} tries")


def log_tail(path: Path | None, lines: int = 30) -> str:
    """The last `lines` lines of a log file ('' if there is none)."""
    if path is None or not Path(path).exists():
        return ""
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def wait_until(
    probe: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    log_path: Path | None = None,
    interval: float = 0.1,
) -> None:
    """Call `probe()` until it returns True; raise `StartupError` after
    `timeout` seconds or as soon as `proc` exits. Exceptions from the probe
    count as "not yet" (the service is still coming up)."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise StartupError(
                f"{what}: process exited with code {proc.returncode} before it was ready"
                + _tail_suffix(log_path)
            )
        try:
            if probe():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise StartupError(
                f"{what}: not ready after {timeout:.0f} s{detail}" + _tail_suffix(log_path)
            )
        time.sleep(interval)


def _tail_suffix(log_path: Path | None) -> str:
    tail = log_tail(log_path)
    return f"\n--- last lines of {log_path} ---\n{tail}" if tail else ""


def owns_listening_port(pid: int, port: int) -> bool:
    """True if process `pid` holds a socket listening on TCP `port` (Linux /proc).

    A readiness probe alone cannot tell our server from another one that
    already sat on the port; this can."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            # cols: sl local_address rem_address st ... inode (index 9); st 0A = LISTEN
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return False
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    except OSError:
        return False
    return False


_PR_SET_PDEATHSIG = 1
try:  # resolved here, not after fork: dlopen in a forked child of a threaded parent can deadlock
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Linux: deliver SIGTERM to the child when the thread that spawned it
    dies, so a crashed (even SIGKILLed) parent does not leak servers."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = True,
) -> subprocess.Popen:
    """Start `argv` with stdout+stderr appended to `log_path`, stdin closed,
    in its own process group (a terminal's Ctrl-C reaches only the parent,
    which then stops its children in order)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=None if cwd is None else str(cwd),
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, wait up to `timeout` s, then SIGKILL. Returns the exit code
    (None if there was no process)."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
        except ProcessLookupError:
            pass
    return proc.wait()


def pid_alive(pid: int | None) -> bool:
    """True if a process with this pid exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0): look at its state
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stop_pid(pid: int | None, timeout: float = 10.0) -> bool:
    """Stop a process that is not our child: SIGTERM, wait, SIGKILL.
    Returns True if it is gone."""
    if not pid_alive(pid):
        return True
    assert pid is not None
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.05)
    return not pid_alive(pid)


def sync_filesystem(path: str | os.PathLike) -> None:
    """syncfs(2) on the filesystem holding `path`: every dirty page and inode of it
    reaches the disk (what a power loss cannot take any more). Falls back to
    sync(2) where syncfs is missing."""
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)
