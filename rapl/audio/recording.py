"""Decoded audio in memory: 16 kHz mono float32, where the decoders of rapl.audio put it.

A decoder writes into a :class:`Sink` as it goes. ``audio.decode`` fills a dense buffer grown
in place (``Dense``); ``audio.decode_recording`` fills a paged :class:`Recording`: a page
quieter than -60 dBFS is not stored at all, so hours of silence cost decode time only; a page
that is a constant, or repeats the page before it (a steady tone, a loop), costs nothing
either and is not shown to the VAD; a page of exact 16-bit values is kept as int16. Both
refuse samples past MAX_AUDIO_SECONDS (413) before storing them, and the pages every request
keeps are charged to one :class:`MemoryBudget` for the whole server (DECODE_MEMORY_MB).

Decoders resample through :class:`Resampler`, which feeds soxr pieces whose output is bounded
and checks the sink's room first, so no sample rate makes one block cost more than 512 KB;
rates under MIN_SAMPLE_RATE are refused as invalid audio.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from ..errors import BadAudio, Overloaded, TooLong

SAMPLE_RATE = 16000
SILENT_PEAK = 1e-3  # -60 dBFS: a page that never gets louder is kept as "silence", not as samples
PAGE = 1 << 15  # samples per page of a Recording: 2.048 s, 64 Silero windows
BYTES_PER_SECOND = SAMPLE_RATE * 4  # float32 pages: 64 KB per second of audio (16-bit sources: half)
# Under 4 kHz a recording holds nothing above 2 kHz: no intelligible speech. Real speech files go down to
# 8 kHz (telephone, AMR-NB, G.711) and 6 kHz (Dialogic ADPCM); a 1 Hz header is a bomb, not a recording.
MIN_SAMPLE_RATE = 4000
OUT_BLOCK = 1 << 17  # output samples per resampler call (512 KB of float32), whatever the input rate
STEADY = 1e-4  # a page whose spectrum differs from the last stored one by under -80 dB is a steady signal
BUDGET_WAIT = 2.0  # seconds a decode waits for room in a full MemoryBudget before 503


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


def check_rate(rate: int | float) -> None:
    """Refuse (400, naming ``file``) a sample rate under MIN_SAMPLE_RATE: no speech fits in it."""
    if not rate >= MIN_SAMPLE_RATE:
        raise BadAudio(f"The uploaded file says its sample rate is {rate:g} Hz; this server reads {MIN_SAMPLE_RATE} Hz "
                       "or more (telephone audio is 8000 Hz).", param="file", code="invalid_audio")


class Resampler:
    """Mono samples at ``rate`` into ``sink`` at 16 kHz (soxr), in pieces of at most OUT_BLOCK output samples.

    Before each piece is resampled its output is checked against the sink's room, so a long block
    (or a low rate) is refused as too long before memory is spent on it.
    """

    def __init__(self, rate: int, sink: Sink) -> None:
        check_rate(rate)
        self.rate = rate
        self.sink = sink
        self.step = max(1, OUT_BLOCK * rate // SAMPLE_RATE)  # input samples whose output fits OUT_BLOCK
        self.stream: Any = None
        if rate != SAMPLE_RATE:
            import soxr

            self.stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def write(self, mono: np.ndarray, last: bool = False) -> None:
        """Resample ``mono`` and append it; ``last`` flushes the resampler."""
        for start in range(0, mono.size, self.step):
            piece = mono[start:start + self.step]
            if self.stream is None:
                self.sink.write(piece)
                continue
            if len(self.sink) + math.floor(piece.size * SAMPLE_RATE / self.rate) > self.sink.max_seconds * SAMPLE_RATE:
                raise _too_long(self.sink.max_seconds)
            self.sink.write(self.stream.resample_chunk(piece))
        if last and self.stream is not None:
            self.sink.write(self.stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))


class MemoryBudget:
    """Bytes of decoded audio the whole server holds at once, shared by every request's Recording.

    A page is charged as it is stored; a Recording gives its charge back when its request is
    done (``Recording.release``). A charge that does not fit waits up to BUDGET_WAIT seconds for
    other requests to finish, then gets 503 with Retry-After; audio that would not fit even in an
    empty budget gets 413 at once.
    """

    def __init__(self, limit: int, wait: float = BUDGET_WAIT) -> None:
        self.limit = limit
        self.wait = wait
        self.used = 0
        self._room = threading.Condition()

    def take(self, nbytes: int, held: int) -> None:
        """Charge ``nbytes`` more to a Recording that holds ``held``; raises 413 or 503 when they do not fit."""
        with self._room:
            if held + nbytes > self.limit:
                raise TooLong(f"The decoded audio needs more memory than this server sets aside for it "
                              f"({self.limit / 1e6:.0f} MB, DECODE_MEMORY_MB).", param="file", code="audio_too_long")
            deadline = time.monotonic() + self.wait
            while self.used + nbytes > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Overloaded(f"The server holds as much decoded audio as it may ({self.limit / 1e6:.0f} MB, "
                                     "DECODE_MEMORY_MB) for other requests. Retry shortly.",
                                     code="decode_memory_full", retry_after=max(1, round(self.wait)))
                self._room.wait(left)
            self.used += nbytes

    def give(self, nbytes: int) -> None:
        """Give back ``nbytes``."""
        with self._room:
            self.used -= nbytes
            self._room.notify_all()


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

    A page whose peak stays under SILENT_PEAK is kept as silence (no samples). A page that is a
    constant (no sample further than SILENT_PEAK from its mean) is kept as that one value; a page
    equal to the last stored one, or a steady signal whose spectrum differs from its by less than
    STEADY (-80 dB), is kept as a reference to that page: neither costs memory, and neither is shown to
    the VAD (``page`` gives None, as for silence). A page of exact 16-bit values (16-bit PCM at
    16 kHz, as dictation apps send) is kept as int16; any other as float32. Stored pages are
    charged to ``budget`` until ``release``. Slicing gives float32 arrays (a view when the slice
    lies in one float32 page), so the model reads its chunks without the whole recording ever
    being copied.
    """

    dtype = np.dtype(np.float32)
    ndim = 1

    def __init__(self, max_seconds: float = float("inf"), budget: MemoryBudget | None = None) -> None:
        self.limit = max_seconds * SAMPLE_RATE
        self.max_seconds = max_seconds
        self.budget = budget
        self.charged = 0  # bytes charged to the budget
        self.pages: list[np.ndarray | None] = []  # full pages; None: silence
        self.still: set[int] = set()  # pages with nothing for the VAD: constants and steady repeats
        self.peak = 0.0  # the loudest sample's magnitude
        self.speech_probs: Any = None  # the VAD's per-window speech probabilities, once computed (rapl.audio.vad)
        self._tail = np.empty(PAGE, dtype=np.float32)
        self._fill = 0
        self._scratch = np.empty(PAGE, dtype=np.float32)  # per-page work, so only kept pages are allocated
        self._last: _Stored | None = None  # the last stored page, which the next ones are compared with

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
        """Memory the samples take (silent, constant and repeated pages take none)."""
        stored = {id(p): p.nbytes for p in self.pages if p is not None and p.strides != (0,)}
        return sum(stored.values()) + self._tail.nbytes

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
        stats = _PageStats.of(page, scratch)
        if stats.constant:  # an offset with nothing on it above -60 dBFS
            self.still.add(len(self.pages))
            self.pages.append(np.broadcast_to(np.float32(stats.mean), (PAGE,)))
            return
        last = self._last
        if last is not None and last.stats.near(stats):
            same = np.array_equal(page, last.samples)
            if same or (stats.stationary and last.same_spectrum(page)):
                if stats.stationary:  # a steady tone, not a looped recording: nothing for the VAD
                    self.still.add(len(self.pages))
                self.pages.append(last.page)  # no memory; exact when ``same``, a steady signal's page otherwise
                return
        self.pages.append(self._store(page, peak, copy))
        self._last = _Stored(self.pages[-1], page, stats)

    def _store(self, page: np.ndarray, peak: float, copy: bool) -> np.ndarray:
        """The page as it is kept: a view (``wrap``), int16 when its samples are 16-bit values, else float32."""
        if not copy:
            return page
        scratch = self._scratch[:page.size]
        np.multiply(page, np.float32(32768), out=scratch)  # exact: a power of two
        if peak < 1.0:
            as_int = scratch.astype(np.int16)
            if np.array_equal(as_int, scratch):  # 16-bit source samples: half the memory, no loss
                self._charge(as_int.nbytes)
                return as_int
        self._charge(page.nbytes)
        return page.copy()

    def _charge(self, nbytes: int) -> None:
        if self.budget is not None:
            self.budget.take(nbytes, self.charged)
        self.charged += nbytes

    def release(self) -> None:
        """The request is done with this audio: give its pages' charge back to the budget (idempotent)."""
        if self.budget is not None and self.charged:
            self.budget.give(self.charged)
        self.charged = 0

    def reset(self) -> None:
        """Forget everything written."""
        self.release()
        self.pages = []
        self.still = set()
        self.peak = 0.0
        self._fill = 0
        self._last = None

    def close(self) -> None:
        """Writing is over: trim the last, partial page to its samples."""
        self._tail = self._tail[:self._fill].copy()
        self._last = None
        if self._fill:
            self.peak = max(self.peak, float(np.max(np.abs(self._tail))))

    def page(self, index: int) -> np.ndarray | None:
        """Page ``index`` as float32 for the VAD (the last may be short), or None for a full page with
        nothing to judge: silence, a constant, a steady signal's repeat."""
        if index == len(self.pages):
            tail = self._tail[:self._fill]
            return tail if float(np.max(np.abs(tail), initial=0.0)) >= SILENT_PEAK else None
        page = self.pages[index]
        if page is None or index in self.still:
            return None
        if page.dtype == np.float32:
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
            if page is not None and page.dtype == np.float32 and page.strides != (0,):
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


