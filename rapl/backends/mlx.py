"""Any mlx-audio speech-to-text model (Qwen3-ASR, SenseVoice, Whisper, ...) behind one Backend.

The model family comes from the model's own ``config.json`` (``model_type``), and mlx-audio's
loader builds the model.  The only per-family knowledge here is :data:`FAMILIES`, one table of
how each family's ``generate()`` takes the language, the prompt, the generation limit, word
timestamps and inverse text normalisation, and whether it times segments itself; a family
missing from it gets :data:`DEFAULT_FAMILY`.  Keyword arguments a model's ``generate()`` does
not name are dropped, so one family's options never break another.

Generation limit: autoregressive families get at most :func:`token_limit` new tokens, about
ten per second of audio plus a small allowance, so a model that never emits its end token
still returns promptly.  Fast speech is 4 to 6 tokens a second; the limit leaves twice that.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import math
import platform
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.recording import SAMPLE_RATE
from ..catalog import SPECS
from ..errors import Unsupported
from ..settings import Settings, SettingsError
from ..transcript import languages as langs
from ..transcript import richtext
from ..transcript.transcription import Options, Segment, Word
from . import Capabilities, store, warm_up_noise

log = logging.getLogger(__name__)

TOKENS_PER_SECOND = 10  # generation limit per second of audio (see the module docstring)
LANGUAGE_TOKENS = 6  # tokens a stretch is decoded for to learn its language ("language German<asr_text>")
TOKEN_ALLOWANCE = 32  # plus this many: a language prefix, and room on very short clips
# Keywords join the prompt (the family's context argument) up to this many characters, some 200 tokens:
# Whisper's decoder keeps only the last 223 prompt tokens, and a long context slows every family.
MAX_KEYWORD_CONTEXT_CHARS = 800
WARMUP_SECONDS = 1.0
WARMUP_TOKENS = 8


@dataclass(frozen=True)
class Family:
    """How one mlx-audio model family's ``generate()`` takes RAPL's options."""

    languages: Mapping[str, str] | None = None  # ISO code -> value generate() takes; None: any code
    language_arg: str | None = "language"  # keyword for the language; None: not settable
    auto_language: str | None = None  # the language value that asks for detection
    prompt_arg: str | None = None  # keyword the request's prompt (context) goes to
    max_tokens_arg: str | None = "max_tokens"  # keyword of the generation limit; None: no limit
    word_timestamps_arg: str | None = None  # keyword that asks for word timestamps
    itn_arg: str | None = None  # keyword that takes the USE_ITN setting (numbers, punctuation)
    segments_audio: bool = False  # splits a chunk into timed segments itself; else one per chunk
    says_language: bool = False  # left to detect, it starts its output by naming the language


def _names(codes: str, **spelled: str) -> dict[str, str]:
    """ISO codes -> English names as Qwen3-ASR spells them ('en' -> 'English')."""
    return {code: spelled.get(code, langs.NAMES[code].title()) for code in codes.split()}


_QWEN3_ASR = _names("zh en yue ar de fr es pt id it ko ru th vi ja tr hi ms nl sv da fi pl cs tl "
                    "fa el ro hu mk", tl="Filipino")

# The one table of parameter differences, keyed by mlx-audio's model package (model_type).
FAMILIES: dict[str, Family] = {
    "qwen3_asr": Family(languages=_QWEN3_ASR, prompt_arg="system_prompt", says_language=True),
    "sensevoice": Family(languages={c: c for c in ("zh", "en", "yue", "ja", "ko")},
                         auto_language="auto", max_tokens_arg=None, itn_arg="use_itn"),
    "whisper": Family(prompt_arg="initial_prompt", max_tokens_arg=None,
                      word_timestamps_arg="word_timestamps", segments_audio=True),
    "vibevoice_asr": Family(language_arg=None, prompt_arg="context"),
}
DEFAULT_FAMILY = Family()

# Markup some families leave in their text: <|xx|> tags and Qwen3-ASR's <asr_text> marker.
_MARKUP = re.compile(r"<\|[^<>|]{0,40}\|>|</?asr_text>")
_SEGMENT_FIELDS = {"text", "start", "end", "words", "tokens", "temperature", "avg_logprob",
                   "compression_ratio", "no_speech_prob", "seek", "id"}


def token_limit(seconds: float) -> int:
    """Most new tokens an autoregressive model may generate for ``seconds`` of audio."""
    return math.ceil(max(seconds, 0.0) * TOKENS_PER_SECOND) + TOKEN_ALLOWANCE


def install_command() -> str:
    """How to install mlx-audio and MLX on this platform."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "pip install mlx-audio"
    if sys.platform.startswith("linux"):
        return 'pip install "mlx-audio" "mlx[cpu]"  (or "mlx[cuda]" for an NVIDIA GPU)'
    return ("nothing: MLX runs only on Apple Silicon macOS (pip install mlx-audio) and Linux "
            '(pip install "mlx-audio" "mlx[cpu]"); use BACKEND=sensevoice or whisper here')


