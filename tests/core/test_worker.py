"""The model thread under load and faults: FIFO, bounded queue, disconnects, timeouts, errors, idle unload.

Through a real waitress server and real HTTP clients, on the FakeBackend: it says how many seconds
of audio it was given ("speech 2.5 s"), so every answer shows which clip reached the model.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import numpy as np
import psutil
import pytest

from rapl.core import heap
from rapl.core.worker import TRIM_AFTER_SECONDS, TRIM_AUDIO_SECONDS
from rapl.http.api import TRIM_BODY_BYTES
from support import ROOT
from support.fake_backend import FakeBackend, say
from support.net import free_port
from support.processes import environment, started, wait_healthy
from support.server import Server, wait_until
from support.speech import build_recording, tone, wav_bytes

LENGTHS = [1.0, 1.3, 1.6, 1.9, 2.2, 2.5]  # seconds: one clip each, told apart by what the model says
CLIP = wav_bytes(tone(11.0))


def _post(server: Server, clip: bytes, name: str = "a.wav", **data: str):  # noqa: ANN202
    with server.http() as http:
        return http.post("/v1/audio/transcriptions", files={"file": (name, clip)}, data=data)


def test_32_concurrent_clients_get_their_own_text_in_arrival_order(fake_serve) -> None:  # noqa: ANN001
    """A server whose waitress has more threads than clients, so the app's own queue is what limits."""
    backend = FakeBackend(delay=0.02)
    server = fake_serve(backend, threads=40, MAX_QUEUE="64")
    clips = [wav_bytes(tone(seconds)) for seconds in LENGTHS]

    def client(index: int) -> list[tuple[int, int, str]]:
        answers = []
        with server.http() as http:
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
    for which, _, text in results:  # none lost or swapped: each answer is about the clip sent
        assert text == say(LENGTHS[which]), (which, text)
    counters = server.worker.counters
    assert counters["completed"] == len(backend.calls) == 64
    assert counters["out_of_order"] == 0 and counters["rejected_busy"] == 0
    assert backend.most_at_once == 1  # one job on the model at a time...
    assert {call.thread for call in backend.calls} == {backend.calls[0].thread}  # ...always on the model thread
    assert backend.calls[0].thread.startswith("rapl-model")


def test_excess_requests_get_429_at_once(fake_serve) -> None:  # noqa: ANN001
    """MAX_QUEUE=2 while the model is held busy: one job runs, two wait, the other nine are refused
    while the model is still busy (not after waiting), and the three admitted ones complete."""
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    server = fake_serve(backend, threads=20, MAX_QUEUE="2")
    clip = wav_bytes(tone(3.0))

    def call(_: int) -> tuple[int, float, dict]:
        resp = _post(server, clip)
        return resp.status_code, time.perf_counter(), dict(resp.headers) | {"body": resp.json()}

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(call, i) for i in range(12)]
        wait_until(lambda: sum(f.done() for f in futures) == 9, timeout=30, what="nine answers")
        assert server.worker.running and server.worker.queue_depth == 2 and len(backend.calls) == 1
        opened = time.perf_counter()
        gate.set()
        results = [f.result() for f in futures]
    ok = [r for r in results if r[0] == 200]
    busy = [r for r in results if r[0] == 429]
    assert len(ok) == 3 and len(busy) == 9 and server.worker.counters["rejected_busy"] == 9
    for _, answered, headers in busy:
        assert headers["retry-after"] == "1"
        assert headers["body"]["error"]["code"] == "server_busy"
        assert answered < opened  # refused while the model was still busy, not after waiting
    assert all(answered > opened for _, answered, _ in ok)
    assert len(backend.calls) == 3  # a refused request never reaches the model


def _multipart(body: bytes) -> tuple[bytes, str]:
    boundary = "raplboundary"
    data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    return data, f"multipart/form-data; boundary={boundary}"


def test_client_that_hangs_up_while_queued_is_not_transcribed(fake_serve) -> None:  # noqa: ANN001
    gate = threading.Event()
    backend = FakeBackend(gate=gate)  # the first job holds the model until the gate opens
    server = fake_serve(backend)
    busy = threading.Thread(target=_post, args=(server, CLIP))
    busy.start()
    wait_until(lambda: server.worker.running, timeout=10, what="the first job to reach the model")
    connections = server.connections()
    body, content_type = _multipart(wav_bytes(tone(2.0)))
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: server.worker.queue_depth >= 1, timeout=10, what="the second request to queue")
    wait_until(lambda: server.connections() <= connections, timeout=10, what="waitress to see the hang-up")
    gate.set()
    busy.join(timeout=30)
    wait_until(lambda: not server.worker.queue_depth and not server.worker.running, timeout=10,
               what="the queue to drain")
    counters = server.worker.counters
    assert counters["dropped_disconnected"] == 1
    assert counters["completed"] == 1 and [call.seconds for call in backend.calls] == [11.0]  # only the first job ran


