"""Live dictation clients against RAPL launched as a new user launches it: `python -m rapl` and
`waitress-serve wsgi:app` as subprocesses on the real Whisper tiny.en model, real speech.

- Per launcher: the official Python SDK (``client.realtime.connect(extra_query={"intent":
  "transcription"})``) in real time, and the official Node SDK's ``OpenAIRealtimeWS``
  (tests/clients/node/realtime.mjs; `npm install --prefix tests/clients/node` installs it and the
  ``ws`` package it needs).
- The apps that can point at a custom endpoint, each reproduced from its public source (and
  ../shared/REALTIME.md) with the ``websockets`` client: what it sends, in its order, what it waits
  for, and what it shows the user from what it reads. TypeWhisper, DictateKeyboard, OpenWhispr's
  realtime PR, wyoming_openai (the async SDK: a sentence, then a short command), whisrs (its own
  source: typed deltas, a bearer key), and a browser page (the key as a subprotocol).
- A live session and REST transcriptions through one server at once.

Audio goes 2x faster than real time where the client's timing does not matter (the server's VAD
runs on the audio clock, not the wall clock); each launcher gets one real-time stream, where words
must arrive before the commit.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import openai
import pytest
import soundfile
import soxr
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from rapl.settings import SPEC
from support import ROOT, processes
from support.net import free_port
from support.server import wait_until
from support.speech import JFK_TEXT, espeak, wer

pytestmark = pytest.mark.slow  # RAPL subprocesses, the real tiny.en model, Node

RATE = 24000  # OpenAI's audio/pcm rate, what every client here sends
CHUNK = RATE * 2 // 10  # 100 ms of PCM16
PATH = "/v1/realtime?intent=transcription"
DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"
KEY = "sk-realtime-clients-key"
LAUNCHERS = ("python -m rapl", "waitress-serve")
NODE_DIR = ROOT / "tests" / "clients" / "node"
NPM_INSTALL = "npm install --prefix tests/clients/node"
FIRST = "Please schedule a meeting with the design team next Tuesday."
COMMAND = "Turn on the kitchen lights."  # a Home Assistant command: under two seconds of speech
REST_SENTENCES = ("The quick brown fox jumps over the lazy dog.",
                  "She sells fresh bread at the market every weekend.",
                  "Turn left at the bakery and walk two blocks north.")


# --- servers: the launchers as a user runs them ------------------------------------------------------

def command(launcher: str) -> list[str]:
    """`python -m rapl`, or `waitress-serve wsgi:app` (from the repository, where wsgi.py is)."""
    if launcher == "python -m rapl":
        return [sys.executable, "-m", "rapl"]
    script = Path(sys.executable).with_name("waitress-serve")
    return [str(script) if script.exists() else shutil.which("waitress-serve") or "waitress-serve", "wsgi:app"]


class Launched:
    """One RAPL process on a free port, started from the repository root with nothing of this
    environment's RAPL settings, its output in files."""

    def __init__(self, launcher: str, tmp: Path, **settings: str) -> None:
        self.launcher = launcher
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in SPEC and k != "PYTHONPATH"}
        env.update(ENV_FILE="", PROGRESS="false", PORT=str(self.port), **settings)
        tmp.mkdir(parents=True, exist_ok=True)
        self.err_path = tmp / "stderr.txt"
        with open(tmp / "stdout.txt", "w") as out, open(self.err_path, "w") as err:
            self.proc = processes.start(command(launcher), cwd=ROOT, env=env, stdout=out, stderr=err)
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.err_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 120) -> Launched:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.launcher} exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"{self.launcher} did not answer /health within {timeout} s: {self.log()}")

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def client(self, **kwargs: Any) -> openai.OpenAI:
        """The official Python SDK pointed at this server, as a user types the base URL."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=kwargs.pop("api_key", "local"), max_retries=0,
                             **kwargs)

    def stop(self) -> None:
        try:
            processes.stop(self.proc, signal.SIGTERM, timeout=30)
        finally:
            processes.kill(self.proc)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, whisper_model: str) -> Iterator[Callable[..., Launched]]:
    """``servers(launcher, **settings)``: that launcher on tiny.en, started once for the module."""
    started: dict[tuple[str, tuple[tuple[str, str], ...]], Launched] = {}

    def get(launcher: str, **settings: str) -> Launched:
        key = (launcher, tuple(sorted(settings.items())))
        if key not in started:
            tmp = tmp_path_factory.mktemp(launcher.replace(" ", "_"))
            started[key] = Launched(launcher, tmp, BACKEND="whisper", LOCAL_MODEL=whisper_model, **settings)
            started[key].wait_ready()
        return started[key]

    try:
        yield get
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def server(servers: Callable[..., Launched]) -> Launched:
    """`python -m rapl` with the defaults: the server the apps are pointed at."""
    return servers("python -m rapl")


@pytest.fixture(scope="module")
def keyed(servers: Callable[..., Launched]) -> Launched:
    """`waitress-serve wsgi:app` with API_KEY set."""
    return servers("waitress-serve", API_KEY=KEY)


# --- audio ----------------------------------------------------------------------------------------

def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def linear_16k_to_24k(samples: np.ndarray) -> np.ndarray:
    """What TypeWhisper and whisrs do to their 16 kHz microphone audio: linear interpolation to 24 kHz."""
    positions = np.arange(round(len(samples) * 1.5)) / 1.5
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)


@pytest.fixture(scope="module")
def jfk16(jfk: Path) -> np.ndarray:
    """en_jfk.flac as a 16 kHz microphone would give it (float32 mono)."""
    data, rate = soundfile.read(str(jfk), dtype="float32", always_2d=True)
    return soxr.resample(data.mean(axis=1), rate, 16000).astype(np.float32)


@pytest.fixture(scope="module")
def jfk24(jfk: Path) -> bytes:
    """en_jfk.flac as 24 kHz PCM16 mono: what the SDK examples and most apps send."""
    data, rate = soundfile.read(str(jfk), dtype="float32", always_2d=True)
    return pcm16(soxr.resample(data.mean(axis=1), rate, RATE))


@pytest.fixture(scope="module")
def utterances(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """A spoken sentence and a short spoken command (espeak-ng), each as 24 kHz PCM16."""
    tmp = tmp_path_factory.mktemp("utterances")
    out = []
    for index, text in enumerate((FIRST, COMMAND)):
        data, rate = soundfile.read(str(espeak(text, tmp / f"{index}.wav")), dtype="float32", always_2d=True)
        out.append(pcm16(soxr.resample(data.mean(axis=1), rate, RATE)))
    return out


def silence(seconds: float) -> bytes:
    return bytes(2 * round(seconds * RATE))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def chunks(data: bytes, size: int = CHUNK) -> Iterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at:at + size]


class Pacer:
    """Sleeps so that audio goes out at ``pace`` times real time (0: as fast as it can)."""

    def __init__(self, pace: float) -> None:
        self.pace, self.started, self.sent = pace, time.monotonic(), 0

    def sent_bytes(self, count: int) -> None:
        self.sent += count
        if self.pace:
            due = self.started + self.sent / (2 * RATE) / self.pace
            time.sleep(max(0.0, due - time.monotonic()))


# --- a client's receive loop ------------------------------------------------------------------------

class Received:
    """A client's receive loop on a ``websockets`` connection: each server event with when it came."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.timed: list[tuple[float, dict[str, Any]]] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for message in self.ws:
                event = json.loads(message)
                with self._cond:
                    self.timed.append((time.monotonic(), event))
                    self._cond.notify_all()
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._cond:
            return [event for _, event in self.timed]

    def wait(self, match: Callable[[dict[str, Any]], bool], timeout: float, since: int = 0) -> dict[str, Any] | None:
        """The first event from the ``since``-th on that ``match``es, waiting up to ``timeout`` s; None if none
        came (or the socket closed)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((e for _, e in self.timed[since:] if match(e)), None)
                if found is not None or self.closed:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def is_type(*kinds: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["type"] in kinds


def send(ws: ClientConnection, event: dict[str, Any]) -> None:
    ws.send(json.dumps(event))


def deltas_of(events: list[dict[str, Any]], item_id: str) -> str:
    return "".join(e["delta"] for e in events if e["type"] == DELTA and e["item_id"] == item_id)


def errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] in ("error", FAILED)]


def assert_jfk(text: str, max_wer: float = 0.15) -> None:
    assert wer(JFK_TEXT, text) <= max_wer, f"WER {wer(JFK_TEXT, text):.2f}: {text!r}"


def ga_session(transcription: dict[str, Any], turn_detection: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI's GA session.update for a transcription session of 24 kHz PCM."""
    return {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": RATE}, "transcription": transcription,
        "turn_detection": turn_detection}}}}


