"""Prometheus metrics: request counts and latency, queue depth, audio processed, model state.

Each app gets its own :class:`Metrics` with its own CollectorRegistry (nothing is registered
in prometheus_client's global registry), so several apps can live in one process::

    metrics = Metrics(queue_depth=lambda: worker.queue_depth,
                      model_loaded=lambda: worker.state == "ready")
    register(app, metrics)   # GET /metrics, and every request counted and timed

Code that transcribes calls ``metrics_of(current_app).audio_processed(seconds)``; it is a
no-op on an app without metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

# Seconds: health checks take milliseconds, transcriptions of long recordings minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                   300.0, 600.0, 1800.0, math.inf)
EXTENSION = "rapl.metrics"


class Metrics:
    """The metrics of one RAPL app, in a registry of its own."""

    def __init__(self, queue_depth: Callable[[], float] | None = None,
                 model_loaded: Callable[[], bool] | None = None,
                 info: Mapping[str, str] | None = None,
                 buckets: tuple[float, ...] = LATENCY_BUCKETS,
                 live: Callable[[], Mapping[str, float]] | None = None,
                 models: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("rapl_requests", "HTTP requests answered, by endpoint and status code.",
                                ("endpoint", "status"), registry=self.registry)
        self.latency = Histogram("rapl_request_duration_seconds",
                                 "Time from receiving a request to answering it (streams: to their end).",
                                 ("endpoint",), buckets=buckets, registry=self.registry)
        self.audio = Counter("rapl_audio_seconds", "Seconds of audio transcribed.", registry=self.registry)
        self.queue = Gauge("rapl_queue_depth", "Requests waiting for the model (not counting the running one).",
                           registry=self.registry)
        self.loaded = Gauge("rapl_model_loaded", "1 when the model is loaded and ready, else 0.",
                            registry=self.registry)
        if queue_depth is not None:
            self.queue.set_function(_safe(lambda: float(queue_depth())))
        if model_loaded is not None:
            self.loaded.set_function(_safe(lambda: 1.0 if model_loaded() else 0.0))
        if info:
            Info("rapl", "The backend and model this server runs.", registry=self.registry).info(dict(info))
        if live is not None:
            self.registry.register(_LiveCollector(live))
        if models is not None:
            self.registry.register(_ModelsCollector(models))

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and record how long it took."""
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(max(0.0, seconds))

    def audio_processed(self, seconds: float) -> None:
        """Add the duration of a transcribed recording."""
        if seconds > 0:
            self.audio.inc(seconds)

    def render(self) -> bytes:
        """Every metric in the Prometheus text exposition format."""
        return generate_latest(self.registry)


