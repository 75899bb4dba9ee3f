"""The mlx backend on tiny random-weight models loaded by mlx-audio's real loader, offline.

The tiny Qwen3-ASR (tests/tiny_mlx.py) never emits its end token and writes one character per
token, so the length of its text is the number of tokens it generated.  The last part serves
both tiny models through a real waitress server (BACKEND=mlx) to the official openai SDK, with
every connection beyond loopback blocked (as in every test here).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from rapl.errors import RaplError, status_of
from rapl.settings import Settings, SettingsError
from rapl.transcript.transcription import Options, Segment, Transcription
from support.models import GenerateSpy, mlx_missing
from support.server import Server
from support.speech import wav_bytes

MLX_MISSING = mlx_missing()
if MLX_MISSING:
    pytest.skip(MLX_MISSING, allow_module_level=True)

from rapl.backends.mlx import MLXBackend, _segments, token_limit  # noqa: E402

# mlx-audio's real loading and inference on tiny models; no connection beyond loopback, in any test here
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("offline")]

ROOT = Path(__file__).resolve().parents[2]
HUB_ID = "rapl-test/tiny-qwen3-asr"


def _backend(model: str | Path) -> MLXBackend:
    return MLXBackend(Settings.load({"BACKEND": "mlx", "LOCAL_MODEL": str(model), "DEVICE": "cpu"},
                                    environ={}))


def test_tiny_qwen3_asr_loads_through_mlx_audio_offline(tiny_qwen3_asr: Path) -> None:
    from mlx_audio.stt import load

    files = {p.name for p in tiny_qwen3_asr.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
            "model.safetensors"} <= files
    assert json.loads((tiny_qwen3_asr / "config.json").read_text())["model_type"] == "qwen3_asr"
    assert sum(p.stat().st_size for p in tiny_qwen3_asr.iterdir()) < 2_000_000
    model = load(str(tiny_qwen3_asr))
    assert type(model).__module__.startswith("mlx_audio.stt.models.qwen3_asr")
    ids = model._tokenizer.encode("<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>")
    assert model.config.audio_token_id in ids and model.config.audio_start_token_id in ids


def test_constructor_is_cheap_and_does_not_import_mlx(tiny_qwen3_asr: Path) -> None:
    code = ("import sys; from rapl.settings import Settings; from rapl.backends import create; "
            f"b = create(Settings.load({{'BACKEND': 'mlx', 'LOCAL_MODEL': {str(tiny_qwen3_asr)!r}}}, environ={{}})); "
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


def run(backend: MLXBackend, audio: np.ndarray, options: Options) -> tuple[Transcription, list[Segment]]:
    """The backend's segments for ``audio``, and them as one Transcription."""
    segments = list(backend.transcribe(audio, options))
    return Transcription.of(segments, len(audio) / 16000, options.task, options.language), segments


def test_attributes(mlx_qwen3: MLXBackend, tiny_qwen3_asr: Path) -> None:
    assert (mlx_qwen3.name, mlx_qwen3.model, mlx_qwen3.family_key) == ("mlx", str(tiny_qwen3_asr), "qwen3_asr")
    caps = mlx_qwen3.capabilities
    assert (caps.can_translate, caps.can_time_words, caps.segments_audio) == (False, False, False)
    assert caps.languages is not None and {"en", "zh", "yue", "ja", "de"} <= caps.languages


def test_transcribes_real_clip(mlx_qwen3: MLXBackend, speech_pcm: np.ndarray) -> None:
    result, seen = run(mlx_qwen3, speech_pcm, Options())
    assert isinstance(result, Transcription)
    assert isinstance(result.text, str) and result.text
    assert "<|" not in result.text and "asr_text" not in result.text and "\ufffd" not in result.text
    assert result.duration == pytest.approx(len(speech_pcm) / 16000)
    assert result.language == "en"  # mlx-audio reports English when the output names no language
    assert list(result.segments) == seen and len(seen) == 1
    assert (seen[0].start, seen[0].end) == (0.0, pytest.approx(result.duration))
    assert seen[0].text == result.text and seen[0].extra == {"language": "en"}


def test_language_codes_become_qwen3_asr_names(mlx_qwen3: MLXBackend) -> None:
    assert [mlx_qwen3.language_value(c) for c in ("en", "zh", "yue", "de", "ja", "tl")] == \
        ["English", "Chinese", "Cantonese", "German", "Japanese", "Filipino"]
    assert mlx_qwen3.language_value(None) is None


