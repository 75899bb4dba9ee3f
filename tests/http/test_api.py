"""The HTTP API through a real waitress server, the official openai SDK and raw multipart.

Most tests run on the FakeBackend (tests/support/fake_backend.py): the real server, decoder,
VAD, worker, formats and clients, with a model that says "speech N.N s" for each N.N seconds of
audio it is given, in segments of 4 s on the shared ``fake_server``. The tests marked ``slow``
run the real Whisper models: accuracy on every container, Whisper's own options, and a
multilingual model.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from support.fake_backend import FakeBackend, say, transcript
from support.server import Server
from support.speech import JFK_TEXT, build_recording, tone, wav_bytes, wer

CONTAINERS = ["flac", "mp3", "m4a", "ogg", "webm", "wav44", "wav16", "mp4"]
CLIP = wav_bytes(tone(11.0))  # 11 s: the shared fake server says TEXT for it
TEXT = transcript(11.0, 4)  # "speech 4.0 s speech 4.0 s speech 3.0 s"


def _post(server: Server, clip: Path | bytes = CLIP, **data: Any) -> httpx.Response:
    name, body = (clip.name, clip.read_bytes()) if isinstance(clip, Path) else ("clip.wav", clip)
    with server.http() as http:
        return http.post("/v1/audio/transcriptions", files={"file": (name, body)}, data=data)


def _create(server: Server, clip: Path | bytes = CLIP, **kwargs):  # noqa: ANN202
    """client.audio.transcriptions.create(model="whisper-1", file=clip, ...) with the official SDK."""
    file = (clip.name, clip.read_bytes()) if isinstance(clip, Path) else ("clip.wav", clip)
    return server.client().audio.transcriptions.create(**{"model": "whisper-1", "file": file, **kwargs})


def _events(resp: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]


@pytest.fixture(scope="module")
def english_only(serve) -> Server:  # noqa: ANN001
    """A FakeBackend that, like tiny.en, knows English only and cannot translate."""
    return serve({"VAD": "false"}, backend=FakeBackend("tiny.en", languages={"en"}, can_translate=False))


# --- the basics ---------------------------------------------------------------------------------

def test_sdk_text_format_returns_bare_text(fake_server: Server) -> None:
    text = _create(fake_server, response_format="text")
    assert isinstance(text, str) and not text.lstrip().startswith("{")
    assert text.strip() == TEXT


def test_filename_and_content_type_are_not_trusted(fake_server: Server, jfk_variants: dict[str, Path]) -> None:
    """An m4a named .wav and sent as text/plain is still decoded by sniffing its content."""
    with fake_server.http() as http:
        resp = http.post("/v1/audio/transcriptions", data={"response_format": "verbose_json"},
                         files={"file": ("speech.wav", jfk_variants["m4a"].read_bytes(), "text/plain")})
    assert resp.status_code == 200, resp.text
    assert resp.json()["duration"] == pytest.approx(11.0, abs=0.05)
    assert resp.json()["text"].startswith(say(4.0)) and len(fake_server.backend.calls) == 1


@pytest.mark.parametrize("path", ["/audio/transcriptions", "/v1/v1/audio/transcriptions",
                                  "/v1/audio/transcriptions"])
def test_raw_multipart_aliases(fake_server: Server, path: str) -> None:
    with fake_server.http() as http:
        resp = http.post(path, files={"file": ("a.wav", CLIP, "audio/wav")},
                         data={"model": "whisper-1", "response_format": "json"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-rapl-model"] == "fake-tiny" == Path(fake_server.backend.model).name  # never a path
    assert int(resp.headers["openai-processing-ms"]) >= 0
    assert resp.json()["text"] == TEXT


@pytest.mark.parametrize("path", ["/v1/models", "/models", "/v1/v1/models"])
def test_models_lists_the_loaded_model_and_the_openai_names(fake_server: Server, path: str) -> None:
    with fake_server.http() as http:
        body = http.get(path).json()
    assert body["object"] == "list"
    loaded = Path(fake_server.backend.model).name
    assert [m["id"] for m in body["data"]] == [loaded, "whisper-1", "gpt-transcribe", "gpt-4o-transcribe",
                                               "gpt-4o-mini-transcribe", "gpt-4o-mini-transcribe-2025-12-15",
                                               "gpt-4o-transcribe-diarize", "gpt-live-transcribe",
                                               "gpt-realtime-whisper"]
    assert "/" not in str(body) and body["data"][0]["object"] == "model"
    assert all(m["root"] == loaded for m in body["data"][1:])


def test_sdk_models_list_and_retrieve(fake_server: Server) -> None:
    client = fake_server.client()
    assert "whisper-1" in [m.id for m in client.models.list()]
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    loaded = Path(fake_server.backend.model).name
    assert client.models.retrieve(loaded).id == loaded
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-5-turbo")
    assert info.value.body["code"] == "model_not_found"


def test_health_reports_ready(fake_server: Server) -> None:
    with fake_server.http() as http:
        body = http.get("/health").json()
    assert body["status"] == "ready"
    assert body["backend"] == "fake"
    assert body["model"] == Path(fake_server.backend.model).name
    assert body["queue_depth"] == 0 and body["busy"] is False and body["languages"] is None


def test_missing_file_is_a_400_naming_file(fake_server: Server) -> None:
    with fake_server.http() as http:
        resp = http.post("/v1/audio/transcriptions", files={"model": (None, "whisper-1")})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "file"
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_undecodable_file_is_a_400(fake_server: Server) -> None:
    client = fake_server.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"not audio at all" * 64))
    assert info.value.body["param"] == "file"
    assert "decode" in info.value.body["message"]
    assert fake_server.backend.calls == []


def test_unknown_path_and_wrong_method_use_the_envelope(fake_server: Server) -> None:
    with fake_server.http() as http:
        missing = http.get("/v1/nothing")
        wrong = http.get("/v1/audio/transcriptions")
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


# --- every response format through the SDK ------------------------------------------------

def test_all_formats_agree_and_parse(fake_server: Server, tmp_path: Path) -> None:
    import srt
    import webvtt

    verbose = _create(fake_server, response_format="verbose_json")
    plain = _create(fake_server, response_format="json").text
    text = _create(fake_server, response_format="text")
    subs = list(srt.parse(_create(fake_server, response_format="srt")))
    (tmp_path / "a.vtt").write_text(_create(fake_server, response_format="vtt"))
    captions = webvtt.read(str(tmp_path / "a.vtt"))
    assert verbose.language == "english" and verbose.duration == pytest.approx(11.0, abs=0.05)
    assert verbose.text == plain == text.strip() == TEXT
    assert " ".join(s.content for s in subs) == " ".join(c.text for c in captions) == plain
    assert [s.content for s in subs] == [say(4.0), say(4.0), say(3.0)]
    starts = [s.start for s in verbose.segments]
    assert starts == [0.0, 4.0, 8.0] and all(0 <= s.start < s.end <= verbose.duration for s in verbose.segments)
    seg = verbose.segments[0]
    assert seg.tokens and seg.avg_logprob < 0 and 0 <= seg.no_speech_prob <= 1 and seg.id == 0
    assert [round(s.start.total_seconds(), 3) for s in subs] == [round(s.start, 3) for s in verbose.segments]


def test_word_timestamps(fake_server: Server) -> None:
    result = _create(fake_server, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert [w.word for w in result.words] == TEXT.split()
    assert all(a.start <= b.start for a, b in zip(result.words, result.words[1:], strict=False))
    assert result.words[-1].end <= result.duration + 0.01
    assert fake_server.backend.calls[-1].options.word_timestamps is True


def test_words_need_verbose_json(fake_server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _create(fake_server, response_format="json", timestamp_granularities=["word"])
    assert info.value.body["param"] == "timestamp_granularities"
    assert fake_server.backend.calls == []


def test_language_and_prompt_are_used(english_only: Server) -> None:
    result = _create(english_only, response_format="verbose_json", language="en", prompt="Kennedy's inaugural address.")
    assert result.language == "english" and result.text == say(11.0)
    options = english_only.backend.calls[-1].options
    assert options.language == "en" and options.prompt == "Kennedy's inaugural address."
    calls = len(english_only.backend.calls)
    with pytest.raises(openai.BadRequestError) as info:
        _create(english_only, language="de")  # the model knows English only
    assert info.value.body["param"] == "language" and "en" in info.value.body["message"]
    assert len(english_only.backend.calls) == calls


def test_translation_on_an_english_only_model_is_a_400(english_only: Server) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        english_only.client().audio.translations.create(model="whisper-1", file=("a.wav", CLIP))
    assert info.value.body["code"] == "translation_unsupported"


@pytest.mark.parametrize(("field", "value", "param"), [
    ("response_format", "xml", "response_format"),
    ("temperature", "hot", "temperature"),
    ("temperature", "1.5", "temperature"),
    ("stream", "perhaps", "stream"),
    ("timestamp_granularities[]", "syllable", "timestamp_granularities"),
])
def test_bad_parameters_name_the_field(fake_server: Server, field: str, value: str, param: str) -> None:
    resp = _post(fake_server, **({field: value, "response_format": "verbose_json"} if field != "response_format"
                                 else {field: value}))
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert fake_server.backend.calls == []


def test_non_multipart_body_is_a_400(fake_server: Server) -> None:
    with fake_server.http() as http:
        resp = http.post("/v1/audio/transcriptions", json={"file": "abc"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "file"


def test_empty_file_is_a_400(fake_server: Server) -> None:
    with fake_server.http() as http:
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"")})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "empty_file"


# --- streaming ------------------------------------------------------------------------------

def test_stream_deltas_arrive_before_the_end(fake_serve) -> None:  # noqa: ANN001
    server = fake_serve(FakeBackend(segment_seconds=2, delay=0.025))  # 0.05 s per 2 s segment
    recording = wav_bytes(tone(40.0))  # two chunks (MAX_CHUNK_SECONDS=30): 30 s and 10 s
    started = time.perf_counter()
    arrivals, deltas, done = [], [], None
    stream = server.client().audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", recording),
                                                         stream=True)
    for event in stream:
        arrivals.append(time.perf_counter() - started)
        if event.type == "transcript.text.delta":
            deltas.append(event.delta)
        else:
            done = event
    assert done is not None and done.type == "transcript.text.done"
    assert len(deltas) == 20 and "".join(deltas) == done.text
    assert done.text == " ".join([transcript(30.0, 2), transcript(10.0, 2)])
    total = arrivals[-1]
    assert arrivals[0] < 0.6 * total, arrivals  # the first words come well before the end


def test_stream_error_is_raised_by_the_sdk(english_only: Server) -> None:
    with pytest.raises(openai.APIError):
        for _ in english_only.client().audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", CLIP),
                                                                   stream=True, language="fr"):
            pass


def test_stream_error_after_the_headers_is_an_error_event(fake_serve) -> None:  # noqa: ANN001
    server = fake_serve(FakeBackend(fail=RuntimeError("the model broke")))
    resp = _post(server, model="gpt-4o-transcribe", stream="true")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    *_, last = _events(resp)
    assert last["type"] == "error" and last["error"]["code"] == "internal_error" and "broke" not in json.dumps(last)


# --- hostile input: each answered in the envelope, and the server keeps working ----------------

def _raw(server: Server, payload: bytes, timeout: float = 30) -> tuple[int, bytes]:
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(payload.replace(b"Host: x\r\n", b"Host: localhost\r\nConnection: close\r\n", 1))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _wav_with_lying_header() -> bytes:
    data = bytearray(CLIP)
    struct.pack_into("<I", data, 4, 0x7FFFFFFF)
    struct.pack_into("<I", data, data.index(b"data") + 4, 0x7FFFFFF0)  # promises 2 GB of samples
    return bytes(data)


HOSTILE = {
    "zero-byte file": {"files": {"file": ("a.wav", b"")}},
    "random bytes named .wav": {"files": {"file": ("a.wav", bytes(range(256)) * 97)}},
    "text file": {"files": {"file": ("notes.txt", b"Dear diary,\n" * 300, "text/plain")}},
    "no file field": {"data": {"model": "whisper-1"}, "files": {"other": ("x", b"y")}},
    "path traversal filename": {"files": {"file": ("../../etc/passwd", b"root:x:0:0::/root:/bin/sh\n")}},
    "non-UTF-8 form values": {"files": {"file": ("a.wav", b"x" * 10)},
                              "data": {"language": b"\xff\xfe\xfa".decode("latin-1")}},
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_uploads_get_4xx_in_the_envelope(fake_server: Server, case: str) -> None:
    with fake_server.http() as http:
        resp = http.post("/v1/audio/transcriptions", **HOSTILE[case])
        assert 400 <= resp.status_code < 500, resp.text
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
        assert fake_server.backend.calls == []
        good = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)})
    assert good.status_code == 200 and good.json()["text"] == TEXT


def test_lying_wav_header_and_truncated_mp3_still_transcribe(fake_server: Server, jfk_variants) -> None:
    mp3 = jfk_variants["mp3"].read_bytes()
    lying = _post(fake_server, _wav_with_lying_header(), response_format="verbose_json")
    truncated = _post(fake_server, mp3[: len(mp3) * 2 // 3], response_format="verbose_json")
    assert lying.status_code == 200 and lying.json()["text"] == TEXT  # what is there: all 11 s
    assert truncated.status_code == 200
    assert 6.5 < truncated.json()["duration"] < 8.0  # its first two thirds (of 11 s) reached the model
    assert truncated.json()["text"].startswith(say(4.0))


def test_empty_body_and_malformed_multipart(fake_server: Server) -> None:
    empty = _raw(fake_server, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: multipart/form-data; boundary=abc\r\nContent-Length: 0\r\n\r\n")
    body = b"--wrong\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc\r\n--wrong"
    malformed = _raw(fake_server, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Type: multipart/form-data; boundary=abc\r\n"
                                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    no_boundary = _raw(fake_server, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Type: multipart/form-data\r\n"
                                    + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    for status, payload in (empty, malformed, no_boundary):
        assert status == 400
        assert json.loads(payload)["error"]["param"] == "file"


def test_upload_over_the_limit_is_413(fake_serve) -> None:  # noqa: ANN001
    server = fake_serve(MAX_UPLOAD_MB="1")
    with server.http() as http:
        resp = http.post("/v1/audio/transcriptions", files={"file": ("big.wav", b"\0" * (2 * 1024 * 1024))})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
    # a huge declared Content-Length is refused before any body is sent
    status, _ = _raw(server, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: multipart/form-data; boundary=abc\r\n"
                             b"Content-Length: 50000000000\r\n\r\n")
    assert status == 413
    assert server.worker.state == "ready" and server.backend.calls == []


@pytest.mark.slow  # ffmpeg writes 6 hours of audio, and the server decodes 10 minutes of it
def test_decompression_bomb_is_bounded(fake_serve, tmp_path: Path) -> None:  # noqa: ANN001
    """Hours of silence compressed to almost nothing: refused by MAX_AUDIO_SECONDS, fast.

    FLAC declares its length (6 hours, refused before decoding); Ogg/Opus does not (30 minutes,
    decoding stops at the limit)."""
    import subprocess

    server = fake_serve(MAX_AUDIO_SECONDS="600")
    bombs = []
    for ext, seconds, codec in (("flac", 21600, ["-c:a", "flac"]), ("ogg", 1800, ["-c:a", "libopus", "-b:a", "6k"])):
        path = tmp_path / f"bomb.{ext}"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        "anullsrc=r=8000:cl=mono", "-t", str(seconds), *codec, str(path)], check=True)
        assert path.stat().st_size < 5_000_000  # megabytes that decode to hours
        bombs.append(path)
    with server.http() as http:
        for path in bombs:
            started = time.perf_counter()
            resp = http.post("/v1/audio/transcriptions", files={"file": (path.name, path.read_bytes())})
            assert resp.status_code == 413, resp.text
            assert resp.json()["error"]["code"] == "audio_too_long"
            assert time.perf_counter() - started < 60
    assert server.backend.calls == []


def test_one_structured_log_line_per_request(fake_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import re

    caplog.set_level(logging.INFO, logger="rapl.http.api")
    with fake_server.http() as http:
        ok = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)})
        bad = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"junk" * 100)})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request ")]
    assert len(lines) == 2
    first = dict(re.findall(r"(\w+)=(\S+)", lines[0]))
    assert first["id"] == ok.headers["x-request-id"] and first["status"] == "200"
    assert float(first["audio_s"]) == pytest.approx(11.0, abs=0.05)
    assert float(first["inference_s"]) > 0 and 0 < float(first["rtf"]) < 5
    assert {"decode_s", "wait_s", "total_s"} <= set(first)
    assert "status=400" in lines[1] and bad.status_code == 400


# --- what real clients broke on (issue: real clients first) ----------------------------------

@pytest.mark.parametrize(("granularities", "keys"), [
    (["word"], {"words"}), (["segment"], {"segments"}), (["word", "segment"], {"words", "segments"})])
def test_granularities_answer_what_was_asked(fake_server: Server, granularities: list[str], keys: set[str]) -> None:
    """Buzz iterates `words` and crashed when it got segments it did not ask for."""
    body = _post(fake_server, response_format="verbose_json", **{"timestamp_granularities[]": granularities}).json()
    assert {"words", "segments"} & set(body) == keys
    for word in body.get("words", []):
        assert word["word"] == word["word"].strip(",.") and word["word"]  # no punctuation in words
    assert len(body.get("words", [])) == (9 if "word" in granularities else 0)


def test_segments_start_with_a_space_as_openai_writes_them(fake_server: Server) -> None:
    segments = _create(fake_server, response_format="verbose_json").segments
    assert len(segments) == 3
    assert all(s.text.startswith(" ") and not s.text.startswith("  ") for s in segments)
    assert "".join(s.text for s in segments).strip() == " ".join(s.text.strip() for s in segments)


def test_no_time_runs_past_the_audio(fake_serve) -> None:  # noqa: ANN001
    """A model that times speech past the audio (Whisper: 11.12 s in an 11.0 s clip): every format holds it inside."""
    import srt

    server = fake_serve(FakeBackend(segment_seconds=4, overrun=0.12))
    verbose = _create(server, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert verbose.duration == 11.0
    for spans in ([(s.start, s.end) for s in verbose.segments], [(w.start, w.end) for w in verbose.words]):
        assert all(0 <= a <= b <= 11.0 for a, b in spans)
        assert all(b <= c for (_, b), (c, _) in zip(spans, spans[1:], strict=False))  # ordered, no overlap
    assert verbose.segments[-1].end == verbose.words[-1].end == 11.0  # held at the end, not dropped
    subs = list(srt.parse(_create(server, response_format="srt")))
    assert subs[-1].end.total_seconds() == 11.0
    vtt = _create(server, response_format="vtt")
    assert vtt.strip().splitlines()[-2].split(" --> ")[1] == "00:00:11.000"


def test_stream_is_ignored_for_whisper_1(fake_server: Server) -> None:
    """OpenAI: whisper-1 does not stream; LiteLLM's proxy forwards stream=true anyway."""
    resp = _post(fake_server, model="whisper-1", stream="true")
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["text"] == TEXT
    text = _post(fake_server, model="whisper-1", stream="true", response_format="text")
    assert text.headers["content-type"].startswith("text/plain") and "data:" not in text.text
    streamed = _post(fake_server, model="gpt-4o-mini-transcribe", stream="true")
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert _events(streamed)[-1]["text"] == TEXT


