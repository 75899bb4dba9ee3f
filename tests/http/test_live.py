"""Live dictation: OpenAI's Realtime transcription WebSocket, against RAPL's own server on loopback.

The fast tests run on the FakeBackend ("speech N.N s": the seconds of audio it was given) with the
real Silero VAD; the slow ones on the real Whisper tiny.en model and real speech, with the
``websockets`` client and the official Python SDK.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import soundfile
import soxr
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from rapl import create_app
from rapl.backends.whisper import trim_loop
from rapl.http.live import agreed, continuation, stable_count, units
from support.fake_backend import FakeBackend, say
from support.server import LiveServer, wait_until
from support.speech import JFK_TEXT, build_recording, spoken, wer

RATE = 24000
PATH = "/v1/realtime?intent=transcription"


def pcm16(audio: np.ndarray, rate: int = 16000, to: int = RATE) -> bytes:
    """16-bit little-endian PCM of ``audio`` (float, at ``rate``) resampled to ``to``."""
    samples = soxr.resample(audio.astype(np.float32), rate, to) if rate != to else audio
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def append(ws: Any, data: bytes) -> None:
    ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()}))


def stream(ws: Any, data: bytes, bytes_per_second: int = RATE * 2, pace: float = 0.0) -> None:
    """``data`` in 100 ms appends; ``pace`` 1.0 sends in real time, 0 as fast as possible."""
    step = bytes_per_second // 10
    started = time.monotonic()
    for at in range(0, len(data), step):
        append(ws, data[at:at + step])
        if pace:
            time.sleep(max(0.0, started + (at + step) / bytes_per_second / pace - time.monotonic()))


def events(ws: Any, until: Callable[[dict[str, Any]], bool], timeout: float = 30,
           got: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Events received until one satisfies ``until`` (included), each appended to ``got`` as it comes."""
    got = [] if got is None else got
    deadline = time.monotonic() + timeout
    while True:
        event = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        got.append(event)
        if until(event):
            return got