def test_requested_language_prompt_and_limit_reach_generate(mlx_qwen3: MLXBackend, mlx_qwen3_spy: GenerateSpy,
                                                            speech_pcm: np.ndarray) -> None:
    result = run(mlx_qwen3, speech_pcm[:3 * 16000], Options(language="zh", prompt="Ask not."))[0]
    kwargs, output = mlx_qwen3_spy.calls[-1]
    assert kwargs["language"] == "Chinese" and kwargs["system_prompt"] == "Ask not."
    assert kwargs["max_tokens"] == token_limit(3.0)
    assert isinstance(output.text, str) and output.segments[0]["language"] == "Chinese"
    assert result.language == "zh" and result.segments[0].extra == {"language": "zh"}


def test_generation_limit_stops_a_model_that_never_ends(mlx_qwen3: MLXBackend, mlx_qwen3_spy: GenerateSpy,
                                                        speech_pcm: np.ndarray) -> None:
    limit = token_limit(len(speech_pcm) / 16000)
    assert limit == 142  # 11 s * 10 tokens/s + 32
    run(mlx_qwen3, speech_pcm, Options(language="en"))[0]
    kwargs, output = mlx_qwen3_spy.calls[-1]
    assert kwargs["max_tokens"] == limit
    assert output.generation_tokens == limit  # it never emitted its end token: the limit stopped it
    short = run(mlx_qwen3, speech_pcm[:16000], Options(language="en"))[0]
    assert mlx_qwen3_spy.calls[-1][1].generation_tokens == token_limit(1.0) == 42
    assert short.duration == 1.0


def test_unsupported_language_is_a_400_listing_codes(mlx_qwen3: MLXBackend, speech_pcm: np.ndarray) -> None:
    with pytest.raises(RaplError) as info:
        run(mlx_qwen3, speech_pcm, Options(language="sw"))[0]
    error = info.value
    assert (status_of(error), error.param, error.code) == (400, "language", "unsupported_language")
    assert "'sw'" in error.message and "en, es" in error.message