def test_stream_events_are_what_the_sdk_types_say(fake_server: Server) -> None:
    from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

    events = _events(_post(fake_server, model="gpt-4o-transcribe", stream="true", prompt="Kennedy"))
    *deltas, done = events
    assert len(deltas) == 3 and all("logprobs" not in e for e in events)  # optional: sent only when asked for
    for event in deltas:
        TranscriptionTextDeltaEvent.model_validate(event, strict=True)
    TranscriptionTextDoneEvent.model_validate(done, strict=True)
    usage = done["usage"]
    assert usage["type"] == "tokens" and usage["input_tokens"] == 110 + 1  # 11 s of audio tokens + the prompt
    assert usage["output_tokens"] == 9  # the model's own tokens: three in each of three segments
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_streamed_text_equals_the_unstreamed_text(fake_serve, spoken_sentences) -> None:  # noqa: ANN001
    """Streams once cut audio into 10 s chunks and changed the words ("ask not" became "ask NOT!").

    With the VAD on, the fake's words say which chunks the model was given: they must be the same."""
    server = fake_serve(FakeBackend(segments_audio=True), VAD="true")
    recording, _ = build_recording(spoken_sentences * 2, [1.2] * (2 * len(spoken_sentences)))
    assert len(recording) / 16000 > 30  # more than one chunk
    client = server.client()
    for name, clip in (("short.wav", wav_bytes(spoken_sentences[0])), ("long.wav", wav_bytes(recording))):
        plain = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=(name, clip)).text
        streamed = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=(name, clip), stream=True)
        *deltas, done = list(streamed)
        assert done.text == plain == "".join(d.delta for d in deltas), name
        assert plain.startswith("speech"), name
    assert len(server.backend.calls) > 4  # the long recording went as several chunks, the same twice