def test_backend_fault_is_a_500_and_the_next_request_works(fake_serve) -> None:  # noqa: ANN001
    backend = FakeBackend(fail=RuntimeError("CUDA error: an illegal memory access was encountered"))
    server = fake_serve(backend)
    broken = _post(server, CLIP)
    backend.fail = None
    fixed = _post(server, CLIP)
    assert broken.status_code == 500
    error = broken.json()["error"]
    assert error["type"] == "server_error" and "Traceback" not in error["message"]
    assert "CUDA" not in error["message"]  # the library's words stay in the server log
    assert fixed.status_code == 200 and fixed.json()["text"] == say(11.0)
    assert server.worker.counters["failed"] == 1 and server.worker.counters["completed"] == 1


def test_request_waiting_too_long_gets_504(fake_serve) -> None:  # noqa: ANN001
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    server = fake_serve(backend, REQUEST_TIMEOUT="1")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_post, server, CLIP)
        wait_until(lambda: server.worker.running, timeout=10, what="the first job to reach the model")
        second = pool.submit(_post, server, wav_bytes(tone(2.0)))
        wait_until(lambda: server.worker.queue_depth == 1, timeout=10, what="the second request to queue")
        time.sleep(1.2)  # longer than REQUEST_TIMEOUT
        gate.set()
        assert first.result().status_code == 200
        resp = second.result()
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"
    assert server.worker.counters["timed_out"] == 1 and [call.seconds for call in backend.calls] == [11.0]


def test_idle_model_is_unloaded_and_reloaded_by_the_next_request(fake_serve) -> None:  # noqa: ANN001
    backend = FakeBackend()
    server = fake_serve(backend, MODEL_IDLE_UNLOAD="1")
    with server.http() as http:
        assert http.post("/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)}).status_code == 200
        wait_until(lambda: http.get("/health").json()["status"] == "unloaded", timeout=15,
                   what="the idle model to be unloaded", interval=0.1)
        health = http.get("/health")
        assert health.status_code == 200  # still healthy for a load balancer: a request reloads it
        assert health.json()["status"] == "unloaded" and health.json()["unloads"] == 1
        assert backend.unloads == 1 and not backend.loaded  # the backend was really told to let go
        assert http.get("/v1/models").json()["data"][0]["loaded"] is False
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)})
        assert resp.status_code == 200 and resp.json()["text"] == say(11.0)
        assert backend.loads == 2
        assert http.get("/health").json()["status"] == "ready"
        assert http.get("/v1/models").json()["data"][0]["loaded"] is True


def test_requests_after_shutdown_get_503_in_the_envelope(fake_serve) -> None:  # noqa: ANN001
    server = fake_serve()
    server.worker.shutdown()  # what a stopping server does before it closes
    resp = _post(server, CLIP, response_format="srt")
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "shutting_down" and server.worker.queue_depth == 0
    assert server.backend.calls == []


def _trims(server: Server) -> int:
    return server.worker.counters["heap_trims"]


@pytest.mark.slow  # waits out a real timeout (seconds): the full suite runs it, the fast tier does not
@pytest.mark.skipif(not heap.trim(), reason="malloc_trim is glibc's (Linux); elsewhere RAPL trims nothing")
def test_freed_memory_goes_back_only_when_idle_after_a_long_request(fake_serve) -> None:  # noqa: ANN001
    """Trimming after every request made the next one's model stage 40-50 ms slower (the model's working
    memory was faulted back in): dictation clips and short files never trim; a long request (over
    TRIM_AUDIO_SECONDS) trims once, after TRIM_AFTER_SECONDS of idle model, not while requests keep coming."""
    server = fake_serve(FakeBackend(delay=0.001), MAX_UPLOAD_MB="64")
    noise = np.random.default_rng(0).normal(0, 0.1, 16000 * (TRIM_AUDIO_SECONDS + 10)).astype(np.float32)
    long_clip = wav_bytes(noise)
    for clip in (CLIP, CLIP, wav_bytes(noise[:16000 * 60])):  # dictation and a 1-minute file
        assert _post(server, clip).status_code == 200
    time.sleep(TRIM_AFTER_SECONDS + 0.6)
    assert _trims(server) == 0  # their memory stays for the next request
    with ThreadPoolExecutor(2) as pool:  # a long request, then clips back to back: no trim between them
        long = pool.submit(_post, server, long_clip)
        clips = pool.submit(lambda: [_post(server, CLIP).status_code for _ in range(4)])
        assert long.result().status_code == 200 and clips.result() == [200] * 4
    assert _trims(server) == 0
    wait_until(lambda: _trims(server) == 1, timeout=10, what="the trim once the model is idle", interval=0.05)
    time.sleep(TRIM_AFTER_SECONDS + 0.6)
    assert _trims(server) == 1  # once per long request, not again and again while idle
    with server.http() as http:  # a large upload, even one refused, is handed back too
        garbage = np.random.default_rng(1).bytes(TRIM_BODY_BYTES + 2**20)
        assert http.post("/v1/audio/transcriptions", files={"file": ("a.wav", garbage)}).status_code == 400
    wait_until(lambda: _trims(server) == 2, timeout=10, what="the trim after a large upload", interval=0.05)