class _PageStats:
    """What a stored page is compared by: its mean, its energy about the mean, and that of each half."""

    def __init__(self, mean: float, energy: float, first_half: float, spread: float) -> None:
        self.mean = mean
        self.energy = energy
        self.first_half = first_half
        self.constant = spread < SILENT_PEAK  # no sample further than -60 dBFS from the mean
        # a steady signal carries the same energy in both halves of a page; speech never does
        self.stationary = abs(2 * first_half - energy) <= 0.02 * energy

    @classmethod
    def of(cls, page: np.ndarray, scratch: np.ndarray) -> _PageStats:
        """The page's figures (``scratch``: a buffer of the page's size to work in)."""
        mean = float(page.mean(dtype=np.float64))
        centred = np.subtract(page, np.float32(mean), out=scratch)
        half = centred.size // 2
        first = float(np.dot(centred[:half], centred[:half]))
        energy = first + float(np.dot(centred[half:], centred[half:]))
        spread = float(np.max(np.abs(centred, out=scratch)))
        return cls(mean, energy, first, spread)

    def near(self, other: _PageStats) -> bool:
        """Energy within 0.2 % of ``other``'s, and about the same mean: worth comparing spectra (speech never is)."""
        tolerance = 2e-3 * self.energy
        return abs(self.energy - other.energy) <= tolerance and \
            (self.mean - other.mean) ** 2 * PAGE <= tolerance


