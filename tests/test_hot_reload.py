"""Hot reload of a running worker process (real Tansu + redis-server): a new horizon
and new quantiles take effect on SIGHUP or on a file change, an invalid file is
refused and the old settings keep running; unit tests of the HotReloader policy."""
from __future__ import annotations

import os
import signal
import threading

import orjson
import pytest

from test_worker import (  # noqa: F401 (model_dir: fixture)
    make_patch,
    model_dir,
    read_all,
    send,
    start_worker_process,
    values_for,
    wait_for,
)

from streamflame.config import ConfigError, HotReloader, ServiceConfig, dump_yaml, load_config
from streamflame.messages import decode_forecast

H1, H2 = 60, 24
Q1 = [0.05, 0.25, 0.5, 0.75, 0.95]
Q2 = [0.05, 0.1, 0.5, 0.9, 0.95]


def _config_text(cfg: ServiceConfig, horizon, quantiles, linger_ms: int = 5) -> str:
    d = cfg.effective(mask_secrets=False)
    d["kafka"]["linger_ms"] = linger_ms
    d["defaults"].update(horizon=horizon, quantiles=quantiles, num_samples=20, alert_levels=[0.05, 0.95])
    return dump_yaml(d)


def _rewrite_unseen(path, text: str) -> None:
    """Rewrite ``path`` so that a stat() cannot tell: same size, inode and mtime.
    Only a SIGHUP can make the worker read it."""
    st = path.stat()
    pad = st.st_size - len(text.encode()) - 1
    assert pad >= 0, "the new text must not be longer than the old one"
    with open(path, "r+b") as f:  # same inode
        f.write((text + "#" * pad + "\n").encode())
        f.truncate()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


@pytest.fixture()
def cfg(service_config, model_dir) -> ServiceConfig:  # noqa: F811
    return service_config.model_copy(update={
        "worker": service_config.worker.model_copy(update={"model_path": str(model_dir), "batch_deadline_ms": 30}),
    })


@pytest.mark.parametrize("trigger", ["signal", "file_change"])
def test_worker_reloads_horizon_and_quantiles_and_refuses_invalid_file(cfg, tmp_path, trigger):
    conf = tmp_path / "worker.yaml"
    conf.write_text(_config_text(cfg, H1, Q1) + "#" * 200 + "\n")  # room for same-size rewrites
    ready = tmp_path / "ready"
    env = {**os.environ, "STREAMFLAME_READY_FILE": str(ready)}
    env.pop("STREAMFLAME_CONFIG", None)
    proc, lines, reader = start_worker_process(conf, env)
    sid, v = "boiler-3", values_for(7, 3)

    def change_config(text: str) -> None:
        """SIGHUP after a rewrite a stat() cannot see, or a plain file change."""
        if trigger == "signal":
            _rewrite_unseen(conf, text)
            proc.send_signal(signal.SIGHUP)
        else:
            conf.write_text(text)

    def events(name):
        return [x for x in lines if x["event"] == name]

    def forecasts(n):
        return sorted((decode_forecast(r.value) for r in read_all(cfg, cfg.topics.forecasts, n, settle=0.2)),
                      key=lambda f: f.seq)

    try:
        wait_for(ready.exists, 60, "the ready file")
        send(cfg, [make_patch(sid, 0, v[:48])])
        (f0,) = forecasts(1)
        assert f0.horizon == H1 and len(f0.mean) == H1 and list(f0.quantiles) == ["0.05", "0.25", "0.5", "0.75", "0.95"]

        # New horizon and quantiles (+ a producer setting that needs a restart).
        new_text = _config_text(cfg, H2, Q2, linger_ms=7)
        change_config(new_text)
        wait_for(lambda: events("config.reloaded"), 20, "config.reloaded")
        (ok,) = events("config.reloaded")
        assert ok["trigger"] == trigger and ok["component"] == "worker"
        assert ok["applied"] == ["defaults"]
        (restart,) = events("config.restart_required")
        assert restart["fields"] == ["kafka.linger_ms"] and restart["level"] == "warning"

        send(cfg, [make_patch(sid, 1, v[48:96])])
        f1 = forecasts(2)[1]
        assert f1.seq == 1 and f1.horizon == H2 and len(f1.mean) == H2
        assert list(f1.quantiles) == ["0.05", "0.1", "0.5", "0.9", "0.95"]
        assert all(len(q) == H2 for q in f1.quantiles.values())

        # An invalid file: refused with the field named, the worker keeps H2.
        bad = new_text.replace("horizon: 24", "horizon: -5").replace("quantiles: [0.05, 0.1,", "quantiles: [0.1, 0.05,")
        assert bad != new_text
        change_config(bad)
        wait_for(lambda: events("config.reload_failed"), 20, "config.reload_failed")
        (failed,) = events("config.reload_failed")
        assert failed["level"] == "error" and failed["trigger"] == trigger
        assert any(p.startswith("defaults.horizon:") for p in failed["problems"]), failed["problems"]
        assert any(p.startswith("defaults.quantiles:") for p in failed["problems"]), failed["problems"]
        assert proc.poll() is None

        send(cfg, [make_patch(sid, 2, v[96:])])
        f2 = forecasts(3)[2]
        assert f2.seq == 2 and f2.horizon == H2 and list(f2.quantiles) == list(f1.quantiles)
        assert len(events("config.reloaded")) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)


