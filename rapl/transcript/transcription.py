"""The neutral result every backend returns and every response format is built from."""

from __future__ import annotations

from collections.abc import Sequence
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


def cut_at(segment: Segment, timeline: Sequence[tuple[float, float, int]]) -> list[Segment]:
    """``segment`` cut where ``timeline`` (start, end, label: a voice, a stretch of speech) changes label
    inside it; itself if it does not.

    With timed words each word goes to the label at its middle and the cut falls halfway between
    two words (the pieces tile the segment); without, the text is cut at the word nearest the
    change's share of the time.
    """
    parts = [(max(a, segment.start), min(b, segment.end), v) for a, b, v in timeline
             if b > segment.start and a < segment.end]
    if len({v for _, _, v in parts}) < 2:
        return [segment]

    def voice_at(t: float) -> int:
        return min(parts, key=lambda p: 0.0 if p[0] <= t <= p[1] else min(abs(t - p[0]), abs(t - p[1])))[2]

    joiner = " " if " " in segment.text.strip() else ""
    if segment.words:
        groups: list[list[Word]] = []
        voices: list[int] = []
        for word in segment.words:
            voice = voice_at((word.start + word.end) / 2)
            if voices and voices[-1] == voice:
                groups[-1].append(word)
            else:
                groups.append([word])
                voices.append(voice)
        if len(groups) < 2:
            return [segment]
        cuts = [segment.start, *((a[-1].end + b[0].start) / 2 for a, b in zip(groups, groups[1:], strict=False)),
                segment.end]  # the pieces tile the segment: each cut halfway between two words
        texts = _texts_of(segment.text, groups)
        if texts is None:  # the words are not the text's (inverse text normalisation, say): share it by time
            return _cut_text(segment, parts, joiner)
        return [replace(segment, start=cuts[i], end=cuts[i + 1], text=texts[i], words=tuple(group),
                        tokens=(), logprobs=())
                for i, group in enumerate(groups)]
    return _cut_text(segment, parts, joiner)


def _texts_of(text: str, groups: list[list[Word]]) -> list[str] | None:
    """``text`` cut before the first word of each group but the first, punctuation and tags kept where
    they are (each word found in turn in the text, case aside); None when a word is not found there."""
    at, starts, folded = 0, [], text.lower()  # lower() keeps the length (casefold turns ß into ss)
    for group in groups:
        for i, word in enumerate(group):
            found = folded.find(word.word.strip().lower(), at) if word.word.strip() else at
            if found < 0:
                return None
            if i == 0:
                starts.append(found)
            at = found + len(word.word.strip())
    starts[0] = 0
    pieces = [text[a:b].strip() for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    return pieces if all(pieces) else None


def _cut_text(segment: Segment, parts: list[tuple[float, float, int]], joiner: str) -> list[Segment]:
    """A segment without timed words cut at its turns, the text shared out in proportion to the time."""
    merged: list[list[float]] = []
    for a, b, v in parts:
        if merged and merged[-1][2] == v:
            merged[-1][1] = b
        else:
            merged.append([a, b, v])
    tokens = segment.text.split() if joiner else list(segment.text.strip())
    span = max(segment.end - segment.start, 1e-6)
    cuts = [0]
    for a, _, _ in merged[1:]:
        cuts.append(max(cuts[-1], min(len(tokens), round((a - segment.start) / span * len(tokens)))))
    cuts.append(len(tokens))
    pieces = []
    for i, (a, b, _) in enumerate(merged):
        text = joiner.join(tokens[cuts[i]:cuts[i + 1]]).strip()
        if text:
            pieces.append(replace(segment, start=segment.start if i == 0 else a,
                                  end=segment.end if i == len(merged) - 1 else b, text=text, tokens=(),
                                  logprobs=()))
    return pieces or [segment]
