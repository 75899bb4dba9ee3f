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
import re
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import MultiDict

from ..errors import APIError
from ..transcript import formats, languages
from ..transcript.transcription import Options, VadOptions

MAX_REFERENCE_BYTES = 8 * 2**20  # a 2-10 s speaker reference clip, in any format the decoder takes

GRANULARITIES = ("segment", "word")
INCLUDES = ("logprobs",)
# OpenAI documents that whisper-1 does not stream: `stream` is ignored for it.
NON_STREAMING_MODELS = ("whisper-1",)
MAX_KEYWORDS = 100
MAX_KEYWORD_CHARS = 100
MAX_KNOWN_SPEAKERS = 4
MAX_SPEAKERS = 32
MAX_SPEAKER_NAME_CHARS = 100
MAX_PROMPT_CHARS = 10_000  # far more than any model reads (Whisper: its last 223 tokens)
_SERVER_VAD_KEYS = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms"}
# chunking_strategy=server_vad values that work (OpenAI's Realtime server_vad takes the same keys).
# threshold keeps OpenAI's range, 0 to 1 (Silero scores clear speech 0.95 at most: 0.8 keeps some 60 % of
# the speech 0.5 finds, 0.9 only 40 %, above 0.96 none: an empty transcript, as asked). Padding beyond 2 s
# only adds silence.
VAD_BOUNDS = {"threshold": (0.0, 1.0), "prefix_padding_ms": (0, 2000), "silence_duration_ms": (0, 10_000)}
_MAX_STRATEGY_CHARS = 1000  # a server_vad object is some 100 characters: nothing deeper is parsed
# A number as clients write one: ASCII digits only (no "nan", "inf", "1_0", "²" or "١"), a short exponent.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?", re.ASCII)
_WHOLE = re.compile(r"\d{1,6}", re.ASCII)
# A language as clients write one: a code (en, en-US, zh-Hant-TW, es-419) or an English name.
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8}){0,3}|[A-Za-z][A-Za-z ]{1,29}", re.ASCII)


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


def _shown(raw: object) -> str:
    """``raw`` as a message may quote it: its repr, cut to 40 characters."""
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def _decimal(raw: str) -> float | None:
    """The finite number ``raw`` spells in ASCII digits, else None."""
    text = raw.strip()
    if len(text) > 32 or not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _value(form: MultiDict, name: str) -> str | None:
    value = form.get(name)
    return value if value not in (None, "") else None


def _list(form: MultiDict, name: str) -> list[str]:
    return [v.strip() for v in form.getlist(f"{name}[]") + form.getlist(name) if v.strip()]


def _temperature(form: MultiDict) -> float | None:
    raw = _value(form, "temperature")
    if raw is None:
        return None
    value = _decimal(raw)
    if value is None or not 0.0 <= value <= 1.0:
        raise _bad(f"temperature must be a number between 0 and 1, not {_shown(raw)}.", "temperature")
    return value


def _response_format(form: MultiDict) -> str:
    value = (_value(form, "response_format") or "json").strip().lower()
    if value not in formats.FORMATS:
        raise _bad(f"response_format must be one of {', '.join(formats.FORMATS)}, not {_shown(value)}.",
                   "response_format")
    return value


def _granularities(form: MultiDict, response_format: str) -> set[str]:
    wanted = {v.lower() for v in _list(form, "timestamp_granularities")}
    bad = wanted - set(GRANULARITIES)
    if bad:
        raise _bad(f"timestamp_granularities must be among segment, word, not {_shown(sorted(bad)[0])}.",
                   "timestamp_granularities")
    if wanted and response_format != "verbose_json":
        raise _bad("timestamp_granularities needs response_format=verbose_json.", "timestamp_granularities")
    return wanted


def _stream(form: MultiDict, model: str) -> bool:
    raw = (_value(form, "stream") or "false").strip().lower()
    if raw not in ("true", "false", "1", "0"):
        raise _bad(f"stream must be true or false, not {_shown(raw)}.", "stream")
    return raw in ("true", "1") and model not in NON_STREAMING_MODELS


def _include(form: MultiDict, response_format: str) -> bool:
    values = {v.lower() for v in _list(form, "include")}
    bad = values - set(INCLUDES)
    if bad:
        raise _bad(f"include may only contain logprobs, not {_shown(sorted(bad)[0])}.", "include")
    if values and response_format != "json":
        raise _bad("include[]=logprobs needs response_format=json.", "include")
    return bool(values)


def _language_list(form: MultiDict) -> tuple[str, ...]:
    codes = []
    for raw in _list(form, "languages"):
        code = languages.normalize(raw)
        if code is None or code not in languages.NAMES:
            raise _bad(f"languages has {_shown(raw)}, which is not a language code or name (e.g. en, zh, "
                       "english).", "languages")
        codes.append(code)
    return tuple(dict.fromkeys(codes))


