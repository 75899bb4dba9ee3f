"""A live session's configuration: OpenAI's ``session.update`` (GA) and the retired beta
``transcription_session.update``, read and checked into one object, and shown back in either shape.

The transcription fields (language, prompt, keywords, languages) go through the REST form's own
checks (rapl.core.params), so a value REST refuses is refused here too, naming the field by its path in
the session (``session.audio.input.transcription.language``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from werkzeug.datastructures import MultiDict

from ..core import params
from ..core.params import AudioRequest
from ..errors import APIError

FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")
G711_RATE = 8000
DEFAULT_RATE = 24000  # OpenAI's audio/pcm
RATES = (8000, 192000)  # audio/pcm rates RAPL reads (any other is refused, naming the field)
BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
NOISE_REDUCTIONS = ("near_field", "far_field")
TURN_TYPES = ("server_vad", "semantic_vad")
# semantic_vad's eagerness as server_vad's silence before a turn ends (OpenAI's upper bounds are 8, 4, 2 s).
EAGERNESS_SILENCE_MS = {"low": 2000, "medium": 1000, "auto": 1000, "high": 500}
LOGPROBS = "item.input_audio_transcription.logprobs"
DELAYS = ("minimal", "low", "medium", "high", "xhigh")  # how long live text waits to be sure (rapl.http.live)
_GA_TRANSCRIPTION_KEYS = ("model", "language", "prompt", "keywords", "languages", "delay")


class ConfigError(Exception):
    """A session field RAPL cannot take; sent as an ``error`` event naming ``param``."""

    def __init__(self, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass(frozen=True)
class Turns:
    """Server turn detection (``server_vad``, or ``semantic_vad`` mapped onto it by eagerness)."""

    type: str = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    idle_timeout_ms: int | None = None
    eagerness: str | None = None

    def shown(self) -> dict[str, Any]:
        """As OpenAI shows it in a session."""
        if self.type == "semantic_vad":
            return {"type": "semantic_vad", "eagerness": self.eagerness or "auto", "create_response": False,
                    "interrupt_response": False}
        return {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms, "idle_timeout_ms": self.idle_timeout_ms,
                "create_response": False, "interrupt_response": False}


@dataclass(frozen=True)
class LiveConfig:
    """What a session runs with; the defaults are OpenAI's (24 kHz PCM, server VAD)."""

    format: str = "audio/pcm"
    rate: int = DEFAULT_RATE
    noise_reduction: str | None = None  # accepted and shown; RAPL applies none (README)
    model: str = ""
    language: str | None = None
    prompt: str = ""
    keywords: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    delay: str | None = None
    turns: Turns | None = Turns()
    logprobs: bool = False
    beta: bool = False  # the last update came in the beta shape: answer in it

    def request(self) -> AudioRequest:
        """The transcription request each turn is, checked as REST checks its form (APIError naming the field)."""
        form: MultiDict = MultiDict()
        for name, value in (("model", self.model), ("language", self.language), ("prompt", self.prompt)):
            if value:
                form.add(name, value)
        for word in self.keywords:
            form.add("keywords[]", word)
        for code in self.languages:
            form.add("languages[]", code)
        if self.logprobs:
            form.add("include[]", "logprobs")
        return params.parse(form, "transcribe")

    def shown(self, session_id: str, expires_at: int, model: str) -> dict[str, Any]:
        """The whole effective configuration, as ``session.created``/``session.updated`` carry it."""
        transcription = {"model": self.model or model, "language": self.language, "prompt": self.prompt,
                         "delay": self.delay or "medium"}
        if self.keywords:
            transcription["keywords"] = list(self.keywords)
        if self.languages:
            transcription["languages"] = list(self.languages)
        if self.beta:
            beta_format = next(k for k, v in BETA_FORMATS.items() if v == self.format)
            return {"id": session_id, "object": "realtime.transcription_session", "expires_at": expires_at,
                    "input_audio_format": beta_format, "input_audio_transcription": transcription,
                    "turn_detection": self.turns.shown() if self.turns else None,
                    "input_audio_noise_reduction": _noise(self.noise_reduction),
                    "include": [LOGPROBS] if self.logprobs else None}
        audio_format: dict[str, Any] = {"type": self.format}
        if self.format == "audio/pcm":
            audio_format["rate"] = self.rate
        return {"type": "transcription", "object": "realtime.transcription_session", "id": session_id,
                "expires_at": expires_at,
                "audio": {"input": {"format": audio_format, "noise_reduction": _noise(self.noise_reduction),
                                    "transcription": transcription,
                                    "turn_detection": self.turns.shown() if self.turns else None}},
                "include": [LOGPROBS] if self.logprobs else None}

    @property
    def input_rate(self) -> int:
        """Samples per second of the audio the client appends."""
        return self.rate if self.format == "audio/pcm" else G711_RATE


