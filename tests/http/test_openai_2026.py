"""OpenAI's audio API as it stands in 2026, through the official Python SDK, on real Whisper models:
token usage for the GPT names, every current model name, ``languages``, a translation's language,
replacement rules on ``words[]``, and Tauri apps' origins.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from rapl.transcript.text import bare_word
from support.server import Server

pytestmark = pytest.mark.slow  # real Whisper models behind a real server

NAMES = ("whisper-1", "gpt-transcribe", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
         "gpt-4o-mini-transcribe-2025-12-15", "gpt-4o-transcribe-diarize", "gpt-live-transcribe",
         "gpt-realtime-whisper")


@pytest.fixture(scope="module")
def base_server(serve: Callable[..., Server], whisper_base_model: str) -> Server:
    """The multilingual Whisper base model (it detects languages and translates)."""
    return serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_base_model})


def _create(server: Server, clip: Path, **fields: Any) -> Any:
    with clip.open("rb") as f:
        return server.client().audio.transcriptions.create(file=f, **{"model": "whisper-1", **fields})


@pytest.mark.parametrize("model", ["gpt-4o-transcribe", "gpt-transcribe", "gpt-4o-mini-transcribe-2025-12-15",
                                   "gpt-live-transcribe"])
def test_gpt_names_get_token_usage_in_json(whisper_server: Server, jfk: Path, model: str) -> None:
    from openai.types.audio.transcription import UsageTokens

    result = _create(whisper_server, jfk, model=model, prompt="A speech by President Kennedy.")
    assert isinstance(result.usage, UsageTokens), result.usage
    audio = math.ceil(11.0 * 10)  # one audio token per 100 ms, as OpenAI counts them
    assert result.usage.input_token_details.audio_tokens == pytest.approx(audio, abs=2)
    assert result.usage.input_token_details.text_tokens == 5  # the prompt's words
    assert result.usage.output_tokens >= 20  # the tokens Whisper generated for 22 words
    assert result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens


@pytest.mark.parametrize("model", ["whisper-1", "gpt-realtime-whisper", "my-own-name"])
def test_whisper_and_other_names_get_duration_usage(whisper_server: Server, jfk: Path, model: str) -> None:
    from openai.types.audio.transcription import UsageDuration

    result = _create(whisper_server, jfk, model=model)
    assert isinstance(result.usage, UsageDuration) and result.usage.seconds == 11, result.usage  # 11.0 s, rounded up


def test_the_diarize_model_gets_token_usage(whisper_server: Server, jfk: Path) -> None:
    pytest.importorskip("resemblyzer", reason="speaker labels: pip install --no-deps resemblyzer (README: Speakers)")
    from openai.types.audio import TranscriptionDiarized

    result = _create(whisper_server, jfk, model="gpt-4o-transcribe-diarize", response_format="diarized_json",
                     chunking_strategy="auto")
    assert isinstance(result, TranscriptionDiarized) and result.usage.type == "tokens", result


def test_every_current_model_name_is_listed_and_retrievable(whisper_server: Server) -> None:
    client = whisper_server.client()
    listed = [model.id for model in client.models.list()]
    assert set(NAMES) <= set(listed), listed
    for name in NAMES:
        card = client.models.retrieve(name)
        assert card.id == name and card.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-5-transcribe")


def test_languages_in_json_verbose_json_and_the_stream(base_server: Server, shared_audio: Path) -> None:
    from openai.types.audio import TranscriptionTextDoneEvent

    zh = shared_audio / "zh_sample.wav"
    plain = _create(base_server, zh, model="gpt-transcribe")
    assert [language.code for language in plain.languages] == ["zh"], plain
    verbose = _create(base_server, zh, response_format="verbose_json")
    assert verbose.language == "chinese" and verbose.model_extra["languages"] == [{"code": "zh"}]
    with zh.open("rb") as f:
        events = list(base_server.client().audio.transcriptions.create(model="gpt-4o-transcribe", file=f,
                                                                       stream=True))
    done = events[-1]
    assert isinstance(done, TranscriptionTextDoneEvent) and [x.code for x in done.languages] == ["zh"]
    assert done.text == plain.text


def test_a_translation_says_its_language_is_english(base_server: Server, shared_audio: Path) -> None:
    with (shared_audio / "zh_sample.wav").open("rb") as f:
        result = base_server.client().audio.translations.create(model="whisper-1", file=f,
                                                                response_format="verbose_json")
    assert result.language == "english"  # the output's, as OpenAI documents
    assert result.model_extra["languages"] == [{"code": "zh"}]  # the input's
    assert result.text.isascii() and result.text.strip()


def test_replacement_rules_apply_to_words_too(serve: Callable[..., Server], whisper_model: str, jfk: Path,
                                              tmp_path: Path) -> None:
    rules = tmp_path / "replacements.txt"
    rules.write_text("fellow americans → fellow citizens\ncountry → nation\nask not → do not ask\n")
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, "REPLACEMENTS_FILE": str(rules)})
    result = _create(server, jfk, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    words = [w.word for w in result.words]
    assert "citizens" in words and "nation" in words and "country" not in words, words
    assert "do not ask what your nation" in " ".join(words).lower(), words
    assert words == [bare for piece in result.text.split() if (bare := bare_word(piece))], (words, result.text)
    times = [(w.start, w.end) for w in result.words]
    assert times == sorted(times) and all(a <= b for a, b in times)


@pytest.mark.parametrize("origin", ["tauri://localhost", "http://tauri.localhost", "https://tauri.localhost"])
def test_tauri_apps_are_allowed_by_default(whisper_server: Server, jfk: Path, origin: str) -> None:
    client = whisper_server.client(default_headers={"Origin": origin})
    with jfk.open("rb") as f:
        raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=f)
    assert raw.headers["access-control-allow-origin"] == origin
    assert "fellow" in raw.parse().text.lower()
    foreign = whisper_server.client(default_headers={"Origin": "https://tauri.example.com"})
    with jfk.open("rb") as f, pytest.raises(openai.PermissionDeniedError):
        foreign.audio.transcriptions.create(model="whisper-1", file=f)