def kind(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["type"] == name


COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


def session(ws: Any, **audio_input: Any) -> dict[str, Any]:
    """Read session.created, send a GA session.update with ``audio_input``, return session.updated."""
    assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
    update = {"type": "transcription", "audio": {"input": audio_input}}
    ws.send(json.dumps({"type": "session.update", "session": update}))
    updated = json.loads(ws.recv(timeout=10))
    assert updated["type"] == "session.updated", updated
    return updated["session"]


def deltas_of(got: list[dict[str, Any]], item_id: str) -> str:
    return "".join(e["delta"] for e in got if e["type"] == DELTA and e["item_id"] == item_id)


def tone(seconds: float, hz: float = 220.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def live() -> Iterator[Callable[..., LiveServer]]:
    """Factory: a LiveServer on a FakeBackend (VAD off unless asked), stopped when the module ends."""
    servers: list[LiveServer] = []

    def start(backend: FakeBackend | None = None, **settings: str) -> LiveServer:
        app = create_app({"ENV_FILE": "", "PROGRESS": "false", "VAD": "false", **settings},
                         backend=backend if backend is not None else FakeBackend())
        server = LiveServer(app)
        assert server.wait_loaded(30) == "ready"
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def fake(live: Callable[..., LiveServer]) -> LiveServer:
    return live()


# -- the pieces of live text ---------------------------------------------------------------------


def test_units_join_back_into_the_text() -> None:
    assert "".join(units(" Hello, world!  How are you? ")) == "Hello, world!  How are you?"
    assert units("我想问 RAPL") == ["我", "想", "问", " RAPL"]


def test_agreement_leaves_out_the_newest_words() -> None:
    earlier = units("And so my fellow")
    assert stable_count(earlier, units("And so my fellow Americans")) == 3  # "fellow": newest of earlier
    assert stable_count(units("And so am I"), units("And so my fellow")) == 2
    assert stable_count(units("hello"), units("Hello,")) == 0  # the newest of both


def test_a_word_is_sent_once_the_hypotheses_that_heard_past_it_agree() -> None:
    s = 16000
    please, remember, to = units("Please remember to")[:1], units("Please remember"), units("Please remember to")
    latest = units("Please remember to water")
    # the hypothesis of 0.3 s heard "Please" only: it has no say on it; the two after it agree
    assert agreed([(int(0.3 * s), please), (int(0.5 * s), remember), (int(0.7 * s), to)], latest, int(0.9 * s), 0) == 1
    # only one hypothesis heard past "Please": medium wants two, so every one in the last second votes
    assert agreed([(int(0.3 * s), please), (int(0.5 * s), remember)], units("Please remember to"), int(0.7 * s), 0) == 0
    assert agreed([(int(0.3 * s), please), (int(0.5 * s), remember)], units("Please remember to"), int(0.7 * s), 0,
                  "low") == 1
    # one that disagrees blocks what it heard differently
    assert agreed([(int(0.5 * s), to)], latest, int(0.9 * s), 0) == 2
    assert agreed([(int(0.5 * s), to), (int(0.7 * s), units("Please remind you to"))], latest, int(0.9 * s), 0) == 1
    # a busy model: the one hypothesis before, however far back, is enough
    assert agreed([(int(1.0 * s), to)], latest, int(3.0 * s), 0) == 2
    assert agreed([], latest, s, 0) == 0


def test_the_final_goes_on_after_what_was_sent() -> None:
    final = units("And so, my fellow Americans, ask not")
    assert continuation(units("And so my"), final) == 3
    assert continuation(units("And so am I"), final) == 4  # two words sent for one: the rest goes on after
    assert continuation([], final) == 0


# -- the protocol ---------------------------------------------------------------------------------


def test_a_looping_draft_is_cut_where_it_starts_to_repeat() -> None:
    assert trim_loop("And so my fellow Americans, and so and so and so") == "And so my fellow Americans, and so"
    assert trim_loop("ask not ask not ask not") == "ask not"
    assert trim_loop("the the the end") == "the"
    assert trim_loop("that that is") == "that that is"  # one word twice is speech
    assert trim_loop("And so, my fellow Americans, ask not") == "And so, my fellow Americans, ask not"
    assert trim_loop("") == ""


def test_session_created_updated_and_the_beta_shape(fake: LiveServer) -> None:
    with connect(fake.ws_url + PATH, additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws:
        created = json.loads(ws.recv(timeout=10))
        assert created["type"] == "session.created" and created["event_id"]
        shown = created["session"]
        assert shown["type"] == "transcription" and shown["object"] == "realtime.transcription_session"
        assert shown["id"].startswith("sess_")
        assert shown["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        turns = shown["audio"]["input"]["turn_detection"]
        assert (turns["type"], turns["threshold"], turns["prefix_padding_ms"], turns["silence_duration_ms"]) == \
            ("server_vad", 0.5, 300, 500)
        ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}, "noise_reduction": {"type": "near_field"},
            "transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": "RAPL",
                              "keywords": ["RAPL"]},
            "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 700}}},
            "include": ["item.input_audio_transcription.logprobs"]}}))
        updated = json.loads(ws.recv(timeout=10))
        assert updated["type"] == "session.updated"
        audio_in = updated["session"]["audio"]["input"]
        assert audio_in["format"] == {"type": "audio/pcm", "rate": 16000}
        assert audio_in["noise_reduction"] == {"type": "near_field"}
        assert audio_in["transcription"]["model"] == "gpt-4o-transcribe"
        assert audio_in["transcription"]["language"] == "en" and audio_in["transcription"]["keywords"] == ["RAPL"]
        assert audio_in["turn_detection"]["threshold"] == 0.6
        assert audio_in["turn_detection"]["silence_duration_ms"] == 700
        assert updated["session"]["include"] == ["item.input_audio_transcription.logprobs"]
        ws.send(json.dumps({"type": "transcription_session.update", "session": {
            "input_audio_format": "g711_ulaw", "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": None}}))
        beta = json.loads(ws.recv(timeout=10))
        assert beta["type"] == "transcription_session.updated"
        assert beta["session"]["input_audio_format"] == "g711_ulaw"
        assert beta["session"]["input_audio_transcription"]["model"] == "whisper-1"
        assert beta["session"]["turn_detection"] is None