def _language(form: MultiDict) -> str | None:
    """The language code asked for (None: detect); a value shaped like no code or name is a 400."""
    raw = _value(form, "language")
    if raw is not None and raw.strip() and not _LANGUAGE.fullmatch(raw.strip()):
        raise _bad(f"language must be an ISO-639-1 code (e.g. en, zh) or a language name, not {_shown(raw)}.",
                   "language")
    return languages.normalize(raw)


def _prompt(form: MultiDict) -> str | None:
    prompt = _value(form, "prompt")
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise _bad(f"prompt may have at most {MAX_PROMPT_CHARS} characters, not {len(prompt)} (models read only "
                   "its end: Whisper its last 223 tokens).", "prompt")
    return prompt


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
    if any(len(n) > MAX_SPEAKER_NAME_CHARS for n in names):
        raise _bad(f"Each known_speaker_names entry may have at most {MAX_SPEAKER_NAME_CHARS} characters.",
                   "known_speaker_names")
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
    text = raw.strip()
    if not _WHOLE.fullmatch(text) or not 1 <= int(text) <= MAX_SPEAKERS:
        raise _bad(f"num_speakers must be a whole number from 1 to {MAX_SPEAKERS}, not {_shown(raw)}.",
                   "num_speakers")
    return int(text)


def _strategy_fields(form: MultiDict) -> dict[str, Any] | None:
    raw = _value(form, "chunking_strategy")
    nested = {key[len("chunking_strategy["):-1]: form.get(key) for key in form
              if isinstance(key, str) and key.startswith("chunking_strategy[") and key.endswith("]")}
    if raw is not None and nested:
        raise _bad("Send chunking_strategy either as one value or as fields, not both.", "chunking_strategy")
    if nested:
        return nested
    if raw is None or raw.strip().lower() == "auto":
        return None
    value = None
    if len(raw) <= _MAX_STRATEGY_CHARS:
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, a number of over 4300 digits, nesting too deep
            value = None
    if not isinstance(value, dict):
        raise _bad(f"chunking_strategy must be \"auto\" or a server_vad object, not {_shown(raw)}.",
                   "chunking_strategy")
    return value


def _json_number(value: object) -> float | None:
    """A finite JSON number (not true/false) or a string spelling one, else None."""
    if isinstance(value, str):
        return _decimal(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _number(fields: dict[str, Any], key: str) -> float | None:
    """chunking_strategy's ``key``, inside its VAD_BOUNDS (a 400 saying them otherwise); None: not given."""
    if fields.get(key) is None or fields.get(key) == "":
        return None
    low, high = VAD_BOUNDS[key]
    value = _json_number(fields[key])
    if value is None or not low <= value <= high:
        raise _bad(f"chunking_strategy.{key} must be a number from {low:g} to {high:g}, not {_shown(fields[key])} "
                   f"(server_vad takes threshold {_range('threshold')}, prefix_padding_ms "
                   f"{_range('prefix_padding_ms')} and silence_duration_ms {_range('silence_duration_ms')}).",
                   "chunking_strategy")
    return value


def _range(key: str) -> str:
    low, high = VAD_BOUNDS[key]
    return f"{low:g}-{high:g}"


def _chunking(form: MultiDict) -> VadOptions | None:
    fields = _strategy_fields(form)
    if fields is None:
        return None
    unknown = sorted(set(fields) - _SERVER_VAD_KEYS)
    if fields.get("type") != "server_vad" or unknown:
        what = f"unknown field {_shown(unknown[0])}" if unknown else f"type {_shown(fields.get('type'))}"
        raise _bad(f"chunking_strategy must be \"auto\" or {{\"type\": \"server_vad\", \"threshold\", "
                   f"\"prefix_padding_ms\", \"silence_duration_ms\"}}; got {what}.", "chunking_strategy")
    padding = _number(fields, "prefix_padding_ms")
    silence = _number(fields, "silence_duration_ms")
    return VadOptions(threshold=_number(fields, "threshold"),
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
    language = None if task == "translate" else _language(form)
    if language is None and len(candidates) == 1:
        language, candidates = candidates[0], ()
    options = Options(language=language, prompt=_prompt(form), temperature=_temperature(form),
                      word_timestamps="word" in granularities, task=task, keywords=_keywords(form),
                      candidates=candidates if language is None else (), vad=_chunking(form),
                      logprobs=logprobs)
    return AudioRequest(response_format=response_format, options=options, model=model,
                        stream=_stream(form, model),
                        segments=not granularities or "segment" in granularities,
                        words="word" in granularities, logprobs=logprobs, known_speakers=known,
                        num_speakers=speakers)
