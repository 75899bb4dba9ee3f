"""Decoded audio in memory: 16 kHz mono float32, where the decoders of rapl.audio put it.

A decoder writes into a :class:`Sink` as it goes. ``audio.decode`` fills a dense buffer grown
in place (``Dense``); ``audio.decode_recording`` fills a paged :class:`Recording`: a page
quieter than -60 dBFS is not stored at all, so hours of silence cost decode time only, and a
page of exact 16-bit values is kept as int16. Both refuse samples past MAX_AUDIO_SECONDS (413)
before storing them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from .errors import TooLong

SAMPLE_RATE = 16000
SILENT_PEAK = 1e-3  # -60 dBFS: a page that never gets louder is kept as "silence", not as samples
PAGE = 1 << 15  # samples per page of a Recording: 2.048 s, 64 Silero windows


class Sink(Protocol):
    """Where a decoder puts 16 kHz mono float32 samples as it goes."""

    max_seconds: float

    def write(self, samples: np.ndarray) -> None:
        """Append samples; raises TooLong past MAX_AUDIO_SECONDS."""

    def reset(self) -> None:
        """Drop everything written (a decoder failed half way; the next one starts over)."""

    def __len__(self) -> int:
        """Samples written so far."""


def duration(audio: np.ndarray | Recording) -> float:
    """Length of 16 kHz audio in seconds."""
    return len(audio) / SAMPLE_RATE


def _too_long(max_seconds: float) -> TooLong:
    return TooLong(f"The audio is longer than this server accepts ({max_seconds:g} s, "
                   "MAX_AUDIO_SECONDS).", param="file", code="audio_too_long")


class Dense:
    """A growing float32 buffer for ``audio.decode``: grown in place (realloc), sized by what was decoded."""

    def __init__(self, max_seconds: float) -> None:
        self.limit = max_seconds * SAMPLE_RATE
        self.max_seconds = max_seconds
        self.data = np.empty(SAMPLE_RATE, dtype=np.float32)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def write(self, samples: np.ndarray) -> None:
        """Append samples; raises 413 past the limit."""
        end = self.size + samples.size
        if end > self.limit:
            raise _too_long(self.max_seconds)
        if end > self.data.size:  # large buffers are mmap'ed: realloc moves pages, it does not copy them
            self.data.resize(max(end, int(self.data.size * 1.5)), refcheck=False)
        self.data[self.size:end] = samples
        self.size = end

    def reset(self) -> None:
        """Forget what was written."""
        self.size = 0

    def result(self) -> np.ndarray:
        """The samples, trimmed in place."""
        self.data.resize(self.size, refcheck=False)
        return self.data


class Recording:
    """16 kHz mono audio held in pages of PAGE samples, read like a 1-D float32 array.

    A page whose peak stays under SILENT_PEAK is kept as silence (no samples); a page of exact
    16-bit values (16-bit PCM at 16 kHz, as dictation apps send) is kept as int16; any other as
    float32. Slicing gives float32 arrays (a view when the slice lies in one float32 page), so
    the model reads its chunks without the whole recording ever being copied.
    """

    dtype = np.dtype(np.float32)
    ndim = 1

    def __init__(self, max_seconds: float = float("inf")) -> None:
        self.limit = max_seconds * SAMPLE_RATE
        self.max_seconds = max_seconds
        self.pages: list[np.ndarray | None] = []  # full pages; None: silence
        self.peak = 0.0  # the loudest sample's magnitude
        self.speech_probs: Any = None  # the VAD's per-window speech probabilities, once computed (rapl.vad)
        self._tail = np.empty(PAGE, dtype=np.float32)
        self._fill = 0
        self._scratch = np.empty(PAGE, dtype=np.float32)  # per-page work, so only kept pages are allocated

    @classmethod
    def wrap(cls, audio: np.ndarray) -> Recording:
        """A Recording over an existing float32 array: its pages are views, nothing is copied."""
        recording = cls()
        audio = np.asarray(audio, dtype=np.float32)
        full = len(audio) - len(audio) % PAGE
        for start in range(0, full, PAGE):
            recording._keep(audio[start:start + PAGE], copy=False)
        recording._tail = audio[full:]
        recording._fill = len(recording._tail)
        if recording._fill:
            recording.peak = max(recording.peak, float(np.max(np.abs(recording._tail))))
        return recording

    def __len__(self) -> int:
        return len(self.pages) * PAGE + self._fill

    @property
    def size(self) -> int:
        """Samples in the recording."""
        return len(self)

    @property
    def shape(self) -> tuple[int]:
        """(samples,), as an array's."""
        return (len(self),)

    def stored_bytes(self) -> int:
        """Memory the samples take (silent pages take none)."""
        return sum(p.nbytes for p in self.pages if p is not None) + self._tail.nbytes

    def write(self, samples: np.ndarray) -> None:
        """Append samples; raises 413 past the limit, before storing them."""
        if len(self) + samples.size > self.limit:
            raise _too_long(self.max_seconds)
        at = 0
        while at < samples.size:
            n = min(PAGE - self._fill, samples.size - at)
            self._tail[self._fill:self._fill + n] = samples[at:at + n]
            self._fill += n
            at += n
            if self._fill == PAGE:
                self._keep(self._tail, copy=True)
                self._fill = 0

    def _keep(self, page: np.ndarray, copy: bool) -> None:
        scratch = self._scratch[:page.size]
        peak = float(np.max(np.abs(page, out=scratch))) if page.size else 0.0
        self.peak = max(self.peak, peak)
        if peak < SILENT_PEAK:
            self.pages.append(None)
            return
        if copy:
            np.multiply(page, np.float32(32768), out=scratch)  # exact: a power of two
            if peak < 1.0:
                as_int = scratch.astype(np.int16)
                if np.array_equal(as_int, scratch):  # 16-bit source samples: half the memory, no loss
                    self.pages.append(as_int)
                    return
            page = page.copy()
        self.pages.append(page)

    def reset(self) -> None:
        """Forget everything written."""
        self.pages = []
        self.peak = 0.0
        self._fill = 0

    def close(self) -> None:
        """Writing is over: trim the last, partial page to its samples."""
        self._tail = self._tail[:self._fill].copy()
        if self._fill:
            self.peak = max(self.peak, float(np.max(np.abs(self._tail))))

    def page(self, index: int) -> np.ndarray | None:
        """Page ``index`` as float32 (the last may be short), or None for a silent full page."""
        if index == len(self.pages):
            tail = self._tail[:self._fill]
            return tail if float(np.max(np.abs(tail), initial=0.0)) >= SILENT_PEAK else None
        page = self.pages[index]
        if page is None or page.dtype == np.float32:
            return page
        return page.astype(np.float32) * np.float32(1 / 32768)

    def page_count(self) -> int:
        """Pages, the partial last one included."""
        return len(self.pages) + (1 if self._fill else 0)

    def __getitem__(self, key: slice | int) -> Any:
        if isinstance(key, (int, np.integer)):
            index = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= index < len(self):
                raise IndexError("index out of range")
            return self[index:index + 1][0]
        if not isinstance(key, slice):
            raise TypeError("a Recording is read by integers and slices")
        start, stop, step = key.indices(len(self))
        if step != 1:
            return self[0:len(self)][start:stop:step]
        if stop <= start:
            return np.zeros(0, dtype=np.float32)
        first, last = start // PAGE, (stop - 1) // PAGE
        if first == last and first < len(self.pages):
            page = self.pages[first]
            if page is not None and page.dtype == np.float32:
                return page[start - first * PAGE:stop - first * PAGE]
        out = np.zeros(stop - start, dtype=np.float32)
        for index in range(first, min(last, self.page_count() - 1) + 1):
            base = index * PAGE
            lo, hi = max(start, base), min(stop, base + PAGE)
            if index == len(self.pages):
                out[lo - start:hi - start] = self._tail[lo - base:hi - base]
                continue
            page = self.pages[index]
            if page is None:
                continue
            part = page[lo - base:hi - base]
            out[lo - start:hi - start] = part if part.dtype == np.float32 else part * np.float32(1 / 32768)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[0:len(self)]
        return whole if dtype is None else whole.astype(dtype)

    def __iter__(self) -> Iterator[float]:
        return iter(self[0:len(self)])
