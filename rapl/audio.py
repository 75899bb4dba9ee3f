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
from typing import IO

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


def _to_mono_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    if samples.ndim == 2:
        samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if rate != SAMPLE_RATE:
        import soxr

        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    return samples


def _decode_soundfile(data: IO[bytes], max_seconds: float) -> np.ndarray | None:
    import soundfile as sf

    try:
        with sf.SoundFile(data) as f:
            if f.frames / f.samplerate > max_seconds:
                raise _too_long(max_seconds)
            samples = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        log.debug("soundfile could not read the upload (%s); trying PyAV", exc)
        return None
    if samples.size == 0:
        return None
    return _to_mono_16k(samples, rate)


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


def _pyav_frames(container, stream, max_seconds: float) -> np.ndarray | None:  # noqa: ANN001
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    limit = max_seconds * SAMPLE_RATE
    chunks: list[np.ndarray] = []
    total = 0
    errors = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                errors += 1  # a damaged packet: keep what decodes, as ffmpeg does
                continue
            for frame in frames:
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += chunk.size
                if total > limit:
                    raise _too_long(max_seconds)
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as exc:
        log.debug("PyAV stopped decoding: %s", exc)
        if not chunks:
            return None
    if errors:
        log.info("skipped %d undecodable packets", errors)
    if not chunks:
        return None
    return np.concatenate(chunks).astype(np.float32, copy=False)


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