def _noise(kind: str | None) -> dict[str, str] | None:
    return {"type": kind} if kind else None


def updated(config: LiveConfig, session: Any, beta: bool) -> tuple[LiveConfig, AudioRequest]:
    """``config`` with a ``session.update`` (``beta``: ``transcription_session.update``) applied, and the
    request its turns make; raises ConfigError naming the first field it cannot take."""
    if not isinstance(session, dict):
        raise ConfigError("session must be an object.", "session")
    kind = session.get("type")
    if kind not in (None, "transcription"):
        raise ConfigError(f"RAPL serves transcription sessions only, not {_shown(kind)}: send session.type "
                          "\"transcription\" (and connect with ?intent=transcription).", "session.type")
    changes: dict[str, Any] = {"beta": beta}
    audio = _object(session, "audio", "session.audio")
    audio_in = _object(audio, "input", "session.audio.input") if audio else None
    if audio_in:
        changes.update(_format(audio_in, "session.audio.input"))
        if "noise_reduction" in audio_in:
            changes["noise_reduction"] = _noise_reduction(audio_in["noise_reduction"], "session.audio.input")
        if audio_in.get("transcription") is not None:
            changes.update(_transcription(audio_in["transcription"], "session.audio.input.transcription",
                                          _GA_TRANSCRIPTION_KEYS))
        if "turn_detection" in audio_in:
            changes["turns"] = _turns(audio_in["turn_detection"], "session.audio.input.turn_detection")
    # The beta shape (also seen inside GA session.update from older clients).
    if "input_audio_format" in session:
        name = session["input_audio_format"]
        if name not in BETA_FORMATS:
            raise ConfigError(f"input_audio_format must be one of {', '.join(BETA_FORMATS)}, not {_shown(name)}.",
                              "session.input_audio_format")
        changes.update(format=BETA_FORMATS[name], rate=DEFAULT_RATE if name == "pcm16" else G711_RATE)
    if session.get("input_audio_transcription") is not None:
        changes.update(_transcription(session["input_audio_transcription"], "session.input_audio_transcription",
                                      _GA_TRANSCRIPTION_KEYS))
    if "input_audio_noise_reduction" in session:
        changes["noise_reduction"] = _noise_reduction(session["input_audio_noise_reduction"], "session")
    if "turn_detection" in session:
        changes["turns"] = _turns(session["turn_detection"], "session.turn_detection")
    if "include" in session:
        changes["logprobs"] = _include(session["include"])
    new = replace(config, **changes)
    return new, _checked_request(new, "session.input_audio_transcription" if beta
                                 else "session.audio.input.transcription")


