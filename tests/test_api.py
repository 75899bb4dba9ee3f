"""The HTTP API through a real waitress server, the official openai SDK and raw multipart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from conftest import JFK_TEXT, Server, wer

CONTAINERS = ["flac", "mp3", "m4a", "ogg", "webm", "wav44", "wav16", "mp4"]


@pytest.mark.parametrize("container", CONTAINERS)
def test_sdk_transcribes_every_container(whisper_server: Server, jfk_variants: dict[str, Path],
                                         container: str) -> None:
    client = whisper_server.client()
    with jfk_variants[container].open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert wer(JFK_TEXT, result.text) <= 0.10, result.text


def test_sdk_text_format_returns_bare_text(whisper_server: Server, jfk: Path) -> None:
    with jfk.open("rb") as f:
        text = whisper_server.client().audio.transcriptions.create(
            model="whisper-1", file=f, response_format="text")
    assert isinstance(text, str) and not text.lstrip().startswith("{")
    assert wer(JFK_TEXT, text) <= 0.10


def test_filename_and_content_type_are_not_trusted(whisper_server: Server,
                                                   jfk_variants: dict[str, Path]) -> None:
    """An m4a named .wav and sent as text/plain is still decoded by sniffing its content."""
    with whisper_server.http() as http:
        resp = http.post("/v1/audio/transcriptions",
                         files={"file": ("speech.wav", jfk_variants["m4a"].read_bytes(), "text/plain")})
    assert resp.status_code == 200, resp.text
    assert wer(JFK_TEXT, resp.json()["text"]) <= 0.10


@pytest.mark.parametrize("path", ["/audio/transcriptions", "/v1/v1/audio/transcriptions",
                                  "/v1/audio/transcriptions"])
def test_raw_multipart_aliases(whisper_server: Server, jfk_variants: dict[str, Path], path: str) -> None:
    body = jfk_variants["wav16"].read_bytes()
    with whisper_server.http() as http:
        resp = http.post(path, files={"file": ("a.wav", body, "audio/wav")},
                         data={"model": "whisper-1", "response_format": "json"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-rapl-model"] == Path(whisper_server.worker.backend.model).name  # never a path
    assert int(resp.headers["openai-processing-ms"]) >= 0
    assert wer(JFK_TEXT, resp.json()["text"]) <= 0.10


@pytest.mark.parametrize("path", ["/v1/models", "/models", "/v1/v1/models"])
def test_models_lists_the_loaded_model_and_the_openai_names(whisper_server: Server, path: str) -> None:
    with whisper_server.http() as http:
        body = http.get(path).json()
    assert body["object"] == "list"
    loaded = Path(whisper_server.worker.backend.model).name
    assert [m["id"] for m in body["data"]] == [loaded, "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"]
    assert "/" not in str(body) and body["data"][0]["object"] == "model"
    assert all(m["root"] == loaded for m in body["data"][1:])


def test_sdk_models_list_and_retrieve(whisper_server: Server) -> None:
    client = whisper_server.client()
    assert "whisper-1" in [m.id for m in client.models.list()]
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    loaded = Path(whisper_server.worker.backend.model).name
    assert client.models.retrieve(loaded).id == loaded
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-5-turbo")
    assert info.value.body["code"] == "model_not_found"


def test_health_reports_ready(whisper_server: Server) -> None:
    with whisper_server.http() as http:
        body = http.get("/health").json()
    assert body["status"] == "ready"
    assert body["backend"] == "whisper"
    assert body["model"] == Path(whisper_server.worker.backend.model).name
    assert body["queue_depth"] == 0


def test_missing_file_is_a_400_naming_file(whisper_server: Server) -> None:
    with whisper_server.http() as http:
        resp = http.post("/v1/audio/transcriptions", files={"model": (None, "whisper-1")})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "file"
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_undecodable_file_is_a_400(whisper_server: Server) -> None:
    client = whisper_server.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"not audio at all" * 64))
    assert info.value.body["param"] == "file"
    assert "decode" in info.value.body["message"]


def test_unknown_path_and_wrong_method_use_the_envelope(whisper_server: Server) -> None:
    with whisper_server.http() as http:
        missing = http.get("/v1/nothing")
        wrong = http.get("/v1/audio/transcriptions")
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


# --- every response format through the SDK ------------------------------------------------

def _create(server: Server, path: Path, **kwargs):  # noqa: ANN202
    with path.open("rb") as f:
        return server.client().audio.transcriptions.create(model="whisper-1", file=f, **kwargs)


def test_all_formats_agree_and_parse(whisper_server: Server, jfk: Path, tmp_path: Path) -> None:
    import srt
    import webvtt

    verbose = _create(whisper_server, jfk, response_format="verbose_json")
    plain = _create(whisper_server, jfk, response_format="json").text
    text = _create(whisper_server, jfk, response_format="text")
    subs = list(srt.parse(_create(whisper_server, jfk, response_format="srt")))
    (tmp_path / "a.vtt").write_text(_create(whisper_server, jfk, response_format="vtt"))
    captions = webvtt.read(str(tmp_path / "a.vtt"))
    assert verbose.language == "english" and verbose.duration == pytest.approx(11.0, abs=0.05)
    assert verbose.text == plain == text.strip()
    assert " ".join(s.content for s in subs) == " ".join(c.text for c in captions) == plain
    starts = [s.start for s in verbose.segments]
    assert starts == sorted(starts) and all(0 <= s.start < s.end <= verbose.duration for s in verbose.segments)
    seg = verbose.segments[0]
    assert seg.tokens and seg.avg_logprob < 0 and 0 <= seg.no_speech_prob <= 1 and seg.id == 0
    assert [round(s.start.total_seconds(), 3) for s in subs] == [round(s.start, 3) for s in verbose.segments]


def test_word_timestamps(whisper_server: Server, jfk: Path) -> None:
    result = _create(whisper_server, jfk, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    words = [w.word.strip(",.").lower() for w in result.words]
    assert words[:4] == ["and", "so", "my", "fellow"]
    assert all(a.start <= b.start for a, b in zip(result.words, result.words[1:], strict=False))
    assert result.words[-1].end <= result.duration + 0.01


def test_words_need_verbose_json(whisper_server: Server, jfk: Path) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _create(whisper_server, jfk, response_format="json", timestamp_granularities=["word"])
    assert info.value.body["param"] == "timestamp_granularities"


def test_language_and_prompt_are_used(whisper_server: Server, jfk: Path) -> None:
    result = _create(whisper_server, jfk, response_format="verbose_json", language="en",
                     prompt="Kennedy's inaugural address.")
    assert result.language == "english" and wer(JFK_TEXT, result.text) <= 0.10
    with pytest.raises(openai.BadRequestError) as info:
        _create(whisper_server, jfk, language="de")  # tiny.en is English-only
    assert info.value.body["param"] == "language" and "en" in info.value.body["message"]


def test_translation_on_an_english_only_model_is_a_400(whisper_server: Server, jfk: Path) -> None:
    with jfk.open("rb") as f, pytest.raises(openai.BadRequestError) as info:
        whisper_server.client().audio.translations.create(model="whisper-1", file=f)
    assert info.value.body["code"] == "translation_unsupported"


@pytest.mark.parametrize(("field", "value", "param"), [
    ("response_format", "xml", "response_format"),
    ("temperature", "hot", "temperature"),
    ("temperature", "1.5", "temperature"),
    ("stream", "perhaps", "stream"),
    ("timestamp_granularities[]", "syllable", "timestamp_granularities"),
])
def test_bad_parameters_name_the_field(whisper_server: Server, jfk: Path, field: str, value: str, param: str) -> None:
    with whisper_server.http() as http:
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.flac", jfk.read_bytes())},
                         data={field: value, "response_format": "verbose_json"} if field != "response_format"
                         else {field: value})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_non_multipart_body_is_a_400(whisper_server: Server) -> None:
    with whisper_server.http() as http:
        resp = http.post("/v1/audio/transcriptions", json={"file": "abc"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "file"


def test_empty_file_is_a_400(whisper_server: Server) -> None:
    with whisper_server.http() as http:
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"")})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "empty_file"


# --- streaming ------------------------------------------------------------------------------

def test_stream_deltas_arrive_before_the_end(whisper_server: Server, spoken_sentences, jfk: Path) -> None:
    import time

    from conftest import build_recording, wav_bytes
    from rapl import audio

    parts = [audio.decode(jfk.read_bytes())] + spoken_sentences
    recording, _ = build_recording(parts, [0.5] + [1.2] * len(spoken_sentences))
    assert len(recording) / 16000 >= 30
    client = whisper_server.client()
    started = time.perf_counter()
    arrivals, deltas, done = [], [], None
    stream = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", wav_bytes(recording)),
                                                stream=True)
    for event in stream:
        arrivals.append(time.perf_counter() - started)
        if event.type == "transcript.text.delta":
            deltas.append(event.delta)
        else:
            done = event
    assert done is not None and done.type == "transcript.text.done"
    assert len(deltas) > 1
    assert "".join(deltas) == done.text
    total = arrivals[-1]
    assert arrivals[0] < 0.6 * total, arrivals  # the first words come well before the end
    assert wer(JFK_TEXT, done.text[: len(JFK_TEXT)]) <= 0.25


def test_stream_error_is_raised_by_the_sdk(whisper_server: Server, jfk: Path) -> None:
    with jfk.open("rb") as f, pytest.raises(openai.APIError):
        for _ in whisper_server.client().audio.transcriptions.create(model="gpt-4o-transcribe", file=f,
                                                                      stream=True, language="fr"):
            pass


# --- hostile input: each answered in the envelope, and the server keeps working ----------------

def _raw(server: Server, payload: bytes, timeout: float = 30) -> tuple[int, bytes]:
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(payload.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n", 1))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _wav_with_lying_header(jfk_variants: dict[str, Path]) -> bytes:
    import struct

    data = bytearray(jfk_variants["wav16"].read_bytes())
    struct.pack_into("<I", data, 4, 0x7FFFFFFF)
    struct.pack_into("<I", data, data.index(b"data") + 4, 0x7FFFFFF0)  # promises 2 GB of samples
    return bytes(data)


HOSTILE = {
    "zero-byte file": lambda v: {"files": {"file": ("a.wav", b"")}},
    "random bytes named .wav": lambda v: {"files": {"file": ("a.wav", bytes(range(256)) * 97)}},
    "text file": lambda v: {"files": {"file": ("notes.txt", b"Dear diary,\n" * 300, "text/plain")}},
    "no file field": lambda v: {"data": {"model": "whisper-1"}, "files": {"other": ("x", b"y")}},
    "path traversal filename": lambda v: {"files": {"file": ("../../etc/passwd", b"root:x:0:0::/root:/bin/sh\n")}},
    "non-UTF-8 form values": lambda v: {"files": {"file": ("a.wav", b"x" * 10)},
                                        "data": {"language": b"\xff\xfe\xfa".decode("latin-1")}},
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_uploads_get_4xx_in_the_envelope(whisper_server: Server, jfk_variants, case: str) -> None:
    with whisper_server.http() as http:
        resp = http.post("/v1/audio/transcriptions", **HOSTILE[case](jfk_variants))
        assert 400 <= resp.status_code < 500, resp.text
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
        good = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", jfk_variants["wav16"].read_bytes())})
    assert good.status_code == 200 and "country" in good.json()["text"]


def test_lying_wav_header_and_truncated_mp3_still_transcribe(whisper_server: Server, jfk_variants) -> None:
    mp3 = jfk_variants["mp3"].read_bytes()
    with whisper_server.http() as http:
        lying = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", _wav_with_lying_header(jfk_variants))})
        truncated = http.post("/v1/audio/transcriptions", files={"file": ("a.mp3", mp3[: len(mp3) * 2 // 3])})
    assert lying.status_code == 200 and "country" in lying.json()["text"]
    assert truncated.status_code == 200 and "fellow americans" in truncated.json()["text"].lower()


def test_empty_body_and_malformed_multipart(whisper_server: Server) -> None:
    empty = _raw(whisper_server, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Type: multipart/form-data; boundary=abc\r\nContent-Length: 0\r\n\r\n")
    body = b"--wrong\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc\r\n--wrong"
    malformed = _raw(whisper_server, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Type: multipart/form-data; boundary=abc\r\n"
                                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    no_boundary = _raw(whisper_server, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                                       b"Content-Type: multipart/form-data\r\n"
                                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    import json

    for status, payload in (empty, malformed, no_boundary):
        assert status == 400
        assert json.loads(payload)["error"]["param"] == "file"


def test_upload_over_the_limit_is_413(serve, whisper_model: str) -> None:  # noqa: ANN001
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, "MAX_UPLOAD_MB": "1"})
    with server.http() as http:
        resp = http.post("/v1/audio/transcriptions", files={"file": ("big.wav", b"\0" * (2 * 1024 * 1024))})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
    # a huge declared Content-Length is refused before any body is sent
    status, _ = _raw(server, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: multipart/form-data; boundary=abc\r\n"
                             b"Content-Length: 50000000000\r\n\r\n")
    assert status == 413
    assert server.worker.state == "ready"


def test_decompression_bomb_is_bounded(serve, whisper_model: str, tmp_path: Path) -> None:  # noqa: ANN001
    """Hours of silence compressed to almost nothing: refused by MAX_AUDIO_SECONDS, fast.

    FLAC declares its length (6 hours, refused before decoding); Ogg/Opus does not (30 minutes,
    decoding stops at the limit)."""
    import subprocess
    import time

    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, "MAX_AUDIO_SECONDS": "600"})
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


def test_one_structured_log_line_per_request(whisper_server: Server, jfk: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import re

    caplog.set_level(logging.INFO, logger="rapl.api")
    with whisper_server.http() as http:
        ok = http.post("/v1/audio/transcriptions", files={"file": ("a.flac", jfk.read_bytes())})
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

def _post(server: Server, clip: Path, **data: Any) -> httpx.Response:
    with server.http() as http:
        return http.post("/v1/audio/transcriptions", files={"file": (clip.name, clip.read_bytes())}, data=data)


@pytest.mark.parametrize(("granularities", "keys"), [
    (["word"], {"words"}), (["segment"], {"segments"}), (["word", "segment"], {"words", "segments"})])
def test_granularities_answer_what_was_asked(whisper_server: Server, jfk: Path, granularities: list[str],
                                             keys: set[str]) -> None:
    """Buzz iterates `words` and crashed when it got segments it did not ask for."""
    body = _post(whisper_server, jfk, response_format="verbose_json",
                 **{"timestamp_granularities[]": granularities}).json()
    assert {"words", "segments"} & set(body) == keys
    for word in body.get("words", []):
        assert word["word"] == word["word"].strip(",.") and word["word"]  # no punctuation in words


def test_segments_start_with_a_space_as_openai_writes_them(whisper_server: Server, jfk: Path) -> None:
    segments = _create(whisper_server, jfk, response_format="verbose_json").segments
    assert all(s.text.startswith(" ") and not s.text.startswith("  ") for s in segments)
    assert "".join(s.text for s in segments).strip() == " ".join(s.text.strip() for s in segments)


def test_no_time_runs_past_the_audio(whisper_server: Server, jfk: Path) -> None:
    """JFK is 11.000 s: Whisper ends its last segment at 11.12 s; every format holds it inside."""
    import srt

    verbose = _create(whisper_server, jfk, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert verbose.duration == 11.0
    for spans in ([(s.start, s.end) for s in verbose.segments], [(w.start, w.end) for w in verbose.words]):
        assert all(0 <= a <= b <= 11.0 for a, b in spans)
        assert all(b <= c for (_, b), (c, _) in zip(spans, spans[1:], strict=False))  # ordered, no overlap
    subs = list(srt.parse(_create(whisper_server, jfk, response_format="srt")))
    assert subs[-1].end.total_seconds() <= 11.0
    vtt = _create(whisper_server, jfk, response_format="vtt")
    assert vtt.strip().splitlines()[-2].split(" --> ")[1] <= "00:00:11.000"


def test_stream_is_ignored_for_whisper_1(whisper_server: Server, jfk: Path) -> None:
    """OpenAI: whisper-1 does not stream; LiteLLM's proxy forwards stream=true anyway."""
    resp = _post(whisper_server, jfk, model="whisper-1", stream="true")
    assert resp.headers["content-type"] == "application/json"
    assert wer(JFK_TEXT, resp.json()["text"]) <= 0.10
    text = _post(whisper_server, jfk, model="whisper-1", stream="true", response_format="text")
    assert text.headers["content-type"].startswith("text/plain") and "data:" not in text.text
    streamed = _post(whisper_server, jfk, model="gpt-4o-mini-transcribe", stream="true")
    assert streamed.headers["content-type"].startswith("text/event-stream")