@pytest.mark.parametrize(("message", "code", "param"), [
    ("not json", "invalid_json", None),
    ("[1, 2]", "invalid_event", "type"),
    ('{"event_id": "x"}', "invalid_event", "type"),
    ('{"type": "response.create"}', "invalid_value", "type"),
    ('{"type": "input_audio_buffer.append", "audio": "%%%"}', "invalid_base64", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": 5}', "invalid_value", "audio"),
    ('{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty", None),
    ('{"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/wav"}}}}}',
     "invalid_value", "session.audio.input.format.type"),
    ('{"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 1000}}}}}',
     "invalid_value", "session.audio.input.format.rate"),
    ('{"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "magic"}}}}}',
     "invalid_value", "session.audio.input.turn_detection.type"),
    ('{"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"threshold": 2}}}}}',
     "invalid_value", "session.audio.input.turn_detection.threshold"),
    ('{"type": "session.update", "session": {"audio": {"input": {"turn_detection": '
     '{"type": "semantic_vad", "eagerness": "eager"}}}}}', "invalid_value",
     "session.audio.input.turn_detection.eagerness"),
    ('{"type": "session.update", "session": {"audio": {"input": {"transcription": {"language": "123!"}}}}}',
     "invalid_value", "session.audio.input.transcription.language"),
    ('{"type": "session.update", "session": {"audio": {"input": {"transcription": {"delay": "never"}}}}}',
     "invalid_value", "session.audio.input.transcription.delay"),
    ('{"type": "session.update", "session": {"include": ["everything"]}}', "invalid_value", "session.include"),
    ('{"type": "session.update", "session": {"type": "realtime"}}', "invalid_value", "session.type"),
    ('{"type": "session.update", "session": 7}', "invalid_value", "session"),
    ("[" * 100_000, "invalid_json", None),
])
def test_bad_events_get_an_error_event_and_the_session_goes_on(fake: LiveServer, message: str, code: str,
                                                                param: str | None) -> None:
    with connect(fake.ws_url + PATH) as ws:
        json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "input_audio_buffer.cleared"
        ws.send(message)
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error", error
        assert (error["error"]["code"], error["error"]["param"]) == (code, param), error
        assert error["error"]["type"] == "invalid_request_error" and error["error"]["message"]
        ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}}))
        assert json.loads(ws.recv(timeout=10))["type"] == "session.updated"  # still serving


def test_a_binary_message_is_an_error_event(fake: LiveServer) -> None:
    with connect(fake.ws_url + PATH) as ws:
        json.loads(ws.recv(timeout=10))
        ws.send(b"\x00\x01")
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "invalid_event"


def test_a_committed_turn_is_transcribed_with_every_event_in_order(fake: LiveServer) -> None:
    with connect(fake.ws_url + "/realtime") as ws:
        session(ws, turn_detection=None)
        stream(ws, pcm16(tone(2.0)))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        got = events(ws, kind(COMPLETED))
        stream(ws, pcm16(tone(1.0)))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        second = events(ws, kind(COMPLETED))
    types = [e["type"] for e in got if e["type"] != DELTA]
    assert types == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done", COMPLETED]
    committed, completed = got[0], got[-1]
    assert committed["previous_item_id"] is None
    assert completed["item_id"] == committed["item_id"] and completed["content_index"] == 0
    assert completed["transcript"] == say(2.0)
    assert deltas_of(got, completed["item_id"]) == completed["transcript"]  # deltas add up to the transcript
    assert completed["usage"] == {"type": "duration", "seconds": 2.0}
    assert completed["languages"] == [{"code": "en"}]
    assert second[0]["previous_item_id"] == committed["item_id"]
    assert second[-1]["transcript"] == say(1.0)


@pytest.mark.parametrize(("audio_format", "rate"), [
    ({"type": "audio/pcm", "rate": 16000}, 16000), ({"type": "audio/pcm", "rate": 48000}, 48000),
    ({"type": "audio/pcm"}, 24000), ({"type": "audio/pcmu"}, 8000), ({"type": "audio/pcma"}, 8000)])
