"""The server's own vocabulary: terms every request favours, and fixes applied to every transcript.

Two optional files, both read once at start-up (UTF-8; a line whose first non-blank
character is ``#`` is a comment; blank lines are ignored):

* ``VOCABULARY_FILE``: one term a line. :func:`merge` adds them after each request's own
  ``keywords[]`` (de-duplicated, at most :data:`MAX_TERMS` in all).
* ``REPLACEMENTS_FILE``: one rule a line, ``wrong → right`` (``->`` and ``=>`` work too).
  :class:`Replacements` applies them to text:

  - whole words only ("cat" never touches "category"); a left side may be several words
    (any run of spaces between them matches) and may end in punctuation ("node js" or "c++");
  - text written without spaces (Han, kana: :data:`rapl.transcript.text.UNSPACED`) matches anywhere,
    with no word boundaries;
  - the longest left side wins where several match at one place;
  - a left side written in lower case matches any capitalisation, and a lower-case right side
    then follows the capitalisation of what it replaces ("teh → the": "Teh" -> "The", "TEH" ->
    "THE"); a right side with capitals is written as is ("rapple → RAPL": always "RAPL"); a
    left side with capitals matches only that exact spelling;
  - applying the rules twice changes nothing more: a rule whose right side another rule would
    rewrite again is refused at start-up.

Applying the rules to each streamed segment (delta) on its own gives the same text as applying
them to the segments' joined text (:func:`rapl.transcript.text.join_text`), as long as no match spans two
segments. The limitation: a multi-word or Han left side whose words fall on both sides of a
segment boundary is matched in neither, since each segment is replaced on its own (apply the
rules per segment everywhere, never to the joined text, and every format agrees). Deltas must
be cut at word boundaries (RAPL streams whole segments).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..settings import Settings, SettingsError
from ..transcript.text import UNSPACED, unspaced
from ..transcript.transcription import Word

log = logging.getLogger(__name__)

MAX_TERMS = 100  # keywords a request may carry in all (OpenAI's keywords[] limit)
MAX_TERM_CHARS = 100  # characters in one term
MAX_RULES = 10000
ARROWS = ("→", "->", "=>")
_ARROW = re.compile("|".join(re.escape(a) for a in ARROWS))
# A character that makes a word go on: a letter, digit or underscore of a spaced script.
_WORD_CHAR = f"[^\\W{UNSPACED}]"


class VocabularyError(SettingsError):
    """A vocabulary or replacements file that cannot be used; names the setting, file and line."""


def _lines(path: str | Path, setting: str) -> list[tuple[int, str]]:
    """The numbered lines of ``path`` that are neither blank nor comments, stripped."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise VocabularyError(f"{setting}={str(path)!r} cannot be read: {exc}") from exc
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def read_terms(path: str | Path, setting: str = "VOCABULARY_FILE") -> tuple[str, ...]:
    """The terms of a vocabulary file: one a line, comments and blank lines skipped, de-duplicated.

    Raises VocabularyError naming ``setting``, the file and the line for an unreadable file,
    a term over MAX_TERM_CHARS characters, or more than MAX_TERMS terms.
    """
    terms: dict[str, str] = {}
    for number, line in _lines(path, setting):
        term = " ".join(line.split())
        if len(term) > MAX_TERM_CHARS:
            raise VocabularyError(f"{setting}={str(path)!r} line {number}: a term may have at most "
                                  f"{MAX_TERM_CHARS} characters")
        terms.setdefault(term.casefold(), term)
    if len(terms) > MAX_TERMS:
        raise VocabularyError(f"{setting}={str(path)!r} has {len(terms)} terms: at most {MAX_TERMS} "
                              "(a request's keywords and these share that limit)")
    return tuple(terms.values())


def merge(request_keywords: Iterable[str], file_terms: Iterable[str], limit: int = MAX_TERMS) -> tuple[str, ...]:
    """A request's keywords, then the server's terms: de-duplicated (any case), blanks dropped, at most ``limit``."""
    seen: dict[str, str] = {}
    for term in (*request_keywords, *file_terms):
        cleaned = " ".join(term.split())
        if cleaned:
            seen.setdefault(cleaned.casefold(), cleaned)
    return tuple(seen.values())[:limit]


