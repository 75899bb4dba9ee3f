"""FFmpeg for rapl.audio, in-process (PyAV) and as the ``ffmpeg`` executable through pipes, held to the upload.

The decoder reads the upload and nothing else. FFmpeg may only use the demuxers in
FORMATS, the audio and video containers people send (``format_whitelist``), so playlists
(HLS, DASH, ffconcat), SDP/RTP, image sequences and devices are refused before they open
anything; and no protocol at all (``protocol_whitelist``), so no demuxer can open a file,
a socket or a URL named inside an upload. Both hold for PyAV and for the ``ffmpeg`` CLI.

The work FFmpeg may do is budgeted by the upload's size and the audio it yields (see
``_Budget``), so a small file of tiny packets is refused at once; the CLI, which has no
packet counter, gets a deadline instead. PyAV's frames are downmixed and resampled (soxr)
in batches, not one by one; a batch ends where its output would pass OUT_BLOCK samples, so
no sample rate makes one cost more than a fraction of a MB, and rates under MIN_SAMPLE_RATE
are refused at the first frame.
"""

from __future__ import annotations

import collections
import logging
import shutil
import subprocess
import threading
from typing import IO, Any

import numpy as np

from ..errors import BadAudio
from .recording import OUT_BLOCK, SAMPLE_RATE, Resampler, Sink

log = logging.getLogger(__name__)

# FFmpeg demuxers an upload may use: the audio and video containers clients send. WAV covers
# RF64/BW64; "ogg" covers Opus, Vorbis, FLAC and Speex in Ogg; "matroska,webm" and
# "mov,mp4,m4a,3gp,3g2,mj2" are one demuxer each; "asf" reads WMA; "aac" reads ADTS.
FORMATS = ("wav", "w64", "aiff", "caf", "au", "flac", "mp3", "ogg", "matroska", "webm", "mov", "mp4", "m4a",
           "3gp", "3g2", "aac", "amr", "amrnb", "amrwb", "asf", "ac3", "eac3", "mpegts")
_FORMAT_WHITELIST = ",".join(FORMATS)
# "none" names no protocol: a demuxer that tries to open anything besides the upload (a file,
# a socket, a URL) is refused. The upload itself is read through PyAV's own I/O, not a protocol.
_PYAV_OPTIONS = {"format_whitelist": _FORMAT_WHITELIST, "protocol_whitelist": "none"}

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


def _over_budget(detail: str) -> BadAudio:
    return BadAudio(f"The uploaded file needs far more decoding work than its size and length justify "
                    f"({detail}); it is refused. Re-encode it with a common codec.", param="file",
                    code="decode_budget_exceeded")


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

    def exceeded(self, what: str) -> BadAudio:
        """The error, with the figures."""
        count = self.packets if what == "packets" else self.frames
        log.info("decode budget exceeded: %d %s for %.1f s of audio in %d bytes", count, what, self.seconds,
                 self.upload_bytes)
        return _over_budget(f"{count} {what} for {self.seconds:.1f} s of audio in {self.upload_bytes} bytes")


def decode_pyav(data: IO[bytes], sink: Sink, upload_bytes: int) -> bool:
    """FFmpeg's libraries in-process, within FORMATS and the budget; False when they cannot read the upload."""
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
_BATCH = 1 << 16  # source samples per batch (fewer at low rates: OUT_BLOCK output), so soxr runs per batch


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
        self.stream: Resampler | None = None
        self.batch = _BATCH
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
        if self.count >= self.batch:
            self._push(last=False)

    def _start(self, key: tuple[int, str, int]) -> None:
        rate, name, channels = key
        self.stream = Resampler(rate, self.out)  # refuses a rate under MIN_SAMPLE_RATE (400)
        self.key = key
        self.batch = max(1, min(_BATCH, OUT_BLOCK * rate // SAMPLE_RATE))
        planar = name.endswith("p") and channels > 1
        self.pending = [[] for _ in range(channels if planar else 1)]

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
        assert self.stream is not None
        self.stream.write(mono, last=last)

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


def decode_cli(data: IO[bytes], sink: Sink, upload_bytes: int) -> bool:
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

