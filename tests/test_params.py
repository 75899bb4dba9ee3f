"""Reading a request's form fields: every invalid value is a 400 naming its parameter."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MultiDict

from rapl import params
from rapl.errors import APIError
from rapl.transcription import VadOptions


def parse(task: str = "transcribe", **fields: object) -> params.AudioRequest:
    items = []
    for key, value in fields.items():
        key = key.replace("__", "[]") if key.endswith("__") else key
        for v in value if isinstance(value, list) else [value]:
            items.append((key, str(v)))
    return params.parse(MultiDict(items), task)


def bad(param: str, task: str = "transcribe", **fields: object) -> APIError:
    with pytest.raises(APIError) as info:
        parse(task, **fields)
    assert info.value.status == 400 and info.value.param == param, info.value.message
    return info.value


def test_defaults() -> None:
    req = parse()
    assert (req.response_format, req.stream, req.segments, req.words, req.logprobs) == ("json", False, True, False,
                                                                                      False)
    assert req.options.vad is None and req.options.keywords == () and req.options.temperature is None


@pytest.mark.parametrize(("wanted", "segments", "words"), [
    ([], True, False), (["segment"], True, False), (["word"], False, True), (["word", "segment"], True, True)])
def test_granularities(wanted: list[str], segments: bool, words: bool) -> None:
    req = parse(response_format="verbose_json", timestamp_granularities__=wanted)
    assert (req.segments, req.words, req.options.word_timestamps) == (segments, words, words)


def test_stream_is_ignored_for_whisper_1_only() -> None:
    assert parse(stream="true", model="whisper-1").stream is False
    assert parse(stream="true", model="gpt-4o-transcribe").stream is True
    assert parse(stream="true").stream is True


def test_chunking_strategy_as_json_or_as_sdk_fields() -> None:
    assert parse(chunking_strategy="auto").options.vad is None
    as_json = parse(chunking_strategy='{"type": "server_vad", "threshold": 0.3, "silence_duration_ms": 800}')
    assert as_json.options.vad == VadOptions(threshold=0.3, min_silence_ms=800)
    fields = params.parse(MultiDict([("chunking_strategy[type]", "server_vad"),
                                     ("chunking_strategy[prefix_padding_ms]", "300")]), "transcribe")
    assert fields.options.vad == VadOptions(padding_ms=300)


@pytest.mark.parametrize("value", ["bogus", '{"type": "client_vad"}', '{"type": "server_vad", "threshold": 2}',
                                   '{"type": "server_vad", "speed": 1}', "[1, 2]"])
def test_bad_chunking_strategy(value: str) -> None:
    bad("chunking_strategy", chunking_strategy=value)


def test_languages_one_becomes_the_language_several_restrict_detection() -> None:
    assert parse(languages__=["English"]).options.language == "en"
    req = parse(languages__=["en", "zh-CN"])
    assert req.options.language is None and req.options.candidates == ("en", "zh")
    bad("languages", languages__=["klingon"])


def test_keywords_and_include() -> None:
    assert parse(keywords__=["RAPL", "SenseVoice", "RAPL"]).options.keywords == ("RAPL", "SenseVoice")
    bad("keywords", keywords__=["x" * 101])
    bad("keywords", keywords__=[f"k{i}" for i in range(101)])
    assert parse(include__=["logprobs"]).logprobs is True
    bad("include", include__=["everything"])
    bad("include", include__=["logprobs"], response_format="text")


def test_known_speakers_need_diarized_json() -> None:
    bad("known_speaker_names", known_speaker_names__=["Ann"])
    bad("known_speaker_references", known_speaker_references__=["data:audio/wav;base64,AAAA"])


@pytest.mark.parametrize(("field", "value"), [("temperature", "hot"), ("temperature", "1.5"),
                                              ("response_format", "xml"), ("stream", "maybe"),
                                              ("timestamp_granularities", "sentence")])
def test_bad_values_name_their_field(field: str, value: str) -> None:
    bad(field, **{field: value})
    if field == "timestamp_granularities":
        return
    assert bad(field, "translate", **{field: value}).code == "invalid_value"


# --- through the real server: what reaches the model --------------------------------------------

def test_every_option_reaches_the_model(fake_server, spoken_sentences) -> None:  # noqa: ANN001
    """Each form field, sent over HTTP, arrives in the Options the backend is given."""
    from rapl.transcription import Options
    from support.speech import wav_bytes

    clip = wav_bytes(spoken_sentences[0])  # speech, so the request's own VAD finds something
    with fake_server.http() as http:
        verbose = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", clip)}, data={
            "response_format": "verbose_json", "language": "de", "prompt": "Rapl, SenseVoice.", "temperature": "0.4",
            "keywords[]": ["RAPL", "Whisper"], "timestamp_granularities[]": ["word", "segment"],
            "chunking_strategy": '{"type": "server_vad", "threshold": 0.4, "silence_duration_ms": 300}'})
        json_ = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", clip)},
                          data={"model": "gpt-4o-transcribe", "languages[]": ["en", "zh-CN"], "include[]": "logprobs"})
        translated = http.post("/v1/audio/translations", files={"file": ("a.wav", clip)}, data={"prompt": "Hi."})
    assert verbose.status_code == json_.status_code == translated.status_code == 200, verbose.text + json_.text
    first, *_, second, third = fake_server.backend.calls
    assert first.options == Options(language="de", prompt="Rapl, SenseVoice.", temperature=0.4, word_timestamps=True,
                                    keywords=("RAPL", "Whisper"),
                                    vad=VadOptions(threshold=0.4, min_silence_ms=300))
    assert second.options == Options(candidates=("en", "zh"), logprobs=True)
    assert third.options == Options(prompt="Hi.", task="translate")
    assert verbose.json()["language"] == "german" and json_.json()["logprobs"]
