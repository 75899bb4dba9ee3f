"""rapl.transcript.richtext on real SenseVoice output.

The strings are what SenseVoiceSmall writes for the demo clips in FunAudioLLM/SenseVoice's
``assets/`` (zh.mp3, en.mp3, ja.mp3, ko.mp3, emo_*.wav, event_*.wav, rich_*.wav), for
FunASR's own examples, and what FunASR's VAD pipeline writes when it joins several chunks.
The emoji renderings agree with funasr.utils.postprocess_utils.rich_transcription_postprocess
except where noted.
"""

from __future__ import annotations

import pytest

from rapl.transcript import richtext
from rapl.transcript.richtext import RichText, merge, parse, render

ZH = "<|zh|><|NEUTRAL|><|Speech|><|woitn|>开饭时间早上九点至下午五点"
EN = ("<|en|><|NEUTRAL|><|Speech|><|woitn|>the tribal chieftain called for the boy and presented "
      "him with fifty pieces of good")
JA = "<|ja|><|NEUTRAL|><|Speech|><|woitn|>うちの中学は弁当制で持っていきない場合は50円の学校販売のパンを買う"
KO = "<|ko|><|NEUTRAL|><|Speech|><|woitn|>조금만 생각을 하면서 살면 훨씬 편할 거야"
ZH_ITN = "<|zh|><|NEUTRAL|><|Speech|><|withitn|>欢迎大家来体验达摩院推出的语音识别模型。"
JFK = ("<|en|><|EMO_UNKNOWN|><|Speech|><|woitn|>and so my fellow americans ask not what your "
       "country can do for you ask what you can do for your country")
SAD = "<|en|><|SAD|><|Speech|><|woitn|>i did go and made many prisoners"
ANGRY = "<|zh|><|ANGRY|><|Speech|><|woitn|>英国的哲学家曾经说过"
HAPPY = "<|zh|><|HAPPY|><|Speech|><|woitn|>英国的哲学家曾经说过"
CRY = "<|nospeech|><|EMO_UNKNOWN|><|Cry|><|woitn|>"
LAUGHTER = "<|nospeech|><|EMO_UNKNOWN|><|Laughter|><|woitn|>"
COUGH = "<|nospeech|><|EMO_UNKNOWN|><|Cough|><|woitn|>"
BGM = "<|nospeech|><|EMO_UNKNOWN|><|BGM|><|woitn|>"
SILENCE = "<|nospeech|><|EMO_UNKNOWN|><|Event_UNK|><|woitn|>"
RICH_1 = ("<|en|><|EMO_UNKNOWN|><|Applause|><|woitn|>senior staff principal doris jackson "
          "wakefield faculty and of course my fellow classmates")
RICH_2 = "<|zh|><|ANGRY|><|Applause|><|woitn|>我起飞前没有扫二维码我都在看彭晏"
# FunASR's inference_with_vad joins its chunks' texts with a space.
CHUNKS = ("<|en|><|HAPPY|><|Speech|><|woitn|>it takes heat to bring out the odor "
          "<|en|><|HAPPY|><|Speech|><|woitn|>a cold dip restores health and zest "
          "<|en|><|EMO_UNKNOWN|><|Speech|><|woitn|>a zestful food is the hot cross bun")
MIXED = (ZH_ITN + " <|en|><|NEUTRAL|><|Speech|><|withitn|>The tribal chieftain called for the boy.")


@pytest.mark.parametrize(("raw", "language", "text"), [
    (ZH, "zh", "开饭时间早上九点至下午五点"),
    (EN, "en", "the tribal chieftain called for the boy and presented him with fifty pieces of good"),
    (JA, "ja", "うちの中学は弁当制で持っていきない場合は50円の学校販売のパンを買う"),
    (KO, "ko", "조금만 생각을 하면서 살면 훨씬 편할 거야"),
    ("<|yue|><|NEUTRAL|><|Speech|><|withitn|>呢几个字都表达唔到，我想讲嘅意思。", "yue",
     "呢几个字都表达唔到，我想讲嘅意思。"),
])
def test_one_group_per_language(raw, language, text):
    (group,) = parse(raw)
    assert group == RichText(text=text, language=language, emotion="neutral", events=("speech",),
                             itn=raw.count("withitn") == 1, raw=raw)


def test_itn_flag():
    assert parse(ZH_ITN)[0].itn is True
    assert parse(ZH)[0].itn is False
    assert parse("<|en|>hello")[0].itn is None


@pytest.mark.parametrize(("raw", "emotion"), [
    (JFK, "unknown"), (SAD, "sad"), (ANGRY, "angry"), (HAPPY, "happy"), (ZH, "neutral"),
    ("<|en|><|FEARFUL|><|Speech|><|woitn|>x", "fearful"),
    ("<|en|><|DISGUSTED|><|Speech|><|woitn|>x", "disgusted"),
    ("<|en|><|SURPRISED|><|Speech|><|woitn|>x", "surprised"),
])
def test_emotions_are_lower_case(raw, emotion):
    assert parse(raw)[0].emotion == emotion


@pytest.mark.parametrize(("raw", "event"), [
    (CRY, "cry"), (LAUGHTER, "laughter"), (COUGH, "cough"), (BGM, "bgm"), (RICH_1, "applause"),
    ("<|nospeech|><|EMO_UNKNOWN|><|Sneeze|><|woitn|>", "sneeze"),
    ("<|nospeech|><|EMO_UNKNOWN|><|Breath|><|woitn|>", "breath"),
    (SILENCE, "unknown"),
])
def test_events_are_lower_case(raw, event):
    assert parse(raw)[0].events == (event,)


