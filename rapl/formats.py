"""Pure functions from a Transcription to each OpenAI response format."""

from __future__ import annotations

import math
from typing import Any

from .languages import name_of
from .transcription import Segment, Transcription

FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
CONTENT_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8",
    "vtt": "text/plain; charset=utf-8",
}


def ms(seconds: float) -> float:
    """Round a time to whole milliseconds (every timestamp passes through here)."""
    return round(seconds * 1000) / 1000


def usage(result: Transcription) -> dict[str, Any]:
    """OpenAI's duration-based usage block."""
    return {"type": "duration", "seconds": math.ceil(result.duration)}


def to_json(result: Transcription) -> dict[str, Any]:
    """``response_format=json``."""
    return {"text": result.text, "usage": usage(result)}


def to_text(result: Transcription) -> str:
    """``response_format=text``: the bare transcript."""
    return result.text


def to_verbose_json(result: Transcription, words: bool = False) -> dict[str, Any]:
    """``response_format=verbose_json``; ``words`` adds word timestamps."""
    body: dict[str, Any] = {
        "task": result.task,
        "language": name_of(result.language) or "unknown",
        "duration": ms(result.duration),
        "text": result.text,
        "segments": [_segment(i, s) for i, s in enumerate(timed_segments(result))],
        "usage": usage(result),
    }
    if words:
        body["words"] = [{"word": w.word, "start": ms(w.start), "end": ms(w.end)} for w in result.words]
    return body


def _segment(index: int, seg: Segment) -> dict[str, Any]:
    body = {
        "id": index,
        "seek": int(round(seg.start * 100)),  # Whisper's seek counts 10 ms frames
        "start": ms(seg.start),
        "end": ms(seg.end),
        "text": seg.text,
        "tokens": list(seg.tokens),
        "temperature": seg.temperature,
        "avg_logprob": seg.avg_logprob,
        "compression_ratio": seg.compression_ratio,
        "no_speech_prob": seg.no_speech_prob,
    }
    body.update(seg.extra)  # RAPL extensions, e.g. SenseVoice's emotion and events
    return body


def timed_segments(result: Transcription) -> tuple[Segment, ...]:
    """The segments, or one segment spanning the audio when the model gave none but text."""
    if result.segments:
        return result.segments
    if result.text:
        return (Segment(start=0.0, end=result.duration, text=result.text),)
    return ()


def _clock(seconds: float, separator: str) -> str:
    total = round(seconds * 1000)
    hours, rest = divmod(total, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(result: Transcription) -> str:
    """``response_format=srt``."""
    blocks = [f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
              for i, s in enumerate(timed_segments(result), start=1)]
    return "\n".join(blocks)


def to_vtt(result: Transcription) -> str:
    """``response_format=vtt``."""
    blocks = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n"
              for s in timed_segments(result)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def render(result: Transcription, response_format: str, words: bool = False) -> str | dict[str, Any]:
    """The body for ``response_format``: a dict for the JSON formats, else text."""
    if response_format == "json":
        return to_json(result)
    if response_format == "verbose_json":
        return to_verbose_json(result, words)
    return {"text": to_text, "srt": to_srt, "vtt": to_vtt}[response_format](result)
