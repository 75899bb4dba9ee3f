"""A fake speech model behind the real Backend Protocol: the real server, worker, pipeline and
clients run on it, but no model does.

It says what it was given: each segment's text is "speech N.N s", N.N being the seconds of
audio the segment covers, so an answer shows which clip (and which chunks of it) reached the
model. Each segment has three timed words, one token per word, and the language asked for
(else the first of languages[], else "en"). Every call is recorded with its options.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from rapl.backends import Capabilities
from rapl.transcript.transcription import Options, Segment, TokenLogprob, Word

RATE = 16000
# What the fake can do unless told otherwise: everything a request can ask for, any language.
ALL_CAPABILITIES = {"languages": None, "can_translate": True, "can_time_words": True, "segments_audio": False,
                    "can_bias": True, "can_detect_among": True, "can_logprobs": True}


def say(seconds: float) -> str:
    """What the fake says for ``seconds`` of audio."""
    return f"speech {seconds:.1f} s"


def transcript(seconds: float, segment_seconds: float | None = None) -> str:
    """The whole text of one chunk of ``seconds``, cut into segments of ``segment_seconds``."""
    step = segment_seconds or seconds
    cuts = [min(i * step, seconds) for i in range(int(seconds // step) + 2)]
    return " ".join(say(b - a) for a, b in zip(cuts, cuts[1:], strict=False) if b > a)


@dataclass(frozen=True)
class Call:
    """One transcribe() call: how much audio, with which options, on which thread."""

    seconds: float
    options: Options
    thread: str


class FakeBackend:
    """A deterministic Backend for tests (see the module docstring).

    ``segment_seconds``: split each chunk into segments this long (None: one per chunk);
    ``delay``: seconds of work per second of audio (spent before each segment is yielded);
    ``load_delay``: seconds load() takes; ``overrun``: seconds the last segment and word of a
    chunk run past its end (Whisper times speech a little past the audio it was given);
    ``fail`` / ``fail_load``: an exception transcribe() / load() raises; ``gate``: when set
    (a threading.Event), each transcription waits until it is set (release() sets it);
    ``capabilities``: fields of Capabilities to change from ALL_CAPABILITIES (``languages``
    may be any iterable of codes).
    """

    name = "fake"

    def __init__(self, model: str = "fake-tiny", *, hub: str = "nowhere (a fake backend)",
                 segment_seconds: float | None = None, delay: float = 0.0, load_delay: float = 0.0,
                 overrun: float = 0.0, fail: BaseException | None = None, fail_load: BaseException | None = None,
                 gate: threading.Event | None = None, **capabilities: Any) -> None:
        unknown = set(capabilities) - set(ALL_CAPABILITIES)
        if unknown:
            raise TypeError(f"FakeBackend: unknown capabilities {sorted(unknown)}")
        caps = {**ALL_CAPABILITIES, **capabilities}
        if caps["languages"] is not None:
            caps["languages"] = frozenset(caps["languages"])
        self.capabilities = Capabilities(**caps)
        self.model, self.hub = model, hub
        self.segment_seconds, self.delay, self.load_delay, self.overrun = segment_seconds, delay, load_delay, overrun
        self.fail, self.fail_load, self.gate = fail, fail_load, gate
        self.loaded = False
        self.loads = self.unloads = 0
        self.calls: list[Call] = []
        self.running = 0  # transcriptions in progress (more than one at once would be a worker bug)
        self.most_at_once = 0

    # -- the Backend Protocol -------------------------------------------------------------------

    def load(self) -> Capabilities:
        """Count the load; wait ``load_delay``; raise ``fail_load`` if set."""
        self.loads += 1
        if self.load_delay:
            time.sleep(self.load_delay)
        if self.fail_load is not None:
            raise self.fail_load
        self.loaded = True
        return self.capabilities

    def unload(self) -> None:
        """Count the unload; transcribe() fails until the next load()."""
        self.unloads += 1
        self.loaded = False

    def transcribe(self, audio: np.ndarray, options: Options) -> Any:
        """Record the call, then yield "speech N.N s" segments covering ``audio`` (see the class)."""
        if not self.loaded:
            raise RuntimeError("FakeBackend.transcribe() called while the model is not loaded")
        total = len(audio) / RATE
        self.calls.append(Call(total, options, threading.current_thread().name))
        return self._segments(total, options)

    def _segments(self, total: float, options: Options) -> Any:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.gate is not None and not self.gate.wait(timeout=60):
                raise TimeoutError("FakeBackend: the gate was never opened")
            if self.fail is not None:
                raise self.fail
            step = self.segment_seconds or total
            language = options.language or (options.candidates[0] if options.candidates else "en")
            start = 0.0
            while True:
                end = min(start + step, total)
                if self.delay:
                    time.sleep((end - start) * self.delay)
                last = end >= total - 1e-9
                yield self._segment(start, end, end + self.overrun if last else end, options, language)
                if last:
                    break
                start = end
        finally:
            self.running -= 1

    @staticmethod
    def _segment(start: float, end: float, said_end: float, options: Options, language: str) -> Segment:
        tokens = say(end - start).split()
        width = (said_end - start) / len(tokens)
        words = tuple(Word(w, start + i * width, start + (i + 1) * width, probability=0.9)
                      for i, w in enumerate(tokens))
        logprobs = tuple(TokenLogprob(f" {w}", -0.05) for w in tokens) if options.logprobs else ()
        return Segment(start, said_end, " ".join(tokens), tokens=tuple(range(1, len(tokens) + 1)),
                       temperature=options.temperature or 0.0, avg_logprob=-0.05, compression_ratio=1.0,
                       no_speech_prob=0.01, words=words if options.word_timestamps else (), logprobs=logprobs,
                       language=language)

    # -- for tests ---------------------------------------------------------------------------------

    def release(self) -> None:
        """Open the gate (if there is one): held and later transcriptions go ahead."""
        if self.gate is not None:
            self.gate.set()
