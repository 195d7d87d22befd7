"""Hot reload: which settings a running service may take without a restart, the file watcher and
the reloader the ingest and worker loops poll between batches (SIGHUP or a changed file)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from streamflame.config.errors import ConfigError
from streamflame.config.loading import load_config
from streamflame.config.service import ServiceConfig

# ---------------------------------------------------------------------------
# Hot reload support
# ---------------------------------------------------------------------------

HOT_RELOADABLE = ("defaults", "groups", "log_level", "worker.batch_size", "worker.batch_deadline_ms")
"""Settings a running service may pick up without a restart; others need one."""

SETTLE_S = 0.3
"""A changed file is read once this process has seen it unchanged for this long (its own
monotonic clock, not the file's mtime): a file rewritten in place is first empty, which is
valid YAML (the defaults), then partly written, which may be too."""


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
    the file did not change (or is still changing, see ``settle_s``), and raises
    ConfigError for an invalid new file — ``config`` then keeps the previous good
    config and the same broken file is not reported again until it changes.

    ``settle_s``: a change is read only after this watcher has seen the file's stat
    unchanged for that long, and only if the stat is still the same after the read
    (a writer caught in the middle is looked at again later). ``reload()`` (SIGHUP)
    reads at once.
    """

    def __init__(self, path: str | os.PathLike, config: ServiceConfig | None = None, *,
                 settle_s: float = SETTLE_S, clock=time.monotonic):
        self.path = Path(path)
        self.settle_s = settle_s
        self._clock = clock
        self._stamp = self._stat()
        self._pending: tuple[tuple[int, int, int] | None, float] | None = None  # (stat seen, since)
        self.config = config if config is not None else load_config(self.path)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def settled_change(self) -> bool:
        """The file differs from the one last read and has held still for ``settle_s``."""
        stamp = self._stat()
        if stamp == self._stamp:
            self._pending = None
            return False
        now = self._clock()
        if self._pending is None or self._pending[0] != stamp:
            self._pending = (stamp, now)
        return now - self._pending[1] >= self.settle_s

    def reload(self) -> ServiceConfig:
        """Load now (e.g. on SIGHUP). Raises ConfigError and keeps the old config."""
        self._stamp, self._pending = self._stat(), None
        new = load_config(self.path)
        self.config = new
        return new

    def poll(self) -> ServiceConfig | None:
        """The new config once a change has settled (see ``settle_s``); None while the file is
        unchanged, still changing, or was written to while it was read. Raises ConfigError for
        an invalid file that held still (reported once: not again until it changes)."""
        if not self.settled_change():
            return None
        seen = self._pending[0]
        try:
            new = load_config(self.path)
        except ConfigError:
            if self._stat() != seen:      # caught mid-write after all: look again later
                self._pending = None
                return None
            self._stamp, self._pending = seen, None
            raise
        if self._stat() != seen:
            self._pending = None
            return None
        self._stamp, self._pending = seen, None
        self.config = new
        return new


class HotReloader:
    """Hot reload for a running service: a :class:`ConfigWatcher` plus the policy.

    ``request()`` (async-signal safe: only sets a flag; call it from a SIGHUP
    handler) forces a reload at the next :meth:`check`; otherwise ``check()``
    reloads when the file changed and has held still for ``SETTLE_S`` (a file being
    rewritten in place is not read half-written). The service calls ``check()`` between
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
                 validate: Any = None, component: str = "service", settle_s: float = SETTLE_S):
        self.watcher = ConfigWatcher(path, config, settle_s=settle_s)
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
        trigger = "signal" if requested else "file_change"
        try:
            new = self.watcher.reload() if requested else self.watcher.poll()
        except ConfigError as e:
            self.watcher.config = self.config
            return self._refuse(trigger, e)
        if new is None:           # unchanged, or still being written: look again at the next check
            return None
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