class _Log:  # records what a structlog logger would be asked to log
    def __init__(self):
        self.entries: list[dict] = []

    def __getattr__(self, level):
        return lambda event, **kw: self.entries.append({"event": event, "level": level, **kw})


def test_a_file_being_written_is_not_read_until_it_holds_still(tmp_path, monkeypatch):
    """A config rewritten in place is first empty (valid YAML: the defaults!), then full. The
    reloader reads a change only after it has seen the file's stat unchanged for settle_s (by its
    own clock), and drops a read during which the file changed again."""
    import streamflame.config.reload as reload_mod

    path = tmp_path / "c.yaml"
    path.write_text("defaults: {horizon: 48}\n")
    now = [0.0]
    r = HotReloader(path, load_config(path), _Log(), settle_s=0.3)
    r.watcher._clock = lambda: now[0]
    path.write_text("")                                   # truncated: the writer is not done
    os.utime(path, ns=(1, 1))
    assert r.check() is None
    now[0] += 0.2
    path.write_text("defaults: {horizon: 96}\n")          # done (a new stat: the wait restarts)
    os.utime(path, ns=(2, 2))
    assert r.check() is None                              # the full file first seen
    now[0] += 0.2
    assert r.check() is None and r.reloads == 0           # for 0.2 s only
    now[0] += 0.1
    new = r.check()
    assert new is not None and new.defaults.horizon == 96 and r.reloads == 1
    assert r.check() is None and r.reloads == 1

    # Written to again while it is being read: that read is dropped, the final file applies.
    real_load = reload_mod.load_config

    def load_while_a_writer_appends(p):
        cfg = real_load(p)
        with open(p, "a") as f:
            f.write("groups: [{name: p, match: 'p-*', horizon: 12}]\n")
        os.utime(p, ns=(3, 3))
        return cfg

    path.write_text("defaults: {horizon: 24}\n")
    os.utime(path, ns=(4, 4))
    now[0] += 1.0
    assert r.check() is None                              # first sight
    now[0] += 0.3
    monkeypatch.setattr(reload_mod, "load_config", load_while_a_writer_appends)
    assert r.check() is None and r.reloads == 1           # read, but the file moved under it
    monkeypatch.setattr(reload_mod, "load_config", real_load)
    assert r.check() is None                              # the new stat: wait again
    now[0] += 0.3
    new = r.check()
    assert new.defaults.horizon == 24 and new.resolve_group("p-1").horizon == 12 and r.reloads == 2

    r.request()                                           # SIGHUP reads at once, settled or not
    path.write_text("defaults: {horizon: 60}\n")
    assert r.check().defaults.horizon == 60 and r.reloads == 3