@pytest.mark.slow  # the real tiny.en model on 10 minutes of speech, in a `python -m rapl` of its own
@pytest.mark.skipif(not heap.trim(), reason="malloc_trim is glibc's (Linux); elsewhere RAPL trims nothing")
def test_server_memory_returns_to_idle_after_long_requests(whisper_model: str, spoken_sentences) -> None:  # noqa: ANN001
    """Idle memory rose from 220 to about 290 MB over six long requests and never came back (the trim ran
    before the model, not after). Now RSS is back within 10% of idle once the server is idle again."""
    parts = spoken_sentences * 10  # about 6 minutes (over TRIM_AUDIO_SECONDS), 1.5-4 s pauses
    recording, _ = build_recording(parts, [1.5 + (i % 6) * 0.5 for i in range(len(parts))])
    assert len(recording) / 16000 > TRIM_AUDIO_SECONDS
    body = wav_bytes(recording, "FLAC")
    port = free_port()
    env = environment(BACKEND="whisper", LOCAL_MODEL=whisper_model, PORT=str(port), MAX_UPLOAD_MB="200")
    base = f"http://127.0.0.1:{port}"
    with started([sys.executable, "-m", "rapl"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE, text=True) as proc:
        wait_healthy(proc, base, timeout=180)
        server = psutil.Process(proc.pid)
        with httpx.Client(base_url=base, timeout=600) as http:
            def post(data: bytes) -> None:
                assert http.post("/v1/audio/transcriptions", files={"file": ("a.flac", data)}).status_code == 200

            def trims() -> int:
                return http.get("/health").json()["heap_trims"]

            clip = wav_bytes(spoken_sentences[0])
            for _ in range(3):  # dictation first: its working memory is part of idle
                post(clip)
            faults = _minor_faults(proc.pid)
            post(clip)  # the heap kept the encoder's buffers: no 206 MB of pages faulted back in per window
            assert _minor_faults(proc.pid) - faults < 5000, "the model's buffers were mapped again"
            time.sleep(1)
            idle = server.memory_info().rss
            for n in (1, 2):
                post(body)
                wait_until(lambda n=n: trims() == n, timeout=30, what="the trim after a long request", interval=0.1)
                after = server.memory_info().rss
                assert after <= 1.10 * idle, f"request {n}: {after / 2**20:.0f} MB, idle {idle / 2**20:.0f} MB"


def _minor_faults(pid: int) -> int:
    """The process's minor page faults so far (/proc/PID/stat, field 10)."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])


# -- the partial lane (live sessions' partial decodes) -----------------------------------------


def _worker(**settings: str):  # noqa: ANN202
    from rapl import create_app

    app = create_app({"ENV_FILE": "", "PROGRESS": "false", "VAD": "false", **settings}, backend=FakeBackend())
    work = app.extensions["rapl"]
    work.start()
    work.ensure_loaded()
    return work


def test_partials_wait_behind_requests_and_finals() -> None:
    """A partial queued before requests runs after them: requests and final transcriptions go first."""
    work = _worker()
    order: list[str] = []
    gate = threading.Event()
    try:
        blocker = work.submit(lambda: gate.wait(10))  # the model is busy
        partial = work.submit_partial("session-a", lambda: order.append("partial"))
        jobs = [work.submit(lambda i=i: order.append(f"job{i}")) for i in range(3)]
        gate.set()
        for future in [blocker, *jobs, partial]:
            future.result(timeout=10)
        assert order == ["job0", "job1", "job2", "partial"]
        assert work.counters["partials"] == 1
    finally:
        gate.set()
        work.shutdown()


def test_a_newer_partial_replaces_the_queued_one_and_sessions_take_turns() -> None:
    """Coalesced per session (the older queued partial is cancelled), and FIFO across sessions."""
    work = _worker()
    order: list[str] = []
    gate = threading.Event()
    try:
        blocker = work.submit(lambda: gate.wait(10))
        first_a = work.submit_partial("a", lambda: order.append("a1"))
        first_b = work.submit_partial("b", lambda: order.append("b1"))
        second_a = work.submit_partial("a", lambda: order.append("a2"))  # replaces a1, behind b1
        gate.set()
        blocker.result(timeout=10)
        first_b.result(timeout=10)
        second_a.result(timeout=10)
        assert first_a.cancelled()
        assert order == ["b1", "a2"]
        assert work.counters["partials_skipped"] == 1
    finally:
        gate.set()
        work.shutdown()


def test_withdrawn_and_shut_down_partials_are_cancelled() -> None:
    work = _worker()
    gate = threading.Event()
    blocker = work.submit(lambda: gate.wait(10))
    withdrawn = work.submit_partial("a", lambda: "never")
    work.withdraw_partial("a")
    queued = work.submit_partial("b", lambda: "never")
    gate.set()
    blocker.result(timeout=10)
    work.shutdown()
    assert withdrawn.cancelled()
    assert queued.cancelled() or queued.result(timeout=1) == "never"
    after = work.submit_partial("c", lambda: "never")  # after the stop: cancelled at once, no error
    assert after.cancelled()