class MLXBackend:
    """mlx-audio speech-to-text models on MLX (Apple Silicon GPU, CUDA or CPU)."""

    name = "mlx"
    hub = SPECS["mlx"].hub
    can_translate = False
    can_detect_among = False
    can_logprobs = False

    def __init__(self, settings: Settings) -> None:
        if importlib.util.find_spec("mlx_audio") is None or importlib.util.find_spec("mlx") is None:
            raise SettingsError("BACKEND=mlx needs the mlx-audio package and MLX, which are not "
                                f"installed. Install them with: {install_command()}")
        self.settings = settings
        self.model = settings.model
        self._set_family(_family_key(_config_guess(self.model), self.model))
        self._model: Any = None
        self._accepts: frozenset[str] = frozenset()
        self._device: Any = None

    def _set_family(self, key: str) -> None:
        self.family_key = key
        self.family = FAMILIES.get(key, DEFAULT_FAMILY)

    @property
    def capabilities(self) -> Capabilities:
        """What this model family can do (guessed from config.json; load() settles it)."""
        family = self.family
        return Capabilities(languages=frozenset(family.languages) if family.languages is not None else None,
                            can_time_words=family.word_timestamps_arg is not None,
                            segments_audio=family.segments_audio,
                            can_bias=family.prompt_arg is not None,  # keywords[] join the prompt (context)
                            tells_languages=family.says_language and family.max_tokens_arg is not None)

    def load(self) -> Capabilities:
        """Find the model (local directory, Hugging Face cache, else download), load, warm up."""
        started = time.perf_counter()
        import mlx.core as mx
        import mlx_audio.stt.models  # noqa: F401 - imports every family (seconds): not load time
        from mlx_audio.stt import load as load_model

        self._device = _device(self.settings.DEVICE, mx)
        mx.set_default_device(self._device)
        path = _local_dir(self.model)
        loading = time.perf_counter()
        with mx.stream(self._device):
            self._model = load_model(path)
        config = _read_config(path)
        self._set_family(_family_key(config, self.model, type(self._model).__module__))
        self._accepts = _keywords(self._model.generate)
        log.info("loaded %s (mlx-audio %s family) on %s in %.2f s (%.2f s with imports)", self.model,
                 self.family_key, self._device, time.perf_counter() - loading,
                 time.perf_counter() - started)
        self._warm_up()
        return self.capabilities

    def unload(self) -> None:
        """Drop the MLX model."""
        self._model = None

    def _warm_up(self) -> None:
        """Run one short clip so MLX compiles its kernels before the first request."""
        started = time.perf_counter()
        kwargs = self._kwargs(Options(), WARMUP_SECONDS)
        if self.family.max_tokens_arg:
            kwargs[self.family.max_tokens_arg] = WARMUP_TOKENS
        self._generate(warm_up_noise(WARMUP_SECONDS), kwargs)
        log.info("warmed up %s in %.2f s", self.model, time.perf_counter() - started)

    def transcribe(self, audio: np.ndarray, options: Options) -> Iterator[Segment]:
        """Transcribe 16 kHz mono audio, yielding its segments."""
        if self._model is None:
            raise RuntimeError("MLXBackend.transcribe() called before load()")
        duration = len(audio) / SAMPLE_RATE
        kwargs = self._kwargs(options, duration)
        if isinstance(audio, np.ndarray) and audio.dtype != np.float32:
            audio = audio.astype(np.float32)
        output = self._generate(audio, kwargs)
        language = _code(_field(output, "language"), self.family) or options.language
        for segment in _segments(output, duration, self.family):
            yield replace(segment, language=language)

    def language_of(self, audio: np.ndarray, candidates: tuple[str, ...] = ()) -> tuple[str, float] | None:
        """The language of one stretch of speech, for rapl.core.pipeline.by_language: the model left to detect,
        for LANGUAGE_TOKENS tokens only (Qwen3-ASR starts with ``language German<asr_text>``). 1.0 when it
        named one (among ``candidates`` if given), 0.0 when it did not get that far; None for a family that
        never names its language (the chunk is then decoded whole, as before)."""
        if self._model is None or not self.family.says_language or self.family.max_tokens_arg is None:
            return None
        kwargs = self._kwargs(Options(), len(audio) / SAMPLE_RATE)
        kwargs[self.family.max_tokens_arg] = LANGUAGE_TOKENS
        output = self._generate(np.asarray(audio, dtype=np.float32), kwargs)
        code = _code(_field(output, "language"), self.family)
        text = str(_field(output, "text") or "")
        # mlx-audio says English when the output does not start "language X<asr_text>": no answer then
        named = code is not None and not text.lstrip().startswith("language") and (not candidates or code in candidates)
        return (code or "", 1.0 if named else 0.0)

    def language_value(self, code: str | None) -> str | None:
        """The value this family's generate() takes for ISO ``code`` (None: detect).

        Raises Unsupported (code unsupported_language) for a language the family lacks.
        """
        if code is None:
            return self.family.auto_language
        accepted = self.family.languages if self.family.languages is not None else langs.NAMES
        if code not in accepted:
            raise Unsupported(f"Language {code!r} is not supported by {self.model}. Supported "
                              f"languages: {', '.join(sorted(accepted))}.", param="language",
                              code="unsupported_language")
        return self.family.languages[code] if self.family.languages is not None else code

    def _kwargs(self, options: Options, duration: float) -> dict[str, Any]:
        """generate() keyword arguments for ``options``, in this family's spelling."""
        family = self.family
        wanted: dict[str, Any] = {"verbose": False}
        language = self.language_value(options.language)
        if family.language_arg and language is not None:
            wanted[family.language_arg] = language
        context = " ".join(filter(None, (options.prompt, ", ".join(context_keywords(options.keywords)))))
        if family.prompt_arg and context:
            wanted[family.prompt_arg] = context
        if family.max_tokens_arg:
            wanted[family.max_tokens_arg] = token_limit(duration)
        if family.word_timestamps_arg and options.word_timestamps:
            wanted[family.word_timestamps_arg] = True
        if family.itn_arg:
            wanted[family.itn_arg] = self.settings.USE_ITN
        if options.temperature is not None:
            wanted["temperature"] = options.temperature
        dropped = sorted(set(wanted) - self._accepts)
        if dropped:
            log.debug("%s generate() does not take %s; not passed", self.family_key, dropped)
        return {k: v for k, v in wanted.items() if k in self._accepts}

    def _generate(self, audio: Any, kwargs: dict[str, Any]) -> Any:
        import mlx.core as mx

        with mx.stream(self._device):
            return self._model.generate(audio, **kwargs)


