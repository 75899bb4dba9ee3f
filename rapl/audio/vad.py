"""The segmentation stage shared by every backend: find speech, cut at pauses.

Silero VAD (the ONNX model that faster-whisper ships in its package) finds speech; the
audio is then cut into chunks no longer than MAX_CHUNK_SECONDS at pauses of at least
MIN_SILENCE_MS, so silence never reaches the model and every chunk keeps its offset.

For models that segment audio themselves (Whisper), neighbouring stretches of speech are
joined into one chunk with the pauses between them left out (each keeps its padding), as
faster-whisper's own ``vad_filter`` does: Whisper encodes every chunk as a 30 s window, so
a chunk of packed speech needs fewer windows than one that carries its pauses along. The
chunk maps the model's times back to the recording's.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..settings import Settings
from ..transcript.transcription import VadOptions
from .recording import PAGE, SAMPLE_RATE, Recording

log = logging.getLogger(__name__)

RATE = SAMPLE_RATE  # the one sample rate (rapl.audio.recording)
_WINDOW = 512  # samples Silero judges at a time
_CONTEXT = 64  # samples of the window before that it sees too
_BATCH_PAGES = 2  # pages (4 s) per Silero call: its buffers stay a few MB
_PAD_MS = 200  # speech kept on each side of a detected span
KEPT_PAUSE_SECONDS = 2.0  # the longest pause a packed chunk keeps, speech to speech (longer ones shortened)
_MIN_SAMPLES = RATE // 10  # no speech fits in less than 0.1 s; models fail on a few samples


@dataclass(frozen=True)
class Chunk:
    """A piece of the audio to transcribe, in samples: all of ``start:end``, or only its ``pieces``
    (stretches of speech, in order, inside it), joined with the pauses between them left out."""

    start: int
    end: int
    pieces: tuple[tuple[int, int], ...] = ()
    speech: tuple[tuple[int, int], ...] = ()  # the VAD's spans of speech inside it, when it was planned

    @property
    def offset(self) -> float:
        """Where the chunk starts, in seconds."""
        return self.start / RATE

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """The stretches of the recording the model is given, in samples."""
        return self.pieces or ((self.start, self.end),)

    @property
    def length(self) -> int:
        """Samples the model is given."""
        return sum(end - start for start, end in self.spans)

    def samples(self, audio: np.ndarray | Recording) -> np.ndarray:
        """The audio the model is given."""
        if not self.pieces:
            return audio[self.start:self.end]
        return np.concatenate([audio[start:end] for start, end in self.pieces])

    def stretches(self) -> list[tuple[int, int]]:
        """Its stretches of speech (the VAD's spans, recording samples); the whole chunk when it was not
        planned from them."""
        return list(self.speech) or [(self.start, self.end)]

    def part(self, start: int, end: int) -> Chunk:
        """The chunk's audio between ``start`` and ``end`` (recording samples) as a chunk of its own."""
        def clip(spans: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
            return tuple((max(a, start), min(b, end)) for a, b in spans if a < end and start < b)

        pieces, speech = clip(self.pieces), clip(self.speech)
        if pieces:
            return Chunk(pieces[0][0], pieces[-1][1], pieces if len(pieces) > 1 else (), speech)
        return Chunk(max(self.start, start), min(self.end, end), (), speech)

    def to_recording(self, seconds: float, ending: bool = False) -> float:
        """A time in the chunk's audio (seconds) as a time in the recording, relative to its start.

        A time on the seam of two pieces belongs to the later piece, or to the earlier one when it
        ``ending`` a segment or word.
        """
        if not self.pieces:
            return seconds
        at = seconds * RATE
        ends = list(_running_ends(self.pieces))
        index = (bisect.bisect_left if ending else bisect.bisect_right)(ends, at)
        index = min(index, len(self.pieces) - 1)
        before = ends[index - 1] if index else 0
        start, end = self.pieces[index]
        return (min(start + max(at - before, 0), end) - self.start) / RATE


def _running_ends(pieces: tuple[tuple[int, int], ...]) -> list[int]:
    total, out = 0, []
    for start, end in pieces:
        total += end - start
        out.append(total)
    return out


class Segmenter:
    """Plans the chunks of one recording (stateless: safe from any thread)."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.VAD
        self.threshold = settings.VAD_THRESHOLD
        self.max_chunk = settings.MAX_CHUNK_SECONDS * RATE
        self.min_silence = settings.MIN_SILENCE_MS * RATE // 1000
        self.pad_ms = _PAD_MS

    def tuned(self, options: VadOptions | None) -> Segmenter:
        """This segmenter with a request's own settings (chunking_strategy=server_vad); VAD on."""
        if options is None:
            return self
        tuned = copy.copy(self)
        tuned.enabled = True
        if options.threshold is not None:
            tuned.threshold = options.threshold
        if options.min_silence_ms is not None:
            tuned.min_silence = options.min_silence_ms * RATE // 1000
        if options.padding_ms is not None:
            tuned.pad_ms = options.padding_ms
        return tuned

    def load(self) -> None:
        """Load the VAD model once, at start-up."""
        if self.enabled:
            from faster_whisper.vad import get_vad_model

            started = time.perf_counter()
            get_vad_model()
            self.speech(np.random.default_rng(0).normal(0, 0.01, RATE).astype(np.float32))  # loud enough to run
            log.info("VAD ready in %.2f s", time.perf_counter() - started)

    def speech(self, audio: np.ndarray | Recording) -> list[tuple[int, int]]:
        """Speech spans (start, end) in samples, each at most MAX_CHUNK_SECONDS long.

        Silero reads the audio a few seconds at a time, so its buffers stay small however long
        the recording; pages quieter than -60 dBFS are silence without asking it. A Recording
        keeps the probabilities: asking again (another request setting, the dictation path's
        second look) costs only the span search.
        """
        probs = speech_probs(audio)
        pad = min(self.pad_ms * RATE // 1000, self.max_chunk // 4)  # speech fills at least half a chunk
        return _timestamps(probs, len(audio), threshold=self.threshold,
                           min_silence=max(self.min_silence, RATE // 1000), max_speech=self.max_chunk, pad=pad)

    def heard(self, audio: np.ndarray | Recording) -> bool:
        """Whether ``audio`` holds any speech: ``bool(self.speech(audio))``, but Silero stops at the
        first few seconds that hold some (the dictation path asks only this, beside the model)."""
        recording = audio if isinstance(audio, Recording) else Recording.wrap(audio)
        if recording.speech_probs is not None:
            return bool(self.speech(recording))
        ladder = itertools.chain((16, 32, 64), itertools.repeat(128))  # 0.5 s first: speech starts early
        return any(float(probs.max()) >= self.threshold for _first, probs in _batches(recording, ladder))

    def _windows(self, total: int) -> list[Chunk]:
        """Fixed windows of MAX_CHUNK_SECONDS (VAD off); a tail under a second joins the window before."""
        chunks = [Chunk(s, min(s + self.max_chunk, total)) for s in range(0, total, self.max_chunk)]
        if len(chunks) > 1 and chunks[-1].end - chunks[-1].start < RATE:
            chunks[-2:] = [Chunk(chunks[-2].start, total)]
        return [c for c in chunks if c.end - c.start >= _MIN_SAMPLES]

    def plan(self, audio: np.ndarray, merge: bool = True) -> list[Chunk]:
        """The chunks to transcribe. ``merge`` (models that segment well themselves) joins
        neighbouring spans into chunks of up to MAX_CHUNK_SECONDS; in a recording longer than
        that, longer pauses are shortened to KEPT_PAUSE_SECONDS inside a chunk (the rest is left
        out). Otherwise each pause starts a new chunk. Streamed or not, and whatever the response
        format, the plan is the same, so are the words."""
        if not self.enabled:
            return self._windows(len(audio))
        pack = merge and len(audio) > self.max_chunk
        kept = max(0, int(KEPT_PAUSE_SECONDS * RATE) - 2 * min(self.pad_ms * RATE // 1000, self.max_chunk // 4))
        chunks: list[Chunk] = []
        for start, end in self.speech(audio):
            last = chunks[-1] if chunks else None
            if last is not None and pack:
                pieces = _joined(last.spans, (start, end), kept, len(audio))
                if sum(b - a for a, b in pieces) <= self.max_chunk:
                    chunks[-1] = Chunk(pieces[0][0], pieces[-1][1], pieces if len(pieces) > 1 else (),
                                       (*last.speech, (start, end)))
                    continue
            elif last is not None and merge and end - last.start <= self.max_chunk:
                chunks[-1] = Chunk(last.start, end, (), (*last.speech, (start, end)))
                continue
            chunks.append(Chunk(start, end, (), ((start, end),)))
        return chunks


def _joined(spans: tuple[tuple[int, int], ...], span: tuple[int, int], kept: int,
            total: int) -> tuple[tuple[int, int], ...]:
    """``spans`` and ``span`` after them: one piece across a pause of at most ``kept`` samples (beyond
    the spans' padding), else two pieces with ``kept`` of the pause between them, half on each side."""
    (start, end), (last_start, last_end) = span, spans[-1]
    if start - last_end <= kept:
        return (*spans[:-1], (last_start, max(end, last_end)))
    half = kept // 2
    return (*spans[:-1], (last_start, last_end + half), (max(start - half, 0), min(end, total)))


def speech_probs(audio: np.ndarray | Recording) -> np.ndarray:
    """Silero's speech probability for each 512-sample window of ``audio`` (kept on a Recording)."""
    recording = audio if isinstance(audio, Recording) else Recording.wrap(audio)
    if recording.speech_probs is None:
        recording.speech_probs = _probabilities(recording)
    return recording.speech_probs


def _probabilities(recording: Recording) -> np.ndarray:
    """Silero's probabilities for the whole recording (a silent page scores 0)."""
    probs = np.zeros(-(-len(recording) // _WINDOW), dtype=np.float32)
    for first, batch in _batches(recording):
        probs[first:first + len(batch)] = batch
    return probs


def _batches(recording: Recording, sizes: Iterator[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Run Silero over the loud pages, _BATCH_PAGES at a time, in order: (first window, probabilities).

    ``sizes`` (windows per Silero call, in turn) cuts the batches finer, so a caller that stops
    early has run little (Silero's state carries over from call to call: the probabilities are the
    same). A silent page is skipped and resets Silero's state, as a real pause would.
    """
    from faster_whisper.vad import get_vad_model

    model = get_vad_model()
    state: list[np.ndarray] = []  # h, c and the last context of the loud stretch being read
    batch: list[np.ndarray] = []
    first = 0  # the batch's first window

    def run() -> Iterator[tuple[int, np.ndarray]]:
        nonlocal batch
        if not batch:
            return
        samples = np.concatenate(batch) if len(batch) > 1 else batch[0]
        batch = []
        if samples.size % _WINDOW:
            samples = np.pad(samples, (0, _WINDOW - samples.size % _WINDOW))
        windows = samples.reshape(-1, _WINDOW)
        at = 0
        while at < len(windows):
            step = next(sizes) if sizes is not None else len(windows)
            yield first + at, _silero(model, windows[at:at + step], state)
            at += step

    for index in range(recording.page_count()):
        page = recording.page(index)
        if page is None:
            yield from run()
            state.clear()
            continue
        if not batch:
            first = index * PAGE // _WINDOW
        batch.append(page)
        if len(batch) == _BATCH_PAGES:
            yield from run()
            first = (index + 1) * PAGE // _WINDOW
    yield from run()


def _silero(model: Any, windows: np.ndarray, state: list[np.ndarray]) -> np.ndarray:
    """Silero's probabilities for consecutive ``windows``, carrying its ``state`` (h, c, context) on."""
    if not state:
        zeros = np.zeros((1, 1, 128), dtype=np.float32)
        state[:] = [zeros, zeros.copy(), np.zeros((1, _CONTEXT), dtype=np.float32)]
    context = np.concatenate([state[2], windows[:-1, -_CONTEXT:]])
    out, h, c = model.session.run(None, {"input": np.concatenate([context, windows], axis=1),
                                         "h": state[0], "c": state[1]})
    state[:] = [h, c, windows[-1:, -_CONTEXT:].copy()]
    return np.asarray(out, dtype=np.float32).reshape(-1)


def _timestamps(probs: np.ndarray, total: int, threshold: float, min_silence: int, max_speech: int,
                pad: int) -> list[tuple[int, int]]:
    """Speech spans from window probabilities: faster-whisper's get_speech_timestamps, on probabilities
    computed beforehand (all sizes in samples; ``max_speech`` is its max_speech_duration: the longest
    span, its padding included).

    The padding is taken off ``max_speech`` once, here, and at least a second of speech is left, so
    however much padding a request asks for the spans stay a sensible length (padding taken off
    twice made this negative past 7.5 s of it, cutting every 32 ms window into a span of its own).
    """
    if not probs.size or float(probs.max()) < threshold:
        return []
    neg_threshold = max(threshold - 0.15, 0.01)
    max_samples = max(max_speech - _WINDOW - 2 * pad, RATE)
    min_silence_at_max = RATE * 98 // 1000
    triggered = False
    speeches: list[list[int]] = []
    start = 0
    temp_end = prev_end = next_start = 0
    for i, prob in enumerate(probs.tolist()):
        at = _WINDOW * i
        if prob >= threshold and temp_end:
            temp_end = 0
            if next_start < prev_end:
                next_start = at
        if prob >= threshold and not triggered:
            triggered, start = True, at
            continue
        if triggered and at - start > max_samples:
            if prev_end:
                speeches.append([start, prev_end])
                if next_start < prev_end:  # silence since, and not speech again yet
                    triggered = False
                else:
                    start = next_start
                prev_end = next_start = temp_end = 0
            else:
                speeches.append([start, at])
                prev_end = next_start = temp_end = 0
                triggered = False
                continue
        if prob < neg_threshold and triggered:
            if not temp_end:
                temp_end = at
            if at - temp_end > min_silence_at_max:
                prev_end = temp_end
            if at - temp_end < min_silence:
                continue
            if temp_end > start:
                speeches.append([start, temp_end])
            prev_end = next_start = temp_end = 0
            triggered = False
    if triggered and total > start:
        speeches.append([start, total])
    for i, speech in enumerate(speeches):  # pad, splitting short gaps between neighbours
        if i == 0:
            speech[0] = max(0, speech[0] - pad)
        if i + 1 < len(speeches):
            gap = speeches[i + 1][0] - speech[1]
            if gap < 2 * pad:
                speech[1] += gap // 2
                speeches[i + 1][0] = max(0, speeches[i + 1][0] - gap // 2)
            else:
                speech[1] = min(total, speech[1] + pad)
                speeches[i + 1][0] = max(0, speeches[i + 1][0] - pad)
        else:
            speech[1] = min(total, speech[1] + pad)
    return [(s, e) for s, e in speeches]


class StreamingVad:
    """Silero over audio as it arrives (a live session's): a probability for each 512-sample window.

    The state carries from call to call, so the probabilities are those of the whole stream read at
    once; a window is judged once all its samples are in. Safe beside the model thread: each
    session has its own state, and the ONNX session runs concurrently.
    """

    WINDOW = _WINDOW

    def __init__(self) -> None:
        self._state: list[np.ndarray] = []
        self._rest = np.zeros(0, dtype=np.float32)
        self.windows = 0  # windows judged so far

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """The probabilities of the windows ``samples`` completes (16 kHz float32)."""
        audio = np.concatenate([self._rest, samples]) if self._rest.size else samples
        whole = audio.size - audio.size % _WINDOW
        self._rest = audio[whole:].copy()
        if not whole:
            return np.zeros(0, dtype=np.float32)
        from faster_whisper.vad import get_vad_model

        windows = np.ascontiguousarray(audio[:whole], dtype=np.float32).reshape(-1, _WINDOW)
        probs = np.concatenate([_silero(get_vad_model(), windows[at:at + 64], self._state)
                                for at in range(0, len(windows), 64)])
        self.windows += len(windows)
        return probs
