"""The FunASR backend on tiny SenseVoiceSmall and Paraformer models, through FunASR's real
AutoModel, with the network blocked.

The tiny models (tests/tiny_funasr.py) ignore the sound and answer a known text: SenseVoice
says "<|lang|><|NEUTRAL|><|Speech|><|withitn or woitn|> hello world hello ..." for the
requested language (auto answers en), switching word every 0.6 s; the Paraformer says
"hello"/"world" about four times a second.

The last part serves them through a real waitress server (BACKEND=sensevoice) to the official
openai SDK, with every connection beyond loopback blocked while they load and answer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import openai
import pytest

from rapl.backends import Backend, create
from rapl.backends.funasr_results import timed_words
from rapl.backends.sensevoice import (
    FAMILIES,
    PUNC_MODEL,
    SenseVoiceBackend,
    hotwords_from_prompt,
    pick_device,
    read_model_class,
)
from rapl.core.pipeline import check_options
from rapl.errors import RaplError, status_of
from rapl.settings import Settings
from rapl.transcript.languages import NAMES
from rapl.transcript.richtext import EMOTION_EMOJI, EVENT_EMOJI
from rapl.transcript.transcription import Options, Segment, Transcription
from support.server import Server
from support.speech import wav_bytes

pytestmark = pytest.mark.slow  # FunASR's real AutoModel on tiny models

ROOT = Path(__file__).resolve().parents[2]
SENSEVOICE_LANGUAGES = ("zh", "en", "yue", "ja", "ko")
WORDS = re.compile(r"^(hello|world)( (hello|world))*$")
TWO_SECONDS = np.random.default_rng(1).normal(0.0, 0.05, 32000).astype(np.float32)


# -- helpers --------------------------------------------------------------------------------

def fake_output(monkeypatch: pytest.MonkeyPatch, instance: SenseVoiceBackend, text: str) -> None:
    """Make the model answer ``text`` (SenseVoice's raw output) without running it."""
    monkeypatch.setattr(instance._auto, "generate",
                        lambda input, **kwargs: [{"key": "rand_key_x", "text": text}])


def run(instance: SenseVoiceBackend, audio: np.ndarray = TWO_SECONDS,
        **options: Any) -> tuple[Any, list[Segment]]:
    """What the server does with one chunk: check the request against the model, then transcribe."""
    wanted = Options(**options)
    check_options(instance.capabilities, wanted, f"the sensevoice model {instance.model}")
    done = list(instance.transcribe(audio, wanted))
    return Transcription.of(done, np.asarray(audio).size / 16000, wanted.task, wanted.language), done


# -- construction and loading ------------------------------------------------------------------

def test_constructor_imports_neither_funasr_nor_torch(tiny_sensevoice: Path):
    code = (
        "import sys\n"
        "from rapl.settings import Settings\n"
        "from rapl.backends import create\n"
        f"b = create(Settings.load({{'LOCAL_MODEL': {str(tiny_sensevoice)!r}}}, environ={{}}))\n"
        "heavy = sorted(m for m in ('funasr', 'torch', 'modelscope') if m in sys.modules)\n"
        "print(heavy, b.name, b.model_class, sorted(b.capabilities.languages), b.capabilities.can_time_words)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    assert out == "[] sensevoice SenseVoiceSmall ['en', 'ja', 'ko', 'yue', 'zh'] True"


def test_registry_builds_this_backend():
    settings = Settings.load({"BACKEND": "sensevoice"}, environ={})
    instance = create(settings)
    assert isinstance(instance, SenseVoiceBackend)
    assert (instance.name, instance.model, instance.capabilities.can_translate) == (
        "sensevoice", "iic/SenseVoiceSmall", False)
    assert instance.capabilities.segments_audio is False  # one segment per chunk
    for attribute in Backend.__annotations__:
        assert hasattr(instance, attribute), attribute


def test_tiny_sensevoice_is_the_real_layout(tiny_sensevoice: Path):
    files = {p.name: p.stat().st_size for p in tiny_sensevoice.iterdir()}
    assert set(files) == {"config.yaml", "configuration.json", "model.pt", "am.mvn",
                          "chn_jpn_yue_eng_ko_spectok.bpe.model"}
    assert sum(files.values()) < 2_000_000
    metas = json.loads((tiny_sensevoice / "configuration.json").read_text())["file_path_metas"]
    assert metas["tokenizer_conf"]["bpemodel"] == "chn_jpn_yue_eng_ko_spectok.bpe.model"
    assert read_model_class(tiny_sensevoice) == "SenseVoiceSmall"


def test_loads_offline_through_automodel(funasr_backend, offline, tiny_sensevoice: Path):
    from funasr import AutoModel

    instance = funasr_backend()
    assert isinstance(instance._auto, AutoModel)
    assert instance.model == str(tiny_sensevoice)
    assert instance.model_class == "SenseVoiceSmall"
    assert instance.capabilities.languages == frozenset(SENSEVOICE_LANGUAGES)
    assert instance.capabilities.can_time_words and not instance.capabilities.can_translate
    assert offline == []


def test_threads_setting_holds_after_generate(funasr_backend):
    import torch

    before = torch.get_num_threads()
    try:
        instance = funasr_backend()
        run(instance)  # AutoModel.generate resets torch's threads to its own ncpu
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# -- transcription -------------------------------------------------------------------------------

def test_plain_text_has_no_tags(funasr_backend):
    result, done = run(funasr_backend())
    assert result.text == "hello world hello world"
    assert "<|" not in result.text
    assert result.language == "en" and result.duration == 2.0
    (segment,) = result.segments
    assert done == [segment]
    assert (segment.start, segment.end, segment.text) == (0.0, 2.0, result.text)
    assert segment.extra == {"emotion": "neutral", "events": ["speech"]}
    assert segment.words == ()


def test_tags_mode_keeps_the_raw_output(funasr_backend):
    result, _ = run(funasr_backend(RICH_TEXT="tags"))
    assert result.text == "<|en|><|NEUTRAL|><|Speech|><|withitn|> hello world hello world"
    assert result.segments[0].extra == {"emotion": "neutral", "events": ["speech"]}


def test_emoji_mode(funasr_backend, monkeypatch):
    instance = funasr_backend(RICH_TEXT="emoji")
    assert run(instance)[0].text == "hello world hello world"  # neutral speech: no emoji
    fake_output(monkeypatch, instance, "<|en|><|HAPPY|><|Laughter|><|woitn|>ha ha that is funny")
    result, _ = run(instance)
    assert result.text == "😀ha ha that is funny😊"
    assert result.segments[0].extra == {"emotion": "happy", "events": ["laughter"]}


def test_each_mode_on_a_rich_output(funasr_backend, monkeypatch):
    raw = ("<|zh|><|ANGRY|><|Applause|><|woitn|>我起飞前没有扫二维码 "
           "<|en|><|NEUTRAL|><|Speech|><|woitn|>okay")
    expected = {"plain": "我起飞前没有扫二维码 okay", "emoji": "👏我起飞前没有扫二维码😡 okay", "tags": raw}
    for mode, text in expected.items():
        instance = funasr_backend(RICH_TEXT=mode)
        fake_output(monkeypatch, instance, raw)
        result, _ = run(instance)
        assert result.text == text, mode
        assert result.language == "zh"
        assert result.segments[0].extra == {"emotion": "angry", "events": ["applause", "speech"]}


@pytest.mark.parametrize(("itn", "tag"), [("true", "<|withitn|>"), ("false", "<|woitn|>")])
def test_use_itn_reaches_the_model(funasr_backend, funasr_spy, itn, tag):
    instance = funasr_backend(RICH_TEXT="tags", USE_ITN=itn)
    calls = funasr_spy(instance)
    result, _ = run(instance)
    assert calls[-1]["use_itn"] is (itn == "true")
    assert tag in result.text


@pytest.mark.parametrize("code", SENSEVOICE_LANGUAGES)
def test_each_language_code_is_accepted(funasr_backend, funasr_spy, code):
    instance = funasr_backend(RICH_TEXT="tags")
    calls = funasr_spy(instance)
    result, _ = run(instance, language=code)
    assert calls[-1]["language"] == code
    assert result.language == code
    assert result.text.startswith(f"<|{code}|><|NEUTRAL|>")


def test_auto_language_is_detected(funasr_backend, funasr_spy):
    instance = funasr_backend()
    calls = funasr_spy(instance)
    result, _ = run(instance, language=None)
    assert calls[-1]["language"] == "auto"
    assert result.language == "en"


@pytest.mark.parametrize("code", ["fr", "de", "klingon"])
def test_unknown_language_is_400(funasr_backend, code):
    with pytest.raises(RaplError) as caught:
        run(funasr_backend(), language=code)
    error = caught.value
    assert (status_of(error), error.param, error.code) == (400, "language", "unsupported_language")
    assert "en, ja, ko, yue, zh" in error.message and repr(code) in error.message


def test_word_timestamps(funasr_backend, funasr_spy):
    instance = funasr_backend()
    calls = funasr_spy(instance)
    result, _ = run(instance, word_timestamps=True)
    assert calls[-1]["output_timestamp"] is True
    words = result.words
    assert [w.word for w in words] == ["hello", "world", "hello", "world"]
    assert all(0.0 <= w.start < w.end <= 2.0 for w in words)
    assert all(a.end <= b.start for a, b in zip(words, words[1:], strict=False))
    assert words[1].start == pytest.approx(0.27, abs=0.07)  # the second word starts near 0.3 s


def test_no_timestamps_unless_asked(funasr_backend, funasr_spy):
    instance = funasr_backend()
    calls = funasr_spy(instance)
    result, _ = run(instance)
    assert "output_timestamp" not in calls[-1] and result.words == ()


def test_failed_word_timing_keeps_the_text(funasr_backend, monkeypatch, caplog):
    instance = funasr_backend()
    real = instance._auto.generate

    def generate(input: Any, **kwargs: Any) -> Any:
        if kwargs.get("output_timestamp"):  # FunASR's known IndexError on some outputs
            raise IndexError("list index out of range")
        return real(input=input, **kwargs)

    monkeypatch.setattr(instance._auto, "generate", generate)
    with caplog.at_level(logging.WARNING, logger="rapl.backends.sensevoice"):
        result, _ = run(instance, word_timestamps=True)
    assert result.text == "hello world hello world" and result.words == ()
    assert "failed to time words" in caplog.text


def test_prompt_is_not_passed_to_sensevoice(funasr_backend, funasr_spy):
    instance = funasr_backend()
    calls = funasr_spy(instance)
    run(instance, prompt="Kubernetes gRPC")
    assert set(calls[-1]) == {"language", "use_itn"}


@pytest.mark.parametrize(("mode", "text"), [("plain", ""), ("emoji", "🎼"),
                                            ("tags", "<|nospeech|><|EMO_UNKNOWN|><|BGM|><|woitn|>")])
def test_event_only_output(funasr_backend, monkeypatch, mode, text):
    instance = funasr_backend(RICH_TEXT=mode)
    fake_output(monkeypatch, instance, "<|nospeech|><|EMO_UNKNOWN|><|BGM|><|woitn|>")
    result, done = run(instance)
    assert result.text == text and result.language is None
    if text:
        (segment,) = done
        assert segment.extra == {"emotion": "unknown", "events": ["bgm"]}
        assert segment.no_speech_prob == 1.0
    else:
        assert done == [] and result.segments == ()


def test_requested_language_is_kept_when_nothing_is_said(funasr_backend, monkeypatch):
    instance = funasr_backend()
    fake_output(monkeypatch, instance, "<|nospeech|><|EMO_UNKNOWN|><|Event_UNK|><|woitn|>")
    assert run(instance, language="ja")[0].language == "ja"


def test_empty_and_tiny_audio(funasr_backend, funasr_spy):
    instance = funasr_backend()
    calls = funasr_spy(instance)
    result, done = run(instance, np.zeros(0, np.float32))
    assert (result.text, result.duration, result.segments, done, calls) == ("", 0.0, (), [], [])
    result, _ = run(instance, np.zeros(800, np.float32))  # 50 ms
    assert result.duration == 0.05


def test_float64_and_2d_audio_are_accepted(funasr_backend):
    result, _ = run(funasr_backend(), TWO_SECONDS.astype(np.float64)[None, :])
    assert result.text == "hello world hello world"


def test_generation_is_fast(funasr_backend):
    import time

    instance = funasr_backend()
    started = time.perf_counter()
    run(instance, np.zeros(16000 * 10, np.float32))
    assert time.perf_counter() - started < 3.0


# -- Paraformer through the same class ---------------------------------------------------------

def test_paraformer_loads_and_serves(funasr_backend, funasr_spy, tiny_paraformer: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="rapl.backends.sensevoice"):
        instance = funasr_backend(tiny_paraformer)
    assert instance.model_class == "Paraformer"
    assert instance.capabilities.languages == frozenset({"zh", "en"}) and instance.capabilities.can_time_words
    if not _cached(PUNC_MODEL):
        assert "writes no punctuation" in caplog.text
    calls = funasr_spy(instance)
    result, done = run(instance, word_timestamps=True)
    assert WORDS.match(result.text), result.text
    assert result.language == "en"  # told from the script
    assert calls[-1] == {"output_timestamp": True}  # no language, ITN or hotword arguments
    (segment,) = done
    assert segment.extra == {}
    words = segment.words
    assert " ".join(w.word for w in words) == result.text
    assert all(0.0 <= w.start < w.end <= 2.0 for w in words)
    assert all(a.start < b.start for a, b in zip(words, words[1:], strict=False))


def test_paraformer_accepts_zh_and_en_only(funasr_backend, tiny_paraformer: Path, funasr_spy):
    instance = funasr_backend(tiny_paraformer)
    calls = funasr_spy(instance)
    assert run(instance, language="zh")[0].language == "zh"
    assert "language" not in calls[-1]
    with pytest.raises(RaplError, match="en, zh"):
        run(instance, language="ja")


def test_paraformer_chinese_is_not_spaced_out(funasr_backend, tiny_paraformer: Path, monkeypatch):
    instance = funasr_backend(tiny_paraformer)
    monkeypatch.setattr(instance._auto, "generate", lambda input, **kwargs: [
        {"key": "k", "text": "你 好 hello world", "timestamp": [[0, 100], [100, 200], [200, 400], [400, 600]]}])
    result, _ = run(instance, word_timestamps=True)
    assert result.text == "你好 hello world" and result.language == "zh"
    assert [(w.word, w.end) for w in result.words] == [("你", 0.1), ("好", 0.2), ("hello", 0.4),
                                                       ("world", 0.6)]


def test_paraformer_very_short_audio(funasr_backend, tiny_paraformer: Path):
    result, done = run(funasr_backend(tiny_paraformer), np.zeros(1600, np.float32))
    assert result.text == "" and done == []


# -- the table and helpers -------------------------------------------------------------------------

def _family_backend(model_class: str, **overrides: str) -> SenseVoiceBackend:
    instance = SenseVoiceBackend(Settings.load({"LOCAL_MODEL": "/nonexistent", **overrides}, environ={}))
    instance._set_family(model_class)
    return instance


def test_hotwords_go_where_each_family_takes_them():
    prompt = "阿里巴巴, 达摩院 and FunASR"
    seaco = _family_backend("SeacoParaformer")
    assert seaco.generate_kwargs(Options(prompt=prompt)) == {"hotword": "阿里巴巴 达摩院 and FunASR"}
    nano = _family_backend("FunASRNano", USE_ITN="false")
    assert nano.generate_kwargs(Options(prompt=prompt, language="zh")) == {
        "language": "中文", "itn": False, "hotwords": ["阿里巴巴", "达摩院", "and", "FunASR"]}
    assert nano.generate_kwargs(Options()) == {"itn": False}
    assert _family_backend("SenseVoiceSmall").generate_kwargs(Options(prompt=prompt)) == {
        "language": "auto", "use_itn": True}


def test_unknown_class_gets_the_default_family(caplog):
    with caplog.at_level(logging.WARNING, logger="rapl.backends.sensevoice"):
        instance = _family_backend("SomeNewASR")
    assert "SomeNewASR is not in RAPL's table" in caplog.text
    assert instance.capabilities.languages is None and not instance.capabilities.can_time_words
    check_options(instance.capabilities, Options(language="fr"), "it")  # any code: the model is not told
    assert instance.generate_kwargs(Options(language="fr", prompt="x")) == {}


def test_every_family_is_consistent():
    for name, family in FAMILIES.items():
        if family.auto_language is not None:
            assert family.languages, name
        assert not family.hotwords_as_list or family.hotword_arg, name


def test_hotwords_never_name_a_url_or_file():
    prompt = "Kubernetes, gRPC https://example.com/hot.txt /etc/passwd words.txt HTTP://x gRPC"
    assert hotwords_from_prompt(prompt) == ["Kubernetes", "gRPC"]
    assert hotwords_from_prompt(" ".join(f"w{i}" for i in range(80)))[-1] == "w49"
    assert hotwords_from_prompt(None) == hotwords_from_prompt("") == []


def _torch(cuda: bool, mps: bool) -> Any:
    return SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: cuda),
                           backends=SimpleNamespace(mps=SimpleNamespace(is_available=lambda: mps)))


