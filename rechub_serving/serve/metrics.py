"""Prometheus metrics of one server: requests, latency, batches, errors, model generation, live recall.

Each app gets its own registry (several apps can live in one process, as in
tests). With several workers the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` and the
workers share their values through prometheus-client's multiprocess mode, so
a scrape of any worker reports the whole server; gauges then carry a ``pid``
label, one series per live worker.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

__all__ = ["LATENCY_BUCKETS", "ServeMetrics"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServeMetrics:
    """The metric objects of one server and the text exposition of them."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        # In multiprocess mode values live in shared files and are collected from there.
        reg = None if self.multiprocess else self.registry
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=reg, multiprocess_mode="liveall")

        self.requests = Counter(
            "rechub_serve_requests", "HTTP requests by endpoint and status code.", ("endpoint", "status"), registry=reg
        )
        self.latency = Histogram(
            "rechub_serve_request_duration_seconds", "Time from request to response, by endpoint.", ("endpoint",),
            buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.errors = Counter(
            "rechub_serve_errors", "Error responses by endpoint and kind (wrong_type, timeout, ...).",
            ("endpoint", "kind"), registry=reg,
        )  # fmt: skip
        self.batch_users = Histogram(
            "rechub_serve_batch_users", "Users (or vectors) per micro-batch.", ("endpoint",),
            buckets=BATCH_BUCKETS, registry=reg,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "rechub_serve_batch_requests", "Requests per micro-batch.", ("endpoint",), buckets=BATCH_BUCKETS,
            registry=reg,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "rechub_serve_batch_duration_seconds", "Compute time of one micro-batch (tower and index).",
            ("endpoint",), buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "rechub_serve_queue_wait_seconds", "Time a request waited for its batch to start.", ("endpoint",),
            buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.in_flight = gauge("rechub_serve_in_flight_requests", "Requests being handled now.")
        self.generation = gauge("rechub_serve_index_generation", "The model generation serving now (1 at start).")
        self.items = gauge("rechub_serve_index_items", "Items in the serving index.")
        self.model_info = gauge(
            "rechub_serve_model_info", "1 for the serving model: hash, backend and metric as labels.",
            ("model_hash", "backend", "metric"),
        )  # fmt: skip
        self.swaps = Counter(
            "rechub_serve_swaps", "Hot swap attempts by outcome (swapped, refused).", ("outcome",), registry=reg
        )
        self.live_recall = gauge(
            "rechub_serve_live_recall", "Recall@k of served answers against exact search over the recent window."
        )
        self.recall_hits = Counter(
            "rechub_serve_recall_hits", "Served ids that are in the exact top-k (checked users).", registry=reg
        )
        self.recall_relevant = Counter(
            "rechub_serve_recall_relevant", "Exact top-k ids of the checked users (recall denominator).", registry=reg
        )
        self.recall_checked = Counter(
            "rechub_serve_recall_checked_users", "Users answered again by exact search.", registry=reg
        )
        self.recall_dropped = Counter(
            "rechub_serve_recall_dropped", "Sampled requests dropped because the recall queue was full.", registry=reg
        )
        self.live_recall.set(float("nan"))
        self._info_labels: tuple[str, str, str] | None = None

    def set_model(self, generation: int, items: int, model_hash: str | None, backend: str, metric: str) -> None:
        self.generation.set(generation)
        self.items.set(items)
        labels = (model_hash or "", backend, metric)
        if self._info_labels is not None and self._info_labels != labels:
            try:
                self.model_info.remove(*self._info_labels)
            except KeyError:
                pass
        self.model_info.labels(*labels).set(1)
        self._info_labels = labels

    def render(self) -> tuple[bytes, str]:
        """The text exposition format (version 0.0.4) and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    def close(self) -> None:
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())
