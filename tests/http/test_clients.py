"""The client matrix: real client code against a real server on the real tiny.en model, no mocks.

Each client's test asserts the exact request that client sends (recorded by the server) and
what it reads back. Clients: the official Python SDK (answers parsed with its own pydantic
types), the official Node SDK (tests/clients/node, `npm install --prefix tests/clients/node`),
LiteLLM, OpenWhispr's browser request and the JS SDK in headless Chromium (CORS), VoiceInk's
request and connection probe, and Buzz's word-timestamp path. MATRIX below is README's
"Client compatibility" table; a test keeps the two equal.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from flask import g, request, request_finished, request_started

from support import ROOT
from support.server import Server
from support.speech import JFK_TEXT, ffmpeg, wer

pytestmark = pytest.mark.slow  # real clients (Node, LiteLLM, Chromium) on the real tiny.en model

CLIENTS_DIR = ROOT / "tests" / "clients"
NODE_DIR = CLIENTS_DIR / "node"
NODE_SDK = NODE_DIR / "node_modules" / "openai"
BROWSER_DIR = CLIENTS_DIR / "browser"
CHROMIUM = Path("/usr/bin/chromium")
KEY = "sk-client-matrix-key"
STREAM_MODEL = "gpt-4o-transcribe"  # stream=true with whisper-1 is ignored, as OpenAI documents
NPM_INSTALL = "npm install --prefix tests/clients/node"
SEGMENT_FIELDS = {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                  "compression_ratio", "no_speech_prob"}


# --- the matrix: README's table, each cell backed by a test in this module ------------------------

FEATURES = ("formats", "words", "stream", "translations", "errors", "CORS")
NA = ("—", None)
MATRIX: dict[str, dict[str, tuple[str, str | None]]] = {
    "Python SDK (`openai`)": {
        "formats": ("all five", "test_python_sdk_formats_are_sdk_types"),
        "words": ("word, segment", "test_python_sdk_timestamp_granularities"),
        "stream": ("✓", "test_python_sdk_stream_events_are_sdk_types"),
        "translations": ("✓ (400 on `.en`)", "test_python_sdk_errors_are_typed"),
        "errors": ("✓ typed", "test_python_sdk_errors_are_typed"),
        "CORS": NA,
    },
    "Node SDK (`openai` on npm)": {
        "formats": ("all five", "test_node_sdk_formats"),
        "words": ("word, segment", "test_node_sdk_timestamp_granularities"),
        "stream": ("✓", "test_node_sdk_stream"),
        "translations": ("✓ (400 on `.en`)", "test_node_sdk_errors"),
        "errors": ("✓ typed", "test_node_sdk_errors"),
        "CORS": ("✓ in Chromium", "test_js_sdk_in_a_localhost_page"),
    },
    "LiteLLM": {
        "formats": ("json", "test_litellm_transcription"),
        "words": NA,
        "stream": NA,
        "translations": NA,
        "errors": ("✓ typed", "test_litellm_error"),
        "CORS": NA,
    },
    "Browser `fetch` (OpenWhispr)": {
        "formats": ("json", "test_openwhispr_file_page"),
        "words": NA,
        "stream": ("✓", "test_openwhispr_stream"),
        "translations": NA,
        "errors": ("401 readable", "test_openwhispr_file_page_with_key"),
        "CORS": ("file:// (`null` opted in), localhost; others 403", "test_foreign_origin_is_blocked"),
    },
    "VoiceInk": {
        "formats": ("json", "test_voiceink_request"),
        "words": NA,
        "stream": NA,
        "translations": NA,
        "errors": ("probe: 400 envelope, 401", "test_voiceink_connection_probe"),
        "CORS": NA,
    },
    "Buzz": {
        "formats": ("verbose_json", "test_buzz_segments"),
        "words": ("words only", "test_buzz_word_timestamps"),
        "stream": NA,
        "translations": NA,
        "errors": NA,
        "CORS": NA,
    },
}


def render_matrix() -> str:
    """README's "Client compatibility" table, from MATRIX."""
    lines = ["| client | " + " | ".join(FEATURES) + " |", "|---|" + "---|" * len(FEATURES)]
    for client, cells in MATRIX.items():
        lines.append(f"| {client} | " + " | ".join(cells[f][0] for f in FEATURES) + " |")
    return "\n".join(lines)