def test_stream_headers_are_sent_at_once(fake_serve) -> None:  # noqa: ANN001
    server = fake_serve(FakeBackend(segment_seconds=2, delay=0.05))  # 2 s for 40 s of audio
    with server.http() as http:
        started = time.perf_counter()
        with http.stream("POST", "/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(tone(40.0)))},
                         data={"model": "gpt-4o-transcribe", "stream": "true"}) as resp:
            headers_at = time.perf_counter() - started
            lines = resp.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            first_event_at = time.perf_counter() - started
            list(lines)
        total = time.perf_counter() - started
    assert resp.headers["content-type"].startswith("text/event-stream") and "delta" in first
    assert headers_at < first_event_at < total
    assert headers_at < 0.25 * total, (headers_at, first_event_at, total)


def test_chunking_strategy_drives_the_vad_for_that_request(fake_server: Server, spoken_sentences) -> None:
    """The shared server has VAD off; a request's chunking_strategy turns it on, with its own settings."""
    speech, _ = build_recording(spoken_sentences[:2], [1.0, 3.0])
    clip = wav_bytes(speech)
    strict = '{"type": "server_vad", "threshold": 1.0}'  # OpenAI's range ends at 1: nothing counts as speech
    assert _post(fake_server, clip, response_format="verbose_json", chunking_strategy=strict).json()["text"] == ""
    over = _post(fake_server, clip, response_format="verbose_json", chunking_strategy='{"type": "server_vad", '
                 '"threshold": 1.01}')
    assert over.status_code == 400 and "from 0 to 1" in over.json()["error"]["message"], over.text
    assert fake_server.backend.calls == []
    relaxed = _post(fake_server, clip, response_format="verbose_json",
                    **{"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "0.3",
                       "chunking_strategy[silence_duration_ms]": "200", "chunking_strategy[prefix_padding_ms]": "300"})
    assert relaxed.json()["text"].startswith("speech")
    # A clip of one chunk goes to the model whole in every format (the same words as json); the VAD's
    # stretches of speech then cut its one segment at the 3 s pause.
    (call,) = fake_server.backend.calls
    assert call.seconds == pytest.approx(len(speech) / 16000) and call.options.vad is not None
    assert len(relaxed.json()["segments"]) >= 2, relaxed.json()["segments"]
    bogus = _post(fake_server, clip, chunking_strategy="bogus")
    assert bogus.status_code == 400 and bogus.json()["error"]["param"] == "chunking_strategy"


