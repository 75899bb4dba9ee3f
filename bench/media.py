"""The audio the benchmark sends: real speech (en_jfk.flac) and espeak-ng speech, in the
containers dictation apps upload, plus long recordings of whole utterances joined with quiet
gaps, whose words go into the manifest (``reference``) so that word error rates can be computed.

Everything is built once per run under the run's work directory with the ffmpeg CLI,
espeak-ng and soundfile (this module never imports torch: the whisper measurements must
not share the process with a second OpenMP runtime).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16000
ROOT = Path(__file__).resolve().parents[1]
SHARED_AUDIO = ROOT.parent / "shared" / "audio"
JFK = SHARED_AUDIO / "en_jfk.flac"
# its reference transcript (shared/audio/README.md)
JFK_TEXT = ("And so, my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country.")

# Distinct sentences, so that no 30 s window repeats itself (a repeated text trips
# Whisper's compression-ratio check and multiplies its time by the fallback temperatures).
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to water the plants on Tuesday morning before work.",
    "Our train leaves from platform seven at half past nine tonight.",
    "She sells fresh bread at the market every weekend in the summer.",
    "The museum opens its new gallery of modern art next spring.",
    "Turn left at the bakery and walk two blocks north to the library.",
    "We moved the weekly meeting to Thursday afternoon at three o'clock.",
    "The budget for the new project was approved by the committee yesterday.",
    "Heavy rain is expected across the northern hills later this evening.",
    "My sister is learning to play the violin at the community school.",
    "Send the final report to the whole team before the end of the month.",
    "A small boat drifted slowly past the old lighthouse at sunset.",
)

# name -> (file suffix, ffmpeg arguments, MIME type); "wav16" is written by soundfile.
FORMATS: dict[str, tuple[str, list[str], str]] = {
    "wav16": (".wav", [], "audio/wav"),
    "m4a": (".m4a", ["-c:a", "aac", "-b:a", "64k", "-ar", "44100", "-ac", "1"], "audio/mp4"),
    "webm": (".webm", ["-c:a", "libopus", "-b:a", "32k", "-ac", "1"], "audio/webm"),
    "mp3": (".mp3", ["-c:a", "libmp3lame", "-b:a", "64k", "-ar", "44100", "-ac", "1"], "audio/mpeg"),
}
FORMAT_NOTES = {
    "wav16": "16 kHz mono 16-bit PCM WAV (what Spokenly sends)",
    "m4a": "AAC 64 kb/s, 44.1 kHz mono, MP4 container",
    "webm": "Opus 32 kb/s, 48 kHz mono, WebM container (browsers' MediaRecorder)",
    "mp3": "MP3 64 kb/s, 44.1 kHz mono",
}


def require_tools() -> list[str]:
    """Missing prerequisites, as messages (empty when all are there)."""
    missing = []
    for tool in ("ffmpeg", "espeak-ng"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} is not installed (apt-get install {tool})")
    if not JFK.is_file():
        missing.append(f"real speech clip not found: {JFK}")
    return missing


def decode_file(path: Path) -> np.ndarray:
    """Any audio file to 16 kHz mono float32 with the ffmpeg CLI (building only, not measured)."""
    proc = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-ac", "1",
                           "-ar", str(RATE), "-f", "f32le", "pipe:1"], capture_output=True, check=True)
    return np.frombuffer(proc.stdout, dtype="<f4").copy()


def pcm16_bytes(pcm: np.ndarray, fmt: str = "WAV") -> bytes:
    """16 kHz mono 16-bit WAV (or FLAC) bytes of ``pcm``."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(pcm, -1.0, 1.0), RATE, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def encode(wav: Path, fmt: str, dst_dir: Path) -> Path:
    """``wav`` re-encoded as ``fmt`` with the ffmpeg CLI."""
    if fmt == "wav16":
        return wav
    suffix, args, _mime = FORMATS[fmt]
    dst = dst_dir / (wav.stem + suffix)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), *args, str(dst)],
                   check=True)
    return dst


