"""rapl.audio.decode_recording (what a request calls) against spawning the ffmpeg CLI per file, on the
same bytes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import summary

FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-ar", "16000", "-ac", "1",
          "-f", "f32le", "pipe:1"]


def _time(fn: Any, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def _aligned_diff(a: np.ndarray, b: np.ndarray, max_lag: int = 800) -> tuple[int, float]:
    """The lag (samples, + when ``a`` starts later) that best aligns two decodes of the same file, and
    their largest absolute difference once aligned (codec priming/pre-skip differs between decoders)."""
    n = min(a.size, b.size, 2 * 16000)
    if n <= 2 * max_lag:
        return 0, float("nan")
    head_a, head_b = a[:n], b[:n]
    size = 1 << (2 * n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(head_a, size) * np.conj(np.fft.rfft(head_b, size)), size)
    lags = np.r_[0:max_lag + 1, -max_lag:0]
    lag = int(lags[np.argmax(corr[lags])])
    x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
    m = min(x.size, y.size)
    return lag, float(np.max(np.abs(x[:m] - y[:m]))) if m else float("nan")


def run(clips: dict[str, dict[str, str]], formats: list[str], repeat: int) -> list[dict[str, Any]]:
    """Per clip and format: decode time with rapl.audio.decode_recording and with ``ffmpeg -i pipe:0 ... f32le``."""
    from rapl import audio

    rows = []
    for seconds, by_format in clips.items():
        for fmt in formats:
            data = Path(by_format[fmt]).read_bytes()
            pcm = np.asarray(audio.decode_recording(data))  # warm: imports, codec tables

            path = Path(by_format[fmt])

            def ffmpeg(data: bytes = data) -> bytes:
                return subprocess.run(FFMPEG, input=data, capture_output=True, check=True).stdout

            def ffmpeg_file(path: Path = path) -> bytes:
                cmd = [*FFMPEG[:FFMPEG.index("pipe:0")], str(path), *FFMPEG[FFMPEG.index("pipe:0") + 1:]]
                return subprocess.run(cmd, capture_output=True, check=True, stdin=subprocess.DEVNULL).stdout

            ref = ffmpeg()
            cli, cli_input = ffmpeg, "pipe"
            if not ref:  # MP4 with its index (moov) after the data cannot be read from a pipe: ffmpeg
                ref = ffmpeg_file()  # prints "partial file" and exits 0 with no audio; it gets the file
                cli, cli_input = ffmpeg_file, "file (pipe gave no audio)"
            rapl_times: list[float] = []
            cli_times: list[float] = []
            for _ in range(repeat):  # interleaved, so both see the same machine load
                rapl_times += _time(lambda data=data: audio.decode_recording(data), 4)
                cli_times += _time(cli, 1)
            other = np.frombuffer(ref, dtype="<f4")
            lag, diff = _aligned_diff(pcm, other)
            rows.append({"clip_s": int(seconds), "format": fmt, "bytes": len(data), "samples": int(pcm.size),
                         "ffmpeg_samples": int(other.size), "ffmpeg_input": cli_input, "lag": lag,
                         "max_diff_vs_ffmpeg": diff, "rapl": summary(rapl_times), "ffmpeg": summary(cli_times)})
    return rows
