"""Reading a request's form fields: every invalid value is a 400 naming its parameter."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict

from rapl.core import params
from rapl.errors import APIError
from rapl.transcript.transcription import VadOptions
from support.speech import tone, wav_bytes

_CLIP = wav_bytes(tone(1.0))


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
    from rapl.transcript.transcription import Options
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


# --- hostile values: every field's parser answers 400 naming it, never 500 ---------------------------

_DIARIZED = {"response_format": "diarized_json"}
_VAD = '{{"type": "server_vad", "{key}": {value}}}'
HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    *[("temperature", {"temperature": v}, "temperature") for v in
      ["nan", "NaN", "inf", "-inf", "1e999", "9" * 5000, "1" + "0" * 400, "²", "١", "0x1", "1_0", "\x00", " ",
       "x" * 100_000]],
    *[("response_format", {"response_format": v}, "response_format") for v in ["x" * 100_000, "json\x00", "²"]],
    *[("stream", {"stream": v}, "stream") for v in ["maybe", "²", "١", "x" * 100_000]],
    *[("language", {"language": v}, "language") for v in ["x" * 100_000, "en\x00", "en\nX-Evil: 1", "١", "<script>"]],
    *[("languages", {"languages[]": v}, "languages") for v in ["x" * 100_000, "²", "\x00"]],
    *[("timestamp_granularities", {"response_format": "verbose_json", "timestamp_granularities[]": v},
       "timestamp_granularities") for v in ["x" * 100_000, "word\x00"]],
    *[("include", {"include[]": v}, "include") for v in ["x" * 100_000, "logprobs\x00"]],
    ("keywords", {"keywords[]": "x" * 101}, "keywords"),
    ("keywords", {"keywords[]": [f"k{i}" for i in range(101)]}, "keywords"),
    ("prompt", {"prompt": "x" * (params.MAX_PROMPT_CHARS + 1)}, "prompt"),
    ("known_speaker_names", {**_DIARIZED, "known_speaker_names[]": "n" * 101,
                             "known_speaker_references[]": "data:audio/wav;base64,AAAA"}, "known_speaker_names"),
    *[("known_speaker_references", {**_DIARIZED, "known_speaker_names[]": "Ann", "known_speaker_references[]": v},
       "known_speaker_references") for v in
      ["data:audio/wav;base64,!!!!", "data:audio/wav;base64,", "http://127.0.0.1/x.wav", "/etc/passwd",
       "data:audio/wav;base64,١١١١", "data:audio/wav;base64," + "A" * 100_001]],
    *[("num_speakers", {**_DIARIZED, "num_speakers": v}, "num_speakers") for v in
      ["²", "١", "9" * 5000, "0", "33", "-1", "1.5", "+2", "1e1", " ", "\x00", "x" * 100_000]],
    *[("chunking_strategy", {"chunking_strategy": v}, "chunking_strategy") for v in
      ["[" * 1000, "{" * 100_000, '{"a":' * 5000, "9" * 5000, "NaN", "x" * 100_000, "null", "true",
       '{"type": ["server_vad"]}', '{"type": "server_vad", "threshold": {"x": 1}}',
       *[_VAD.format(key=key, value=value) for key in ("threshold", "prefix_padding_ms", "silence_duration_ms")
         for value in ("1e999", "-1e999", "NaN", "Infinity", "true", "null, \"type\": 1", "[1]", '"²"', '"١"',
                       "9" * 5000, "1" + "0" * 300, "-1", "100000")]]],
    *[("chunking_strategy[...]", {"chunking_strategy[type]": "server_vad", f"chunking_strategy[{key}]": value},
       "chunking_strategy") for key in ("threshold", "prefix_padding_ms", "silence_duration_ms")
      for value in ("1e999", "nan", "inf", "²", "١", "9" * 5000, "-1", "100000", "true", "x" * 100_000)],
    ("chunking_strategy[...]", {"chunking_strategy[type]": "²"}, "chunking_strategy"),
    ("chunking_strategy[...]", {"chunking_strategy[type]": "server_vad", "chunking_strategy[x][y]": "1"},
     "chunking_strategy"),
]


def _check_400(resp: Any, param: str) -> None:
    """A 400 in OpenAI's envelope naming ``param``, with a short message."""
    assert resp.status_code == 400, (param, resp.status_code, resp.text[:300])
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == "invalid_value", error
    assert len(error["message"]) < 400, error["message"]  # the value is quoted cut short, never whole


@pytest.mark.parametrize(("field", "data", "param"), HOSTILE,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(HOSTILE)])
def test_hostile_values_are_a_400_naming_their_field(fake_server, field: str, data: dict[str, Any],  # noqa: ANN001
                                                     param: str) -> None:
    """Over real HTTP: each hostile value of each field is a 400 naming it, and nothing reaches the model."""
    with fake_server.http() as http:
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", _CLIP)}, data=data)
    _check_400(resp, param)
    assert fake_server.backend.calls == []