@pytest.mark.parametrize(("data", "param"), [
    ({"languages[]": ["en", "de"]}, "languages"),  # the model knows English only
    ({"languages[]": ["xx-klingon"]}, "languages"),
    ({"include[]": "logprobs", "response_format": "text"}, "include"),
    ({"include[]": "everything"}, "include"),
    ({"known_speaker_names[]": "Ann", "known_speaker_references[]": "data:audio/wav;base64,UklGRg=="},
     "known_speaker_names"),
    ({"keywords[]": ["x" * 200]}, "keywords"),
])
def test_openai_parameters_are_checked_not_dropped(english_only: Server, data: dict[str, Any], param: str) -> None:
    calls = len(english_only.backend.calls)
    resp = _post(english_only, **data)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert len(english_only.backend.calls) == calls


def test_one_language_in_languages_is_the_language(fake_server: Server) -> None:
    body = _post(fake_server, response_format="verbose_json", **{"languages[]": ["English"]}).json()
    assert body["language"] == "english" and body["text"] == TEXT
    options = fake_server.backend.calls[-1].options
    assert options.language == "en" and options.candidates == ()


def test_answers_are_never_sniffed(fake_server: Server) -> None:
    with fake_server.http() as http:
        for resp in (http.get("/health"), http.get("/v1/models"), http.get("/nowhere"),
                     http.post("/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)},
                               data={"response_format": "text"})):
            assert resp.headers["x-content-type-options"] == "nosniff", resp.url
            assert len(resp.headers["x-request-id"]) == 12  # the SDKs' request_id, on errors too


