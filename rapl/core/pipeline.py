"""One transcription job: plan chunks (VAD), run the backend on each, join with offsets."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from tqdm import tqdm

from ..audio.recording import duration
from ..audio.vad import RATE, Chunk
from ..backends import Backend, Capabilities
from ..errors import Unsupported
from ..transcript.transcription import Options, Segment, Transcription, clamp, cut_at

log = logging.getLogger(__name__)

MIN_UNHEARD = 0.8  # seconds of speech at a chunk's end with no words for it: decoded again (unheard_tail)
SNAP_OVERLAP = 0.2  # seconds a segment must overlap a stretch of speech for its ends to move to it
CONTEXT_SEGMENTS = 3  # segments of the chunk before that a long recording's next chunk goes on from
MIN_REST = 0.5  # seconds: less of a stretch after the last segment is its padding (the VAD's 0.2 s) and timing error
MAX_RETRIES = 2  # times a chunk's unheard end is decoded again
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


def _snapped(segment: Segment, speech: tuple[tuple[int, int], ...]) -> Segment:
    """``segment`` with its ends moved out of the pauses, to where the VAD heard speech: Whisper's
    timestamps often run a segment back to back with the one before, through the pause between them
    (by 0.5 to 1 s on the long-form corpus). Only stretches it overlaps by SNAP_OVERLAP count; words
    are kept inside it; a segment over no speech is kept as it is."""
    spans = [(a / RATE, b / RATE) for a, b in speech
             if min(b / RATE, segment.end) - max(a / RATE, segment.start) >= SNAP_OVERLAP]
    if not spans:
        return segment
    start, end = max(segment.start, spans[0][0]), min(segment.end, spans[-1][1])
    if end - start < 0.1 or (start, end) == (segment.start, segment.end):
        return segment
    words = tuple(replace(w, start=min(max(w.start, start), end), end=min(max(w.end, start), end))
                  for w in segment.words)
    return replace(segment, start=start, end=end, words=words)


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


def _at_pauses(segment: Segment, chunk: Chunk) -> list[Segment]:
    """``segment`` cut at the pauses between ``chunk``'s stretches of speech, between words (keeping its
    text, punctuation and tags as they are)."""
    timeline = [(a / RATE, b / RATE, i) for i, (a, b) in enumerate(chunk.speech)]
    return cut_at(segment, timeline) if segment.words and len(timeline) > 1 else [segment]


def _context(segments: list[Segment], language: str | None) -> tuple[int, ...]:
    """The tokens (timestamps included) of the last CONTEXT_SEGMENTS segments, for the next chunk to go on
    from, as the model's own library conditions each window on the text before it; none across a change
    of language (a German context would pull English speech towards German)."""
    recent = segments[-CONTEXT_SEGMENTS:]
    if not recent or (language is not None and any(s.language not in (None, language) for s in recent)):
        return ()
    return tuple(token for s in recent for token in s.tokens)


def unheard_tail(chunk: Chunk, heard_until: float | None) -> Chunk | None:
    """The end of ``chunk`` that the model gave no words for although the VAD heard speech there, as a
    chunk to decode again; None when there is less than MIN_UNHEARD seconds of such speech.

    Whisper decodes a chunk shorter than its 30 s window in one go, and may end it early: after
    JFK's 11 s a sentence that followed 1.2 s later in the same chunk was dropped (the model said
    end-of-text after JFK's last timestamp, and faster-whisper then moves past the whole window).
    ``heard_until``: where the chunk's last segment ends (recording seconds), None if it gave none.
    """
    until = chunk.start if heard_until is None else round(heard_until * RATE)
    missed = [(max(a, until), b) for a, b in chunk.stretches() if b - max(a, until) >= MIN_REST * RATE]
    if sum(b - a for a, b in missed) < MIN_UNHEARD * RATE or chunk.speech == ():
        return None
    log.info("no words for %.1f s of speech at the end of the chunk at %.1f s: decoding it again",
             sum(b - a for a, b in missed) / RATE, chunk.offset)
    return chunk.part(missed[0][0], chunk.end)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def run(backend: Backend, audio: np.ndarray, options: Options, chunks: list[Chunk], *,
        label: str = "transcribe", progress: bool = True,
        on_segment: Callable[[Segment], None] | None = None, retry: bool = False,
        pauses: bool = False) -> Transcription:
    """Transcribe each chunk of ``audio`` in order, advancing a tqdm bar by seconds of audio done.

    Returns one Transcription whose segment times are relative to the whole recording, each held
    inside its chunk and after the one before; ``on_segment`` sees each segment as it is placed.
    ``retry`` (long recordings): a chunk's end that got no words although the VAD heard speech
    there is decoded again (:func:`unheard_tail`). ``pauses`` (a model that gives one segment per
    chunk, sent a clip of several stretches of speech whole): each segment is cut at the pauses
    between the stretches, by its word times, so timed formats keep a segment per utterance.
    """
    total = duration(audio)
    started = time.perf_counter()
    segments: list[Segment] = []
    with tqdm(total=total, desc=label, bar_format=_BAR, disable=not progress, leave=False) as bar:
        def advance(to: float) -> None:
            bar.update(max(0.0, min(to, total) - bar.n))
            bar.set_postfix_str(f"RTF {(time.perf_counter() - started) / max(bar.n, 1e-6):.3f}", refresh=False)

        for planned in chunks:
            for part, language in by_language(backend, audio, planned, options):
                told = options if language is None else replace(options, language=language)
                chunk: Chunk | None = part
                for _ in range(MAX_RETRIES + 1):
                    if chunk is None:
                        break
                    heard = len(segments)
                    going_on = replace(told, context=_context(segments, language)) if retry else told
                    for segment in backend.transcribe(chunk.samples(audio), going_on):
                        after = segments[-1].end if segments else 0.0
                        placed = _snapped(_placed(segment, chunk), chunk.speech)
                        placed = clamp([placed], chunk.offset, chunk.end / RATE, after)[0]
                        for piece in _at_pauses(placed, chunk) if pauses else (placed,):
                            segments.append(piece)
                            if on_segment is not None:
                                on_segment(piece)
                        advance(placed.end)
                    chunk = unheard_tail(chunk, segments[-1].end if len(segments) > heard else None) if retry else None
            advance(planned.end / RATE)
        advance(total)
    elapsed = time.perf_counter() - started
    log.info("%s: %.1f s of audio (%d chunks) in %.2f s (RTF %.3f)", label, total, len(chunks), elapsed,
             elapsed / max(total, 1e-6))
    return Transcription.of(segments, total, options.task, options.language)