def test_readme_client_table_matches_the_matrix() -> None:
    readme = (ROOT / "README.md").read_text()
    assert render_matrix() in readme, "README's client table differs from MATRIX:\n" + render_matrix()


def test_every_matrix_cell_names_a_test_here() -> None:
    for client, cells in MATRIX.items():
        assert set(cells) == set(FEATURES), client
        for feature, (text, test) in cells.items():
            assert (test is None) == (text == "—"), (client, feature)
            assert test is None or callable(globals().get(test)), (client, feature, test)


# --- shared: what the server saw ----------------------------------------------------------------------

@contextlib.contextmanager
def recorded(server: Server) -> Iterator[list[dict[str, Any]]]:
    """Every request ``server`` answers inside the block: method, path, headers, form, files, status."""
    seen: list[dict[str, Any]] = []

    def started(sender: Any, **extra: Any) -> None:
        """Read the form as it arrives: the server frees each upload once it is decoded."""
        g.recorded = {"form": {}, "files": {}}
        if request.method == "POST":
            with contextlib.suppress(Exception):  # a body that is not a form
                g.recorded = {"form": {k: request.form.getlist(k) for k in request.form},
                              "files": {k: (f.filename, f.content_type, len(f.stream.getvalue()))
                                        for k, f in request.files.items()}}

    def finished(sender: Any, response: Any, **extra: Any) -> None:
        got = g.get("recorded", {"form": {}, "files": {}})
        seen.append({"method": request.method, "path": request.path, "status": response.status_code,
                     "headers": {k.lower(): v for k, v in request.headers.items()},
                     "response_headers": {k.lower(): v for k, v in response.headers.items()}, **got})

    request_started.connect(started, server.app)
    request_finished.connect(finished, server.app)
    try:
        yield seen
    finally:
        request_started.disconnect(started, server.app)
        request_finished.disconnect(finished, server.app)


def posts(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in seen if r["method"] == "POST"]


def assert_jfk(text: str, max_wer: float = 0.15) -> None:
    said = " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())
    assert "ask not what your country can do for you" in said, text
    assert wer(JFK_TEXT, text) <= max_wer, text


# OpenWhispr's window is a file:// page (Origin: null): it needs CORS_ORIGINS=local,null.
FILE_PAGES = {"CORS_ORIGINS": "local,null"}


@pytest.fixture(scope="module")
def keyed_server(serve: Callable[..., Server], whisper_model: str) -> Server:
    """tiny.en with API_KEY set, and file:// pages opted in (CORS_ORIGINS=local,null)."""
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, "API_KEY": KEY, **FILE_PAGES})
    assert server.worker.state == "ready", server.worker.error
    return server


@pytest.fixture(scope="module")
def file_page_server(serve: Callable[..., Server], whisper_model: str) -> Server:
    """tiny.en without a key, file:// pages opted in (CORS_ORIGINS=local,null), as OpenWhispr's users set it."""
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, **FILE_PAGES})
    assert server.worker.state == "ready", server.worker.error
    return server


# --- the official Python SDK: answers parsed with the SDK's own types ----------------------------------

def _post(server: Server, clip: Path, **form: Any) -> Any:
    with server.http() as http:
        return http.post("/v1/audio/transcriptions", files={"file": (clip.name, clip.read_bytes())},
                         data={"model": "whisper-1", **form})


def test_python_sdk_formats_are_sdk_types(whisper_server: Server, jfk: Path) -> None:
    from openai.types.audio import Transcription, TranscriptionSegment, TranscriptionVerbose

    plain = _post(whisper_server, jfk)
    verbose = _post(whisper_server, jfk, response_format="verbose_json")
    assert plain.headers["content-type"] == "application/json"
    body = plain.json()
    parsed = Transcription.model_validate(body)
    assert "logprobs" not in body  # only with include[]=logprobs
    assert parsed.usage is not None and parsed.usage.type == "duration" and parsed.usage.seconds >= 11
    full = TranscriptionVerbose.model_validate(verbose.json())
    assert full.language == "english" and full.duration == pytest.approx(11.0, abs=0.05)
    assert full.segments and all(SEGMENT_FIELDS <= set(s) for s in verbose.json()["segments"])
    assert all(isinstance(s, TranscriptionSegment) for s in full.segments)
    assert full.text == parsed.text
    assert_jfk(parsed.text)
    client = whisper_server.client()
    for fmt, head in (("text", parsed.text[:20]), ("srt", "1\n00:00:"), ("vtt", "WEBVTT\n\n00:00:")):
        with jfk.open("rb") as f:
            answer = client.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)
        assert isinstance(answer, str) and answer.startswith(head), (fmt, answer)