def context_keywords(keywords: tuple[str, ...], limit: int = MAX_KEYWORD_CONTEXT_CHARS) -> tuple[str, ...]:
    """The keywords that join the prompt: in order (the request's, then VOCABULARY_FILE's) while their
    ", "-joined text stays within ``limit`` characters; the first that does not fit ends the list."""
    chosen: list[str] = []
    for keyword in keywords:
        if len(", ".join([*chosen, keyword])) > limit:
            break
        chosen.append(keyword)
    return tuple(chosen)


def _keywords(function: Callable[..., Any]) -> frozenset[str]:
    """Keyword names ``function`` declares (not a catch-all ``**kwargs``)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds)


def _device(setting: str, mx: Any) -> Any:
    """The MLX device for the DEVICE setting; SettingsError if MLX lacks that device here."""
    if setting == "cpu" or (setting == "auto" and not mx.is_available(mx.gpu)):
        return mx.Device(mx.cpu, 0)
    if not mx.is_available(mx.gpu):
        raise SettingsError(f"DEVICE={setting} is not available to MLX on this machine; use DEVICE=cpu "
                            "or auto (MLX uses Metal on Apple Silicon and CUDA with mlx[cuda]).")
    index = int(setting.split(":", 1)[1]) if ":" in setting else 0
    if index >= mx.device_count(mx.gpu):
        raise SettingsError(f"DEVICE={setting}: MLX sees {mx.device_count(mx.gpu)} GPU(s).")
    return mx.Device(mx.gpu, index)


def _local_dir(model: str) -> Path:
    """A local directory holding ``model``: itself, its Hugging Face cache snapshot (with weights), or a
    download by mlx-audio (see rapl.backends.store.locate)."""
    return store.locate(SPECS["mlx"], model, download=_download, complete=_has_weights, logger=log)


fetch = _local_dir  # rapl.backends.fetch: the same way to the model as loading takes


def _download(model_id: str) -> Path:
    from mlx_audio.utils import get_model_path

    return get_model_path(model_id)


def _has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("*.npz"))


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _config_guess(model: str) -> dict[str, Any]:
    """The model's config.json if it is already on disk (a directory or the HF cache), else {}."""
    found = store.cached(SPECS["mlx"], model)
    return _read_config(Path(found.path)) if found is not None else {}


