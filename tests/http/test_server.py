"""`waitress-serve wsgi:app` exactly as written, and `python -m rapl`, as real subprocesses on the
real tiny.en model: where they listen, who decides admission, hang-ups, stopping, idle
connections, a busy port, and uploads when no temporary file can be written (rapl/http/server.py).
"""

from __future__ import annotations

import base64
import collections
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from rapl.settings import SPEC
from support import ROOT, processes
from support.net import free_port
from support.speech import JFK_TEXT, wav_bytes, wer

pytestmark = pytest.mark.slow  # RAPL launched as subprocesses on the real tiny.en model

LAUNCHERS = ("waitress-serve", "python -m rapl")
HEADER_TIMEOUT = 10  # rapl.http.server.HEADER_TIMEOUT, as a user meets it
# A log line as RAPL writes it under both launchers: a timestamp, the level, the logger.
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and resource limits")


def command(launcher: str, *flags: str) -> list[str]:
    """The command as a user types it: `waitress-serve [flags] wsgi:app`, or `python -m rapl`."""
    if launcher == "python -m rapl":
        return [sys.executable, "-m", "rapl", *flags]
    script = Path(sys.executable).with_name("waitress-serve.exe" if os.name == "nt" else "waitress-serve")
    runner = [str(script)] if script.exists() else [sys.executable, "-m", "waitress"]
    return [*runner, *flags, "wsgi:app"]