@pytest.mark.parametrize(("setting", "cuda", "mps", "device"), [
    ("auto", True, True, "cuda"), ("auto", False, True, "mps"), ("auto", False, False, "cpu"),
    ("cpu", True, True, "cpu"), ("cuda:1", True, False, "cuda:1"), ("mps", False, True, "mps"),
])
def test_pick_device(setting, cuda, mps, device):
    assert pick_device(setting, _torch(cuda, mps)) == device


def test_timed_words_shapes():
    # SenseVoice: words beside their times (the first keeps SentencePiece's "▁").
    sense = {"text": "x", "timestamp": [[0, 270], [270, 870]], "words": ["▁hello", "world"]}
    assert [(w.word, w.start, w.end) for w in timed_words(sense)] == [("hello", 0.0, 0.27),
                                                                       ("world", 0.27, 0.87)]
    # Paraformer: one time per Chinese character or English word of the text.
    para = {"text": "你好 hello", "timestamp": [[100, 200], [200, 300], [300, 600]]}
    assert [w.word for w in timed_words(para)] == ["你", "好", "hello"]
    assert timed_words({"text": "a b", "timestamp": [[0, 1]]}) == ()  # mismatch: no words
    itn = {"text": "x", "timestamp": [[0, 1], [1, 2], [2, 3]], "words": ["▁Hello", ",", "world"]}
    assert [w.word for w in timed_words(itn)] == ["Hello", "world"]  # punctuation is no word
    # Fun-ASR-Nano: token dicts in seconds.
    nano = {"text": "hello world", "timestamps": [
        {"token": "hel", "start_time": 0.0, "end_time": 0.1},
        {"token": "lo", "start_time": 0.1, "end_time": 0.2},
        {"token": " world", "start_time": 0.3, "end_time": 0.5}]}
    assert [(w.word, w.start, w.end) for w in timed_words(nano)] == [("hello", 0.0, 0.2),
                                                                      ("world", 0.3, 0.5)]


