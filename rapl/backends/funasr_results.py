"""FunASR's ``AutoModel.generate`` results, read: word times in each model family's shape, the reported language.

The FunASR backend (rapl.backends.sensevoice) reads its results through these; it also
shares HAN, the Chinese-character test, to tell zh from en.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

from ..transcript import richtext
from ..transcript.languages import CODES
from ..transcript.text import WORDS
from ..transcript.transcription import Word

log = logging.getLogger(__name__)

HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def timed_words(result: dict[str, Any]) -> tuple[Word, ...]:
    """Words with times (seconds) from a FunASR result, in any of its timestamp shapes."""
    tokens = result.get("timestamps")  # Fun-ASR-Nano
    if isinstance(tokens, list) and tokens and isinstance(tokens[0], dict):
        return _words_from_dicts(tokens)
    stamps = result.get("timestamp")  # SenseVoice, Paraformer: [[start_ms, end_ms], ...]
    if not isinstance(stamps, list) or not stamps:
        return ()
    words = result.get("words")
    if not (isinstance(words, list) and len(words) == len(stamps)):
        words = _units(str(result.get("raw_text") or result.get("text") or ""))
    if len(words) != len(stamps):
        log.debug("%d timestamps for %d words: dropping word times", len(stamps), len(words))
        return ()
    out = []
    for word, (start, end, *_rest) in zip(words, stamps, strict=True):
        word = str(word).replace("▁", " ").strip()
        if any(ch.isalnum() for ch in word):  # punctuation is not a word
            out.append(Word(word=word, start=start / 1000.0, end=end / 1000.0))
    return tuple(out)


def _units(text: str) -> list[str]:
    """Paraformer's timestamp units: each CJK character, and each other word."""
    text = richtext.strip_tags(text)
    return WORDS.findall(text)


def _words_from_dicts(stamps: list[dict[str, Any]]) -> tuple[Word, ...]:
    """Fun-ASR-Nano's token times ({token, start_time, end_time} in seconds) as words."""
    words: list[Word] = []
    for item in stamps:
        token = str(item.get("token", "")).replace("▁", " ")
        start, end = float(item.get("start_time", 0.0)), float(item.get("end_time", 0.0))
        piece = token.strip()
        if not piece:
            continue
        joins = words and not token[:1].isspace() and not HAN.match(piece[0]) \
            and not HAN.match(words[-1].word[-1])
        if joins:
            words[-1] = replace(words[-1], word=words[-1].word + piece, end=end)
        else:
            words.append(Word(word=piece, start=start, end=end))
    return tuple(words)


def result_language(result: dict[str, Any]) -> str | None:
    """A language a model reports itself ("Chinese", "en", ...), as an ISO code."""
    value = str(result.get("language") or "").strip().lower()
    if not value:
        return None
    return value if value in CODES.values() else CODES.get(value)
