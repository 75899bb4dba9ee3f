"""The neutral result every backend returns and every response format is built from."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Word:
    """One timed word."""

    word: str
    start: float
    end: float
    probability: float | None = None


@dataclass(frozen=True)
class Segment:
    """One timed piece of text, with what the model knows of it."""

    start: float
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 1.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def shifted(self, offset: float) -> Segment:
        """This segment moved ``offset`` seconds later (words too)."""
        if not offset:
            return self
        words = tuple(replace(w, start=w.start + offset, end=w.end + offset) for w in self.words)
        return replace(self, start=self.start + offset, end=self.end + offset, words=words)


@dataclass(frozen=True)
class Options:
    """What the client asked for, in backend-neutral terms."""

    language: str | None = None  # ISO-639-1 code, or None for auto-detection
    prompt: str | None = None
    temperature: float | None = None
    word_timestamps: bool = False
    task: str = "transcribe"  # or "translate"


@dataclass(frozen=True)
class Transcription:
    """A whole transcription: text, detected language, duration and segments."""

    text: str
    language: str | None
    duration: float
    segments: tuple[Segment, ...] = ()
    task: str = "transcribe"

    @property
    def words(self) -> tuple[Word, ...]:
        """Every timed word of every segment, in order."""
        return tuple(w for s in self.segments for w in s.words)


def join_text(parts: list[str]) -> str:
    """Join segment texts: with spaces between words, without them between CJK characters."""
    out = ""
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if out and not (_is_cjk(out[-1]) and _is_cjk(part[0])):
            out += " "
        out += part
    return out


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return (0x3000 <= code <= 0x9FFF or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFAFF
            or 0xFF00 <= code <= 0xFFEF)
