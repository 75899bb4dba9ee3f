"""FunASR backend: SenseVoiceSmall, Paraformer, Fun-ASR-Nano and other FunASR ASR models.

Everything that differs between model families lives in :data:`FAMILIES`, keyed by the
``model:`` class name in the model's ``config.yaml``; the code below only reads it.
FunASR and torch are imported in :meth:`SenseVoiceBackend.load`, never before. What
``generate`` returns (word times, the reported language) is read in rapl.backends.funasr_results.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.recording import SAMPLE_RATE
from ..catalog import SPECS
from ..settings import Settings
from ..transcript import richtext
from ..transcript.text import join_text
from ..transcript.transcription import Options, Segment
from . import Capabilities, cpu_threads, store, warm_up_noise
from .funasr_results import HAN, result_language, timed_words

log = logging.getLogger(__name__)

PUNC_MODEL = "iic/punc_ct-transformer_cn-en-common-vocab471067-large"  # FunASR's "ct-punc"
MAX_HOTWORDS = 50


@dataclass(frozen=True)
class Family:
    """What RAPL needs to know about one FunASR model class."""

    languages: Mapping[str, str] | None = None  # ISO code -> generate(language=...); None: any code
    language_arg: str | None = "language"  # keyword for the language; None: not settable
    auto_language: str | None = None  # the language value that asks for detection
    rich_tags: bool = False  # writes SenseVoice <|lang|><|EMO|><|Event|><|itn|> tags
    itn_arg: str | None = None  # keyword that takes the USE_ITN setting
    needs_punctuation: bool = False  # writes no punctuation: add ct-punc when USE_ITN is on
    timestamps: bool = False  # times its tokens when asked with output_timestamp=True
    hotword_arg: str | None = None  # keyword the request's prompt goes to, as hotwords
    hotwords_as_list: bool = False  # that keyword takes a list, not a space-separated string
    script_language: bool = False  # zh/en model: tell the language from the script
    generate_kwargs: Mapping[str, Any] = field(default_factory=dict)  # always passed


def _same(codes: str) -> dict[str, str]:
    return {code: code for code in codes.split()}


_PARAFORMER = Family(languages=_same("zh en"), language_arg=None, needs_punctuation=True,
                     timestamps=True, script_language=True)

# The one table of model differences, keyed by config.yaml's `model:` (the FunASR class).
FAMILIES: dict[str, Family] = {
    "SenseVoiceSmall": Family(languages=_same("zh en yue ja ko"), auto_language="auto",
                              rich_tags=True, itn_arg="use_itn", timestamps=True),
    "Paraformer": _PARAFORMER,
    "BiCifParaformer": _PARAFORMER,
    "SeacoParaformer": replace(_PARAFORMER, hotword_arg="hotword"),
    "ContextualParaformer": replace(_PARAFORMER, hotword_arg="hotword"),
    "FunASRNano": Family(languages={"zh": "中文", "en": "英文", "ja": "日文"}, itn_arg="itn",
                         timestamps=True, hotword_arg="hotwords", hotwords_as_list=True),
}
DEFAULT_FAMILY = Family()


class SenseVoiceBackend:
    """Any FunASR speech-recognition model, run in-process through ``funasr.AutoModel``."""

    name = "sensevoice"
    hub = SPECS["sensevoice"].hub
    can_translate = False
    segments_audio = False  # one segment per chunk: RAPL's VAD does the splitting
    can_detect_among = False
    can_logprobs = False

    def __init__(self, settings: Settings) -> None:
        """Remember the settings; nothing is imported or loaded yet."""
        self.settings = settings
        self.model = settings.model
        self.model_class: str | None = None
        self.family = DEFAULT_FAMILY
        self._auto: Any = None
        self._torch: Any = None
        self._punctuation = False
        local = Path(self.model).expanduser()
        if (local / "config.yaml").is_file():
            self._set_family(read_model_class(local))

    @property
    def capabilities(self) -> Capabilities:
        """What this model family can do (known from config.yaml; load() settles it)."""
        family = self.family
        return Capabilities(languages=frozenset(family.languages) if family.languages is not None else None,
                            can_time_words=family.timestamps,
                            can_bias=family.hotword_arg is not None)  # keywords[] and the prompt's words: hotwords

    # -- loading ---------------------------------------------------------------------

    def load(self) -> Capabilities:
        """Find the model (local dir or ModelScope cache, else download), load, warm up."""
        import torch
        from funasr import AutoModel

        self._torch = torch
        started = time.perf_counter()
        path = resolve_model(self.model)
        self._set_family(read_model_class(Path(path)))
        device = pick_device(self.settings.DEVICE, torch)
        threads = cpu_threads(self.settings)
        torch.set_num_threads(threads)
        kwargs: dict[str, Any] = {
            "model": path, "device": device, "ncpu": threads, "disable_update": True,
            "disable_pbar": True, "disable_log": True, "log_level": self.settings.LOG_LEVEL,
        }
        punc = self._punctuation_model()
        if punc:
            kwargs["punc_model"] = punc
        self._punctuation = bool(punc)
        self._auto = AutoModel(**kwargs)
        self._set_family(str(self._auto.kwargs.get("model") or self.model_class or "") or None)
        log.info("loaded %s (%s) on %s with %d threads in %.1f s", self.model,
                 self.model_class, device, threads, time.perf_counter() - started)
        self._warm_up()
        return self.capabilities

    def _set_family(self, model_class: str | None) -> None:
        if model_class and model_class not in FAMILIES and model_class != self.model_class:
            log.warning("FunASR model class %s is not in RAPL's table: serving it without "
                        "language, tag, timestamp or hotword support", model_class)
        self.model_class = model_class
        self.family = FAMILIES.get(model_class or "", DEFAULT_FAMILY)

    def _punctuation_model(self) -> str | None:
        """ct-punc for families that write no punctuation, when USE_ITN is on.

        Taken from the ModelScope cache; downloaded only when the model itself comes
        from the hub, so a local model directory never makes RAPL go online.
        """
        if not (self.family.needs_punctuation and self.settings.USE_ITN):
            return None
        cached = cached_modelscope(PUNC_MODEL)
        if cached:
            return cached
        if Path(self.model).expanduser().is_dir():
            log.warning("%s writes no punctuation and %s is not in the ModelScope cache: "
                        "the text will have none", self.model_class, PUNC_MODEL)
            return None
        try:
            return resolve_model(PUNC_MODEL)
        except Exception as exc:  # noqa: BLE001 - punctuation is optional
            log.warning("could not get punctuation model %s: %s", PUNC_MODEL, exc)
            return None

    def unload(self) -> None:
        """Drop the FunASR model."""
        self._auto = None

    def _warm_up(self) -> None:
        started = time.perf_counter()
        self._generate(warm_up_noise(), self.generate_kwargs(Options()))
        log.info("warm-up took %.2f s", time.perf_counter() - started)

    # -- transcription ---------------------------------------------------------------

    def transcribe(self, audio: np.ndarray, options: Options) -> Iterator[Segment]:
        """Transcribe 16 kHz mono float32 audio as one segment (none when it holds no words)."""
        if self._auto is None:
            raise RuntimeError("SenseVoiceBackend.transcribe called before load()")
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        duration = len(audio) / SAMPLE_RATE
        words_wanted = options.word_timestamps and self.family.timestamps
        result = self._run(audio, self.generate_kwargs(options, words_wanted), words_wanted)
        segment, language = self._segment(result, duration, words_wanted)
        if segment.text:
            yield replace(segment, language=language or options.language or self._script_language(segment.text))

    def generate_kwargs(self, options: Options, words: bool = False) -> dict[str, Any]:
        """The keyword arguments ``AutoModel.generate`` gets for ``options``."""
        family = self.family
        kwargs = dict(family.generate_kwargs)
        language = (family.auto_language if options.language is None
                    else (family.languages or {}).get(options.language))
        if family.language_arg and language is not None:
            kwargs[family.language_arg] = language
        if family.itn_arg:
            kwargs[family.itn_arg] = self.settings.USE_ITN
        hotwords = choose_hotwords(options.keywords, options.prompt) if family.hotword_arg else []
        if family.hotword_arg and hotwords:
            kwargs[family.hotword_arg] = hotwords if family.hotwords_as_list else " ".join(hotwords)
        if words:
            kwargs["output_timestamp"] = True
        if self._punctuation:
            kwargs["return_raw_text"] = True
        return kwargs

    def _run(self, audio: np.ndarray, kwargs: dict[str, Any], words: bool) -> dict[str, Any]:
        if audio.size == 0:
            return {"text": ""}
        try:
            return self._generate(audio, kwargs)
        except Exception:
            if not words:
                raise
            # FunASR's timestamp code fails on some outputs (e.g. SenseVoice words that
            # re-tokenise differently): keep the text, drop the word times.
            log.warning("FunASR failed to time words; transcribing without them", exc_info=True)
            kwargs = {k: v for k, v in kwargs.items() if k != "output_timestamp"}
            return self._generate(audio, kwargs)

    def _generate(self, audio: np.ndarray, kwargs: dict[str, Any]) -> dict[str, Any]:
        with self._torch.inference_mode():
            results = self._auto.generate(input=audio, **kwargs)
        return results[0] if results else {"text": ""}

    def _segment(self, result: dict[str, Any], duration: float,
                 words_wanted: bool) -> tuple[Segment, str | None]:
        raw = str(result.get("text") or "")
        extra: dict[str, Any] = {}
        language = result_language(result)
        no_speech = 0.0
        if self.family.rich_tags:
            groups = richtext.parse(raw)
            summary = richtext.merge(groups)
            text = richtext.render(groups, self.settings.RICH_TEXT)
            language = summary.language or language
            extra = {"emotion": summary.emotion, "events": list(summary.events)}
            no_speech = 1.0 if summary.no_speech and not summary.text else 0.0
        else:  # Paraformer spaces out Chinese characters when it times them: undo that
            text = join_text(richtext.strip_tags(raw).split())
        words = tuple(replace(w, start=min(w.start, duration), end=min(w.end, duration))
                      for w in (timed_words(result) if words_wanted else ())
                      if not w.word.startswith("<|"))  # SenseVoice times its tags too
        segment = Segment(start=0.0, end=duration, text=text, words=words, extra=extra,
                          no_speech_prob=no_speech)
        return segment, language

    def _script_language(self, text: str) -> str | None:
        """zh if the text has Chinese characters, else en (for zh/en models only)."""
        if not (self.family.script_language and text.strip()):
            return None
        return "zh" if HAN.search(text) else "en"


# -- helpers -----------------------------------------------------------------------------

_MODEL_LINE = re.compile(r"^model:\s*['\"]?([\w./-]+)", re.MULTILINE)


def read_model_class(path: Path) -> str | None:
    """The ``model:`` class name in ``path/config.yaml``, or None if there is none."""
    try:
        text = (path / "config.yaml").read_text(encoding="utf-8")
    except OSError:
        return None
    match = _MODEL_LINE.search(text)
    return match.group(1) if match else None


def cached_modelscope(model_id: str) -> str | None:
    """The local directory of ``model_id`` in the ModelScope cache, without network (see rapl.backends.store)."""
    found = store.cached(SPECS["sensevoice"], model_id)
    return found.path if found is not None else None


def resolve_model(model: str) -> str:
    """A local directory for ``model``: itself, its ModelScope cache, or a fresh download (rapl.backends.store).

    ``model`` is a directory, a ModelScope id (``iic/SenseVoiceSmall``) or one of FunASR's
    short names (``paraformer-zh``).
    """
    return str(store.locate(SPECS["sensevoice"], model, logger=log))


def fetch(model: str) -> Path:
    """A local directory for ``model`` (rapl.backends.fetch): see :func:`resolve_model`."""
    return Path(resolve_model(model))


def pick_device(setting: str, torch: Any) -> str:
    """DEVICE=auto -> cuda if available, else mps if available, else cpu."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


