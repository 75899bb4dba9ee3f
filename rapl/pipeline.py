"""One transcription job: plan chunks (VAD), run the backend on each, join with offsets."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from .audio import duration
from .backends import Backend
from .errors import APIError
from .text import join_text
from .transcription import Options, Segment, Transcription, clamp
from .vad import RATE, Chunk

log = logging.getLogger(__name__)

_BAR = "{desc}: {percentage:3.0f}%|{bar:20}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}{postfix}]"


def check_options(backend: Backend, options: Options) -> None:
    """Reject what the loaded backend cannot do, naming the parameter."""
    if options.language is not None and backend.languages is not None \
            and options.language not in backend.languages:
        codes = ", ".join(sorted(backend.languages))
        raise APIError(f"Language '{options.language}' is not supported by the {backend.name} model "
                       f"{backend.model}. Supported: {codes} (or omit it to detect).", 400,
                       param="language", code="unsupported_language")
    if options.task == "translate" and not backend.can_translate:
        raise APIError(f"The {backend.name} backend (model {backend.model}) cannot translate; "
                       "use BACKEND=whisper with a multilingual model.", 400, param="model",
                       code="translation_unsupported")
    unknown = [code for code in options.candidates if backend.languages is not None and code not in backend.languages]
    if unknown:
        raise APIError(f"languages has '{unknown[0]}', which the {backend.name} model {backend.model} does not "
                       f"support. Supported: {', '.join(sorted(backend.languages or ()))}.", 400,
                       param="languages", code="unsupported_language")
    if options.candidates and not backend.can_detect_among:
        raise APIError(f"The {backend.name} backend (model {backend.model}) detects among all its languages; "
                       "send one language (or languages[] with one entry), or leave it out.", 400,
                       param="languages", code="unsupported_value")
    if options.keywords and not backend.can_bias:
        raise APIError(f"The {backend.name} model {backend.model} takes no vocabulary, so keywords cannot be "
                       "honoured; leave them out or use a model with hotwords (see README).", 400,
                       param="keywords", code="unsupported_value")
    if options.logprobs and not backend.can_logprobs:
        raise APIError(f"The {backend.name} backend (model {backend.model}) reports no per-token "
                       "log-probabilities; leave include[]=logprobs out.", 400, param="include",
                       code="unsupported_value")
    if options.word_timestamps and not backend.can_time_words:
        raise APIError(f"The {backend.name} backend (model {backend.model}) cannot time words; "
                       "ask for timestamp_granularities[]=segment.", 400,
                       param="timestamp_granularities", code="word_timestamps_unsupported")


def run(backend: Backend, audio: np.ndarray, options: Options, chunks: list[Chunk], *,
        label: str = "transcribe", progress: bool = True,
        on_segment: Callable[[Segment], None] | None = None) -> Transcription:
    """Transcribe each chunk of ``audio`` in order, advancing a tqdm bar by seconds of audio done.

    Returns one Transcription whose segment times are relative to the whole recording.
    """
    check_options(backend, options)
    total = duration(audio)
    started = time.perf_counter()
    segments: list[Segment] = []
    language = options.language
    with tqdm(total=total, desc=label, bar_format=_BAR, disable=not progress, leave=False) as bar:
        def advance(to: float) -> None:
            bar.update(max(0.0, min(to, total) - bar.n))
            bar.set_postfix_str(f"RTF {(time.perf_counter() - started) / max(bar.n, 1e-6):.3f}", refresh=False)

        for chunk in chunks:
            def segment_done(segment: Segment, chunk: Chunk = chunk) -> None:
                after = segments[-1].end if segments else 0.0
                placed = clamp([segment.shifted(chunk.offset)], chunk.offset, chunk.end / RATE, after)[0]
                segments.append(placed)
                advance(placed.end)
                if on_segment is not None:
                    on_segment(placed)

            part = backend.transcribe(audio[chunk.start:chunk.end], options, segment_done)
            language = language or part.language
            advance(chunk.end / RATE)
        advance(total)
    elapsed = time.perf_counter() - started
    log.info("%s: %.1f s of audio (%d chunks) in %.2f s (RTF %.3f)", label, total, len(chunks), elapsed,
             elapsed / max(total, 1e-6))
    return Transcription(text=join_text([s.text for s in segments]), language=language, duration=total,
                         segments=tuple(segments), task=options.task)