def _events(resp: httpx.Response) -> list[dict[str, Any]]:
    import json

    return [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]


def test_stream_events_are_what_the_sdk_types_say(whisper_server: Server, jfk: Path) -> None:
    from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

    events = _events(_post(whisper_server, jfk, model="gpt-4o-transcribe", stream="true", prompt="Kennedy"))
    *deltas, done = events
    assert all("logprobs" not in e for e in events)  # optional: sent only when asked for
    for event in deltas:
        TranscriptionTextDeltaEvent.model_validate(event, strict=True)
    TranscriptionTextDoneEvent.model_validate(done, strict=True)
    usage = done["usage"]
    assert usage["type"] == "tokens" and usage["input_tokens"] == 110 + 1  # 11 s of audio tokens + the prompt
    assert usage["output_tokens"] > len(JFK_TEXT.split()) // 2  # Whisper's own tokens
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_streamed_text_equals_the_unstreamed_text(whisper_server: Server, jfk: Path, spoken_sentences) -> None:
    """Streams once cut audio into 10 s chunks and changed the words ("ask not" became "ask NOT!")."""
    from conftest import build_recording, wav_bytes
    from rapl import audio

    recording, _ = build_recording([audio.decode(jfk.read_bytes())] + spoken_sentences,
                                   [0.5] + [1.2] * len(spoken_sentences))
    client = whisper_server.client()
    for name, clip in (("jfk.flac", jfk.read_bytes()), ("long.wav", wav_bytes(recording))):
        plain = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=(name, clip)).text
        streamed = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=(name, clip), stream=True)
        *deltas, done = list(streamed)
        assert done.text == plain == "".join(d.delta for d in deltas), name