def test_every_audio_format_is_decoded_at_its_rate(fake: LiveServer, audio_format: dict[str, Any], rate: int) -> None:
    audio = tone(1.5, rate=rate)
    if audio_format["type"] == "audio/pcm":
        data = (audio * 32767).astype("<i2").tobytes()
    else:
        buffer = io.BytesIO()
        subtype = "ULAW" if audio_format["type"] == "audio/pcmu" else "ALAW"
        soundfile.write(buffer, audio, rate, format="RAW", subtype=subtype)
        data = buffer.getvalue()
    with connect(fake.ws_url + PATH) as ws:
        session(ws, format=audio_format, turn_detection=None)
        stream(ws, data, bytes_per_second=len(data) * 2 // 3)
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        completed = events(ws, kind(COMPLETED))[-1]
    seconds = float(completed["transcript"].split()[1])
    assert abs(seconds - 1.5) <= 0.1, completed["transcript"]


def test_a_sample_split_across_appends_is_kept(fake: LiveServer) -> None:
    data = pcm16(tone(1.0))
    with connect(fake.ws_url + PATH) as ws:
        session(ws, turn_detection=None)
        for at in range(0, len(data), 4801):  # odd sizes: samples split between messages
            append(ws, data[at:at + 4801])
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        assert events(ws, kind(COMPLETED))[-1]["transcript"] == say(1.0)


# -- who may connect ------------------------------------------------------------------------------


def _refused(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as refused:
        with connect(url, **kwargs):
            pass
    return refused.value.response.status_code


def test_pages_elsewhere_are_refused_apps_and_local_pages_are_not(fake: LiveServer) -> None:
    assert _refused(fake.ws_url + PATH, origin="https://evil.example") == 403
    assert _refused(fake.ws_url + PATH, origin="null") == 403
    for origin in (None, "http://localhost:3000", fake.url):
        with connect(fake.ws_url + PATH, origin=origin) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "session.created"


def test_the_key_as_a_header_or_the_browser_subprotocol(live: Callable[..., LiveServer]) -> None:
    server = live(API_KEY="s3cret")
    assert _refused(server.ws_url + PATH) == 401
    assert _refused(server.ws_url + PATH, additional_headers={"Authorization": "Bearer wrong"}) == 401
    assert _refused(server.ws_url + PATH, subprotocols=["realtime", "openai-insecure-api-key.wrong"]) == 401
    with connect(server.ws_url + PATH, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
    with connect(server.ws_url + PATH, subprotocols=["realtime", "openai-insecure-api-key.s3cret"]) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"


def test_handshake_refusals_are_http_errors(fake: LiveServer) -> None:
    # (a foreign Host is tested in test_realtime.py over a raw socket: this client would send two Host headers)
    assert _refused(fake.ws_url + "/v1/realtime?intent=conversation") == 400
    with fake.http() as http:
        plain = http.get("/v1/realtime")
    assert plain.status_code == 426 and plain.json()["error"]["code"] == "upgrade_required"


# -- limits and hang-ups --------------------------------------------------------------------------


def _closed(ws: Any) -> ConnectionClosed:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=30)
    return closed.value


def test_sessions_over_the_limit_are_told_and_closed(live: Callable[..., LiveServer]) -> None:
    server = live(REALTIME_MAX_SESSIONS="1")
    with connect(server.ws_url + PATH) as first:
        assert json.loads(first.recv(timeout=10))["type"] == "session.created"
        with connect(server.ws_url + PATH) as second:
            error = json.loads(second.recv(timeout=10))
            assert error["type"] == "error" and error["error"]["code"] == "server_busy"
            closed = _closed(second)
            assert closed.rcvd.code == 1013 and "REALTIME_MAX_SESSIONS" in closed.rcvd.reason
    with connect(server.ws_url + PATH) as again:  # the first has gone: room again
        assert json.loads(again.recv(timeout=10))["type"] == "session.created"


def test_too_large_a_message_closes_with_1009(live: Callable[..., LiveServer]) -> None:
    server = live(REALTIME_MAX_MESSAGE_MB="1")
    with connect(server.ws_url + PATH, max_size=None) as ws:
        json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (2 << 20)}))
        assert _closed(ws).rcvd.code == 1009


@pytest.mark.slow  # waits out a real timeout (seconds): the full suite runs it, the fast tier does not
def test_an_idle_session_is_closed_with_the_reason(live: Callable[..., LiveServer]) -> None:
    server = live(REALTIME_IDLE_SECONDS="5")
    with connect(server.ws_url + PATH, ping_interval=None) as ws:
        json.loads(ws.recv(timeout=10))
        closed = _closed(ws)
    assert closed.rcvd.code == 1008 and "REALTIME_IDLE_SECONDS" in closed.rcvd.reason


def test_a_client_that_vanishes_mid_turn_frees_its_session(live: Callable[..., LiveServer]) -> None:
    server = live()
    budget = server.app.extensions["rapl.decode_budget"]
    ws = connect(server.ws_url + PATH)
    session(ws, turn_detection=None)
    stream(ws, pcm16(tone(3.0)))
    time.sleep(0.3)
    held = budget.used
    ws.socket.shutdown(socket.SHUT_RDWR)  # gone without a close frame
    ws.socket.close()
    with server.http() as http:
        wait_until(lambda: http.get("/health").json()["realtime_sessions"] == 0, 10, "the session to end")
    wait_until(lambda: budget.used == 0, 10, "the turn's audio to be freed")
    assert held > 0
    with connect(server.ws_url + PATH) as again:
        assert json.loads(again.recv(timeout=10))["type"] == "session.created"