def test_logprobs_stream_as_the_deltas_and_the_done_event(fake_server: Server) -> None:
    from openai.types.audio import Transcription

    result = _create(fake_server, model="gpt-4o-transcribe", include=["logprobs"])
    assert isinstance(result, Transcription) and [t.token for t in result.logprobs] == [f" {w}" for w in TEXT.split()]
    assert all(bytes(int(b) for b in t.bytes).decode() == t.token for t in result.logprobs)
    assert "logprobs" not in _post(fake_server).json()
    events = _events(_post(fake_server, model="gpt-4o-transcribe", stream="true", **{"include[]": "logprobs"}))
    *deltas, done = events
    assert [t["token"] for d in deltas for t in d["logprobs"]] == [t["token"] for t in done["logprobs"]]
    assert [t["token"] for t in done["logprobs"]] == [t.token for t in result.logprobs]
    assert all(call.options.logprobs for call in fake_server.backend.calls[:1] + fake_server.backend.calls[-1:])


def test_server_timing_names_each_stage(fake_server: Server) -> None:
    import re

    resp = _post(fake_server, response_format="verbose_json")
    stages = dict(re.findall(r"(\w+);dur=([\d.]+)", resp.headers["server-timing"]))
    assert set(stages) == {"decode", "vad", "wait", "model"}
    assert 0 < float(stages["model"]) <= int(resp.headers["openai-processing-ms"]) + 1


