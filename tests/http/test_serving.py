"""rapl.http.server's Server in this process on a FakeBackend, with real sockets on loopback: the header
deadline (clients trickling bytes cannot hold every connection, slow uploads still get through) and
the stop (waitress's threads end before any socket closes; the line it prints says what it waits for).

The server runs as the launchers run it, in the main thread with its signal handlers; the test's
clients run on another thread and end it as SIGTERM does.
"""

from __future__ import annotations

import _thread
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx2 as httpx
import numpy as np
import pytest

import rapl.logs
from rapl import create_app
from rapl.http import server as rapl_server
from support.fake_backend import FakeBackend
from support.speech import wav_bytes

T = TypeVar("T")
DEADLINE = 1.0  # the header deadline these tests serve with (HEADER_TIMEOUT is 10 s)


@pytest.fixture
def make_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., rapl_server.Server]]:
    """Factory: ``make_server(**waitress_adjustments)``, a RAPL Server on a free loopback port, FakeBackend model.

    Logging is left as pytest set it (the launchers configure it; these tests do not need to).
    """
    monkeypatch.setattr(rapl.logs, "configure_logging", lambda level: None)
    made: list[rapl_server.Server] = []

    def make(**given: Any) -> rapl_server.Server:
        app = create_app({"ENV_FILE": "", "PROGRESS": "false", "VAD": "false"}, backend=FakeBackend())
        server = rapl_server.Server(app.config["RAPL_SETTINGS"], host="127.0.0.1", port=0, **given).attach(app)
        made.append(server)
        return server

    yield make
    for server in made:
        if server.worker is not None:
            server.worker.shutdown()


def port_of(server: rapl_server.Server) -> int:
    return int(server.addresses[0][1])


