"""Decode any upload to 16 kHz mono float32, in memory, without trusting its name, type or header.

PCM WAV and FLAC take a fast path (libsndfile through soundfile, soxr to resample); every
other container goes through FFmpeg's libraries in-process (PyAV). If neither can read
the bytes and an ``ffmpeg`` executable is on PATH, it gets a try through pipes (no
temporary files) before the upload is refused.

The decoder reads the upload and nothing else. FFmpeg may only use the demuxers in
FORMATS, the audio and video containers people send (``format_whitelist``), so playlists
(HLS, DASH, ffconcat), SDP/RTP, image sequences and devices are refused before they open
anything; and no protocol at all (``protocol_whitelist``), so no demuxer can open a file,
a socket or a URL named inside an upload. Both hold for PyAV and for the ``ffmpeg`` CLI.

Limits hold while decoding, on what was actually decoded: MAX_AUDIO_SECONDS stops the
decoder as it is reached (a header's length is never trusted), and the work FFmpeg may do
is budgeted by the upload's size and the audio it yields (see ``_Budget``), so a small file
of tiny packets is refused at once. Decoded audio lands in pages (``Recording``); a page
quieter than -60 dBFS is not stored at all, so hours of silence cost decode time only.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import IO, Any, Protocol

import numpy as np

from .errors import APIError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SILENT_PEAK = 1e-3  # -60 dBFS: a page that never gets louder is kept as "silence", not as samples
PAGE = 1 << 15  # samples per page of a Recording: 2.048 s, 64 Silero windows
# FFmpeg demuxers an upload may use: the audio and video containers clients send. WAV covers
# RF64/BW64; "ogg" covers Opus, Vorbis, FLAC and Speex in Ogg; "matroska,webm" and
# "mov,mp4,m4a,3gp,3g2,mj2" are one demuxer each; "asf" reads WMA; "aac" reads ADTS.
FORMATS = ("wav", "w64", "aiff", "caf", "au", "flac", "mp3", "ogg", "matroska", "webm", "mov", "mp4", "m4a",
           "3gp", "3g2", "aac", "amr", "amrnb", "amrwb", "asf", "ac3", "eac3", "mpegts")
_FORMAT_WHITELIST = ",".join(FORMATS)
# "none" names no protocol: a demuxer that tries to open anything besides the upload (a file,
# a socket, a URL) is refused. The upload itself is read through PyAV's own I/O, not a protocol.
_PYAV_OPTIONS = {"format_whitelist": _FORMAT_WHITELIST, "protocol_whitelist": "none"}
_SF_MAGIC = (b"RIFF", b"RF64", b"fLaC")
_SF_UNKNOWN_FRAMES = 1 << 40  # libsndfile's frame count when a header does not say (FLAC written to a pipe)

# Decode budget: FFmpeg's work per request grows with packets and frames, so their number is
# bounded by what the upload gives back. Codecs use at least 2.5 ms of audio per packet (Opus's
# shortest frame) and usually 20 ms or more: past the first few thousand, a packet must bring
# 2 ms of audio on average, and past 100 packets per second of audio each needs 8 bytes of
# upload. A file of one-sample packets is refused after a few thousand of them.
_FREE_PACKETS = 4096
_DENSE_PER_SECOND = 500
_CHEAP_PER_SECOND = 100
_BYTES_PER_PACKET = 8
_CLI_SECONDS = 10.0  # the ffmpeg CLI has no packet counter: it gets 10 s plus 2 s per MB of upload
_CLI_SECONDS_PER_MB = 2.0


class Sink(Protocol):
    """Where a decoder puts 16 kHz mono float32 samples as it goes."""

    max_seconds: float

    def write(self, samples: np.ndarray) -> None:
        """Append samples; raises APIError 413 past MAX_AUDIO_SECONDS."""

    def reset(self) -> None:
        """Drop everything written (a decoder failed half way; the next one starts over)."""

    def __len__(self) -> int:
        """Samples written so far."""


def decode(source: bytes | IO[bytes], max_seconds: float = float("inf")) -> np.ndarray:
    """Decode ``source`` (bytes or a seekable binary file) to a 1-D float32 array at 16 kHz mono.

    Raises APIError 400 when nothing can decode it (or it would cost more work than its size
    allows) and 413 when it is longer than ``max_seconds``.
    """
    sink = _Dense(max_seconds)
    decode_into(source, sink)
    return sink.result()


def decode_recording(source: bytes | IO[bytes], max_seconds: float = float("inf")) -> Recording:
    """Decode ``source`` like ``decode``, into a paged Recording: silence costs no memory.

    Peak memory is the decoded audio once (as stored pages), plus a few buffers of a second.
    """
    recording = Recording(max_seconds)
    decode_into(source, recording)
    recording.close()
    return recording


def decode_into(source: bytes | IO[bytes], sink: Sink) -> None:
    """Decode ``source`` into ``sink``: soundfile, then PyAV, then the ffmpeg CLI, each from the start."""
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    size = _size(data)
    magic = _rewound(data).read(4)
    if not magic:
        raise APIError("The uploaded file is empty.", 400, param="file", code="empty_file")
    decoded = magic in _SF_MAGIC and _decode_soundfile(_rewound(data), sink)
    if not decoded:
        sink.reset()
        decoded = _decode_pyav(_rewound(data), sink, size)
    if not decoded:
        sink.reset()
        decoded = _decode_ffmpeg_cli(_rewound(data), sink, size)
    if not decoded:
        raise APIError("The uploaded file could not be decoded as audio. Send a common audio or "
                       "video file (wav, mp3, m4a, ogg, opus, webm, flac, mp4, ...).", 400,
                       param="file", code="invalid_audio")
    if len(sink) == 0:
        raise APIError("The uploaded file contains no audio samples.", 400, param="file",
                       code="invalid_audio")


def _rewound(data: IO[bytes]) -> IO[bytes]:
    data.seek(0)
    return data


def _size(data: IO[bytes]) -> int:
    data.seek(0, os.SEEK_END)
    return data.tell()


def duration(audio: np.ndarray | Recording) -> float:
    """Length of 16 kHz audio in seconds."""
    return len(audio) / SAMPLE_RATE


def _too_long(max_seconds: float) -> APIError:
    return APIError(f"The audio is longer than this server accepts ({max_seconds:g} s, "
                    "MAX_AUDIO_SECONDS).", 413, param="file", code="audio_too_long")


def _over_budget(detail: str) -> APIError:
    return APIError(f"The uploaded file needs far more decoding work than its size and length justify "
                    f"({detail}); it is refused. Re-encode it with a common codec.", 400, param="file",
                    code="decode_budget_exceeded")


class _Dense:
    """A growing float32 buffer for ``decode``: grown in place (realloc), sized by what was decoded."""

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


def _decode_soundfile(data: IO[bytes], sink: Sink) -> bool:
    """WAV/FLAC through libsndfile in blocks until it stops giving samples (its frame count is not trusted)."""
    import soundfile as sf

    try:
        with sf.SoundFile(data) as f:
            if f.frames >= _SF_UNKNOWN_FRAMES:  # a length the header does not know (FLAC from a pipe): PyAV reads it
                return False
            resampler = None
            if f.samplerate != SAMPLE_RATE:
                import soxr

                resampler = soxr.ResampleStream(f.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            buffer = np.empty((max(1 << 12, (1 << 17) // max(f.channels, 1)), f.channels), dtype=np.float32)
            while True:
                block = f.read(out=buffer)  # one buffer for the whole file
                if not len(block):
                    break
                mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
                sink.write(resampler.resample_chunk(mono) if resampler else mono)
            if resampler is not None:
                sink.write(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        log.debug("soundfile could not read the upload (%s); trying PyAV", exc)
        return False
    return len(sink) > 0


class _Budget:
    """Counts FFmpeg's packets and frames against what the upload gives back (see module constants)."""

    def __init__(self, upload_bytes: int) -> None:
        self.upload_bytes = upload_bytes
        self.seconds = 0.0
        self.packets = 0
        self.frames = 0
        self.cheap_allowance = upload_bytes / _BYTES_PER_PACKET

    def allowed(self) -> float:
        """Packets (or frames) allowed for the audio decoded so far."""
        return _FREE_PACKETS + min(_DENSE_PER_SECOND * self.seconds,
                                   _CHEAP_PER_SECOND * self.seconds + self.cheap_allowance)

    def packet(self) -> None:
        """Count one packet; raises 400 past the budget."""
        self.packets += 1
        if self.packets > _FREE_PACKETS and self.packets > self.allowed():
            raise self.exceeded("packets")

    def frame(self, seconds: float) -> None:
        """Count one decoded frame of ``seconds``; raises 400 past the budget."""
        self.frames += 1
        self.seconds += seconds
        if self.frames > _FREE_PACKETS and self.frames > self.allowed():
            raise self.exceeded("frames")

    def exceeded(self, what: str) -> APIError:
        """The error, with the figures."""
        count = self.packets if what == "packets" else self.frames
        log.info("decode budget exceeded: %d %s for %.1f s of audio in %d bytes", count, what, self.seconds,
                 self.upload_bytes)
        return _over_budget(f"{count} {what} for {self.seconds:.1f} s of audio in {self.upload_bytes} bytes")


