"""Hostile uploads against the real server (waitress, Whisper tiny.en, real FFmpeg and PyAV).

The decoder must read the upload and nothing else (no file, socket or URL named inside it),
and every limit must hold before memory or time is spent: decompression bombs, silence by
the hour, files of tiny packets, requests waiting for the model.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import psutil
import pytest

from support.server import Server
from support.speech import espeak, wav_bytes

pytestmark = pytest.mark.slow  # the real tiny.en model, hours-long decompression bombs, memory measurements

CANARY = "pineapple"  # the word only the file in the server's working directory says
ENDPOINT = "/v1/audio/transcriptions"


def lavfi(dst: Path, source: str, *args: str) -> Path:
    """Render an FFmpeg lavfi ``source`` (with output ``args``) to ``dst``."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, *args, str(dst)],
                   check=True, timeout=120)
    return dst


@pytest.fixture(scope="module")
def server(serve: Callable[..., Server], whisper_model: str) -> Server:
    """A Whisper tiny.en server with the default limits spelled out."""
    started = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, "MAX_AUDIO_SECONDS": "14400",
                     "MAX_UPLOAD_MB": "25"})
    assert started.worker.state == "ready", started.worker.error
    return started


@pytest.fixture(scope="module")
def canary_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak-ng saying the canary word: what a playlist would read from the server's disk."""
    return espeak(f"The secret word is {CANARY}. I repeat, {CANARY}.", tmp_path_factory.mktemp("canary") / "c.wav")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, canary_wav: Path) -> Path:
    """The server's working directory for one test, with recordings/board-meeting.wav in it."""
    (tmp_path / "recordings").mkdir()
    (tmp_path / "recordings" / "board-meeting.wav").write_bytes(canary_wav.read_bytes())
    monkeypatch.chdir(tmp_path)
    return tmp_path


class TcpListener:
    """A TCP listener on loopback that counts the connections it gets (it must get none)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()

    def close(self) -> None:
        """Stop listening."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[TcpListener]:
    """A loopback TCP listener that playlists name as their media server."""
    server = TcpListener()
    yield server
    server.close()


def post(server: Server, data: bytes, name: str = "upload.bin", timeout: float = 60) -> httpx.Response:
    """POST ``data`` as the file of a transcription request, within ``timeout`` seconds."""
    with httpx.Client(base_url=server.url, timeout=timeout) as http:
        return http.post(ENDPOINT, files={"file": (name, data)}, data={"model": "whisper-1"})


def assert_refused(resp: httpx.Response) -> None:
    """A 4xx in OpenAI's envelope that says nothing of the canary."""
    assert 400 <= resp.status_code < 500, resp.text
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    assert CANARY not in resp.text.lower()


def test_the_canary_is_audible(server: Server, canary_wav: Path) -> None:
    """The control: sent as the upload, the canary file does say the canary word."""
    resp = post(server, canary_wav.read_bytes(), "c.wav")
    assert resp.status_code == 200 and CANARY in resp.json()["text"].lower()


def _playlists(workdir: Path, port: int) -> dict[str, bytes]:
    canary = workdir / "recordings" / "board-meeting.wav"
    http = f"http://127.0.0.1:{port}"
    for i in range(1, 4):  # an image sequence, as the image2 demuxer would read it
        lavfi(workdir / f"img{i:03d}.png", "color=c=red:s=16x16:d=0.04", "-frames:v", "1")
    hls = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{}\n#EXT-X-ENDLIST\n"
    dash = ('<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
            'mediaPresentationDuration="PT10S" minBufferTime="PT1S" '
            'profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">'
            '<Period><AdaptationSet mimeType="audio/wav"><Representation id="a" bandwidth="256000">'
            '<BaseURL>{}</BaseURL></Representation></AdaptationSet></Period></MPD>\n')
    return {
        "ffconcat relative path": b"ffconcat version 1.0\nfile recordings/board-meeting.wav\n",
        "ffconcat absolute path": f"ffconcat version 1.0\nfile '{canary}'\n".encode(),
        "ffconcat file: URL": b"ffconcat version 1.0\nfile 'file:recordings/board-meeting.wav'\n",
        "ffconcat http: URL": f"ffconcat version 1.0\nfile '{http}/board-meeting.wav'\n".encode(),
        "ffconcat image2 pattern": b"ffconcat version 1.0\nfile 'img%03d.png'\n",
        "HLS relative path": hls.format("recordings/board-meeting.wav").encode(),
        "HLS file: URL": hls.format(f"file:{canary}").encode(),
        "HLS http: URL": hls.format(f"{http}/segment.ts").encode(),
        "DASH relative path": dash.format("recordings/board-meeting.wav").encode(),
        "DASH http: URL": dash.format(f"{http}/board-meeting.wav").encode(),
        "PNG image": (workdir / "img001.png").read_bytes(),
    }


