"""Test audio: the real speech clips, conversions (ffmpeg), synthetic speech (espeak-ng),
recordings joined from parts, WAV bytes, and word error rate."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from support import ROOT

# The real speech clips: ../shared/audio beside the repository, or the folder RAPL_TEST_AUDIO names.
SHARED_AUDIO = Path(os.environ.get("RAPL_TEST_AUDIO") or ROOT.parent / "shared" / "audio")
JFK_TEXT = ("And so, my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country.")
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please remember to water the plants on Tuesday morning.",
    "Our train leaves from platform seven at half past nine.",
    "She sells fresh bread at the market every weekend.",
    "The museum opens its new gallery next spring.",
    "Turn left at the bakery and walk two blocks north.",
]
# en_jfk.flac converted into the containers and codecs clients send: key -> (file name, ffmpeg output args).
JFK_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "flac": ("jfk.flac", ["-c", "copy"]),
    "mp3": ("jfk.mp3", ["-c:a", "libmp3lame", "-b:a", "64k"]),
    "m4a": ("jfk.m4a", ["-c:a", "aac", "-b:a", "64k"]),
    "ogg": ("jfk.ogg", ["-c:a", "libopus", "-b:a", "32k"]),
    "webm": ("jfk.webm", ["-c:a", "libopus", "-b:a", "32k"]),
    "wav44": ("jfk.wav", ["-c:a", "pcm_s16le", "-ar", "44100", "-ac", "2"]),
    "wav16": ("jfk16.wav", ["-c:a", "pcm_s16le", "-ar", "16000", "-ac", "1"]),
}


def ffmpeg(src: Path, dst: Path, *args: str) -> Path:
    """Convert ``src`` to ``dst`` with the ffmpeg CLI (test-time conversions only)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *args, str(dst)],
                   check=True, timeout=300)
    return dst


def video(src: Path, dst: Path) -> Path:
    """``src``'s audio in an MP4 with a tiny H.264 video track (as a phone's screen recording)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-f", "lavfi",
                    "-i", "color=c=blue:s=64x64:r=10", "-shortest", "-map", "1:v", "-map", "0:a",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(dst)], check=True, timeout=300)
    return dst


def espeak(text: str, dst: Path, speed: int = 160) -> Path:
    """Synthesize ``text`` to a WAV file with espeak-ng."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    subprocess.run(["espeak-ng", "-s", str(speed), "-w", str(dst), text], check=True, timeout=60)
    return dst


def spoken(text: str, dst: Path) -> Any:
    """``text`` spoken by espeak-ng, as a 16 kHz float32 array."""
    from rapl import audio

    return audio.decode(espeak(text, dst).read_bytes())


def build_recording(parts: list[Any], gaps: list[float], noise: float = 0.0, seed: int = 0) -> tuple[Any, list[float]]:
    """Join speech ``parts`` after silent (or lightly noisy) ``gaps`` in seconds.

    Returns the 16 kHz recording and where each part's speech really starts (its first
    sample louder than -40 dBFS), in seconds.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    pieces, starts, at = [], [], 0
    for gap, part in zip(gaps, parts, strict=True):
        n = int(gap * 16000)
        pieces.append((rng.normal(0, noise, n) if noise else np.zeros(n)).astype(np.float32))
        at += n
        loud = np.flatnonzero(np.abs(part) > 0.01)
        starts.append((at + int(loud[0])) / 16000)
        pieces.append(part)
        at += len(part)
    pieces.append(np.zeros(16000, dtype=np.float32))
    return np.concatenate(pieces), starts


def tone(seconds: float, hz: float = 220.0, level: float = 0.3) -> Any:
    """A sine tone of ``seconds`` at 16 kHz (loud enough to be sent to a model when VAD is off)."""
    import numpy as np

    t = np.arange(round(seconds * 16000)) / 16000
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def wav_bytes(pcm: Any, format: str = "WAV") -> bytes:
    """16 kHz mono 16-bit WAV (as dictation apps send) or FLAC of ``pcm``."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, pcm, 16000, format=format, subtype="PCM_16")
    return buf.getvalue()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate, case and punctuation aside."""
    import jiwer

    def norm(text: str) -> str:
        return re.sub(r"[^\w\s']", " ", text.lower())

    return jiwer.wer(norm(reference), norm(hypothesis))