def _decode_pyav(data: IO[bytes], sink: Sink, upload_bytes: int) -> bool:
    try:
        import av
    except ImportError:  # PyAV missing or broken on this platform: the ffmpeg CLI may still decode
        log.warning("PyAV is not importable; decoding with the ffmpeg CLI instead")
        return False
    try:
        # The demuxer is checked against FORMATS after probing and before it reads a header, so
        # a playlist or an SDP file is refused before it could open anything.
        container = av.open(data, mode="r", metadata_errors="ignore", container_options=_PYAV_OPTIONS)
    except (av.FFmpegError, ValueError, UnicodeDecodeError) as exc:
        log.debug("PyAV could not open the upload: %s", exc)
        return False
    with container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            log.debug("the upload has no audio stream")
            return False
        return _pyav_frames(container, stream, sink, _Budget(upload_bytes))


_INT_SCALE = {np.dtype(np.int16): 1 / 32768, np.dtype(np.int32): 1 / 2147483648}
_SAMPLE_TYPES = {"flt": np.float32, "dbl": np.float64, "s16": np.int16, "s32": np.int32, "u8": np.uint8}
_BATCH = 1 << 16  # source samples per batch: downmix and soxr run a few times per file, not per frame


def _as_float32(samples: np.ndarray) -> np.ndarray:
    """Samples of any PCM type as float32 in [-1, 1)."""
    if samples.dtype == np.uint8:  # unsigned 8-bit is centred on 128
        return (samples.astype(np.float32) - np.float32(128)) * np.float32(1 / 128)
    if samples.dtype != np.float32:
        return samples.astype(np.float32) * np.float32(_INT_SCALE.get(samples.dtype, 1.0))
    return samples