def test_stopping_sends_the_running_transcription_then_a_close_frame() -> None:
    gate = threading.Event()
    app = create_app({"ENV_FILE": "", "PROGRESS": "false", "VAD": "false"}, backend=FakeBackend(gate=gate))
    server = LiveServer(app)
    server.wait_loaded(30)
    try:
        with connect(server.ws_url + PATH) as ws:
            session(ws, turn_detection=None)
            stream(ws, pcm16(tone(1.0)))
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            events(ws, kind("conversation.item.done"))
            wait_until(lambda: server.worker.running, 10, "the final transcription to run")
            stopper = threading.Thread(target=server.stop)
            stopper.start()
            time.sleep(0.3)
            gate.set()
            completed = events(ws, kind(COMPLETED))[-1]
            closed = _closed(ws)
        stopper.join(30)
    finally:
        gate.set()
        server.close()
    assert completed["transcript"] == say(1.0)
    assert closed.rcvd.code == 1001 and closed.rcvd.reason == "server shutting down"


def test_sessions_and_rest_requests_at_once_each_get_their_own_words(fake: LiveServer) -> None:
    lengths = [1.0, 1.5, 2.0]
    results: dict[float, str] = {}

    def one(seconds: float) -> None:
        with connect(fake.ws_url + PATH) as ws:
            session(ws, turn_detection=None)
            stream(ws, pcm16(tone(seconds)), pace=4.0)
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            results[seconds] = events(ws, kind(COMPLETED))[-1]["transcript"]

    threads = [threading.Thread(target=one, args=(s,)) for s in lengths]
    for thread in threads:
        thread.start()
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(2.5), 16000, format="WAV")
    rest = [fake.sdk.audio.transcriptions.create(model="whisper-1", file=("a.wav", buffer.getvalue())).text
            for _ in range(3)]
    with fake.http() as http:
        assert http.get("/health").status_code == 200
    for thread in threads:
        thread.join(30)
    assert results == {s: say(s) for s in lengths}
    assert rest == [say(2.5)] * 3


# -- real speech, the real model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def whisper_live(whisper_model: str) -> Iterator[LiveServer]:
    app = create_app({"ENV_FILE": "", "PROGRESS": "false", "BACKEND": "whisper", "LOCAL_MODEL": whisper_model})
    server = LiveServer(app)
    assert server.wait_loaded() == "ready"
    yield server
    server.close()


def _clip(path: Any) -> np.ndarray:
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return soxr.resample(data.mean(axis=1), rate, 16000).astype(np.float32)


@pytest.mark.slow
def test_words_appear_while_speaking_and_add_up_to_the_rest_transcript(whisper_live: LiveServer, jfk: Any) -> None:
    audio = _clip(jfk)
    with open(jfk, "rb") as f:
        rest = whisper_live.sdk.audio.transcriptions.create(model="whisper-1", file=f).text
    with connect(whisper_live.ws_url + PATH) as ws:
        session(ws, turn_detection=None, transcription={"model": "gpt-4o-transcribe", "language": "en"})
        received: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: events(ws, kind(COMPLETED), timeout=60, got=received))
        reader.start()
        stream(ws, pcm16(audio), pace=1.0)
        before_commit = [e for e in received if e["type"] == DELTA]
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        reader.join(60)
    completed = received[-1]
    assert before_commit, "no words before the speaker stopped"
    assert deltas_of(received, completed["item_id"]) == completed["transcript"]
    # Live words are sent before the model has heard what follows them: on this clip tiny.en hears
    # "And so am I fellow Americans" until the speaker goes on after his pause (README: live text).
    assert wer(rest, completed["transcript"]) <= 0.15, (rest, completed["transcript"])
    assert wer(JFK_TEXT, completed["transcript"]) <= 0.2
    assert completed["usage"]["type"] == "tokens"  # a gpt-* model name


