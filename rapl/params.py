"""The form fields of a transcription or translation request, read and checked into one object.

Pure functions of the submitted form (a werkzeug MultiDict): every invalid value is a 400 in
OpenAI's envelope naming the parameter. Arrays come as ``name[]`` (the official SDKs) or
``name``; objects (``chunking_strategy``) as JSON text or as ``name[key]`` fields (the SDKs'
multipart encoding).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import MultiDict

from . import formats, languages
from .errors import APIError
from .transcription import Options, VadOptions

GRANULARITIES = ("segment", "word")
INCLUDES = ("logprobs",)
# OpenAI documents that whisper-1 does not stream: `stream` is ignored for it.
NON_STREAMING_MODELS = ("whisper-1",)
MAX_KEYWORDS = 100
MAX_KEYWORD_CHARS = 100
MAX_KNOWN_SPEAKERS = 4
MAX_REFERENCE_BYTES = 8 * 2**20  # a 2-10 s reference clip, in any format the decoder takes
MAX_SPEAKERS = 32
_SERVER_VAD_KEYS = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms"}


@dataclass(frozen=True)
class AudioRequest:
    """What a client asked for, checked: the format, what to include, how to run."""

    response_format: str
    options: Options
    model: str = ""
    stream: bool = False
    segments: bool = True  # verbose_json lists segments
    words: bool = False  # verbose_json lists words
    logprobs: bool = False  # include[]=logprobs
    known_speakers: tuple[tuple[str, bytes], ...] = ()  # (name, reference clip) for diarized_json
    num_speakers: int | None = None  # diarized_json: how many voices, when the client knows

    @property
    def diarized(self) -> bool:
        """Whether the answer labels speakers (response_format=diarized_json)."""
        return self.response_format == "diarized_json"


def _bad(message: str, param: str) -> APIError:
    return APIError(message, 400, param=param, code="invalid_value")


def _value(form: MultiDict, name: str) -> str | None:
    value = form.get(name)
    return value if value not in (None, "") else None


def _list(form: MultiDict, name: str) -> list[str]:
    return [v.strip() for v in form.getlist(f"{name}[]") + form.getlist(name) if v.strip()]


def _temperature(form: MultiDict) -> float | None:
    raw = _value(form, "temperature")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise _bad(f"temperature must be a number between 0 and 1, not {raw!r}.", "temperature")
    return value


def _response_format(form: MultiDict) -> str:
    value = (_value(form, "response_format") or "json").strip().lower()
    if value not in formats.FORMATS:
        raise _bad(f"response_format must be one of {', '.join(formats.FORMATS)}, not {value!r}.",
                   "response_format")
    return value


def _granularities(form: MultiDict, response_format: str) -> set[str]:
    wanted = {v.lower() for v in _list(form, "timestamp_granularities")}
    bad = wanted - set(GRANULARITIES)
    if bad:
        raise _bad(f"timestamp_granularities must be among segment, word, not {sorted(bad)[0]!r}.",
                   "timestamp_granularities")
    if wanted and response_format != "verbose_json":
        raise _bad("timestamp_granularities needs response_format=verbose_json.", "timestamp_granularities")
    return wanted


def _stream(form: MultiDict, model: str) -> bool:
    raw = (_value(form, "stream") or "false").strip().lower()
    if raw not in ("true", "false", "1", "0"):
        raise _bad(f"stream must be true or false, not {raw!r}.", "stream")
    return raw in ("true", "1") and model not in NON_STREAMING_MODELS


def _include(form: MultiDict, response_format: str) -> bool:
    values = {v.lower() for v in _list(form, "include")}
    bad = values - set(INCLUDES)
    if bad:
        raise _bad(f"include may only contain logprobs, not {sorted(bad)[0]!r}.", "include")
    if values and response_format != "json":
        raise _bad("include[]=logprobs needs response_format=json.", "include")
    return bool(values)


def _language_list(form: MultiDict) -> tuple[str, ...]:
    codes = []
    for raw in _list(form, "languages"):
        code = languages.normalize(raw)
        if code is None or code not in languages.NAMES:
            raise _bad(f"languages has {raw!r}, which is not a language code or name (e.g. en, zh, "
                       "english).", "languages")
        codes.append(code)
    return tuple(dict.fromkeys(codes))


def _keywords(form: MultiDict) -> tuple[str, ...]:
    words = _list(form, "keywords")
    if len(words) > MAX_KEYWORDS:
        raise _bad(f"keywords may have at most {MAX_KEYWORDS} entries, not {len(words)}.", "keywords")
    long = next((w for w in words if len(w) > MAX_KEYWORD_CHARS), None)
    if long is not None:
        raise _bad(f"each keyword may have at most {MAX_KEYWORD_CHARS} characters.", "keywords")
    return tuple(dict.fromkeys(words))


def _known_speakers(form: MultiDict, response_format: str) -> tuple[tuple[str, bytes], ...]:
    """Up to MAX_KNOWN_SPEAKERS (name, reference audio bytes) from names[] and data-URL references[]."""
    names, refs = _list(form, "known_speaker_names"), _list(form, "known_speaker_references")
    if not (names or refs):
        return ()
    param = "known_speaker_names" if names else "known_speaker_references"
    if response_format != "diarized_json":
        raise _bad(f"{param} needs response_format=diarized_json.", param)
    if len(names) != len(refs):
        raise _bad(f"known_speaker_names has {len(names)} entries and known_speaker_references {len(refs)}: "
                   "give one reference clip per name.", "known_speaker_references")
    if len(names) > MAX_KNOWN_SPEAKERS:
        raise _bad(f"At most {MAX_KNOWN_SPEAKERS} known speakers, not {len(names)}.", "known_speaker_names")
    if len({n.casefold() for n in names}) != len(names):
        raise _bad("known_speaker_names must not repeat a name.", "known_speaker_names")
    return tuple((name, _data_url(ref)) for name, ref in zip(names, refs, strict=True))


def _data_url(ref: str) -> bytes:
    """The bytes of a ``data:audio/...;base64,...`` reference clip."""
    head, comma, payload = ref.partition(",")
    if not (comma and head.lower().startswith("data:") and head.lower().endswith(";base64")):
        raise _bad("Each known_speaker_references entry must be a data URL: data:audio/wav;base64,<bytes>.",
                   "known_speaker_references")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if not data or len(data) > MAX_REFERENCE_BYTES:
        raise _bad(f"A known_speaker_references entry is not valid base64 audio of at most "
                   f"{MAX_REFERENCE_BYTES // 2**20} MB.", "known_speaker_references")
    return data


def _num_speakers(form: MultiDict, response_format: str) -> int | None:
    raw = _value(form, "num_speakers")  # a RAPL extension: fix the number of voices instead of finding it
    if raw is None:
        return None
    if response_format != "diarized_json":
        raise _bad("num_speakers needs response_format=diarized_json.", "num_speakers")
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_SPEAKERS:
        raise _bad(f"num_speakers must be a whole number from 1 to {MAX_SPEAKERS}, not {raw!r}.", "num_speakers")
    return int(raw)


def _strategy_fields(form: MultiDict) -> dict[str, Any] | None:
    raw = _value(form, "chunking_strategy")
    nested = {key[len("chunking_strategy["):-1]: form.get(key) for key in form
              if key.startswith("chunking_strategy[") and key.endswith("]")}
    if raw is not None and nested:
        raise _bad("Send chunking_strategy either as one value or as fields, not both.", "chunking_strategy")
    if nested:
        return nested
    if raw is None or raw.strip().lower() == "auto":
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise _bad(f"chunking_strategy must be \"auto\" or a server_vad object, not {raw[:40]!r}.",
                   "chunking_strategy")
    return value


def _number(fields: dict[str, Any], key: str, low: float, high: float) -> float | None:
    if fields.get(key) in (None, ""):
        return None
    try:
        value = float(fields[key])
    except (TypeError, ValueError):
        value = math.nan
    if not low <= value <= high:
        raise _bad(f"chunking_strategy.{key} must be a number from {low:g} to {high:g}, not {fields[key]!r}.",
                   "chunking_strategy")
    return value


def _chunking(form: MultiDict) -> VadOptions | None:
    fields = _strategy_fields(form)
    if fields is None:
        return None
    unknown = sorted(set(fields) - _SERVER_VAD_KEYS)
    if fields.get("type") != "server_vad" or unknown:
        what = f"unknown field {unknown[0]!r}" if unknown else f"type {fields.get('type')!r}"
        raise _bad(f"chunking_strategy must be \"auto\" or {{\"type\": \"server_vad\", \"threshold\", "
                   f"\"prefix_padding_ms\", \"silence_duration_ms\"}}; got {what}.", "chunking_strategy")
    padding = _number(fields, "prefix_padding_ms", 0, 10_000)
    silence = _number(fields, "silence_duration_ms", 0, 10_000)
    return VadOptions(threshold=_number(fields, "threshold", 0.0, 1.0),
                      padding_ms=None if padding is None else int(padding),
                      min_silence_ms=None if silence is None else int(silence))


def parse(form: MultiDict, task: str) -> AudioRequest:
    """Read a transcription (``task="transcribe"``) or translation request's fields."""
    response_format = _response_format(form)
    granularities = _granularities(form, response_format) if task == "transcribe" else set()
    model = (_value(form, "model") or "").strip()
    logprobs = _include(form, response_format) if task == "transcribe" else False
    known = _known_speakers(form, response_format) if task == "transcribe" else ()
    speakers = _num_speakers(form, response_format) if task == "transcribe" else None
    if response_format == "diarized_json" and task != "transcribe":
        raise _bad("diarized_json is for transcriptions, not translations.", "response_format")
    candidates = _language_list(form) if task == "transcribe" else ()
    language = None if task == "translate" else languages.normalize(_value(form, "language"))
    if language is None and len(candidates) == 1:
        language, candidates = candidates[0], ()
    options = Options(language=language, prompt=_value(form, "prompt"), temperature=_temperature(form),
                      word_timestamps="word" in granularities, task=task, keywords=_keywords(form),
                      candidates=candidates if language is None else (), vad=_chunking(form),
                      logprobs=logprobs)
    return AudioRequest(response_format=response_format, options=options, model=model,
                        stream=_stream(form, model),
                        segments=not granularities or "segment" in granularities,
                        words="word" in granularities, logprobs=logprobs, known_speakers=known,
                        num_speakers=speakers)