class _FrameBatcher:
    """Collects decoded PyAV frames as views of their planes; downmixes and resamples per batch."""

    def __init__(self, out: Sink) -> None:
        self.out = out
        self.key: tuple[int, str, int] | None = None  # sample rate, sample format, channels
        self.stream: Any = None
        self.pending: list[list[np.ndarray]] = []
        self.count = 0

    def add(self, frame: Any) -> None:
        """Queue one frame (no copy); a change of rate, format or layout starts a new batch."""
        fmt = frame.format
        key = (frame.sample_rate, fmt.name, frame.layout.nb_channels)
        if key != self.key:
            self.flush()
            self._start(key)
        dtype = _SAMPLE_TYPES.get(fmt.name.removesuffix("p") if fmt.is_planar else fmt.name)
        if dtype is None:  # a sample format without a fast path: let PyAV convert it
            array = frame.to_ndarray().astype(np.float32)
            planes = list(array) if fmt.is_planar else [array.reshape(-1)]
        elif fmt.is_planar:
            planes = [np.frombuffer(p, dtype, frame.samples) for p in frame.planes[: key[2]]]
        else:
            planes = [np.frombuffer(frame.planes[0], dtype, frame.samples * key[2])]
        for pending, plane in zip(self.pending, planes, strict=False):
            pending.append(plane)
        self.count += frame.samples
        if self.count >= _BATCH:
            self._push(last=False)

    def _start(self, key: tuple[int, str, int]) -> None:
        import soxr

        self.key = key
        rate, name, channels = key
        planar = name.endswith("p") and channels > 1
        self.pending = [[] for _ in range(channels if planar else 1)]
        self.stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(
            rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def _push(self, last: bool) -> None:
        assert self.key is not None
        channels = self.key[2]
        if not self.pending[0]:
            mono = np.zeros(0, dtype=np.float32)
        elif len(self.pending) > 1:  # planar: one array per channel
            mono = _as_float32(np.concatenate(self.pending[0]))  # a fresh array: safe to add into
            for pending in self.pending[1:]:
                mono += _as_float32(np.concatenate(pending))
            mono *= np.float32(1 / channels)
        else:
            packed = _as_float32(np.concatenate(self.pending[0]))
            mono = packed if channels == 1 else packed.reshape(-1, channels).mean(axis=1, dtype=np.float32)
        self.pending = [[] for _ in self.pending]
        self.count = 0
        self.out.write(self.stream.resample_chunk(mono, last=last) if self.stream is not None else mono)

    def flush(self) -> None:
        """Push what is queued and close the resampler stream."""
        if self.key is not None:
            self._push(last=True)


def _pyav_frames(container: Any, stream: Any, sink: Sink, budget: _Budget) -> bool:
    """Decode every frame within the budget; downmix in numpy and resample with soxr per batch."""
    import av

    batcher = _FrameBatcher(sink)
    errors = 0
    try:
        for packet in container.demux(stream):
            budget.packet()
            try:
                frames = packet.decode()
            except av.FFmpegError:
                errors += 1  # a damaged packet: keep what decodes, as ffmpeg does
                continue
            for frame in frames:
                budget.frame(frame.samples / (frame.sample_rate or SAMPLE_RATE))
                batcher.add(frame)
    except av.FFmpegError as exc:
        log.debug("PyAV stopped decoding: %s", exc)
    batcher.flush()
    if errors:
        log.info("skipped %d undecodable packets", errors)
    return len(sink) > 0


def _decode_ffmpeg_cli(data: IO[bytes], sink: Sink, upload_bytes: int) -> bool:
    """The ``ffmpeg`` executable through pipes, with the same formats and no protocol but its stdin."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        return False
    limit = sink.max_seconds
    cmd = [exe, "-nostdin", "-hide_banner", "-loglevel", "error",
           "-protocol_whitelist", "pipe", "-format_whitelist", _FORMAT_WHITELIST, "-i", "pipe:0",
           "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE)]
    if limit != float("inf"):
        cmd += ["-t", str(limit + 1)]  # a second past the limit, so the sink sees it is exceeded
    cmd += ["-f", "f32le", "pipe:1"]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        log.warning("ffmpeg fallback failed to start: %s", exc)
        return False
    deadline = _CLI_SECONDS + _CLI_SECONDS_PER_MB * upload_bytes / 1e6
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(deadline, expire)
    errors: collections.deque[bytes] = collections.deque(maxlen=20)
    helpers = [threading.Thread(target=_feed, args=(data, proc.stdin), daemon=True),
               threading.Thread(target=lambda: errors.extend(proc.stderr or ()), daemon=True)]
    try:
        timer.start()
        for helper in helpers:
            helper.start()
        _read_f32(proc.stdout, sink)
        proc.wait(timeout=5)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for helper in helpers:
            helper.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
    if expired.is_set():
        raise _over_budget(f"the ffmpeg CLI took more than {deadline:.0f} s")
    if proc.returncode != 0 or not len(sink):
        log.debug("ffmpeg could not decode the upload: %s", b"".join(errors)[-300:])
        return False
    return True


def _feed(data: IO[bytes], pipe: IO[bytes] | None) -> None:
    """Copy the upload to ffmpeg's stdin in blocks (its process may stop reading at any time)."""
    assert pipe is not None
    try:
        while block := data.read(1 << 16):
            pipe.write(block)
    except (BrokenPipeError, OSError, ValueError):
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _read_f32(pipe: IO[bytes] | None, sink: Sink) -> None:
    """Little-endian float32 samples from ``pipe`` into ``sink``, block by block."""
    assert pipe is not None
    rest = b""
    while block := pipe.read(1 << 16):
        block = rest + block
        whole = len(block) - len(block) % 4
        rest = block[whole:]
        if whole:
            sink.write(np.frombuffer(block[:whole], dtype="<f4").astype(np.float32))


def release(*streams: Any) -> None:
    """Free the bytes of in-memory streams once the upload is decoded: the multipart file and the
    request body the server kept (waitress keeps bodies up to MAX_UPLOAD_MB in a BytesIO). A request
    waiting for the model then holds its audio once, not its upload twice more. Files and other
    streams are left alone."""
    for stream in streams:
        if isinstance(stream, io.BytesIO):
            stream.seek(0)
            stream.truncate()
    _trim()


def _trim() -> None:
    """Hand freed heap memory back to the system (glibc keeps it per thread otherwise)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None