def test_stream_headers_are_sent_at_once(whisper_server: Server, jfk: Path, spoken_sentences) -> None:
    import time

    from conftest import build_recording, wav_bytes
    from rapl import audio

    recording, _ = build_recording([audio.decode(jfk.read_bytes())] + spoken_sentences * 2, [0.5] + [1.0] * 12)
    with whisper_server.http() as http:
        started = time.perf_counter()
        with http.stream("POST", "/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(recording))},
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


def test_keywords_reach_whisper_hotwords(whisper_server: Server, jfk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = whisper_server.worker.backend._model
    calls: list[dict[str, Any]] = []
    original = model.transcribe
    monkeypatch.setattr(model, "transcribe", lambda audio, **kw: calls.append(kw) or original(audio, **kw))
    resp = _post(whisper_server, jfk, **{"keywords[]": ["Kennedy", "inaugural"]})
    assert resp.status_code == 200 and calls[-1]["hotwords"] == "Kennedy inaugural"


def test_chunking_strategy_drives_the_vad_for_that_request(whisper_server: Server, jfk: Path) -> None:
    strict = '{"type": "server_vad", "threshold": 1.0}'  # nothing counts as speech
    assert _post(whisper_server, jfk, response_format="verbose_json", chunking_strategy=strict).json()["text"] == ""
    relaxed = _post(whisper_server, jfk, response_format="verbose_json",
                    **{"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "0.3",
                       "chunking_strategy[silence_duration_ms]": "200", "chunking_strategy[prefix_padding_ms]": "300"})
    assert wer(JFK_TEXT, relaxed.json()["text"]) <= 0.10
    bogus = _post(whisper_server, jfk, chunking_strategy="bogus")
    assert bogus.status_code == 400 and bogus.json()["error"]["param"] == "chunking_strategy"


@pytest.mark.parametrize(("data", "param"), [
    ({"languages[]": ["en", "de"]}, "languages"),  # tiny.en knows English only
    ({"languages[]": ["xx-klingon"]}, "languages"),
    ({"include[]": "logprobs", "response_format": "text"}, "include"),
    ({"include[]": "everything"}, "include"),
    ({"known_speaker_names[]": "Ann", "known_speaker_references[]": "data:audio/wav;base64,UklGRg=="},
     "known_speaker_names"),
    ({"keywords[]": ["x" * 200]}, "keywords"),
])
def test_openai_parameters_are_checked_not_dropped(whisper_server: Server, jfk: Path, data: dict[str, Any],
                                                   param: str) -> None:
    resp = _post(whisper_server, jfk, **data)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_one_language_in_languages_is_the_language(whisper_server: Server, jfk: Path) -> None:
    body = _post(whisper_server, jfk, response_format="verbose_json", **{"languages[]": ["English"]}).json()
    assert body["language"] == "english" and wer(JFK_TEXT, body["text"]) <= 0.10


def test_answers_are_never_sniffed(whisper_server: Server, jfk: Path) -> None:
    with whisper_server.http() as http:
        for resp in (http.get("/health"), http.get("/v1/models"), http.get("/nowhere"),
                     http.post("/v1/audio/transcriptions", files={"file": ("a.flac", jfk.read_bytes())},
                               data={"response_format": "text"})):
            assert resp.headers["x-content-type-options"] == "nosniff", resp.url
            assert len(resp.headers["x-request-id"]) == 12  # the SDKs' request_id, on errors too


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


# --- a real multilingual model: detection among languages[], non-English text, translation ---------

@pytest.fixture(scope="module")
def base_server(serve, whisper_base_model: str) -> Server:  # noqa: ANN001
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_base_model})
    assert server.worker.state == "ready", server.worker.error
    return server