@pytest.mark.parametrize(("granularities", "words", "segments"), [
    (["word"], True, False), (["segment"], False, True), (["word", "segment"], True, True), (None, False, True)])
def test_python_sdk_timestamp_granularities(whisper_server: Server, jfk: Path, granularities: list[str] | None,
                                            words: bool, segments: bool) -> None:
    """As OpenAI answers: `words` only when word is asked for, `segments` only when segment is (or nothing)."""
    extra = {"timestamp_granularities": granularities} if granularities else {}
    with recorded(whisper_server) as seen, jfk.open("rb") as f:
        result = whisper_server.client().audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", **extra)
    assert posts(seen)[0]["form"].get("timestamp_granularities[]") == granularities
    assert (result.words is not None) is words, result
    assert (result.segments is not None) is segments, result
    if words:
        assert [w.word.strip(",.").lower() for w in result.words[:4]] == ["and", "so", "my", "fellow"]
        assert all(0 <= w.start <= w.end <= result.duration + 0.01 for w in result.words)


def _sse(server: Server, clip: Path, **form: Any) -> tuple[Any, list[dict[str, Any]]]:
    events = []
    with server.http() as http, http.stream("POST", "/v1/audio/transcriptions",
                                            files={"file": (clip.name, clip.read_bytes())},
                                            data={"stream": "true", **form}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:].strip()))
    return resp, events


def test_python_sdk_stream_events_are_sdk_types(whisper_server: Server, jfk: Path) -> None:
    from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

    resp, events = _sse(whisper_server, jfk, model=STREAM_MODEL)
    assert resp.headers["content-type"].startswith("text/event-stream")
    *deltas, done = events
    assert deltas and all(e["type"] == "transcript.text.delta" for e in deltas), events
    assert done["type"] == "transcript.text.done"
    for event in deltas:
        TranscriptionTextDeltaEvent.model_validate(event)
        assert "logprobs" not in event, event  # only with include[]=logprobs
    final = TranscriptionTextDoneEvent.model_validate(done)
    assert "logprobs" not in done, done
    assert set(done["usage"]) >= {"type", "input_tokens", "output_tokens", "total_tokens"}, done
    assert final.usage is not None and final.usage.type == "tokens"
    assert final.usage.total_tokens == final.usage.input_tokens + final.usage.output_tokens
    assert all(isinstance(done["usage"][k], int) for k in ("input_tokens", "output_tokens", "total_tokens"))
    assert "".join(e["delta"] for e in deltas) == final.text
    assert_jfk(final.text)
    # ... and the SDK's own stream iterator hands out exactly those types.
    with jfk.open("rb") as f:
        sdk_events = list(whisper_server.client().audio.transcriptions.create(model=STREAM_MODEL, file=f,
                                                                             stream=True))
    assert isinstance(sdk_events[-1], TranscriptionTextDoneEvent) and sdk_events[-1].text == final.text
    assert all(isinstance(e, TranscriptionTextDeltaEvent) for e in sdk_events[:-1])


def test_stream_true_with_whisper_1_is_ignored(whisper_server: Server, jfk: Path) -> None:
    """OpenAI: "streaming is not supported for the whisper-1 model and will be ignored"."""
    from openai.types.audio import Transcription

    resp = _post(whisper_server, jfk, stream="true")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json", resp.text[:200]
    assert_jfk(Transcription.model_validate(resp.json()).text)


def test_python_sdk_errors_are_typed(whisper_server: Server, keyed_server: Server, jfk: Path) -> None:
    client = whisper_server.client()
    with jfk.open("rb") as f, pytest.raises(openai.BadRequestError) as translation:
        client.audio.translations.create(model="whisper-1", file=f)
    with jfk.open("rb") as f, pytest.raises(openai.BadRequestError) as language:
        client.audio.transcriptions.create(model="whisper-1", file=f, language="de")
    with jfk.open("rb") as f, pytest.raises(openai.AuthenticationError) as auth:
        keyed_server.client(api_key="wrong").audio.transcriptions.create(model="whisper-1", file=f)
    assert translation.value.code == "translation_unsupported" and translation.value.status_code == 400
    assert language.value.param == "language"
    assert auth.value.code == "invalid_api_key"


