"""The single model thread: loads the backend, then runs transcriptions one at a time, FIFO.

Live sessions' partial decodes (rapl.http.live) are a second, low-priority lane on the same thread:
one queued partial per session at most (a newer one replaces it), taken in turn across sessions,
and only when no request or final transcription waits.

The heap keeps what the model frees for the next request (rapl.core.heap). A watcher thread looks
after idle time: it unloads the model after MODEL_IDLE_UNLOAD seconds, and once the model has
been idle for TRIM_AFTER_SECONDS after a long transcription (over TRIM_AUDIO_SECONDS) or a large
upload it has the model thread hand the kept memory back to the system, never on a request's
path. Dictation clips and files of a few minutes keep theirs: the next request reuses it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..audio.vad import Segmenter
from ..backends import Backend, Capabilities, public_name
from ..backends.store import looks_like_path
from ..errors import APIError, Busy, ClientGone, RaplError, TimedOut, Unavailable
from ..settings import Settings
from ..transcript.transcription import Options
from . import heap
from .pipeline import check_options

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_RETRY_SECONDS = 600
TRIM_AFTER_SECONDS = 1.0  # idle time after a long transcription before its freed memory goes back
TRIM_AUDIO_SECONDS = 120  # a transcription longer than this (7.7 MB of decoded audio) is trimmed after
_WATCH_SECONDS = 0.25  # how often the watcher looks
_OFFLINE_HINTS = ("connection", "network", "timeout", "resolve", "maxretry", "proxy", "ssl", "localentrynotfound",
                  "offline", "unreachable", "name or service not known", "temporary failure")


def failure_message(backend: Backend, exc: BaseException) -> str:
    """What failed and how to fix it, in words a user can act on (the library's detail comes after)."""
    model = backend.model
    path = Path(model).expanduser()
    if not path.is_dir() and looks_like_path(model):
        return (f"The {backend.name} model {model} could not be loaded: there is no such directory. Fix: set "
                f"LOCAL_MODEL to a model directory for BACKEND={backend.name}, or to a {backend.hub} model id.")
    if path.is_dir():
        return (f"The {backend.name} model in {model} could not be loaded. Fix: check that LOCAL_MODEL points at a "
                f"complete model directory for BACKEND={backend.name}.")
    hub = backend.hub
    fix = ("Fix: set LOCAL_MODEL to a local model directory, or start RAPL once with internet access so the "
           "model is cached (`python -m rapl models` lists what is cached).")
    if _looks_offline(exc):
        return f"The {backend.name} model {model} is not cached here and could not be downloaded from {hub}. {fix}"
    return f"The {backend.name} model {model} could not be loaded (from the cache or {hub}). {fix}"


def _looks_offline(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        text = f"{type(exc).__name__} {exc}".lower()
        if any(hint in text for hint in _OFFLINE_HINTS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class ModelWorker:
    """Owns the backend and the one-thread executor that alone touches the model."""

    def __init__(self, backend: Backend, settings: Settings, executor: ThreadPoolExecutor | None = None) -> None:
        self.backend = backend
        self.segmenter = Segmenter(settings)
        self.settings = settings
        self.state = "loading"
        self.capabilities = Capabilities()  # what the loaded model can do (set by each load)
        self.error: str | None = None  # the library's own words, when loading failed
        self.problem = ""  # what failed and what to do, when loading failed
        self.load_seconds: float | None = None  # how long the last load took
        self.memory_bytes: int | None = None  # resident memory the last load added (None: not measured)
        self.freed_bytes: int | None = None  # resident memory the last unload gave back
        self._failures = 0
        self._retry_at = 0.0
        # the one model thread; with several models (rapl.core.models) they all share one
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="rapl-model")
        self.waiting_everywhere: Callable[[], int] = lambda: self._waiting  # MAX_QUEUE counts all models
        self._lock = threading.Lock()
        self._waiting = 0
        self._tickets = 0  # arrival order, checked when each job starts
        self._last_started = 0
        self.running = False  # a job is on the model now
        self.counters = {"completed": 0, "failed": 0, "rejected_busy": 0,
                         "dropped_disconnected": 0, "timed_out": 0, "out_of_order": 0, "unloads": 0,
                         "heap_trims": 0, "partials": 0, "partials_skipped": 0}
        self._trim_due = False  # a long job ran since the last trim
        self._last_used = time.monotonic()
        self._stop = threading.Event()
        self.loaded: Future[None] | None = None  # the model's load, once start() has begun it
        self._partials: dict[Hashable, tuple[Callable[[], Any], Future[Any]]] = {}  # FIFO, one per key
        self._slots = 0  # turns queued on the executor for the partial lane
        self._unloads_queued = 0  # unloads asked for (unload_soon) that the model thread has not begun

    def start(self) -> None:
        """Begin loading the model on the model thread (and watching for idle time); once only."""
        with self._lock:
            if self.loaded is not None:
                return
            heap.keep_freed()  # before the model allocates anything
            self.loaded = self.executor.submit(self._load)
        threading.Thread(target=self._watch_idle, name="rapl-idle", daemon=True).start()

    def _load(self) -> None:
        started = time.perf_counter()
        before = resident_bytes()  # on the model thread: nothing else loads or runs meanwhile
        log.info("loading %s model %s", self.backend.name, self.backend.model)
        try:
            self.capabilities = self.backend.load()
            self.segmenter.load()
        except BaseException as exc:  # noqa: BLE001 - the server stays up and reports it
            self._failed(exc)
            return
        self._last_used = time.monotonic()
        self.state = "ready"
        self.error = None
        self._failures = 0
        self.load_seconds = round(time.perf_counter() - started, 2)
        after = resident_bytes()
        self.memory_bytes = max(0, after - before) if after is not None and before is not None else None
        log.info("model %s ready in %.1f s%s", self.backend.model, self.load_seconds,
                 f", {self.memory_bytes / 1e6:.0f} MB resident" if self.memory_bytes is not None else "")

    def _idle(self, seconds: float | None = None) -> bool:
        """Loaded, nothing running or waiting, and no job for ``seconds`` (MODEL_IDLE_UNLOAD)."""
        seconds = self.settings.MODEL_IDLE_UNLOAD if seconds is None else seconds
        return (self.state == "ready" and not self.running and self._waiting == 0
                and time.monotonic() - self._last_used >= seconds)

    def _watch_idle(self) -> None:
        unload = self.settings.MODEL_IDLE_UNLOAD
        interval = min(max(unload / 4, 0.05), _WATCH_SECONDS) if unload else _WATCH_SECONDS
        while not self._stop.wait(interval):
            with self._lock:
                try:
                    if unload and self._idle():
                        self.executor.submit(self._unload)
                    elif self._trim_due and self._idle(TRIM_AFTER_SECONDS):
                        self._trim_due = False
                        self.executor.submit(self._trim)
                except RuntimeError:  # the executor was shut down: the server is stopping
                    return

    def trim_when_idle(self) -> None:
        """Hand the heap's kept memory back once the model is next idle for TRIM_AFTER_SECONDS (a large
        upload was read, say); nothing is trimmed while requests keep coming."""
        self._trim_due = True

    def _trim(self) -> None:
        """On the model thread, so it never runs beside a transcription."""
        if heap.trim():
            self.counters["heap_trims"] += 1

    def unload_soon(self) -> None:
        """Unload the model on the model thread after the jobs already queued (to make room for another
        model, or asked over the API); a request that comes later loads it again."""
        with self._lock:
            if self.loaded is None or self.state not in ("ready", "loading"):
                return
            self.state = "unloading"
            try:
                self.executor.submit(self._unload, True)
                self._unloads_queued += 1
            except RuntimeError:  # the executor was shut down: the server is stopping
                pass

    def _unload(self, force: bool = False) -> None:
        with self._lock:
            if force:
                self._unloads_queued -= 1
            if not force and not self._idle():  # a request came in meanwhile
                return
            if force and self.state == "failed":
                return
            self.state = "unloading"
        from ..backends import free_memory

        before = resident_bytes()
        self.backend.unload()
        free_memory()
        self._trim()
        after = resident_bytes()
        self.freed_bytes = max(0, before - after) if after is not None and before is not None else None
        with self._lock:
            self.counters["unloads"] += 1
            if self.state == "unloading":  # else a request has already queued the reload
                self.state = "unloaded"
        if force:
            log.info("model %s unloaded; the next request reloads it", public_name(self.backend.model))
        else:
            log.info("model %s unloaded after %d s idle; the next request reloads it",
                     self.backend.model, self.settings.MODEL_IDLE_UNLOAD)

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        backoff = min(self.settings.MODEL_RETRY_SECONDS * 2 ** (self._failures - 1), MAX_RETRY_SECONDS)
        self._retry_at = time.monotonic() + backoff
        self.error = f"{type(exc).__name__}: {exc}"
        self.problem = failure_message(self.backend, exc)
        self.state = "failed"
        log.error("%s Retrying on the next request after %d s. Detail: %.300s", self.problem, backoff,
                  " ".join(self.error.split()))

    def ensure_loaded(self) -> None:
        """Wait for the model to be loaded; raise the 503 while it cannot be.

        A model that failed to load (say, offline on first start) is tried again by the first
        request after its back-off (MODEL_RETRY_SECONDS, doubling up to 10 minutes).
        """
        self.start()  # under a WSGI server that is not RAPL's own, the first request starts the model
        self.retry_if_due()
        assert self.loaded is not None
        self.loaded.result()
        if self.state == "failed":
            raise self.unavailable()

    def retry_if_due(self) -> None:
        """Load a model that failed to load again once its back-off has passed (a request or /health asks:
        a load balancer's health check brings a failed server back without sending it traffic)."""
        with self._lock:
            if self.state == "failed" and time.monotonic() >= self._retry_at:
                try:
                    self.loaded = self.executor.submit(self._load)
                    self.state = "loading"
                    log.info("trying to load model %s again", self.backend.model)
                except RuntimeError:  # the executor was shut down: the server is stopping
                    raise _stopping() from None

    def check(self, options: Options) -> None:
        """Refuse (400, naming the parameter) what the loaded model cannot do."""
        check_options(self.capabilities, options, f"the {self.backend.name} model {public_name(self.backend.model)}")

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model thread (not counting the one running), every model's together."""
        return self.waiting_everywhere()

    @property
    def own_waiting(self) -> int:
        """Requests waiting for this model."""
        return self._waiting

    def unavailable(self) -> Unavailable:
        """What a request gets while the model failed to load: what failed, the fix, then the detail."""
        wait = max(1, math.ceil(self._retry_at - time.monotonic()))
        return Unavailable(f"{self.problem} It will be tried again in {wait} s. Detail: {self.error}",
                           code="model_unavailable", retry_after=wait)

    def submit(self, fn: Callable[[], T], connected: Callable[[], bool] | None = None,
               seconds: float = 0.0) -> Future[T]:
        """Queue ``fn`` (a transcription of ``seconds`` of audio) for the model thread, or raise Busy
        when MAX_QUEUE requests already wait.

        After more than TRIM_AUDIO_SECONDS the freed memory is handed back once the model is idle;
        a shorter job's working memory is kept for the next one."""
        with self._lock:
            self._refuse_when_full()
            self._waiting += 1
            self._tickets += 1
            try:
                # Unloaded, or an unload is queued ahead (a load that ran since must not count): reload first,
                # FIFO puts it ahead of this job.
                if self.state in ("unloading", "unloaded") or self._unloads_queued:
                    self.state = "loading"
                    self.executor.submit(self._load)
                long = seconds > TRIM_AUDIO_SECONDS
                return self.executor.submit(self._run, fn, self._tickets, time.monotonic(), connected, long)
            except RuntimeError:  # the executor was shut down: the server is stopping
                self._waiting -= 1
                raise _stopping() from None

    def submit_partial(self, key: Hashable, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn`` (a live session's partial decode) in the low-priority lane: it runs only when no
        other job waits, and replaces ``key``'s partial still queued (that one is cancelled). Partials
        count toward no queue limit and are never run before the model is ready."""
        future: Future[T] = Future()
        with self._lock:
            old = self._partials.pop(key, None)
            if old is not None and old[1].cancel():
                self.counters["partials_skipped"] += 1
            self._partials[key] = (fn, future)
            if self._slots < len(self._partials):
                try:
                    self.executor.submit(self._partial_turn)
                    self._slots += 1
                except RuntimeError:  # the executor was shut down: the server is stopping
                    del self._partials[key]
                    future.cancel()
        return future

    def withdraw_partial(self, key: Hashable) -> None:
        """Drop ``key``'s queued partial (its session committed, cleared or went away)."""
        with self._lock:
            old = self._partials.pop(key, None)
        if old is not None:
            old[1].cancel()

    def _partial_turn(self) -> None:
        """One turn of the partial lane, on the model thread: behind every waiting job, then the oldest partial."""
        with self._lock:
            if self._waiting and self._partials:  # requests and finals first: queue this turn behind them
                try:
                    self.executor.submit(self._partial_turn)
                    return
                except RuntimeError:
                    pass
            self._slots -= 1
            if not self._partials:
                return
            key = next(iter(self._partials))
            fn, future = self._partials.pop(key)
        if not future.set_running_or_notify_cancel():
            return
        if self.state != "ready":  # loading, unloaded or failed: a partial never loads the model
            future.set_exception(self.unavailable() if self.state == "failed" else _stopping())
            return
        self.running = True
        try:
            future.set_result(fn())
            self.counters["partials"] += 1
        except BaseException as exc:  # noqa: BLE001 - the session decides; the model thread goes on
            future.set_exception(exc)
        finally:
            self.running = False
            self._last_used = time.monotonic()

    def check_room(self) -> None:
        """Raise Busy now if the queue is full, before a request spends time decoding its upload."""
        with self._lock:
            self._refuse_when_full()

    def _refuse_when_full(self) -> None:
        waiting = self.waiting_everywhere()
        if waiting >= self.settings.MAX_QUEUE:
            self.counters["rejected_busy"] += 1
            raise Busy(f"The server is busy: {waiting} requests are waiting for the model. Retry shortly.",
                       code="server_busy", retry_after=1)

    def withdraw(self, future: Future[Any]) -> bool:
        """Take a queued job back before it starts; False if it is already running or done."""
        if not future.cancel():
            return False
        with self._lock:
            self._waiting -= 1
        return True

    def _run(self, fn: Callable[[], T], ticket: int, queued_at: float, connected: Callable[[], bool] | None,
             long: bool = False) -> T:
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
            raise ClientGone("Client disconnected.", code="client_closed_request")
        if time.monotonic() - queued_at > self.settings.REQUEST_TIMEOUT:
            self.counters["timed_out"] += 1
            raise TimedOut(f"The request waited longer than {self.settings.REQUEST_TIMEOUT} s "
                           "(REQUEST_TIMEOUT) for the model.", code="timeout")
        self.running = True
        try:
            result = fn()
        except (APIError, RaplError):  # the request's fault, not the model's
            raise
        except Exception:
            self.counters["failed"] += 1
            raise
        finally:
            self.running = False
            self._last_used = time.monotonic()
            self._trim_due = self._trim_due or long
        self.counters["completed"] += 1
        return result

    def health(self) -> dict[str, Any]:
        """What /health reports."""
        body: dict[str, Any] = {"status": self.state, "backend": self.backend.name,
                                "model": public_name(self.backend.model), "queue_depth": self._waiting,
                                "busy": self.running, **self.counters,
                                "memory_mb": round(self.memory_bytes / 1e6, 1)
                                if self.memory_bytes is not None and self.state == "ready" else None}
        languages = self.capabilities.languages
        body["languages"] = sorted(languages) if languages is not None else None  # None: any
        if self.state == "failed" or self.error:
            body["error"] = self.problem or self.error  # what failed and the fix, in words a user can act on
            body["detail"] = self.error  # the library's own words, for a bug report
        return body

    def shutdown(self) -> None:
        """Finish the running job, drop the queued ones, stop the threads."""
        self._stop.set()
        self.executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            partials, self._partials = list(self._partials.values()), {}
        for _fn, future in partials:
            future.cancel()


def resident_bytes() -> int | None:
    """This process's resident memory (psutil, on every platform), or None where it cannot be read."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing or the platform refuses: memory goes unreported
        return None


def _stopping() -> Unavailable:
    return Unavailable("The server is shutting down; retry shortly.", code="shutting_down")
