"""HTTP on loopback with the standard library (so the client adds next to nothing to what is
measured), servers in subprocesses, and their memory seen from outside (psutil, /proc)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

HOST = "127.0.0.1"
TRANSCRIBE = "/v1/audio/transcriptions"


def log_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file, joined with " | " ("" when it cannot be read)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def free_port() -> int:
    """A TCP port nothing listens on now (loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def multipart(data: bytes, filename: str, content_type: str,
              fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body as OpenAI's SDK sends it: the fields, then ``file``."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in (fields or {"model": "whisper-1", "response_format": "json"}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n".encode())
    parts.append(data)
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class Reply:
    """One answered request."""

    status: int
    seconds: float
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON (None when it is not)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def timing(self) -> dict[str, float]:
        """The server's in-request stages from its ``Server-Timing`` header, in seconds (empty without one)."""
        return server_timing(self.headers.get("server-timing", ""))

    @property
    def processing(self) -> float:
        """``openai-processing-ms`` in seconds (the view's own time, whole ms), NaN without it."""
        try:
            return float(self.headers["openai-processing-ms"]) / 1000
        except (KeyError, ValueError):
            return float("nan")


def server_timing(header: str) -> dict[str, float]:
    """``decode;dur=12.3, model;dur=456.7`` as ``{"decode": 0.0123, "model": 0.4567}`` (seconds); entries
    without a ``dur`` are left out."""
    stages: dict[str, float] = {}
    for entry in header.split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if name and key.strip().lower() == "dur":
                try:
                    stages[name] = float(value.strip().strip('"')) / 1000
                except ValueError:
                    pass
    return stages


class Client:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closed it."""

    def __init__(self, port: int, timeout: float = 1800) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            self.conn.connect()
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.conn

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str | None = None) -> Reply:
        """Send one request and read the whole answer; ``seconds`` is send-start to last byte."""
        headers = {"Content-Type": content_type} if content_type else {}
        for attempt in (0, 1):
            conn = self._connection()
            started = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
                continue
            elapsed = time.perf_counter() - started
            reply = Reply(resp.status, elapsed, data, {k.lower(): v for k, v in resp.getheaders()})
            if resp.getheader("connection", "").lower() == "close":
                self.close()
            return reply
        raise AssertionError("unreachable")

    def post(self, body: bytes, content_type: str, path: str = TRANSCRIBE) -> Reply:
        """POST a multipart body."""
        return self.request("POST", path, body, content_type)

    def get(self, path: str) -> Reply:
        """GET ``path``."""
        return self.request("GET", path)

    def close(self) -> None:
        """Close the connection."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class HealthPoller:
    """GET /health every ``interval`` seconds on its own connection, recording latencies."""

    def __init__(self, port: int, interval: float = 0.025, path: str = "/health") -> None:
        self.client = Client(port, timeout=30)
        self.interval = interval
        self.path = path
        self.samples: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="health-poller")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self.client.get(self.path)
                if reply.status == 200:
                    self.samples.append(reply.seconds)
                else:
                    self.failures += 1
            except OSError:
                self.failures += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.client.close()


def health_status(port: int, path: str = "/health", timeout: float = 2.0) -> int | None:
    """The status of one GET ``path`` on a fresh connection, or None when nothing answers."""
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except (OSError, http.client.HTTPException):
        return None


def rss(pid: int) -> int:
    """Resident set size of ``pid`` and its children, in bytes."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def peak_rss(pid: int) -> int | None:
    """The kernel's high-water mark of ``pid``'s resident set (VmHWM), in bytes (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (writing 5 to /proc/PID/clear_refs; Linux 4.0+)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RSSSampler:
    """Samples a process's RSS from outside every ``interval`` seconds; keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss(self.pid))
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class ServerProcess:
    """A server in a subprocess on a loopback port, its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], port: int, log_path: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.open_s: float | None = None  # to the first HTTP answer
        self.ready_s: float | None = None  # to /health 200
        self._log: IO[bytes] | None = None

    def start(self) -> ServerProcess:
        """Start the process (the clock for open_s and ready_s starts here)."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = 300, path: str = "/health", poll: float = 0.01) -> float:
        """Poll ``path`` until it answers 200; returns seconds since start. Raises on exit/timeout."""
        assert self.proc is not None
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}: {self.tail()}")
            status = health_status(self.port, path, timeout=5)
            now = time.perf_counter() - self.started
            if status is not None and self.open_s is None:
                self.open_s = now
            if status == 200:
                self.ready_s = now
                return now
            time.sleep(poll)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s: {self.tail()}")

    def tail(self, lines: int = 8) -> str:
        """The last lines of the server's log."""
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        """Terminate (then kill) the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def concurrent_requests(port: int, bodies: list[tuple[bytes, str]], clients: int,
                        path: str = TRANSCRIBE) -> tuple[float, list[Reply]]:
    """Send ``bodies`` from ``clients`` threads (each its own connection, taking the next body
    when done); returns the wall time from the first send to the last answer, and the replies."""
    lock = threading.Lock()
    queue = list(range(len(bodies)))
    replies: list[Reply | None] = [None] * len(bodies)
    errors: list[BaseException] = []
    gate = threading.Barrier(clients + 1)

    def work() -> None:
        client = Client(port)
        gate.wait()
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    index = queue.pop(0)
                body, ctype = bodies[index]
                replies[index] = client.post(body, ctype, path)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return wall, [r for r in replies if r is not None]
