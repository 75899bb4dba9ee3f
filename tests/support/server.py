"""A real waitress server on loopback serving one RAPL app, and bounded waiting."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx2 as httpx
import pytest
from flask import Flask

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 30, what: str = "the condition",
               interval: float = 0.01) -> T:
    """Poll ``condition`` until it returns something true, and return that; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Server:
    """A real waitress server on a free loopback port, serving one RAPL app."""

    def __init__(self, app: Flask, **adjustments: Any) -> None:
        from waitress.server import create_server

        self.app = app
        self.worker = app.extensions["rapl"]
        options = {"threads": 8, "channel_request_lookahead": 1, **adjustments}
        self._server = create_server(app, host="127.0.0.1", port=0, **options)
        self.url = f"http://127.0.0.1:{self._server.effective_port}"
        self._clients: list[Any] = []
        self._closed = False
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        self.worker.start()  # as rapl.http.server does: the model loads while the server answers

    @property
    def backend(self) -> Any:
        """The backend the app's worker runs (a FakeBackend in the fast tests)."""
        return self.worker.backend

    def wait_loaded(self, timeout: float = 120) -> str:
        """Wait for the model to finish loading; returns its state."""
        deadline = time.monotonic() + timeout
        while self.worker.state == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.worker.state

    def connections(self) -> int:
        """Client connections waitress holds open now."""
        from waitress.channel import HTTPChannel

        return sum(isinstance(channel, HTTPChannel) for channel in list(self._server._map.values()))

    def client(self, **kwargs: Any) -> Any:
        """An official OpenAI SDK client pointed at this server (closed when the server is)."""
        import openai

        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=kwargs.pop("api_key", "local"),
                               max_retries=0, **kwargs)
        self._clients.append(client)
        return client

    @functools.cached_property
    def sdk(self) -> Any:
        """One shared official OpenAI SDK client for this server."""
        return self.client()

    def http(self) -> httpx.Client:
        """A raw HTTP client for this server."""
        return httpx.Client(base_url=self.url, timeout=120)

    def close(self) -> None:
        """Stop serving and stop the model thread (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        for client in self._clients:  # their keep-alive connections would hold the loop open
            client.close()
        release = getattr(self.worker.backend, "release", None)
        if release is not None:  # a FakeBackend held at its gate would hold the model thread
            release()
        # Closed from waitress's own loop, which then ends at once (not at its next 1 s select timeout).
        # The loop runs thunks under the trigger's lock: holding it, the close cannot run (and close the
        # pipe) before the byte that wakes the loop is written.
        trigger = self._server.trigger
        with trigger.lock:
            trigger.thunks.append(self._server.close)
            trigger._physical_pull()
        self._thread.join(timeout=10)
        if not trigger._closed:  # the loop had stopped: close from here
            self._server.close()
        self.worker.shutdown()


class LiveServer(Server):
    """RAPL's own server (rapl.http.server.Server: WebSocket sessions, graceful stop) on a free loopback port,
    its loop in a thread; ``stop()`` stops it as SIGTERM would (sessions get their close frame)."""

    def __init__(self, app: Flask, **given: Any) -> None:
        from rapl.http.server import Server as RaplServer

        self.app = app
        self.worker = app.extensions["rapl"]
        self.rapl = RaplServer(app.config["RAPL_SETTINGS"], host="127.0.0.1", port=0, **given).attach(app)
        self.url = f"http://127.0.0.1:{self.rapl.addresses[0][1]}"
        self.ws_url = f"ws://127.0.0.1:{self.rapl.addresses[0][1]}"
        self._clients = []
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from waitress import wasyncore

        while not self._stop.is_set():
            wasyncore.loop(timeout=0.05, map=self.rapl._map, count=1)
        self.rapl.stop()

    def connections(self) -> int:
        """Client connections waitress holds open now (live sessions included)."""
        from waitress.channel import HTTPChannel

        return sum(isinstance(channel, HTTPChannel) for channel in list(self.rapl._map.values()))

    def stop(self, timeout: float = 60) -> None:
        """Stop gracefully, as on SIGTERM, and wait until the server has stopped."""
        self._stop.set()
        self._thread.join(timeout)

    def close(self) -> None:
        """Stop (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        for client in self._clients:
            client.close()
        release = getattr(self.worker.backend, "release", None)
        if release is not None:
            release()
        self.stop()