_HOTWORD_SPLIT = re.compile(r"[\s,;，；、。]+")
_HOTWORD_STRIP = "\"'.:!?()[]{}“”‘’《》「」"


def choose_hotwords(keywords: tuple[str, ...], prompt: str | None) -> list[str]:
    """The hotwords a request gives: its keywords in order (the request's, then VOCABULARY_FILE's),
    then the prompt's words, de-duplicated, at most MAX_HOTWORDS; none names a URL or a file."""
    kept = [k for k in keywords if _harmless(k.strip(_HOTWORD_STRIP))]
    return list(dict.fromkeys(kept + hotwords_from_prompt(prompt)))[:MAX_HOTWORDS]


def _harmless(word: str) -> bool:
    """Not something FunASR would fetch or read: no ``http...``, no ``*.txt``, no path."""
    lower = word.lower()
    return bool(word) and not lower.startswith("http") and not lower.endswith(".txt") and "/" not in word


def hotwords_from_prompt(prompt: str | None) -> list[str]:
    """Hotwords from a prompt: its words, de-duplicated, at most MAX_HOTWORDS.

    Words FunASR would treat as a URL or a file (``http...``, ``*.txt``) are dropped, so
    a prompt can never make the server fetch or read anything.
    """
    if not prompt:
        return []
    words = [w.strip(_HOTWORD_STRIP) for w in _HOTWORD_SPLIT.split(prompt)]
    return list(dict.fromkeys(w for w in words if _harmless(w)))[:MAX_HOTWORDS]
