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