class _LiveCollector:
    """Live dictation sessions, read from the app when scraped: open now, and counts since start."""

    # metric name -> (key in the values read, help)
    GAUGES = {"rapl_realtime_sessions": ("realtime_sessions", "Live dictation sessions (/v1/realtime) open now.")}
    COUNTERS = {
        "rapl_realtime_sessions_opened": ("sessions_opened", "Live dictation sessions opened."),
        "rapl_realtime_sessions_refused": ("sessions_refused", "Live dictation sessions refused "
                                           "(REALTIME_MAX_SESSIONS, or the server was stopping)."),
        "rapl_realtime_sessions_expired": ("sessions_expired", "Live dictation sessions closed at "
                                           "REALTIME_SESSION_MINUTES."),
        "rapl_live_partials": ("partials", "Partial decodes run for live text."),
        "rapl_live_partials_skipped": ("partials_skipped", "Partial decodes replaced by a newer one before they "
                                       "ran (the model was busy)."),
    }

    def __init__(self, read: Callable[[], Mapping[str, float]]) -> None:
        self.read = read

    def collect(self) -> Any:
        """The current values (nothing if the app cannot say)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        try:
            values = self.read()
        except Exception:  # noqa: BLE001 - a scrape never fails
            return
        for name, (key, doc) in self.GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=float(values.get(key, 0)))
        for name, (key, doc) in self.COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=float(values.get(key, 0)))


class _ModelsCollector:
    """Each model of the server (rapl.core.models.Models.describe), labelled by its id, read when scraped."""

    def __init__(self, read: Callable[[], list[dict[str, Any]]]) -> None:
        self.read = read

    def collect(self) -> Any:
        """One sample per model in each family (nothing if the app cannot say)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        try:
            models = self.read()
        except Exception:  # noqa: BLE001 - a scrape never fails
            return
        ready = GaugeMetricFamily("rapl_model_ready", "1 when the model is loaded and ready, by model.",
                                  labels=["model"])
        requests = CounterMetricFamily("rapl_model_requests", "Requests (REST and live sessions) that chose the model.",
                                       labels=["model"])
        load = GaugeMetricFamily("rapl_model_load_seconds", "How long the model's last load took.", labels=["model"])
        idle = GaugeMetricFamily("rapl_model_idle_seconds", "Seconds since a request last chose the model.",
                                 labels=["model"])
        memory = GaugeMetricFamily("rapl_model_memory_bytes", "Resident memory the loaded model's load added.",
                                   labels=["model"])
        for model in models:
            ready.add_metric([model["id"]], 1.0 if model["status"] == "ready" else 0.0)
            requests.add_metric([model["id"]], float(model["requests"]))
            if model["load_seconds"] is not None:
                load.add_metric([model["id"]], float(model["load_seconds"]))
            if model["idle_seconds"] is not None:
                idle.add_metric([model["id"]], float(model["idle_seconds"]))
            if model.get("memory_mb") is not None:
                memory.add_metric([model["id"]], float(model["memory_mb"]) * 1e6)
        yield from (ready, requests, load, idle, memory)


class _NullMetrics:
    """What metrics_of() gives an app without metrics: every call does nothing."""

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        """Do nothing."""

    def audio_processed(self, seconds: float) -> None:
        """Do nothing."""


NULL = _NullMetrics()


def metrics_of(app: Flask) -> Metrics | _NullMetrics:
    """The app's Metrics, or a do-nothing stand-in when none was registered."""
    return app.extensions.get(EXTENSION, NULL)


def _safe(fn: Callable[[], float]) -> Callable[[], float]:
    def read() -> float:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - a broken callback must not break the scrape
            return math.nan

    return read


def register(app: Flask, metrics: Metrics, path: str = "/metrics", track_requests: bool = True) -> None:
    """Serve ``GET path`` from ``metrics`` and, with ``track_requests``, count and time every request.

    Requests are labelled by their URL rule (``/v1/audio/transcriptions``, ``/health``, ...;
    ``unmatched`` for unknown paths); scrapes of ``path`` itself are not counted. A streamed
    response (Server-Sent Events) is timed to its end, when the server closes it. The app's
    API_KEY, if any, guards ``path`` like the other closed endpoints (rapl.http.auth).
    """
    app.extensions[EXTENSION] = metrics
    blueprint = Blueprint("metrics", __name__)

    @blueprint.get(path)
    def _metrics() -> Response:
        return Response(metrics.render(), content_type=CONTENT_TYPE_LATEST)

    app.register_blueprint(blueprint)
    if not track_requests:
        return

    def _start() -> None:
        g.rapl_metrics_started = time.perf_counter()

    def _done(response: Response) -> Response:
        started = g.get("rapl_metrics_started")
        if started is None or request.path == path:
            return response
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        status = response.status_code

        def record() -> None:
            metrics.request_done(endpoint, status, time.perf_counter() - started)

        if response.mimetype == "text/event-stream":
            response.call_on_close(record)  # time the whole stream, not just its headers
        else:
            record()
        return response

    # First of the before_request hooks, so requests that another hook refuses (401) are timed too.
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_done)


__all__ = ["LATENCY_BUCKETS", "Metrics", "metrics_of", "register"]