def test_reloader_policy(tmp_path):
    """In-process: unchanged file, hot part applied, restart-only part kept, a config
    that fails the process' own check refused, a broken file reported once."""
    log = _Log()
    path = tmp_path / "c.yaml"
    path.write_text("defaults: {horizon: 48}\nworker: {batch_size: 64, device: cpu}\n")
    cfg = load_config(path)
    r = HotReloader(path, cfg, log, validate=lambda c: c.check_horizons(100), settle_s=0.0)
    assert r.check() is None and log.entries == []  # nothing changed

    path.write_text("defaults: {horizon: 96}\nworker: {batch_size: 32, device: cuda}\ngroups: [{name: p, match: 'p-*', horizon: 12}]\n")
    assert cfg.resolve_group("p-1").horizon == 48
    new = r.check()
    assert new is not None and new.defaults.horizon == 96 and new.worker.batch_size == 32
    assert new.worker.device == "cpu"  # needs a restart: kept
    assert new.resolve_group("p-1").horizon == 12  # no stale resolver cache
    assert [e["event"] for e in log.entries] == ["config.restart_required", "config.reloaded"]
    assert log.entries[0]["fields"] == ["worker.device"]

    log.entries.clear()
    path.write_text("defaults: {horizon: 500}\nworker: {batch_size: 32, device: cuda}\n")  # beyond the model
    assert r.check() is None and r.config is new
    (e,) = log.entries
    assert e["event"] == "config.reload_failed" and e["problems"] == ["defaults.horizon: 500 exceeds the model's max_horizon 100"]

    log.entries.clear()
    path.write_text("defaults: {horizon: 96\n")  # YAML error
    assert r.check() is None and r.config is new and r.watcher.config is new
    assert log.entries[0]["event"] == "config.reload_failed" and "invalid YAML" in log.entries[0]["problems"][0]
    assert r.check() is None and len(log.entries) == 1  # not reported again until it changes
    r.request()  # SIGHUP: re-read (and re-report) on demand
    assert r.check() is None and len(log.entries) == 2 and log.entries[1]["trigger"] == "signal"
    with pytest.raises(ConfigError):
        load_config(path)


def test_ingest_reloads_group_frequency_for_new_series(service_config, redis_client, tmp_path):
    """Ingest (in-process, real broker + redis) with a config file: after the file changes a
    group's frequency, series first seen afterwards use the new step; a series already
    started keeps its own (its grid is fixed by its first observations)."""
    import time as _time

    from kafka import KafkaProducer

    from streamflame.pipeline.ingest.consumer import IngestConsumer
    from streamflame.messages import decode_patch
    from test_pipeline_e2e import read_topic

    def text(freq: str) -> str:
        d = service_config.effective(mask_secrets=False)
        d["groups"] = [{"name": "meters", "match": "meter-*", "frequency": freq}]
        return dump_yaml(d)

    conf = tmp_path / "ingest.yaml"
    conf.write_text(text("1min"))
    cfg = load_config(conf)
    ingest = IngestConsumer(cfg, redis_client=redis_client, config_path=conf)
    t = threading.Thread(target=ingest.run, daemon=True)
    t.start()
    t0 = 1_704_067_200_000
    prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap)

    def send_series(sid: str, step_ms: int, n: int = 49, first: int = 0) -> None:
        # Timestamps 5 min apart: on a 1-min grid every fifth slot, on a 5-min grid every slot.
        msg = {"series_id": sid, "timestamps": [t0 + k * step_ms for k in range(first, first + n)],
               "values": [1.0] * n}
        prod.send(cfg.topics.observations, key=sid.encode(), value=orjson.dumps(msg))
        prod.flush()

    try:
        send_series("meter-1", 300_000)
        first = read_topic(cfg.kafka.bootstrap, cfg.topics.patches, want=5, timeout=30)  # 241 1-min slots
        assert [decode_patch(r.value).freq_ms for r in first] == [60_000] * 5
        conf.write_text(text("5min"))
        deadline = _time.monotonic() + 10   # ingest checks the file before each poll, once it holds still
        while ingest.reloader.reloads < 1 and _time.monotonic() < deadline:
            _time.sleep(0.05)
        assert ingest.reloader.reloads == 1
        send_series("meter-2", 300_000)                    # 49 5-min slots: one patch
        send_series("meter-1", 300_000, n=10, first=49)    # the started series: slots 245..290, one more patch
        patches = [decode_patch(r.value) for r in read_topic(cfg.kafka.bootstrap, cfg.topics.patches, want=7,
                                                             timeout=30)]
    finally:
        prod.close()
        ingest.stop()
        t.join(30)
    assert not t.is_alive()
    by_sid = {}
    for p in patches:
        by_sid.setdefault(p.series_id, set()).add(p.freq_ms)
    assert by_sid == {"meter-1": {60_000}, "meter-2": {300_000}}
    assert sorted((p.series_id, p.seq) for p in patches) == [("meter-1", k) for k in range(6)] + [("meter-2", 0)]
    assert ingest.reloader.reloads == 1 and ingest.cfg.resolve_group("meter-9").freq_ms == 300_000
