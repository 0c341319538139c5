"""Prometheus metrics on an optional loopback HTTP port (`metrics: 127.0.0.1:9464` in the config).

Request counts come from the same per-model statistics V2's ModelStatistics reports (read at scrape time,
so the two always agree); latency histograms and errors by code are recorded per call; loads, unloads by
reason and download bytes are counted from the event bus; queue depth and resident bytes are read at scrape.
"""
from __future__ import annotations

import logging
import threading
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from warmd.catalog import Catalog
from warmd.events import EventBus
from warmd.inference import Inference
from warmd.scheduler import Scheduler

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, catalog: Catalog, scheduler: Scheduler, inference: Inference, bus: EventBus) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("warmd_request_seconds", "Inference latency, admission to result",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("warmd_request_errors", "Failed inference requests by error code",
                              ["model", "code"], registry=self.registry)
        self.loads = Counter("warmd_loads", "Models loaded", ["model"], registry=self.registry)
        self.unloads = Counter("warmd_unloads", "Models unloaded (evicted, expired, requested...) by reason",
                               ["model", "reason"], registry=self.registry)
        self.download_bytes = Counter("warmd_download_bytes", "Bytes of finished downloads", ["model"],
                                      registry=self.registry)
        self.registry.register(_State(catalog, scheduler, inference))
        self._bus = bus
        self._server = None
        self._stop = threading.Event()

    def observe(self, model: str, code: str, seconds: float) -> None:
        """One finished call (`code` "ok" or a warmd error code)."""
        self.latency.labels(model).observe(seconds)
        if code != "ok":
            self.errors.labels(model, code).inc()

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint and the event counter. Returns the port (useful when 0 was asked)."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        sub = self._bus.subscribe(kinds=["model.loaded", "model.unloaded", "job.progress", "download."])
        threading.Thread(target=self._count, args=(sub,), name="metrics-events", daemon=True).start()
        return self._server.server_port

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()

    def _count(self, sub) -> None:  # type: ignore[no-untyped-def]
        downloaded: dict[str, int] = {}          # job -> bytes so far
        while not self._stop.is_set() and not sub.closed:
            event = sub.get(timeout=0.5)
            if event is None:
                continue
            if event.kind == "model.loaded":
                self.loads.labels(event.model).inc()
            elif event.kind == "model.unloaded":
                self.unloads.labels(event.model, event.reason or "request").inc()
            elif event.kind == "job.progress" and event.progress.unit == "bytes":
                downloaded[event.job_id] = event.progress.done
            elif event.kind == "download.finished":
                self.download_bytes.labels(event.model).inc(downloaded.pop(event.job_id, 0))
            elif event.kind == "download.failed":
                downloaded.pop(event.job_id, None)


class _State(Collector):
    """Read at scrape time: request counts (V2's statistics), queue depth, resident bytes."""

    def __init__(self, catalog: Catalog, scheduler: Scheduler, inference: Inference) -> None:
        self.catalog, self.scheduler, self.inference = catalog, scheduler, inference

    def collect(self) -> Iterator:
        requests = CounterMetricFamily("warmd_requests", "Inference requests by outcome (as V2 ModelStatistics)",
                                       labels=["model", "outcome"])
        running = GaugeMetricFamily("warmd_requests_running", "Requests running now", labels=["model"])
        queued = GaugeMetricFamily("warmd_queue_depth", "Requests waiting for a slot", labels=["model"])
        for spec in self.catalog.specs():
            stats = self.inference.stats(spec.name)
            requests.add_metric([spec.name, "success"], stats.success_count)
            requests.add_metric([spec.name, "failure"], stats.fail_count)
            now, waiting = self.inference.queue_depth(spec.name)
            running.add_metric([spec.name], now)
            queued.add_metric([spec.name], waiting)
        resident = GaugeMetricFamily("warmd_resident_bytes", "Bytes held by resident models",
                                     labels=["model", "device", "tier"])
        for r in self.scheduler.resident():
            resident.add_metric([r.spec.name, r.device, r.shown_tier], r.bytes)
        yield from (requests, running, queued, resident)