PLAYLISTS = ["ffconcat relative path", "ffconcat absolute path", "ffconcat file: URL", "ffconcat http: URL",
             "ffconcat image2 pattern", "HLS relative path", "HLS file: URL", "HLS http: URL", "DASH relative path",
             "DASH http: URL", "PNG image"]


@pytest.mark.parametrize("case", PLAYLISTS)
def test_playlists_cannot_read_the_servers_files_or_network(server: Server, workdir: Path, listener: TcpListener,
                                                            case: str) -> None:
    data = _playlists(workdir, listener.port)[case]
    started = time.perf_counter()
    resp = post(server, data, "playlist.m3u8" if "HLS" in case else "upload.txt", timeout=30)
    assert_refused(resp)
    assert time.perf_counter() - started < 10
    assert listener.accepted == 0


def _udp_ports() -> set[int]:
    return {c.laddr.port for c in psutil.Process().net_connections(kind="udp")}


def test_sdp_opens_no_socket_and_holds_nothing(server: Server) -> None:
    """An SDP file would bind UDP ports and decode whatever RTP arrives, for as long as it arrives."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # plays the RTP source, and listens
    sender.bind(("127.0.0.1", 0))
    sender.settimeout(0.05)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1] & ~1  # RTP takes an even port, RTCP the next one
    probe.close()
    sdp = (f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=RAPL\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio {port} RTP/AVP 0\n"
           "a=rtpmap:0 PCMU/8000\n").encode()
    ours = _udp_ports()
    stop = threading.Event()
    opened: set[int] = set()
    received: list[Any] = []

    def rtp_and_watch() -> None:
        seq = 0
        while not stop.is_set():
            opened.update(_udp_ports() - ours)
            header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x1234)
            with contextlib.suppress(OSError):
                sender.sendto(header + b"\xff" * 160, ("127.0.0.1", port))
            seq += 1
            with contextlib.suppress(OSError):
                received.append(sender.recvfrom(2048)[1])

    watcher = threading.Thread(target=rtp_and_watch, daemon=True)
    watcher.start()
    answers: list[httpx.Response] = []
    health: list[float] = []
    try:
        started = time.perf_counter()
        posts = [threading.Thread(target=lambda: answers.append(post(server, sdp, "call.sdp", timeout=30)))
                 for _ in range(4)]
        for thread in posts:
            thread.start()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            asked = time.perf_counter()
            assert http.get("/health").status_code == 200
            health.append(time.perf_counter() - asked)
        for thread in posts:
            thread.join(timeout=40)
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        watcher.join(timeout=5)
        sender.close()
    assert len(answers) == 4
    for resp in answers:
        assert_refused(resp)
    assert elapsed < 10, f"SDP uploads held the server {elapsed:.1f} s"
    assert health[0] < 2
    assert opened == set(), f"the server opened UDP ports {sorted(opened)}"
    assert received == []


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Kilobytes of silence that decode to hours (FLAC in Matroska and in Ogg: 5 h; FLAC: 3 h 50 min)."""
    out = tmp_path_factory.mktemp("bombs")
    flac = ["-c:a", "flac", "-frame_size", "65535"]
    return {
        "mkv-flac 5 h": lavfi(out / "bomb.mkv", "anullsrc=r=8000:cl=mono", "-t", "18000", *flac),
        "ogg-flac 5 h": lavfi(out / "bomb.oga", "anullsrc=r=8000:cl=mono", "-t", "18000", *flac, "-f", "ogg"),
        "silence 3 h 50": lavfi(out / "silence.flac", "anullsrc=r=8000:cl=mono", "-t", "13800", *flac),
    }


