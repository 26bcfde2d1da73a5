"""Prometheus metrics of one app instance, on its own registry so several apps can live in a process."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCHES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("vqp_requests", "HTTP requests by route and status", ["route", "method", "status"], registry=r)
        self.latency = Histogram("vqp_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY, registry=r)
        self.stage = Histogram("vqp_stage_seconds", "Time per pipeline stage of image requests", ["stage"],
                               buckets=LATENCY, registry=r)
        self.batch_size = Histogram("vqp_detect_batch_size", "Frames per detector call", buckets=BATCHES, registry=r)
        self.batch_seconds = Histogram("vqp_detect_batch_seconds", "Detector call duration", buckets=LATENCY, registry=r)
        self.queue_wait = Histogram("vqp_detect_queue_wait_seconds", "Time a frame waits for its batch", buckets=LATENCY,
                                    registry=r)
        self.queue_depth = Gauge("vqp_detect_queue_depth", "Places in the detection queue taken (reserved or queued)",
                                 registry=r)
        self.admitted = Gauge("vqp_stage_admitted", "Requests holding a place in a CPU stage (waiting or running)",
                              ["stage"], registry=r)
        self.rejected = Counter("vqp_rejected", "Requests refused before work started", ["reason"], registry=r)
        self.deadline = Counter("vqp_deadline_exceeded", "Requests answered 504: the client's deadline passed",
                                ["route"], registry=r)

    def watch_jobs(self, counts) -> None:
        """Export job counts by state; ``counts()`` returns {state: n} (read at scrape time)."""
        class Jobs:
            def collect(self):
                g = GaugeMetricFamily("vqp_jobs", "Video jobs by state", labels=["state"])
                for state, n in counts().items():
                    g.add_metric([state], n)
                yield g

        self.registry.register(Jobs())

    def render(self) -> bytes:
        return generate_latest(self.registry)
