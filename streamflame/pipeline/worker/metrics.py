"""Prometheus metrics of one worker process (own registry, so several in-process
workers in one test do not collide). The same design as ingest's
(:mod:`streamflame.pipeline.ingest.metrics`): counters and gauges are plain values the
service keeps (here :attr:`WorkerMetrics.totals`, the lag per partition, the last
batch's record size, the worker's ``OnlineAccuracy``), read at scrape time by a
collector; histograms are observed as their events happen (once per batch).

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
from collections import Counter as Totals

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "streamflame_worker_"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LIVE_WINDOW_S = 3600.0

COUNTERS: dict[str, tuple[tuple[str, ...], str]] = {
    # name (without prefix and _total) -> (label names, help)
    "records": ((), "Patch records consumed"),
    "batches": ((), "Batches handled"),
    "forecasts_published": ((), "Forecast messages published"),
    "alerts_published": ((), "Alert messages published"),
    "rewinds": ((), "Partition rewinds to re-read patches (gap or write conflict)"),
    "patches": (("outcome",), "Patches by outcome (applied, skipped, gap, quarantined, bad)"),
    "dead_letters": (("reason",), "Messages sent to the DLQ, by reason"),
    "state_writes": (("result",), "State CAS writes by result (applied, stale, conflict, gap, blocked)"),
    "state_cache_lookups": (("result",), "Series records looked up in the worker's cache of its own applied "
                                         "writes, by result (hit: no Redis read; miss: read from Redis)"),
    "online_scored_patches": (("group",), "Patches scored against the previous forecast"),
    "online_scored_points": (("group",), "Observed values scored against the previous forecast"),
    "online_quantile_loss": (("group",), "Sum of pinball losses over levels / number of levels"),
    "online_abs_target": (("group",), "Sum of |observed value| of scored points"),
    "online_scaled_error": (("group",), "Sum of |value - mean forecast| / naive scale"),
    "online_scaled_points": (("group",), "Scored points with a naive scale"),
    "online_inside": (("group", "level"), "Scored points inside the central interval of nominal coverage"),
}
"""The worker's counters: their totals are kept in :attr:`WorkerMetrics.totals`, keyed
``(name, label values)``, and read at scrape time."""


class WorkerMetrics:
    """What one worker process exposes: ``totals`` (:data:`COUNTERS`), ``lag`` (partition ->
    patches not yet consumed), ``state_bytes`` and the online accuracy gauges of
    ``accuracy`` (the worker's ``OnlineAccuracy``, attached by the worker), plus the
    per-batch histograms; ``registry`` serves them all."""

    def __init__(self) -> None:
        self.totals: Totals = Totals()   # (name, label values) -> running total
        self.lag: dict[int, int] = {}
        self.state_bytes = 0.0           # mean stored record size (state + meta) in the last batch
        self.accuracy = None             # OnlineAccuracy; its groups' ratios are the online_* gauges
        r = self.registry = CollectorRegistry()
        p = PREFIX
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
        self.batch_seconds = Histogram(p + "batch_seconds", "Wall time per batch (load, compute, publish, write, commit)",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        r.register(_WorkerCollector(self))

    def count(self, name: str, n: float = 1, *labels: str) -> None:
        """Add ``n`` to counter ``name`` (of :data:`COUNTERS`) at ``labels`` (the series appears even for 0)."""
        self.totals[(name, labels)] += n

    def observe_batch(self, b, res, save, out, redis_load_s: float, total_s: float) -> None:
        """One batch whose outcome is seen: ``b`` the batch read (records, bad ones), ``res`` its
        :class:`~streamflame.pipeline.worker.batch.BatchResult`, ``save`` / ``out`` what the
        publisher applied and how long it took."""
        self.batch_size.observe(len(b))
        self.step_seconds.observe(res.step_s + res.forecast_s)
        self.redis_seconds.labels("load").observe(redis_load_s)
        self.redis_seconds.labels("save").observe(out.save_s)
        self.publish_seconds.observe(out.publish_s)
        count = self.count
        count("forecasts_published", len(res.forecasts))
        count("alerts_published", len(res.alerts))
        for rej in res.rejected:
            count("dead_letters", 1, rej.reason)
        if b.bad:
            count("dead_letters", len(b.bad), "bad_patch")
        count("patches", res.applied, "applied")
        count("patches", res.skipped, "skipped")
        count("patches", len(b.bad), "bad")
        count("records", len(b))
        count("batches")
        self.batch_seconds.observe(total_s)
        # Online accuracy of the patches whose state write was applied: a replayed
        # or refused write (another worker's, or our own earlier one) is not counted.
        if res.scores:
            self.observe_scores([s for sid in save.applied for s in res.scores.get(sid, ())])
        for outcome, n in (("applied", len(save.applied)), ("stale", len(save.stale)),
                           ("conflict", len(save.conflict)), ("gap", len(save.gap)),
                           ("blocked", len(save.blocked))):
            if n:
                count("state_writes", n, outcome)
        if res.records:
            self.state_bytes = sum(r.nbytes for r in res.records.values()) / len(res.records)
        done_s = time.time()
        for r in b.records:
            if r.timestamp_ms >= 0:
                self.patch_latency.observe(max(0.0, done_s - r.timestamp_ms / 1000))
            lag = done_s - r.patch.last_obs_ms / 1000
            if 0.0 <= lag <= LIVE_WINDOW_S:
                self.e2e_latency.observe(lag)

    def observe_scores(self, scores) -> None:
        """Add applied patches' :class:`~streamflame.pipeline.worker.accuracy.PatchScore` s to the
        counters and to ``accuracy`` (the online_* gauges read it at scrape time)."""
        t = self.totals
        for s in scores:
            g = (s.group,)
            t[("online_scored_patches", g)] += 1
            t[("online_scored_points", g)] += s.points
            t[("online_quantile_loss", g)] += s.ql
            t[("online_abs_target", g)] += s.abs_y
            t[("online_scaled_error", g)] += s.scaled_err
            t[("online_scaled_points", g)] += s.scaled_points
            for level, n in s.inside.items():
                t[("online_inside", (s.group, level))] += n
            self.accuracy.add(s)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the HTTP exporter; returns the bound port (``port=0`` picks one)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.server_address[1]


class _WorkerCollector:
    """Counters and gauges of a :class:`WorkerMetrics`, read at scrape time."""

    def __init__(self, m: WorkerMetrics):
        self.m = m

    def collect(self):
        m = self.m
        totals = dict(m.totals)  # one copy: the worker's thread keeps counting
        for name, (labels, doc) in COUNTERS.items():
            fam = CounterMetricFamily(PREFIX + name, doc, labels=labels or None)
            if not labels:
                fam.add_metric([], totals.get((name, ()), 0))
            for (n, values), v in sorted(totals.items()):
                if n == name and labels:
                    fam.add_metric(list(values), v)
            yield fam
        yield GaugeMetricFamily(PREFIX + "state_record_bytes", "Mean stored record size (state + meta) in the last "
                                "batch", value=m.state_bytes)
        lag = GaugeMetricFamily(PREFIX + "consumer_lag", "Patches not yet consumed, per partition", labels=["partition"])
        for p, n in sorted(dict(m.lag).items()):
            lag.add_metric([str(p)], n)
        yield lag
        yield from self._accuracy()

    def _accuracy(self):
        wql = GaugeMetricFamily(PREFIX + "online_wql", "Online weighted quantile loss (exponentially weighted)",
                                labels=["group"])
        mase = GaugeMetricFamily(PREFIX + "online_mase", "Online MASE of the mean forecast, naive scale "
                                 "(exp. weighted)", labels=["group"])
        cov = GaugeMetricFamily(PREFIX + "online_coverage", "Online central-interval coverage (exp. weighted)",
                                labels=["group", "level"])
        acc = self.m.accuracy
        for g in sorted(dict(acc.groups) if acc is not None else ()):
            snap = acc.snapshot(g)
            wql.add_metric([g], snap["wql"])
            mase.add_metric([g], snap["mase"])
            for level, x in snap["coverage"].items():
                cov.add_metric([g, level], x)
        yield from (wql, mase, cov)
