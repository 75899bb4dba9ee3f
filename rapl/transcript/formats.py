"""Pure functions from a Transcription to each OpenAI response format."""

from __future__ import annotations

import math
from typing import Any

from .languages import name_of
from .text import WORDS, bare_word, join_text, unspaced
from .transcription import Segment, TokenLogprob, Transcription

AUDIO_TOKENS_PER_SECOND = 10
FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")
CONTENT_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8",
    "vtt": "text/plain; charset=utf-8",
    "diarized_json": "application/json",
}


def ms(seconds: float) -> float:
    """Round a time to whole milliseconds (every timestamp passes through here)."""
    return round(seconds * 1000) / 1000


def usage(result: Transcription) -> dict[str, Any]:
    """OpenAI's duration-based usage block."""
    return {"type": "duration", "seconds": math.ceil(result.duration)}


def by_tokens(model: str) -> bool:
    """Whether OpenAI bills ``model`` (the name a request sent) by tokens: the GPT transcription models
    (gpt-transcribe, gpt-4o-transcribe, gpt-4o-mini-transcribe..., gpt-live-transcribe), not the Whisper
    ones (whisper-1, gpt-realtime-whisper), which are billed by duration; any other name: by duration."""
    return model.startswith("gpt-") and "whisper" not in model


def usage_for(result: Transcription, model: str, prompt: str | None = None) -> dict[str, Any]:
    """The usage block OpenAI gives for ``model``: tokens or duration (see :func:`by_tokens`)."""
    return token_usage(result, prompt) if by_tokens(model) else usage(result)


def languages(result: Transcription) -> list[dict[str, str]]:
    """OpenAI's ``languages``: each language heard, in order of appearance (empty: none detected)."""
    return [{"code": code} for code in result.languages]


def token_usage(result: Transcription, prompt: str | None = None) -> dict[str, Any]:
    """OpenAI's token usage block (stream ``transcript.text.done`` events).

    Input: the audio at OpenAI's rate of one audio token per 100 ms, plus the prompt's words.
    Output: the tokens the model generated where it reports them (Whisper), else the words of
    the text (one per Han or kana character).
    """
    audio = math.ceil(result.duration * AUDIO_TOKENS_PER_SECOND)
    text_in = len(WORDS.findall(prompt or ""))
    generated = sum(len(s.tokens) for s in result.segments) or len(WORDS.findall(result.text))
    return {"type": "tokens", "input_tokens": audio + text_in, "output_tokens": generated,
            "total_tokens": audio + text_in + generated,
            "input_token_details": {"audio_tokens": audio, "text_tokens": text_in}}


def to_json(result: Transcription, logprobs: bool = False, model: str = "",
            prompt: str | None = None) -> dict[str, Any]:
    """``response_format=json``; ``logprobs`` adds each token's log-probability (include[]=logprobs);
    ``model`` (the name the request sent) and ``prompt`` shape the usage block."""
    body: dict[str, Any] = {"text": result.text, "languages": languages(result)}
    if logprobs:
        body["logprobs"] = token_logprobs(result.logprobs)
    body["usage"] = usage_for(result, model, prompt)
    return body