def test_vad_values_at_their_bounds_are_accepted_and_past_them_refused() -> None:
    for key, (low, high) in params.VAD_BOUNDS.items():
        for value in (low, high):
            vad = parse(chunking_strategy=json.dumps({"type": "server_vad", key: value})).options.vad
            assert vad is not None
        step = 0.01 if key == "threshold" else 1
        for value in (low - step, high + step):
            error = bad("chunking_strategy", chunking_strategy=json.dumps({"type": "server_vad", key: value}))
            assert f"{key} must be a number from {low:g} to {high:g}" in error.message
            assert "prefix_padding_ms 0-2000" in error.message  # every bound is said
    assert parse(num_speakers="32", response_format="diarized_json").num_speakers == 32
    assert parse(temperature=" 0.5 ").options.temperature == 0.5
    assert parse(temperature="1e-1").options.temperature == 0.1


_FIELDS = ("temperature", "response_format", "stream", "language", "languages[]", "timestamp_granularities[]",
           "include[]", "keywords[]", "prompt", "num_speakers", "chunking_strategy", "chunking_strategy[threshold]",
           "known_speaker_names[]", "known_speaker_references[]")


_DIGITS = st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=4)  # "²", "١", "𝟗"
_NASTY = st.sampled_from(["²", "³", "①", "9" * 5000, "1e999", "nan", "[" * 1000, '{"type": "server_vad"}'])
_TEXT = st.text(max_size=60) | st.from_regex(r"[-+0-9.eE\[\]{}\"a-z:, ]{0,40}") | _DIGITS | _NASTY


@settings(max_examples=500, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(_FIELDS), value=_TEXT)
def test_any_text_in_any_field_is_parsed_or_a_400_naming_it(field: str, value: str) -> None:
    """Property: whatever text a field holds, it parses, or the answer is a 400 naming that field."""
    data = {field: value}
    if field.startswith(("num_", "known_")):
        data["response_format"] = "diarized_json"
    if field == "known_speaker_names[]":
        data["known_speaker_references[]"] = "data:audio/wav;base64,AAAA"
    try:
        req = params.parse(MultiDict(data), "transcribe")
    except APIError as error:
        named = {"known_speaker_names", "known_speaker_references"} if field.startswith("known_") \
            else {field.split("[")[0]}  # a name and its clip are checked together
        assert error.status == 400 and error.param in named, (field, value, error.message)
        return
    assert req.response_format  # parsed: the value was usable


# --- the size of one form field: a speaker reference's data URL fits ------------------------------

def _data_url(data: bytes) -> str:
    return "data:audio/wav;base64," + base64.b64encode(data).decode()


def _reference(server: Any, reference: str) -> Any:
    """A diarized_json request with one known speaker and no audio file: once the form and its fields
    are read, the answer is the 400 for the missing file (so no speaker model loads)."""
    with server.http() as http:
        return http.post("/v1/audio/transcriptions", files={"other": ("x.txt", b"x")},
                         data={"response_format": "diarized_json", "known_speaker_names[]": "Ann",
                               "known_speaker_references[]": reference})


def test_a_ten_second_cd_quality_reference_is_not_refused_as_too_large(fake_server) -> None:  # noqa: ANN001
    """A 10 s 44.1 kHz stereo WAV (1.8 MB, 2.35 MB as a data URL) was a 413 "larger than MAX_UPLOAD_MB":
    each form field was capped at 1 MB. Now the form and the reference pass, and the answer is about
    what comes next (here: the missing audio file)."""
    import soundfile

    t = np.arange(10 * 44100) / 44100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)], axis=1)
    buf = io.BytesIO()
    soundfile.write(buf, stereo, 44100, format="WAV", subtype="PCM_16")
    clip = buf.getvalue()
    assert 1.7e6 < len(clip) < params.MAX_REFERENCE_BYTES and len(_data_url(clip)) > 2**21
    resp = _reference(fake_server, _data_url(clip))
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "file", resp.text


def test_a_reference_over_its_limit_is_refused_naming_that_limit(fake_server) -> None:  # noqa: ANN001
    just_over = _reference(fake_server, _data_url(b"RIFF" + bytes(params.MAX_REFERENCE_BYTES - 3)))
    assert just_over.status_code == 400, just_over.text
    error = just_over.json()["error"]
    assert error["param"] == "known_speaker_references" and "at most 8 MB" in error["message"], error
    far_over = _reference(fake_server, _data_url(bytes(params.MAX_REFERENCE_BYTES + 2**20)))
    assert far_over.status_code == 413, far_over.text
    error = far_over.json()["error"]
    assert error["param"] == "known_speaker_references" and "MAX_UPLOAD_MB" not in error["message"], error
    assert "a reference clip may have at most 8 MB" in error["message"], error
    with fake_server.http() as http:  # any other field: named, with the limit it broke
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", _CLIP)},
                         data={"prompt": "x" * (params.MAX_REFERENCE_BYTES * 2)})
    assert resp.status_code == 413 and resp.json()["error"]["param"] == "prompt", resp.text
    assert fake_server.backend.calls == []


def test_a_form_part_without_a_name_is_not_a_500(fake_server) -> None:  # noqa: ANN001
    """The OpenAPI fuzzer sent a part whose Content-Disposition has no name: werkzeug keys it None, and
    reading chunking_strategy's fields raised AttributeError (500). The part is ignored, like any unknown field."""
    boundary = "rapl-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data\r\n\r\nnameless\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + _CLIP + f"\r\n--{boundary}--\r\n".encode()
    with fake_server.http() as http:
        for path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
            resp = http.post(path, content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            assert resp.status_code == 200, resp.text