@contextlib.contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Sample this process's RSS every few ms; ``growth`` is the peak over the start, in MB."""
    proc = psutil.Process()
    figures = {"base": float(proc.memory_info().rss), "peak": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            figures["peak"] = max(figures["peak"], float(proc.memory_info().rss))
            stop.wait(0.003)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield figures
    finally:
        stop.set()
        sampler.join(timeout=5)
        figures["growth"] = (max(figures["peak"], float(proc.memory_info().rss)) - figures["base"]) / 1e6


@pytest.mark.parametrize("case", ["mkv-flac 5 h", "ogg-flac 5 h"])
def test_decompression_bombs_stop_at_the_limit_with_little_memory(server: Server, bombs: dict[str, Path],
                                                                  case: str) -> None:
    data = bombs[case].read_bytes()
    assert len(data) < 200_000
    with peak_rss() as memory:
        started = time.perf_counter()
        resp = post(server, data, "bomb.bin")
        elapsed = time.perf_counter() - started
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "audio_too_long", resp.text
    assert memory["growth"] < 300, f"+{memory['growth']:.0f} MB"
    assert elapsed < 30


def test_hours_of_silence_cost_decode_time_only(server: Server, bombs: dict[str, Path]) -> None:
    with peak_rss() as memory:
        started = time.perf_counter()
        resp = post(server, bombs["silence 3 h 50"].read_bytes(), "silence.flac")
        elapsed = time.perf_counter() - started
    assert resp.status_code == 200 and resp.json()["text"] == "", resp.text
    assert memory["growth"] < 100, f"+{memory['growth']:.0f} MB"
    assert elapsed < 20


def _constant_bomb(dst: Path, rate: int) -> Path:
    """3 h 50 min of a constant loud signal (0.9 of full scale) as FLAC in Matroska, at ``rate`` Hz."""
    return lavfi(dst, f"aevalsrc=0.9:s={rate}", "-t", "13800", "-c:a", "flac", "-frame_size", "65535")


def _posted_at_once(server: Server, data: bytes, name: str, count: int, timeout: float = 120,
                    **form: str) -> list[httpx.Response]:
    """POST ``data`` ``count`` times at once (one thread each); the answers."""
    answers: list[httpx.Response] = []

    def one() -> None:
        with httpx.Client(base_url=server.url, timeout=timeout) as http:
            answers.append(http.post(ENDPOINT, files={"file": (name, data)}, data={"model": "whisper-1", **form}))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout + 10)
    return answers


@pytest.mark.parametrize("count", [1, 4])
def test_hours_of_a_constant_loud_signal_cost_little(server: Server, tmp_path: Path, count: int) -> None:
    """94 KB of FLAC in Matroska: 3 h 50 min of a constant at 0.9 of full scale, 8 kHz. It was 200 after
    18-19 s at +0.85 GB each (four at once: +2.7 GB): every page stored, the VAD run over all of them.
    Now each page repeats the one before and costs nothing, and the VAD skips them."""
    data = _constant_bomb(tmp_path / "constant.mkv", 8000).read_bytes()
    assert len(data) < 100_000
    with peak_rss() as memory:
        started = time.perf_counter()
        answers = _posted_at_once(server, data, "constant.mkv", count)
        elapsed = time.perf_counter() - started
    assert len(answers) == count
    for resp in answers:
        assert resp.status_code == 200 and resp.json()["text"] == "", resp.text
    assert memory["growth"] < 100 + 25 * count, f"+{memory['growth']:.0f} MB for {count}"
    assert elapsed < 8 * count, f"{elapsed:.1f} s for {count}"


def test_a_constant_signal_at_a_rate_below_speech_is_refused_at_once(server: Server, tmp_path: Path) -> None:
    """The issue's 12 KB file: the same constant for 3 h 50 min at 1 kHz. No speech fits in 1 kHz: 400 at once."""
    data = _constant_bomb(tmp_path / "constant-1k.mkv", 1000).read_bytes()
    assert len(data) < 15_000
    with peak_rss() as memory:
        started = time.perf_counter()
        resp = post(server, data, "constant.mkv")
        elapsed = time.perf_counter() - started
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "file", resp.text
    assert memory["growth"] < 50, f"+{memory['growth']:.0f} MB"
    assert elapsed < 2


def _one_hertz_wav() -> bytes:
    """40 KB of WAV whose header says 1 Hz: its 20,000 samples would resample to 320 million (3.5 GB before)."""
    samples = np.tile(np.int16([8192, -8192]), 10_000).tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 1, 2, 2, 16)  # PCM, mono, 1 Hz, 2 bytes a second, 16-bit
    return (b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", len(samples)) + samples)


def test_a_one_hertz_wav_is_refused_at_once(server: Server) -> None:
    """It got 413 after 5.5-16.7 s at +3.5 GB: the resampler was handed the whole block before the limit."""
    data = _one_hertz_wav()
    assert len(data) < 41_000
    with peak_rss() as memory:
        started = time.perf_counter()
        resp = post(server, data, "tiny-rate.wav")
        elapsed = time.perf_counter() - started
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "file", resp.text
    assert memory["growth"] < 50, f"+{memory['growth']:.0f} MB"
    assert elapsed < 2


def test_a_one_hertz_wav_as_a_known_speakers_reference_is_refused_at_once(server: Server, jfk: Path) -> None:
    """The same file as a known speaker's reference clip: 400 after up to 21 s at +3.5 GB before."""
    reference = "data:audio/wav;base64," + base64.b64encode(_one_hertz_wav()).decode()
    form = {"response_format": "diarized_json", "known_speaker_names[]": "alice",
            "known_speaker_references[]": reference}
    with peak_rss() as memory:
        started = time.perf_counter()
        resp = _posted_at_once(server, jfk.read_bytes(), "jfk.flac", 1, **form)[0]
        elapsed = time.perf_counter() - started
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "known_speaker_references", resp.text
    assert "Hz" in resp.json()["error"]["message"]
    assert memory["growth"] < 50, f"+{memory['growth']:.0f} MB"
    assert elapsed < 2


def test_flac_written_to_a_pipe_transcribes(server: Server, jfk: Path, tmp_path: Path) -> None:
    """A FLAC header written to a pipe says 0 samples (unknown): that is not "endless"."""
    piped = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(jfk), "-f", "flac", "pipe:1"],
                           capture_output=True, check=True, timeout=60).stdout
    resp = post(server, piped, "piped.flac")
    assert resp.status_code == 200, resp.text
    assert "country" in resp.json()["text"].lower()