def serve_while(server: rapl_server.Server, body: Callable[[int], T], timeout: float = 60) -> T:
    """Run ``server`` here, in the main thread, while ``body(port)`` runs on another thread; when the body
    ends (or fails), the server is stopped as SIGTERM stops it. Returns what the body returned."""
    port = port_of(server)
    outcome: dict[str, Any] = {}

    def drive() -> None:
        try:
            wait_answering(port)  # run() is serving, so its SIGTERM handler is installed
            outcome["result"] = body(port)
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            outcome["error"] = exc
        finally:
            _thread.interrupt_main(signal.SIGTERM)  # RAPL's own handler: the graceful stop

    thread = threading.Thread(target=drive, name="test-clients", daemon=True)
    thread.start()
    server.run()
    thread.join(timeout)
    assert not thread.is_alive(), "the test's clients did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def get(port: int, path: str = "/health", timeout: float = 10) -> tuple[int, float]:
    """GET ``path`` on a new connection: (status, seconds)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data.startswith(b"HTTP/"):
        raise ConnectionError(f"closed without an answer: {data[:100]!r}")
    return int(data.split(b" ", 2)[1]), time.perf_counter() - started


def wait_answering(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if get(port, timeout=2)[0] == 200:
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed ``sock`` (end of file or a reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def upload_request(seconds: float = 2.0) -> tuple[bytes, bytes]:
    """The head and the body of a real multipart transcription request for ``seconds`` of a tone."""
    t = np.arange(int(seconds * 16000)) / 16000
    tone = wav_bytes((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    request = httpx.Request("POST", "http://127.0.0.1/v1/audio/transcriptions", files={"file": ("tone.wav", tone)})
    request.read()
    head = "POST /v1/audio/transcriptions HTTP/1.1\r\n" + "".join(
        f"{key}: {value}\r\n" for key, value in request.headers.items()) + "Connection: close\r\n\r\n"
    return head.encode(), request.content


def read_status(sock: socket.socket, timeout: float = 20) -> int:
    sock.setblocking(True)
    sock.settimeout(timeout)
    data = b""
    while b"\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    return int(data.split(b" ", 2)[1])


# --------------------------------------------------------------------------- the header deadline


def test_trickling_clients_are_closed_so_health_answers(make_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """More trickling connections than the limit: each is closed once its headers are DEADLINE late, and a
    probe waiting behind them is answered; waitress's channel_timeout alone never closes them (bytes keep
    coming)."""
    monkeypatch.setattr(rapl_server.Channel, "header_timeout", DEADLINE)
    server = make_server(connection_limit=20)
    count = 30  # the limit counts the listener and its wake-up pipe too: 18 are served, 12 wait

    def body(port: int) -> tuple[int, float, int]:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
        stop = threading.Event()

        def trickle() -> None:
            for sock in socks:
                sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
            for _ in range(200):  # a byte each every 0.1 s, for 20 s at most
                if stop.wait(0.1):
                    return
                for sock in socks:
                    try:
                        sock.send(b"a")
                    except OSError:
                        pass

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        try:
            time.sleep(0.2)
            status, seconds = get(port, timeout=3 * DEADLINE + 5)
            deadline = time.monotonic() + 3 * DEADLINE + 5
            while time.monotonic() < deadline and not all(closed_by_server(s) for s in socks):
                time.sleep(0.05)
            return status, seconds, sum(closed_by_server(s) for s in socks)
        finally:
            stop.set()
            trickler.join(5)
            for sock in socks:
                sock.close()

    status, seconds, closed = serve_while(server, body)
    assert status == 200 and seconds < 2 * DEADLINE + 2, seconds
    assert closed == count


@pytest.mark.slow  # waits out a real timeout (seconds): the full suite runs it, the fast tier does not
def test_a_slow_but_steady_upload_is_not_cut(make_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers within the deadline (in pieces), then a body that takes three deadlines, sent steadily: 200."""
    monkeypatch.setattr(rapl_server.Channel, "header_timeout", DEADLINE)
    server = make_server()
    head, content = upload_request()

    def body(port: int) -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            half = len(head) // 2
            sock.sendall(head[:half])
            time.sleep(DEADLINE / 2)
            sock.sendall(head[half:])
            pieces = 30
            step = -(-len(content) // pieces)
            for i in range(pieces):  # 3 deadlines in all
                sock.sendall(content[i * step:(i + 1) * step])
                time.sleep(3 * DEADLINE / pieces)
            return read_status(sock)

    assert serve_while(server, body) == 200


@pytest.mark.slow  # waits out a real timeout (seconds): the full suite runs it, the fast tier does not
def test_a_kept_alive_connection_may_idle_past_the_header_deadline(make_server: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Between requests the idle time is channel_timeout's (30 s): the clock starts at the next first byte."""
    monkeypatch.setattr(rapl_server.Channel, "header_timeout", DEADLINE)
    server = make_server()

    def body(port: int) -> list[int]:
        statuses = []
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for _ in range(2):
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                data = b""
                while b"\r\n\r\n" not in data:
                    data += sock.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                while len(rest) < length:
                    rest += sock.recv(65536)
                statuses.append(int(head.split(b" ", 2)[1]))
                time.sleep(2 * DEADLINE)
        return statuses

    assert serve_while(server, body) == [200, 200]


# --------------------------------------------------------------------------- the stop


def test_stopping_while_requests_finish_on_several_threads_is_clean(make_server: Any,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Each request's thread wakes waitress's loop as it ends; the stop must let it, every time, before it
    closes that wake-up pipe (Bad file descriptor, or a write to whatever file reused the number). Each
    wake-up is held back 0.3 s here, so every stop lands in that window."""
    caplog.set_level(logging.INFO, logger="waitress")
    for _ in range(3):
        stop_in_the_window(make_server())
    problems = [r for r in caplog.records if r.name.startswith("waitress") and r.name != "waitress.queue"
                and r.levelno >= logging.WARNING]
    assert not problems, [(r.getMessage(), r.exc_text) for r in problems]


def stop_in_the_window(server: rapl_server.Server, clients: int = 6) -> None:
    """Stop ``server`` while ``clients`` threads send requests and a thread is between its answer and
    its wake-up of the loop (held back 0.3 s)."""
    from waitress.server import BaseWSGIServer

    in_window, finished = threading.Event(), threading.Event()

    def late(real: Callable[..., Any]) -> Callable[..., None]:
        def pull_trigger(*args: Any) -> None:
            in_window.set()
            time.sleep(0.3)
            real(*args)

        return pull_trigger

    for listener in [d for d in server._map.values() if isinstance(d, BaseWSGIServer)]:
        listener.pull_trigger = late(listener.pull_trigger)

    def client(port: int) -> None:
        while not finished.is_set():
            try:
                get(port, timeout=5)
            except OSError:
                time.sleep(0.01)

    def body(port: int) -> None:
        for _ in range(clients):
            threading.Thread(target=client, args=(port,), daemon=True).start()
        assert in_window.wait(10)

    try:
        serve_while(server, body)
    finally:
        finished.set()


def test_the_stop_line_says_what_it_waits_for(make_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = make_server()
    serve_while(server, lambda port: None)
    assert capsys.readouterr().out.splitlines()[-1] == "RAPL stopping"  # nothing ran: nothing to finish


def test_the_port_closes_as_the_stop_begins_and_a_session_is_refused_before_its_101(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind a load balancer: while the running job finishes, a new connection is refused at once (nginx and
    Caddy move to another instance), and a WebSocket handshake sent on a connection kept alive from before
    gets 503 shutting_down, not a 101 and a close (a balancer can still send that session elsewhere)."""
    monkeypatch.setattr(rapl.logs, "configure_logging", lambda level: None)
    gate = threading.Event()
    app = create_app({"ENV_FILE": "", "PROGRESS": "false", "VAD": "false"}, backend=FakeBackend(gate=gate))
    server = rapl_server.Server(app.config["RAPL_SETTINGS"], host="127.0.0.1", port=0).attach(app)
    seen: dict[str, Any] = {}
    head, body = upload_request()

    def probe(port: int, kept: socket.socket, job: socket.socket) -> None:
        try:
            assert wait_for(lambda: server._stopping, 10)
            time.sleep(0.2)  # the stop has begun: the listeners go first
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                seen["new connection"] = "accepted"
            except ConnectionRefusedError:
                seen["new connection"] = "refused"
            kept.sendall(b"GET /v1/realtime?intent=transcription HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                answer += kept.recv(65536)
            seen["handshake"] = answer.decode(errors="replace")
        finally:
            gate.set()  # now the running job may finish
            seen["job"] = read_status(job)

    def drive(port: int) -> threading.Thread:
        kept = socket.create_connection(("127.0.0.1", port), timeout=20)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        health = b""
        while not health.endswith(b"}"):  # the whole answer: the connection stays open, idle
            health += kept.recv(65536)
        assert health.startswith(b"HTTP/1.1 200")
        job = socket.create_connection(("127.0.0.1", port), timeout=20)
        job.sendall(head + body)
        assert wait_for(lambda: server.worker.running, 10)
        prober = threading.Thread(target=probe, args=(port, kept, job), daemon=True)
        prober.start()
        return prober  # the body ends here: serve_while sends the SIGTERM

    try:
        prober = serve_while(server, drive)
        prober.join(30)
    finally:
        gate.set()
        server.worker.shutdown()
    assert seen["new connection"] == "refused", seen
    status_line, _, rest = seen["handshake"].partition("\r\n")
    assert status_line.startswith("HTTP/1.1 503"), seen["handshake"]
    assert '"code": "shutting_down"' in rest or '"code":"shutting_down"' in rest, rest
    assert seen["job"] == 200  # the running transcription was finished and answered


def wait_for(condition: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False