def speech_pool(work: Path) -> list[np.ndarray]:
    """en_jfk.flac and each of SENTENCES spoken by espeak-ng, as 16 kHz float32 arrays."""
    out = work / "speech"
    out.mkdir(parents=True, exist_ok=True)
    pool = [decode_file(JFK)]
    for i, text in enumerate(SENTENCES):
        wav = out / f"s{i:02d}.wav"
        if not wav.is_file():
            subprocess.run(["espeak-ng", "-s", "165", "-w", str(wav), text], check=True)
        pool.append(decode_file(wav))
    return pool


def clip(pool: list[np.ndarray], seconds: float, gap: float = 0.4) -> np.ndarray:
    """``seconds`` of speech: en_jfk.flac first, then espeak sentences after short pauses."""
    need = int(seconds * RATE)
    parts, total = [], 0
    for i, part in enumerate(pool):
        if i:
            parts.append(np.zeros(int(gap * RATE), dtype=np.float32))
        parts.append(part)
        total += len(part) + (int(gap * RATE) if i else 0)
        if total >= need:
            break
    pcm = np.concatenate(parts)[:need]
    if len(pcm) < need:
        pcm = np.concatenate([pcm, np.zeros(need - len(pcm), dtype=np.float32)])
    return pcm.astype(np.float32)


def recording(pool: list[np.ndarray], minutes: float, seed: int = 0,
              gaps: tuple[float, float] = (1.0, 6.0), noise: float = 1e-3) -> tuple[np.ndarray, float, list[int]]:
    """``minutes`` of speech joined with quiet gaps (light noise, as a real room has).

    Only whole utterances go in (the end is filled with noise), so the words are known: returns the
    16 kHz recording, the fraction of it that is speech and the pool indices of its utterances, in order.
    """
    rng = np.random.default_rng(seed)
    need = int(minutes * 60 * RATE)
    out = np.empty(need, dtype=np.float32)
    at = speech = 0
    order: list[int] = []
    said: list[int] = []
    while at < need:
        if not order:
            order = list(rng.permutation(len(pool)))
        n = min(int(rng.uniform(*gaps) * RATE), need - at)
        out[at:at + n] = rng.normal(0.0, noise, n)
        at += n
        index = int(order.pop())
        part = pool[index]
        if at + len(part) > need:  # no room for all of it: noise to the end
            out[at:] = rng.normal(0.0, noise, need - at)
            break
        out[at:at + len(part)] = part
        at += len(part)
        speech += len(part)
        said.append(index)
    return out, speech / need, said


def reference(said: list[int]) -> str:
    """The words of a recording whose utterances are ``said`` (pool indices: 0 is en_jfk.flac)."""
    texts = (JFK_TEXT, *SENTENCES)
    return " ".join(texts[i] for i in said)


def build(work: Path, clip_seconds: list[int], long_minutes: list[float]) -> dict[str, Any]:
    """Write every clip in every format and every long recording; returns the manifest."""
    media = work / "media"
    media.mkdir(parents=True, exist_ok=True)
    pool = speech_pool(work)
    manifest: dict[str, Any] = {"clips": {}, "long": {}, "formats": FORMAT_NOTES}
    for seconds in clip_seconds:
        wav = media / f"clip{seconds}s.wav"
        wav.write_bytes(pcm16_bytes(clip(pool, seconds)))
        manifest["clips"][str(seconds)] = {fmt: str(encode(wav, fmt, media)) for fmt in FORMATS}
    for minutes in long_minutes:
        pcm, speech, said = recording(pool, minutes, seed=int(minutes))
        path = media / f"long{minutes:g}min.flac"
        path.write_bytes(pcm16_bytes(pcm, "FLAC"))
        manifest["long"][f"{minutes:g}"] = {"path": str(path), "seconds": len(pcm) / RATE,
                                            "speech_fraction": speech, "bytes": path.stat().st_size,
                                            "utterances": len(said), "reference": reference(said)}
        del pcm
    (work / "media.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def mime(path: str) -> str:
    """The MIME type a client would send for ``path``."""
    for _fmt, (suffix, _args, mime_type) in FORMATS.items():
        if path.endswith(suffix):
            return mime_type
    return "audio/flac" if path.endswith(".flac") else "application/octet-stream"