def test_tiny_packets_in_an_allowed_container_are_refused_quickly(server: Server, tmp_path: Path) -> None:
    """480,000 one-sample packets in Matroska (3.8 MB) decoded for 16 s before; now a clear 400 at once."""
    mkv = lavfi(tmp_path / "tiny.mkv", "sine=f=440:r=8000:d=60", "-af", "asetnsamples=n=1", "-c:a", "pcm_s16le")
    started = time.perf_counter()
    resp = post(server, mkv.read_bytes(), "tiny.mkv")
    elapsed = time.perf_counter() - started
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "decode_budget_exceeded", resp.text
    assert resp.json()["error"]["param"] == "file"
    assert elapsed < 5


def test_ffmpeg_cli_fallback_decodes_and_refuses_like_pyav(server: Server, jfk_variants: dict[str, Path],
                                                          workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PyAV the ffmpeg CLI decodes real files through pipes, under the same allow-list."""
    monkeypatch.setitem(sys.modules, "av", None)  # "import av" fails, as on a platform without its wheels
    resp = post(server, jfk_variants["ogg"].read_bytes(), "jfk.ogg")
    assert resp.status_code == 200, resp.text
    assert "country" in resp.json()["text"].lower()
    assert_refused(post(server, b"ffconcat version 1.0\nfile recordings/board-meeting.wav\n", "list.txt"))


def _multipart(data: bytes, port: int) -> bytes:
    boundary = "raplhostileboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"long.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST {ENDPOINT} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def test_requests_waiting_for_the_model_hold_about_their_upload(server: Server, jfk: Path) -> None:
    """Six 24 MB WAVs of speech wait while the model is busy: each holds its audio once, not its upload too
    (it was about 240 MB each: the upload, a float32 copy, the VAD's padded copies and its batch of windows)."""
    from rapl import audio

    speech = audio.decode(jfk.read_bytes())
    clip = np.concatenate([speech, np.zeros(8000, dtype=np.float32)])
    wav = wav_bytes(np.tile(clip, 12_000_000 // len(clip) + 1)[:12_000_000])  # 750 s, 24 MB
    request = _multipart(wav, int(server.url.rsplit(":", 1)[1]))
    worker = server.worker
    gate = threading.Event()
    blocker = worker.submit(lambda: gate.wait(120))  # the model is busy with someone else's job
    sockets: list[socket.socket] = []
    channels = server._server._map  # waitress's open connections (and its listening socket)
    idle = len(channels)
    try:
        with peak_rss() as memory:
            for _ in range(6):
                sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=60)
                sock.sendall(request)
                sockets.append(sock)
            deadline = time.monotonic() + 120
            while worker.queue_depth < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert worker.queue_depth == 6
    finally:
        for sock in sockets:  # hang up: the queued jobs are dropped, not transcribed...
            sock.close()
        deadline = time.monotonic() + 20
        while len(channels) > idle and time.monotonic() < deadline:  # ...once waitress has seen it
            time.sleep(0.05)
        gate.set()
        blocker.result(timeout=60)
        deadline = time.monotonic() + 60
        while (worker.queue_depth or worker.running) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert worker.counters["dropped_disconnected"] >= 6
    per_request = memory["growth"] / 6  # about 1.4 times the upload: its 16-bit pages, and allocator slack
    assert per_request < 2 * len(wav) / 1e6, f"+{per_request:.0f} MB per waiting request (upload {len(wav) >> 20} MB)"


def test_a_good_upload_still_works_after_all_that(server: Server, jfk_variants: dict[str, Path]) -> None:
    resp = post(server, jfk_variants["m4a"].read_bytes(), "a.m4a")
    assert resp.status_code == 200 and "country" in resp.json()["text"].lower()