@pytest.mark.slow
def test_server_vad_splits_two_utterances(whisper_live: LiveServer, tmp_path: Any) -> None:
    first = "Please schedule a meeting with the design team next Tuesday."
    second = "I would like two coffees and a blueberry muffin."
    audio, _starts = build_recording([spoken(first, tmp_path / "a.wav"), spoken(second, tmp_path / "b.wav")],
                                     [0.5, 1.5])
    with connect(whisper_live.ws_url + PATH) as ws:
        session(ws, turn_detection={"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 600,
                                    "prefix_padding_ms": 300})
        received: list[dict[str, Any]] = []
        done = lambda e: sum(x["type"] == COMPLETED for x in received) == 2  # noqa: E731
        reader = threading.Thread(target=lambda: events(ws, done, timeout=90, got=received))
        reader.start()
        stream(ws, pcm16(audio), pace=2.0)
        reader.join(90)
    completed = [e for e in received if e["type"] == COMPLETED]
    started = [e for e in received if e["type"] == "input_audio_buffer.speech_started"]
    stopped = [e for e in received if e["type"] == "input_audio_buffer.speech_stopped"]
    assert len(completed) == 2 and len(started) == 2 and len(stopped) == 2
    assert started[0]["audio_start_ms"] < stopped[0]["audio_end_ms"] < started[1]["audio_start_ms"] < \
        stopped[1]["audio_end_ms"]
    assert [c["item_id"] for c in completed] == [s["item_id"] for s in started]
    for event, text in zip(completed, (first, second), strict=True):
        assert wer(text, event["transcript"]) <= 0.3, event["transcript"]
        assert deltas_of(received, event["item_id"]) == event["transcript"]


@pytest.mark.slow
def test_the_official_sdk_realtime_client(whisper_live: LiveServer, jfk: Any) -> None:
    client = whisper_live.client()
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        assert conn.recv().type == "session.created"
        conn.send({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None,
            "transcription": {"model": "whisper-1", "language": "en"}}}}})
        assert conn.recv().type == "session.updated"
        data = pcm16(_clip(jfk))
        for at in range(0, len(data), 48000):
            conn.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(data[at:at + 48000]).decode()})
        conn.send({"type": "input_audio_buffer.commit"})
        text = ""
        for event in conn:
            if event.type == DELTA:
                text += event.delta
            if event.type == COMPLETED:
                break
    assert event.transcript == text
    assert wer(JFK_TEXT, event.transcript) <= 0.15
    assert event.usage.type == "duration"


def test_a_short_committed_turn_reaches_the_model(live: Callable[..., LiveServer], tmp_path: Any) -> None:
    """A turn shorter than one page of the recording (2 s) is speech, not silence (VAD on, as by default)."""
    server = live(VAD="true")
    audio = spoken("Turn on the lights.", tmp_path / "short.wav")
    assert len(audio) < 2 * 16000
    with connect(server.ws_url + PATH) as ws:
        session(ws, turn_detection=None)
        stream(ws, pcm16(audio))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        completed = events(ws, kind(COMPLETED))[-1]
    assert completed["transcript"].startswith("speech 1."), completed


@pytest.mark.slow
def test_whisper_drafts_hear_the_turn_so_far(whisper_model: str, whisper_base_model: str, jfk: Any,
                                             shared_audio: Any) -> None:
    """A live draft (a short encoder input, one greedy pass) reads the words of a turn's first seconds, in
    the turn's own language on a multilingual model; a turn of 30 s or more is decoded the usual way."""
    from rapl.backends.whisper import WhisperBackend
    from rapl.settings import Settings
    from rapl.transcript.transcription import Options

    def backend(model: str) -> WhisperBackend:
        loaded = WhisperBackend(Settings.load({"ENV_FILE": "", "BACKEND": "whisper", "LOCAL_MODEL": model}, environ={}))
        loaded.load()
        return loaded

    draft = Options(draft=True)
    jfk_audio = _clip(jfk)
    tiny = backend(whisper_model)
    (segment,) = tiny.transcribe(jfk_audio[:int(3.5 * 16000)], draft)
    assert "fellow" in segment.text.lower() and segment.language == "en", segment
    whole = list(tiny.transcribe(np.tile(jfk_audio, 3), draft))
    # one greedy pass over JFK three times: tiny.en says a phrase once too often at the window's seam (WER
    # 0.23 with ctranslate2 4.8.5 and faster-whisper 1.2.1 here; 0.2 or less on an earlier CI machine)
    assert len(whole) > 1 and wer(" ".join([JFK_TEXT] * 3), " ".join(s.text for s in whole)) <= 0.25
    base = backend(whisper_base_model)
    (zh,) = base.transcribe(_clip(shared_audio / "zh_sample.wav")[:4 * 16000], draft)
    assert zh.language == "zh" and any("\u4e00" <= c <= "\u9fff" for c in zh.text), zh
