"""The HTTP server: waitress with the adjustments RAPL needs, the same under both launchers.

`python -m rapl` (:func:`rapl.cli.serve`) and `waitress-serve wsgi:app` (wsgi.py calls
:func:`adopt_waitress_serve`) both serve through :class:`Server`, which

* listens on HOST:PORT from the settings (waitress-serve's ``--listen``, ``--host``, ``--port`` and
  every other flag win over RAPL's choices, see :func:`merge`);
* binds that port before the model loads, so a busy port costs one line and exit status 3 at once;
* runs enough waitress threads that the app's queue (MAX_QUEUE, then 429) decides admission, with
  spare threads so /health, /metrics and the web page answer while the model is busy;
* detects clients that hang up while queued (``channel_request_lookahead``), accepts more
  connections than waitress's 100 and drops idle ones after 30 s, and keeps request bodies up to
  MAX_UPLOAD_MB in memory, so a full temporary folder cannot lose an upload;
* closes connections whose request headers take longer than HEADER_TIMEOUT (:class:`Channel`), so
  clients trickling bytes cannot hold every connection; uploads are never cut while bytes arrive;
* hands WebSocket upgrades (live sessions, rapl.http.websocket) their connection: the app checks the
  handshake as any request, then takes the socket from waitress (:class:`Takeover`), which
  neither reads nor writes it until the session ends;
* stops gracefully on SIGINT (Ctrl+C), SIGTERM and, on Windows, SIGBREAK (Ctrl+Break): the port
  closes at once (new connections are refused, so a load balancer moves on), the running
  transcription finishes and its answer is sent, queued requests get 503, live sessions get a close
  frame; waitress's threads end before the other sockets close. A second signal while it waits stops at once.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import FrameType
from typing import Any

from waitress.channel import HTTPChannel
from waitress.task import WSGITask

from ..settings import Settings, SettingsError

log = logging.getLogger(__name__)

# Threads beyond the running job and the MAX_QUEUE waiting requests: /health, /metrics, the web
# page, uploads being decoded, and the requests that get 429 at once.
SPARE_THREADS = 8
MAX_THREADS = 200
# Connections beyond one per thread: idle keep-alive connections, slow uploads, probes.  waitress
# watches its sockets with select(), which handles at most 1024 descriptors on Linux and 512
# sockets on Windows: MAX_THREADS + SPARE_CONNECTIONS stays well below both.
SPARE_CONNECTIONS = 256
CHANNEL_TIMEOUT = 30  # seconds a connection may send and receive nothing (between requests) before it is closed
CLEANUP_INTERVAL = 5  # seconds between looks for such connections
HEADER_TIMEOUT = 10  # seconds a request's headers may take: from the connection, or a kept-alive one's next first byte
STOP_FLUSH_SECONDS = 5  # after the last job, how long answers still being sent may take
STOP_GRACE_SECONDS = 1  # then, for waitress's threads to end once their connections are closed
EXIT_CANNOT_LISTEN = 3  # the port is taken or not allowed (2 is an invalid setting)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ListenError(Exception):
    """The server cannot listen where asked; the message is one line saying what to change."""

    def __init__(self, message: str, status: int = EXIT_CANNOT_LISTEN) -> None:
        super().__init__(message)
        self.status = status


class _StopRequested(KeyboardInterrupt):
    """Raised by the signal handler; a KeyboardInterrupt so that waitress's loop lets it through."""


def _upgrade(request: Any) -> bool:
    """A GET asking for a WebSocket."""
    return request.command == "GET" and request.headers.get("UPGRADE", "").strip().lower() == "websocket"


class Takeover:
    """A WebSocket handshake's connection, which the app may take from waitress (``environ["rapl.websocket"]``)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def take(self) -> socket.socket:
        """The connection's socket, blocking; from now on waitress neither reads nor writes it."""
        self.channel.taken = True
        sock = self.channel.socket
        sock.setblocking(True)
        return sock

    def done(self) -> None:
        """The session is over: waitress closes the connection (nothing more is sent on it)."""
        self.channel.taken = False
        self.channel.had_session = True
        self.channel.will_close = True