def test_languages_restrict_detection_to_the_given_ones(base_server: Server, shared_audio: Path) -> None:
    mandarin = shared_audio / "zh_sample.wav"
    free = _post(base_server, mandarin, response_format="verbose_json").json()
    assert free["language"] == "chinese"
    among = _post(base_server, mandarin, response_format="verbose_json", **{"languages[]": ["ja", "zh"]}).json()
    assert among["language"] == "chinese" and among["text"] == free["text"]
    without = _post(base_server, mandarin, response_format="verbose_json", **{"languages[]": ["en", "de"]}).json()
    assert without["language"] in ("english", "german")  # Chinese was not allowed


def test_translation_on_a_multilingual_model(base_server: Server, shared_audio: Path) -> None:
    with (shared_audio / "zh_sample.wav").open("rb") as f:
        result = base_server.client().audio.translations.create(model="whisper-1", file=f)
    assert result.text and result.text.isascii(), result.text  # English words, not Han characters


def test_server_timing_names_each_stage(whisper_server: Server, jfk: Path) -> None:
    import re

    resp = _post(whisper_server, jfk, response_format="verbose_json")
    stages = dict(re.findall(r"(\w+);dur=([\d.]+)", resp.headers["server-timing"]))
    assert set(stages) == {"decode", "vad", "wait", "model"}
    assert 0 < float(stages["model"]) <= int(resp.headers["openai-processing-ms"]) + 1
