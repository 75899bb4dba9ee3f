"""faster-whisper (CTranslate2) backend: Whisper models, int8 on CPU by default."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.recording import SAMPLE_RATE
from ..catalog import SPECS
from ..settings import Settings
from ..transcript.transcription import Options, Segment, TokenLogprob, Word
from . import Capabilities, cpu_threads, store, warm_up_noise

log = logging.getLogger(__name__)

_TEMPERATURE_STEP = 0.2  # Whisper's temperature increment on fallback
_MAX_LENGTH = 448  # tokens Whisper's decoder reads: half of it (less one) is the prompt's
_HOP = SAMPLE_RATE // 100  # samples per feature frame (10 ms)
_WINDOW_FRAMES = 3000  # Whisper's encoder window: 30 s of 10 ms feature frames
_DRAFT_PAD_FRAMES = 100  # a live draft's encoder input: its audio, then at least 1 s of silence ...
_DRAFT_MIN_FRAMES = 800  # ... and at least 8 s in all (shorter inputs loop: "and so and so and so")
_DRAFT_TOKENS = (10, 6)  # a draft's text at most: 10 tokens, and 6 more per second of audio
_DRAFT_BEAM = 1  # a draft is one greedy pass


class WhisperBackend:
    """Whisper through faster-whisper."""

    name = "whisper"
    hub = SPECS["whisper"].hub

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = settings.model
        self._model: Any = None

    def load(self) -> Capabilities:
        """Load from a local directory or the Hugging Face cache (downloading if absent), then warm up."""
        from faster_whisper import WhisperModel

        device, index = _device(self.settings.DEVICE)
        compute_type = self.settings.WHISPER_COMPUTE_TYPE
        if compute_type == "default":
            compute_type = "int8" if device == "cpu" else "float16"
        kwargs = {"device": device, "device_index": index, "compute_type": compute_type,
                  "cpu_threads": cpu_threads(self.settings)}
        started = time.perf_counter()
        path = fetch(self.model)
        self._model = WhisperModel(str(path), **kwargs)
        log.info("loaded whisper model %s on %s (%s) in %.1f s", self.model, device, compute_type,
                 time.perf_counter() - started)
        self._warm_up()
        multilingual = self._model.model.is_multilingual
        return Capabilities(languages=frozenset(_model_codes()) if multilingual else frozenset({"en"}),
                            can_translate=multilingual, can_time_words=True, segments_audio=True,
                            can_bias=True,  # keywords[] become faster-whisper's hotwords
                            can_detect_among=True,  # languages[]: detection among the given languages
                            can_logprobs=True,  # include[]=logprobs: each text token scored by the model
                            tells_languages=multilingual)  # language_of: an encoder pass per stretch

    def unload(self) -> None:
        """Drop the CTranslate2 model."""
        self._model = None

    def _warm_up(self) -> None:
        started = time.perf_counter()
        segments, _ = self._model.transcribe(warm_up_noise(), language="en", beam_size=1, without_timestamps=True)
        list(segments)
        log.info("warm-up took %.2f s", time.perf_counter() - started)

    def transcribe(self, audio: np.ndarray, options: Options) -> Iterator[Segment]:
        """Transcribe (or translate) with faster-whisper, one Segment per Whisper segment."""
        if options.draft and len(audio) + _DRAFT_PAD_FRAMES * _HOP < _WINDOW_FRAMES * _HOP:
            yield self._draft(audio, options)
            return
        language = options.language or self._detect_among(audio, options.candidates)
        text, hotwords = self.fit_prompt(options.prompt, options.keywords)
        prompt: str | list[int] | None = text
        if text is None and options.context:  # the chunk before's tokens, timestamps and all
            prompt = list(options.context)
        pieces, info = self._model.transcribe(
            audio, language=language, task=options.task, initial_prompt=prompt, hotwords=hotwords,
            temperature=(options.temperature or 0.0,) if options.draft else temperatures(options.temperature),
            word_timestamps=options.word_timestamps, without_timestamps=options.draft, vad_filter=False,
        )
        language = language or info.language
        for piece in pieces:
            segment = replace(_segment(piece), language=language)
            if options.logprobs:
                segment = self._with_logprobs(audio, segment, language, options.task)
            yield segment

    def language_of(self, audio: np.ndarray, candidates: tuple[str, ...] = ()) -> tuple[str, float] | None:
        """The language of one stretch of speech (among ``candidates`` if given) and its probability, from
        an encoder pass over it alone, as a draft's (a few seconds of speech cost a fraction of a 30 s
        window); None for an English-only model (rapl.core.pipeline.by_language)."""
        if not self._model.model.is_multilingual:
            return None
        probability = self._language_scores(self._encode_short(audio))
        code = max(candidates or tuple(probability), key=lambda c: probability.get(c, 0.0))
        return code, probability.get(code, 0.0)

    def _encode_short(self, audio: np.ndarray) -> Any:
        """The encoder's output for ``audio`` and at least a second of silence (8 s at least, 30 s at most)."""
        model = self._model
        frames = min(_WINDOW_FRAMES, max(_DRAFT_MIN_FRAMES, len(audio) // _HOP + _DRAFT_PAD_FRAMES))
        frames += frames % 2  # the encoder's convolution halves the frames
        features = model.feature_extractor(audio[:frames * _HOP], padding=max(0, frames * _HOP - len(audio)))
        return model.encode(features[:, :frames])

    def _draft(self, audio: np.ndarray, options: Options) -> Segment:
        """A live partial decode in one greedy pass, its encoder fed the audio and a second of silence
        rather than Whisper's whole 30 s window (as whisper.cpp's ``audio_ctx`` does): 3 s of speech
        costs a tenth of the encoder's time, so a turn is decoded again every few hundred milliseconds
        and several sessions share one model thread. Drafts only: a final is decoded over the full window."""
        from faster_whisper.tokenizer import Tokenizer

        model = self._model
        encoded = self._encode_short(audio)
        language = options.language or self._draft_language(encoded, options.candidates)
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=options.task, language=language)
        prompt, hotwords = self.fit_prompt(options.prompt, options.keywords)
        previous = tokenizer.encode(" " + prompt.strip()) if prompt else []
        sequence = model.get_prompt(tokenizer, previous, without_timestamps=True, hotwords=hotwords)
        budget = _DRAFT_TOKENS[0] + int(_DRAFT_TOKENS[1] * len(audio) / SAMPLE_RATE)
        (result,) = model.model.generate(encoded, [sequence], beam_size=_DRAFT_BEAM, max_length=len(sequence) + budget,
                                         suppress_blank=True, suppress_tokens=[-1])
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        text = trim_loop(tokenizer.decode(tokens).strip())
        return Segment(start=0.0, end=len(audio) / SAMPLE_RATE, text=text, tokens=tuple(tokens), language=language)

    def _draft_language(self, encoded: Any, candidates: tuple[str, ...]) -> str | None:
        """The language of a draft's audio, from its own encoder output (among ``candidates`` if given)."""
        if not self._model.model.is_multilingual:
            return "en"
        probability = self._language_scores(encoded)
        return max(candidates or tuple(probability), key=lambda code: probability.get(code, 0.0))

    def _language_scores(self, encoded: Any) -> dict[str, float]:
        """Each language's probability for encoded audio (Whisper's language tokens, ``<|en|>`` → ``en``)."""
        (scores,) = self._model.model.detect_language(encoded)
        return {token[2:-2]: p for token, p in scores}

    def fit_prompt(self, prompt: str | None, keywords: tuple[str, ...]) -> tuple[str | None, str | None]:
        """The initial prompt and hotwords that fit the decoder's prompt budget together (see :func:`fit_prompt`)."""
        hf = self._model.hf_tokenizer
        budget = getattr(self._model, "max_length", _MAX_LENGTH) // 2 - 1
        return fit_prompt(prompt, keywords, lambda text: hf.encode(text, add_special_tokens=False).ids,
                          hf.decode, budget)

    def _with_logprobs(self, audio: np.ndarray, segment: Segment, language: str, task: str) -> Segment:
        """``segment`` with the log-probability of each of its text tokens, scored by the model itself
        (teacher-forced on the segment's audio through CTranslate2's alignment pass)."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

        model = self._model
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=task, language=language)
        tokens = [t for t in segment.tokens if t < tokenizer.eot]  # text, not timestamps
        if not tokens:
            return segment
        start = int(segment.start * SAMPLE_RATE)
        features = model.feature_extractor(audio[start:start + model.feature_extractor.n_samples])
        frames = min(features.shape[-1], model.feature_extractor.nb_max_frames)
        encoded = model.encode(pad_or_trim(features))
        (aligned,) = model.model.align(encoded, tokenizer.sot_sequence, [tokens], frames)
        logprobs = tuple(TokenLogprob(tokenizer.decode([token]), math.log(max(probability, 1e-12)))
                         for token, probability in zip(tokens, aligned.text_token_probs, strict=False))
        return replace(segment, logprobs=logprobs)

    def _detect_among(self, audio: np.ndarray, candidates: tuple[str, ...]) -> str | None:
        """The most likely of ``candidates`` (OpenAI's languages[]); None when any may be detected."""
        if not candidates:
            return None
        _, _, scores = self._model.detect_language(audio)
        probability = dict(scores)
        return max(candidates, key=lambda code: probability.get(code, 0.0))


def fit_prompt(prompt: str | None, keywords: tuple[str, ...], encode: Callable[[str], list[int]],
               decode: Callable[[list[int]], str], budget: int) -> tuple[str | None, str | None]:
    """The prompt and the hotwords (keywords joined by spaces) that share ``budget`` tokens.

    Whisper's decoder reads at most 448 tokens, prompt and transcript together, and gives the
    prompt half (223): faster-whisper took up to that many of hotwords and as many again of
    prompt and of the text already transcribed, which left the transcript no room (100 keywords
    of 100 characters took 20 s and garbled it). So the keywords get at most half of ``budget``
    (111 of 223 tokens): they are taken in order (the request's, then VOCABULARY_FILE's) while
    they fit, and the first that does not fit ends the list. The prompt gets what they leave,
    keeping its end (its last tokens, as Whisper does): the words nearest the audio matter most.
    Tokens are counted as faster-whisper encodes them: " " + the text.
    """
    chosen: list[str] = []
    used = 0
    for keyword in keywords:
        tokens = len(encode(" " + " ".join([*chosen, keyword])))
        if tokens > budget // 2:
            break
        chosen.append(keyword)
        used = tokens
    return _tail(prompt, budget - used, encode, decode), " ".join(chosen) or None


def _tail(prompt: str | None, room: int, encode: Callable[[str], list[int]],
          decode: Callable[[list[int]], str]) -> str | None:
    """The end of ``prompt`` that encodes to at most ``room`` tokens (all of it when it fits)."""
    if not prompt or not prompt.strip():
        return None
    tokens = encode(" " + prompt.strip())
    keep = min(len(tokens), room)
    while keep > 0:
        text = decode(tokens[len(tokens) - keep:]).strip() if keep < len(tokens) else prompt
        if len(encode(" " + text.strip())) <= room:
            return text or None
        keep -= 1
    return None


def trim_loop(text: str) -> str:
    """``text`` up to where it starts repeating itself: a run of two or more words said again at once,
    or one word three times in a row (greedy decoding of cut-off audio loops; speech hardly does)."""
    words = text.split()
    bare = [w.strip(".,!?;:").lower() for w in words]
    for start in range(len(words)):
        for size in range(1, (len(words) - start) // 2 + 1):
            if bare[start:start + size] != bare[start + size:start + 2 * size]:
                continue
            if size > 1 or bare[start + 2:start + 3] == bare[start:start + 1]:
                return " ".join(words[:start + size]).rstrip(",;:")
    return text


def temperatures(temperature: float | None) -> tuple[float, ...]:
    """The temperatures faster-whisper tries in turn: from the client's value up to 1.0 in steps
    of 0.2, raised whenever decoding fails its checks (OpenAI: 0 means start at 0, raise on failure)."""
    start = 0.0 if temperature is None else temperature
    return tuple(round(float(t), 2) for t in np.arange(start, 1.0 + 1e-6, _TEMPERATURE_STEP)) or (start,)


def _segment(piece: Any) -> Segment:
    words = tuple(Word(w.word.strip(), w.start, w.end, w.probability) for w in (piece.words or ()))
    return Segment(start=piece.start, end=piece.end, text=piece.text.strip(), tokens=tuple(piece.tokens),
                   temperature=piece.temperature or 0.0, avg_logprob=piece.avg_logprob,
                   compression_ratio=piece.compression_ratio, no_speech_prob=piece.no_speech_prob,
                   words=words)


def fetch(model: str) -> Path:
    """A local directory for ``model``: itself, its Hugging Face cache, or faster-whisper's download
    (rapl.backends.store)."""
    return store.locate(SPECS["whisper"], model, download=_download, logger=log)


def _download(model_id: str) -> str:
    """faster-whisper's own download: its short names, only the files it loads."""
    from faster_whisper import download_model

    return download_model(model_id)


def _model_codes() -> tuple[str, ...]:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return tuple(_LANGUAGE_CODES)


def _device(setting: str) -> tuple[str, int]:
    """CTranslate2's device and index for DEVICE (it has no Metal backend: mps runs on CPU)."""
    if setting in ("auto", "mps"):
        import ctranslate2

        return ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"), 0
    device, _, index = setting.partition(":")
    return device, int(index or 0)
