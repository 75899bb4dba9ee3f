"""OpenAI's Realtime transcription WebSocket on the REST port: ``/v1/realtime``, ``/realtime``, ``/v1/v1/realtime``.

The handshake is an ordinary request through the app, so the host check (421), the page check
against CORS_ORIGINS (403: browsers apply no CORS to WebSockets) and API_KEY (401; a browser may
send it as the subprotocol ``openai-insecure-api-key.<key>``) run first, as on REST. Then
RAPL's server (rapl.http.server) hands over the connection, and the WebSocket protocol runs on it with
the ``websockets`` library's sans-I/O ``ServerProtocol`` (handshake, framing, masking, ping, close):
no framing is written here. Each session runs in the waitress thread that served its handshake
(the server adds REALTIME_MAX_SESSIONS threads for them) and talks to the model only through the
model worker (rapl.http.live).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from typing import Any

from flask import Blueprint, Response, current_app, request

from ..errors import APIError, RaplError, Unavailable
from .live import LiveSession

log = logging.getLogger(__name__)
bp = Blueprint("realtime", __name__)

PATHS = ("/v1/realtime", "/realtime", "/v1/v1/realtime")
KEY_PROTOCOL = "openai-insecure-api-key."  # OpenAI's browser path: the key as a subprotocol
POLL_SECONDS = 0.02  # how often a session looks for finished transcriptions while the client is quiet
SEND_TIMEOUT = 10.0  # a client that takes no data for this long is gone
RECV_BYTES = 1 << 16
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_LATER = 1013
CLOSE_POLICY = 1008


class Sessions:
    """The app's live sessions (``app.extensions["rapl.realtime"]``): the limit, the count, the stop."""

    def __init__(self, limit: int, idle_seconds: float, max_seconds: float, max_message: int) -> None:
        self.limit = limit
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.max_message = max_message
        self.lock = threading.Lock()
        self.open: set[Connection] = set()
        self.stopping = threading.Event()
        self.counters = {"sessions_opened": 0, "sessions_refused": 0, "sessions_expired": 0}

    def admit(self, connection: Connection) -> str:
        """Count ``connection`` in: "" when it is, else why not ("stopping", or "full" at REALTIME_MAX_SESSIONS)."""
        with self.lock:
            refused = "stopping" if self.stopping.is_set() else "full" if len(self.open) >= self.limit else ""
            if refused:
                self.counters["sessions_refused"] += 1
                return refused
            self.open.add(connection)
            self.counters["sessions_opened"] += 1
            return ""

    def leave(self, connection: Connection) -> None:
        """``connection`` has ended."""
        with self.lock:
            self.open.discard(connection)

    def stop(self) -> None:
        """The server stops: each session tells its running turn, then closes with a reason."""
        self.stopping.set()

    def health(self) -> dict[str, Any]:
        """What /health reports of live sessions."""
        return {"realtime_sessions": len(self.open), **self.counters}


def sessions() -> Sessions:
    """The app's live sessions."""
    return current_app.extensions["rapl.realtime"]


def _offered(headers: Any) -> list[str]:
    return [p.strip() for value in headers.getlist("Sec-WebSocket-Protocol") for p in value.split(",") if p.strip()]


def key_from_subprotocol(headers: Any) -> str | None:
    """The API key a browser sent as ``openai-insecure-api-key.<key>``, if any."""
    for offered in _offered(headers):
        if offered.startswith(KEY_PROTOCOL):
            return offered[len(KEY_PROTOCOL):]
    return None


