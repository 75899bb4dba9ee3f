"""OpenAI's Realtime transcription WebSocket (``/v1/realtime?intent=transcription``) end to end:
RAPL's own server on loopback (support.server.LiveServer), real clients (``websockets``' sync
client, the official OpenAI SDK), audio as base64 PCM16 at 24 kHz in 100 ms appends unless a test
declares another format.

The fast tests run on the FakeBackend, which says "speech N.N s" for N.N s of audio, so each answer
shows how much of the streamed audio reached the model; the live VAD (Silero) is real. The slow
ones run the real Whisper tiny.en model on real speech.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
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
from support.fake_backend import FakeBackend, say
from support.realtime import COMPLETED, DELTA, FAILED, PATH, RATE, Client, g711, open_session, pcm16
from support.server import LiveServer, wait_until
from support.speech import JFK_TEXT, SENTENCES, build_recording, spoken, wav_bytes, wer

KEY = "sk-realtime-test-key"
TURN_EVENTS = ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done", COMPLETED]


def tone(seconds: float, hz: float = 330.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def said_seconds(transcript: str) -> float:
    """The seconds of audio a FakeBackend transcript says it was given ("speech N.N s")."""
    words = transcript.split()
    assert len(words) == 3 and words[0] == "speech" and words[2] == "s", transcript
    return float(words[1])


def refused(url: str, **options: Any) -> Any:
    """The HTTP response a WebSocket handshake was refused with."""
    with pytest.raises(InvalidStatus) as caught:
        with connect(url, open_timeout=10, **options):
            pass
    return caught.value.response


def closed_by_server(ws: Any, timeout: float = 30) -> tuple[ConnectionClosed, list[dict[str, Any]]]:
    """Read until the server closes; returns the close and the events that came before it."""
    events = []
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed) as caught:
        while True:
            events.append(json.loads(ws.recv(timeout=max(0.05, deadline - time.monotonic()))))
    return caught.value, events


def health(server: LiveServer) -> dict[str, Any]:
    with server.http() as http:
        answer = http.get("/health")
    assert answer.status_code == 200, answer.text
    return answer.json()


def app_for(backend: FakeBackend | None = None, **settings: str) -> Any:
    return create_app({"ENV_FILE": "", "PROGRESS": "false", "VAD": "false", **settings},
                      backend=backend if backend is not None else FakeBackend())


@pytest.fixture(scope="module")
def live() -> Iterator[Callable[..., LiveServer]]:
    """Factory: ``live(backend=None, **settings)``, a LiveServer on a FakeBackend (REST VAD off unless
    asked), closed when the module ends."""
    servers: list[LiveServer] = []

    def start(backend: FakeBackend | None = None, **settings: str) -> LiveServer:
        server = LiveServer(app_for(backend, **settings))
        servers.append(server)
        assert server.wait_loaded(30) == "ready", server.worker.error
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def fake(live: Callable[..., LiveServer]) -> LiveServer:
    """One FakeBackend server with every default, shared by the tests that leave it as they found it."""
    return live()


# ------------------------------------------------------------------ the session and its configuration


def test_session_created_comes_first_in_the_ga_shape(fake: LiveServer) -> None:
    before = int(time.time())
    ws, _client, created = open_session(fake.ws_url)
    ws.close()
    assert isinstance(created["event_id"], str) and created["event_id"]
    session = created["session"]
    assert session["type"] == "transcription"
    assert session["object"] == "realtime.transcription_session"
    assert session["id"].startswith("sess_")
    assert session["expires_at"] > before  # REALTIME_SESSION_MINUTES from now
    audio_in = session["audio"]["input"]
    assert audio_in["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio_in["noise_reduction"] is None
    turns = audio_in["turn_detection"]
    assert {k: turns[k] for k in ("type", "threshold", "prefix_padding_ms", "silence_duration_ms")} == \
        {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
    assert "model" in audio_in["transcription"] and audio_in["transcription"]["language"] is None
    assert session["include"] is None


def test_session_update_answers_with_the_whole_effective_configuration(fake: LiveServer) -> None:
    ws, client, created = open_session(fake.ws_url)
    with ws:
        shown = client.update(type="transcription", audio={"input": {
            "format": {"type": "audio/pcm", "rate": 16000},
            "noise_reduction": {"type": "far_field"},
            "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en", "prompt": "RAPL live",
                              "keywords": ["RAPL", "Silero"], "delay": "low"},
            "turn_detection": {"type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 200,
                               "silence_duration_ms": 900, "idle_timeout_ms": 6000}}},
            include=["item.input_audio_transcription.logprobs"])
        assert shown["id"] == created["session"]["id"]
        assert shown["type"] == "transcription" and shown["object"] == "realtime.transcription_session"
        audio_in = shown["audio"]["input"]
        assert audio_in["format"] == {"type": "audio/pcm", "rate": 16000}
        assert audio_in["noise_reduction"] == {"type": "far_field"}
        transcription = audio_in["transcription"]
        assert (transcription["model"], transcription["language"], transcription["prompt"],
                transcription["keywords"], transcription["delay"]) == \
            ("gpt-4o-mini-transcribe", "en", "RAPL live", ["RAPL", "Silero"], "low")
        turns = audio_in["turn_detection"]
        assert (turns["type"], turns["threshold"], turns["prefix_padding_ms"], turns["silence_duration_ms"],
                turns["idle_timeout_ms"]) == ("server_vad", 0.7, 200, 900, 6000)
        assert shown["include"] == ["item.input_audio_transcription.logprobs"]

        # A later update of one field keeps every other one: the answer is still the whole configuration.
        again = client.update(type="transcription", audio={"input": {"turn_detection": None}})
        audio_in = again["audio"]["input"]
        assert audio_in["turn_detection"] is None
        assert audio_in["format"] == {"type": "audio/pcm", "rate": 16000}
        assert audio_in["noise_reduction"] == {"type": "far_field"}
        assert (audio_in["transcription"]["model"], audio_in["transcription"]["language"],
                audio_in["transcription"]["prompt"]) == ("gpt-4o-mini-transcribe", "en", "RAPL live")
        assert again["include"] == ["item.input_audio_transcription.logprobs"]

        semantic = client.configure(turn_detection={"type": "semantic_vad", "eagerness": "high"})
        assert semantic["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
        assert semantic["audio"]["input"]["turn_detection"]["eagerness"] == "high"


def test_the_beta_transcription_session_update_is_answered_in_the_beta_shape(fake: LiveServer) -> None:
    ws, client, _created = open_session(fake.ws_url, additional_headers={"OpenAI-Beta": "realtime=v1"})
    with ws:
        shown = client.update(beta=True, input_audio_format="g711_alaw",
                              input_audio_transcription={"model": "whisper-1", "language": "en", "prompt": "hi"},
                              turn_detection={"type": "server_vad", "threshold": 0.4, "prefix_padding_ms": 100,
                                              "silence_duration_ms": 800},
                              input_audio_noise_reduction={"type": "near_field"})
        assert shown["object"] == "realtime.transcription_session" and shown["id"].startswith("sess_")
        assert "audio" not in shown
        assert shown["input_audio_format"] == "g711_alaw"
        transcription = shown["input_audio_transcription"]
        assert (transcription["model"], transcription["language"], transcription["prompt"]) == \
            ("whisper-1", "en", "hi")
        turns = shown["turn_detection"]
        assert (turns["type"], turns["threshold"], turns["prefix_padding_ms"], turns["silence_duration_ms"]) == \
            ("server_vad", 0.4, 100, 800)
        assert shown["input_audio_noise_reduction"] == {"type": "near_field"}

        shown = client.update(beta=True, input_audio_format="pcm16", turn_detection=None)
        assert shown["input_audio_format"] == "pcm16" and shown["turn_detection"] is None
        assert shown["input_audio_transcription"]["model"] == "whisper-1"  # kept from the update before

        # The beta session transcribes too, and its turn is told with the beta item event.
        client.stream(pcm16(tone(1.0)))
        client.commit()
        got = client.until(COMPLETED)
    kinds = [e["type"] for e in got if e["type"] != DELTA]
    assert kinds == ["input_audio_buffer.committed", "conversation.item.created", COMPLETED], kinds
    assert got[-1]["transcript"] == say(1.0)


@pytest.mark.parametrize("path", ["/v1/realtime?intent=transcription", "/realtime?intent=transcription",
                                  "/v1/v1/realtime?intent=transcription", "/v1/realtime",
                                  "/v1/realtime?model=gpt-4o-transcribe&intent=transcription"])
def test_every_path_clients_derive_opens_a_session(fake: LiveServer, path: str) -> None:
    ws, client, _created = open_session(fake.ws_url, path)
    with ws:
        client.send("input_audio_buffer.clear")
        assert client.recv()["type"] == "input_audio_buffer.cleared"


# ------------------------------------------------------------------ errors: an error event, the session goes on


def _update(audio_input: dict[str, Any] | None = None, **session: Any) -> str:
    body: dict[str, Any] = {"type": "transcription", **session}
    if audio_input is not None:
        body["audio"] = {"input": audio_input}
    return json.dumps({"type": "session.update", "session": body})


BAD_EVENTS = [
    pytest.param("hello, server", "invalid_json", None, id="not-json"),
    pytest.param("[1, 2, 3]", "invalid_event", "type", id="not-an-object"),
    pytest.param('"session.update"', "invalid_event", "type", id="a-json-string"),
    pytest.param('{"event_id": "evt_1"}', "invalid_event", "type", id="no-type"),
    pytest.param('{"type": 7}', "invalid_event", "type", id="type-not-a-string"),
    pytest.param('{"type": "response.create"}', "invalid_value", "type", id="unknown-type"),
    pytest.param('{"type": "input_audio_buffer.append", "audio": "not base64!"}', "invalid_base64", "audio",
                 id="bad-base64"),
    pytest.param('{"type": "input_audio_buffer.append", "audio": "QUJDR"}', "invalid_base64", "audio",
                 id="bad-base64-length"),
    pytest.param('{"type": "input_audio_buffer.append", "audio": [1, 2]}', "invalid_value", "audio",
                 id="audio-not-a-string"),
    pytest.param('{"type": "input_audio_buffer.append"}', "invalid_value", "audio", id="no-audio"),
    pytest.param(_update({"format": {"type": "audio/flac"}}), "invalid_value",
                 "session.audio.input.format.type", id="format-type"),
    pytest.param(_update({"format": {"type": "audio/pcm", "rate": 1000}}), "invalid_value",
                 "session.audio.input.format.rate", id="format-rate-1000"),
    pytest.param(_update({"format": {"type": "audio/pcm", "rate": "24000"}}), "invalid_value",
                 "session.audio.input.format.rate", id="format-rate-a-string"),
    pytest.param(_update({"turn_detection": {"type": "push_to_talk"}}), "invalid_value",
                 "session.audio.input.turn_detection.type", id="turn-detection-type"),
    pytest.param(_update({"turn_detection": {"type": "server_vad", "threshold": 2}}), "invalid_value",
                 "session.audio.input.turn_detection.threshold", id="threshold-2"),
    pytest.param(_update({"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}), "invalid_value",
                 "session.audio.input.turn_detection.eagerness", id="eagerness"),
    pytest.param(_update({"transcription": {"language": "123!"}}), "invalid_value",
                 "session.audio.input.transcription.language", id="language"),
    pytest.param(_update({"transcription": {"delay": "later"}}), "invalid_value",
                 "session.audio.input.transcription.delay", id="delay"),
    pytest.param(_update(include=["item.input_audio_transcription.everything"]), "invalid_value",
                 "session.include", id="include"),
    pytest.param(json.dumps({"type": "transcription_session.update", "session": {"input_audio_format": "mp3"}}),
                 "invalid_value", "session.input_audio_format", id="beta-format"),
    pytest.param('{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty", None,
                 id="empty-commit"),
    pytest.param("[" * 200_000, "invalid_json", None, id="huge-nesting"),
    pytest.param('{"type": "session.update", "session": ' + '{"a": ' * 100_000 + "1" + "}" * 100_001,
                 "invalid_json", None, id="huge-object-nesting"),
]


@pytest.mark.parametrize(("message", "code", "param"), BAD_EVENTS)
def test_a_bad_event_is_an_error_event_and_the_session_goes_on(fake: LiveServer, message: str, code: str,
                                                               param: str | None) -> None:
    ws, client, _created = open_session(fake.ws_url)
    with ws:
        client.raw(message)
        error = client.recv()
        assert error["type"] == "error", error
        assert error["error"]["type"] == "invalid_request_error", error
        assert (error["error"]["code"], error["error"]["param"]) == (code, param), error
        assert isinstance(error["error"]["message"], str) and error["error"]["message"], error
        # The next event is answered, and the answer is the next thing the server sends.
        client.send("input_audio_buffer.clear")
        assert client.recv()["type"] == "input_audio_buffer.cleared"
        client.send("session.update", session={"type": "transcription"})
        assert client.recv()["type"] == "session.updated"


def test_a_refused_session_update_changes_nothing(fake: LiveServer) -> None:
    ws, client, _created = open_session(fake.ws_url)
    with ws:
        client.configure(format={"type": "audio/pcm", "rate": 16000}, transcription={"language": "en"})
        client.raw(_update({"format": {"type": "audio/pcm", "rate": 48000},
                            "turn_detection": {"type": "server_vad", "threshold": 5}}))
        assert client.recv()["error"]["param"] == "session.audio.input.turn_detection.threshold"
        shown = client.configure()
        assert shown["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 16000}
        assert shown["audio"]["input"]["transcription"]["language"] == "en"


def test_an_error_names_the_event_it_answers(fake: LiveServer) -> None:
    ws, client, _created = open_session(fake.ws_url)
    with ws:
        client.send("conversation.item.create", event_id="evt_client_1")
        assert client.recv()["error"]["event_id"] == "evt_client_1"
        client.send("input_audio_buffer.commit", event_id="evt_client_2")
        error = client.recv()["error"]
        assert (error["code"], error["event_id"]) == ("input_audio_buffer_commit_empty", "evt_client_2")


@pytest.mark.parametrize("message", [b"\x00\x01binary", b'{"type": "input_audio_buffer.clear"}'],
                         ids=["bytes", "json-as-binary"])
def test_a_binary_frame_is_an_error_event(fake: LiveServer, message: bytes) -> None:
    ws, client, _created = open_session(fake.ws_url)
    with ws:
        client.raw(message)
        error = client.recv()
        assert error["type"] == "error" and error["error"]["code"] == "invalid_event", error
        client.send("input_audio_buffer.clear")
        assert client.recv()["type"] == "input_audio_buffer.cleared"


def test_a_megabyte_of_garbage_is_an_error_event(fake: LiveServer) -> None:
    rng = np.random.default_rng(7)
    garbage = "".join(chr(c) for c in rng.integers(33, 127, 1 << 20))
    ws, client, _created = open_session(fake.ws_url)
    with ws:
        client.raw(garbage)
        assert client.recv()["error"]["code"] == "invalid_json"
        client.send("input_audio_buffer.append", audio="*" * (1 << 20))
        assert client.recv()["error"]["code"] == "invalid_base64"
        client.send("input_audio_buffer.clear")
        assert client.recv()["type"] == "input_audio_buffer.cleared"
    assert health(fake)["status"] == "ready"


def test_commit_of_too_little_audio_and_clear(fake: LiveServer) -> None:
    ws, client, _created = open_session(fake.ws_url)
    with ws:
        client.configure(turn_detection=None)
        client.append(pcm16(tone(0.05)))  # 50 ms: under OpenAI's 100 ms
        client.commit()
        error = client.recv()
        assert error["type"] == "error" and error["error"]["code"] == "input_audio_buffer_commit_empty", error
        client.stream(pcm16(tone(1.0)))
        client.send("input_audio_buffer.clear")
        assert client.recv()["type"] == "input_audio_buffer.cleared"
        client.commit()  # the cleared audio is gone
        assert client.recv()["error"]["code"] == "input_audio_buffer_commit_empty"
        client.stream(pcm16(tone(0.8)))
        client.commit()
        completed = client.until(COMPLETED)[-1]
    assert completed["transcript"] == say(0.8)  # neither the 50 ms nor the cleared second


# ------------------------------------------------------------------ turns


def test_a_committed_turn_is_told_in_order_and_its_deltas_add_up(fake: LiveServer) -> None:
    ws, client, _created = open_session(fake.ws_url)
    with ws:
        client.configure(turn_detection=None)
        client.stream(pcm16(tone(1.6)))
        client.commit()
        first = client.until(COMPLETED)
        client.stream(pcm16(tone(0.7)))
        client.commit()
        second = client.until(COMPLETED)
    for got in (first, second):
        assert [e["type"] for e in got if e["type"] != DELTA] == TURN_EVENTS
    committed, added, done, completed = (e for e in first if e["type"] != DELTA)
    item_id = committed["item_id"]
    assert item_id and committed["previous_item_id"] is None
    assert added["item"]["id"] == done["item"]["id"] == item_id
    assert added["item"]["type"] == "message" and added["item"]["role"] == "user"
    assert added["item"]["content"][0]["type"] == "input_audio"
    assert (completed["item_id"], completed["content_index"]) == (item_id, 0)
    assert completed["transcript"] == say(1.6)
    assert client.deltas(item_id) == completed["transcript"]  # append-only: the deltas are the transcript
    assert all(e["item_id"] == item_id for e in first if e["type"] == DELTA)
    assert completed["usage"] == {"type": "duration", "seconds": 1.6}
    second_committed = second[0]
    assert second_committed["previous_item_id"] == item_id and second_committed["item_id"] != item_id
    assert second[-1]["transcript"] == say(0.7)
    assert client.deltas(second_committed["item_id"]) == say(0.7)


def test_live_deltas_come_before_the_commit_and_add_up(fake: LiveServer, speech_pcm: Any) -> None:
    """Speech (the live VAD hears it) is decoded while it grows: "speech" is said by every partial
    decode, so it goes out before the commit; the final says the rest."""
    audio = speech_pcm[:4 * 16000]
    ws, client, _created = open_session(fake.ws_url)
    with ws:
        client.configure(turn_detection=None)
        client.stream(pcm16(audio), pace=2.0)
        early = client.until(DELTA, timeout=10)[-1]  # before the commit
        client.commit()
        got = client.until(COMPLETED)
    completed = got[-1]
    assert early["item_id"] == completed["item_id"]
    assert completed["transcript"] == say(4.0)
    assert client.deltas(completed["item_id"]) == completed["transcript"]
    ids = [e["event_id"] for e in client.got]
    assert len(set(ids)) == len(ids), "event_ids repeat"


def test_a_gpt_model_is_told_usage_in_tokens_and_logprobs_when_asked(fake: LiveServer) -> None:
    ws, client, _created = open_session(fake.ws_url)
    with ws:
        client.update(type="transcription", audio={"input": {
            "turn_detection": None, "transcription": {"model": "gpt-4o-transcribe"}}},
            include=["item.input_audio_transcription.logprobs"])
        client.stream(pcm16(tone(1.0)))
        client.commit()
        completed = client.until(COMPLETED)[-1]
    assert completed["transcript"] == say(1.0)
    assert completed["usage"]["type"] == "tokens"
    assert [p["token"].strip() for p in completed["logprobs"]] == say(1.0).split()


FORMATS = [
    pytest.param({"type": "audio/pcm", "rate": 16000}, id="pcm-16k"),
    pytest.param({"type": "audio/pcm", "rate": 48000}, id="pcm-48k"),
    pytest.param({"type": "audio/pcm", "rate": 8000}, id="pcm-8k"),
    pytest.param({"type": "audio/pcmu"}, id="pcmu"),
    pytest.param({"type": "audio/pcma"}, id="pcma"),
]


def _encoded(audio_format: dict[str, Any], audio: np.ndarray) -> tuple[bytes, int]:
    """``audio`` (16 kHz) in ``audio_format``, and its bytes per second."""
    if audio_format["type"] == "audio/pcm":
        rate = audio_format["rate"]
        return pcm16(audio, to=rate), rate * 2
    return g711(audio, "ULAW" if audio_format["type"] == "audio/pcmu" else "ALAW"), 8000


@pytest.mark.parametrize("audio_format", FORMATS)
def test_each_audio_format_is_decoded_at_its_rate(fake: LiveServer, speech_pcm: Any,
                                                  audio_format: dict[str, Any]) -> None:
    audio = speech_pcm[:int(2.3 * 16000)]
    data, per_second = _encoded(audio_format, audio)
    ws, client, _created = open_session(fake.ws_url)
    with ws:
        client.configure(format=audio_format, turn_detection=None)
        client.stream(data, bytes_per_second=per_second)
        client.commit()
        completed = client.until(COMPLETED)[-1]
    assert abs(said_seconds(completed["transcript"]) - 2.3) <= 0.1, completed


@pytest.mark.parametrize(("beta_format", "law"), [("g711_ulaw", "ULAW"), ("g711_alaw", "ALAW"), ("pcm16", None)])
def test_beta_formats_are_decoded_at_their_rate(fake: LiveServer, beta_format: str, law: str | None) -> None:
    audio = tone(1.7)
    data = g711(audio, law) if law else pcm16(audio)
    ws, client, _created = open_session(fake.ws_url)
    with ws:
        client.update(beta=True, input_audio_format=beta_format, turn_detection=None)
        client.stream(data, bytes_per_second=8000 if law else RATE * 2)
        client.commit()
        completed = client.until(COMPLETED)[-1]
    assert abs(said_seconds(completed["transcript"]) - 1.7) <= 0.1, completed


def test_a_format_change_between_turns_applies_to_the_next_turn(fake: LiveServer) -> None:
    ws, client, _created = open_session(fake.ws_url)
    with ws:
        client.configure(format={"type": "audio/pcm", "rate": 16000}, turn_detection=None)
        client.stream(pcm16(tone(1.0), to=16000), bytes_per_second=32000)
        client.commit()
        first = client.until(COMPLETED)[-1]
        client.configure(format={"type": "audio/pcmu"})
        client.stream(g711(tone(1.4), "ULAW"), bytes_per_second=8000)
        client.commit()
        second = client.until(COMPLETED)[-1]
    assert abs(said_seconds(first["transcript"]) - 1.0) <= 0.1, first
    assert abs(said_seconds(second["transcript"]) - 1.4) <= 0.1, second


def test_server_vad_finds_the_turns_in_real_speech(live: Callable[..., LiveServer], speech_pcm: Any) -> None:
    """Server VAD (the default) on the JFK clip, REST VAD on: each turn found is started, stopped,
    committed and transcribed, in order, and chained by previous_item_id."""
    server = live(VAD="true")
    audio = np.concatenate([np.zeros(8000, np.float32), speech_pcm, np.zeros(16000, np.float32)])
    ws, client, _created = open_session(server.ws_url)
    with ws:
        client.stream(pcm16(audio))
        client.send("input_audio_buffer.clear")  # taken after every append: each turn found is committed by now
        got = client.until("input_audio_buffer.cleared", timeout=60)
        while len(client.events(COMPLETED)) < len(client.events("input_audio_buffer.committed")):
            got += client.until(COMPLETED)
    started = client.events("input_audio_buffer.speech_started")
    stopped = client.events("input_audio_buffer.speech_stopped")
    committed = client.events("input_audio_buffer.committed")
    completed = client.events(COMPLETED)
    assert started and len(started) == len(stopped) == len(committed) == len(completed), [e["type"] for e in got]
    assert [e["item_id"] for e in started] == [e["item_id"] for e in stopped] == \
        [e["item_id"] for e in committed] == [e["item_id"] for e in completed]
    marks = [m for s, e in zip(started, stopped, strict=True) for m in (s["audio_start_ms"], e["audio_end_ms"])]
    assert marks == sorted(marks) and len(set(marks)) == len(marks), marks
    assert 0 < marks[0] < 1500  # the speech starts 0.5 s in (with 300 ms of padding before it)
    assert marks[-1] <= len(audio) * 1000 // 16000
    assert [c["previous_item_id"] for c in committed] == [None] + [c["item_id"] for c in committed[:-1]]
    for event in completed:
        assert client.deltas(event["item_id"]) == event["transcript"]


def test_events_sent_without_waiting_are_taken_in_order(fake: LiveServer) -> None:
    """A client that does not wait for session.created or session.updated: its update is applied
    before the appends after it (at 16 kHz here), and session.created still comes first."""
    with connect(fake.ws_url + PATH, open_timeout=10) as ws:
        client = Client(ws)
        client.send("session.update", session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}}})
        client.stream(pcm16(tone(1.3), to=16000), bytes_per_second=32000)
        client.commit()
        got = client.until(COMPLETED)
    assert [e["type"] for e in got[:2]] == ["session.created", "session.updated"], got[:2]
    assert abs(said_seconds(got[-1]["transcript"]) - 1.3) <= 0.1, got[-1]


def test_a_failed_transcription_is_told_and_the_session_goes_on(live: Callable[..., LiveServer]) -> None:
    backend = FakeBackend(fail=RuntimeError("the model broke"))
    server = live(backend)
    ws, client, _created = open_session(server.ws_url)
    with ws:
        client.configure(turn_detection=None)
        client.stream(pcm16(tone(1.0)))
        client.commit()
        committed = client.until("input_audio_buffer.committed")[-1]
        failed = client.until(lambda e: e["type"] in (COMPLETED, FAILED))[-1]
        assert failed["type"] == FAILED and failed["item_id"] == committed["item_id"], failed
        assert failed["error"]["type"] == "server_error" and failed["error"]["message"], failed
        backend.fail = None
        client.stream(pcm16(tone(0.5)))
        client.commit()
        assert client.until(COMPLETED)[-1]["transcript"] == say(0.5)


def test_a_model_that_failed_to_load_refuses_the_handshake_503() -> None:
    server = LiveServer(app_for(FakeBackend(fail_load=RuntimeError("no such model"))))
    try:
        assert server.wait_loaded(30) == "failed"
        response = refused(server.ws_url + PATH)
    finally:
        server.close()
    assert response.status_code == 503
    assert json.loads(response.body)["error"]["message"]


def test_a_turn_past_max_audio_seconds_is_told_and_cut(live: Callable[..., LiveServer]) -> None:
    server = live(MAX_AUDIO_SECONDS="2")
    ws, client, _created = open_session(server.ws_url)
    with ws:
        client.configure(turn_detection=None)
        client.stream(pcm16(tone(3.0)))
        client.commit()
        got = client.until(COMPLETED)
        client.stream(pcm16(tone(1.0)))  # the next turn starts afresh
        client.commit()
        after = client.until(COMPLETED)
    errors = [e for e in got if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["error"]["code"] == "audio_too_long", got  # told once, not per append
    assert got[-1]["transcript"] == say(2.0)
    assert [e["type"] for e in after if e["type"] != DELTA] == TURN_EVENTS
    assert after[-1]["transcript"] == say(1.0)


# ------------------------------------------------------------------ limits


def test_a_session_over_realtime_max_sessions_is_told_and_closed_1013(live: Callable[..., LiveServer]) -> None:
    server = live(REALTIME_MAX_SESSIONS="1")
    first, _client, _created = open_session(server.ws_url)
    with first:
        with connect(server.ws_url + PATH, open_timeout=10) as second:
            closed, events = closed_by_server(second)
        assert [e["type"] for e in events] == ["error"], events
        assert events[0]["error"]["code"] == "server_busy"
        assert closed.rcvd is not None and closed.rcvd.code == 1013, closed
        assert "REALTIME_MAX_SESSIONS" in closed.rcvd.reason
        assert health(server)["realtime_sessions"] == 1
    wait_until(lambda: health(server)["realtime_sessions"] == 0, 10, "the first session to end")
    again, _client, _created = open_session(server.ws_url)  # room again
    again.close()


def test_a_message_over_realtime_max_message_mb_closes_1009(live: Callable[..., LiveServer]) -> None:
    server = live(REALTIME_MAX_MESSAGE_MB="1")
    ws, client, _created = open_session(server.ws_url)
    with ws:
        client.append(b"\x00" * (600 << 10))  # 800 KB of base64: under the limit, taken
        client.send("input_audio_buffer.clear")
        assert client.recv()["type"] == "input_audio_buffer.cleared"
        client.send("input_audio_buffer.append", audio="A" * (2 << 20))
        closed, _events = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1009, closed
    wait_until(lambda: health(server)["realtime_sessions"] == 0, 10, "the session to end")


@pytest.mark.slow  # waits out a real timeout (seconds): the full suite runs it, the fast tier does not
def test_an_idle_session_is_closed_1008_naming_the_setting(live: Callable[..., LiveServer]) -> None:
    server = live(REALTIME_IDLE_SECONDS="5")
    ws, _client, _created = open_session(server.ws_url, ping_interval=None)
    with ws:
        closed, events = closed_by_server(ws, timeout=30)
    assert events == [], events
    assert closed.rcvd is not None and closed.rcvd.code == 1008, closed
    assert "REALTIME_IDLE_SECONDS" in closed.rcvd.reason, closed.rcvd.reason


def test_no_sessions_at_all_with_realtime_max_sessions_0(live: Callable[..., LiveServer]) -> None:
    server = live(REALTIME_MAX_SESSIONS="0")
    with connect(server.ws_url + PATH, open_timeout=10) as ws:
        closed, events = closed_by_server(ws)
    assert [e["error"]["code"] for e in events] == ["server_busy"], events
    assert closed.rcvd is not None and closed.rcvd.code == 1013
    assert health(server)["sessions_refused"] == 1


def test_a_busy_session_is_not_idle_its_turn_is_told_before_the_close(live: Callable[..., LiveServer]) -> None:
    gate = threading.Event()
    server = live(FakeBackend(gate=gate))
    server.app.extensions["rapl.realtime"].idle_seconds = 0.3  # under the setting's 5 s minimum, for speed
    try:
        ws, client, _created = open_session(server.ws_url, ping_interval=None)
        with ws:
            client.configure(turn_detection=None)
            client.stream(pcm16(tone(1.0)))
            client.commit()
            client.until("conversation.item.done")
            time.sleep(1.0)  # silent for over three idle times while the turn is transcribed
            gate.set()
            closed, events = closed_by_server(ws)
    finally:
        gate.set()
    assert [e["type"] for e in events if e["type"] != DELTA] == [COMPLETED], events
    assert events[-1]["transcript"] == say(1.0)
    assert closed.rcvd is not None and closed.rcvd.code == 1008 and "REALTIME_IDLE_SECONDS" in closed.rcvd.reason


def test_a_session_past_its_length_is_told_session_expired_and_closed(live: Callable[..., LiveServer]) -> None:
    server = live()
    server.app.extensions["rapl.realtime"].max_seconds = 1.0  # REALTIME_SESSION_MINUTES' minimum is 1 minute
    ws, client, created = open_session(server.ws_url)
    with ws:
        assert created["session"]["expires_at"] <= time.time() + 2
        closed, events = closed_by_server(ws)
    assert [e["type"] for e in events] == ["error"], events
    assert events[0]["error"]["code"] == "session_expired", events
    assert closed.rcvd is not None and closed.rcvd.code == 1008
    assert "REALTIME_SESSION_MINUTES" in closed.rcvd.reason
    assert health(server)["sessions_expired"] >= 1


def test_a_fragmented_message_is_one_event(fake: LiveServer) -> None:
    ws, client, _created = open_session(fake.ws_url)
    with ws:
        client.configure(turn_detection=None)
        event = json.dumps({"type": "input_audio_buffer.append",
                            "audio": base64.b64encode(pcm16(tone(1.2))).decode()})
        ws.send(iter([event[:10], event[10:5000], event[5000:]]))  # a text message in three frames
        client.commit()
        assert client.until(COMPLETED)[-1]["transcript"] == say(1.2)


def test_a_fragmented_message_over_the_limit_closes_1009(live: Callable[..., LiveServer]) -> None:
    server = live(REALTIME_MAX_MESSAGE_MB="1")
    ws, _client, _created = open_session(server.ws_url)
    with ws:
        piece = "A" * (400 << 10)
        try:
            ws.send(iter(['{"type": "input_audio_buffer.append", "audio": "', piece, piece, piece, '"}']))
        except ConnectionClosed:
            pass  # closed while the last frames were being sent
        closed, _events = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1009, closed


def test_pings_are_answered_and_compression_is_optional(fake: LiveServer) -> None:
    for compression in ("deflate", None):
        ws, client, _created = open_session(fake.ws_url, compression=compression)
        with ws:
            assert ws.ping().wait(10), "no pong"
            client.configure(turn_detection=None)
            client.stream(pcm16(tone(0.6)))
            client.commit()
            assert client.until(COMPLETED)[-1]["transcript"] == say(0.6)
            assert ws.ping().wait(10), "no pong"


def test_a_browser_handshake_with_connection_keep_alive_upgrade(fake: LiveServer) -> None:
    """Firefox sends ``Connection: keep-alive, Upgrade``; the handshake is raw bytes here."""
    port = int(fake.ws_url.rsplit(":", 1)[1])
    key = base64.b64encode(b"0123456789abcdef").decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((f"GET {PATH} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: keep-alive, Upgrade\r\n"
                      f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Origin: http://localhost:{port}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            assert data, head
            head += data
    assert head.split(b"\r\n", 1)[0] == b"HTTP/1.1 101 Switching Protocols", head


# ------------------------------------------------------------------ who may connect: HTTP refusals


def test_pages_from_other_origins_are_refused_403(fake: LiveServer) -> None:
    response = refused(fake.ws_url + PATH, origin="https://evil.example")
    assert response.status_code == 403
    assert json.loads(response.body)["error"]["message"]
    for origin in (None, "http://localhost:3000", "http://127.0.0.1:5173"):
        with connect(fake.ws_url + PATH, origin=origin, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "session.created", origin


def test_api_key_as_a_header_or_the_browser_subprotocol(live: Callable[..., LiveServer]) -> None:
    server = live(API_KEY=KEY)
    url = server.ws_url + PATH
    assert refused(url).status_code == 401
    assert refused(url, additional_headers={"Authorization": "Bearer wrong-key"}).status_code == 401
    assert refused(url, subprotocols=["realtime", "openai-insecure-api-key.wrong-key"]).status_code == 401
    assert json.loads(refused(url).body)["error"]["message"]
    with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}, open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
    with connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"], open_timeout=10) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"


def test_a_host_not_allowed_is_refused_421(fake: LiveServer) -> None:
    """DNS rebinding: a name that is not the server's, as the only Host header (the URL's)."""
    port = fake.ws_url.rsplit(":", 1)[1]

    def to_server() -> socket.socket:
        return socket.create_connection(("127.0.0.1", int(port)), timeout=10)

    response = refused(f"ws://rebind.attacker.example:{port}{PATH}", sock=to_server())
    assert response.status_code == 421
    assert json.loads(response.body)["error"]["code"] == "host_not_allowed"
    for host in ("localhost", "127.0.0.1", "[::1]"):
        with connect(f"ws://{host}:{port}{PATH}", sock=to_server(), open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "session.created", host


def test_a_plain_get_is_told_426_in_openais_envelope(fake: LiveServer) -> None:
    with fake.http() as http:
        answer = http.get(PATH)
    assert answer.status_code == 426
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()["error"]
    assert error["code"] == "upgrade_required" and error["type"] and "WebSocket" in error["message"]


def test_a_conversation_intent_is_refused_400(fake: LiveServer) -> None:
    response = refused(fake.ws_url + "/v1/realtime?intent=conversation")
    assert response.status_code == 400
    assert json.loads(response.body)["error"]["param"] == "intent"


# ------------------------------------------------------------------ hang-ups, stops, many at once


def _hang_up(ws: Any, reset: bool = False) -> None:
    """Drop the TCP connection without a close frame (``reset``: with a TCP reset, as a crashed client)."""
    if reset:
        ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        ws.socket.shutdown(socket.SHUT_RDWR)
    ws.socket.close()


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
def test_a_client_gone_mid_turn_frees_its_session(live: Callable[..., LiveServer], reset: bool) -> None:
    server = live()
    budget = server.app.extensions["rapl.decode_budget"]
    ws, client, _created = open_session(server.ws_url)
    client.configure(turn_detection=None)
    client.stream(pcm16(tone(2.0)))
    client.send("input_audio_buffer.clear")  # answered only after every append before it was taken
    client.stream(pcm16(tone(3.0)))  # more than one page (2.048 s) of the recording: charged to the budget
    client.send("session.update", session={"type": "transcription"})
    assert client.until("session.updated")
    assert health(server)["realtime_sessions"] == 1
    assert budget.used > 0  # the turn's audio is held
    _hang_up(ws, reset)
    wait_until(lambda: health(server)["realtime_sessions"] == 0, 10, "the session to end")
    wait_until(lambda: budget.used == 0, 10, "the turn's audio to be freed")
    again, client, _created = open_session(server.ws_url)
    with again:
        client.configure(turn_detection=None)
        client.stream(pcm16(tone(0.9)))
        client.commit()
        assert client.until(COMPLETED)[-1]["transcript"] == say(0.9)


def test_a_client_gone_while_its_turn_is_transcribed(live: Callable[..., LiveServer]) -> None:
    gate = threading.Event()
    server = live(FakeBackend(gate=gate))
    budget = server.app.extensions["rapl.decode_budget"]
    try:
        ws, client, _created = open_session(server.ws_url)
        client.configure(turn_detection=None)
        client.stream(pcm16(tone(3.0)))
        client.commit()
        client.until("conversation.item.done")
        wait_until(lambda: server.backend.running, 10, "the turn's transcription to start")
        client.stream(pcm16(tone(1.0)))
        client.commit()  # a second turn, queued behind the first
        client.until("conversation.item.done")
        _hang_up(ws)
        wait_until(lambda: health(server)["realtime_sessions"] == 0, 10, "the session to end")
    finally:
        gate.set()
    wait_until(lambda: budget.used == 0, 10, "the turns' audio to be freed")
    wait_until(lambda: health(server)["queue_depth"] == 0 and not server.backend.running, 10,
               "the model to be free")
    assert len(server.backend.calls) == 1  # the queued turn of a client that is gone was never transcribed
    again, client, _created = open_session(server.ws_url)
    with again:
        client.configure(turn_detection=None)
        client.stream(pcm16(tone(1.2)))
        client.commit()
        assert client.until(COMPLETED)[-1]["transcript"] == say(1.2)
    assert health(server)["status"] == "ready"


def test_a_graceful_stop_tells_the_running_turn_then_closes_1001() -> None:
    gate = threading.Event()
    server = LiveServer(app_for(FakeBackend(gate=gate, delay=0.2)))
    registry = server.app.extensions["rapl.realtime"]
    stopper = threading.Thread(target=server.stop, daemon=True)
    try:
        assert server.wait_loaded(30) == "ready"
        busy_ws, busy, _created = open_session(server.ws_url)
        idle_ws, idle, _created = open_session(server.ws_url)
        busy.configure(turn_detection=None)
        busy.stream(pcm16(tone(1.0)))
        busy.commit()
        busy.until("conversation.item.done")
        wait_until(lambda: server.backend.running, 10, "the turn's transcription to start")
        stopper.start()
        wait_until(registry.stopping.is_set, 10, "the server to start stopping")
        idle_closed, idle_events = closed_by_server(idle_ws)  # nothing to tell it: closed at once
        gate.set()
        busy_closed, busy_events = closed_by_server(busy_ws)
        stopper.join(30)
    finally:
        gate.set()
        server.close()
    assert idle_events == [] and idle_closed.rcvd is not None
    assert (idle_closed.rcvd.code, idle_closed.rcvd.reason) == (1001, "server shutting down")
    assert [e["type"] for e in busy_events if e["type"] != DELTA] == [COMPLETED], busy_events
    assert busy_events[-1]["transcript"] == say(1.0)
    assert busy_closed.rcvd is not None
    assert (busy_closed.rcvd.code, busy_closed.rcvd.reason) == (1001, "server shutting down")
    assert not stopper.is_alive()


def test_a_graceful_stop_tells_a_queued_turn_it_failed() -> None:
    gate = threading.Event()
    server = LiveServer(app_for(FakeBackend(gate=gate)))
    registry = server.app.extensions["rapl.realtime"]
    stopper = threading.Thread(target=server.stop, daemon=True)
    try:
        assert server.wait_loaded(30) == "ready"
        ws, client, _created = open_session(server.ws_url)
        client.configure(turn_detection=None)
        client.stream(pcm16(tone(1.0)))
        client.commit()
        first = client.until("conversation.item.done")[0]["item_id"]
        wait_until(lambda: server.backend.running, 10, "the first turn's transcription to start")
        client.stream(pcm16(tone(0.5)))
        client.commit()
        second = client.until("conversation.item.done")[0]["item_id"]
        stopper.start()
        wait_until(registry.stopping.is_set, 10, "the server to start stopping")
        gate.set()
        closed, events = closed_by_server(ws)
        stopper.join(30)
    finally:
        gate.set()
        server.close()
    told = {e["item_id"]: e for e in events if e["type"] in (COMPLETED, FAILED)}
    assert set(told) == {first, second}, events
    assert told[first]["type"] == COMPLETED and told[first]["transcript"] == say(1.0)
    assert told[second]["type"] == FAILED and told[second]["error"]["code"] == "shutting_down", told[second]
    assert closed.rcvd is not None and closed.rcvd.code == 1001


def test_sessions_and_rest_requests_at_once_each_get_their_own(live: Callable[..., LiveServer]) -> None:
    server = live(FakeBackend(delay=0.05))
    lengths = (0.8, 1.3, 1.9)
    connected = threading.Barrier(len(lengths) + 1, timeout=30)
    go = threading.Barrier(len(lengths) + 1, timeout=30)
    results: dict[float, dict[str, Any]] = {}
    failures: list[BaseException] = []

    def one(seconds: float) -> None:
        try:
            ws, client, _created = open_session(server.ws_url)
            with ws:
                client.configure(turn_detection=None)
                connected.wait()
                go.wait()
                client.stream(pcm16(tone(seconds)), pace=4.0)
                client.commit()
                results[seconds] = client.until(COMPLETED)[-1]
                results[seconds]["deltas"] = client.deltas(results[seconds]["item_id"])
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)
            connected.abort()
            go.abort()

    threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in lengths]
    for thread in threads:
        thread.start()
    connected.wait()
    assert health(server)["realtime_sessions"] == len(lengths)
    go.wait()
    rest = []
    for seconds in (2.5, 0.6, 1.1):
        answer = server.sdk.audio.transcriptions.create(model="whisper-1",
                                                       file=("clip.wav", wav_bytes(tone(seconds))))
        rest.append(answer.text)
        assert health(server)["status"] == "ready"
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    assert rest == [say(2.5), say(0.6), say(1.1)]
    assert {s: r["transcript"] for s, r in results.items()} == {s: say(s) for s in lengths}
    assert all(r["deltas"] == r["transcript"] for r in results.values())
    assert len({r["item_id"] for r in results.values()}) == len(lengths)
    wait_until(lambda: health(server)["realtime_sessions"] == 0, 10, "the sessions to end")


# ------------------------------------------------------------------ the real model, real speech


@pytest.fixture(scope="module")
def whisper_live(whisper_model: str) -> Iterator[LiveServer]:
    """A LiveServer on the real Whisper tiny.en (REST VAD on, as by default)."""
    app = create_app({"ENV_FILE": "", "PROGRESS": "false", "BACKEND": "whisper", "LOCAL_MODEL": whisper_model})
    server = LiveServer(app)
    assert server.wait_loaded() == "ready", server.worker.error
    yield server
    server.close()


def _clip_16k(path: Any) -> np.ndarray:
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return soxr.resample(data.mean(axis=1), rate, 16000).astype(np.float32)


def _reader(client: Client, done: Callable[[dict[str, Any]], bool], timeout: float) -> tuple[threading.Thread,
                                                                                                list[BaseException]]:
    errors: list[BaseException] = []

    def read() -> None:
        try:
            client.until(done, timeout=timeout)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, errors


@pytest.mark.slow
def test_jfk_in_real_time_words_come_before_the_end_and_match_rest(whisper_live: LiveServer, jfk: Any) -> None:
    rest = whisper_live.sdk.audio.transcriptions.create(model="whisper-1", file=jfk.open("rb")).text
    ws, client, _created = open_session(whisper_live.ws_url)
    early: list[dict[str, Any]] = []
    with ws:
        client.configure(turn_detection=None, transcription={"language": "en"})
        reader, errors = _reader(client, lambda e: e["type"] == COMPLETED, timeout=120)
        client.stream(pcm16(_clip_16k(jfk)), pace=1.0,
                      before_last=lambda: early.extend(e for e in list(client.got) if e["type"] == DELTA))
        client.commit()
        reader.join(120)
    assert not errors, errors
    completed = client.got[-1]
    assert completed["type"] == COMPLETED, completed
    assert early, "no delta arrived while the audio was still being sent"
    assert client.deltas(completed["item_id"]) == completed["transcript"]
    assert wer(rest, completed["transcript"]) <= 0.1, (rest, completed["transcript"])
    assert wer(JFK_TEXT, completed["transcript"]) <= 0.15, completed["transcript"]


@pytest.mark.slow
def test_server_vad_splits_two_utterances(whisper_live: LiveServer, tmp_path: Any) -> None:
    texts = [SENTENCES[1], SENTENCES[4]]  # two tiny.en reads right (espeak's "lazy dog" it hears as "nog")
    parts = [spoken(text, tmp_path / f"s{i}.wav") for i, text in enumerate(texts)]
    audio, onsets = build_recording(parts, [0.6, 1.5])
    ws, client, _created = open_session(whisper_live.ws_url)
    with ws:
        client.configure(turn_detection={"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                         "silence_duration_ms": 500})
        reader, errors = _reader(client, lambda e: len(client.events(COMPLETED)) == 2, timeout=120)
        client.stream(pcm16(audio), pace=2.0)
        reader.join(120)
    assert not errors, errors
    started = client.events("input_audio_buffer.speech_started")
    stopped = client.events("input_audio_buffer.speech_stopped")
    completed = client.events(COMPLETED)
    assert len(started) == len(stopped) == len(completed) == 2, [e["type"] for e in client.got]
    assert [e["item_id"] for e in started] == [e["item_id"] for e in stopped] == [e["item_id"] for e in completed]
    assert started[0]["audio_start_ms"] < stopped[0]["audio_end_ms"] < started[1]["audio_start_ms"] < \
        stopped[1]["audio_end_ms"]
    for event, onset in zip(started, onsets, strict=True):  # the turn starts near its speech (padding before it)
        assert abs(event["audio_start_ms"] - onset * 1000) <= 500, (event, onset)
    for event, text in zip(completed, texts, strict=True):
        assert wer(text, event["transcript"]) <= 0.3, (text, event["transcript"])
        assert client.deltas(event["item_id"]) == event["transcript"]


@pytest.mark.slow
def test_the_official_sdk_realtime_client(whisper_live: LiveServer, jfk: Any) -> None:
    from openai.types.realtime import (
        ConversationItemInputAudioTranscriptionCompletedEvent,
        InputAudioBufferCommittedEvent,
        SessionCreatedEvent,
        SessionUpdatedEvent,
    )

    client = whisper_live.client()
    data = pcm16(_clip_16k(jfk))
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        created = conn.recv()
        assert isinstance(created, SessionCreatedEvent), created
        conn.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None,
            "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"}}}})
        updated = conn.recv()
        assert isinstance(updated, SessionUpdatedEvent), updated
        assert updated.session.audio.input.transcription.language == "en"
        assert updated.session.audio.input.transcription.model == "gpt-4o-mini-transcribe"
        step = RATE * 2 // 10
        for at in range(0, len(data), step):
            conn.input_audio_buffer.append(audio=base64.b64encode(data[at:at + step]).decode())
        conn.input_audio_buffer.commit()
        seen: list[Any] = []
        for event in conn:
            seen.append(event)
            if event.type in (COMPLETED, FAILED, "error"):
                break
    assert any(isinstance(e, InputAudioBufferCommittedEvent) for e in seen), seen
    completed = seen[-1]
    assert isinstance(completed, ConversationItemInputAudioTranscriptionCompletedEvent), completed
    deltas = "".join(e.delta for e in seen if e.type == DELTA and e.item_id == completed.item_id)
    assert deltas == completed.transcript
    assert wer(JFK_TEXT, completed.transcript) <= 0.15, completed.transcript
    assert completed.usage is not None and completed.usage.type == "tokens"
