"""deploy/ with live dictation, for real: two `python -m rapl` instances on the real tiny.en model
behind nginx (deploy/nginx/rapl-lb.conf, and rapl-tls.conf in front of it) and behind Caddy
(deploy/Caddyfile), live sessions through them with the official Python SDK, one instance stopped
with SIGTERM mid-session.

- Sessions through the proxy transcribe JFK, words arriving while it is spoken; every path and
  query string apps use opens a session; REST answers beside them.
- Only sessions get nginx's long timeouts: with a short default for every location that sets none,
  an idle session outlives it (and, to check the check, one whose location lost them is cut).
  Caddy sets none; a transport read_timeout would cut sessions too.
- SIGTERM to one instance: its sessions get the close frame (1001) through the proxy, the sessions
  on the other instance go on and complete, a new session goes to the survivor, REST answers 200
  (through Caddy, an upload it was sending to the stopping instance gets 502: the test says xfail).
  The figures (spread, time to the close frames, to a new session) are printed (pytest -s).
- A Caddy reload closes the sessions through it (1001); rapl-tls.conf before rapl-lb.conf.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import openai
import pytest
import soundfile
import soxr
from test_deploy import DEPLOY, nginx_binary, nginx_main_conf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from rapl.settings import SPEC
from support import ROOT, processes
from support.net import free_port
from support.server import wait_until
from support.speech import JFK_TEXT, espeak, wer

pytestmark = pytest.mark.slow  # RAPL subprocesses on the real tiny.en model, nginx, Caddy

RATE = 24000  # OpenAI's audio/pcm rate
CHUNK = RATE * 2 // 10  # 100 ms of PCM16
DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"
COMMAND = "Turn on the kitchen lights."
SHORT_TIMEOUT = 2  # seconds: the test copies' stand-in for nginx's 60 s default
IDLE = 4.0  # seconds an idle session waits, well past SHORT_TIMEOUT


# --- the instances ---------------------------------------------------------------------------------

class Instance:
    """One `python -m rapl` on tiny.en on a port of its own, started as a user starts it (no .env, no
    RAPL setting from this environment); it can be stopped with SIGTERM and started again on that port."""

    def __init__(self, name: str, tmp: Path, model: str) -> None:
        self.name, self.tmp, self.model = name, tmp, model
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in SPEC and k != "PYTHONPATH"}
        # THREADS=1: the two instances share this machine's cores instead of each taking all of them.
        env.update(ENV_FILE="", PROGRESS="false", PORT=str(self.port), BACKEND="whisper", LOCAL_MODEL=self.model,
                   THREADS="1")
        self.runs += 1
        self.log_path = self.tmp / f"{self.name}-{self.runs}.log"
        with open(self.log_path, "wb") as out:
            self.proc = processes.start([sys.executable, "-m", "rapl"], cwd=ROOT, env=env, stdout=out,
                                        stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"instance {self.name} exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"instance {self.name} did not answer /health within {timeout} s: {self.log()}")

    def sessions(self) -> int:
        """Live sessions open on this instance now (its /health, asked directly, not through the proxy)."""
        return httpx.get(f"{self.url}/health", timeout=10).json()["realtime_sessions"]

    def kill(self) -> None:
        if self.proc is not None:
            processes.kill(self.proc)


@dataclass
class Pair:
    """The two instances behind the proxy; :meth:`up` starts again one a test stopped."""

    first: Instance
    second: Instance

    def __iter__(self) -> Iterator[Instance]:
        return iter((self.first, self.second))

    def up(self) -> Pair:
        stopped = [i for i in self if not i.running()]
        for instance in stopped:
            instance.start()
        for instance in stopped:
            instance.wait_ready()
        wait_until(lambda: all(i.sessions() == 0 for i in self), 15, "the instances to have no session open")
        return self


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, whisper_model: str) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("instances")
    pair = Pair(Instance("a", tmp, whisper_model), Instance("b", tmp, whisper_model))
    try:
        yield pair.up()
    finally:
        for instance in pair:
            instance.kill()


# --- the proxies -----------------------------------------------------------------------------------

@dataclass
class Proxy:
    """nginx or Caddy running on a test copy of a deploy/ file."""

    kind: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    tls: ssl.SSLContext | None = None  # what a client trusts, for an https:// URL

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def client(self, **kwargs: Any) -> openai.OpenAI:
        """The official SDK with this proxy as its base URL, as a user would type it."""
        if self.tls is not None:
            kwargs["http_client"] = openai.DefaultHttpxClient(verify=self.tls)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="local", max_retries=0, **kwargs)

    def ws_options(self) -> dict[str, Any]:
        """The SDK's websocket_connection_options (passed on to websockets' connect)."""
        return {"ssl": self.tls} if self.tls is not None else {}


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Callable[[], str]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            assert proc.poll() is None, log()
            time.sleep(0.05)
    raise AssertionError(f"nothing listened on {port}: {log()}")


def lb_site(pair: Pair, text: str | None = None) -> str:
    """rapl-lb.conf (or ``text``) with the upstreams on the test instances."""
    site = text if text is not None else (DEPLOY / "nginx" / "rapl-lb.conf").read_text()
    assert "server 127.0.0.1:8001 " in site and "server 127.0.0.1:8002 " in site
    return site.replace("127.0.0.1:8001", pair.first.address).replace("127.0.0.1:8002", pair.second.address)


def caddy_site(pair: Pair, port: int, text: str | None = None, options: str = "", admin: str = "off") -> str:
    """The Caddyfile (or ``text``) on http://127.0.0.1:``port``, its upstreams the test instances, Caddy's
    admin endpoint off (or on ``admin``); ``options`` go in the global options block."""
    site = text if text is not None else (DEPLOY / "Caddyfile").read_text()
    assert "rapl.example.com {" in site and "reverse_proxy 127.0.0.1:8001 127.0.0.1:8002 {" in site
    site = site.replace("rapl.example.com {", f"http://127.0.0.1:{port} {{", 1)
    site = site.replace("127.0.0.1:8001 127.0.0.1:8002", f"{pair.first.address} {pair.second.address}", 1)
    return f"{{\n\tadmin {admin}\n{options}}}\n\n{site}"


@pytest.fixture()
def launch(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    """Factory: ``launch("nginx", site)`` (text for nginx's http context; ``listen 127.0.0.1:8000`` moves to
    ``port`` or a free one) or ``launch("caddy", caddyfile, port)``; each proxy is stopped when the test ends."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(kind: str, text: str, port: int | None = None) -> Proxy:
        run = tmp_path / f"{kind}{len(procs)}"
        run.mkdir()
        if kind == "nginx":
            nginx = nginx_binary()
            port = port or free_port()
            text = re.sub(r"listen\s+127\.0\.0\.1:8000;", f"listen 127.0.0.1:{port};", text)
            (run / "site.conf").write_text(text)
            conf = nginx_main_conf(nginx, run, run / "site.conf")
            globals_ = f"daemon off; master_process off; pid {run}/nginx.pid; error_log {run}/error.log info;"
            test = subprocess.run([nginx, "-t", "-p", str(run), "-c", str(conf), "-g", globals_],
                                  capture_output=True, text=True)
            assert test.returncode == 0, test.stderr
            proc = processes.start([nginx, "-p", str(run), "-c", str(conf), "-g", globals_])
            log = run / "error.log"
        else:
            caddy = caddy_binary()
            assert port is not None
            (run / "Caddyfile").write_text(text)
            env = {**os.environ, "HOME": str(run), "XDG_CONFIG_HOME": str(run / "config"),
                   "XDG_DATA_HOME": str(run / "data")}
            log = run / "caddy.log"
            with open(log, "wb") as out:
                proc = processes.start([caddy, "run", "--config", str(run / "Caddyfile"), "--adapter", "caddyfile"],
                                       env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        proxy = Proxy(kind, f"http://127.0.0.1:{port}", proc, log)
        wait_listening(port, proc, proxy.log)
        return proxy

    try:
        yield start
    finally:
        for proc in procs:
            processes.stop(proc, timeout=10)
            processes.kill(proc)


def caddy_binary() -> str:
    exe = shutil.which("caddy")
    if exe is None:
        pytest.skip("caddy is not installed (apt-get install caddy)")
    return exe


def start_proxy(kind: str, pair: Pair, launch: Callable[..., Proxy]) -> Proxy:
    """The shipped file for ``kind``, only its addresses changed, in front of ``pair``."""
    if kind == "nginx":
        return launch("nginx", lb_site(pair))
    port = free_port()
    return launch("caddy", caddy_site(pair, port), port)


# --- audio -----------------------------------------------------------------------------------------

def transcribe(proxy: Proxy, wav: Path) -> str:
    """POST /v1/audio/transcriptions through ``proxy`` with the SDK: the text."""
    client = proxy.client(timeout=120)
    try:
        with wav.open("rb") as f:
            return client.audio.transcriptions.create(model="whisper-1", file=f).text
    finally:
        client.close()


def pcm16_24k(data: np.ndarray, rate: int) -> bytes:
    mono = data.mean(axis=1) if data.ndim == 2 else data
    return (np.clip(soxr.resample(mono, rate, RATE), -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def jfk24(jfk: Path) -> bytes:
    """en_jfk.flac (11 s) as 24 kHz PCM16 mono."""
    data, rate = soundfile.read(str(jfk), dtype="float32", always_2d=True)
    return pcm16_24k(data, rate)


@pytest.fixture(scope="module")
def command(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """COMMAND spoken by espeak-ng: the WAV file (for REST) and 24 kHz PCM16 (for a session)."""
    wav = espeak(COMMAND, tmp_path_factory.mktemp("command") / "command.wav")
    data, rate = soundfile.read(str(wav), dtype="float32", always_2d=True)
    return wav, pcm16_24k(data, rate)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def chunks(data: bytes) -> Iterator[bytes]:
    for at in range(0, len(data), CHUNK):
        yield data[at:at + CHUNK]


# --- a dictating client ----------------------------------------------------------------------------

@dataclass
class Dictation:
    """One live session with the official SDK, in a thread of its own: opened, configured (manual
    commit), then, once ``go`` is set, ``audio`` streamed at ``pace`` times real time and committed.
    Every event is kept with the time it came; a close frame's code, reason and time too."""

    proxy: Proxy
    audio: bytes
    pace: float = 1.0
    idle: float = 0.0  # seconds of silence on the line after session.updated, before the audio
    go: threading.Event = field(default_factory=threading.Event)
    timed: list[tuple[float, Any]] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    close_code: int | None = None
    close_reason: str | None = None
    closed_at: float | None = None
    committed_at: float | None = None
    created_at: float | None = None
    failure: BaseException | None = None

    def start(self) -> Dictation:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        client = self.proxy.client()
        try:
            with client.realtime.connect(extra_query={"intent": "transcription"},
                                         websocket_connection_options=self.proxy.ws_options()) as conn:  # type: ignore[arg-type]
                reader = threading.Thread(target=self._read, args=(conn,), daemon=True)
                reader.start()
                conn.session.update(session={"type": "transcription", "audio": {"input": {
                    "format": {"type": "audio/pcm", "rate": RATE},
                    "transcription": {"model": "gpt-4o-transcribe", "language": "en"}, "turn_detection": None}}})
                wait_until(lambda: self.types().count("session.updated") or self.closed_at, 30, "session.updated")
                self.ready.set()
                self.go.wait(120)
                if self.idle:
                    time.sleep(self.idle)
                began, sent = time.monotonic(), 0
                for chunk in chunks(self.audio):
                    if self.closed_at is not None:
                        break
                    try:
                        conn.input_audio_buffer.append(audio=b64(chunk))
                    except (ConnectionClosed, openai.OpenAIError):
                        break  # the close frame came while sending; the reader has it
                    sent += len(chunk)
                    time.sleep(max(0.0, began + sent / (2 * RATE) / self.pace - time.monotonic()))
                if self.closed_at is None:
                    self.committed_at = time.monotonic()
                    conn.input_audio_buffer.commit()
                reader.join(90)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.failure = exc
        finally:
            client.close()
            self.ready.set()
            self.done.set()

    def _read(self, conn: Any) -> None:
        while True:
            try:
                event = conn.recv()
            except ConnectionClosed as exc:
                self.closed_at = time.monotonic()
                if exc.rcvd is not None:
                    self.close_code, self.close_reason = exc.rcvd.code, exc.rcvd.reason
                return
            self.timed.append((time.monotonic(), event))
            if event.type == "session.created":
                self.created_at = time.monotonic()
            if event.type in (COMPLETED, FAILED):
                return

    def types(self) -> list[str]:
        return [event.type for _, event in self.timed]

    def completed(self) -> Any:
        return next((e for _, e in self.timed if e.type == COMPLETED), None)

    def problems(self) -> list[Any]:
        return [e for _, e in self.timed if e.type in ("error", FAILED)]

    def early_words(self) -> str:
        """The deltas that came before the commit: words while the speaker spoke."""
        end = self.committed_at if self.committed_at is not None else float("inf")
        return "".join(e.delta for t, e in self.timed if e.type == DELTA and t < end)

    def assert_transcribed(self, reference: str, max_wer: float) -> str:
        assert self.failure is None, repr(self.failure)
        assert self.problems() == [], self.problems()
        completed = self.completed()
        assert completed is not None, (self.types(), self.close_code, self.close_reason)
        deltas = "".join(e.delta for _, e in self.timed if e.type == DELTA and e.item_id == completed.item_id)
        assert deltas == completed.transcript  # the deltas add up to the transcript, through the proxy too
        assert wer(reference, completed.transcript) <= max_wer, (wer(reference, completed.transcript),
                                                                  completed.transcript)
        return completed.transcript


def open_sessions(proxy: Proxy, pair: Pair, audios: list[bytes], pace: float) -> tuple[list[Dictation], list[Instance]]:
    """Open one session per audio through ``proxy``, one after the other, each configured before the next
    opens; which instance took each is read from the instances' /health (their live-session counts)."""
    dictations: list[Dictation] = []
    owners: list[Instance] = []
    go = threading.Event()
    for audio in audios:
        before = {i.name: i.sessions() for i in pair}
        dictation = Dictation(proxy, audio, pace=pace, go=go).start()
        assert dictation.ready.wait(60) and dictation.failure is None, (dictation.failure, proxy.log())
        assert "session.updated" in dictation.types(), dictation.types()
        grown = wait_until(lambda b=before: [i for i in pair if i.sessions() > b[i.name]], 10,
                           "the new session to show in an instance's /health")
        assert len(grown) == 1, grown
        dictations.append(dictation)
        owners.append(grown[0])
    go.set()
    return dictations, owners


# --- sessions through the proxy --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["nginx", "caddy"])
def test_sessions_through_the_proxy(kind: str, pair: Pair, launch: Callable[..., Proxy], jfk24: bytes,
                                    command: tuple[Path, bytes]) -> None:
    """The SDK through the proxy: JFK in real time, words before the commit; every path and query apps
    use opens a session (a plain GET still gets RAPL's 426); REST through the same proxy."""
    proxy = start_proxy(kind, pair.up(), launch)
    dictation = Dictation(proxy, jfk24, pace=1.0)
    dictation.go.set()
    dictation.start()
    ws = proxy.url.replace("http://", "ws://")
    for path in ("/realtime?intent=transcription", "/v1/v1/realtime?intent=transcription",
                 "/v1/realtime?model=gpt-4o-mini-transcribe", "/v1/realtime"):
        with connect(ws + path, open_timeout=10) as raw:
            created = raw.recv(10)
        assert '"session.created"' in created, (path, created)
    plain = httpx.get(f"{proxy.url}/v1/realtime?intent=transcription", timeout=10)
    assert plain.status_code == 426 and plain.json()["error"]["code"] == "upgrade_required", plain.text
    text = transcribe(proxy, command[0])
    assert wer(COMMAND, text) <= 0.4, text
    assert dictation.done.wait(90), proxy.log()
    dictation.assert_transcribed(JFK_TEXT, 0.15)
    assert dictation.early_words(), "no words arrived while the audio was still being spoken"


# --- one instance stopped mid-session --------------------------------------------------------------

@dataclass
class Answer:
    """One REST transcription: when it was sent and answered, its status (or the exception), its text."""

    sent: float
    answered: float
    status: int | str
    text: str


@dataclass
class RestLoop:
    """REST transcriptions through the proxy with the SDK, one after another, until stopped."""

    proxy: Proxy
    wav: Path
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> RestLoop:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        client = self.proxy.client(timeout=60)
        try:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    with self.wav.open("rb") as f:
                        text = client.audio.transcriptions.create(model="whisper-1", file=f).text
                    self.answers.append(Answer(sent, time.monotonic(), 200, text))
                except openai.APIStatusError as exc:
                    self.answers.append(Answer(sent, time.monotonic(), exc.status_code, exc.message))
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    self.answers.append(Answer(sent, time.monotonic(), repr(exc), ""))
        finally:
            client.close()

    def finish(self) -> list[Answer]:
        self.stop.set()
        self.thread.join(90)
        return self.answers


@pytest.mark.parametrize("kind", ["nginx", "caddy"])
def test_sigterm_to_one_instance_mid_session(kind: str, pair: Pair, launch: Callable[..., Proxy], jfk24: bytes,
                                             command: tuple[Path, bytes]) -> None:
    """Four sessions spread over the two instances; SIGTERM to one while they speak. Its sessions get
    the close frame (1001, "server shutting down") through the proxy; the other instance's go on and
    complete; a new session opened at once goes to the survivor; REST answers 200 throughout."""
    proxy = start_proxy(kind, pair.up(), launch)
    dictations, owners = open_sessions(proxy, pair, [jfk24] * 4, pace=1.0)
    spread = {i.name: owners.count(i) for i in pair}
    assert spread == {"a": 2, "b": 2}, spread  # least_conn: an open session counts as a connection
    rest = RestLoop(proxy, command[0]).start()
    stopped = owners[0]
    survivor = pair.second if stopped is pair.first else pair.first
    time.sleep(3.0)  # three seconds into the speech
    assert stopped.proc is not None
    sigterm_at = time.monotonic()
    stopped.proc.send_signal(signal.SIGTERM)
    exit_seen: list[float] = []

    def watch(proc: subprocess.Popen[bytes] = stopped.proc) -> None:
        proc.wait(60)
        exit_seen.append(time.monotonic())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    on_stopped = [d for d, o in zip(dictations, owners, strict=True) if o is stopped]
    kept = [d for d, o in zip(dictations, owners, strict=True) if o is survivor]
    wait_until(lambda: any(d.closed_at for d in on_stopped), 30, "a close frame from the stopped instance")
    # A client reconnecting at once, as one does on 1001.
    new = Dictation(proxy, command[1], pace=2.0)
    new.go.set()
    new.start()
    assert new.ready.wait(60) and new.failure is None, (new.failure, proxy.log())
    on_survivor = survivor.sessions() if new.created_at is not None else None  # its two, and the new one
    assert new.done.wait(60) and new.failure is None, (new.failure, proxy.log())
    returncode = stopped.proc.wait(30)
    watcher.join(10)
    exited_at = exit_seen[0]
    for dictation in kept:
        assert dictation.done.wait(90)
    time.sleep(0.5)
    answers = rest.finish()
    closes = [d.closed_at - sigterm_at for d in on_stopped if d.closed_at is not None]
    during = [a for a in answers if a.sent < exited_at and a.answered > sigterm_at]  # in flight while it stopped
    after = [a for a in answers if a.sent > exited_at]
    failed = [a for a in answers if a.status != 200]
    created = f"{new.created_at - sigterm_at:.2f} s" if new.created_at is not None else \
        f"never (close {new.close_code} {new.close_reason!r})"
    print(f"\n[{kind}] sessions spread {spread}; SIGTERM to {stopped.name}: its sessions' close frames after "
          f"{', '.join(f'{c:.3f}' for c in closes)} s, it exited after {exited_at - sigterm_at:.2f} s; a new "
          f"session created after {created}; sessions kept {len(kept)}, closed {len(on_stopped)}; REST "
          f"{len(answers)} answers, {len(during)} in flight while it stopped, {len(after)} after; not 200: "
          f"{[(round(a.sent - sigterm_at, 2), a.status) for a in failed]}")
    assert returncode == 0, stopped.log()  # a graceful stop
    for dictation in on_stopped:  # the close frame, code and reason, passed through the proxy
        assert dictation.failure is None, repr(dictation.failure)
        assert (dictation.close_code, dictation.close_reason) == (1001, "server shutting down"), \
            (dictation.close_code, dictation.close_reason, dictation.types())
        assert dictation.completed() is None and dictation.problems() == []
    for dictation in kept:  # the other instance's sessions never noticed
        dictation.assert_transcribed(JFK_TEXT, 0.15)
        assert dictation.close_code is None and dictation.early_words()
    assert new.created_at is not None, (new.types(), new.close_code, new.close_reason, proxy.log())
    assert on_survivor == 3, on_survivor
    new.assert_transcribed(COMMAND, 0.4)
    assert during and after and all(a.status == 200 for a in after), answers  # after: all on the survivor
    assert all(wer(COMMAND, a.text) <= 0.4 for a in answers if a.status == 200), answers
    if kind == "caddy" and failed:
        # An upload Caddy had begun to send to the stopping instance (on a kept-alive connection that
        # instance then closed) is not sent to the other one: once connected, Caddy retries only GETs,
        # and before 2.11 cannot replay a POST's body at all. nginx does (proxy_next_upstream non_idempotent).
        assert all(a.status == 502 and a in during for a in failed), answers
        assert len(failed) <= 2, answers
        pytest.xfail(f"Caddy: {len(failed)} of {len(answers)} REST uploads sent to the instance as it stopped "
                     "got 502 (Caddy does not send a POST to another instance once connected)")
    assert failed == [], (answers, proxy.log(), stopped.log())


# --- long sessions: the timeouts -------------------------------------------------------------------

def location_block(site: str, opening: str) -> str:
    """The text of the nginx location that starts with ``opening``, comments left out."""
    live = "\n".join(line.split("#", 1)[0] for line in site.splitlines())
    start = live.index(opening)
    depth = 0
    for at in range(live.index("{", start), len(live)):
        depth += {"{": 1, "}": -1}.get(live[at], 0)
        if depth == 0:
            return live[start:at + 1]
    raise AssertionError(f"{opening!r} has no closing brace")


def seconds(block: str, directive: str) -> int:
    """``directive``'s value in ``block``, in seconds (nginx's s/m/h suffixes)."""
    found = re.findall(rf"^\s*{directive}\s+(\d+)([smh]?);", block, re.M)
    assert len(found) == 1, (directive, block)
    value, unit = found[0]
    return int(value) * {"": 1, "s": 1, "m": 60, "h": 3600}[unit]


def idle_dictation(proxy: Proxy, audio: bytes) -> Dictation:
    """A session through ``proxy`` that says nothing for IDLE seconds after session.updated, then speaks."""
    dictation = Dictation(proxy, audio, pace=2.0, idle=IDLE)
    dictation.go.set()
    dictation.start()
    assert dictation.done.wait(60), proxy.log()
    return dictation


def test_nginx_gives_only_sessions_the_long_timeouts(pair: Pair, launch: Callable[..., Proxy],
                                                     command: tuple[Path, bytes]) -> None:
    """The sessions location sets its own hour-long timeouts (REST keeps its own). For real: with a
    SHORT_TIMEOUT default for every location that sets none (nginx's own default is 60 s), an idle
    session outlives it; with the sessions location's timeouts taken out, the same session is cut."""
    site = lb_site(pair.up())
    sessions = location_block(site, "location ~ ^/(v1/)?(v1/)?realtime$")
    rest = location_block(site, "location / ")
    assert seconds(sessions, "proxy_read_timeout") >= 3600 and seconds(sessions, "proxy_send_timeout") >= 3600
    assert (seconds(rest, "proxy_read_timeout"), seconds(rest, "proxy_send_timeout")) == (900, 300)
    assert "proxy_pass http://rapl_sessions;" in sessions and "proxy_pass http://rapl;" in rest
    default = f"    proxy_read_timeout {SHORT_TIMEOUT}s;\n    proxy_send_timeout {SHORT_TIMEOUT}s;\n"
    short = site.replace("    client_max_body_size 25m;\n", default + "    client_max_body_size 25m;\n", 1)
    assert short != site

    survived = idle_dictation(launch("nginx", short), command[1])
    survived.assert_transcribed(COMMAND, 0.4)
    assert survived.close_code is None

    lost = re.sub(r"\n\s*proxy_(read|send)_timeout 3600s;", "", short)
    assert "3600s" not in location_block(lost, "location ~ ^/(v1/)?(v1/)?realtime$")
    cut = idle_dictation(launch("nginx", lost), command[1])
    assert cut.failure is None and cut.completed() is None, cut.types()
    assert cut.closed_at is not None and cut.close_code is None  # nginx drops it: no close frame
    idle_from = next(t for t, e in cut.timed if e.type == "session.updated")
    assert SHORT_TIMEOUT - 0.5 < cut.closed_at - idle_from < IDLE, cut.closed_at - idle_from


def test_caddy_sets_no_timeout_on_sessions(pair: Pair, launch: Callable[..., Proxy],
                                           command: tuple[Path, bytes]) -> None:
    """An idle session through the shipped Caddyfile lives on (Caddy sets no timeout on an upgraded
    connection, and server timeouts, here SHORT_TIMEOUT, end with the handshake). As the Caddyfile
    warns, a read_timeout on the transport would cut it: it applies to the upgraded connection too."""
    port = free_port()
    timeouts = (f"\tservers {{\n\t\ttimeouts {{\n\t\t\tread_body {SHORT_TIMEOUT}s\n"
                f"\t\t\twrite {SHORT_TIMEOUT}s\n\t\t}}\n\t}}\n")
    survived = idle_dictation(launch("caddy", caddy_site(pair.up(), port, options=timeouts), port), command[1])
    survived.assert_transcribed(COMMAND, 0.4)
    assert survived.close_code is None

    port = free_port()
    site = caddy_site(pair, port)
    assert site.count("\t\ttransport http {\n") == 1
    site = site.replace("\t\ttransport http {\n", f"\t\ttransport http {{\n\t\t\tread_timeout {SHORT_TIMEOUT}s\n")
    cut = idle_dictation(launch("caddy", site, port), command[1])
    assert cut.failure is None and cut.completed() is None, cut.types()
    assert cut.closed_at is not None and cut.close_code is None  # Caddy drops it: no close frame
    idle_from = next(t for t, e in cut.timed if e.type == "session.updated")
    assert SHORT_TIMEOUT - 0.5 < cut.closed_at - idle_from < IDLE, cut.closed_at - idle_from


# --- Caddy reloads, and nginx's TLS front ----------------------------------------------------------

def test_caddy_reload_closes_sessions(pair: Pair, launch: Callable[..., Proxy], tmp_path: Path,
                                      command: tuple[Path, bytes]) -> None:
    """A reload of Caddy's configuration closes the sessions through it (1001, no reason); the client's
    next session opens at once. What the Caddyfile says of `systemctl reload caddy`."""
    port, admin = free_port(), free_port()
    text = caddy_site(pair.up(), port, admin=f"127.0.0.1:{admin}")
    proxy = launch("caddy", text, port)
    dictation = Dictation(proxy, command[1], pace=1.0, idle=30)
    dictation.go.set()
    dictation.start()
    assert dictation.ready.wait(30) and "session.updated" in dictation.types(), dictation.types()
    changed = tmp_path / "Caddyfile.changed"
    changed.write_text(text.replace("health_interval 5s", "health_interval 4s"))
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_DATA_HOME": str(tmp_path / "data")}
    reloaded_at = time.monotonic()
    subprocess.run([caddy_binary(), "reload", "--config", str(changed), "--adapter", "caddyfile", "--address",
                    f"127.0.0.1:{admin}"], env=env, check=True, capture_output=True, timeout=30)
    wait_until(lambda: dictation.closed_at, 10, "the session to be closed by the reload")
    # Caddy sends 1001 without a reason; on a loaded machine it was also seen to drop the connection with no
    # close frame at all (code None): either way the session ends at the reload and the next one opens.
    assert dictation.close_code in (1001, None) and dictation.close_reason in ("", None), (
        dictation.close_code, dictation.close_reason)
    assert dictation.closed_at is not None and dictation.closed_at - reloaded_at < 5
    again = Dictation(proxy, command[1], pace=2.0)
    again.go.set()
    again.start()
    assert again.done.wait(60)
    again.assert_transcribed(COMMAND, 0.4)


def test_tls_front_before_the_balancer(pair: Pair, launch: Callable[..., Proxy], tmp_path: Path,
                                       command: tuple[Path, bytes]) -> None:
    """rapl-tls.conf in front of rapl-lb.conf in one nginx, as both would sit in conf.d (their maps
    side by side): a session over wss:// through both, and REST over https://."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=rapl.example.com", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    lb_port, tls_port, http_port = free_port(), free_port(), free_port()
    tls = (DEPLOY / "nginx" / "rapl-tls.conf").read_text()
    for old, new in (("/etc/letsencrypt/live/rapl.example.com/fullchain.pem", str(cert)),
                     ("/etc/letsencrypt/live/rapl.example.com/privkey.pem", str(key)),
                     ("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;"),
                     ("listen 80;", f"listen 127.0.0.1:{http_port};"),
                     ("proxy_pass http://127.0.0.1:8000;", f"proxy_pass http://127.0.0.1:{lb_port};")):
        assert old in tls, old
        tls = tls.replace(old, new)
    tls = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", tls)  # no IPv6 here
    assert tls.count(f"proxy_pass http://127.0.0.1:{lb_port};") == 2  # REST and sessions
    balancer = launch("nginx", lb_site(pair.up()) + "\n" + tls, lb_port)
    wait_listening(tls_port, balancer.proc, balancer.log)
    proxy = Proxy("nginx", f"https://127.0.0.1:{tls_port}", balancer.proc, balancer.log_path,
                  tls=ssl.create_default_context(cafile=str(cert)))
    dictation = Dictation(proxy, command[1], pace=2.0)
    dictation.go.set()
    dictation.start()
    assert dictation.ready.wait(30)
    assert sum(i.sessions() for i in pair) == 1  # it reached an instance through both servers
    assert dictation.done.wait(60), proxy.log()
    dictation.assert_transcribed(COMMAND, 0.4)
    text = transcribe(proxy, command[0])
    assert wer(COMMAND, text) <= 0.4, text