def realtime() -> Response:
    """GET /v1/realtime?intent=transcription: a live transcription session over a WebSocket."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise APIError("This is OpenAI's Realtime transcription endpoint: open a WebSocket to "
                       "ws://HOST:PORT/v1/realtime?intent=transcription.", 426, code="upgrade_required")
    intent = request.args.get("intent")
    if intent not in (None, "", "transcription"):
        raise APIError(f"RAPL serves transcription sessions only: connect with ?intent=transcription, not "
                       f"intent={intent[:40]!r}.", 400, param="intent", code="invalid_value")
    takeover = request.environ.get("rapl.websocket")
    if takeover is None:
        raise APIError("Live sessions need RAPL's own server: start it with python -m rapl or waitress-serve "
                       "wsgi:app.", 501, code="websocket_unsupported")
    from websockets.datastructures import Headers
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
    from websockets.http11 import Request
    from websockets.server import ServerProtocol

    registry = sessions()
    if registry.stopping.is_set():  # before the 101: a load balancer can still send the session elsewhere
        raise Unavailable("The server is shutting down; open the session again (on another instance).",
                          code="shutting_down", retry_after=1)
    worker = current_app.extensions["rapl"]
    worker.ensure_loaded()  # as a REST request does: a loading model is waited for, a failed one is 503
    protocol = ServerProtocol(select_subprotocol=_choose_subprotocol, max_size=registry.max_message,
                              extensions=[ServerPerMessageDeflateFactory()])
    headers = Headers()
    for name, value in request.headers.items():
        headers[name] = value
    # The handshake waitress has parsed, given to the protocol as its bytes (its public, sans-I/O path).
    protocol.receive_data(Request(request.full_path.rstrip("?"), headers).serialize())
    handshake = next((e for e in protocol.events_received() if isinstance(e, Request)), None)
    if handshake is None:
        raise APIError("Not a valid WebSocket handshake.", 400, code="invalid_websocket_handshake")
    response = protocol.accept(handshake)
    if response.status_code != 101:
        message = response.body.decode("utf-8", "replace").strip() or "Not a valid WebSocket handshake."
        raise APIError(message, 400, code="invalid_websocket_handshake")
    connection = Connection(protocol, registry, current_app._get_current_object())  # type: ignore[attr-defined]
    protocol.send_response(response)
    connection.run(takeover.take())
    takeover.done()
    return Response(status=204)  # never sent: the connection was taken over


def _choose_subprotocol(protocol: Any, offered: Any) -> str | None:
    """``realtime`` when offered (OpenAI's browser path sends it with the key); else none."""
    return "realtime" if "realtime" in offered else None


class Connection:
    """One WebSocket session: its socket, the protocol state and the live session."""

    def __init__(self, protocol: Any, registry: Sessions, app: Any) -> None:
        self.protocol = protocol
        self.registry = registry
        self.app = app
        self.sock: socket.socket | None = None
        self.parts: list[bytes] = []  # a fragmented message so far
        self.kind: Any = None
        self.last_heard = time.monotonic()
        self.started = time.monotonic()
        self.live: LiveSession | None = None
        self.closing = False

    def run(self, sock: socket.socket) -> None:
        """Serve the session until it closes; never raises (a vanished client frees everything)."""
        self.sock = sock
        sock.settimeout(SEND_TIMEOUT)
        try:
            self._flush()  # the 101 response
            refused = self.registry.admit(self)
            if refused == "stopping":  # the stop began during the handshake
                self._close(CLOSE_GOING_AWAY, "server shutting down")
                self._drain()
                return
            if refused:
                self._close(CLOSE_TRY_LATER, f"{self.registry.limit} live sessions are open "
                            "(REALTIME_MAX_SESSIONS); try again shortly", error=("server_busy", "rate_limit_exceeded"))
                self._drain()
                return
            try:
                self._serve()
            finally:
                self.registry.leave(self)
        except (OSError, RaplError, APIError) as exc:
            log.info("live session ended: %s", exc)
        except Exception:  # noqa: BLE001 - a bug must not take the server's thread down silently
            log.exception("live session failed")
        finally:
            if self.live is not None:
                self.live.close()

    def _serve(self) -> None:
        settings = self.app.config["RAPL_SETTINGS"]
        expires = int(time.time() + self.registry.max_seconds)
        pool = self.app.extensions["rapl.models"]
        self.live = LiveSession(self.app.extensions["rapl.service"], self.app.extensions["rapl.decode_budget"],
                                settings.MAX_AUDIO_SECONDS, self._send_event,
                                settings.MAX_CHUNK_SECONDS * 16000, expires, pick=pool.pick if pool.several else None)
        self.live.start()
        self._flush()
        while not self._ended():
            self._read(POLL_SECONDS)
            self.live.poll()
            self._limits()
            self._flush()
        self._drain()

    def _ended(self) -> bool:
        from websockets.protocol import State

        return self.protocol.state is State.CLOSED or (self.closing and self.protocol.state is State.CLOSING)

    def _read(self, timeout: float) -> None:
        assert self.sock is not None
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return
        data = self.sock.recv(RECV_BYTES)
        if not data:
            self.protocol.receive_eof()
        else:
            self.last_heard = time.monotonic()
            self.protocol.receive_data(data)
        for frame in self.protocol.events_received():
            self._frame(frame)

    def _frame(self, frame: Any) -> None:
        from websockets.frames import Opcode

        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self.kind, self.parts = frame.opcode, [frame.data]
        elif frame.opcode is Opcode.CONT:
            self.parts.append(frame.data)
        else:  # ping, pong, close: the protocol answers them itself
            return
        if not frame.fin:
            return
        message, self.parts = b"".join(self.parts), []
        assert self.live is not None
        if self.closing:
            return
        if self.kind is Opcode.BINARY:
            self.live.error("Send events as JSON text messages, not binary ones.", code="invalid_event")
            return
        self.live.handle(message)

    def _limits(self) -> None:
        """Idle time, session length and the server's stop: an error event where OpenAI sends one, then a close."""
        if self.closing or self.live is None:
            return
        now = time.monotonic()
        if self.registry.stopping.is_set():
            if not self.live.busy:  # a transcription being made is told first
                self._close(CLOSE_GOING_AWAY, "server shutting down")
        elif now - self.started > self.registry.max_seconds:
            self.registry.counters["sessions_expired"] += 1
            minutes = self.registry.max_seconds / 60
            self._close(CLOSE_POLICY, f"session expired after {minutes:g} minutes (REALTIME_SESSION_MINUTES)",
                        error=("session_expired", "invalid_request_error"),
                        message=f"Your session hit the maximum duration of {minutes:g} minutes.")
        elif now - self.last_heard > self.registry.idle_seconds and not self.live.busy:
            self._close(CLOSE_POLICY, f"idle for {self.registry.idle_seconds:g} s (REALTIME_IDLE_SECONDS)")

    def _close(self, code: int, reason: str, error: tuple[str, str] | None = None, message: str = "") -> None:
        if error is not None:
            event = {"type": "error", "event_id": "event_close",
                     "error": {"type": error[1], "code": error[0], "message": message or reason[:1].upper() + reason[1:]
                               + ".", "param": None, "event_id": None}}
            self._send_event(event)
        self.closing = True
        self.protocol.send_close(code, reason[:120])
        self._flush()

    def _send_event(self, event: dict[str, Any]) -> None:
        import json

        self.protocol.send_text(json.dumps(event, ensure_ascii=False).encode())

    def _flush(self) -> None:
        assert self.sock is not None
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)
            else:  # the protocol is done: half-close, the client closes its end
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def _drain(self, seconds: float = 2.0) -> None:
        """After our close frame: wait briefly for the client's, as the protocol asks."""
        deadline = time.monotonic() + seconds
        while not self._ended_for_good() and time.monotonic() < deadline:
            try:
                self._read(0.05)
                self._flush()
            except OSError:
                return

    def _ended_for_good(self) -> bool:
        from websockets.protocol import State

        return self.protocol.state is State.CLOSED


for _i, _path in enumerate(PATHS):  # werkzeug routes upgrades and plain GETs (told 426) apart
    bp.add_url_rule(_path, f"realtime{_i}", realtime, methods=["GET"], websocket=True)
    bp.add_url_rule(_path, f"realtime_get{_i}", realtime, methods=["GET"])