def probe(port: int, path: str = "/health", timeout: float = 10) -> tuple[int, float]:
    """GET ``path`` on a new connection, as a load balancer's probe does: (status, seconds)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), time.perf_counter() - started


class Launched:
    """One server process started from the repository root, its output in files (no pipe fills up)."""

    def __init__(self, launcher: str, tmp: Path, *flags: str, port: int | None = None,
                 limit_files: int | None = None, **settings: str) -> None:
        self.port = port or free_port()
        env = {k: v for k, v in os.environ.items() if k not in SPEC and k != "PYTHONPATH"}
        env.update(ENV_FILE="", PROGRESS="false", PORT=str(self.port), **settings)
        tmp.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = tmp / "stdout.txt", tmp / "stderr.txt"
        preexec = None
        if limit_files is not None:
            import resource

            def preexec() -> None:  # every file this process writes is cut at limit_files bytes
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit_files, limit_files))

        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = processes.start(command(launcher, *flags), cwd=ROOT, env=env, stdout=out, stderr=err,
                                        preexec_fn=preexec)
        self.started = time.monotonic()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> tuple[str, str]:
        return self.out_path.read_text(errors="replace"), self.err_path.read_text(errors="replace")

    def listening(self) -> set[tuple[str, int]]:
        """The addresses this process listens on."""
        import psutil

        proc = psutil.Process(self.proc.pid)
        conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") else proc.connections("inet")
        return {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}

    def wait_ready(self, timeout: float = 120) -> Launched:
        """Wait until /health says ready on 127.0.0.1:port; fails at once if the process listens elsewhere."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}: {self.output()[1][-3000:]}")
            elsewhere = self.listening() - {("127.0.0.1", self.port)}
            if elsewhere and ("127.0.0.1", self.port) not in self.listening():
                pytest.fail(f"listens on {sorted(elsewhere)}, not on 127.0.0.1:{self.port}")
            try:
                if probe(self.port, timeout=5)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"no answer on 127.0.0.1:{self.port} within {timeout} s")

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.base}/health", timeout=10).json()

    def wait_for(self, what: str, check: Any, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.health()
            if check(body):
                return body
            time.sleep(0.02)
        pytest.fail(f"timed out waiting for {what}: {self.health()}")

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (a graceful stop) and its exit status; whatever happens, nothing of it is left running."""
        try:
            return processes.stop(self.proc, signal.SIGTERM, timeout)
        finally:
            processes.kill(self.proc)  # its process group too


@pytest.fixture
def launch(tmp_path: Path, whisper_model: str) -> Iterator[Any]:
    """Factory: ``launch(launcher, *flags, **settings)`` on tiny.en; every process is stopped at the end."""
    started: list[Launched] = []

    def start(launcher: str, *flags: str, **settings: str) -> Launched:
        options = {"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, **settings}
        server = Launched(launcher, tmp_path / f"server{len(started)}", *flags, **options)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def waitress_serve(tmp_path_factory: pytest.TempPathFactory, whisper_model: str) -> Iterator[Launched]:
    """`waitress-serve wsgi:app` with the default settings but BACKEND, LOCAL_MODEL and PORT."""
    server = Launched("waitress-serve", tmp_path_factory.mktemp("waitress-serve"), BACKEND="whisper",
                      LOCAL_MODEL=whisper_model)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def jfk_16k(jfk: Path) -> Any:
    from rapl import audio

    return audio.decode(jfk.read_bytes())


@pytest.fixture(scope="module")
def long_clip(jfk_16k: Any) -> bytes:
    """33 s of speech (the JFK clip three times): several seconds on the model."""
    import numpy as np

    return wav_bytes(np.concatenate([jfk_16k] * 3))


@pytest.fixture(scope="module")
def short_clip(jfk_16k: Any) -> bytes:
    return wav_bytes(jfk_16k)


def upload(base: str, data: bytes, name: str = "clip.wav", timeout: float = 180) -> httpx.Response:
    return httpx.post(f"{base}/v1/audio/transcriptions", files={"file": (name, data)}, timeout=timeout)


def in_threads(calls: list[Any]) -> tuple[list[threading.Thread], list[Any], list[float]]:
    """Start each call on its own thread; returns the threads, their results and when each ended."""
    results: list[Any] = [None] * len(calls)
    ended: list[float] = [0.0] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            results[i] = exc
        ended[i] = time.monotonic()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    return threads, results, ended


def join(threads: list[threading.Thread], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a client got no answer in time"


# --------------------------------------------------------------------------- where it listens


def test_waitress_serve_listens_on_host_port_from_the_settings(waitress_serve: Launched) -> None:
    assert waitress_serve.listening() == {("127.0.0.1", waitress_serve.port)}  # not 0.0.0.0:8080
    out, _err = waitress_serve.output()
    url = f"http://127.0.0.1:{waitress_serve.port}"
    assert "RAPL serving whisper model " in out and f"at {url} (OpenAI base URL {url}/v1)" in out


@pytest.mark.parametrize("flag", ["--listen=127.0.0.1:{other}", "--port={other}"])
def test_waitress_serve_flags_win_over_the_settings(flag: str, launch: Any) -> None:
    other = free_port()
    server = launch("waitress-serve", flag.format(other=other))  # PORT in the settings is another port
    server.port = other
    server.wait_ready()
    assert server.listening() == {("127.0.0.1", other)}  # --port alone keeps HOST from the settings
    assert f"at http://127.0.0.1:{other} (OpenAI base URL" in server.output()[0]


# --------------------------------------------------------------------------- admission


def test_health_metrics_and_page_answer_while_the_model_is_busy(waitress_serve: Launched, long_clip: bytes,
                                                                short_clip: bytes) -> None:
    base = waitress_serve.base
    clips = [long_clip] + [short_clip] * 7
    threads, results, _ended = in_threads([lambda c=c: upload(base, c) for c in clips])
    waitress_serve.wait_for("the model to be busy", lambda h: h["busy"])
    timings: dict[str, list[float]] = collections.defaultdict(list)
    paths = ["/health", "/metrics", "/"]
    i = 0
    while any(t.is_alive() for t in threads):
        status, seconds = probe(waitress_serve.port, paths[i % 3], timeout=30)
        assert status == 200, paths[i % 3]
        timings[paths[i % 3]].append(seconds)
        i += 1
        time.sleep(0.05)
    join(threads)
    assert [getattr(r, "status_code", r) for r in results] == [200] * 8
    every = sorted(s for values in timings.values() for s in values)
    assert len(every) >= 20, timings
    p95 = every[int(0.95 * (len(every) - 1))]
    assert p95 < 0.5 and every[-1] < 1.0, {path: [round(s, 3) for s in v] for path, v in timings.items()}


def test_client_hanging_up_while_queued_is_dropped(waitress_serve: Launched, long_clip: bytes,
                                                   short_clip: bytes) -> None:
    base = waitress_serve.base
    dropped = waitress_serve.health()["dropped_disconnected"]
    threads, results, _ended = in_threads([lambda: upload(base, long_clip)])
    waitress_serve.wait_for("the model to be busy", lambda h: h["busy"])
    request = httpx.Request("POST", f"{base}/v1/audio/transcriptions", files={"file": ("a.wav", short_clip)})
    request.read()
    head = "POST /v1/audio/transcriptions HTTP/1.1\r\n" + "".join(
        f"{key}: {value}\r\n" for key, value in request.headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", waitress_serve.port), timeout=30) as sock:
        sock.sendall(head.encode() + request.content)
        waitress_serve.wait_for("the upload to be queued", lambda h: h["queue_depth"] == 1 and h["busy"])
    join(threads)  # the long job ends; the hung-up one must be skipped, not run
    assert getattr(results[0], "status_code", results[0]) == 200
    waitress_serve.wait_for("the queue to empty", lambda h: h["queue_depth"] == 0 and not h["busy"])
    assert waitress_serve.health()["dropped_disconnected"] == dropped + 1


def test_max_queue_decides_admission_with_429(launch: Any, long_clip: bytes, short_clip: bytes) -> None:
    server = launch("waitress-serve", MAX_QUEUE="2").wait_ready()
    base = server.base
    first, first_result, first_ended = in_threads([lambda: upload(base, long_clip)])
    server.wait_for("the model to be busy", lambda h: h["busy"])
    threads, results, ended = in_threads([lambda: upload(base, short_clip) for _ in range(7)])
    join(threads + first)
    statuses = [getattr(r, "status_code", r) for r in results]
    assert first_result[0].status_code == 200
    assert collections.Counter(statuses) == {200: 2, 429: 5}, statuses
    for response, at in zip(results, ended, strict=True):
        if response.status_code == 429:
            assert at < first_ended[0], "a 429 must come at once, not after waiting for a thread"
            assert response.json()["error"]["code"] == "server_busy"
            assert response.headers["retry-after"] == "1"


# --------------------------------------------------------------------------- stopping


@posix_only
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_sigterm_finishes_the_running_job_and_answers_the_queued_503(launcher: str, launch: Any,
                                                                     long_clip: bytes, short_clip: bytes) -> None:
    server = launch(launcher).wait_ready()
    base = server.base
    first, first_result, _ = in_threads([lambda: upload(base, long_clip)])
    server.wait_for("the model to be busy", lambda h: h["busy"])
    queued, results, _ = in_threads([lambda: upload(base, short_clip) for _ in range(4)])
    server.wait_for("four queued", lambda h: h["queue_depth"] == 4)
    server.proc.send_signal(signal.SIGTERM)
    join(first + queued)
    assert server.proc.wait(60) == 0
    out, err = server.output()
    assert getattr(first_result[0], "status_code", first_result[0]) == 200, err[-3000:]
    assert wer(JFK_TEXT * 3, first_result[0].json()["text"]) < 0.5
    for response in results:
        assert getattr(response, "status_code", response) == 503, err[-3000:]
        assert response.json()["error"]["code"] == "shutting_down"
    assert "RAPL stopping: finishing the running transcription" in out
    assert "Traceback" not in err


@posix_only
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_sigint_stops_it_even_when_the_tests_run_with_sigint_ignored(launcher: str, launch: Any) -> None:
    """`nohup pytest`, `trap '' INT` or a CI runner start pytest with SIGINT ignored; its children inherit
    that, and RAPL keeps an ignored SIGINT ignored. The tests start servers with it at its default."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        server = launch(launcher)
    finally:
        signal.signal(signal.SIGINT, previous)
    server.wait_ready()
    assert processes.stop(server.proc, signal.SIGINT, timeout=30) == 0, server.output()[1][-3000:]
    out, err = server.output()
    assert out.splitlines()[-1] == "RAPL stopping"  # nothing was running
    assert "Traceback" not in err


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_idle_connections_do_not_lock_out_health(launcher: str, launch: Any, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("waitress_serve") if launcher == "waitress-serve" else \
        launch(launcher).wait_ready()
    idle = []
    try:
        for _ in range(200):  # connect and send nothing
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        time.sleep(0.5)
        status, seconds = probe(server.port, timeout=10)
        assert status == 200 and seconds < 1.0, seconds
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_trickling_clients_cannot_lock_out_health(launcher: str, launch: Any) -> None:
    """290 connections sending their headers a byte at a time (the limit is 281): each is closed HEADER_TIMEOUT
    after it was accepted, so a probe waiting behind them is answered; before, they held every slot for good."""
    server = launch(launcher).wait_ready()
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(290)]
    stop = threading.Event()

    def trickle() -> None:
        for sock in socks:
            sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        for _ in range(60):  # a byte each every second, for a minute at most
            if stop.wait(1.0):
                return
            for sock in socks:
                try:
                    sock.send(b"a")
                except OSError:
                    pass

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(1.0)
        status, seconds = probe(server.port, timeout=HEADER_TIMEOUT + 20)
        deadline = time.monotonic() + 2 * HEADER_TIMEOUT + 15  # those that waited behind the limit: once more
        while time.monotonic() < deadline and not all(closed_by_server(s) for s in socks):
            time.sleep(0.2)
        closed = sum(closed_by_server(s) for s in socks)
    finally:
        stop.set()
        trickler.join(5)
        for sock in socks:
            sock.close()
    print(f"{launcher}: /health {status} in {seconds:.1f} s behind 290 trickling connections; {closed} closed")
    assert status == 200 and seconds < HEADER_TIMEOUT + 5, seconds
    assert closed == len(socks)
    assert probe(server.port)[0] == 200
    limit_lines = [line for line in server.output()[1].splitlines() if "reached the connection limit" in line]
    assert limit_lines and all(LOG_LINE.match(line) for line in limit_lines), limit_lines  # waitress's, timestamped


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_an_upload_slower_than_the_header_deadline_is_not_cut(launcher: str, launch: Any, jfk: Path,
                                                              request: pytest.FixtureRequest) -> None:
    """The headers in two pieces 2 s apart, then a body sent steadily over 1.5 HEADER_TIMEOUT: answered."""
    server = request.getfixturevalue("waitress_serve") if launcher == "waitress-serve" else \
        launch(launcher).wait_ready()
    req = httpx.Request("POST", f"{server.base}/v1/audio/transcriptions",
                        files={"file": ("jfk.flac", jfk.read_bytes())})
    req.read()
    head = ("POST /v1/audio/transcriptions HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
            + "Connection: close\r\n\r\n").encode()
    pieces = 30
    step = -(-len(req.content) // pieces)
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head[:len(head) // 2])
        time.sleep(2)
        sock.sendall(head[len(head) // 2:])
        for i in range(pieces):
            sock.sendall(req.content[i * step:(i + 1) * step])
            time.sleep(1.5 * HEADER_TIMEOUT / pieces)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b"country" in answer.lower()


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed ``sock`` (end of file or a reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# --------------------------------------------------------------------------- logging


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_client_text_cannot_forge_a_log_line_and_lines_are_timestamped(launcher: str, launch: Any,
                                                                       jfk_16k: Any) -> None:
    """A known speaker's name is client text that reaches the log (the speaker-labels line names the voices);
    its CR/LF must come out escaped, and every log line, RAPL's and waitress's, carries a timestamp."""
    forged = "2026-01-01 00:00:00,000 INFO rapl.http.api: request id=forged task=transcribe status=200"
    server = launch(launcher, LOG_LEVEL="INFO").wait_ready()
    reference = "data:audio/wav;base64," + base64.b64encode(wav_bytes(jfk_16k[3 * 16000:8 * 16000])).decode()
    name = "JFK\r\n" + forged
    response = httpx.post(f"{server.base}/v1/audio/transcriptions", timeout=180,
                          files={"file": ("jfk.wav", wav_bytes(jfk_16k))},
                          data={"response_format": "diarized_json", "known_speaker_names[]": name,
                                "known_speaker_references[]": reference})
    assert response.status_code == 200, response.text
    assert {s["speaker"] for s in response.json()["segments"]} == {name}  # the name reached the speaker labels
    assert server.stop() == 0
    lines = server.output()[1].splitlines()
    assert not any(line.startswith(forged[:30]) for line in lines), lines
    assert any("speaker labels:" in line and "JFK\\x0d\\x0a2026-01-01" in line for line in lines), lines
    logged = [line for line in lines if re.match(r"(\d{4}-|(DEBUG|INFO|WARNING|ERROR|CRITICAL)[: ])", line)]
    assert any("rapl.http.api: request id=" in line for line in logged), lines
    assert all(LOG_LINE.match(line) for line in logged), [line for line in logged if not LOG_LINE.match(line)]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_busy_port_is_one_line_and_exits_3_before_loading_the_model(launcher: str, launch: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = launch(launcher, port=port)
        try:
            status = server.proc.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail("still running with its port taken")
        elapsed = time.monotonic() - server.started
    out, err = server.output()
    assert status == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"rapl: cannot listen on 127.0.0.1:{port}: the port is already in use (another "
                               "RAPL, or another program, listens there); stop that program, or set PORT to a free "
                               "port (for example PORT="), lines
    assert "loading" not in err and "RAPL serving" not in out  # it stopped before the model loaded
    assert elapsed < 30


@posix_only
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_uploads_are_answered_when_no_temporary_file_can_be_written(launcher: str, launch: Any, jfk: Path) -> None:
    """RLIMIT_FSIZE cuts every file the server writes at 64 KB (EFBIG), as a full temp folder fails with
    ENOSPC: waitress spools bodies over its inbuf_overflow to temp files, RAPL keeps them in memory."""
    import numpy as np
    import soundfile as sf

    data, rate = sf.read(str(jfk), dtype="float32", always_2d=True)
    padded = np.concatenate([data, np.zeros((4 * rate, data.shape[1]), dtype=np.float32)])
    big = io.BytesIO()
    sf.write(big, padded, rate, format="WAV", subtype="FLOAT")  # 44.1 kHz stereo float: over 5 MB
    assert big.tell() > 5_000_000
    server = launch(launcher, limit_files=64 * 1024).wait_ready()
    response = upload(server.base, big.getvalue(), "big.wav")
    assert response.status_code in (200, 507), response.text
    if response.status_code == 200:
        assert wer(JFK_TEXT, response.json()["text"]) < 0.25
    else:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    small = upload(server.base, jfk.read_bytes(), "small.flac")
    assert small.status_code == 200 and "country" in small.json()["text"].lower()