def test_sensevoice_loads_by_switching_local_model(mlx_sensevoice: MLXBackend, tiny_mlx_sensevoice: Path,
                                                  speech_pcm: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    assert mlx_sensevoice.family_key == "sensevoice"
    assert mlx_sensevoice.capabilities.languages == frozenset({"zh", "en", "yue", "ja", "ko"})
    assert mlx_sensevoice.language_value("en") == "en" and mlx_sensevoice.language_value(None) == "auto"
    spy = GenerateSpy.attach(mlx_sensevoice._model, monkeypatch)
    result, seen = run(mlx_sensevoice, speech_pcm, Options(language="en", prompt="ignored"))
    assert spy.calls[-1][0] == {"language": "en", "use_itn": True, "verbose": False}  # no max_tokens, prompt
    assert isinstance(result.text, str) and result.text and "<" not in result.text
    assert result.language == "en" and result.duration == pytest.approx(11.0, abs=0.1)
    assert len(seen) == 1 and seen[0].end == pytest.approx(result.duration)
    assert {"emotion", "events"} <= set(seen[0].extra) and isinstance(seen[0].extra["events"], list)
    with pytest.raises(RaplError):
        run(mlx_sensevoice, speech_pcm, Options(language="de"))[0]


def test_hub_id_loads_from_the_hf_cache_offline(tiny_qwen3_asr: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(tiny_qwen3_asr, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    backend = _backend(HUB_ID)
    assert backend.family_key == "qwen3_asr"  # from the cached config.json, before loading
    caplog.set_level("INFO", logger="rapl.backends.mlx")
    assert backend.load().languages  # load() returns what the model can do
    assert "cached copy" in caplog.text and "warmed up" in caplog.text
    result = run(backend, np.zeros(16000, np.float32), Options(language="en"))[0]
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


def test_gpu_device_without_a_gpu_is_a_settings_error(tiny_qwen3_asr: Path) -> None:
    import mlx.core as mx

    from rapl.backends.mlx import _device

    if mx.is_available(mx.gpu):
        pytest.skip("this machine has an MLX GPU")
    assert _device("auto", mx) == mx.Device(mx.cpu, 0)
    with pytest.raises(SettingsError, match="DEVICE=cuda"):
        _device("cuda", mx)


# -- through the real server and the openai SDK (BACKEND=mlx) ---------------------------------

TINY = {"qwen3": "tiny_qwen3_asr", "sensevoice": "tiny_mlx_sensevoice"}


def noise(seconds: float) -> bytes:
    """A 16 kHz mono WAV of ``seconds`` of quiet noise (the tiny models answer anything)."""
    return wav_bytes(np.random.default_rng(1).normal(0.0, 0.05, int(seconds * 16000)).astype(np.float32))


CLIP = noise(2.0)


def mlx_server(offline_server: Callable[..., Server], request: pytest.FixtureRequest, model: str,
               **settings: str) -> Server:
    """The module's server (BACKEND=mlx, CPU) for the tiny ``model`` ("qwen3" or "sensevoice")."""
    return offline_server(BACKEND="mlx", LOCAL_MODEL=str(request.getfixturevalue(TINY[model])), **settings)


def transcribe(server: Server, clip: bytes = CLIP, **kwargs: Any) -> Any:
    """POST /v1/audio/transcriptions through the official SDK."""
    return server.sdk.audio.transcriptions.create(model="gpt-4o-transcribe", file=("clip.wav", clip), **kwargs)


@pytest.mark.parametrize("model", ["qwen3", "sensevoice"])
def test_server_loads_by_local_model_alone(offline_server, request, offline, model: str) -> None:
    server = mlx_server(offline_server, request, model)
    path = str(request.getfixturevalue(TINY[model]))
    with server.http() as http:
        health = http.get("/health").json()
    assert (health["status"], health["backend"], health["model"]) == ("ready", "mlx", Path(path).name)
    assert [m.id for m in server.sdk.models.list()][0] == Path(path).name
    assert server.worker.backend.family_key == {"qwen3": "qwen3_asr", "sensevoice": "sensevoice"}[model]
    assert offline == []


@pytest.mark.parametrize("model", ["qwen3", "sensevoice"])
def test_server_every_response_format(offline_server, request, offline, model: str) -> None:
    import srt
    import webvtt

    server = mlx_server(offline_server, request, model)
    verbose = transcribe(server, response_format="verbose_json", language="en")
    text = verbose.text
    assert text and "<|" not in text and "asr_text" not in text and "\ufffd" not in text
    assert (verbose.task, verbose.language, verbose.duration, verbose.usage.seconds) == (
        "transcribe", "english", 2.0, 2)
    (segment,) = verbose.segments
    assert (segment.id, segment.start, segment.end, segment.text) == (0, 0.0, 2.0, f" {text}")
    if model == "qwen3":
        assert len(text) == token_limit(2.0) == 52  # one character per token, up to the limit
        assert segment.model_extra == {"language": "en"}
    else:
        extra = segment.model_extra  # SenseVoice's emotion and event, as RAPL extensions
        assert "emotion" in extra and ("event" in extra or "events" in extra), extra
    assert transcribe(server, response_format="json", language="en").text == text
    assert transcribe(server, language="en").text == text  # json is the default
    assert transcribe(server, response_format="text", language="en").strip() == text
    (subtitle,) = srt.parse(transcribe(server, response_format="srt", language="en"))
    assert (subtitle.index, subtitle.content, subtitle.end.total_seconds()) == (1, text, 2.0)
    (caption,) = webvtt.from_string(transcribe(server, response_format="vtt", language="en"))
    assert (caption.start, caption.end, caption.text) == ("00:00:00.000", "00:00:02.000", text)
    assert offline == []


@pytest.mark.parametrize(("model", "asked", "sent", "reported"), [
    ("qwen3", "en", "English", "english"),
    ("qwen3", "yue", "Cantonese", "cantonese"),
    ("qwen3", "German", "German", "german"),  # a language name is accepted too
    ("qwen3", "pt-BR", "Portuguese", "portuguese"),
    ("qwen3", "tl", "Filipino", "tagalog"),  # Qwen3-ASR's spelling in, OpenAI's name out
    ("sensevoice", "en", "en", "english"),
    ("sensevoice", "ko", "ko", "korean"),
])
def test_server_maps_the_language(offline_server, request, monkeypatch, offline, model: str, asked: str,
                                  sent: str, reported: str) -> None:
    server = mlx_server(offline_server, request, model)
    spy = GenerateSpy.attach(server.worker.backend._model, monkeypatch)
    result = transcribe(server, response_format="verbose_json", language=asked)
    assert spy.calls[-1][0]["language"] == sent
    assert result.language == reported
    assert offline == []


@pytest.mark.parametrize(("model", "code", "listed"), [
    ("qwen3", "sw", "ar, cs, da, de, el, en, es"), ("qwen3", "klingon", "yue, zh"),
    ("sensevoice", "de", "en, ja, ko, yue, zh"), ("sensevoice", "fr", "en, ja, ko, yue, zh"),
])
def test_server_rejects_an_unsupported_language(offline_server, request, offline, model: str, code: str,
                                                listed: str) -> None:
    server = mlx_server(offline_server, request, model)
    with pytest.raises(openai.BadRequestError) as info:
        transcribe(server, language=code)
    error = info.value.body
    assert info.value.status_code == 400
    assert (error["param"], error["code"]) == ("language", "unsupported_language")
    assert repr(code) in error["message"] and listed in error["message"]
    assert transcribe(server).text  # and it goes on serving
    assert offline == []


@pytest.mark.parametrize("seconds", [1.0, 3.0, 11.0])
def test_server_generation_limit(offline_server, request, monkeypatch, offline, seconds: float) -> None:
    """The tiny Qwen3-ASR never ends: the answer still comes, as long as the limit allows."""
    server = mlx_server(offline_server, request, "qwen3")
    spy = GenerateSpy.attach(server.worker.backend._model, monkeypatch)
    result = transcribe(server, noise(seconds), response_format="verbose_json", language="en")
    limit = token_limit(seconds)
    assert limit == {1.0: 42, 3.0: 62, 11.0: 142}[seconds]
    (segment,) = result.segments
    assert len(result.text) == len(segment.text.lstrip()) == limit  # one character per token: the limit stopped it
    kwargs, output = spy.calls[-1]
    assert kwargs["max_tokens"] == limit and output.generation_tokens == limit
    assert offline == []


def test_server_generation_limit_is_per_chunk(offline_server, request, monkeypatch, offline) -> None:
    """35 s without VAD is a 30 s chunk and a 5 s one, each with its own limit."""
    server = mlx_server(offline_server, request, "qwen3")
    spy = GenerateSpy.attach(server.worker.backend._model, monkeypatch)
    result = transcribe(server, noise(35.0), response_format="verbose_json", language="en")
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 30.0), (30.0, 35.0)]
    assert [len(s.text.lstrip()) for s in result.segments] == [token_limit(30.0), token_limit(5.0)] == [332, 82]
    assert [c[0]["max_tokens"] for c in spy.calls] == [332, 82]
    assert offline == []


def test_server_streams(offline_server, request, offline) -> None:
    server = mlx_server(offline_server, request, "qwen3")
    *deltas, done = transcribe(server, stream=True, language="en")
    assert deltas and all(e.type == "transcript.text.delta" for e in deltas)
    assert done.type == "transcript.text.done" and "".join(e.delta for e in deltas) == done.text
    assert len(done.text) == token_limit(2.0)
    assert offline == []


def test_server_cannot_translate(offline_server, request) -> None:
    server = mlx_server(offline_server, request, "qwen3")
    with pytest.raises(openai.BadRequestError) as info:
        server.sdk.audio.translations.create(model="whisper-1", file=("clip.wav", CLIP))
    assert info.value.body["code"] == "translation_unsupported"


def test_qwen3_asr_is_asked_the_language_of_a_stretch(mlx_qwen3: MLXBackend, mlx_qwen3_spy: GenerateSpy,
                                                      speech_pcm: np.ndarray) -> None:
    """Left to detect, Qwen3-ASR names the language first: a stretch is decoded for a few tokens only."""
    from rapl.backends.mlx import LANGUAGE_TOKENS

    assert mlx_qwen3.capabilities.tells_languages
    code, probability = mlx_qwen3.language_of(speech_pcm[:2 * 16000])
    kwargs, _ = mlx_qwen3_spy.calls[-1]
    assert kwargs["max_tokens"] == LANGUAGE_TOKENS and "language" not in kwargs
    assert probability in (0.0, 1.0) and (probability == 0.0 or code in mlx_qwen3.capabilities.languages)
    assert mlx_qwen3.language_of(speech_pcm[:2 * 16000], candidates=("xx",))[1] == 0.0  # not among those asked


def test_families_that_never_name_a_language_are_not_asked(mlx_sensevoice: MLXBackend,
                                                           speech_pcm: np.ndarray) -> None:
    assert not mlx_sensevoice.capabilities.tells_languages
    assert mlx_sensevoice.language_of(speech_pcm[:16000]) is None
