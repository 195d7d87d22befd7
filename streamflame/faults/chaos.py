"""`streamflame chaos SCENARIO`: fault injection on the real embedded stack.

Every scenario starts its own Tansu broker and redis-server (loopback, free
ports, a temporary run directory), runs ``python -m streamflame ingest`` and
``python -m streamflame worker`` as separate processes, produces a seeded
synthetic stream of observations over ``--produce-seconds`` and injects faults
at seeded moments while the stream flows:

``crash``      SIGKILL the worker and the ingest process at ``--kills`` random
               moments (each restarted after a short seeded delay);
``redis``      redis-server with ``appendonly yes`` / ``appendfsync everysec``:
               SIGKILL it ``--kills`` times and restart it on the same port and
               directory (the last ~1 s of acknowledged writes may be lost);
``broker``     Tansu with durable storage (``s3://`` on a local localbucket, files):
               SIGKILL it ``--kills`` times and restart it on the same port;
``rebalance``  scale the worker group 1 -> 2 -> 1, ``--kills`` times; the scale
               down alternates between a graceful stop (SIGTERM, leaves the group)
               and a SIGKILL (hands over after the session timeout).

Then it waits until every series' state in Redis has its last complete patch
applied, stops the processes and checks, against an in-process
:class:`~streamflame.Forecaster` run on the same input (the uninterrupted
reference):

* every series' state record (``seq``, ``state``, ``meta``) is byte-identical to
  the reference record; ``meta.src_offset`` is a pointer into the patches log
  (it differs between any two runs), so it is checked to point at a copy of
  the series' last patch and the reference meta is built with it;
* the patches topic holds every (series, seq) exactly as the input dictates
  (all 48 slots equal to the produced values: no observation missing or
  moved), duplicates (re-emitted after an ingest crash) byte-identical;
* the forecasts topic holds every (series, seq) at least once, duplicates
  identical except ``produced_at``; the last forecast of every series equals
  the reference forecast (same seed) bit for bit;
* no process exited that the scenario did not kill.

It prints the counts (observations, patches, forecasts, duplicates, faults and
their moments) and exits 0 when every check passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamflame.config import ServiceConfig
from streamflame.core.logs import configure_logging
from streamflame.embedded import Broker, RedisServer
from streamflame.faults.checks import ChaosChecks
from streamflame.faults.processes import Child, wait_ready
from streamflame.faults.stream import ChaosOptions, Dataset, Fault, make_dataset, plan_faults

SCENARIOS = ("crash", "redis", "broker", "rebalance")
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 600}



# ---------------------------------------------------------------------------- input




# ---------------------------------------------------------------------------- processes




# ---------------------------------------------------------------------------- topics



# ---------------------------------------------------------------------------- the run




class ChaosRun(ChaosChecks):
    def __init__(self, o: ChaosOptions):
        if o.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {o.scenario!r}; one of {', '.join(SCENARIOS)}")
        self.o = o
        self.own_dir = o.run_dir is None
        self.run_dir = Path(o.run_dir or tempfile.mkdtemp(prefix=f"sf-chaos-{o.scenario}-")).resolve()
        self.children: list[Child] = []
        self.broker = self.redis = None
        self.report: dict[str, Any] = {"scenario": o.scenario, "seed": o.seed, "ok": False, "problems": []}

    def say(self, msg: str) -> None:
        if not self.o.quiet:
            print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # -- setup -------------------------------------------------------------------
    def _start_services(self) -> None:

        o = self.o
        self.broker = Broker(self.run_dir, durable=o.scenario == "broker")
        self.broker.start(timeout=90.0)
        self.redis = RedisServer(self.run_dir, appendonly=o.scenario == "redis", appendfsync="everysec")
        self.redis.start()
        self.say(f"broker {self.broker.bootstrap} ({self.broker.storage_url}), redis {self.redis.url} "
                 f"(appendonly={'yes everysec' if self.redis.appendonly else 'no'}), run dir {self.run_dir}")

    def _write_config(self) -> Path:
        import yaml


        o = self.o
        if o.model == "tiny":
            from streamflame import Forecaster  # lazy: torch
            from streamflame.model import tiny_config  # lazy: torch

            model_path = str(Forecaster.from_config(tiny_config(), seed=5).save(self.run_dir / "model"))
        elif o.model == "shipped":
            model_path = None
        else:
            model_path = str(Path(o.model).resolve())
        data = {
            "kafka": {"bootstrap": self.broker.bootstrap, "partitions": o.partitions, **FAST_GROUP,
                      "idempotent_producer": o.idempotent_producer},
            "redis": {"url": self.redis.url, "key_prefix": "sf"},
            "ingest": {"commit_interval_ms": 500},
            "worker": {"model_path": model_path, "batch_size": 256, "batch_deadline_ms": 50, "device": "cpu"},
            "defaults": {"frequency": "1min", "horizon": 24, "num_samples": 8},
            "log_level": "info",
        }
        self.cfg = ServiceConfig(**data)
        path = self.run_dir / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    # -- run -------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t_begin = time.monotonic()
        o = self.o
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ds = make_dataset(o.observations, o.series, o.seed)
            self.ds = ds
            self._start_services()
            cfg_path = self._write_config()
            from streamflame.adapters.kafka_io import create_topics  # lazy: kafka-python

            create_topics(self.cfg)
            self.children = [Child("ingest", 0, self.run_dir, cfg_path), Child("worker", 0, self.run_dir, cfg_path)]
            for c in self.children:
                c.start()
            wait_ready(self.children, 120)
            self.say(f"ingest and worker ready; streaming {ds.observations} observations of {o.series} series "
                     f"({len(ds.order)} messages, {sum(ds.n_patches.values())} complete patches) "
                     f"over {o.produce_s:.0f} s with {o.kills} fault(s) ({o.scenario})")
            faults = self._stream(ds, plan_faults(o))
            self.report["faults"] = [{"t_s": round(f.t, 2), "action": f.action, **f.detail} for f in faults]
            self._wait_done(ds)
            t_done = time.monotonic()
            for c in self.children:
                c.stop()
            self._verify(ds)
            self.report["pipeline_s"] = round(t_done - self.t_stream, 1)
        except Exception as e:  # noqa: BLE001 - reported, the run is a failure
            self.report["problems"].append(f"run aborted: {e!r}")
        finally:
            for c in self.children:
                if c.alive:
                    c.kill()
            self.report["log_counts"] = self._log_counts()
            for svc in (self.redis, self.broker):
                if svc is not None:
                    svc.stop()
            if self.own_dir and not o.keep and not self.report["problems"]:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            else:
                self.report["run_dir"] = str(self.run_dir)
        self.report["ok"] = not self.report["problems"]
        self.report["total_s"] = round(time.monotonic() - t_begin, 1)
        return self.report

    def _stream(self, ds: Dataset, faults: list[Fault]) -> list[Fault]:
        """Produce the input paced over produce_s in a thread; apply the faults on time."""
        from streamflame.adapters.kafka_io import make_producer  # lazy: kafka-python

        o = self.o
        topic = self.cfg.topics.observations
        failures: list[str] = []
        done = threading.Event()

        def produce() -> None:
            prod = make_producer(self.cfg, linger_ms=20)
            try:
                chunks = np.array_split(np.arange(len(ds.order)), max(1, int(o.produce_s * 10)))
                futs = []
                for i, idx in enumerate(chunks):
                    for j in idx:
                        k, v = ds.order[j]
                        futs.append(prod.send(topic, key=k, value=v))
                    pause = self.t_stream + (i + 1) * o.produce_s / len(chunks) - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                prod.flush()
                bad = [f for f in futs if f.failed()]
                if bad:
                    failures.append(f"{len(bad)} observation records not delivered: {bad[0].exception!r}")
            except Exception as e:  # noqa: BLE001
                failures.append(f"producer failed: {e!r}")
            finally:
                prod.close(timeout=10)
                done.set()

        self.t_stream = time.monotonic()
        th = threading.Thread(target=produce, daemon=True)
        th.start()
        sampler_stop = threading.Event()
        self._aof_sizes: list = []
        if o.scenario == "redis" and o.redis_lose_s > 0:
            threading.Thread(target=self._sample_aof, args=(sampler_stop,), daemon=True).start()
        pending = list(faults)
        restarts: list[tuple[float, Any]] = []
        while pending or restarts or not done.is_set():
            now = time.monotonic() - self.t_stream
            for c in self.children:
                if c.check():
                    self.say(f"{c.name} exited by itself (code {c.unexpected_exits[-1]}); restarted")
            for item in [r for r in restarts if r[0] <= now]:
                restarts.remove(item)
                item[1]()
            if pending and pending[0].t <= now and not self._defer(pending[0], now):
                f = pending.pop(0)
                self._apply(f, now, restarts)
            if now > o.produce_s + o.timeout_s:
                raise RuntimeError("the stream did not finish in time")
            time.sleep(0.02)
        th.join(60)
        sampler_stop.set()
        self.report["problems"] += failures
        self.report["produce_s"] = round(time.monotonic() - self.t_stream, 1)
        return faults

    def _apply(self, f: Fault, now: float, restarts: list) -> None:
        f.detail["at_s"] = round(now, 2)
        kind, _, what = f.action.partition("-")
        if f.action in ("kill-worker", "kill-ingest"):
            c = next(c for c in self.children if c.role == what)
            f.detail.update(pid=c.proc.pid if c.proc else None, uptime_s=round(time.monotonic() - c.started_at, 2),
                            was_ready=c.ready_file.exists())
            c.kill()
            restarts.append((now + f.restart_after, c.start))
            f.detail["restart_after_s"] = round(f.restart_after, 2)
            self.say(f"t={now:6.2f}s SIGKILL {c.name} (pid {f.detail['pid']}, up {f.detail['uptime_s']} s)")
        elif f.action.startswith(("kill-redis", "kill-broker")):
            what = "redis" if f.action.startswith("kill-redis") else "broker"
            svc = self.redis if what == "redis" else self.broker
            apps = [c for c in self.children if c.alive] if f.action.endswith("+apps") else []
            before = self._seqs() if what == "redis" else None
            f.detail["pid"] = svc.pid
            svc.kill()
            for c in apps:
                c.kill()
            if apps:
                f.detail["also_killed"] = [c.name for c in apps]
            if what == "redis" and self.o.redis_lose_s > 0:
                f.detail["aof_bytes_cut"] = self._cut_aof(self.o.redis_lose_s)
            self.say(f"t={now:6.2f}s SIGKILL {what} (pid {f.detail['pid']})"
                     + (f" and {', '.join(c.name for c in apps)}" if apps else "")
                     + (f", AOF cut by {f.detail['aof_bytes_cut']} bytes" if "aof_bytes_cut" in f.detail else "")
                     + f"; restart in {f.restart_after:.2f} s")

            def restart(svc=svc, f=f, what=what, apps=apps, before=before) -> None:
                t0 = time.monotonic()
                svc.start(timeout=90.0)
                f.detail["down_s"] = round(time.monotonic() - self.t_stream - f.detail["at_s"], 2)
                f.detail["restart_s"] = round(time.monotonic() - t0, 2)
                if before is not None:
                    after = self._seqs()
                    for kind in ("state", "ingest"):
                        f.detail[f"{kind}_records_rolled_back"] = sum(
                            1 for sid, v in before[kind].items() if after[kind].get(sid, -1) < v)
                for c in apps:
                    c.start()
                self.say(f"{what} back on port {svc.port} (pid {svc.pid}) after {f.detail['down_s']} s"
                         + (f"; rolled back: {f.detail.get('state_records_rolled_back')} states, "
                            f"{f.detail.get('ingest_records_rolled_back')} ingest cursors" if before else ""))

            restarts.append((now + f.restart_after, restart))
        elif f.action == "scale-up":
            index = 1 + max(c.index for c in self.children + self._retired if c.role == "worker")
            c = Child("worker", index, self.run_dir, self.children[0].config_path)
            self.children.append(c)
            c.start()
            f.detail["worker"] = c.name
            self.say(f"t={now:6.2f}s scale up: {c.name} started (workers: {self._n_workers()})")
        elif f.action.startswith("scale-down"):
            workers = [c for c in self.children if c.role == "worker" and c.alive]
            c = workers[0]  # the oldest goes: its partitions move
            f.detail["worker"] = c.name
            if f.action.endswith("kill"):
                f.detail["pid"] = c.kill()
            else:
                f.detail["exit_code"] = c.stop()
            self.children.remove(c)
            self._retired.append(c)
            self.say(f"t={now:6.2f}s scale down: {c.name} {'SIGKILLed' if f.action.endswith('kill') else 'stopped'}"
                     f" (workers: {self._n_workers()})")
        f.done_at = now

    _retired: list[Child]

    def _defer(self, f: Fault, now: float) -> bool:
        """A redis/broker kill waits until the previous restart is done; a
        scale-down waits (up to 60 s) until every running worker has joined the
        group: a member leaving while another one's join is still in progress has
        been seen to wedge the group on Tansu (no member assigned anything again;
        docs/reliability.md)."""
        if f.action.startswith(("kill-redis", "kill-broker")):
            # a fault drawn while the previous one's restart is pending waits for it
            svc = self.redis if f.action.startswith("kill-redis") else self.broker
            if not svc.alive and now - f.t < 60:
                return True
            if now - f.t > 0.05:
                f.detail["waited_for_restart_s"] = round(now - f.t, 2)
            return False
        if not f.action.startswith("scale-down"):
            return False
        joining = [c for c in self.children if c.role == "worker" and c.alive and not c.ready_file.exists()]
        if joining and now - f.t < 60:
            return True
        f.detail["waited_for_join_s"] = round(now - f.t, 2)
        return False

    def _seqs(self) -> dict[str, dict[str, int]]:
        """Stored ``seq`` of every series' state record and ingest cursor (-1 = none)."""
        import redis

        r = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        try:
            pipe = r.pipeline(transaction=False)
            sids = list(self.ds.n_patches)
            for sid in sids:
                pipe.hget(f"sf:{{{sid}}}:state", "seq")
                pipe.hget(f"sf:{{{sid}}}:ingest", "seq")
            got = pipe.execute()
        finally:
            r.close()
        conv = lambda v: -1 if v is None else int(v)  # noqa: E731
        return {"state": {s: conv(got[2 * i]) for i, s in enumerate(sids)},
                "ingest": {s: conv(got[2 * i + 1]) for i, s in enumerate(sids)}}

    def _sample_aof(self, stop: threading.Event) -> None:
        """Sizes of the live AOF increment file, every 50 ms (for _cut_aof)."""
        d = self.redis.data_dir / "appendonlydir"
        while not stop.wait(0.05):
            try:
                incr = max(d.glob("*.incr.aof"), key=lambda p: int(p.name.split(".")[-3]))
                self._aof_sizes.append((time.monotonic(), incr, incr.stat().st_size))
            except (ValueError, OSError):
                continue

    def _cut_aof(self, lose_s: float) -> int:
        """Truncate the AOF increment file to its size ``lose_s`` seconds ago
        (redis loads a truncated tail: ``aof-load-truncated yes``)."""
        if not self._aof_sizes:
            return 0
        t_cut = time.monotonic() - lose_s
        path = self._aof_sizes[-1][1]
        older = [size for t, p, size in self._aof_sizes if p == path and t <= t_cut]
        size = older[-1] if older else 0
        now_size = path.stat().st_size
        if size >= now_size:
            return 0
        with open(path, "r+b") as fh:
            fh.truncate(size)
        return now_size - size

    def _n_workers(self) -> int:
        return sum(1 for c in self.children if c.role == "worker" and c.alive)

    def _wait_done(self, ds: Dataset) -> None:
        """Until every series' stored state has seq = its last complete patch."""
        import redis

        r = redis.Redis.from_url(self.redis.url)
        sids = list(ds.n_patches)
        want = [ds.n_patches[s] - 1 for s in sids]
        deadline = time.monotonic() + self.o.timeout_s
        last = -1
        try:
            while True:
                for c in self.children:
                    if c.check():
                        self.say(f"{c.name} exited by itself (code {c.unexpected_exits[-1]}); restarted")
                try:
                    pipe = r.pipeline(transaction=False)
                    for s in sids:
                        pipe.hget(f"sf:{{{s}}}:state", "seq")
                    got = [-1 if v is None else int(v) for v in pipe.execute()]
                except redis.RedisError:
                    got = [-1] * len(sids)
                behind = sum(1 for g, w in zip(got, want) if g < w)
                if behind == 0:
                    return
                if behind != last:
                    last = behind
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{behind} of {len(sids)} series not finished after {self.o.timeout_s:.0f} s")
                time.sleep(0.5)
        finally:
            r.close()