@dataclass(frozen=True)
class Rule:
    """One replacement: ``wrong`` (whitespace-normalised) becomes ``right``."""

    wrong: str
    right: str
    line: int = 0

    @property
    def any_case(self) -> bool:
        """A left side written in lower case matches any capitalisation."""
        return self.wrong == self.wrong.lower()

    @property
    def fixed_case(self) -> bool:
        """A right side with capitals is written exactly as given."""
        return self.right != self.right.lower()

    def pattern(self) -> str:
        """This rule's regular expression: whole words, any whitespace between its words."""
        body = r"\s+".join(re.escape(word) for word in self.wrong.split())
        if self.any_case:
            body = f"(?i:{body})"
        before = f"(?<!{_WORD_CHAR})" if _is_word_char(self.wrong[0]) else ""
        after = f"(?!{_WORD_CHAR})" if _is_word_char(self.wrong[-1]) else ""
        return before + body + after

    def replacement(self, found: str) -> str:
        """``right``, in the capitalisation style of ``found`` unless it has its own."""
        if self.fixed_case:
            return self.right
        letters = [ch for ch in found if ch.isalpha()]
        if len(letters) > 1 and all(ch.isupper() for ch in letters):
            return self.right.upper()
        if letters and letters[0].isupper():
            return _capitalise(self.right)
        return self.right


def _is_word_char(ch: str) -> bool:
    """True for a character that joins a word in spaced scripts (so the rule needs a boundary there)."""
    return (ch.isalnum() or ch == "_") and not unspaced(ch)


def _capitalise(text: str) -> str:
    """``text`` with its first letter in upper case, the rest as written."""
    for i, ch in enumerate(text):
        if ch.isalpha():
            return text[:i] + ch.upper() + text[i + 1:]
    return text


def _key(text: str, any_case: bool) -> str:
    words = " ".join(text.split())
    return words.lower() if any_case else words