def _checked_request(config: LiveConfig, where: str) -> AudioRequest:
    try:
        return config.request()
    except APIError as exc:
        raise ConfigError(exc.message, f"{where}.{exc.param}" if exc.param else where,
                          exc.code or "invalid_value") from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _object(parent: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = parent.get(key)
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{where} must be an object, not {_shown(value)}.", where)
    return value


def _format(audio_in: dict[str, Any], where: str) -> dict[str, Any]:
    fmt = _object(audio_in, "format", f"{where}.format")
    if not fmt:
        return {}
    kind = fmt.get("type", "audio/pcm")
    if kind not in FORMATS:
        raise ConfigError(f"{where}.format.type must be one of {', '.join(FORMATS)}, not {_shown(kind)}.",
                          f"{where}.format.type")
    if kind != "audio/pcm":
        return {"format": kind, "rate": G711_RATE}
    rate = fmt.get("rate", DEFAULT_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int) or not RATES[0] <= rate <= RATES[1]:
        raise ConfigError(f"{where}.format.rate must be a whole number of samples per second from {RATES[0]} to "
                          f"{RATES[1]} (OpenAI's is 24000), not {_shown(rate)}.", f"{where}.format.rate")
    return {"format": kind, "rate": rate}


def _noise_reduction(value: Any, where: str) -> str | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in NOISE_REDUCTIONS:
        raise ConfigError(f"noise_reduction must be null or {{\"type\": \"near_field\" or \"far_field\"}}, not "
                          f"{_shown(value)}.", f"{where}.noise_reduction")
    return kind


def _transcription(value: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be an object, not {_shown(value)}.", where)
    changes: dict[str, Any] = {}
    for key in ("model", "language", "prompt", "delay"):
        if key in value and value[key] is not None and not isinstance(value[key], str):
            raise ConfigError(f"{where}.{key} must be a string, not {_shown(value[key])}.", f"{where}.{key}")
    if "model" in value:
        changes["model"] = (value["model"] or "").strip()
    if "language" in value:
        changes["language"] = (value["language"] or "").strip() or None
    if "prompt" in value:
        changes["prompt"] = value["prompt"] or ""
    if "delay" in value:
        if value["delay"] not in (None, *DELAYS):
            raise ConfigError(f"{where}.delay must be one of {', '.join(DELAYS)}, not {_shown(value['delay'])}.",
                              f"{where}.delay")
        changes["delay"] = value["delay"]
    for key in ("keywords", "languages"):
        if key in value:
            items = value[key] if value[key] is not None else []
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ConfigError(f"{where}.{key} must be a list of strings, not {_shown(value[key])}.",
                                  f"{where}.{key}")
            changes[key] = tuple(items)
    return changes


def _number(value: Any, key: str, low: float, high: float, where: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise ConfigError(f"{where}.{key} must be a number from {low:g} to {high:g}, not {_shown(value)}.",
                          f"{where}.{key}")
    return float(value)


def _turns(value: Any, where: str) -> Turns | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be null or an object, not {_shown(value)}.", where)
    kind = value.get("type", "server_vad")
    if kind not in TURN_TYPES:
        raise ConfigError(f"{where}.type must be server_vad, semantic_vad or turn_detection null, not "
                          f"{_shown(kind)}.", f"{where}.type")
    if kind == "semantic_vad":
        eagerness = value.get("eagerness") or "auto"
        if eagerness not in EAGERNESS_SILENCE_MS:
            raise ConfigError(f"{where}.eagerness must be one of low, medium, high, auto, not {_shown(eagerness)}.",
                              f"{where}.eagerness")
        return Turns("semantic_vad", silence_duration_ms=EAGERNESS_SILENCE_MS[eagerness], eagerness=eagerness)
    turns = Turns()
    bounds = params.VAD_BOUNDS
    fields: dict[str, Any] = {}
    for key, bound_key in (("threshold", "threshold"), ("prefix_padding_ms", "prefix_padding_ms"),
                           ("silence_duration_ms", "silence_duration_ms")):
        if value.get(key) is not None:
            number = _number(value[key], key, *bounds[bound_key], where)
            fields[key] = number if key == "threshold" else int(number)
    if value.get("idle_timeout_ms") is not None:
        fields["idle_timeout_ms"] = int(_number(value["idle_timeout_ms"], "idle_timeout_ms", 5000, 30000, where))
    return replace(turns, **fields)


def _include(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, list) or any(item != LOGPROBS for item in value):
        raise ConfigError(f"session.include may only list {LOGPROBS!r}, not {_shown(value)}.", "session.include")
    return bool(value)