# --- the official Node SDK ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node_run(whisper_server: Server, jfk: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run tests/clients/node/matrix.mjs once; returns its results and the requests the server saw."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (apt-get install nodejs npm)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if int(version.lstrip("v").split(".")[0] or 0) < 20:
        pytest.skip(f"node {version} is too old for the openai Node SDK (needs 20 or newer)")
    if not (NODE_SDK / "package.json").is_file():
        pytest.skip(f"the openai Node SDK is not installed: run `{NPM_INSTALL}`")
    with recorded(whisper_server) as seen:
        proc = subprocess.run([node, "matrix.mjs", f"{whisper_server.url}/v1", str(jfk)], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), seen


def _node_ok(results: dict[str, Any], case: str) -> Any:
    outcome = results[case]
    assert outcome["ok"], (case, outcome)
    return outcome["value"]


def test_node_sdk_formats(node_run: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    results, seen = node_run
    plain = _node_ok(results, "json")
    verbose = _node_ok(results, "verbose_json")
    text, srt, vtt = (_node_ok(results, k) for k in ("text", "srt", "vtt"))
    # Transcription: {text: string; logprobs?: ...; usage?: {type: 'duration', seconds} | {type: 'tokens', ...}}
    assert isinstance(plain["text"], str) and "logprobs" not in plain
    assert plain["usage"]["type"] == "duration" and plain["usage"]["seconds"] >= 11
    # TranscriptionVerbose: {duration, language, text, segments?: TranscriptionSegment[], words?, usage?}
    assert verbose["language"] == "english" and isinstance(verbose["duration"], (int, float))
    assert verbose["segments"] and all(SEGMENT_FIELDS <= set(s) for s in verbose["segments"])
    assert isinstance(text, str) and text.strip() == plain["text"] == verbose["text"]
    assert srt.startswith("1\n00:00:") and vtt.startswith("WEBVTT\n\n00:00:")
    assert_jfk(plain["text"])
    sent = {r["form"]["response_format"][0] if "response_format" in r["form"] else "(none)": r
            for r in posts(seen) if r["path"] == "/v1/audio/transcriptions" and "stream" not in r["form"]}
    assert {"(none)", "text", "srt", "vtt", "verbose_json"} <= set(sent)
    request_ = sent["(none)"]
    assert request_["form"]["model"] == ["whisper-1"]
    assert request_["files"]["file"][0] == "en_jfk.flac"
    assert request_["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert request_["headers"]["authorization"] == "Bearer local"
    assert request_["headers"]["x-stainless-lang"] == "js"
    assert request_["headers"]["user-agent"].startswith("OpenAI/JS ")


def test_node_sdk_timestamp_granularities(node_run: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    results, seen = node_run
    words = _node_ok(results, "words")
    segments = _node_ok(results, "segments")
    both = _node_ok(results, "words_and_segments")
    assert words["words"] and "segments" not in words, list(words)
    assert all(set(w) == {"word", "start", "end"} for w in words["words"])
    assert segments["segments"] and "words" not in segments, list(segments)
    assert both["words"] and both["segments"]
    granularities = [r["form"].get("timestamp_granularities[]") for r in posts(seen)]
    assert ["word"] in granularities and ["segment"] in granularities and ["word", "segment"] in granularities


def test_node_sdk_stream(node_run: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    results, seen = node_run
    *deltas, done = _node_ok(results, "stream")
    assert deltas and {e["type"] for e in deltas} == {"transcript.text.delta"}
    assert done["type"] == "transcript.text.done" and "".join(e["delta"] for e in deltas) == done["text"]
    assert not [e for e in (*deltas, done) if "logprobs" in e]
    usage = done["usage"]
    assert usage["type"] == "tokens" and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert_jfk(done["text"])
    streamed = [r for r in posts(seen) if r["form"].get("stream") == ["true"]]
    assert len(streamed) == 1 and streamed[0]["form"]["model"] == [STREAM_MODEL]
    assert streamed[0]["response_headers"]["content-type"].startswith("text/event-stream")


def test_node_sdk_errors(node_run: tuple[dict[str, Any], list[dict[str, Any]]], whisper_server: Server) -> None:
    results, seen = node_run
    for case, code, param in (("translation", "translation_unsupported", None), ("bad_language", None, "language")):
        outcome = results[case]
        assert not outcome["ok"], outcome
        error = outcome["error"]
        assert error["class"] == "BadRequestError" and error["status"] == 400, error
        assert set(error["error"]) == {"message", "type", "param", "code"}, error
        assert code is None or error["error"]["code"] == code
        assert param is None or error["error"]["param"] == param
    assert any(r["path"] == "/v1/audio/translations" for r in posts(seen))


def test_node_sdk_models(node_run: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    results, _seen = node_run
    ids = _node_ok(results, "models_list")
    card = _node_ok(results, "models_retrieve")
    assert ids and all(isinstance(i, str) for i in ids)
    # Model: {id: string; created: number; object: 'model'; owned_by: string}
    assert card["object"] == "model" and isinstance(card["created"], int) and isinstance(card["owned_by"], str)
    assert card["id"] in ids


# --- LiteLLM ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of its price list at import
    return pytest.importorskip("litellm", reason="LiteLLM is not installed (pip install litellm)")


# LiteLLM's pydantic models warn about ReadOnly TypedDict items as it imports them lazily.
quiet_litellm = pytest.mark.filterwarnings("ignore:.*ReadOnly:UserWarning")


@quiet_litellm
def test_litellm_transcription(litellm: Any, whisper_server: Server, jfk: Path) -> None:
    with recorded(whisper_server) as seen, jfk.open("rb") as f:
        result = litellm.transcription(model="openai/whisper-1", file=f, api_base=f"{whisper_server.url}/v1",
                                       api_key="x", timeout=120)
    assert_jfk(result.text)
    (sent,) = posts(seen)
    assert sent["path"] == "/v1/audio/transcriptions" and sent["status"] == 200
    assert sent["form"]["model"] == ["whisper-1"]
    assert sent["headers"]["authorization"] == "Bearer x"
    assert sent["files"]["file"][2] == jfk.stat().st_size


@quiet_litellm
def test_litellm_error(litellm: Any, whisper_server: Server, jfk: Path) -> None:
    with jfk.open("rb") as f, pytest.raises(openai.BadRequestError) as info:  # litellm's own is a subclass
        litellm.transcription(model="openai/whisper-1", file=f, api_base=f"{whisper_server.url}/v1",
                              api_key="x", language="de", timeout=120, max_retries=0)
    assert info.value.status_code == 400 and "language" in str(info.value).lower()


# --- VoiceInk ---------------------------------------------------------------------------------------

def _voiceink_body(boundary: str, parts: list[tuple[str, str]], file_name: str, audio: bytes) -> bytes:
    """VoiceInk's hand-built multipart body (OpenAICompatibleTranscriptionService.swift), byte for byte."""
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + audio + b"\r\n"
    for name, value in parts:
        body += f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode()
    return body + f"--{boundary}--\r\n".encode()


def _voiceink_post(server: Server, body: bytes, boundary: str, key: str) -> Any:
    with server.http() as http:
        return http.post(f"{server.url}/v1/audio/transcriptions", content=body, timeout=120,
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                  "Authorization": f"Bearer {key}"})


def test_voiceink_request(whisper_server: Server, jfk_variants: dict[str, Path]) -> None:
    boundary = f"Boundary-{str(uuid.uuid4()).upper()}"
    name = f"{str(uuid.uuid4()).upper()}.wav"  # VoiceInk uploads its 16 kHz mono recording by file name
    parts = [("model", "whisper-1"), ("response_format", "json"), ("temperature", "0"), ("language", "en")]
    body = _voiceink_body(boundary, parts, name, jfk_variants["wav16"].read_bytes())
    with recorded(whisper_server) as seen:
        resp = _voiceink_post(whisper_server, body, boundary, "voiceink")
    assert resp.status_code == 200, resp.text
    decoded = resp.json()  # VoiceInk decodes {text, language?, duration?} (Swift's Codable skips other keys)
    assert isinstance(decoded["text"], str) and set(decoded) <= {"text", "language", "duration", "usage", "languages"}
    assert_jfk(decoded["text"])
    (sent,) = seen
    assert sent["form"] == {k: [v] for k, v in parts}
    assert sent["files"]["file"][:2] == (name, "audio/wav")


def test_voiceink_connection_probe(whisper_server: Server, keyed_server: Server) -> None:
    """1 KB of zeros as probe.wav: VoiceInk counts 200, 400, 415 and 422 as reachable, 401/403 as a bad key."""
    boundary = f"Boundary-{str(uuid.uuid4()).upper()}"
    probe = _voiceink_body(boundary, [("model", "whisper-1")], "probe.wav", bytes(1024))  # same bytes
    open_ = _voiceink_post(whisper_server, probe, boundary, "anything")
    keyed = _voiceink_post(keyed_server, probe, boundary, KEY)
    wrong = _voiceink_post(keyed_server, probe, boundary, "wrong")
    for resp in (open_, keyed):
        assert resp.status_code in (200, 400, 415, 422), resp.text
        if resp.status_code != 200:
            error = resp.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["param"] == "file"
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"


# --- Buzz ----------------------------------------------------------------------------------------------

def _buzz_segments(transcript: Any, word_level_timings: bool) -> list[tuple[int, int, str]]:
    """What Buzz's OpenAI API transcriber (buzz/transcriber/openai_whisper_api_file_transcriber.py) does
    with the SDK's answer: (start ms, end ms, text) per word, or per segment."""

    def value(item: Any, key: str, default: Any = None) -> Any:
        if hasattr(item, key):
            return getattr(item, key)
        return item.get(key, default) if isinstance(item, dict) else default

    segments = getattr(transcript, "segments", None)
    words = getattr(transcript, "words", None)
    if segments is None:  # no segments: one pseudo-segment carrying the words
        segments = [{"text": transcript.text, "start": 0, "end": 0, "words": words}]
    if not word_level_timings:
        return [(int(value(s, "start", 0) * 1000), int(value(s, "end", 0) * 1000), value(s, "text", ""))
                for s in segments]
    # Buzz reads words from each segment; a real segment has none (a TypeError in Buzz).
    return [(int(value(w, "start") * 1000), int(value(w, "end") * 1000), value(w, "word"))
            for s in segments for w in value(s, "words")]


def _buzz_client(server: Server) -> openai.OpenAI:
    return server.client(api_key="buzz")  # OpenAI(api_key=..., base_url=<custom base URL>, max_retries=0)


def test_buzz_word_timestamps(whisper_server: Server, jfk_variants: dict[str, Path]) -> None:
    """Buzz asks for words only (verbose_json, timestamp_granularities=[word]) and iterates
    response.words; it breaks if `segments` come back too (it would look for words inside them)."""
    with recorded(whisper_server) as seen, jfk_variants["mp3"].open("rb") as f:  # Buzz sends mp3
        transcript = _buzz_client(whisper_server).audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", prompt=None,
            timestamp_granularities=["word"], language=None)
    (sent,) = seen
    assert sent["form"]["timestamp_granularities[]"] == ["word"]
    assert sent["form"]["response_format"] == ["verbose_json"]
    assert transcript.segments is None, "segments sent with only word granularity"
    words = _buzz_segments(transcript, word_level_timings=True)
    assert [w[2].strip(",. ").lower() for w in words[:4]] == ["and", "so", "my", "fellow"]
    assert all(0 <= start <= end <= 11_050 for start, end, _ in words)


def test_buzz_segments(whisper_server: Server, jfk_variants: dict[str, Path]) -> None:
    with jfk_variants["mp3"].open("rb") as f:
        transcript = _buzz_client(whisper_server).audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", prompt=None, language=None)
    segments = _buzz_segments(transcript, word_level_timings=False)
    assert segments and all(0 <= start < end <= 11_050 for start, end, _ in segments)
    assert_jfk(" ".join(text.strip() for _, _, text in segments))


# --- browsers: OpenWhispr's request and the JS SDK in headless Chromium ---------------------------------

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS, timeout=60_000)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


@pytest.fixture(scope="module")
def webm_b64(jfk: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """JFK as MediaRecorder records it in Chromium: WebM/Opus, 48 kHz mono, written live (no cues)."""
    out = tmp_path_factory.mktemp("webm") / "recording.webm"
    ffmpeg(jfk, out, "-c:a", "libopus", "-b:a", "32k", "-ar", "48000", "-ac", "1", "-live", "1", "-f", "webm")
    return base64.b64encode(out.read_bytes()).decode()


def _evaluate(page: Any, call: str, arg: dict[str, Any], deadline_s: float = 150) -> Any:
    """Run an async page function with a deadline (page functions also abort their own fetches)."""
    script = ("async ([call, arg, ms]) => Promise.race([window[call](arg), "
              "new Promise((_, reject) => setTimeout(() => reject(new Error('deadline')), ms))])")
    return page.evaluate(script, [call, arg, int(deadline_s * 1000)])


def _openwhispr(page: Any, server: Server, audio: str, **options: Any) -> dict[str, Any]:
    page.goto((BROWSER_DIR / "openwhispr.html").as_uri())
    assert page.evaluate("() => location.protocol") == "file:"  # sends Origin: null, like Electron's window
    return _evaluate(page, "openWhispr", {"endpoint": f"{server.url}/v1/audio/transcriptions",
                                          "audioBase64": audio, **options})


def test_openwhispr_file_page(page: Any, file_page_server: Server, webm_b64: str) -> None:
    """A FormData POST with no custom headers: no preflight, but the answer needs Access-Control-Allow-Origin."""
    with recorded(file_page_server) as seen:
        result = _openwhispr(page, file_page_server, webm_b64)
    assert result.get("ok"), result
    assert_jfk(result["text"])
    assert result["exposed"]["requestId"] and result["exposed"]["model"]  # exposed to the page
    assert int(result["exposed"]["processingMs"]) >= 0
    (sent,) = seen  # a simple request: no OPTIONS
    assert sent["method"] == "POST" and sent["headers"]["origin"] == "null"
    assert sent["form"] == {"model": ["whisper-1"]}
    assert sent["files"]["file"][:2] == ("audio.webm", "audio/webm;codecs=opus")
    assert sent["response_headers"]["access-control-allow-origin"] == "null"


def test_openwhispr_file_page_with_key(page: Any, keyed_server: Server, webm_b64: str) -> None:
    """Authorization makes the browser ask first (OPTIONS, no key); errors such as 401 stay readable."""
    with recorded(keyed_server) as seen:
        result = _openwhispr(page, keyed_server, webm_b64, apiKey=KEY, language="en")
        wrong = _openwhispr(page, keyed_server, webm_b64, apiKey="wrong")
    assert result.get("ok"), result
    assert_jfk(result["text"])
    assert not wrong.get("fetchError"), wrong  # not "TypeError: Failed to fetch"
    assert wrong["status"] == 401 and json.loads(wrong["errorText"])["error"]["code"] == "invalid_api_key"
    preflights = [r for r in seen if r["method"] == "OPTIONS"]
    assert preflights and preflights[0]["status"] == 204
    assert "authorization" in preflights[0]["headers"]["access-control-request-headers"]
    assert "authorization" not in preflights[0]["headers"]
    ok_post = next(r for r in posts(seen) if r["status"] == 200)
    assert ok_post["form"] == {"model": ["whisper-1"], "language": ["en"]}
    assert ok_post["headers"]["authorization"] == f"Bearer {KEY}"


def test_openwhispr_stream(page: Any, file_page_server: Server, webm_b64: str) -> None:
    """OpenWhispr's OpenAI provider streams the gpt-4o transcribe models and reads the SSE itself."""
    with recorded(file_page_server) as seen:
        result = _openwhispr(page, file_page_server, webm_b64, model="gpt-4o-mini-transcribe", provider="openai")
    assert result.get("ok"), result
    assert result["contentType"].startswith("text/event-stream")
    assert result["types"][-1] == "transcript.text.done" and result["collected"] == result["text"]
    assert_jfk(result["text"])
    assert posts(seen)[0]["form"]["stream"] == ["true"]


class _Static(http.server.SimpleHTTPRequestHandler):
    """Serves tests/clients/browser, and the Node SDK's files under /openai/."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript"}

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0]
        if clean.startswith("/openai/"):
            return str(NODE_SDK / clean.removeprefix("/openai/"))
        return str(BROWSER_DIR / clean.lstrip("/"))

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_site(host: str) -> Iterator[str]:
    """A static web server for the pages on ``host`` (a loopback address); yields its origin."""
    try:
        site = http.server.ThreadingHTTPServer((host, 0), _Static)
    except OSError as exc:
        pytest.skip(f"cannot listen on {host}: {exc}")
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{site.server_address[1]}"
    finally:
        site.shutdown()
        site.server_close()
        thread.join(timeout=10)


def test_js_sdk_in_a_localhost_page(page: Any, keyed_server: Server, webm_b64: str) -> None:
    """The official JS SDK in a page from http://127.0.0.1:<port>, with dangerouslyAllowBrowser: its
    x-stainless-* headers and Authorization pass the preflight; json, stream and errors all readable."""
    if not (NODE_SDK / "index.mjs").is_file():
        pytest.skip(f"the openai Node SDK is not installed: run `{NPM_INSTALL}`")
    with static_site("127.0.0.1") as origin, recorded(keyed_server) as seen:
        page.goto(f"{origin}/sdk.html")
        page.wait_for_function("() => window.sdkReady === true", timeout=30_000)
        out = _evaluate(page, "sdkRun", {"baseURL": f"{keyed_server.url}/v1", "apiKey": KEY,
                                         "audioBase64": webm_b64}, deadline_s=300)
    assert out["json"]["ok"], out
    assert_jfk(out["json"]["value"]["text"])
    assert out["json"]["requestId"]
    assert out["stream"]["ok"], out
    events = out["stream"]["value"]
    assert events[-1]["type"] == "transcript.text.done"
    assert_jfk(events[-1]["text"])
    assert out["error"]["class"] == "BadRequestError" and out["error"]["status"] == 400, out
    assert out["error"]["param"] == "language"
    preflight = next(r for r in seen if r["method"] == "OPTIONS")
    asked = {h.strip() for h in preflight["headers"]["access-control-request-headers"].split(",")}
    assert "authorization" in asked and any(h.startswith("x-stainless-") for h in asked), asked
    granted = {h.strip() for h in preflight["response_headers"]["access-control-allow-headers"].split(",")}
    assert asked <= granted, asked - granted
    assert preflight["headers"]["origin"] == origin


def test_foreign_origin_is_blocked(page: Any, whisper_server: Server, keyed_server: Server, webm_b64: str) -> None:
    """A page from another origin (http://127.0.0.2:<port>) cannot read the answer: its audio gets 403
    before the model sees it; with a key header it does not even get past the preflight, so the audio
    is never sent. tests/http/test_browser_security.py has more (no-cors posts, iframes, DNS rebinding)."""
    with static_site("127.0.0.2") as origin, recorded(whisper_server) as open_seen, \
            recorded(keyed_server) as keyed_seen:
        page.goto(f"{origin}/openwhispr.html")
        base = {"audioBase64": webm_b64}
        plain = _evaluate(page, "openWhispr", {**base, "endpoint": f"{whisper_server.url}/v1/audio/transcriptions"})
        keyed = _evaluate(page, "openWhispr", {**base, "apiKey": KEY,
                                               "endpoint": f"{keyed_server.url}/v1/audio/transcriptions"})
    assert plain == {"ok": False, "fetchError": "TypeError: Failed to fetch"}, plain
    assert keyed == {"ok": False, "fetchError": "TypeError: Failed to fetch"}, keyed
    assert all("access-control-allow-origin" not in r["response_headers"] for r in open_seen + keyed_seen)
    assert not posts(keyed_seen), "the audio went past a refused preflight"
    assert [r["status"] for r in posts(open_seen)] == [403], open_seen  # refused, not transcribed and hidden


def test_narrowed_setting_blocks_file_pages(page: Any, serve: Callable[..., Server], whisper_model: str,
                                            webm_b64: str) -> None:
    """CORS_ORIGINS=http://localhost:* leaves file:// pages (Origin: null) out, as the default does."""
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, "CORS_ORIGINS": "http://localhost:*"})
    started = time.monotonic()
    result = _openwhispr(page, server, webm_b64)
    assert result == {"ok": False, "fetchError": "TypeError: Failed to fetch"}, result
    assert time.monotonic() - started < 150

