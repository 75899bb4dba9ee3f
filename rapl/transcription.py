"""The neutral result every backend returns and every response format is built from."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .text import join_text


@dataclass(frozen=True)
class Word:
    """One timed word."""

    word: str
    start: float
    end: float
    probability: float | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token and the model's log-probability of it."""

    token: str
    logprob: float


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
    logprobs: tuple[TokenLogprob, ...] = ()  # only when asked for (include[]=logprobs)
    language: str | None = None  # the language the model heard (ISO code), where it says

    def shifted(self, offset: float) -> Segment:
        """This segment moved ``offset`` seconds later (words too)."""
        if not offset:
            return self
        words = tuple(replace(w, start=w.start + offset, end=w.end + offset) for w in self.words)
        return replace(self, start=self.start + offset, end=self.end + offset, words=words)


@dataclass(frozen=True)
class VadOptions:
    """A request's own voice-activity settings (OpenAI's server_vad chunking strategy); None: the server's."""

    threshold: float | None = None  # speech probability, 0 to 1
    padding_ms: int | None = None  # audio kept before (and after) each stretch of speech
    min_silence_ms: int | None = None  # shortest pause that ends a stretch of speech


@dataclass(frozen=True)
class Options:
    """What the client asked for, in backend-neutral terms."""

    language: str | None = None  # ISO-639-1 code, or None for auto-detection
    prompt: str | None = None
    temperature: float | None = None  # None: the backend's default; 0: start at 0, raise on failure
    word_timestamps: bool = False
    task: str = "transcribe"  # or "translate"
    keywords: tuple[str, ...] = ()  # terms to favour (OpenAI's keywords[])
    candidates: tuple[str, ...] = ()  # detect only among these languages (OpenAI's languages[])
    vad: VadOptions | None = None  # chunking_strategy=server_vad
    logprobs: bool = False  # per-token log-probabilities (include[]=logprobs)
    draft: bool = False  # a live partial decode: one quick pass (Whisper: greedy, no fallback, no timestamps)
    context: tuple[int, ...] = ()  # the tokens of what came just before (long-form: the last chunk's segments)


@dataclass(frozen=True)
class Transcription:
    """A whole transcription: text, detected language, duration and segments."""

    text: str
    language: str | None
    duration: float
    segments: tuple[Segment, ...] = ()
    task: str = "transcribe"

    @classmethod
    def of(cls, segments: list[Segment] | tuple[Segment, ...], duration: float, task: str = "transcribe",
           language: str | None = None) -> Transcription:
        """Segments as one result: their texts joined, the language asked for or the first one heard."""
        language = language or next((s.language for s in segments if s.language), None)
        return cls(text=join_text([s.text for s in segments]), language=language, duration=duration,
                   segments=tuple(segments), task=task)

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages heard, in order of appearance (each segment's, else the result's)."""
        heard = tuple(dict.fromkeys(s.language for s in self.segments if s.language))
        return heard or ((self.language,) if self.language else ())

    @property
    def words(self) -> tuple[Word, ...]:
        """Every timed word of every segment, in order."""
        return tuple(w for s in self.segments for w in s.words)

    @property
    def logprobs(self) -> tuple[TokenLogprob, ...]:
        """Every token's log-probability, in order (empty unless asked for)."""
        return tuple(t for s in self.segments for t in s.logprobs)



def clamp(segments: list[Segment], start: float, end: float, after: float = 0.0) -> list[Segment]:
    """Segments (and their words) held inside ``[start, end]``, in order and not overlapping.

    ``after`` is where the previous piece of audio's last segment ended: nothing starts before it.
    Models time speech a little past the audio they were given (Whisper: 11.12 s in an 11.0 s clip).
    """
    out: list[Segment] = []
    floor = max(start, after)
    for segment in segments:
        seg_start = min(max(segment.start, floor), end)
        seg_end = min(max(segment.end, seg_start), end)
        words, word_floor = [], seg_start
        for word in segment.words:
            word_start = min(max(word.start, word_floor), end)
            word_end = min(max(word.end, word_start), end)
            words.append(replace(word, start=word_start, end=word_end))
            word_floor = word_end
        out.append(replace(segment, start=seg_start, end=max(seg_end, word_floor), words=tuple(words)))
        floor = out[-1].end
    return out
