"""The one rule for spaces between words."""

from __future__ import annotations

import pytest

from rapl.transcript.text import bare_word, join_text, needs_space


@pytest.mark.parametrize(("parts", "joined"), [
    (["And so,", "my fellow Americans"], "And so, my fellow Americans"),
    (["我想问", "我在滨海新区有房"], "我想问我在滨海新区有房"),
    (["こんにちは", "世界"], "こんにちは世界"),
    (["안녕하세요 여러분", "오늘은"], "안녕하세요 여러분 오늘은"),  # Korean is written with spaces
    (["你好。", "hello"], "你好。 hello"),
    (["", "  a ", "", "b"], "a b"),
])
def test_join_text(parts: list[str], joined: str) -> None:
    assert join_text(parts) == joined


def test_needs_space() -> None:
    assert not needs_space("好", "吗") and needs_space("여러분", "오늘") and needs_space("a", "b")
    assert not needs_space("", "b") and not needs_space("a", "")


@pytest.mark.parametrize(("word", "bare"), [("country.", "country"), ("don't", "don't"), ("¿Qué?", "Qué"),
                                            ("—", ""), ("你好。", "你好")])
def test_bare_word(word: str, bare: str) -> None:
    assert bare_word(word) == bare