def _family_key(config: Mapping[str, Any], model: str, module: str = "") -> str:
    """The family: the mlx-audio package that config.json's model_type led the loader to.

    Before loading (``module`` empty) it is config.json's model_type with mlx-audio's aliases,
    else a table key found in the model's name.
    """
    parts = module.split(".")
    if len(parts) > 4 and parts[:3] == ["mlx_audio", "stt", "models"]:
        return parts[3]
    remap = {"vibevoice": "vibevoice_asr", "glm": "glmasr", "parakeet_tdt": "parakeet"}
    model_type = str(config.get("model_type") or "")
    if model_type:
        return remap.get(model_type, model_type)
    flat = re.sub(r"[^a-z0-9]", "", model.lower().rsplit("/", 1)[-1])
    return next((key for key in FAMILIES if key.replace("_", "") in flat), "")


def _segments(output: Any, duration: float, family: Family = DEFAULT_FAMILY) -> tuple[Segment, ...]:
    """RAPL segments from a generate() result: its timed segments, else one covering the audio."""
    raw = _field(output, "segments") or _field(output, "sentences") or []
    timed = [s for s in raw if _number(_field(s, "start")) is not None
             and _number(_field(s, "end")) is not None]
    if timed and len(timed) == len(raw):
        segments = (_segment(s, family) for s in timed)
        return tuple(s for s in segments if s.text)
    text = _clean(str(_field(output, "text") or ""))
    extra = _extra(raw[0], family) if len(raw) == 1 else {}
    return (Segment(start=0.0, end=duration, text=text, extra=extra),) if text else ()


def _segment(raw: Any, family: Family) -> Segment:
    words = tuple(w for w in (_word(x) for x in _field(raw, "words") or ()) if w is not None)
    tokens = _field(raw, "tokens")
    fields: dict[str, Any] = {}
    for key in ("temperature", "avg_logprob", "compression_ratio", "no_speech_prob"):
        value = _number(_field(raw, key))
        if value is not None:
            fields[key] = value
    ids = tuple(int(t) for t in tokens) if _all_ints(tokens) else ()
    return Segment(start=float(_field(raw, "start")), end=float(_field(raw, "end")),
                   text=_clean(str(_field(raw, "text") or "")), tokens=ids, words=words,
                   extra=_extra(raw, family), **fields)


def _word(raw: Any) -> Word | None:
    start, end = _number(_field(raw, "start")), _number(_field(raw, "end"))
    text = _field(raw, "word") or _field(raw, "text")
    if start is None or end is None or not isinstance(text, str):
        return None
    return Word(word=text, start=start, end=end, probability=_number(_field(raw, "probability")))


def _extra(raw: Any, family: Family) -> dict[str, Any]:
    """Scalar facts a segment carries beyond RAPL's fields (SenseVoice's emotion, event, ...).

    A segment's language becomes an ISO code, or is left out when the model names none we know.
    """
    if not isinstance(raw, Mapping):
        return {}
    extra = {k: v for k, v in raw.items()
             if k not in _SEGMENT_FIELDS and isinstance(v, (str, int, float, bool))}
    if "language" in extra:
        code = _code(extra.pop("language"), family)
        if code:
            extra["language"] = code
    if "event" in extra:  # mlx-audio SenseVoice: one raw tag name; RAPL reports a list, as FunASR does
        event = str(extra.pop("event"))
        extra["events"] = [richtext.EVENTS.get(event, event.lower())]
    if "emotion" in extra:  # "HAPPY" -> "happy"; "unk", "other" or unknown ids -> "unknown"
        extra["emotion"] = richtext.EMOTIONS.get(str(extra["emotion"]).upper(), "unknown")
    return extra


def _code(reported: Any, family: Family) -> str | None:
    """The first language a model reports (a name, a code or a list), as an ISO code, or None."""
    values: Iterable[Any] = reported if isinstance(reported, (list, tuple)) else [reported]
    by_value = {v.lower(): k for k, v in (family.languages or {}).items()}
    for value in values:
        if not isinstance(value, str):
            continue
        code = by_value.get(value.strip().lower()) or langs.normalize(value)
        if code in langs.NAMES:
            return code
    return None


def _clean(text: str) -> str:
    return _MARKUP.sub("", text).strip()


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return None
    return float(value)


def _all_ints(values: Any) -> bool:
    return isinstance(values, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in values)
