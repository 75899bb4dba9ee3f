"""The mlx backend on tiny random-weight models loaded by mlx-audio's real loader, offline."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config import Settings, SettingsError
from rapl.errors import APIError
from rapl.transcription import Options, Segment, Transcription

if importlib.util.find_spec("mlx_audio") is None or importlib.util.find_spec("mlx") is None:
    pytest.skip("mlx-audio is not installed (pip install mlx-audio 'mlx[cpu]')", allow_module_level=True)
try:
    import mlx.core  # noqa: F401
    import mlx_audio.stt  # noqa: F401
except Exception as exc:  # an installed but broken MLX (no CPU build, missing library)
    pytest.skip(f"mlx-audio is not importable: {exc}", allow_module_level=True)

from rapl.backends.mlx import MLXBackend, _segments, token_limit  # noqa: E402
from tiny_mlx import make_mlx_sensevoice, make_qwen3_asr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
JFK = ROOT.parent / "shared" / "audio" / "en_jfk.flac"
HUB_ID = "rapl-test/tiny-qwen3-asr"


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Refuse every outgoing connection and name lookup; tell the HF hub client it is offline."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("network access attempted while the mlx tests block it")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(autouse=True)
def _offline() -> Iterator[None]:
    with no_network():
        yield


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_qwen3_asr(tmp_path_factory.mktemp("mlx") / "tiny-qwen3-asr")


@pytest.fixture(scope="session")
def sensevoice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mlx_sensevoice(tmp_path_factory.mktemp("mlx") / "tiny-sensevoice")


def _backend(model: str | Path) -> MLXBackend:
    return MLXBackend(Settings.load({"BACKEND": "mlx", "LOCAL_MODEL": str(model), "DEVICE": "cpu"},
                                    environ={}))


@pytest.fixture(scope="session")
def qwen(qwen_dir: Path) -> MLXBackend:
    backend = _backend(qwen_dir)
    with no_network():
        backend.load()
    return backend


@pytest.fixture(scope="session")
def sensevoice(sensevoice_dir: Path) -> MLXBackend:
    backend = _backend(sensevoice_dir)
    with no_network():
        backend.load()
    return backend


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """en_jfk.flac at 16 kHz mono (soundfile + soxr), or 11 s of synthetic audio without it."""
    if JFK.is_file():
        import soundfile
        import soxr

        data, rate = soundfile.read(str(JFK), dtype="float32", always_2d=True)
        return soxr.resample(data.mean(axis=1), rate, 16000).astype(np.float32)
    t = np.arange(11 * 16000) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 + 50 * np.sin(3 * t)) * t)).astype(np.float32)


class Spy:
    """Wraps a model's generate() to record each call's kwargs and output."""

    def __init__(self, model: Any) -> None:
        self.original = model.generate
        self.calls: list[tuple[dict[str, Any], Any]] = []

    def __call__(self, audio: Any, **kwargs: Any) -> Any:
        output = self.original(audio, **kwargs)
        self.calls.append((kwargs, output))
        return output


@pytest.fixture
def spy_qwen(qwen: MLXBackend, monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy(qwen._model)
    monkeypatch.setattr(qwen._model, "generate", spy)
    return spy


def test_tiny_qwen3_asr_loads_through_mlx_audio_offline(qwen_dir: Path) -> None:
    from mlx_audio.stt import load

    files = {p.name for p in qwen_dir.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
            "model.safetensors"} <= files
    assert json.loads((qwen_dir / "config.json").read_text())["model_type"] == "qwen3_asr"
    assert sum(p.stat().st_size for p in qwen_dir.iterdir()) < 2_000_000
    model = load(str(qwen_dir))
    assert type(model).__module__.startswith("mlx_audio.stt.models.qwen3_asr")
    ids = model._tokenizer.encode("<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>")
    assert model.config.audio_token_id in ids and model.config.audio_start_token_id in ids


def test_constructor_is_cheap_and_does_not_import_mlx(qwen_dir: Path) -> None:
    code = ("import sys; from config import Settings; from rapl.backends import create; "
            f"b = create(Settings.load({{'BACKEND': 'mlx', 'LOCAL_MODEL': {str(qwen_dir)!r}}}, environ={{}})); "
            "print(b.name, b.family_key, 'mlx.core' in sys.modules, 'mlx_audio' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["mlx", "qwen3_asr", "False", "False"]


def test_missing_mlx_audio_names_backend_and_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlx_audio" else real(name, *a))
    with pytest.raises(SettingsError) as info:
        _backend("mlx-community/Qwen3-ASR-1.7B-8bit")
    assert "BACKEND=mlx" in str(info.value) and "pip install" in str(info.value)
    assert "mlx-audio" in str(info.value)


def test_attributes(qwen: MLXBackend, qwen_dir: Path) -> None:
    assert (qwen.name, qwen.model, qwen.family_key) == ("mlx", str(qwen_dir), "qwen3_asr")
    assert qwen.can_translate is False and qwen.can_time_words is False and qwen.segments_audio is False
    assert qwen.languages is not None and {"en", "zh", "yue", "ja", "de"} <= qwen.languages


def test_transcribes_real_clip(qwen: MLXBackend, speech: np.ndarray) -> None:
    seen: list[Segment] = []
    result = qwen.transcribe(speech, Options(), seen.append)
    assert isinstance(result, Transcription)
    assert isinstance(result.text, str) and result.text
    assert "<|" not in result.text and "asr_text" not in result.text and "\ufffd" not in result.text
    assert result.duration == pytest.approx(len(speech) / 16000)
    assert result.language == "en"  # mlx-audio reports English when the output names no language
    assert list(result.segments) == seen and len(seen) == 1
    assert (seen[0].start, seen[0].end) == (0.0, pytest.approx(result.duration))
    assert seen[0].text == result.text and seen[0].extra == {"language": "en"}


def test_language_codes_become_qwen3_asr_names(qwen: MLXBackend) -> None:
    assert [qwen.language_value(c) for c in ("en", "zh", "yue", "de", "ja", "tl")] == \
        ["English", "Chinese", "Cantonese", "German", "Japanese", "Filipino"]
    assert qwen.language_value(None) is None


def test_requested_language_prompt_and_limit_reach_generate(qwen: MLXBackend, spy_qwen: Spy,
                                                            speech: np.ndarray) -> None:
    result = qwen.transcribe(speech[:3 * 16000], Options(language="zh", prompt="Ask not."), lambda s: None)
    kwargs, output = spy_qwen.calls[-1]
    assert kwargs["language"] == "Chinese" and kwargs["system_prompt"] == "Ask not."
    assert kwargs["max_tokens"] == token_limit(3.0)
    assert isinstance(output.text, str) and output.segments[0]["language"] == "Chinese"
    assert result.language == "zh" and result.segments[0].extra == {"language": "zh"}


def test_generation_limit_stops_a_model_that_never_ends(qwen: MLXBackend, spy_qwen: Spy,
                                                        speech: np.ndarray) -> None:
    limit = token_limit(len(speech) / 16000)
    assert limit == 142  # 11 s * 10 tokens/s + 32
    qwen.transcribe(speech, Options(language="en"), lambda s: None)
    kwargs, output = spy_qwen.calls[-1]
    assert kwargs["max_tokens"] == limit
    assert output.generation_tokens == limit  # it never emitted its end token: the limit stopped it
    short = qwen.transcribe(speech[:16000], Options(language="en"), lambda s: None)
    assert spy_qwen.calls[-1][1].generation_tokens == token_limit(1.0) == 42
    assert short.duration == 1.0


def test_unsupported_language_is_a_400_listing_codes(qwen: MLXBackend, speech: np.ndarray) -> None:
    with pytest.raises(APIError) as info:
        qwen.transcribe(speech, Options(language="sw"), lambda s: None)
    error = info.value
    assert (error.status, error.param, error.code) == (400, "language", "unsupported_language")
    assert "'sw'" in error.message and "en, es" in error.message


def test_sensevoice_loads_by_switching_local_model(sensevoice: MLXBackend, sensevoice_dir: Path,
                                                  speech: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sensevoice.family_key == "sensevoice"
    assert sensevoice.languages == frozenset({"zh", "en", "yue", "ja", "ko"})
    assert sensevoice.language_value("en") == "en" and sensevoice.language_value(None) == "auto"
    spy = Spy(sensevoice._model)
    monkeypatch.setattr(sensevoice._model, "generate", spy)
    seen: list[Segment] = []
    result = sensevoice.transcribe(speech, Options(language="en", prompt="ignored"), seen.append)
    assert spy.calls[-1][0] == {"language": "en", "use_itn": True, "verbose": False}  # no max_tokens, prompt
    assert isinstance(result.text, str) and result.text and "<" not in result.text
    assert result.language == "en" and result.duration == pytest.approx(11.0, abs=0.1)
    assert len(seen) == 1 and seen[0].end == pytest.approx(result.duration)
    assert {"emotion", "event"} <= set(seen[0].extra)
    with pytest.raises(APIError):
        sensevoice.transcribe(speech, Options(language="de"), lambda s: None)


def test_hub_id_loads_from_the_hf_cache_offline(qwen_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(qwen_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    backend = _backend(HUB_ID)
    assert backend.family_key == "qwen3_asr"  # from the cached config.json, before loading
    caplog.set_level("INFO", logger="rapl.backends.mlx")
    backend.load()
    assert "cached copy" in caplog.text and "warmed up" in caplog.text
    result = backend.transcribe(np.zeros(16000, np.float32), Options(language="en"), lambda s: None)
    assert isinstance(result.text, str) and result.language == "en"


def test_timed_segments_and_words_come_from_the_output() -> None:
    output = {"text": "ask not <|en|>", "language": "en", "segments": [
        {"start": 0.0, "end": 1.5, "text": " ask <|en|>", "tokens": [1, 2], "avg_logprob": -0.2,
         "words": [{"word": " ask", "start": 0.1, "end": 0.6, "probability": 0.9}]},
        {"start": 1.5, "end": 3.0, "text": " not", "speaker": "A"}]}
    first, second = _segments(output, 3.0)
    assert (first.start, first.end, first.text, first.tokens, first.avg_logprob) == (0.0, 1.5, "ask", (1, 2), -0.2)
    assert first.words[0].word == " ask" and first.words[0].probability == 0.9
    assert second.text == "not" and second.extra == {"speaker": "A"}
    untimed = _segments({"text": " hello ", "segments": [{"text": "hello"}]}, 2.0)
    assert [(s.start, s.end, s.text) for s in untimed] == [(0.0, 2.0, "hello")]
    assert _segments({"text": "", "segments": []}, 2.0) == ()


def test_gpu_device_without_a_gpu_is_a_settings_error(qwen_dir: Path) -> None:
    import mlx.core as mx

    from rapl.backends.mlx import _device

    if mx.is_available(mx.gpu):
        pytest.skip("this machine has an MLX GPU")
    assert _device("auto", mx) == mx.Device(mx.cpu, 0)
    with pytest.raises(SettingsError, match="DEVICE=cuda"):
        _device("cuda", mx)
