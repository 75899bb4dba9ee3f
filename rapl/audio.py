"""Decode any upload to 16 kHz mono float32, in memory, without trusting its name or type.

PCM WAV and FLAC take a fast path (libsndfile through soundfile, soxr to resample); every
other container goes through FFmpeg's libraries in-process (PyAV). If neither can read
the bytes and an ``ffmpeg`` executable is on PATH, it gets a try through pipes (no
temporary files) before the upload is refused.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
from typing import IO, Any

import numpy as np

from .errors import APIError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
_SF_MAGIC = (b"RIFF", b"RF64", b"fLaC")


def decode(source: bytes | IO[bytes], max_seconds: float = float("inf")) -> np.ndarray:
    """Decode ``source`` (bytes or a seekable binary file) to a 1-D float32 array at 16 kHz mono.

    Raises APIError 400 when nothing can decode it and 413 when it is longer than
    ``max_seconds``.
    """
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    data.seek(0)
    magic = data.read(4)
    if not magic:
        raise APIError("The uploaded file is empty.", 400, param="file", code="empty_file")
    audio = None
    if magic in _SF_MAGIC:
        audio = _decode_soundfile(_rewound(data), max_seconds)
    if audio is None:
        audio = _decode_pyav(_rewound(data), max_seconds)
    if audio is None:
        audio = _decode_ffmpeg_cli(_rewound(data).read(), max_seconds)
    if audio is None:
        raise APIError("The uploaded file could not be decoded as audio. Send a common audio or "
                       "video file (wav, mp3, m4a, ogg, opus, webm, flac, mp4, ...).", 400,
                       param="file", code="invalid_audio")
    if audio.size == 0:
        raise APIError("The uploaded file contains no audio samples.", 400, param="file",
                       code="invalid_audio")
    return audio


def _rewound(data: IO[bytes]) -> IO[bytes]:
    data.seek(0)
    return data


def duration(audio: np.ndarray) -> float:
    """Length of 16 kHz audio in seconds."""
    return len(audio) / SAMPLE_RATE


def _too_long(max_seconds: float) -> APIError:
    return APIError(f"The audio is longer than this server accepts ({max_seconds:g} s, "
                    "MAX_AUDIO_SECONDS).", 413, param="file", code="audio_too_long")


class _Samples:
    """A growing float32 buffer: decoded audio lands in one array, not in a list to concatenate."""

    def __init__(self, expected: int, limit: float, max_seconds: float) -> None:
        self.data = np.empty(max(expected, SAMPLE_RATE), dtype=np.float32)
        self.size = 0
        self.limit = limit
        self.max_seconds = max_seconds

    def append(self, chunk: np.ndarray) -> None:
        """Add samples; raises 413 past the MAX_AUDIO_SECONDS limit."""
        end = self.size + chunk.size
        if end > self.limit:
            raise _too_long(self.max_seconds)
        if end > self.data.size:
            grown = np.empty(max(end, int(self.data.size * 1.5)), dtype=np.float32)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size:end] = chunk
        self.size = end

    def result(self) -> np.ndarray:
        """The samples (a copy only when the estimate was too generous by more than 1 %)."""
        if self.data.size - self.size > self.size // 100 + SAMPLE_RATE:
            return self.data[: self.size].copy()
        return self.data[: self.size]


def _decode_soundfile(data: IO[bytes], max_seconds: float) -> np.ndarray | None:
    """WAV/FLAC through libsndfile in blocks: downmix, resample with soxr as a stream."""
    import soundfile as sf

    try:
        with sf.SoundFile(data) as f:
            seconds = f.frames / f.samplerate
            if seconds > max_seconds:
                raise _too_long(max_seconds)
            out = _Samples(int(seconds * SAMPLE_RATE) + 64, max_seconds * SAMPLE_RATE, max_seconds)
            resampler = None
            if f.samplerate != SAMPLE_RATE:
                import soxr

                resampler = soxr.ResampleStream(f.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            for block in f.blocks(blocksize=1 << 18, dtype="float32", always_2d=True):
                mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
                out.append(resampler.resample_chunk(mono) if resampler else mono)
            if resampler is not None:
                out.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        log.debug("soundfile could not read the upload (%s); trying PyAV", exc)
        return None
    return out.result() if out.size else None


def _decode_pyav(data: IO[bytes], max_seconds: float) -> np.ndarray | None:
    import av

    try:
        container = av.open(data, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, UnicodeDecodeError) as exc:
        log.debug("PyAV could not open the upload: %s", exc)
        return None
    with container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            log.debug("the upload has no audio stream")
            return None
        return _pyav_frames(container, stream, max_seconds)


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

    def __init__(self, out: _Samples) -> None:
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
        self.out.append(self.stream.resample_chunk(mono, last=last) if self.stream is not None else mono)

    def flush(self) -> None:
        """Push what is queued and close the resampler stream."""
        if self.key is not None:
            self._push(last=True)


def _pyav_frames(container: Any, stream: Any, max_seconds: float) -> np.ndarray | None:
    """Decode every frame; downmix in numpy and resample with soxr per batch, not per codec frame."""
    import av

    expected = container.duration / av.time_base if container.duration else 0.0
    out = _Samples(int(min(expected, max_seconds) * SAMPLE_RATE) + SAMPLE_RATE,
                   max_seconds * SAMPLE_RATE, max_seconds)
    batcher = _FrameBatcher(out)
    errors = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                errors += 1  # a damaged packet: keep what decodes, as ffmpeg does
                continue
            for frame in frames:
                batcher.add(frame)
    except av.FFmpegError as exc:
        log.debug("PyAV stopped decoding: %s", exc)
    batcher.flush()
    if errors:
        log.info("skipped %d undecodable packets", errors)
    return out.result() if out.size else None


def _decode_ffmpeg_cli(data: bytes, max_seconds: float) -> np.ndarray | None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    cmd = [exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", "pipe:0",
           "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"]
    if max_seconds != float("inf"):
        cmd[-4:-4] = ["-t", str(max_seconds + 1)]
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("ffmpeg fallback failed: %s", exc)
        return None
    if proc.returncode != 0 or not proc.stdout:
        log.debug("ffmpeg could not decode the upload: %s", proc.stderr[-300:])
        return None
    audio = np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)
    if len(audio) > max_seconds * SAMPLE_RATE:
        raise _too_long(max_seconds)
    return audio