def _cached(model_id: str) -> bool:
    from rapl.backends.sensevoice import cached_modelscope

    return cached_modelscope(model_id) is not None


def test_modelscope_id_is_found_in_the_cache_offline(tiny_sensevoice: Path, tmp_path: Path):
    """LOCAL_MODEL=iic/SenseVoiceSmall, cached: resolved to the cached directory, no network.

    (ModelScope reads MODELSCOPE_CACHE once, at import: hence the subprocess.)
    """
    cache = tmp_path / "modelscope"
    cached = cache / "models" / "iic" / "SenseVoiceSmall"  # ModelScope's layout up to 1.37
    shutil.copytree(tiny_sensevoice, cached)
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise OSError('network blocked')\n"
        "socket.socket.connect = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "from rapl.backends.sensevoice import resolve_model\n"
        "print(resolve_model('iic/SenseVoiceSmall'), 'funasr' in sys.modules)\n"
    )
    env = {**os.environ, "MODELSCOPE_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"{cached} False"


# -- through the real server and the openai SDK (BACKEND=sensevoice) --------------------------

CLIP = wav_bytes(TWO_SECONDS)  # the tiny SenseVoice says HELLO for it
HELLO = "hello world hello world"
EMOJI = set(EMOTION_EMOJI.values()) | set(EVENT_EMOJI.values())
TINY_SENSEVOICE = {"neutral": "tiny_sensevoice", "happy": "tiny_sensevoice_happy"}


def sensevoice_server(offline_server: Callable[..., Server], model: Path, **settings: str) -> Server:
    """The module's server for ``model`` and ``settings`` (BACKEND=sensevoice), started offline."""
    return offline_server(BACKEND="sensevoice", LOCAL_MODEL=str(model), **settings)


def transcribe(server: Server, clip: bytes = CLIP, **kwargs: Any) -> Any:
    """POST /v1/audio/transcriptions through the official SDK."""
    return server.sdk.audio.transcriptions.create(model="gpt-4o-transcribe", file=("clip.wav", clip), **kwargs)


def has_emoji(text: str) -> bool:
    return any(ch in EMOJI or unicodedata.category(ch) == "So" for ch in text)


def test_server_loads_the_tiny_model_offline(offline_server, tiny_sensevoice: Path, offline):
    server = sensevoice_server(offline_server, tiny_sensevoice)
    with server.http() as http:
        health = http.get("/health").json()
    assert (health["status"], health["backend"], health["model"]) == ("ready", "sensevoice", tiny_sensevoice.name)
    assert [m.id for m in server.sdk.models.list()][0] == tiny_sensevoice.name
    assert transcribe(server).text == HELLO
    assert server.worker.backend.model_class == "SenseVoiceSmall"
    assert offline == []


@pytest.mark.parametrize(("voice", "mode", "text", "emotion", "events"), [
    ("neutral", "plain", HELLO, "neutral", ["speech"]),
    ("neutral", "emoji", HELLO, "neutral", ["speech"]),  # neutral speech has no emoji
    ("neutral", "tags", f"<|en|><|NEUTRAL|><|Speech|><|withitn|> {HELLO}", "neutral", ["speech"]),
    ("happy", "plain", HELLO, "happy", ["laughter"]),
    ("happy", "emoji", f"😀{HELLO}😊", "happy", ["laughter"]),
    ("happy", "tags", f"<|en|><|HAPPY|><|Laughter|><|withitn|> {HELLO}", "happy", ["laughter"]),
])
def test_server_rich_text_modes(offline_server, request, offline, voice, mode, text, emotion, events):
    model = request.getfixturevalue(TINY_SENSEVOICE[voice])
    server = sensevoice_server(offline_server, model, RICH_TEXT=mode)
    result = transcribe(server, response_format="verbose_json")
    assert result.text == text
    assert ("<|" in result.text) is (mode == "tags")
    assert has_emoji(result.text) is (mode == "emoji" and voice == "happy")
    (segment,) = result.segments
    assert (segment.text, segment.emotion, segment.events) == (f" {text}", emotion, events)  # OpenAI's leading space
    assert transcribe(server, response_format="text").strip() == text
    assert offline == []


@pytest.mark.parametrize(("itn", "tag"), [("true", "<|withitn|>"), ("false", "<|woitn|>")])
def test_server_use_itn(offline_server, tiny_sensevoice: Path, offline, itn, tag):
    tags = transcribe(sensevoice_server(offline_server, tiny_sensevoice, RICH_TEXT="tags", USE_ITN=itn))
    assert tags.text == f"<|en|><|NEUTRAL|><|Speech|>{tag} {HELLO}"
    # The tiny model writes the same words either way: only the tag tells the setting reached it.
    assert transcribe(sensevoice_server(offline_server, tiny_sensevoice, USE_ITN=itn)).text == HELLO
    assert offline == []


@pytest.mark.parametrize("code", SENSEVOICE_LANGUAGES)
def test_server_accepts_each_language(offline_server, tiny_sensevoice: Path, offline, code):
    plain = transcribe(sensevoice_server(offline_server, tiny_sensevoice), language=code,
                       response_format="verbose_json")
    assert (plain.text, plain.language) == (HELLO, NAMES[code])  # "zh" -> "chinese", ...
    tags = transcribe(sensevoice_server(offline_server, tiny_sensevoice, RICH_TEXT="tags"), language=code)
    assert tags.text.startswith(f"<|{code}|><|NEUTRAL|>")  # the model was asked for that language
    assert offline == []


@pytest.mark.parametrize(("asked", "reported"), [(None, "english"), ("Chinese", "chinese"),
                                                 ("zh-CN", "chinese"), ("auto", "english")])
def test_server_detects_or_maps_the_language(offline_server, tiny_sensevoice: Path, asked, reported):
    kwargs = {"language": asked} if asked else {}
    result = transcribe(sensevoice_server(offline_server, tiny_sensevoice), response_format="verbose_json",
                        **kwargs)
    assert result.language == reported


@pytest.mark.parametrize("code", ["fr", "de", "klingon"])
def test_server_rejects_an_unsupported_language(offline_server, tiny_sensevoice: Path, offline, code):
    server = sensevoice_server(offline_server, tiny_sensevoice)
    with pytest.raises(openai.BadRequestError) as info:
        transcribe(server, language=code)
    error = info.value.body
    assert info.value.status_code == 400
    assert (error["param"], error["code"], error["type"]) == ("language", "unsupported_language",
                                                              "invalid_request_error")
    assert "en, ja, ko, yue, zh" in error["message"] and repr(code) in error["message"]
    assert transcribe(server).text == HELLO  # and the server goes on serving
    assert offline == []


def test_server_verbose_json_has_the_rapl_extensions(offline_server, tiny_sensevoice: Path, offline):
    result = transcribe(sensevoice_server(offline_server, tiny_sensevoice), response_format="verbose_json")
    assert (result.task, result.language, result.duration, result.text) == ("transcribe", "english", 2.0, HELLO)
    assert result.usage.seconds == 2
    (segment,) = result.segments
    assert (segment.id, segment.seek, segment.start, segment.end) == (0, 0, 0.0, 2.0)
    assert (segment.text, segment.tokens, segment.no_speech_prob) == (f" {HELLO}", [], 0.0)
    assert segment.model_extra == {"emotion": "neutral", "events": ["speech"]}  # RAPL's fields
    assert result.words is None
    assert offline == []


def test_server_every_response_format(offline_server, tiny_sensevoice: Path, offline):
    import srt
    import webvtt

    server = sensevoice_server(offline_server, tiny_sensevoice)
    assert transcribe(server, response_format="json").text == HELLO
    assert transcribe(server).text == HELLO  # json is the default
    text = transcribe(server, response_format="text")
    assert isinstance(text, str) and text.strip() == HELLO
    (subtitle,) = srt.parse(transcribe(server, response_format="srt"))
    assert (subtitle.index, subtitle.content) == (1, HELLO)
    assert (subtitle.start.total_seconds(), subtitle.end.total_seconds()) == (0.0, 2.0)
    (caption,) = webvtt.from_string(transcribe(server, response_format="vtt"))
    assert (caption.start, caption.end, caption.text) == ("00:00:00.000", "00:00:02.000", HELLO)
    verbose = transcribe(server, response_format="verbose_json")
    assert verbose.text == HELLO and [s.text for s in verbose.segments] == [f" {HELLO}"]
    assert offline == []


def test_server_word_timestamps(offline_server, tiny_sensevoice: Path, offline):
    result = transcribe(sensevoice_server(offline_server, tiny_sensevoice), response_format="verbose_json",
                        timestamp_granularities=["word", "segment"])
    assert [w.word for w in result.words] == ["hello", "world", "hello", "world"]
    assert all(0.0 <= w.start < w.end <= 2.0 for w in result.words)
    assert offline == []


def test_server_streams(offline_server, tiny_sensevoice: Path, offline):
    events = list(transcribe(sensevoice_server(offline_server, tiny_sensevoice), stream=True))
    *deltas, done = events
    assert deltas and all(e.type == "transcript.text.delta" for e in deltas)
    assert done.type == "transcript.text.done"
    assert "".join(e.delta for e in deltas) == done.text == HELLO
    assert done.usage.type == "tokens" and done.usage.input_tokens == 20  # 2 s at 10 audio tokens a second
    assert offline == []


def test_server_cannot_translate(offline_server, tiny_sensevoice: Path):
    server = sensevoice_server(offline_server, tiny_sensevoice)
    with pytest.raises(openai.BadRequestError) as info:
        server.sdk.audio.translations.create(model="whisper-1", file=("clip.wav", CLIP))
    assert info.value.body["code"] == "translation_unsupported"


def test_server_serves_paraformer_by_changing_local_model(offline_server, tiny_paraformer: Path, offline):
    server = sensevoice_server(offline_server, tiny_paraformer)
    assert [m.id for m in server.sdk.models.list()][0] == tiny_paraformer.name
    assert server.worker.backend.model_class == "Paraformer"
    result = transcribe(server, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert WORDS.match(result.text), result.text
    assert (result.language, result.duration) == ("english", 2.0)  # told from the script
    (segment,) = result.segments
    assert segment.text == f" {result.text}" and segment.model_extra == {}  # no SenseVoice tags
    assert " ".join(w.word for w in result.words) == result.text
    assert transcribe(server, language="zh", response_format="verbose_json").language == "chinese"
    with pytest.raises(openai.BadRequestError) as info:
        transcribe(server, language="ja")
    assert info.value.body["param"] == "language" and "en, zh" in info.value.body["message"]
    import srt

    (subtitle,) = srt.parse(transcribe(server, response_format="srt"))
    assert subtitle.content == result.text
    *deltas, done = transcribe(server, stream=True)
    assert "".join(e.delta for e in deltas) == done.text == result.text
    assert offline == []


def test_server_handles_a_few_samples_past_a_window(offline_server, tiny_sensevoice: Path, offline):
    """VAD off cuts fixed windows; a 3-sample tail must not reach FunASR on its own (it raises)."""
    import numpy as np

    server = sensevoice_server(offline_server, tiny_sensevoice, MAX_CHUNK_SECONDS="5")
    clip = wav_bytes(np.zeros(16000 * 10 + 3, dtype=np.float32) + np.float32(1e-3))
    result = transcribe(server, clip, response_format="verbose_json")
    assert result.duration == pytest.approx(10.0, abs=0.01)
    assert [round(s.end, 2) for s in result.segments][-1] == pytest.approx(10.0, abs=0.01)
    assert offline == []


def test_server_gives_the_same_words_in_every_format(offline_server, tiny_sensevoice: Path, offline, tmp_path):
    """A clip of two sentences 1.2 s apart: json (the dictation path) and the timed formats all send it
    whole, so they give the same words; the timed formats cut it at the pause by its word times."""
    from support.speech import SENTENCES, build_recording, spoken

    parts = [spoken(SENTENCES[i], tmp_path / f"{i}.wav") for i in (0, 1)]
    clip, _ = build_recording(parts, [0.3, 1.2])
    body = wav_bytes(clip)
    server = sensevoice_server(offline_server, tiny_sensevoice, VAD="true")
    plain = transcribe(server, body).text
    verbose = transcribe(server, body, response_format="verbose_json")
    assert plain and verbose.text == plain
    assert transcribe(server, body, response_format="text").strip() == plain
    srt = transcribe(server, body, response_format="srt")
    assert " ".join(line for line in srt.splitlines() if line and "-->" not in line and not line.isdigit()) == plain
    starts = [s.start for s in verbose.segments]
    assert starts == sorted(starts) and verbose.segments[-1].end <= verbose.duration + 0.01


def test_a_whole_clip_segment_is_cut_at_its_pauses_keeping_its_text() -> None:
    from rapl.audio.vad import Chunk
    from rapl.core.pipeline import _at_pauses
    from rapl.transcript.transcription import Word

    chunk = Chunk(0, 8 * 16000, (), ((8000, 48000), (64000, 120000)))  # speech at 0.5-3 s and 4-7.5 s
    words = (Word("hello", 0.6, 1.0), Word("world", 1.2, 2.8), Word("你好", 4.2, 5.0), Word("there", 5.5, 7.0))
    segment = Segment(0.0, 8.0, "<|en|>Hello, world! 你好 there.", words=words)
    first, second = _at_pauses(segment, chunk)
    assert (first.text, second.text) == ("<|en|>Hello, world!", "你好 there.")  # punctuation and tags kept
    assert first.end == second.start == pytest.approx(3.5) and (first.start, second.end) == (0.0, 8.0)
    assert _at_pauses(replace_words(segment), chunk) == [replace_words(segment)]  # no words: kept whole


def replace_words(segment: Segment) -> Segment:
    from dataclasses import replace

    return replace(segment, words=())