def token_logprobs(tokens: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    """OpenAI's logprobs list: token, log-probability and the token's UTF-8 bytes."""
    return [{"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode("utf-8"))} for t in tokens]


def to_text(result: Transcription) -> str:
    """``response_format=text``: the bare transcript."""
    return result.text


def to_verbose_json(result: Transcription, words: bool = False, segments: bool = True) -> dict[str, Any]:
    """``response_format=verbose_json``: ``segments`` and/or ``words`` (OpenAI's timestamp_granularities)."""
    body: dict[str, Any] = {
        "task": result.task,
        # a translation's is the output's (OpenAI: "always english"); languages[] are the input's
        "language": "english" if result.task == "translate" else name_of(result.language) or "unknown",
        "languages": languages(result),
        "duration": ms(result.duration),
        "text": result.text,
    }
    if segments:
        body["segments"] = [_segment(i, s) for i, s in enumerate(timed_segments(result))]
    if words:
        body["words"] = [{"word": bare, "start": ms(w.start), "end": ms(w.end)}
                         for w in result.words if (bare := bare_word(w.word))]
    body["usage"] = usage(result)
    return body


def _spaced(text: str) -> str:
    """Segment text as OpenAI writes it: a leading space before words of spaced scripts."""
    return f" {text}" if text and not unspaced(text[0]) else text


def _segment(index: int, seg: Segment) -> dict[str, Any]:
    body = {
        "id": index,
        "seek": int(round(seg.start * 100)),  # Whisper's seek counts 10 ms frames
        "start": ms(seg.start),
        "end": ms(seg.end),
        "text": _spaced(seg.text),
        "tokens": list(seg.tokens),
        "temperature": seg.temperature,
        "avg_logprob": seg.avg_logprob,
        "compression_ratio": seg.compression_ratio,
        "no_speech_prob": seg.no_speech_prob,
    }
    body.update(seg.extra)  # RAPL extensions, e.g. SenseVoice's emotion and events
    return body


def timed_segments(result: Transcription) -> tuple[Segment, ...]:
    """The segments, or one segment spanning the audio when the model gave none but text."""
    if result.segments:
        return result.segments
    if result.text:
        return (Segment(start=0.0, end=result.duration, text=result.text),)
    return ()


def _clock(seconds: float, separator: str) -> str:
    total = round(seconds * 1000)
    hours, rest = divmod(total, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(result: Transcription) -> str:
    """``response_format=srt``."""
    blocks = [f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
              for i, s in enumerate(timed_segments(result), start=1)]
    return "\n".join(blocks)


def to_vtt(result: Transcription) -> str:
    """``response_format=vtt``."""
    blocks = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n"
              for s in timed_segments(result)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_diarized_json(result: Transcription, model: str = "", prompt: str | None = None) -> dict[str, Any]:
    """``response_format=diarized_json``: segments labelled by speaker (``extra["speaker"]``); ``text`` reads
    as OpenAI's documented example does, one line per turn with its speaker (``A: ...\nB: ...``)."""
    segments = timed_segments(result)
    return {"task": "transcribe", "duration": ms(result.duration), "text": speaker_lines(segments),
            "segments": [diarized_segment(i, s) for i, s in enumerate(segments)],
            "usage": usage_for(result, model, prompt)}


def speaker_lines(segments: tuple[Segment, ...]) -> str:
    """The segments' text, a line per turn (neighbouring segments of one speaker): ``A: text``."""
    turns: list[tuple[str, list[str]]] = []
    for seg in segments:
        speaker = _speaker(seg)
        if turns and turns[-1][0] == speaker:
            turns[-1][1].append(seg.text)
        else:
            turns.append((speaker, [seg.text]))
    return "\n".join(f"{speaker}: {join_text(texts)}" for speaker, texts in turns if join_text(texts))


def _speaker(seg: Segment) -> str:
    return str(seg.extra.get("speaker", "A"))


def diarized_segment(index: int, seg: Segment) -> dict[str, Any]:
    """One ``transcript.text.segment`` (the diarized_json segment and the streamed event alike); its text
    has no leading space (OpenAI's diarized segments have none)."""
    return {"type": "transcript.text.segment", "id": segment_id(index), "start": ms(seg.start), "end": ms(seg.end),
            "text": seg.text.strip(), "speaker": _speaker(seg)}


def segment_id(index: int) -> str:
    """A segment's id in diarized answers and stream events."""
    return f"seg_{index}"


def render(result: Transcription, response_format: str, words: bool = False, segments: bool = True,
           logprobs: bool = False, model: str = "", prompt: str | None = None) -> str | dict[str, Any]:
    """The body for ``response_format``: a dict for the JSON formats, else text. ``model`` is the name
    the request sent (json and diarized_json give token usage for GPT names, as OpenAI does)."""
    if response_format == "json":
        return to_json(result, logprobs, model, prompt)
    if response_format == "verbose_json":
        return to_verbose_json(result, words, segments)
    if response_format == "diarized_json":
        return to_diarized_json(result, model, prompt)
    return {"text": to_text, "srt": to_srt, "vtt": to_vtt}[response_format](result)