class Task(WSGITask):
    """waitress's WSGI task; a WebSocket handshake's environ carries its :class:`Takeover`, and once the
    app has taken the connection nothing more is written to it."""

    def get_environment(self) -> dict[str, Any]:
        """waitress's environ, plus ``rapl.websocket`` for an upgrade request."""
        environ = super().get_environment()
        if _upgrade(self.request):
            environ["rapl.websocket"] = Takeover(self.channel)
        return environ

    def write(self, data: bytes) -> None:
        """Nothing on a connection a session has had."""
        if self.channel.taken or self.channel.had_session:
            return
        super().write(data)

    def finish(self) -> None:
        """waitress's end of a response; after a session, only the close."""
        if self.channel.had_session:
            self.close_on_finish = True
            return
        super().finish()


class Channel(HTTPChannel):
    """waitress's connection, closed when its request headers take longer than HEADER_TIMEOUT.

    The clock starts at the connection, and on a kept-alive connection at the next request's first
    byte (the idle time between requests is CHANNEL_TIMEOUT's); it stops once the headers are in, so
    a slow upload is never cut while it keeps sending (one silent for CHANNEL_TIMEOUT is).
    """

    header_timeout: float = HEADER_TIMEOUT
    task_class = Task

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers_since: float | None = time.monotonic()  # None: not waiting for headers
        self.taken = False  # a live session owns the socket
        self.had_session = False  # ... and has ended: the connection only closes

    def received(self, data: bytes) -> bool:
        """waitress's parsing, then the header clock: started, kept, or stopped."""
        before = self.request
        result = super().received(data)
        request = self.request
        if request is None or request.headers_finished:
            self.headers_since = None
        elif self.headers_since is None or (before is not None and request is not before):
            self.headers_since = time.monotonic()  # a new request's first bytes
        return result

    def readable(self) -> bool:
        """waitress's answer; a connection whose headers are late is marked to close (the loop closes it).
        Nothing is read after a WebSocket handshake: the frames are the session's."""
        if self.requests and _upgrade(self.requests[0]):
            return False
        if self.headers_late():
            log.debug("closing the connection from %s: no request headers within %s s", self.addr,
                      self.header_timeout)
            self.will_close = True
        return super().readable()

    def writable(self) -> bool:
        """waitress's answer, but never while a live session owns the socket."""
        return not self.taken and super().writable()

    def headers_late(self) -> bool:
        """Waiting for request headers (nothing served or sent meanwhile) for longer than header_timeout."""
        since = self.headers_since
        return (since is not None and not self.will_close and not self.requests and not self.total_outbufs_len
                and time.monotonic() - since > self.header_timeout)


def adjustments(settings: Settings) -> dict[str, Any]:
    """The waitress adjustments RAPL serves with, computed from ``settings``."""
    # Each live session holds a thread for its lifetime: REALTIME_MAX_SESSIONS more, so REST keeps its own.
    threads = min(1 + settings.MAX_QUEUE + SPARE_THREADS + settings.REALTIME_MAX_SESSIONS, MAX_THREADS)
    return {
        "host": settings.HOST,
        "port": settings.PORT,
        "threads": threads,
        "connection_limit": threads + SPARE_CONNECTIONS,
        "channel_timeout": CHANNEL_TIMEOUT,
        "cleanup_interval": CLEANUP_INTERVAL,
        "channel_request_lookahead": 1,  # keeps reading while a request waits: a hang-up is seen
        # Bodies up to the upload limit (plus the multipart framing) stay in memory, not temp files.
        "inbuf_overflow": (settings.MAX_UPLOAD_MB + 1) * 1024 * 1024,
        "ident": "rapl",
    }


