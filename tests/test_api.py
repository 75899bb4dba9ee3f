"""The HTTP API through a real waitress server, the official openai SDK and raw multipart."""

from __future__ import annotations

from pathlib import Path

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
    assert resp.headers["x-rapl-model"] == whisper_server.worker.backend.model
    assert int(resp.headers["openai-processing-ms"]) >= 0
    assert wer(JFK_TEXT, resp.json()["text"]) <= 0.10


@pytest.mark.parametrize("path", ["/v1/models", "/models", "/v1/v1/models"])
def test_models_lists_the_loaded_model(whisper_server: Server, path: str) -> None:
    with whisper_server.http() as http:
        body = http.get(path).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [whisper_server.worker.backend.model]
    assert body["data"][0]["object"] == "model"


def test_sdk_models_list_and_retrieve(whisper_server: Server) -> None:
    client = whisper_server.client()
    assert [m.id for m in client.models.list()] == [whisper_server.worker.backend.model]
    assert client.models.retrieve("whisper-1").id == whisper_server.worker.backend.model


def test_health_reports_ready(whisper_server: Server) -> None:
    with whisper_server.http() as http:
        body = http.get("/health").json()
    assert body["status"] == "ready"
    assert body["backend"] == "whisper"
    assert body["model"] == whisper_server.worker.backend.model
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
    stream = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_bytes(recording)), stream=True)
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
        for _ in whisper_server.client().audio.transcriptions.create(model="whisper-1", file=f, stream=True,
                                                                      language="fr"):
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
