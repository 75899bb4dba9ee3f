"""Text rules shared by every backend and format: where words need a space between them.

One definition of the scripts written without spaces between words (Han and kana, with
their punctuation); Hangul, Latin, Cyrillic and the rest are written with spaces.
"""

from __future__ import annotations

import re

# Han (CJK ideographs and extensions), hiragana, katakana, CJK symbols and punctuation,
# and the full-width forms: written without spaces between words. Not Hangul: Korean uses spaces.
UNSPACED = "\u3000-\u303f\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_UNSPACED = re.compile(f"[{UNSPACED}]")
# Words of a text: each unspaced character alone, and each run of other non-space characters.
WORDS = re.compile(f"[{UNSPACED}]|[^\\s{UNSPACED}]+")
_EDGE_PUNCTUATION = re.compile(r"^[^\w]+|[^\w]+$")


def unspaced(ch: str) -> bool:
    """True for a character of a script written without spaces (Han, kana, their punctuation)."""
    return bool(_UNSPACED.match(ch))


def needs_space(before: str, after: str) -> bool:
    """Whether a space goes between text ending in ``before`` and text starting with ``after``."""
    return bool(before) and bool(after) and not (unspaced(before[-1]) and unspaced(after[0]))


def join_text(parts: list[str]) -> str:
    """Join pieces of text: a space between words, none between Han or kana characters."""
    out = ""
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if needs_space(out, part):
            out += " "
        out += part
    return out


def bare_word(word: str) -> str:
    """A word without the punctuation around it ("country." -> "country"; "don't" stays)."""
    return _EDGE_PUNCTUATION.sub("", word.strip())
