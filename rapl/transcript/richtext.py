"""SenseVoice's tagged output, parsed and rendered as plain text, emoji or raw tags.

SenseVoice writes four tags before the words of each stretch of speech, in the order
language, emotion, audio event, text normalisation::

    <|en|><|NEUTRAL|><|Speech|><|woitn|>hello world

Long or mixed-language audio gives several such groups one after another, and audio
without speech gives a group with no words (``<|nospeech|><|EMO_UNKNOWN|><|BGM|><|woitn|>``).
:func:`parse` splits the string into :class:`RichText` groups, :func:`merge` sums them
up, and :func:`render` writes them in one of the ``RICH_TEXT`` modes: ``plain`` (words
only), ``emoji`` (events before the words and the emotion after them, as emoji, in the
manner of FunASR's ``rich_transcription_postprocess``) or ``tags`` (the raw output).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .languages import NAMES
from .text import WORDS, join_text

MODES = ("plain", "emoji", "tags")

NO_SPEECH = "nospeech"  # SenseVoice's language tag for audio without speech
EMOTIONS = {  # tag -> name reported to clients
    "HAPPY": "happy", "SAD": "sad", "ANGRY": "angry", "NEUTRAL": "neutral",
    "FEARFUL": "fearful", "DISGUSTED": "disgusted", "SURPRISED": "surprised",
    "EMO_UNKNOWN": "unknown",
}
EVENTS = {
    "Speech": "speech", "BGM": "bgm", "Applause": "applause", "Laughter": "laughter",
    "Cry": "cry", "Sneeze": "sneeze", "Breath": "breath", "Cough": "cough", "Sing": "sing",
    "Speech_Noise": "speech_noise", "Event_UNK": "unknown", "GBG": "gbg",
}
TEXT_NORM = {"withitn": True, "woitn": False}

EMOTION_EMOJI = {"happy": "😊", "sad": "😔", "angry": "😡", "fearful": "😰", "disgusted": "🤢",
                 "surprised": "😮"}
EVENT_EMOJI = {"bgm": "🎼", "applause": "👏", "laughter": "😀", "cry": "😭", "sneeze": "🤧",
               "cough": "😷"}
_TAG = re.compile(r"<\|([^<>|]*)\|>")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class RichText:
    """One group of SenseVoice output: its tags, read, and its words."""

    text: str
    language: str | None = None  # ISO code; None when absent or <|nospeech|>
    emotion: str | None = None  # "neutral", "happy", ... or "unknown"
    events: tuple[str, ...] = ()  # "speech", "bgm", "laughter", ...
    itn: bool | None = None  # True for <|withitn|>, False for <|woitn|>
    raw: str = ""  # the group exactly as the model wrote it, spaces included
    no_speech: bool = False  # the group was tagged <|nospeech|>


class _Group:
    """Collects the tags and text of one group while :func:`parse` scans."""

    def __init__(self) -> None:
        self.raw: list[str] = []
        self.text: list[str] = []
        self.language: str | None = None
        self.no_speech = False
        self.emotion: str | None = None
        self.events: list[str] = []
        self.itn: bool | None = None

    def started(self) -> bool:
        return any(part.strip() for part in self.raw)

    def add_text(self, text: str) -> None:
        self.raw.append(text)
        self.text.append(text)

    def add_tag(self, name: str, tag: str) -> None:
        self.raw.append(tag)
        if name == NO_SPEECH:
            self.no_speech = True
        elif _is_language(name):
            self.language = name
        elif name in EMOTIONS:
            self.emotion = self.emotion or EMOTIONS[name]
        elif name in EVENTS and EVENTS[name] not in self.events:
            self.events.append(EVENTS[name])
        elif name in TEXT_NORM:
            self.itn = TEXT_NORM[name]

    def build(self) -> RichText:
        text = _SPACES.sub(" ", "".join(self.text)).strip()
        return RichText(text=text, language=self.language, emotion=self.emotion,
                        events=tuple(self.events), itn=self.itn, raw="".join(self.raw),
                        no_speech=self.no_speech)


def _is_language(name: str) -> bool:
    return name == NO_SPEECH or name in NAMES


def parse(raw: str) -> list[RichText]:
    """Split SenseVoice output into groups, one per language tag; [] for blank input.

    Unknown tags are kept in ``raw`` and dropped from ``text``.
    """
    groups: list[RichText] = []
    current = _Group()
    pos = 0
    for match in _TAG.finditer(raw):
        current.add_text(raw[pos:match.start()])
        pos = match.end()
        name = match.group(1)
        if _is_language(name) and current.started():
            groups.append(current.build())
            current = _Group()
        current.add_tag(name, match.group(0))
    current.add_text(raw[pos:])
    if current.started():
        groups.append(current.build())
    return groups


def merge(groups: Iterable[RichText]) -> RichText:
    """Sum groups up: all words, the language of the most words, the commonest emotion."""
    groups = list(groups)
    if not groups:
        return RichText(text="")
    spoken = [g for g in groups if g.language]
    language = max(spoken, key=lambda g: _word_count(g.text)).language if spoken else None
    emotions = [g.emotion for g in groups if g.emotion]
    known = [e for e in emotions if e != "unknown"] or emotions
    events = tuple(dict.fromkeys(e for g in groups for e in g.events))
    itn = next((g.itn for g in groups if g.itn is not None), None)
    return RichText(text=join_text([g.text for g in groups]), language=language,
                    emotion=max(known, key=known.count) if known else None, events=events,
                    itn=itn, raw="".join(g.raw for g in groups),
                    no_speech=all(g.no_speech for g in groups))


def render(groups: Iterable[RichText], mode: str) -> str:
    """Write groups as text in ``mode``: plain, emoji or tags."""
    groups = list(groups)
    if mode == "plain":
        return join_text([g.text for g in groups])
    if mode == "tags":
        return "".join(g.raw for g in groups).strip()
    if mode == "emoji":
        return _render_emoji(groups)
    raise ValueError(f"unknown rich text mode {mode!r}: use one of {', '.join(MODES)}")


def strip_tags(text: str) -> str:
    """``text`` without any ``<|...|>`` tag."""
    return _SPACES.sub(" ", _TAG.sub("", text)).strip()


def _render_emoji(groups: list[RichText]) -> str:
    """Event emoji before each run of groups, emotion emoji at the end of each run."""
    parts: list[str] = []
    for i, group in enumerate(groups):
        prev = groups[i - 1] if i else None
        nxt = groups[i + 1] if i + 1 < len(groups) else None
        events = _events_emoji(group)
        if prev is not None and _events_emoji(prev) == events:
            events = ""  # the same sound goes on: say it once
        emotion = EMOTION_EMOJI.get(group.emotion or "", "")
        if nxt is not None and nxt.emotion == group.emotion:
            emotion = ""  # the same mood goes on: say it at the end of the run
        part = events + group.text + emotion
        if part:
            parts.append(part)
    return join_text(parts)


def _word_count(text: str) -> int:
    """Words in ``text``, counting each Chinese or Japanese character as one."""
    return len(WORDS.findall(text))


def _events_emoji(group: RichText) -> str:
    return "".join(EVENT_EMOJI.get(e, "") for e in group.events)