@pytest.mark.parametrize("raw", [CRY, LAUGHTER, COUGH, BGM, SILENCE])
def test_event_only_output_has_no_words_and_no_language(raw):
    (group,) = parse(raw)
    assert group.text == "" and group.language is None and group.no_speech
    assert group.emotion == "unknown"
    assert render([group], "plain") == ""
    assert render([group], "tags") == raw


def test_concatenated_chunks_split_into_groups():
    groups = parse(CHUNKS)
    assert [g.text for g in groups] == ["it takes heat to bring out the odor",
                                        "a cold dip restores health and zest",
                                        "a zestful food is the hot cross bun"]
    assert [g.emotion for g in groups] == ["happy", "happy", "unknown"]
    assert "".join(g.raw for g in groups) == CHUNKS  # nothing lost between groups
    summary = merge(groups)
    assert summary.text == ("it takes heat to bring out the odor a cold dip restores health and zest "
                            "a zestful food is the hot cross bun")
    assert summary.language == "en" and summary.emotion == "happy" and summary.events == ("speech",)


def test_mixed_language_keeps_each_language_and_reports_the_main_one():
    groups = parse(MIXED)
    assert [(g.language, g.itn) for g in groups] == [("zh", True), ("en", True)]
    assert render(groups, "plain") == ("欢迎大家来体验达摩院推出的语音识别模型。 "
                                       "The tribal chieftain called for the boy.")
    assert merge(groups).language == "zh"  # 19 characters of Chinese beat 7 English words
    assert merge(parse("<|zh|><|NEUTRAL|><|Speech|><|woitn|>好 <|en|><|NEUTRAL|><|Speech|><|woitn|>"
                       "okay then let us go")).language == "en"


def test_speech_between_event_only_groups():
    groups = parse(BGM + EN + " " + LAUGHTER)
    assert [g.events for g in groups] == [("bgm",), ("speech",), ("laughter",)]
    summary = merge(groups)
    assert summary.language == "en" and summary.events == ("bgm", "speech", "laughter")
    assert summary.emotion == "neutral" and not summary.no_speech
    assert render(groups, "emoji") == "🎼 the tribal chieftain called for the boy and presented him " \
                                      "with fifty pieces of good 😀"


@pytest.mark.parametrize(("raw", "emoji"), [
    (HAPPY, "英国的哲学家曾经说过😊"),
    (SAD, "i did go and made many prisoners😔"),
    (ANGRY, "英国的哲学家曾经说过😡"),
    (JFK, "and so my fellow americans ask not what your country can do for you ask what you can do "
          "for your country"),
    (ZH, "开饭时间早上九点至下午五点"),
    (LAUGHTER, "😀"),
    (CRY, "😭"),
    (BGM, "🎼"),
    (SILENCE, ""),
    (RICH_1, "👏senior staff principal doris jackson wakefield faculty and of course my fellow classmates"),
    (RICH_2, "👏我起飞前没有扫二维码我都在看彭晏😡"),
    ("<|zh|><|HAPPY|><|BGM|><|withitn|>你好。<|zh|><|HAPPY|><|BGM|><|withitn|>再见。", "🎼你好。再见。😊"),
])
def test_emoji_mode_matches_funasr(raw, emoji):
    assert render(parse(raw), "emoji") == emoji


def test_emoji_mode_differences_from_funasr():
    # FunASR shows a cough as 🤧 like a sneeze (its event table), though its emoji table says 😷.
    assert render(parse(COUGH), "emoji") == "😷"
    # FunASR glues chunks together ("odora cold"); RAPL keeps the space.
    assert render(parse(CHUNKS), "emoji") == ("it takes heat to bring out the odor a cold dip restores "
                                              "health and zest😊 a zestful food is the hot cross bun")


@pytest.mark.parametrize("raw", [ZH, EN, MIXED, CHUNKS, RICH_2, BGM + EN])
def test_plain_mode_has_no_tags_or_emoji(raw):
    plain = render(parse(raw), "plain")
    assert "<|" not in plain and "|>" not in plain
    assert not set(plain) & set("".join(richtext.EMOTION_EMOJI.values()) + "".join(richtext.EVENT_EMOJI.values()))


@pytest.mark.parametrize("raw", [ZH, EN, MIXED, CHUNKS, BGM])
def test_tags_mode_keeps_the_raw_output(raw):
    assert render(parse(raw), "tags") == raw


def test_plain_text_without_tags_passes_through():
    (group,) = parse("  just   words  ")
    assert group == RichText(text="just words", raw="  just   words  ")
    assert render([group], "plain") == "just words"


def test_unknown_tags_are_dropped_from_text():
    (group,) = parse("<|en|><|NEUTRAL|><|Speech|><|woitn|>hello <|SOMETHING_NEW|>world")
    assert group.text == "hello world" and group.events == ("speech",)


def test_empty_output():
    assert parse("") == [] and parse("   ") == []
    assert merge([]) == RichText(text="")
    assert render([], "plain") == render([], "emoji") == render([], "tags") == ""


def test_unknown_mode():
    with pytest.raises(ValueError, match="plain, emoji, tags"):
        render(parse(EN), "html")


def test_strip_tags():
    assert richtext.strip_tags("<|zh|><|NEUTRAL|>你<|x|>好 <|en|> hi") == "你好 hi"
