"""rapl.audio.decode against spawning the ffmpeg CLI per file, on the same bytes."""

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


def run(clips: dict[str, dict[str, str]], formats: list[str], repeat: int) -> list[dict[str, Any]]:
    """Per clip and format: decode time with rapl.audio.decode and with ``ffmpeg -i pipe:0 ... f32le``."""
    from rapl import audio

    rows = []
    for seconds, by_format in clips.items():
        for fmt in formats:
            data = Path(by_format[fmt]).read_bytes()
            pcm = audio.decode(data)  # warm: imports, codec tables

            def ffmpeg(data: bytes = data) -> bytes:
                return subprocess.run(FFMPEG, input=data, capture_output=True, check=True).stdout

            ref = ffmpeg()
            rapl_times: list[float] = []
            cli_times: list[float] = []
            for _ in range(repeat):  # interleaved, so both see the same machine load
                rapl_times += _time(lambda data=data: audio.decode(data), 4)
                cli_times += _time(ffmpeg, 1)
            n = min(len(ref) // 4, pcm.size)
            diff = float(np.max(np.abs(np.frombuffer(ref, dtype="<f4")[:n] - pcm[:n]))) if n else float("nan")
            rows.append({"clip_s": int(seconds), "format": fmt, "bytes": len(data), "samples": int(pcm.size),
                         "ffmpeg_samples": len(ref) // 4, "max_diff_vs_ffmpeg": diff, "rapl": summary(rapl_times),
                         "ffmpeg": summary(cli_times)})
    return rows
