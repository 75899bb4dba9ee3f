"""One transcription job: plan chunks (VAD), run the backend on each, join with offsets."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from tqdm import tqdm

from .backends import Backend, Capabilities
from .errors import Unsupported
from .recording import duration
from .transcription import Options, Segment, Transcription, clamp
from .vad import RATE, Chunk

log = logging.getLogger(__name__)

LANGUAGE_SURE = 0.5  # a stretch's language counts from this probability (Whisper's language token) up
_BAR = "{desc}: {percentage:3.0f}%|{bar:20}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}{postfix}]"


def check_options(caps: Capabilities, options: Options, model: str) -> None:
    """Reject what the loaded model (``model``: "the whisper model X") cannot do, naming the parameter.

    The one place a request is checked against the model's capabilities.
    """
    supported = ", ".join(sorted(caps.languages or ()))
    if options.language is not None and caps.languages is not None and options.language not in caps.languages:
        raise Unsupported(f"Language '{options.language}' is not supported by {model}. Supported: {supported} "
                          "(or omit it to detect).", param="language", code="unsupported_language")
    if options.task == "translate" and not caps.can_translate:
        raise Unsupported(f"{_cap(model)} cannot translate; use BACKEND=whisper with a multilingual model.",
                          param="model", code="translation_unsupported")
    unknown = [code for code in options.candidates if caps.languages is not None and code not in caps.languages]
    if unknown:
        raise Unsupported(f"languages has '{unknown[0]}', which {model} does not support. Supported: {supported}.",
                          param="languages", code="unsupported_language")
    refusals = (
        (options.candidates and not caps.can_detect_among, "languages", "unsupported_value",
         "detects among all its languages; send one language (or languages[] with one entry), or leave it out"),
        (options.keywords and not caps.can_bias, "keywords", "unsupported_value",
         "takes no vocabulary, so keywords cannot be honoured; leave them out or use a model with hotwords "
         "(see README)"),
        (options.logprobs and not caps.can_logprobs, "include", "unsupported_value",
         "reports no per-token log-probabilities; leave include[]=logprobs out"),
        (options.word_timestamps and not caps.can_time_words, "timestamp_granularities",
         "word_timestamps_unsupported", "cannot time words; ask for timestamp_granularities[]=segment"),
    )
    for refused, param, code, why in refusals:
        if refused:
            raise Unsupported(f"{_cap(model)} {why}.", param=param, code=code)


def _placed(segment: Segment, chunk: Chunk) -> Segment:
    """``segment`` (timed in the chunk's audio) timed in the recording: shifted, and where the chunk
    left pauses out, each time mapped back to its piece of speech."""
    if not chunk.pieces:
        return segment.shifted(chunk.offset)
    start, end = chunk.to_recording(segment.start), chunk.to_recording(segment.end, ending=True)
    words = tuple(replace(w, start=chunk.to_recording(w.start), end=chunk.to_recording(w.end, ending=True))
                  for w in segment.words)
    return replace(segment, start=start, end=max(start, end), words=words).shifted(chunk.offset)


def by_language(backend: Backend, audio: np.ndarray, chunk: Chunk, options: Options) -> list[tuple[Chunk, str | None]]:
    """``chunk`` as parts of one language each, and the language to decode each in (None: the model's
    own detection). Without a ``language`` from the request, a multilingual model that can tell the
    language of a stretch of speech (Whisper's ``language_of``) is asked for each stretch the VAD found
    in the chunk; a stretch it is unsure of (below LANGUAGE_SURE) goes with the one before it (or after);
    neighbours of one language stay together. A meeting that switches between English and Mandarin keeps
    each part in its own language and script."""
    language_of = getattr(backend, "language_of", None)
    stretches = chunk.stretches()
    if options.language or language_of is None or len(stretches) < 2:
        return [(chunk, None)]
    heard: list[str | None] = []
    for start, end in stretches:
        found = language_of(audio[start:end], options.candidates)
        if found is None:  # an English-only model: nothing to tell apart
            return [(chunk, None)]
        heard.append(found[0] if found[1] >= LANGUAGE_SURE else None)
    sure = [code for code in heard if code is not None]
    if not sure:
        return [(chunk, None)]
    parts: list[list[Any]] = []  # [start, end, language]
    current = sure[0]
    for (start, end), code in zip(stretches, heard, strict=True):
        current = code or current
        if parts and parts[-1][2] == current:
            parts[-1][1] = end
        else:
            parts.append([start, end, current])
    if len(parts) == 1:
        return [(chunk, parts[0][2])]
    log.debug("chunk at %.1f s holds %s", chunk.offset, ", ".join(f"{p[2]} from {p[0] / RATE:.1f} s" for p in parts))
    return [(chunk.part(start, end), language) for start, end, language in parts]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def run(backend: Backend, audio: np.ndarray, options: Options, chunks: list[Chunk], *,
        label: str = "transcribe", progress: bool = True,
        on_segment: Callable[[Segment], None] | None = None) -> Transcription:
    """Transcribe each chunk of ``audio`` in order, advancing a tqdm bar by seconds of audio done.

    Returns one Transcription whose segment times are relative to the whole recording, each held
    inside its chunk and after the one before; ``on_segment`` sees each segment as it is placed.
    """
    total = duration(audio)
    started = time.perf_counter()
    segments: list[Segment] = []
    with tqdm(total=total, desc=label, bar_format=_BAR, disable=not progress, leave=False) as bar:
        def advance(to: float) -> None:
            bar.update(max(0.0, min(to, total) - bar.n))
            bar.set_postfix_str(f"RTF {(time.perf_counter() - started) / max(bar.n, 1e-6):.3f}", refresh=False)

        for planned in chunks:
            for chunk, language in by_language(backend, audio, planned, options):
                told = options if language is None else replace(options, language=language)
                for segment in backend.transcribe(chunk.samples(audio), told):
                    after = segments[-1].end if segments else 0.0
                    placed = clamp([_placed(segment, chunk)], chunk.offset, chunk.end / RATE, after)[0]
                    segments.append(placed)
                    advance(placed.end)
                    if on_segment is not None:
                        on_segment(placed)
            advance(planned.end / RATE)
        advance(total)
    elapsed = time.perf_counter() - started
    log.info("%s: %.1f s of audio (%d chunks) in %.2f s (RTF %.3f)", label, total, len(chunks), elapsed,
             elapsed / max(total, 1e-6))
    return Transcription.of(segments, total, options.task, options.language)