# --- the real tiny.en model -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("container", CONTAINERS)
def test_sdk_transcribes_every_container(whisper_server: Server, jfk_variants: dict[str, Path],
                                         container: str) -> None:
    client = whisper_server.client()
    with jfk_variants[container].open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert wer(JFK_TEXT, result.text) <= 0.10, result.text


@pytest.mark.slow
def test_temperature_zero_starts_at_zero_and_falls_back(whisper_server: Server, jfk: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """VoiceInk and whisper-writer always send 0: OpenAI raises the temperature when decoding fails."""
    model = whisper_server.worker.backend._model
    calls: list[dict[str, Any]] = []
    original = model.transcribe

    def spy(audio: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(audio, **kwargs)

    monkeypatch.setattr(model, "transcribe", spy)
    for temperature in (0, 0.6):
        assert wer(JFK_TEXT, _post(whisper_server, jfk, temperature=str(temperature)).json()["text"]) <= 0.10
    assert [c["temperature"] for c in calls] == [(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), (0.6, 0.8, 1.0)]


@pytest.mark.slow
def test_keywords_reach_whisper_hotwords(whisper_server: Server, jfk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = whisper_server.worker.backend._model
    calls: list[dict[str, Any]] = []
    original = model.transcribe
    monkeypatch.setattr(model, "transcribe", lambda audio, **kw: calls.append(kw) or original(audio, **kw))
    resp = _post(whisper_server, jfk, **{"keywords[]": ["Kennedy", "inaugural"]})
    assert resp.status_code == 200 and calls[-1]["hotwords"] == "Kennedy inaugural"


@pytest.mark.slow
def test_a_hundred_long_keywords_fit_whispers_prompt_budget(whisper_server: Server, jfk: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """100 keywords of 100 characters (the most a request may send) and a long prompt: faster-whisper
    took 223 tokens of each, leaving the transcript no room (20 s, a garbled text in 2 of 3 runs). What
    reaches it now shares Whisper's 223 prompt tokens: the first keywords that fit half, the prompt's end
    the rest; the transcript is JFK's."""
    model = whisper_server.worker.backend._model
    calls: list[dict[str, Any]] = []
    original = model.transcribe
    monkeypatch.setattr(model, "transcribe", lambda audio, **kw: calls.append(kw) or original(audio, **kw))
    keywords = [(f"Term{i:03d} " + "Kennedy inaugural address Washington " * 3)[:100].strip() for i in range(100)]
    prompt = "The speech that follows was given in January. " * 100 + "Ask not."
    resp = _post(whisper_server, jfk, prompt=prompt, **{"keywords[]": keywords})
    assert resp.status_code == 200, resp.text
    hf = model.hf_tokenizer
    tokens = lambda text: len(hf.encode(" " + text, add_special_tokens=False).ids)  # noqa: E731
    hotwords, initial = calls[-1]["hotwords"], calls[-1]["initial_prompt"]
    chosen = hotwords.split(" Term")
    assert 1 <= len(chosen) < 100 and hotwords == " ".join(keywords[:len(chosen)])  # the first, in order
    assert tokens(hotwords) <= 111 and tokens(hotwords) + tokens(initial) <= 223
    assert prompt.endswith(initial) and initial.endswith("Ask not.")  # its end, which Whisper reads
    assert wer(JFK_TEXT, resp.json()["text"]) <= 0.10, resp.json()["text"]


@pytest.mark.slow
def test_logprobs_are_the_models_own_per_token_scores(whisper_server: Server, jfk: Path) -> None:
    import math

    from openai.types.audio import Transcription

    client = whisper_server.client()
    with jfk.open("rb") as f:
        result = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=f, include=["logprobs"])
    assert isinstance(result, Transcription) and result.logprobs
    assert "".join(t.token for t in result.logprobs).strip() == result.text
    assert all(t.logprob <= 0 and bytes(int(b) for b in t.bytes).decode() == t.token for t in result.logprobs)
    confident = sum(math.exp(t.logprob) > 0.5 for t in result.logprobs) / len(result.logprobs)
    assert confident > 0.8  # tiny.en is sure of most of JFK's words
    plain = _post(whisper_server, jfk).json()
    assert "logprobs" not in plain and plain["text"] == result.text
    events = _events(_post(whisper_server, jfk, model="gpt-4o-transcribe", stream="true", **{"include[]": "logprobs"}))
    *deltas, done = events
    assert [t["token"] for d in deltas for t in d["logprobs"]] == [t["token"] for t in done["logprobs"]]
    assert [t["logprob"] for t in done["logprobs"]] == pytest.approx([t.logprob for t in result.logprobs], abs=1e-4)


@pytest.fixture(scope="module")
def base_server(serve, whisper_base_model: str) -> Server:  # noqa: ANN001
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_base_model})
    assert server.worker.state == "ready", server.worker.error
    return server


@pytest.mark.slow
def test_languages_restrict_detection_to_the_given_ones(base_server: Server, shared_audio: Path) -> None:
    mandarin = shared_audio / "zh_sample.wav"
    free = _post(base_server, mandarin, response_format="verbose_json").json()
    assert free["language"] == "chinese"
    among = _post(base_server, mandarin, response_format="verbose_json", **{"languages[]": ["ja", "zh"]}).json()
    assert among["language"] == "chinese" and among["text"] == free["text"]
    without = _post(base_server, mandarin, response_format="verbose_json", **{"languages[]": ["en", "de"]}).json()
    assert without["language"] in ("english", "german")  # Chinese was not allowed


@pytest.mark.slow
def test_translation_on_a_multilingual_model(base_server: Server, shared_audio: Path) -> None:
    with (shared_audio / "zh_sample.wav").open("rb") as f:
        result = base_server.client().audio.translations.create(model="whisper-1", file=f)
    assert result.text and result.text.isascii(), result.text  # English words, not Han characters
