"""The segmentation stage shared by every backend: find speech, cut at pauses.

Silero VAD (the ONNX model that faster-whisper ships in its package) finds speech; the
audio is then cut into chunks no longer than MAX_CHUNK_SECONDS at pauses of at least
MIN_SILENCE_MS, so silence never reaches the model and every chunk keeps its offset.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from config import Settings

log = logging.getLogger(__name__)

RATE = 16000
_BLOCK = 10 * 60 * RATE  # VAD runs over 10-minute blocks, so its buffers stay small
_PAD_MS = 200  # speech kept on each side of a detected span
_MIN_SAMPLES = RATE // 10  # no speech fits in less than 0.1 s; models fail on a few samples


@dataclass(frozen=True)
class Chunk:
    """A piece of the audio to transcribe, in samples."""

    start: int
    end: int

    @property
    def offset(self) -> float:
        """Where the chunk starts, in seconds."""
        return self.start / RATE


class Segmenter:
    """Plans the chunks of one recording (stateless: safe from any thread)."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.VAD
        self.threshold = settings.VAD_THRESHOLD
        self.max_chunk = settings.MAX_CHUNK_SECONDS * RATE
        self.min_silence = settings.MIN_SILENCE_MS * RATE // 1000

    def load(self) -> None:
        """Load the VAD model once, at start-up."""
        if self.enabled:
            from faster_whisper.vad import get_vad_model

            started = time.perf_counter()
            get_vad_model()
            self.speech(np.zeros(RATE, dtype=np.float32))
            log.info("VAD ready in %.2f s", time.perf_counter() - started)

    def speech(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """Speech spans (start, end) in samples, each at most MAX_CHUNK_SECONDS long."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        options = VadOptions(threshold=self.threshold, min_silence_duration_ms=max(self.min_silence * 1000 // RATE, 1),
                             max_speech_duration_s=self.max_chunk / RATE - 2 * _PAD_MS / 1000,
                             speech_pad_ms=_PAD_MS)
        spans: list[tuple[int, int]] = []
        for block_start in range(0, len(audio), _BLOCK):
            block = audio[block_start:block_start + _BLOCK]
            for ts in get_speech_timestamps(block, options):
                start, end = ts["start"] + block_start, ts["end"] + block_start
                if spans and start - spans[-1][1] < self.min_silence and end - spans[-1][0] <= self.max_chunk:
                    spans[-1] = (spans[-1][0], end)  # a span cut by a block boundary
                else:
                    spans.append((start, end))
        return spans

    def _windows(self, total: int) -> list[Chunk]:
        """Fixed windows of MAX_CHUNK_SECONDS (VAD off); a tail under a second joins the window before."""
        chunks = [Chunk(s, min(s + self.max_chunk, total)) for s in range(0, total, self.max_chunk)]
        if len(chunks) > 1 and chunks[-1].end - chunks[-1].start < RATE:
            chunks[-2:] = [Chunk(chunks[-2].start, total)]
        return [c for c in chunks if c.end - c.start >= _MIN_SAMPLES]

    def plan(self, audio: np.ndarray, merge: bool = True, merge_seconds: float | None = None) -> list[Chunk]:
        """The chunks to transcribe. ``merge`` joins neighbouring spans up to MAX_CHUNK_SECONDS
        (or ``merge_seconds``, if smaller) for models that segment well themselves; otherwise
        each pause starts a new chunk."""
        if not self.enabled:
            return self._windows(len(audio))
        limit = min(self.max_chunk, int((merge_seconds or self.max_chunk) * RATE))
        chunks: list[Chunk] = []
        for start, end in self.speech(audio):
            if merge and chunks and end - chunks[-1].start <= limit:
                chunks[-1] = Chunk(chunks[-1].start, end)
            else:
                chunks.append(Chunk(start, end))
        return chunks
