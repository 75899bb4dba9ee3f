"""Response formats: pure functions from Transcription."""

from __future__ import annotations

import srt
import webvtt

from rapl.transcript import formats
from rapl.transcript.transcription import Segment, Transcription, Word

RESULT = Transcription(
    text="Hello there. General Kenobi.", language="en", duration=3661.0015,
    segments=(Segment(0.0004, 1.0006, "Hello there.", tokens=(1, 2), words=(Word("Hello", 0.0, 0.5),
                                                                            Word("there.", 0.5, 1.0006))),
              Segment(3600.5, 3661.0, "General Kenobi.", extra={"emotion": "happy", "events": ["speech"]})),
)


def test_times_round_to_whole_milliseconds() -> None:
    assert formats.ms(1.0006) == 1.001
    assert formats.ms(0.0004) == 0.0
    assert "00:00:00,000 --> 00:00:01,001" in formats.to_srt(RESULT)
    assert "01:00:00.500 --> 01:01:01.000" in formats.to_vtt(RESULT)


def test_srt_parses_with_the_srt_library() -> None:
    subs = list(srt.parse(formats.to_srt(RESULT)))
    assert [s.content for s in subs] == ["Hello there.", "General Kenobi."]
    assert subs[1].start.total_seconds() == 3600.5


def test_vtt_parses_with_webvtt(tmp_path) -> None:
    path = tmp_path / "a.vtt"
    path.write_text(formats.to_vtt(RESULT))
    captions = webvtt.read(str(path))
    assert [c.text for c in captions] == ["Hello there.", "General Kenobi."]
    assert captions[0].end == "00:00:01.001"


def test_verbose_json_has_every_openai_segment_field() -> None:
    body = formats.to_verbose_json(RESULT, words=True)
    assert body["language"] == "english" and body["task"] == "transcribe"
    assert body["duration"] == 3661.002 or body["duration"] == 3661.001
    seg = body["segments"][0]
    for key in ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                "compression_ratio", "no_speech_prob"):
        assert key in seg
    assert seg["end"] == 1.001 and seg["tokens"] == [1, 2]
    assert body["segments"][1]["emotion"] == "happy"  # RAPL extension fields
    # OpenAI's words carry no punctuation
    assert body["words"] == [{"word": "Hello", "start": 0.0, "end": 0.5},
                             {"word": "there", "start": 0.5, "end": 1.001}]
    assert "words" not in formats.to_verbose_json(RESULT)


def test_granularities_choose_segments_words_or_both() -> None:
    words_only = formats.render(RESULT, "verbose_json", words=True, segments=False)
    assert "segments" not in words_only and len(words_only["words"]) == 2
    segments_only = formats.render(RESULT, "verbose_json", words=False, segments=True)
    assert "words" not in segments_only and len(segments_only["segments"]) == 2
    both = formats.render(RESULT, "verbose_json", words=True, segments=True)
    assert len(both["words"]) == 2 and len(both["segments"]) == 2


def test_segments_start_with_a_space_in_spaced_scripts_only() -> None:
    result = Transcription(text="you, ask 你好", language="en", duration=3.0,
                           segments=(Segment(0, 1, "you,"), Segment(1, 2, "ask"), Segment(2, 3, "你好"),
                                     Segment(3, 3, "여러분")))
    texts = [s["text"] for s in formats.to_verbose_json(result)["segments"]]
    assert texts == [" you,", " ask", "你好", " 여러분"]
    assert "".join(texts[:2]) == " you, ask"  # clients that join with "" keep the words apart


def test_punctuation_only_words_are_dropped_and_inner_apostrophes_kept() -> None:
    seg = Segment(0, 2, "don't — stop", words=(Word("don't", 0, 0.5), Word("—", 0.5, 0.6), Word('"stop!"', 0.6, 2)))
    body = formats.to_verbose_json(Transcription(text=seg.text, language="en", duration=2, segments=(seg,)), words=True)
    assert [w["word"] for w in body["words"]] == ["don't", "stop"]


def test_token_usage_counts_audio_prompt_and_generated_tokens() -> None:
    usage = formats.token_usage(RESULT, prompt="Star Wars")
    audio = 36611  # 3661.0015 s at 10 audio tokens a second, rounded up
    assert usage == {"type": "tokens", "input_tokens": audio + 2, "output_tokens": 2, "total_tokens": audio + 4,
                     "input_token_details": {"audio_tokens": audio, "text_tokens": 2}}
    no_tokens = Transcription(text="我想问 hello", language="zh", duration=1.0,
                              segments=(Segment(0, 1, "我想问 hello"),))
    assert formats.token_usage(no_tokens)["output_tokens"] == 4  # each Han character, each other word


def test_text_without_segments_gets_one_spanning_segment() -> None:
    result = Transcription(text="hi", language=None, duration=2.0)
    assert formats.to_verbose_json(result)["segments"][0]["end"] == 2.0
    assert formats.to_verbose_json(result)["language"] == "unknown"
    empty = Transcription(text="", language="en", duration=2.0)
    assert formats.to_srt(empty) == "" and formats.to_vtt(empty) == "WEBVTT\n\n"


def test_json_and_text() -> None:
    assert formats.render(RESULT, "json") == {"text": RESULT.text, "languages": [{"code": "en"}],
                                              "usage": {"type": "duration", "seconds": 3662}}
    assert formats.render(RESULT, "text") == RESULT.text


def test_usage_by_the_name_the_request_sent() -> None:
    for model in ("gpt-4o-transcribe", "gpt-transcribe", "gpt-4o-mini-transcribe-2025-12-15", "gpt-live-transcribe"):
        assert formats.render(RESULT, "json", model=model)["usage"]["type"] == "tokens", model
        assert formats.render(RESULT, "diarized_json", model=model)["usage"]["type"] == "tokens", model
        assert formats.render(RESULT, "verbose_json", model=model)["usage"]["type"] == "duration", model
    for model in ("whisper-1", "gpt-realtime-whisper", "", "anything"):
        assert formats.render(RESULT, "json", model=model)["usage"] == {"type": "duration", "seconds": 3662}


def test_languages_in_order_of_appearance_and_a_translation_in_english() -> None:
    mixed = Transcription.of([Segment(0, 1, "Hello.", language="en"), Segment(1, 2, "你好。", language="zh"),
                              Segment(2, 3, "Again.", language="en")], 3.0)
    assert formats.to_json(mixed)["languages"] == [{"code": "en"}, {"code": "zh"}]
    assert formats.to_verbose_json(mixed)["languages"] == [{"code": "en"}, {"code": "zh"}]
    assert formats.to_verbose_json(mixed)["language"] == "english"  # the first language heard
    translated = Transcription.of([Segment(0, 1, "Hello.", language="zh")], 1.0, task="translate")
    body = formats.to_verbose_json(translated)
    assert body["language"] == "english" and body["languages"] == [{"code": "zh"}]
    assert formats.to_json(Transcription(text="", language=None, duration=1.0))["languages"] == []


def test_diarized_text_is_a_line_per_turn_and_segments_have_no_leading_space() -> None:
    said = [("A", "Hello there."), ("A", "How are you?"), ("B", "你好。"), ("A", "Fine.")]
    result = Transcription.of([Segment(i, i + 1, text, extra={"speaker": who}) for i, (who, text) in enumerate(said)],
                              4.0)
    body = formats.to_diarized_json(result)
    assert body["text"] == "A: Hello there. How are you?\nB: 你好。\nA: Fine."
    assert [s["text"] for s in body["segments"]] == [text for _, text in said]
    assert [s["speaker"] for s in body["segments"]] == ["A", "A", "B", "A"]
