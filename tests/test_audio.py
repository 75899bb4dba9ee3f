"""Decoding: every container to 16 kHz mono float32, in memory; bad input is a clear 400."""

from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ffmpeg
from rapl import audio
from rapl.errors import APIError


def _tone(seconds: float = 1.0, rate: int = 44100, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([mono] * channels, axis=1).astype(np.float32)


@pytest.mark.parametrize("container", ["flac", "mp3", "m4a", "ogg", "webm", "wav44", "wav16", "mp4"])
def test_every_container_decodes_to_16k_mono(jfk_variants: dict[str, Path], container: str) -> None:
    pcm = audio.decode(jfk_variants[container].read_bytes())
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert abs(audio.duration(pcm) - 11.0) < 0.1
    assert 0.05 < float(np.abs(pcm).max()) < 1.5  # lossy codecs overshoot a little


def test_wav_fast_path_resamples_and_downmixes() -> None:
    buf = io.BytesIO()
    sf.write(buf, _tone(), 44100, format="WAV", subtype="PCM_16")
    pcm = audio.decode(buf.getvalue())
    assert len(pcm) == 16000
    spectrum = np.abs(np.fft.rfft(pcm))
    assert abs(int(np.argmax(spectrum)) - 440) <= 1  # 1 Hz bins over one second


def test_file_objects_are_accepted() -> None:
    buf = io.BytesIO()
    sf.write(buf, _tone(channels=1), 44100, format="FLAC")
    assert len(audio.decode(buf)) == 16000


@pytest.mark.parametrize("data", [b"", b"hello world, this is text not audio\n" * 20, bytes(range(256)) * 40])
def test_garbage_is_a_400_naming_file(data: bytes) -> None:
    with pytest.raises(APIError) as info:
        audio.decode(data)
    assert info.value.status == 400 and info.value.param == "file"


def test_wav_header_promising_more_than_it_has_decodes_what_is_there() -> None:
    buf = io.BytesIO()
    sf.write(buf, _tone(channels=1), 44100, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    struct.pack_into("<I", data, 40, 10_000_000)  # data chunk claims 10 MB
    pcm = audio.decode(bytes(data))
    assert abs(audio.duration(pcm) - 1.0) < 0.05


def test_truncated_mp3_decodes_its_first_part(jfk_variants: dict[str, Path]) -> None:
    data = jfk_variants["mp3"].read_bytes()
    pcm = audio.decode(data[: len(data) // 2])
    assert 4.0 < audio.duration(pcm) < 7.0


def test_too_long_is_a_413(jfk_variants: dict[str, Path]) -> None:
    for key in ("wav16", "mp3"):
        with pytest.raises(APIError) as info:
            audio.decode(jfk_variants[key].read_bytes(), max_seconds=5)
        assert info.value.status == 413 and info.value.code == "audio_too_long"


def test_ffmpeg_cli_fallback_is_used_when_pyav_cannot(monkeypatch: pytest.MonkeyPatch,
                                                      jfk_variants: dict[str, Path]) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    monkeypatch.setattr(audio, "_decode_pyav", lambda data, max_seconds: None)
    pcm = audio.decode(jfk_variants["ogg"].read_bytes())
    assert abs(audio.duration(pcm) - 11.0) < 0.1


def test_video_without_audio_is_a_400(tmp_path: Path) -> None:
    src = tmp_path / "silent.mp4"
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    import subprocess

    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=red:s=32x32:d=1",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(src)], check=True)
    with pytest.raises(APIError) as info:
        audio.decode(src.read_bytes())
    assert info.value.status == 400


def test_opus_in_ogg_named_nothing(tmp_path: Path, jfk: Path) -> None:
    out = ffmpeg(jfk, tmp_path / "x.opus", "-c:a", "libopus", "-b:a", "24k")
    assert abs(audio.duration(audio.decode(out.read_bytes())) - 11.0) < 0.1


@pytest.mark.parametrize("codec", ["pcm_s16le", "pcm_s32le", "pcm_f64le", "pcm_u8", "pcm_f32le"])
def test_pyav_sample_formats_match_the_wav_path(jfk_variants: dict[str, Path], tmp_path: Path, codec: str) -> None:
    """Packed and planar integer/float samples through PyAV agree with libsndfile on the same audio."""
    reference = audio.decode(jfk_variants["wav44"].read_bytes())  # soundfile fast path
    mkv = ffmpeg(jfk_variants["wav44"], tmp_path / f"x-{codec}.mkv", "-c:a", codec)
    assert mkv.read_bytes()[:4] not in (b"RIFF", b"fLaC")  # so it takes the PyAV path
    decoded = audio.decode(mkv.read_bytes())
    n = min(len(decoded), len(reference))
    assert abs(len(decoded) - len(reference)) < 160
    tolerance = 0.02 if codec == "pcm_u8" else 1e-3
    assert float(np.abs(decoded[:n] - reference[:n]).max()) < tolerance
