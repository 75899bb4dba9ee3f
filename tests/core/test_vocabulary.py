"""The server's vocabulary file and replacement rules (rapl/core/vocabulary.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rapl.core.vocabulary import MAX_TERMS, Replacements, Vocabulary, VocabularyError, merge, read_terms
from rapl.settings import Settings, SettingsError
from rapl.transcript.text import join_text
from rapl.transcript.transcription import Word

ROOT = Path(__file__).resolve().parents[2]


def rules(*lines: str) -> Replacements:
    return Replacements.parse("\n".join(lines), "test rules")


# -- the vocabulary file -------------------------------------------------------------------

def test_terms_skip_comments_blank_lines_and_repeats(tmp_path: Path) -> None:
    file = tmp_path / "vocabulary.txt"
    file.write_text("\ufeff# product names\nRAPL\n\n  SenseVoice  \n   # indented comment\nC#\nrapl\n"
                    "Kubernetes  operator\n", encoding="utf-8")
    assert read_terms(file) == ("RAPL", "SenseVoice", "C#", "Kubernetes operator")


def test_unreadable_vocabulary_file_names_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(VocabularyError, match=r"VOCABULARY_FILE=.*nope\.txt.* cannot be read") as error:
        Vocabulary.from_settings(Settings.load({"VOCABULARY_FILE": str(missing)}, environ={}))
    assert isinstance(error.value, SettingsError)  # start-up reports it like any invalid setting


def test_overlong_term_names_the_file_and_line(tmp_path: Path) -> None:
    file = tmp_path / "vocabulary.txt"
    file.write_text("ok\n# fine\n" + "x" * 101 + "\n", encoding="utf-8")
    with pytest.raises(VocabularyError, match=r"vocabulary\.txt' line 3: a term may have at most 100"):
        read_terms(file)


def test_too_many_terms_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "vocabulary.txt"
    file.write_text("\n".join(f"term{i}" for i in range(MAX_TERMS + 1)), encoding="utf-8")
    with pytest.raises(VocabularyError, match=f"has {MAX_TERMS + 1} terms: at most {MAX_TERMS}"):
        read_terms(file)


def test_merge_puts_the_request_first_deduplicates_and_caps() -> None:
    assert merge(["RAPL", " whisper "], ["rapl", "SenseVoice", "", "Whisper"]) == ("RAPL", "whisper", "SenseVoice")
    many = merge([f"r{i}" for i in range(60)], [f"f{i}" for i in range(60)])
    assert len(many) == MAX_TERMS and many[0] == "r0" and many[-1] == "f39"
    assert merge([], []) == ()


def test_example_files_load_and_settings_point_at_them() -> None:
    terms = read_terms(ROOT / "config" / "vocabulary.txt.example")
    fixes = Replacements.load(ROOT / "config" / "replacements.txt.example")
    assert terms and len(fixes) >= 4
    from rapl.settings import SPEC

    assert "config/vocabulary.txt.example" in SPEC["VOCABULARY_FILE"][2]
    assert "config/replacements.txt.example" in SPEC["REPLACEMENTS_FILE"][2]


def test_vocabulary_from_settings(tmp_path: Path) -> None:
    (tmp_path / "v.txt").write_text("RAPL\n", encoding="utf-8")
    (tmp_path / "r.txt").write_text("rapple → RAPL\n", encoding="utf-8")
    vocabulary = Vocabulary.from_settings(Settings.load(
        {"VOCABULARY_FILE": str(tmp_path / "v.txt"), "REPLACEMENTS_FILE": str(tmp_path / "r.txt")}, environ={}))
    assert vocabulary.keywords(["Flask"]) == ("Flask", "RAPL")
    assert vocabulary.replacements.apply("rapple works") == "RAPL works"
    empty = Vocabulary.from_settings(Settings.load({}, environ={}))
    assert empty.terms == () and not empty.replacements and empty.replacements.apply("rapple") == "rapple"


# -- parsing replacement rules -------------------------------------------------------------

def test_rules_accept_three_arrows_comments_and_blank_lines() -> None:
    fixes = rules("# fixes", "", "teh → the", "  recieve -> receive  ", "wierd=>weird", "   # done")
    assert [(r.wrong, r.right, r.line) for r in fixes.rules] == [
        ("teh", "the", 3), ("recieve", "receive", 4), ("wierd", "weird", 5)]


@pytest.mark.parametrize(("line", "problem"), [
    ("just words", "no arrow"),
    ("a -> b -> c", "more than one arrow"),
    (" → right", "the left side"),
    ("wrong →  ", "the right side"),
])
def test_bad_rule_names_the_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    file = tmp_path / "replacements.txt"
    file.write_text(f"# ok\nteh → the\n{line}\n", encoding="utf-8")
    with pytest.raises(VocabularyError, match=rf"REPLACEMENTS_FILE='.*replacements\.txt' line 3: {problem}"):
        Replacements.load(file)


def test_unreadable_replacements_file_names_the_setting(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"teh \xff\xfe -> the\n")
    with pytest.raises(VocabularyError, match=r"REPLACEMENTS_FILE=.*bad\.txt.* cannot be read"):
        Replacements.load(tmp_path / "bad.txt")


def test_conflicting_rules_name_both_lines() -> None:
    with pytest.raises(VocabularyError, match=r"line 3: 'teh' already has a rule on line 1"):
        rules("teh → the", "teh → the", "teh → tea")  # a repeat is harmless; a different right side is not


def test_chaining_rules_are_refused() -> None:
    with pytest.raises(VocabularyError, match="line 1: 'colour' → 'color' would be rewritten again"):
        rules("colour → color", "color → colour")
    with pytest.raises(VocabularyError, match="rules must not chain"):
        rules("新区 → 滨海新区")  # its own right side matches it again


# -- applying them ---------------------------------------------------------------------------

def test_lower_case_rule_keeps_the_capitalisation_style() -> None:
    fixes = rules("teh → the")
    assert fixes.apply("teh cat. Teh dog. TEH END.") == "the cat. The dog. THE END."


def test_explicit_case_target_is_written_as_is() -> None:
    fixes = rules("rapple → RAPL", "i → I")
    assert fixes.apply("rapple, Rapple and RAPPLE") == "RAPL, RAPL and RAPL"
    assert fixes.apply("i think i can") == "I think I can"


def test_capitalised_left_side_matches_only_that_spelling() -> None:
    fixes = rules("Nice → NICE")
    assert fixes.apply("Nice is nice, NICE") == "NICE is nice, NICE"


def test_multi_word_rules_match_any_spacing_and_capitalisation() -> None:
    fixes = rules("gonna → going to", "new york => New York")
    assert fixes.apply("We're Gonna visit new\tyork") == "We're Going to visit New York"
    assert fixes.apply("GONNA") == "GOING TO"


def test_longest_match_wins() -> None:
    fixes = rules("new york => New York", "new york city -> NYC", "york → Yorkshire")
    assert fixes.apply("new york city, new york and york") == "NYC, New York and Yorkshire"


def test_whole_words_only() -> None:
    fixes = rules("cat → dog")
    assert fixes.apply("category, cats, bobcat, cat_x, cat2") == "category, cats, bobcat, cat_x, cat2"
    assert fixes.apply("cat. (cat) cat-like 'cat'") == "dog. (dog) dog-like 'dog'"
    assert rules("c++ → C++").apply("c++ and abc++") == "C++ and abc++"


def test_cjk_matches_without_word_boundaries() -> None:
    fixes = rules("冰台新区 → 滨海新区", "rapple → RAPL", "とうきょう → 東京")
    assert fixes.apply("我想问我在冰台新区有房") == "我想问我在滨海新区有房"
    assert fixes.apply("rapple系统和RAPPLE。") == "RAPL系统和RAPL。"  # Latin beside Han is a word edge
    assert fixes.apply("とうきょうへ行く") == "東京へ行く"
    assert rules("cat → dog").apply("catégorie 고양이cat") == "catégorie 고양이cat"  # Hangul is spaced: no edge


def test_apply_is_idempotent() -> None:
    fixes = rules("teh → the", "rapple → RAPL", "rapl → RAPL", "new york => New York", "冰台新区 → 滨海新区",
                  "gonna → going to")
    for text in ["Teh rapple in new york", "RAPL rapl Rapl", "冰台新区和滨海新区", "GONNA gonna Gonna", ""]:
        once = fixes.apply(text)
        assert fixes.apply(once) == once


def test_applying_per_segment_equals_applying_to_the_joined_text() -> None:
    """Streamed deltas and the final text agree while no rule spans a segment boundary."""
    fixes = rules("teh → the", "rapple → RAPL", "冰台新区 → 滨海新区", "new york => New York")
    segments = ["Teh rapple demo", "moved to new york.", "我在冰台新区", "有房", "teh end"]
    assert join_text([fixes.apply(s) for s in segments]) == fixes.apply(join_text(segments))
    # The documented limitation: a rule whose words straddle two segments matches only in the joined text.
    split = ["moved to new", "york today"]
    assert join_text([fixes.apply(s) for s in split]) == "moved to new york today"
    assert fixes.apply(join_text(split)) == "moved to New York today"


def test_no_rules_change_nothing() -> None:
    assert Replacements().apply("anything at all") == "anything at all"
    assert len(Replacements()) == 0 and not Replacements()


# -- how many terms reach each model ----------------------------------------------------------------

def _words(text: str) -> list[int]:
    """A stand-in tokenizer: one token a word."""
    return [len(w) for w in text.split()]


def test_whisper_keywords_and_prompt_share_its_prompt_budget() -> None:
    from rapl.backends.whisper import fit_prompt

    decode = lambda tokens: " ".join("w" * n for n in tokens)  # noqa: E731 - inverse of _words
    keywords = tuple(f"k{i} extra" for i in range(100))  # two tokens each
    prompt, hotwords = fit_prompt("w " * 300, keywords, _words, decode, budget=223)
    assert hotwords == " ".join(keywords[:55]) and len(_words(prompt)) == 223 - 110  # half, then the rest
    assert fit_prompt("a b c", ("x", "y"), _words, decode, 223) == ("a b c", "x y")  # all of both fit
    assert fit_prompt(None, (), _words, decode, 223) == (None, None)
    assert fit_prompt("p", ("w " * 200,), _words, decode, 223) == ("p", None)  # a term over the share: none


def test_other_models_get_keywords_first_and_within_their_limits() -> None:
    from rapl.backends.mlx import MAX_KEYWORD_CONTEXT_CHARS, context_keywords
    from rapl.backends.sensevoice import MAX_HOTWORDS, choose_hotwords

    terms = tuple(f"term{i:02d}" + "x" * 93 for i in range(100))
    kept = context_keywords(terms)
    assert kept == terms[:len(kept)] and len(", ".join(kept)) <= MAX_KEYWORD_CONTEXT_CHARS < len(", ".join(terms))
    hotwords = choose_hotwords(("RAPL", "http://x/list.txt", "/etc/hosts", "notes.txt", *terms), "Grafana, RAPL")
    assert hotwords[0] == "RAPL" and len(hotwords) == MAX_HOTWORDS and "Grafana" not in hotwords
    assert not any(w.startswith("http") or "/" in w or w.endswith(".txt") for w in hotwords)
    assert choose_hotwords((), "Grafana, RAPL") == ["Grafana", "RAPL"]


def test_replacement_rules_apply_to_timed_words() -> None:
    rules = Replacements.parse("rapple → RAPL\nopen ai → OpenAI\nfellow americans → fellow citizens\n"
                               "cu → see you later\n")
    words = (Word(" I", 0.0, 0.2, 0.9), Word(" love", 0.2, 0.5, 0.8), Word(" Rapple,", 0.5, 0.9, 0.7),
             Word(" open", 1.0, 1.2, 0.9), Word(" AI.", 1.2, 1.5, 0.6), Word(" Fellow", 2.0, 2.5, 0.5),
             Word(" Americans", 2.5, 3.0, 0.4), Word(" cu", 3.0, 3.6, 0.3))
    fixed = rules.apply_words(words)
    assert "".join(w.word for w in fixed) == rules.apply("".join(w.word for w in words))
    assert fixed[2] == Word(" RAPL,", 0.5, 0.9, 0.7)  # one for one: its times and punctuation kept
    assert fixed[3] == Word(" OpenAI.", 1.0, 1.5, 0.6)  # two words become one, from start to end
    assert fixed[4:6] == (Word(" Fellow", 2.0, 2.5, 0.5), Word(" citizens", 2.5, 3.0, 0.4))
    later = fixed[6:]  # one word becomes three, sharing its time by length
    assert [w.word for w in later] == [" see", " you", " later"]
    assert later[0].start == 3.0 and later[-1].end == 3.6
    assert all(a.end == b.start for a, b in zip(later, later[1:], strict=False))
    assert rules.apply_words(words[:2]) == words[:2] and Replacements().apply_words(words) == words


def test_replacement_rules_on_words_without_spaces() -> None:
    rules = Replacements.parse("open ai → OpenAI\n北京大学 → 北大\n")
    words = (Word("open", 0.0, 0.3), Word("ai", 0.3, 0.6), Word("北京", 1.0, 1.4), Word("大学", 1.4, 2.0))
    assert rules.apply_words(words) == (Word("OpenAI", 0.0, 0.6), Word("北大", 1.0, 2.0))
