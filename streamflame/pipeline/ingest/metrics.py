"""Prometheus metrics of an ingest process (``metrics.port`` /
``STREAMFLAME_METRICS_PORT``), read at scrape time (no work on the hot path) from
an :class:`IngestReadings` (the ingest consumer): its :meth:`~IngestReadings.gauges`
snapshot (:class:`IngestGauges`) and its :class:`IngestHistograms`. This module
knows nothing of the consumer's internals (it imports nothing of streamflame). The
worker's metrics follow the same design (:mod:`streamflame.pipeline.worker.metrics`).

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

from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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


@dataclass(frozen=True)
class IngestGauges:
    """What one scrape reads from the ingest process besides its histograms."""

    counters: dict[str, int]
    series: int                     # series held in memory
    buffered: int                   # observations in open patches and inference buffers
    assigned: int                   # partitions of the observations topic owned
    lag: dict[int, int] = field(default_factory=dict)         # partition -> high-water - next offset
    commit_lag: dict[int, int] = field(default_factory=dict)  # partition -> high-water - committed
    open_episodes: dict[tuple[str, str], int] = field(default_factory=dict)  # (group, kind) -> open


class IngestReadings(Protocol):
    """The ingest side of the metrics: :class:`~streamflame.pipeline.ingest.consumer.IngestConsumer`."""

    histograms: IngestHistograms

    def gauges(self) -> IngestGauges: ...


class IngestCollector:
    def __init__(self, ingest: IngestReadings):
        self.ingest = ingest

    def collect(self):
        g = self.ingest.gauges()
        c = g.counters
        for name in COUNTERS:
            yield CounterMetricFamily(PREFIX + name, name.replace("_", " "), value=c.get(name, 0))
        rej = CounterMetricFamily(PREFIX + "rejected", "rejected observations and messages", labels=["reason"])
        for k, v in sorted(c.items()):
            if k.startswith("rejected."):
                rej.add_metric([k.split(".", 1)[1]], v)
        yield rej
        yield GaugeMetricFamily(PREFIX + "series", "series held in memory", value=g.series)
        yield GaugeMetricFamily(PREFIX + "buffered_observations", "observations in open patches and inference buffers",
                                value=g.buffered)
        yield GaugeMetricFamily(PREFIX + "assigned_partitions", "partitions of the observations topic owned",
                                value=g.assigned)
        lag = GaugeMetricFamily(PREFIX + "lag", "high-water mark minus next offset to read", labels=["partition"])
        clag = GaugeMetricFamily(PREFIX + "commit_lag", "high-water mark minus committed offset", labels=["partition"])
        for p, n in g.lag.items():
            lag.add_metric([str(p)], n)
        for p, n in g.commit_lag.items():
            clag.add_metric([str(p)], n)
        yield lag
        yield clag
        opened = GaugeMetricFamily(PREFIX + "alert_episodes_open", "alert episodes open (series in memory)",
                                   labels=["group", "kind"])
        for (group, kind), n in sorted(g.open_episodes.items()):
            opened.add_metric([group, kind], n)
        yield opened
        yield from self.ingest.histograms.collect()


def serve(ingest: IngestReadings, port: int, host: str = "127.0.0.1") -> int:
    """Serve /metrics on ``host:port`` (0 = any free port) in a daemon thread; returns the port."""
    registry = CollectorRegistry()
    registry.register(IngestCollector(ingest))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server.server_address[1]