def merge(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` overridden by ``given`` (waitress-serve's flags); flags win, one by one.

    ``--listen``, ``--unix-socket`` or sockets replace HOST and PORT together; ``--host`` alone
    keeps PORT from the settings and ``--port`` alone keeps HOST.
    """
    merged = dict(defaults)
    if any(key in given for key in ("listen", "unix_socket", "sockets")):
        merged.pop("host", None)
        merged.pop("port", None)
    merged.update(given)
    return merged


class Server:
    """waitress bound to its addresses, serving a RAPL app that may be attached after binding.

    Binding first lets a busy port fail before the model starts loading.
    """

    def __init__(self, settings: Settings, **given: Any) -> None:
        from waitress.server import MultiSocketServer, create_server

        from ..core import heap

        heap.keep_freed()  # before waitress starts its threads: they share the heap's arenas
        self.settings = settings
        self.given = dict(given)
        self.adjustments = merge(adjustments(settings), given)
        self.app: WSGIApp | None = None
        self.worker: Any = None
        self._stopping = False
        try:
            self.waitress: Any = create_server(self._call, **self.adjustments)
        except OSError as exc:
            raise _listen_error(exc, self) from None
        except ValueError as exc:  # waitress's own check of the address and of conflicting flags
            hint = "" if given else "; set HOST to an address of this machine, such as 127.0.0.1"
            raise ListenError(f"cannot listen on {_where(self.adjustments)}: {exc}{hint}", status=2) from None
        multi = isinstance(self.waitress, MultiSocketServer)
        self._map: dict[int, Any] = self.waitress.map if multi else self.waitress._map
        self.addresses: list[tuple[str, Any]] = list(self.waitress.effective_listen) if multi else \
            [(self.waitress.effective_host, self.waitress.effective_port)]
        self._listeners = self._own_listeners()

    def _own_listeners(self) -> list[Any]:
        """waitress's listening servers, made to accept RAPL's :class:`Channel` and to wake their loop
        only while it can be woken (a thread finishing after the stop must not write to a closed pipe)."""
        from waitress.server import BaseWSGIServer

        listeners = [d for d in self._map.values() if isinstance(d, BaseWSGIServer)]
        for listener in listeners:
            listener.channel_class = Channel
            listener.pull_trigger = functools.partial(_pull, listener.trigger)
        return listeners

    @property
    def url(self) -> str:
        """The first address it listens on, as a URL: HOST:PORT as the settings spell it unless flags chose."""
        own = not ({"listen", "host", "port", "unix_socket", "sockets"} & set(self.given))
        host, port = (self.settings.HOST, self.settings.PORT) if own else self.addresses[0]
        return f"unix:{port}" if host == "unix" else f"http://{_bracket(str(host))}:{port}"

    def attach(self, app: WSGIApp) -> Server:
        """Serve ``app`` (a RAPL app: its model worker is stopped gracefully with the server)."""
        from ..logs import configure_logging

        self.app = app
        self.worker = getattr(app, "extensions", {}).get("rapl")
        configure_logging(self.settings.LOG_LEVEL)
        if self.worker is not None:
            self.worker.start()  # the model loads while the server already answers (/health: loading)
        return self

    def _call(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.app is None:  # not reachable: the loop runs only after attach()
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"starting"]
        return self.app(environ, start_response)

    def announce(self) -> None:
        """Print the line that says where RAPL serves which model."""
        more = f" (and {len(self.addresses) - 1} more addresses)" if len(self.addresses) > 1 else ""
        print(f"RAPL serving {self.settings.BACKEND} model {self.settings.model} at {self.url}{more} "
              f"(OpenAI base URL {self.url}/v1)", flush=True)

    def print_listen(self, format_str: str) -> None:
        """What waitress's serve() calls before run(): RAPL's own start-up line."""
        self.announce()

    def run(self) -> None:
        """Serve until SIGINT, SIGTERM or SIGBREAK (or Ctrl+C), then stop gracefully."""
        from waitress import wasyncore

        previous = self._handle_signals()
        adj = self.waitress.adj
        try:
            wasyncore.loop(timeout=adj.asyncore_loop_timeout, map=self._map, use_poll=adj.asyncore_use_poll)
        except KeyboardInterrupt:  # Ctrl+C, or a signal through _on_signal
            pass
        finally:
            self._stopping = True
            self.stop()
            for signum, handler in previous.items():
                _restore(signum, handler)

    def _handle_signals(self) -> dict[int, Any]:
        import signal

        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for name in ("SIGINT", "SIGTERM", "SIGBREAK"):  # SIGBREAK: Ctrl+Break on Windows
            signum = getattr(signal, name, None)
            # A signal ignored when we started (nohup, `cmd &` in a script) stays ignored, as Python does.
            if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            print("RAPL stopping now, without waiting for the running transcription", file=sys.stderr, flush=True)
            os._exit(1)
        self._stopping = True
        raise _StopRequested

    def stop(self) -> None:
        """Stop accepting, let the running job finish, send the answers being written, then close.

        waitress's loop keeps running until its threads have ended: they write their last answers
        and wake the loop through sockets and a pipe that must still be open.
        """
        print(self._stopping_line(), flush=True)
        for listener in self._listeners:
            # Closed now, not at the end: a new connection is refused at once, so a load balancer sends it to
            # another instance instead of leaving it unanswered in the backlog until this stop ends.
            listener.accepting = False
            listener.del_channel()
            listener.socket.close()
        live = getattr(self.app, "extensions", {}).get("rapl.realtime")
        if live is not None:
            live.stop()  # each session tells its running turn, then gets a close frame with the reason
        done = threading.Event()

        def stop_worker() -> None:
            try:
                if self.worker is not None:
                    self.worker.shutdown()  # waits for the running job; queued ones are cancelled (503)
            finally:
                done.set()

        threading.Thread(target=stop_worker, name="rapl-stop", daemon=True).start()
        self._serve_until(done.is_set)  # meanwhile: streamed output, the 503s of cancelled jobs, /health
        deadline = time.monotonic() + STOP_FLUSH_SECONDS
        self._serve_until(lambda: not self._busy(), deadline)
        self._hang_up(idle_only=True)  # no request starts from here on (only this thread reads them)
        dispatcher = self.waitress.task_dispatcher
        dispatcher.set_thread_count(0)  # each thread ends after the request it serves
        self._serve_until(lambda: not dispatcher.threads, deadline)
        self._hang_up()  # a thread still writing to a slow client gets ClientDisconnected and ends
        self._serve_until(lambda: not dispatcher.threads, time.monotonic() + STOP_GRACE_SECONDS)
        dispatcher.shutdown(cancel_pending=True, timeout=0)  # drops what is still queued
        self._close()

    def _stopping_line(self) -> str:
        worker = self.worker
        if worker is not None and worker.running:
            return "RAPL stopping: finishing the running transcription"
        if worker is not None and worker.loaded is not None and worker.state == "loading":
            return "RAPL stopping: waiting for the model to finish loading"
        return "RAPL stopping"

    def _serve_until(self, condition: Callable[[], bool], deadline: float | None = None) -> None:
        """Run waitress's loop in short steps until ``condition()`` holds or ``deadline`` (monotonic) passes."""
        from waitress import wasyncore

        use_poll = self.waitress.adj.asyncore_use_poll
        while not condition() and (deadline is None or time.monotonic() < deadline):
            wasyncore.loop(timeout=0.05, map=self._map, use_poll=use_poll, count=1)

    def _hang_up(self, idle_only: bool = False) -> None:
        """Close the client connections the way waitress does (threads waiting to write are woken);
        ``idle_only``: those with no request being served and nothing left to send."""
        for channel in [d for d in self._map.values() if isinstance(d, HTTPChannel)]:
            if not idle_only or not (channel.requests or channel.total_outbufs_len):
                channel.handle_close()

    def _close(self) -> None:
        """Close the listening sockets, the loop's wake-up pipes and whatever else is left."""
        from waitress import wasyncore

        for listener in self._listeners:
            with listener.trigger.lock:  # not while a late thread is pulling it (see _pull)
                listener.trigger.close()
        wasyncore.close_all(self._map, ignore_all=True)

    def _busy(self) -> bool:
        channels = [c for c in self._map.values() if hasattr(c, "total_outbufs_len")]
        return any(c.total_outbufs_len or c.requests for c in channels)


def make_server(app: Any, **given: Any) -> Server:
    """A :class:`Server` for a RAPL app from :func:`rapl.create_app`, on its settings' HOST:PORT."""
    return Server(app.config["RAPL_SETTINGS"], **given).attach(app)


def _pull(trigger: Any, thunk: Callable[[], Any] | None = None) -> None:
    """waitress's ``pull_trigger``, but nothing once the trigger is closed (after the stop)."""
    with trigger.lock:
        if thunk is not None:
            trigger.thunks.append(thunk)
        if not trigger._closed:
            trigger._physical_pull()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _restore(signum: int, handler: Any) -> None:
    import signal

    try:
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    except (OSError, ValueError):  # pragma: no cover - not the main thread, or an odd platform
        pass


def _where(adj: Mapping[str, Any]) -> str:
    if "listen" in adj:
        return " ".join(str(adj["listen"]).split())
    if "unix_socket" in adj:
        return str(adj["unix_socket"])
    return f"{_bracket(str(adj.get('host', '0.0.0.0')))}:{adj.get('port', 8080)}"


def _listen_error(exc: OSError, server: Server) -> ListenError:
    adj, where = server.adjustments, _where(server.adjustments)
    flags = bool({"listen", "host", "port"} & set(server.given))
    if exc.errno in (errno.EADDRINUSE, 10048):  # 10048: WSAEADDRINUSE
        fix = ("pass a free port to --listen or --port" if flags
               else f"set PORT to a free port (for example PORT={free_port(str(adj.get('host', '127.0.0.1')))})")
        return ListenError(f"cannot listen on {where}: the port is already in use (another RAPL, or another "
                           f"program, listens there); stop that program, or {fix}")
    if exc.errno in (errno.EADDRNOTAVAIL, 10049):
        return ListenError(f"cannot listen on {where}: that is not an address of this machine; "
                           f"{'pass another to --listen or --host' if flags else 'set HOST'} to 127.0.0.1 "
                           "(or 0.0.0.0 for every interface, with API_KEY set)")
    if exc.errno in (errno.EACCES, errno.EPERM, 10013):
        return ListenError(f"cannot listen on {where}: not allowed (ports below 1024 need privileges); "
                           f"{'pass another port' if flags else 'set PORT'} to 1024 or above, e.g. 8000")
    return ListenError(f"cannot listen on {where}: {exc.strerror or exc}")


def free_port(host: str) -> int:
    """A port free on ``host`` now (8001 if none can be asked for), for messages that suggest one."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
            return sock.getsockname()[1]
    except OSError:
        return 8001


# --------------------------------------------------------------------------- waitress-serve


def runner_argv() -> list[str] | None:
    """The command line of `waitress-serve` (or `python -m waitress`) when it is importing us, else None."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "waitress.runner" and frame.f_code.co_name == "run":
            argv = frame.f_locals.get("argv")
            return [str(a) for a in argv] if isinstance(argv, (list, tuple)) else list(sys.argv)
        frame = frame.f_back
    return None


def settings_or_exit() -> Settings:
    """The settings as create_app reads them (the environment over ENV_FILE's dotenv file, default .env);
    an invalid one prints one line and exits with status 2."""
    from ..settings import use_env_file

    use_env_file(os.environ.get("ENV_FILE", ".env"))  # the launcher owns its process: `.env` reaches the hubs too
    try:
        return Settings.load()
    except SettingsError as exc:
        print(f"rapl: invalid setting: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def adopt_waitress_serve() -> Server | None:
    """Under `waitress-serve`, serve as `python -m rapl` does; elsewhere do nothing and return None.

    Called by wsgi.py while waitress's runner imports it, before the app (and its model) is made:
    binds the addresses now (RAPL's adjustments, the runner's flags winning; a busy port exits
    with status 3), and has the runner's ``serve()`` use this server, whose run() stops gracefully.
    """
    argv = runner_argv()
    if argv is None:
        return None
    import waitress
    from waitress.adjustments import Adjustments

    given, _args = Adjustments.parse_args(argv[1:])  # as the runner itself parsed them
    for runner_only in ("help", "call"):
        given.pop(runner_only, None)
    settings = settings_or_exit()
    try:
        server = Server(settings, **given)
    except ListenError as exc:
        print(f"rapl: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.status) from None
    original = waitress.create_server

    def create_server(application: WSGIApp, **kw: Any) -> Server:
        waitress.create_server = original  # once: later servers in this process are waitress's own
        return server.attach(application)

    waitress.create_server = create_server  # waitress.serve() looks it up when the runner calls it
    log.debug("waitress-serve: serving with RAPL's adjustments %s", server.adjustments)
    return server