class _Stored:
    """The last stored page: what the Recording keeps, its float32 samples and figures, its spectrum once needed."""

    def __init__(self, page: np.ndarray, samples: np.ndarray, stats: _PageStats) -> None:
        self.page = page
        self.samples = page if page.dtype == np.float32 else samples.copy()
        self.stats = stats
        self._spectrum: np.ndarray | None = None

    def same_spectrum(self, samples: np.ndarray) -> bool:
        """Whether ``samples`` have this page's magnitude spectrum within STEADY (-80 dB)."""
        if self._spectrum is None:
            self._spectrum = _spectrum(self.samples)
        other = _spectrum(samples)
        norm = float(np.linalg.norm(self._spectrum))
        return norm > 0 and float(np.linalg.norm(other - self._spectrum)) <= STEADY * norm


def _spectrum(samples: np.ndarray) -> np.ndarray:
    """Magnitude spectrum of a page, Hann-windowed, from 2 Hz up (an offset differs from page to page
    in a tone of no whole number of periods: it is compared by the mean instead)."""
    return np.abs(np.fft.rfft(samples * _hann(samples.size)))[4:]


_HANN: dict[int, np.ndarray] = {}


def _hann(size: int) -> np.ndarray:
    if size not in _HANN:
        _HANN[size] = np.hanning(size).astype(np.float32)
    return _HANN[size]