def run_scenario(o: ChaosOptions) -> dict[str, Any]:
    run = ChaosRun(o)
    run._retired = []
    return run.run()


# ---------------------------------------------------------------------------- CLI


def format_report(r: dict[str, Any]) -> str:
    lines = [f"scenario {r['scenario']} (seed {r['seed']}): {'PASS' if r['ok'] else 'FAIL'}"
             f" in {r.get('total_s')} s (stream + recovery {r.get('pipeline_s')} s, checks {r.get('verify_s')} s)"]
    if "observations" in r:
        lines += [
            f"  observations {r['observations']} ({r['observations_non_null']} non-null) of {r['series']} series; "
            f"{r['observations_covered_by_patches']} of {r['observations_in_complete_patches']} non-null observations "
            f"of complete patches are in the patches (the rest wait in each series' open patch)",
            f"  observation records {r['observation_records_produced']} produced, "
            f"{r['observation_records_on_topic']} on the topic ({r['observation_records_lost_by_broker']} lost, "
            f"{r.get('observation_records_duplicated_by_broker', 0)} duplicated by producer retries)",
            f"  patches    {r['patches_distinct']} distinct of {r['patches_expected']} expected, "
            f"{r['patch_records']} records, {r['patch_duplicates']} duplicates (identical)",
            f"  forecasts  {r['forecasts_distinct']} distinct of {r['forecasts_expected']} expected, "
            f"{r['forecast_records']} records, {r['forecast_duplicates']} duplicates (identical but produced_at)",
            f"  states     {r['series_identical_to_reference']} of {r['series_with_patches']} series byte-identical "
            f"to the uninterrupted reference",
        ]
    faults = r.get("faults", [])
    lines.append(f"  faults     {len(faults)}:")
    for f in faults:
        extra = ", ".join(f"{k}={v}" for k, v in f.items() if k not in ("t_s", "action"))
        lines.append(f"    t={f['t_s']:7.2f}s {f['action']:<16} {extra}")
    if "dead_letters" in r:
        lines.append(f"  dead letters {sum(r['dead_letters'].values())}: {r['dead_letters']}")
    if r.get("log_counts"):
        lines.append("  from the process logs: " + ", ".join(f"{k}={v}" for k, v in r["log_counts"].items()))
    for p in r["problems"]:
        lines.append(f"  PROBLEM: {p}")
    if r.get("run_dir"):
        lines.append(f"  run dir kept: {r['run_dir']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamflame chaos", description=__doc__.split("\n\n")[0] + (
        " Starts its own broker, redis-server, ingest and worker processes; see docs/reliability.md."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=SCENARIOS + ("all",))
    p.add_argument("--observations", type=int, default=20_000, help="observations in the stream (default 20000)")
    p.add_argument("--series", type=int, default=60, help="series (default 60)")
    p.add_argument("--kills", type=int, default=4,
                   help="faults: process kills (crash), redis or broker kills, or 1->2->1 cycles (rebalance)")
    p.add_argument("--seed", type=int, default=0, help="seed of the input and of the fault moments")
    p.add_argument("--produce-seconds", type=float, default=20.0, help="the stream is produced over this long")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the pipeline to catch up")
    p.add_argument("--model", default="tiny", help="tiny (random ~0.2M-parameter model, default), shipped, or a checkpoint dir")
    p.add_argument("--run-dir", help="keep logs and data here (default: a temporary dir, removed on success)")
    p.add_argument("--keep", action="store_true", help="keep the run dir even on success")
    p.add_argument("--redis-lose-s", type=float, default=1.0, metavar="S",
                   help="redis scenario: after each SIGKILL cut the AOF back to its size S seconds earlier "
                   "(the appendfsync everysec window of a power loss; 0 = plain SIGKILL, default 1.0)")
    p.add_argument("--idempotent-producer", action="store_true",
                   help="kafka.idempotent_producer=true for every producer (Tansu loses acknowledged records "
                   "in flight across a broker restart with it; default false, as `streamflame up`)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.observations < 1 or a.series < 1 or a.kills < 0 or a.produce_seconds <= 0:
        p.error("--observations, --series and --produce-seconds must be > 0, --kills >= 0")

    configure_logging("warning")
    import logging

    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # reconnect chatter while a broker restarts
    reports = []
    for sc in SCENARIOS if a.scenario == "all" else (a.scenario,):
        o = ChaosOptions(sc, a.observations, a.series, a.kills, a.seed, a.partitions, a.produce_seconds, a.timeout,
                         Path(a.run_dir) / sc if a.run_dir else None, a.keep, a.model, a.quiet, a.idempotent_producer, a.redis_lose_s)
        r = run_scenario(o)
        r.update(machine=f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
                 date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 command="streamflame chaos " + " ".join(argv if argv is not None else sys.argv[1:]))
        print(format_report(r), flush=True)
        reports.append(r)
    if a.json:
        Path(a.json).write_text(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    return 0 if all(r["ok"] for r in reports) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
