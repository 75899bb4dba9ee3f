"""The model thread under load and faults: FIFO, bounded queue, disconnects, timeouts, errors."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import SENTENCES, Server, build_recording, wav_bytes, wer


@pytest.fixture(scope="module")
def load_server(serve, whisper_model: str) -> Server:  # noqa: ANN001
    """A server whose waitress has more threads than clients, so the app's own queue is what limits."""
    return serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, "MAX_QUEUE": "64"}, threads=40)


def test_32_concurrent_clients_get_their_own_text_in_arrival_order(load_server: Server, spoken_sentences) -> None:
    clips = [wav_bytes(pcm) for pcm in spoken_sentences]
    before = dict(load_server.worker.counters)

    def client(index: int) -> list[tuple[int, int, str]]:
        answers = []
        with load_server.http() as http:
            for round_ in range(2):
                which = (index + round_) % len(clips)
                resp = http.post("/v1/audio/transcriptions", files={"file": (f"{index}.wav", clips[which])},
                                 data={"model": "whisper-1", "language": "en"})
                answers.append((which, resp.status_code, resp.json().get("text", resp.text)))
        return answers

    with ThreadPoolExecutor(32) as pool:
        results = [a for answers in pool.map(client, range(32)) for a in answers]
    assert len(results) == 64
    assert all(status == 200 for _, status, _ in results), [r for r in results if r[1] != 200][:3]
    for which, _, text in results:  # none lost or swapped: each answer matches the clip sent
        scores = [wer(sentence, text) for sentence in SENTENCES]
        assert scores.index(min(scores)) == which, (which, text)
    counters = load_server.worker.counters
    assert counters["completed"] - before["completed"] == 64
    assert counters["out_of_order"] == 0
    assert counters["rejected_busy"] == before["rejected_busy"]


def test_excess_requests_get_429_at_once(serve, whisper_model: str, spoken_sentences) -> None:  # noqa: ANN001
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, "MAX_QUEUE": "2"}, threads=20)
    clip = wav_bytes(build_recording(spoken_sentences[:3], [0.3, 0.3, 0.3])[0])

    def call(_: int) -> tuple[int, float, dict]:
        started = time.perf_counter()
        with server.http() as http:
            resp = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", clip)})
        return resp.status_code, time.perf_counter() - started, dict(resp.headers) | {"body": resp.json()}

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(call, range(12)))
    ok = [r for r in results if r[0] == 200]
    busy = [r for r in results if r[0] == 429]
    assert len(ok) + len(busy) == 12 and ok and busy
    slowest_ok = max(r[1] for r in ok)
    for _, seconds, headers in busy:
        assert headers["retry-after"] == "1"
        assert headers["body"]["error"]["code"] == "server_busy"
        assert seconds < slowest_ok / 2  # rejected promptly, not after waiting
    assert server.worker.counters["rejected_busy"] == len(busy)


def _multipart(body: bytes) -> tuple[bytes, str]:
    boundary = "raplboundary"
    data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    return data, f"multipart/form-data; boundary={boundary}"


def test_client_that_hangs_up_while_queued_is_not_transcribed(load_server: Server, spoken_sentences) -> None:
    long_clip = wav_bytes(build_recording(spoken_sentences * 3, [0.5] * 18)[0])
    busy = threading.Thread(target=lambda: load_server.http().post(
        "/v1/audio/transcriptions", files={"file": ("long.wav", long_clip)}))
    busy.start()
    deadline = time.monotonic() + 10
    while not load_server.worker.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert load_server.worker.running
    before = dict(load_server.worker.counters)
    body, content_type = _multipart(wav_bytes(spoken_sentences[0]))
    host, port = load_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 10
        while load_server.worker.queue_depth == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert load_server.worker.queue_depth >= 1  # it is queued behind the long job
    busy.join(timeout=120)
    deadline = time.monotonic() + 10
    while load_server.worker.queue_depth and time.monotonic() < deadline:
        time.sleep(0.05)
    counters = load_server.worker.counters
    assert counters["dropped_disconnected"] == before["dropped_disconnected"] + 1
    assert counters["completed"] == before["completed"] + 1  # only the long job ran


def test_backend_fault_is_a_500_and_the_next_request_works(serve, whisper_model: str, jfk: Path) -> None:  # noqa: ANN001
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model})
    model = server.worker.backend._model
    server.worker.backend._model = None  # the next transcription raises inside the backend
    with server.http() as http:
        broken = http.post("/v1/audio/transcriptions", files={"file": ("a.flac", jfk.read_bytes())})
        server.worker.backend._model = model
        fixed = http.post("/v1/audio/transcriptions", files={"file": ("a.flac", jfk.read_bytes())})
    assert broken.status_code == 500
    error = broken.json()["error"]
    assert error["type"] == "server_error" and "Traceback" not in error["message"]
    assert fixed.status_code == 200 and "country" in fixed.json()["text"]


def test_request_waiting_too_long_gets_504(serve, whisper_model: str, spoken_sentences) -> None:  # noqa: ANN001
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, "REQUEST_TIMEOUT": "1"}, threads=8)
    long_clip = wav_bytes(build_recording(spoken_sentences * 3, [0.5] * 18)[0])
    short = wav_bytes(spoken_sentences[0])
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(lambda: server.http().post("/v1/audio/transcriptions",
                                                       files={"file": ("l.wav", long_clip)}))
        deadline = time.monotonic() + 30
        while not server.worker.running and time.monotonic() < deadline:  # the long job is on the model
            time.sleep(0.01)
        second = pool.submit(lambda: server.http().post("/v1/audio/transcriptions", files={"file": ("s.wav", short)}))
        assert first.result().status_code == 200
        resp = second.result()
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"


def test_idle_model_is_unloaded_and_reloaded_by_the_next_request(serve, whisper_model: str, jfk: Path) -> None:  # noqa: ANN001
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, "MODEL_IDLE_UNLOAD": "1"})
    with server.http() as http:
        assert http.post("/v1/audio/transcriptions", files={"file": ("a.flac", jfk.read_bytes())}).status_code == 200
        unloads = server.worker.counters["unloads"]
        deadline = time.monotonic() + 15
        while http.get("/health").json()["status"] != "unloaded" and time.monotonic() < deadline:
            time.sleep(0.1)
        health = http.get("/health")
        assert health.status_code == 200  # still healthy for a load balancer: a request reloads it
        assert health.json()["status"] == "unloaded" and health.json()["unloads"] == unloads + 1
        assert server.worker.backend._model is None  # the memory is really let go
        assert http.get("/v1/models").json()["data"][0]["loaded"] is False
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.flac", jfk.read_bytes())})
        assert resp.status_code == 200 and "country" in resp.json()["text"]
        assert http.get("/health").json()["status"] == "ready"
        assert http.get("/v1/models").json()["data"][0]["loaded"] is True


def test_requests_after_shutdown_get_503_in_the_envelope(serve, whisper_model: str, jfk: Path) -> None:  # noqa: ANN001
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model})
    server.worker.shutdown()  # what a stopping server does before it closes
    with server.http() as http:
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.flac", jfk.read_bytes())},
                         data={"response_format": "srt"})
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "shutting_down" and server.worker.queue_depth == 0
