"""The single model thread: loads the backend, then runs transcriptions one at a time, FIFO."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from config import Settings

from .backends import Backend
from .errors import APIError
from .vad import Segmenter

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelWorker:
    """Owns the backend and the one-thread executor that alone touches the model."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.segmenter = Segmenter(settings)
        self.settings = settings
        self.state = "loading"
        self.error: str | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rapl-model")
        self._lock = threading.Lock()
        self._waiting = 0
        self._tickets = 0  # arrival order, checked when each job starts
        self._last_started = 0
        self.running = False  # a job is on the model now
        self.counters = {"completed": 0, "failed": 0, "rejected_busy": 0,
                         "dropped_disconnected": 0, "timed_out": 0, "out_of_order": 0, "unloads": 0}
        self._last_used = time.monotonic()
        self._stop = threading.Event()
        self.loaded = self.executor.submit(self._load)
        if settings.MODEL_IDLE_UNLOAD:
            threading.Thread(target=self._watch_idle, name="rapl-idle", daemon=True).start()

    def _load(self) -> None:
        started = time.perf_counter()
        log.info("loading %s model %s", self.backend.name, self.backend.model)
        try:
            self.backend.load()
            self.segmenter.load()
        except BaseException as exc:  # noqa: BLE001 - the server stays up and reports it
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            log.error("could not load model %s: %s", self.backend.model, self.error)
            return
        self._last_used = time.monotonic()
        self.state = "ready"
        log.info("model %s ready in %.1f s", self.backend.model, time.perf_counter() - started)

    def _idle(self) -> bool:
        return (self.state == "ready" and not self.running and self._waiting == 0
                and time.monotonic() - self._last_used >= self.settings.MODEL_IDLE_UNLOAD)

    def _watch_idle(self) -> None:
        interval = min(max(self.settings.MODEL_IDLE_UNLOAD / 4, 0.05), 5.0)
        while not self._stop.wait(interval):
            with self._lock:
                if self._idle():
                    self.executor.submit(self._unload)

    def _unload(self) -> None:
        with self._lock:
            if not self._idle():  # a request came in meanwhile
                return
            self.state = "unloading"
        from .backends import free_memory

        self.backend.unload()
        free_memory()
        with self._lock:
            self.counters["unloads"] += 1
            if self.state == "unloading":  # else a request has already queued the reload
                self.state = "unloaded"
        log.info("model %s unloaded after %d s idle; the next request reloads it",
                 self.backend.model, self.settings.MODEL_IDLE_UNLOAD)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model (not counting the one running)."""
        return self._waiting

    def unavailable(self) -> APIError:
        """The 503 a request gets while the model failed to load."""
        return APIError(f"The model {self.backend.model} could not be loaded ({self.error}). "
                        "Check the server log; if the machine is offline, point LOCAL_MODEL at a "
                        "local model directory or a model already in the cache, then restart.",
                        503, code="model_unavailable")

    def submit(self, fn: Callable[[], T], connected: Callable[[], bool] | None = None) -> Future[T]:
        """Queue ``fn`` for the model thread, or raise 429 when MAX_QUEUE requests already wait."""
        with self._lock:
            if self._waiting >= self.settings.MAX_QUEUE:
                self.counters["rejected_busy"] += 1
                raise APIError(f"The server is busy: {self._waiting} requests are waiting for the "
                               "model. Retry shortly.", 429, code="server_busy",
                               headers={"Retry-After": "1"})
            self._waiting += 1
            self._tickets += 1
            try:
                if self.state in ("unloading", "unloaded"):  # idle unload: reload first, FIFO puts it ahead
                    self.state = "loading"
                    self.executor.submit(self._load)
                return self.executor.submit(self._run, fn, self._tickets, time.monotonic(), connected)
            except RuntimeError:  # the executor was shut down: the server is stopping
                self._waiting -= 1
                raise APIError("The server is shutting down.", 503, code="shutting_down") from None

    def withdraw(self, future: Future[Any]) -> bool:
        """Take a queued job back before it starts; False if it is already running or done."""
        if not future.cancel():
            return False
        with self._lock:
            self._waiting -= 1
        return True

    def _run(self, fn: Callable[[], T], ticket: int, queued_at: float, connected: Callable[[], bool] | None) -> T:
        with self._lock:
            self._waiting -= 1
            if ticket < self._last_started:
                self.counters["out_of_order"] += 1
            self._last_started = ticket
        if self.state == "failed":
            raise self.unavailable()
        if connected is not None and not connected():
            self.counters["dropped_disconnected"] += 1
            log.info("client went away while queued; skipped")
            raise APIError("Client disconnected.", 499, code="client_closed_request")
        if time.monotonic() - queued_at > self.settings.REQUEST_TIMEOUT:
            self.counters["timed_out"] += 1
            raise APIError(f"The request waited longer than {self.settings.REQUEST_TIMEOUT} s "
                           "(REQUEST_TIMEOUT) for the model.", 504, code="timeout")
        self.running = True
        try:
            result = fn()
        except APIError:
            raise
        except Exception:
            self.counters["failed"] += 1
            raise
        finally:
            self.running = False
            self._last_used = time.monotonic()
        self.counters["completed"] += 1
        return result

    def health(self) -> dict[str, Any]:
        """What /health reports."""
        body: dict[str, Any] = {"status": self.state, "backend": self.backend.name,
                                "model": self.backend.model, "queue_depth": self._waiting, "busy": self.running,
                                **self.counters}
        if self.error:
            body["error"] = self.error
        return body

    def shutdown(self) -> None:
        """Finish the running job, drop the queued ones, stop the threads."""
        self._stop.set()
        self.executor.shutdown(wait=True, cancel_futures=True)
