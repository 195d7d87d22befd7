"""Prometheus metrics of an ingest process (``metrics.port`` /
``STREAMFLAME_METRICS_PORT``), read from :attr:`IngestConsumer.counters` at
scrape time (no work on the hot path).

Exposed (prefix ``streamflame_ingest_``): ``records_total``,
``observations_total``, ``accepted_total``, ``skipped_total``,
``rejected_total{reason}``, ``dead_letters_total``, ``patches_total``,
``cursor_writes_total``, ``cursor_refused_total``, ``commits_total``,
``retries_total``, ``spilled_total``, ``evicted_total``; gauges ``series``
(in memory), ``buffered_observations``, ``assigned_partitions`` and, per
partition, ``lag`` (high-water mark - next offset to read) and ``commit_lag``
(high-water mark - committed offset). Histograms (:class:`IngestHistograms`,
observed once per batch): ``batch_records`` (records per poll batch),
``batch_seconds`` (time to handle a batch: decode, assemble, publish, cursor
writes) and ``redis_seconds{op=load|save}`` (cursor round trips). Alerts:
``alert_events_total`` (episode events published) and the gauge
``alert_episodes_open{group,kind}`` (episodes open among the series in memory).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:  # pragma: no cover
    from streamflame.ingest.consumer import IngestConsumer

PREFIX = "streamflame_ingest_"
COUNTERS = ("records", "observations", "accepted", "skipped", "dead_letters", "patches", "cursor_writes",
            "cursor_refused", "commits", "commit_errors", "retries", "spilled", "evicted", "series_new",
            "batches", "poll_errors", "alert_events")


_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IngestHistograms:
    """Per-batch histograms of one ingest process (unregistered; exported by
    :class:`IngestCollector`)."""

    def __init__(self) -> None:
        self.batch_records = Histogram(PREFIX + "batch_records", "records per poll batch", registry=None,
                                       buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000))
        self.batch_seconds = Histogram(PREFIX + "batch_seconds", "time to handle one poll batch", registry=None,
                                       buckets=_SECONDS)
        self.redis_seconds = Histogram(PREFIX + "redis_seconds", "Redis cursor round trip", ["op"], registry=None,
                                       buckets=_SECONDS)

    def collect(self):
        for h in (self.batch_records, self.batch_seconds, self.redis_seconds):
            yield from h.collect()


class IngestCollector:
    def __init__(self, ingest: "IngestConsumer"):
        self.ingest = ingest

    def collect(self):
        ing = self.ingest
        c = dict(ing.counters)
        for name in COUNTERS:
            yield CounterMetricFamily(PREFIX + name, name.replace("_", " "), value=c.get(name, 0))
        rej = CounterMetricFamily(PREFIX + "rejected", "rejected observations and messages", labels=["reason"])
        for k, v in sorted(c.items()):
            if k.startswith("rejected."):
                rej.add_metric([k.split(".", 1)[1]], v)
        yield rej
        yield GaugeMetricFamily(PREFIX + "series", "series held in memory", value=len(ing.assemblers))
        yield GaugeMetricFamily(PREFIX + "buffered_observations", "observations in open patches and inference buffers",
                                value=sum(a.buffered for a in list(ing.assemblers.values())))
        yield GaugeMetricFamily(PREFIX + "assigned_partitions", "partitions of the observations topic owned",
                                value=len(ing.assigned))
        lag = GaugeMetricFamily(PREFIX + "lag", "high-water mark minus next offset to read", labels=["partition"])
        clag = GaugeMetricFamily(PREFIX + "commit_lag", "high-water mark minus committed offset", labels=["partition"])
        for p, hw in ing.highwaters().items():
            if p in ing.next_offset:
                lag.add_metric([str(p)], max(0, hw - ing.next_offset[p]))
            if p in ing.committed:
                clag.add_metric([str(p)], max(0, hw - ing.committed[p]))
        yield lag
        yield clag
        opened = GaugeMetricFamily(PREFIX + "alert_episodes_open", "alert episodes open (series in memory)",
                                   labels=["group", "kind"])
        for (group, kind), n in sorted(ing.open_episodes().items()):
            opened.add_metric([group, kind], n)
        yield opened
        yield from ing.histograms.collect()


def serve(ingest: "IngestConsumer", port: int, host: str = "127.0.0.1") -> int:
    """Serve /metrics on ``host:port`` (0 = any free port) in a daemon thread; returns the port."""
    registry = CollectorRegistry()
    registry.register(IngestCollector(ingest))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server.server_address[1]
