"""Prometheus metrics of one worker process (own registry, so several in-process
workers in one test do not collide).

Latency metrics, both in seconds:

* ``streamflame_worker_patch_latency_seconds``: wall clock at publication minus
  the Kafka timestamp of the patch record (when ingest sent it): queueing in
  the patches topic + batching + compute + publish. Always meaningful.
* ``streamflame_worker_e2e_latency_seconds``: wall clock at publication minus
  the patch's ``last_obs_ms`` (timestamp of the last real observation). It is
  only meaningful for live data whose timestamps follow the wall clock, so it
  is observed only when that difference lies in [0, 1 h]; replays of
  historical data do not feed it.

Consumer lag per partition uses the high-water mark returned with fetched
records (Tansu's ``end_offsets()`` under-reports).

Online accuracy, per series group (definitions in
:mod:`streamflame.pipeline.worker.accuracy` and docs/architecture.md):

* counters (exact sums since the process started; rate them in Prometheus for
  any window, and sum them over workers): ``online_scored_patches_total``,
  ``online_scored_points_total``, ``online_quantile_loss_total`` (sum of
  pinball losses / Q), ``online_abs_target_total`` (sum |y|),
  ``online_scaled_error_total`` / ``online_scaled_points_total`` (MASE),
  ``online_inside_total{level}`` (targets inside the central interval of
  nominal coverage ``level``);
* gauges (exponentially weighted over the group's scored patches, half-life
  ``worker.accuracy_halflife_patches``): ``online_wql``, ``online_mase``,
  ``online_coverage{level}``.
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LIVE_WINDOW_S = 3600.0


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "streamflame_worker_"
        self.patches = Counter(p + "patches", "Patches by outcome (applied, skipped, gap, quarantined, bad)",
                               ["outcome"], registry=r)
        self.forecasts = Counter(p + "forecasts_published", "Forecast messages published", registry=r)
        self.alerts = Counter(p + "alerts_published", "Alert messages published", registry=r)
        self.dead_letters = Counter(p + "dead_letters", "Messages sent to the DLQ, by reason", ["reason"], registry=r)
        self.state_writes = Counter(p + "state_writes", "State CAS writes by result (applied, stale, conflict, gap, blocked)",
                                    ["result"], registry=r)
        self.state_cache = Counter(p + "state_cache_lookups", "Series records looked up in the worker's cache of its "
                                   "own applied writes, by result (hit: no Redis read; miss: read from Redis)",
                                   ["result"], registry=r)
        self.rewinds = Counter(p + "rewinds", "Partition rewinds to re-read patches (gap or write conflict)", registry=r)
        self.batch_size = Histogram(p + "batch_size", "Patches per batch",
                                    buckets=(1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192), registry=r)
        self.step_seconds = Histogram(p + "step_seconds", "Model time per batch (update_many + forecast_many)",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.redis_seconds = Histogram(p + "redis_seconds", "Redis round trip per batch", ["op"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.publish_seconds = Histogram(p + "publish_seconds", "Produce + flush per batch",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.patch_latency = Histogram(p + "patch_latency_seconds", "Publication time minus patch record timestamp",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e_latency = Histogram(p + "e2e_latency_seconds",
                                     "Publication time minus last observation timestamp (live data only)",
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.state_bytes = Gauge(p + "state_record_bytes", "Mean stored record size (state + meta) in the last batch",
                                 registry=r)
        self.lag = Gauge(p + "consumer_lag", "Patches not yet consumed, per partition", ["partition"], registry=r)
        self.records = Counter(p + "records", "Patch records consumed", registry=r)
        self.batches = Counter(p + "batches", "Batches handled", registry=r)
        self.batch_seconds = Histogram(p + "batch_seconds", "Wall time per batch (load, compute, publish, write, commit)",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        # Online accuracy (see the module docstring).
        g = ["group"]
        self.acc_patches = Counter(p + "online_scored_patches", "Patches scored against the previous forecast", g,
                                   registry=r)
        self.acc_points = Counter(p + "online_scored_points", "Observed values scored against the previous forecast",
                                  g, registry=r)
        self.acc_ql = Counter(p + "online_quantile_loss", "Sum of pinball losses over levels / number of levels", g,
                              registry=r)
        self.acc_abs = Counter(p + "online_abs_target", "Sum of |observed value| of scored points", g, registry=r)
        self.acc_scaled = Counter(p + "online_scaled_error", "Sum of |value - mean forecast| / naive scale", g,
                                  registry=r)
        self.acc_scaled_points = Counter(p + "online_scaled_points", "Scored points with a naive scale", g, registry=r)
        self.acc_inside = Counter(p + "online_inside", "Scored points inside the central interval of nominal coverage",
                                  ["group", "level"], registry=r)
        self.online_wql = Gauge(p + "online_wql", "Online weighted quantile loss (exponentially weighted)", g,
                                registry=r)
        self.online_mase = Gauge(p + "online_mase", "Online MASE of the mean forecast, naive scale (exp. weighted)", g,
                                 registry=r)
        self.online_coverage = Gauge(p + "online_coverage", "Online central-interval coverage (exp. weighted)",
                                     ["group", "level"], registry=r)

    def observe_batch(self, b, res, save, out, redis_load_s: float, total_s: float, accuracy) -> None:
        """One batch whose outcome is seen: ``b`` the batch read (records, bad ones), ``res`` its
        :class:`~streamflame.pipeline.worker.batch.BatchResult`, ``save`` / ``out`` what the
        publisher applied and how long it took; ``accuracy`` the worker's ``OnlineAccuracy``."""
        m = self
        m.batch_size.observe(len(b))
        m.step_seconds.observe(res.step_s + res.forecast_s)
        m.redis_seconds.labels("load").observe(redis_load_s)
        m.redis_seconds.labels("save").observe(out.save_s)
        m.publish_seconds.observe(out.publish_s)
        m.forecasts.inc(len(res.forecasts))
        m.alerts.inc(len(res.alerts))
        for rej in res.rejected:
            m.dead_letters.labels(rej.reason).inc()
        if b.bad:
            m.dead_letters.labels("bad_patch").inc(len(b.bad))
        m.patches.labels("applied").inc(res.applied)
        m.patches.labels("skipped").inc(res.skipped)
        m.patches.labels("bad").inc(len(b.bad))
        m.records.inc(len(b))
        m.batches.inc()
        m.batch_seconds.observe(total_s)
        # Online accuracy of the patches whose state write was applied: a replayed
        # or refused write (another worker's, or our own earlier one) is not counted.
        if res.scores:
            m.observe_scores([s for sid in save.applied for s in res.scores.get(sid, ())], accuracy)
        for outcome, n in (("applied", len(save.applied)), ("stale", len(save.stale)),
                           ("conflict", len(save.conflict)), ("gap", len(save.gap)),
                           ("blocked", len(save.blocked))):
            if n:
                m.state_writes.labels(outcome).inc(n)
        if res.records:
            m.state_bytes.set(sum(r.nbytes for r in res.records.values()) / len(res.records))
        done_s = time.time()
        for r in b.records:
            if r.timestamp_ms >= 0:
                m.patch_latency.observe(max(0.0, done_s - r.timestamp_ms / 1000))
            lag = done_s - r.patch.last_obs_ms / 1000
            if 0.0 <= lag <= LIVE_WINDOW_S:
                m.e2e_latency.observe(lag)

    def observe_scores(self, scores, accuracy) -> None:
        """Add applied patches' :class:`~streamflame.pipeline.worker.accuracy.PatchScore` s to the
        counters and to ``accuracy`` (an ``OnlineAccuracy``), then refresh the gauges."""
        groups: dict[str, tuple] = {}  # group -> its labelled counters (looked up once per batch)
        inside: dict[tuple, object] = {}
        for s in scores:
            g = s.group
            c = groups.get(g)
            if c is None:
                c = groups[g] = tuple(m.labels(g) for m in (self.acc_patches, self.acc_points, self.acc_ql,
                                                            self.acc_abs, self.acc_scaled, self.acc_scaled_points))
            c[0].inc()
            c[1].inc(s.points)
            c[2].inc(s.ql)
            c[3].inc(s.abs_y)
            c[4].inc(s.scaled_err)
            c[5].inc(s.scaled_points)
            for level, n in s.inside.items():
                child = inside.get((g, level))
                if child is None:
                    child = inside[(g, level)] = self.acc_inside.labels(g, level)
                child.inc(n)
            accuracy.add(s)
        for g in groups:
            snap = accuracy.snapshot(g)
            self.online_wql.labels(g).set(snap["wql"])
            self.online_mase.labels(g).set(snap["mase"])
            for level, x in snap["coverage"].items():
                self.online_coverage.labels(g, level).set(x)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the HTTP exporter; returns the bound port (``port=0`` picks one)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.server_address[1]