# --- the official SDKs, per launcher ------------------------------------------------------------------

@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_python_sdk_in_real_time(servers: Callable[..., Launched], launcher: str, jfk24: bytes) -> None:
    """The README's example: words arrive while the speaker speaks, and add up to the transcript."""
    from openai.types.realtime import (
        ConversationItemInputAudioTranscriptionCompletedEvent,
        ConversationItemInputAudioTranscriptionDeltaEvent,
        SessionUpdatedEvent,
    )

    server = servers(launcher)
    timed: list[tuple[float, Any]] = []
    with server.client().realtime.connect(extra_query={"intent": "transcription"}) as conn:
        assert conn.recv().type == "session.created"

        def read() -> None:
            for event in conn:
                timed.append((time.monotonic(), event))
                if event.type in (COMPLETED, FAILED, "error"):
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        conn.session.update(session=ga_session({"model": "gpt-4o-transcribe", "language": "en"}, None)["session"])
        pacer = Pacer(1.0)
        for chunk in chunks(jfk24):
            conn.input_audio_buffer.append(audio=b64(chunk))
            pacer.sent_bytes(len(chunk))
        committed_at = time.monotonic()
        conn.input_audio_buffer.commit()
        reader.join(60)
    events = [e for _, e in timed]
    assert [e.type for e in events if e.type in ("error", FAILED)] == [], events
    assert isinstance(events[0], SessionUpdatedEvent), events[0]
    completed = events[-1]
    assert isinstance(completed, ConversationItemInputAudioTranscriptionCompletedEvent), events[-3:]
    deltas = [e for e in events if e.type == DELTA]
    assert all(isinstance(d, ConversationItemInputAudioTranscriptionDeltaEvent) for d in deltas)
    assert "".join(d.delta for d in deltas if d.item_id == completed.item_id) == completed.transcript
    early = [e.delta for t, e in timed if e.type == DELTA and t < committed_at]
    assert early, "no words arrived while the audio was still being spoken"
    assert_jfk(completed.transcript)
    assert completed.usage is not None and completed.usage.type == "tokens"  # a gpt-* model name


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (apt-get install nodejs npm)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        pytest.skip(f"node {version} is too old for the openai Node SDK (needs 20 or newer)")
    for package in ("openai", "ws"):
        if not (NODE_DIR / "node_modules" / package).is_dir():
            pytest.skip(f"the Node SDK's realtime client is not installed: {NPM_INSTALL}")
    return node


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_node_sdk_realtime_ws(servers: Callable[..., Launched], launcher: str, node: str, jfk24: bytes,
                              tmp_path: Path) -> None:
    """The Node SDK's OpenAIRealtimeWS with intent transcription: session.update once the socket
    opens, audio once session.updated came, commit at the end (2x real time)."""
    server = servers(launcher)
    clip = tmp_path / "jfk24.pcm"
    clip.write_bytes(jfk24)
    proc = subprocess.run([node, "realtime.mjs", f"{server.url}/v1", str(clip), "2"], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [line for line in lines if "error" in line] == [], lines
    events = [line["event"] for line in lines if "event" in line]
    assert [e["type"] for e in events[:2]] == ["session.created", "session.updated"], events[:2]
    assert errors(events) == []
    completed = events[-1]
    assert completed["type"] == COMPLETED, events[-3:]
    assert deltas_of(events, completed["item_id"]) == completed["transcript"]
    committed_at = next(line["t"] for line in lines if line.get("sent") == "commit")
    assert any(line["event"]["type"] == DELTA for line in lines if "event" in line and line["t"] < committed_at), \
        "no words before the commit"
    assert_jfk(completed["transcript"])


# --- the apps, each as its public source drives the protocol ------------------------------------------

def typewhisper(root: str, samples16: np.ndarray, pace: float) -> dict[str, Any]:
    """TypeWhisper (macOS), custom OpenAI provider with realtime on: URL = the server root typed by
    the user + /v1/realtime?intent=transcription. It sends session.update as soon as the socket
    opens (GA: model, prompt, keywords; 24 kHz; turn_detection null) and waits up to 3 s for
    session.updated or transcription_session.updated before any audio; its 16 kHz microphone
    samples go out resampled linearly to 24 kHz. At stop it commits (unless a transcript is already
    complete) and polls up to 10 s for one. Any error or failed event ends the dictation with that
    message. It shows the completed transcripts in order, then the items still only in deltas
    (``deltaTexts[item_id].append(delta)``), joined by spaces; ``progress`` is what it showed after
    each event."""
    ws_root = root.replace("http://", "ws://", 1)
    shown: list[str] = []
    completed_order: list[str] = []
    completed: dict[str, str] = {}
    delta_texts: dict[str, str] = {}
    problems: list[str] = []

    def current_text() -> str:
        parts = [completed[i] for i in completed_order]
        parts += [t for i, t in sorted(delta_texts.items()) if i not in completed and t.strip()]
        return " ".join(parts).strip()

    with connect(ws_root + "/v1/realtime?intent=transcription", open_timeout=10, max_size=None) as ws:
        received = Received(ws)
        seen = 0

        def apply() -> None:  # the app's collector, for each event received since the last call
            nonlocal seen
            events = received.events
            for event in events[seen:]:
                if event["type"] == DELTA:
                    delta_texts[event["item_id"]] = delta_texts.get(event["item_id"], "") + event["delta"]
                    shown.append(current_text())
                elif event["type"] == COMPLETED and event["transcript"].strip():
                    if event["item_id"] not in completed:
                        completed_order.append(event["item_id"])
                    completed[event["item_id"]] = event["transcript"].strip()
                    delta_texts.pop(event["item_id"], None)
                    shown.append(current_text())
                elif event["type"] in (FAILED, "error"):
                    problems.append(event["error"]["message"])
            seen = len(events)

        send(ws, ga_session({"model": "gpt-4o-transcribe", "prompt": "A speech by President Kennedy.",
                             "keywords": ["Americans"]}, None))
        ready = received.wait(is_type("session.updated", "transcription_session.updated", "error"), 3)
        assert ready is not None and ready["type"] != "error", f"TypeWhisper gives up: {ready}"
        pacer = Pacer(pace)
        for piece in np.array_split(samples16, max(1, len(samples16) // 1600)):  # 100 ms buffers
            apply()
            assert not problems, f"TypeWhisper stops the dictation: {problems}"
            data = pcm16(linear_16k_to_24k(piece))
            send(ws, {"type": "input_audio_buffer.append", "audio": b64(data)})
            pacer.sent_bytes(len(data))
        apply()
        if not completed_order:
            send(ws, {"type": "input_audio_buffer.commit"})
        for _ in range(100):
            apply()
            if completed_order or problems:
                break
            time.sleep(0.1)
        apply()
    return {"text": current_text(), "progress": shown, "problems": problems, "events": received.events}


def test_typewhisper(server: Launched, jfk16: np.ndarray) -> None:
    result = typewhisper(server.url, jfk16, pace=2.0)
    assert result["problems"] == [], result["problems"]
    events = result["events"]
    updated = next(e for e in events if e["type"] == "session.updated")
    assert updated["session"]["audio"]["input"]["transcription"]["keywords"] == ["Americans"]
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    (completed,) = [e for e in events if e["type"] == COMPLETED]
    assert result["text"] == completed["transcript"]
    assert deltas_of(events, completed["item_id"]) == completed["transcript"]
    progress = result["progress"]
    assert len(progress) >= 3, progress  # live text while the user spoke, then the final one
    for before, after in zip(progress, progress[1:], strict=False):
        assert after.startswith(before), (before, after)  # nothing the user saw is taken back
    assert_jfk(result["text"])


def dictate_keyboard(base: str, pcm: bytes, pace: float) -> dict[str, Any]:
    """DictateKeyboard (Android): the base URL typed ending in /v1, + /realtime?intent=transcription.
    GA session.update with the model left blank ("whatever the server runs"), 24 kHz,
    turn_detection null, no OpenAI-Beta header; audio, a commit when the user lifts the key; it
    types the deltas as they come and takes the completed transcript as the result."""
    url = base.replace("http://", "ws://", 1) + "/realtime?intent=transcription"
    with connect(url, open_timeout=10, max_size=None) as ws:
        received = Received(ws)
        send(ws, ga_session({"model": ""}, None))
        pacer = Pacer(pace)
        for chunk in chunks(pcm):
            send(ws, {"type": "input_audio_buffer.append", "audio": b64(chunk)})
            pacer.sent_bytes(len(chunk))
        send(ws, {"type": "input_audio_buffer.commit"})
        done = received.wait(is_type(COMPLETED, FAILED), 30)
    events = received.events
    return {"typed": "".join(e["delta"] for e in events if e["type"] == DELTA), "completed": done,
            "events": events}


def test_dictate_keyboard(server: Launched, jfk24: bytes) -> None:
    result = dictate_keyboard(f"{server.url}/v1", jfk24, pace=2.0)
    events = result["events"]
    assert errors(events) == [], errors(events)
    completed = result["completed"]
    assert completed is not None and completed["type"] == COMPLETED, events[-3:]
    assert result["typed"] == completed["transcript"]  # what it typed live is the final text
    updated = next(e for e in events if e["type"] == "session.updated")
    assert updated["session"]["audio"]["input"]["transcription"]["model"]  # the blank model: the server's
    assert completed["usage"]["type"] == "duration"
    assert_jfk(result["typed"])


def openwhispr(base: str, pcm: bytes, pace: float, ping_every: float = 1.0) -> dict[str, Any]:
    """OpenWhispr's realtime PR: ``<base ending /v1>/realtime?model=gpt-4o-mini-transcribe`` (no
    intent). session.update only after session.created, with server_vad {threshold 0.6,
    silence_duration_ms 600, prefix_padding_ms 500}; no audio until session.updated (it gives up
    otherwise). A WebSocket ping every 15 s (here every ``ping_every`` s of sending, so a short
    clip sees several). It appends each delta to the current partial and, on completed, adds the
    transcript to the text and starts a new partial. At stop it commits and ignores the error
    input_audio_buffer_commit_empty (the server's VAD had committed the last turn already)."""
    url = base.replace("http://", "ws://", 1) + "/realtime?model=gpt-4o-mini-transcribe"
    segments: list[str] = []
    partials_at_completion: list[tuple[str, str]] = []
    pongs: list[bool] = []
    with connect(url, open_timeout=10, max_size=None) as ws:
        received = Received(ws)
        assert received.wait(is_type("session.created"), 10) is not None, "OpenWhispr waits for session.created"
        send(ws, ga_session({"model": "gpt-4o-mini-transcribe"},
                            {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 600,
                             "prefix_padding_ms": 500}))
        assert received.wait(is_type("session.updated"), 10) is not None, "OpenWhispr times out"
        pacer = Pacer(pace)
        last_ping = 0.0
        for chunk in chunks(pcm):
            if time.monotonic() - last_ping >= ping_every:
                pong = ws.ping()
                last_ping = time.monotonic()
                pongs.append(pong.wait(5))
            send(ws, {"type": "input_audio_buffer.append", "audio": b64(chunk)})
            pacer.sent_bytes(len(chunk))
        stop_at = len(received.events)
        send(ws, {"type": "input_audio_buffer.commit"})

        def settled(_event: dict[str, Any]) -> bool:  # the stop's commit answered, and every committed turn told
            events = received.events
            committed = [e["item_id"] for e in events if e["type"] == "input_audio_buffer.committed"]
            stopped = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
            answered = any(e["type"] == "error" for e in events[stop_at:]) or len(committed) > len(stopped)
            return answered and set(committed) <= {e["item_id"] for e in events if e["type"] in (COMPLETED, FAILED)}

        received.wait(settled, 30)
    partial = ""
    ignored: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    for event in received.events:
        if event["type"] == "input_audio_buffer.speech_started":
            pass  # it shows that someone speaks
        elif event["type"] == DELTA:
            partial += event["delta"]
        elif event["type"] == COMPLETED:
            partials_at_completion.append((partial, event["transcript"]))
            if event["transcript"].strip():
                segments.append(event["transcript"].strip())
            partial = ""
        elif event["type"] == "error" and event["error"]["code"] == "input_audio_buffer_commit_empty":
            ignored.append(event)
        elif event["type"] in ("error", FAILED):
            problems.append(event)
    return {"text": " ".join(segments), "partials": partials_at_completion, "pongs": pongs, "ignored": ignored,
            "problems": problems, "events": received.events}


def test_openwhispr(server: Launched, jfk24: bytes) -> None:
    result = openwhispr(f"{server.url}/v1", jfk24 + silence(1.5), pace=2.0)
    events = result["events"]
    assert result["problems"] == [], result["problems"]
    assert len(result["pongs"]) >= 3 and all(result["pongs"]), result["pongs"]
    started = [e for e in events if e["type"] == "input_audio_buffer.speech_started"]
    completed = [e for e in events if e["type"] == COMPLETED]
    assert started and [e["item_id"] for e in started] == [e["item_id"] for e in completed], \
        [(e["type"], e.get("item_id")) for e in events]
    for partial, transcript in result["partials"]:
        assert partial == transcript  # the partial it showed is what the turn ends as
    # The trailing silence let the VAD commit the last turn: the stop's commit is the error it ignores.
    assert [e["error"]["code"] for e in result["ignored"]] == ["input_audio_buffer_commit_empty"]
    assert_jfk(result["text"])


def wyoming_openai(base: str, utterances: list[bytes]) -> list[dict[str, Any]]:
    """Home Assistant's wyoming_openai bridge: the official SDK (async, as the Wyoming server is),
    ``client.realtime.connect(extra_query={"intent": "transcription"})`` on the STT URL, the model in
    session.update, 24 kHz; each utterance Home Assistant streams is appended and committed when it
    ends, its deltas become TranscriptChunk events and its completed transcript the Transcript."""

    async def run() -> list[dict[str, Any]]:
        client = openai.AsyncOpenAI(base_url=base, api_key="local", max_retries=0)
        results: list[dict[str, Any]] = []
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(session=ga_session({"model": "gpt-4o-mini-transcribe", "language": "en"},
                                                         None)["session"])
            for audio in utterances:
                for chunk in chunks(audio, 2048):  # Wyoming AudioChunk events of 1024 samples
                    await conn.input_audio_buffer.append(audio=b64(chunk))
                await conn.input_audio_buffer.commit()
                chunk_texts: list[str] = []
                seen: list[str] = []
                committed = None
                async for event in conn:
                    seen.append(event.type)
                    if event.type == DELTA:
                        chunk_texts.append(event.delta)
                    elif event.type == "input_audio_buffer.committed":
                        committed = event
                    elif event.type in (COMPLETED, FAILED, "error"):
                        results.append({"final": event, "chunks": chunk_texts, "committed": committed,
                                        "seen": seen})
                        break
        await client.close()
        return results

    return asyncio.run(asyncio.wait_for(run(), 120))


def test_wyoming_openai_two_utterances(server: Launched, utterances: list[bytes]) -> None:
    results = wyoming_openai(f"{server.url}/v1", utterances)
    assert len(results) == 2
    items = []
    for result, text in zip(results, (FIRST, COMMAND), strict=True):
        final = result["final"]
        assert final.type == COMPLETED, (final, result["seen"])
        assert "".join(result["chunks"]) == final.transcript
        assert result["committed"].item_id == final.item_id
        assert wer(text, final.transcript) <= 0.3, (text, final.transcript)
        items.append(final.item_id)
    assert items[0] != items[1]
    assert results[1]["committed"].previous_item_id == items[0]


def whisrs(url: str, samples16: np.ndarray, key: str | None, pace: float) -> dict[str, Any]:
    """whisrs (Linux dictation daemon), OpenAI profile, on the realtime URL the user configured
    (ws://…/v1/realtime?intent=transcription), the bearer key optional. It sends session.update at
    once (GA: model, language, server_vad 0.5/300/500), appends its 16 kHz audio resampled linearly
    to 24 kHz, and at the end of the recording commits. Deltas are append-only: it types each as it
    comes and never types a completed transcript again; the completed event after its commit ends
    the stream (an empty-commit error, once something was typed, ends it too; 2 s of grace after
    text). Any other error or failed event aborts the dictation."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with connect(url, additional_headers=headers, open_timeout=10, max_size=None) as ws:
        received = Received(ws)
        send(ws, {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": RATE},
            "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                               "silence_duration_ms": 500}}}}})
        pacer = Pacer(pace)
        for piece in np.array_split(samples16, max(1, len(samples16) // 1600)):
            data = pcm16(linear_16k_to_24k(piece))
            send(ws, {"type": "input_audio_buffer.append", "audio": b64(data)})
            pacer.sent_bytes(len(data))
        index = len(received.events)
        send(ws, {"type": "input_audio_buffer.commit"})
        end = None
        while end is None:  # each message waited for: 2 s once something was typed, else 30 s
            typed = any(e["type"] == DELTA for e in received.events[:index])
            event = received.wait(lambda _e: True, 2 if typed else 30, since=index)
            if event is None:
                break  # it finalizes with what it typed
            index += 1
            if event["type"] in (COMPLETED, "error", FAILED):
                end = event
    events = received.events
    fatal = [e for e in events if e["type"] == FAILED or (
        e["type"] == "error" and not ("buffer too small" in e["error"]["message"].lower()
                                      or "commit_empty" in e["error"]["message"].lower()))]
    return {"typed": [e["delta"] for e in events if e["type"] == DELTA], "end": end, "fatal": fatal,
            "events": events}


def test_whisrs_with_a_bearer_key(keyed: Launched, jfk16: np.ndarray) -> None:
    url = keyed.ws + PATH
    with pytest.raises(InvalidStatus) as refused:  # no key configured: the handshake is refused
        whisrs(url, jfk16[:16000], None, pace=0)
    assert refused.value.response.status_code == 401
    result = whisrs(url, jfk16, KEY, pace=2.0)
    assert result["fatal"] == [], result["fatal"]
    events = result["events"]
    completed = [e for e in events if e["type"] == COMPLETED]
    assert completed, [e["type"] for e in events]
    for event in completed:  # it types deltas only: each turn's deltas must be its whole transcript
        assert deltas_of(events, event["item_id"]) == event["transcript"]
    assert "".join(result["typed"]) == "".join(e["transcript"] for e in completed)
    assert_jfk(" ".join(e["transcript"] for e in completed))


def browser_page(ws_root: str, key: str, pcm: bytes, pace: float, origin: str) -> dict[str, Any]:
    """A web page using OpenAI's browser path: ``new WebSocket(url, ["realtime",
    "openai-insecure-api-key." + key])`` (no headers possible), its page's Origin sent by the
    browser; GA session.update with server VAD at OpenAI's defaults, microphone audio, and the
    deltas of each item shown as they come."""
    with connect(ws_root + PATH, subprotocols=["realtime", f"openai-insecure-api-key.{key}"], origin=origin,
                 open_timeout=10, max_size=None) as ws:
        chosen = ws.subprotocol
        received = Received(ws)
        send(ws, ga_session({"model": "gpt-4o-transcribe", "language": "en"},
                            {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                             "silence_duration_ms": 500}))
        pacer = Pacer(pace)
        for chunk in chunks(pcm):
            send(ws, {"type": "input_audio_buffer.append", "audio": b64(chunk)})
            pacer.sent_bytes(len(chunk))

        def all_told(_event: dict[str, Any]) -> bool:
            events = received.events
            committed = {e["item_id"] for e in events if e["type"] == "input_audio_buffer.committed"}
            return bool(committed) and committed <= {e["item_id"] for e in events if e["type"] in (COMPLETED, FAILED)}

        received.wait(all_told, 30)
    return {"subprotocol": chosen, "events": received.events}


def test_browser_page_with_the_key_as_a_subprotocol(keyed: Launched, jfk24: bytes) -> None:
    page = "http://localhost:5173"
    with pytest.raises(InvalidStatus) as refused:
        browser_page(keyed.ws, "sk-wrong", jfk24[:CHUNK], 0, page)
    assert refused.value.response.status_code == 401
    result = browser_page(keyed.ws, KEY, jfk24 + silence(1.0), 2.0, page)
    assert result["subprotocol"] == "realtime"  # a browser drops a connection that answers none it offered
    events = result["events"]
    assert errors(events) == [], errors(events)
    completed = [e for e in events if e["type"] == COMPLETED]
    assert completed
    for event in completed:
        assert deltas_of(events, event["item_id"]) == event["transcript"]
    assert_jfk(" ".join(e["transcript"] for e in completed))


@pytest.mark.parametrize("path", ["/realtime?intent=transcription", "/v1/v1/realtime?intent=transcription",
                                  "/v1/realtime", "/v1/realtime?model=gpt-4o-mini-transcribe"])
def test_every_path_apps_derive_opens_a_session(server: Launched, path: str) -> None:
    """Lemonade's clients' /realtime, a base URL typed with /v1 twice, no query, OpenWhispr's ?model=."""
    with connect(server.ws + path, open_timeout=10) as ws:
        event = json.loads(ws.recv(10))
    assert event["type"] == "session.created"
    assert event["session"]["type"] == "transcription"


# --- REST and a live session at once -------------------------------------------------------------------

def test_rest_requests_during_a_live_session(server: Launched, jfk24: bytes, tmp_path: Path) -> None:
    clips = [espeak(text, tmp_path / f"rest{i}.wav") for i, text in enumerate(REST_SENTENCES)]
    answers: dict[int, str] = {}
    failures: list[BaseException] = []

    def rest() -> None:
        client = server.client(timeout=120)
        try:
            for index, clip in enumerate(clips):
                with clip.open("rb") as f:
                    answers[index] = client.audio.transcriptions.create(model="whisper-1", file=f).text
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
        finally:
            client.close()

    with connect(server.ws + PATH, open_timeout=10, max_size=None) as ws:
        received = Received(ws)
        send(ws, ga_session({"model": "gpt-4o-transcribe", "language": "en"}, None))
        assert received.wait(is_type("session.updated"), 10) is not None
        worker = threading.Thread(target=rest, daemon=True)
        pacer = Pacer(2.0)
        for index, chunk in enumerate(chunks(jfk24)):
            if index == 10:  # a second into the speech: REST requests start while the session streams
                worker.start()
            send(ws, {"type": "input_audio_buffer.append", "audio": b64(chunk)})
            pacer.sent_bytes(len(chunk))
        send(ws, {"type": "input_audio_buffer.commit"})
        completed = received.wait(is_type(COMPLETED, FAILED), 60)
        worker.join(120)
    assert failures == [], failures
    events = received.events
    assert errors(events) == [], errors(events)
    assert completed is not None and completed["type"] == COMPLETED
    assert deltas_of(events, completed["item_id"]) == completed["transcript"]
    assert_jfk(completed["transcript"])
    assert sorted(answers) == [0, 1, 2]
    client = server.client(timeout=120)
    for index, text in enumerate(REST_SENTENCES):  # each got its own words: those of the idle server
        with clips[index].open("rb") as f:
            idle = client.audio.transcriptions.create(model="whisper-1", file=f).text
        assert answers[index] == idle, (index, answers[index], idle)
        assert wer(text, idle) <= 0.4, (text, idle)  # and they are this sentence's (tiny.en on espeak-ng)
    wait_until(lambda: server.health()["realtime_sessions"] == 0, 10, "the closed session to be freed")