class Replacements:
    """Replacement rules (``wrong → right``), applied with :meth:`apply`; empty: changes nothing."""

    def __init__(self, rules: Iterable[Rule | tuple[str, str]] = (), source: str = "replacements") -> None:
        self.rules: tuple[Rule, ...] = tuple(r if isinstance(r, Rule) else Rule(" ".join(r[0].split()), r[1].strip())
                                             for r in rules)
        self._exact: dict[str, Rule] = {}
        self._any_case: dict[str, Rule] = {}
        for rule in self.rules:
            if not rule.wrong or not rule.right:
                raise VocabularyError(f"{source} line {rule.line}: both sides of a rule need text")
            table = self._any_case if rule.any_case else self._exact
            key = _key(rule.wrong, rule.any_case)
            earlier = table.get(key)
            if earlier is not None and earlier.right != rule.right:
                raise VocabularyError(f"{source} line {rule.line}: {rule.wrong!r} already has a rule on line "
                                      f"{earlier.line} ({earlier.right!r})")
            table.setdefault(key, rule)
        ordered = sorted([*self._exact.values(), *self._any_case.values()],
                         key=lambda r: (-len(r.wrong), r.any_case))  # longest first; exact spelling before any case
        self._pattern = re.compile("|".join(r.pattern() for r in ordered)) if ordered else None
        for rule in ordered:
            again = self.apply(rule.right)
            if again != rule.right:
                raise VocabularyError(f"{source} line {rule.line}: {rule.wrong!r} → {rule.right!r} would be "
                                      f"rewritten again (to {again!r}) by another rule; rules must not chain")

    @classmethod
    def parse(cls, text: str, source: str = "replacements") -> Replacements:
        """Rules from the text of a replacements file; ``source`` names it in errors."""
        rules = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            rules.append(cls._rule(line, number, source))
        if len(rules) > MAX_RULES:
            raise VocabularyError(f"{source} has {len(rules)} rules: at most {MAX_RULES}")
        return cls(rules, source)

    @staticmethod
    def _rule(line: str, number: int, source: str) -> Rule:
        parts = _ARROW.split(line)
        if len(parts) != 2:
            problem = "no arrow" if len(parts) < 2 else "more than one arrow"
            raise VocabularyError(f"{source} line {number}: {problem} in {line!r}: write one rule a line as "
                                  "'wrong → right' (or -> or =>)")
        wrong, right = " ".join(parts[0].split()), parts[1].strip()
        if not wrong or not right:
            side = "left" if not wrong else "right"
            raise VocabularyError(f"{source} line {number}: the {side} side of {line!r} is empty")
        return Rule(wrong, right, number)

    @classmethod
    def load(cls, path: str | Path, setting: str = "REPLACEMENTS_FILE") -> Replacements:
        """The rules of a replacements file; VocabularyError names ``setting``, the file and the line."""
        file = Path(path).expanduser()
        try:
            text = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise VocabularyError(f"{setting}={str(path)!r} cannot be read: {exc}") from exc
        return cls.parse(text, f"{setting}={str(path)!r}")

    def __len__(self) -> int:
        return len(self.rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def apply(self, text: str) -> str:
        """``text`` with every rule applied (pure: the same text always gives the same result)."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(self._replace, text)

    def apply_words(self, words: tuple[Word, ...]) -> tuple[Word, ...]:
        """Timed ``words`` with the rules applied as :meth:`apply` applies them to their text. The words
        a match touches are replaced by the words of the result: one for one, each keeping its times,
        when their number is the same; else the result's words share the replaced words' time, in
        proportion to their length ("open ai" → "OpenAI": one word from the first's start to the last's end)."""
        if self._pattern is None or not words:
            return words
        joined, spans = "", []
        for word in words:
            if joined and word.word[:1].strip() and not (unspaced(word.word[0]) or unspaced(joined[-1])):
                joined += " "  # words given without their leading space (SenseVoice, MLX)
            spans.append((len(joined), len(joined) + len(word.word)))
            joined += word.word
        groups: list[list[int]] = []  # [first, last] word of each run that a match touches
        for match in self._pattern.finditer(joined):
            touched = [i for i, (a, b) in enumerate(spans) if a < match.end() and match.start() < b]
            if groups and touched and touched[0] <= groups[-1][1]:
                groups[-1][1] = max(groups[-1][1], touched[-1])
            elif touched:
                groups.append([touched[0], touched[-1]])
        out: list[Word] = []
        at = 0
        for first, last in groups:
            out.extend(words[at:first])
            out.extend(_retimed(words[first:last + 1], self.apply(joined[spans[first][0]:spans[last][1]])))
            at = last + 1
        return (*out, *words[at:])

    def _replace(self, match: re.Match[str]) -> str:
        found = match.group(0)
        rule = self._exact.get(_key(found, False)) or self._any_case.get(_key(found, True))
        return rule.replacement(found) if rule else found  # no rule: a case-folding oddity ("İ")


def _retimed(run: tuple[Word, ...], text: str) -> list[Word]:
    """``text`` (what the rules made of ``run``'s words) as timed words (see Replacements.apply_words)."""
    pieces = re.findall(r"\s*\S+", text) or [text]
    if len(pieces) == len(run):
        return [replace(w, word=piece) for w, piece in zip(run, pieces, strict=True)]
    start, span = run[0].start, run[-1].end - run[0].start
    probabilities = [w.probability for w in run]
    probability = None if None in probabilities else min(p for p in probabilities if p is not None)
    total, done, out = sum(len(p.strip()) for p in pieces) or 1, 0, []
    for piece in pieces:
        begin = start + span * done / total
        done += len(piece.strip())
        out.append(Word(piece, begin, start + span * done / total, probability))
    return out


@dataclass(frozen=True)
class Vocabulary:
    """What VOCABULARY_FILE and REPLACEMENTS_FILE say; the app builds one at start-up."""

    terms: tuple[str, ...] = ()
    replacements: Replacements = field(default_factory=Replacements)

    @classmethod
    def from_settings(cls, settings: Settings) -> Vocabulary:
        """Read both files (an empty setting: none). Raises VocabularyError naming the setting."""
        terms = read_terms(settings.VOCABULARY_FILE) if settings.VOCABULARY_FILE else ()
        rules = Replacements.load(settings.REPLACEMENTS_FILE) if settings.REPLACEMENTS_FILE else Replacements()
        if terms or rules:
            log.info("vocabulary: %d terms, %d replacement rules", len(terms), len(rules))
        return cls(terms, rules)

    def keywords(self, request_keywords: Iterable[str]) -> tuple[str, ...]:
        """A request's keywords followed by the server's terms (see :func:`merge`)."""
        return merge(request_keywords, self.terms)
