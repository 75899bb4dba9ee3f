"""Audio in: decode any upload to 16 kHz mono float32, in memory, without trusting its name, type or header.

The package owns decoding (here), FFmpeg's sandbox (``ffmpeg``), the paged recording the decoded
samples land in (``recording``) and the voice-activity detector that finds speech in it (``vad``).
May import rapl.transcript (the VAD's options) and the foundation; never the core, HTTP or a backend.

PCM WAV and FLAC take a fast path (libsndfile through soundfile, soxr to resample); every
other container goes through FFmpeg's libraries in-process (PyAV). If neither can read
the bytes and an ``ffmpeg`` executable is on PATH, it gets a try through pipes (no
temporary files) before the upload is refused. FFmpeg, both ways, is held to the upload by
rapl.audio.ffmpeg: a format allow-list, no protocol at all, and a budget of work.

Limits hold while decoding, on what was actually decoded: MAX_AUDIO_SECONDS stops the
decoder as it is reached (a header's length is never trusted). Decoded audio lands in a
sink of rapl.audio.recording: a dense array (``decode``) or pages (``decode_recording``), where a
page quieter than -60 dBFS is not stored at all, so hours of silence cost decode time only
(nor is a constant or steady signal: rapl.audio.recording). Resampling goes through
recording.Resampler: every block's output is bounded, whatever the sample rate, and checked
against the limit before it is made; rates under MIN_SAMPLE_RATE are refused at once.
"""

from __future__ import annotations

import io
import logging
import os
from typing import IO, Any

import numpy as np

from ..errors import BadAudio
from .ffmpeg import decode_cli, decode_pyav
from .recording import OUT_BLOCK, SAMPLE_RATE, Dense, MemoryBudget, Recording, Resampler, Sink, check_rate

log = logging.getLogger(__name__)

_SF_MAGIC = (b"RIFF", b"RF64", b"fLaC")
_SF_UNKNOWN_FRAMES = 1 << 40  # libsndfile's frame count when a header does not say (FLAC written to a pipe)


def decode(source: bytes | IO[bytes], max_seconds: float = float("inf")) -> np.ndarray:
    """Decode ``source`` (bytes or a seekable binary file) to a 1-D float32 array at 16 kHz mono.

    Raises BadAudio when nothing can decode it (or it would cost more work than its size
    allows) and 413 when it is longer than ``max_seconds``.
    """
    sink = Dense(max_seconds)
    decode_into(source, sink)
    return sink.result()


def decode_recording(source: bytes | IO[bytes], max_seconds: float = float("inf"),
                     budget: MemoryBudget | None = None) -> Recording:
    """Decode ``source`` like ``decode``, into a paged Recording: silence costs no memory.

    Peak memory is the decoded audio once (as stored pages, charged to ``budget`` until the
    caller calls ``release``), plus a few buffers of a second. A failed decode gives its charge back.
    """
    recording = Recording(max_seconds, budget)
    try:
        decode_into(source, recording)
    except BaseException:
        recording.release()
        raise
    recording.close()
    return recording


def decode_into(source: bytes | IO[bytes], sink: Sink) -> None:
    """Decode ``source`` into ``sink``: soundfile, then PyAV, then the ffmpeg CLI, each from the start."""
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    size = _size(data)
    magic = _rewound(data).read(4)
    if not magic:
        raise BadAudio("The uploaded file is empty.", param="file", code="empty_file")
    decoded = magic in _SF_MAGIC and _decode_soundfile(_rewound(data), sink)
    if not decoded:
        sink.reset()
        decoded = decode_pyav(_rewound(data), sink, size)
    if not decoded:
        sink.reset()
        decoded = decode_cli(_rewound(data), sink, size)
    if not decoded:
        raise BadAudio("The uploaded file could not be decoded as audio. Send a common audio or "
                       "video file (wav, mp3, m4a, ogg, opus, webm, flac, mp4, ...).",
                       param="file", code="invalid_audio")
    if len(sink) == 0:
        raise BadAudio("The uploaded file contains no audio samples.", param="file",
                       code="invalid_audio")


def _rewound(data: IO[bytes]) -> IO[bytes]:
    data.seek(0)
    return data


def _size(data: IO[bytes]) -> int:
    data.seek(0, os.SEEK_END)
    return data.tell()


def _decode_soundfile(data: IO[bytes], sink: Sink) -> bool:
    """WAV/FLAC through libsndfile in blocks until it stops giving samples (its frame count is not trusted)."""
    import soundfile as sf

    try:
        with sf.SoundFile(data) as f:
            if f.frames >= _SF_UNKNOWN_FRAMES:  # a length the header does not know (FLAC from a pipe): PyAV reads it
                return False
            check_rate(f.samplerate)  # a 1 Hz header is refused here, not handed to PyAV
            resampler = Resampler(f.samplerate, sink)
            buffer = np.empty((_block_frames(f.samplerate, f.channels), f.channels), dtype=np.float32)
            while True:
                block = f.read(out=buffer)  # one buffer for the whole file
                if not len(block):
                    break
                resampler.write(block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32))
            resampler.write(np.zeros(0, dtype=np.float32), last=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        log.debug("soundfile could not read the upload (%s); trying PyAV", exc)
        return False
    return len(sink) > 0


def _block_frames(rate: int, channels: int) -> int:
    """Frames per read: at most 128 K samples of input and OUT_BLOCK samples of output (at 16 kHz)."""
    by_input = max(1 << 12, (1 << 17) // max(channels, 1))
    return max(1, min(by_input, -(-OUT_BLOCK * rate // SAMPLE_RATE)))


def release(*streams: Any) -> None:
    """Free the bytes of in-memory streams once the upload is decoded: the multipart file and the
    request body the server kept (waitress keeps bodies up to MAX_UPLOAD_MB in a BytesIO). A request
    waiting for the model then holds its audio once, not its upload twice more. Files and other
    streams are left alone. (The freed pages go back to the system later, off the request path:
    rapl.core.heap.)"""
    for stream in streams:
        if isinstance(stream, io.BytesIO):
            stream.seek(0)
            stream.truncate()
