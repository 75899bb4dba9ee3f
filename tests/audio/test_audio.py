"""Decoding: every container to 16 kHz mono float32, in memory; bad input is a clear 400."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from rapl import audio
from rapl.audio.ffmpeg import FORMATS, decode_cli, decode_pyav
from rapl.audio.recording import (
    MIN_SAMPLE_RATE,
    OUT_BLOCK,
    PAGE,
    SAMPLE_RATE,
    Dense,
    MemoryBudget,
    Recording,
    Resampler,
    duration,
)
from rapl.errors import RaplError, status_of
from support.speech import ffmpeg, wav_bytes


def _tone(seconds: float = 1.0, rate: int = 44100, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([mono] * channels, axis=1).astype(np.float32)


@pytest.mark.parametrize("container", ["flac", "mp3", "m4a", "ogg", "webm", "wav44", "wav16", "mp4"])
def test_every_container_decodes_to_16k_mono(jfk_variants: dict[str, Path], container: str) -> None:
    pcm = audio.decode(jfk_variants[container].read_bytes())
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert abs(duration(pcm) - 11.0) < 0.1
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
    with pytest.raises(RaplError) as info:
        audio.decode(data)
    assert status_of(info.value) == 400 and info.value.param == "file"


def test_wav_header_promising_more_than_it_has_decodes_what_is_there() -> None:
    buf = io.BytesIO()
    sf.write(buf, _tone(channels=1), 44100, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    struct.pack_into("<I", data, 40, 10_000_000)  # data chunk claims 10 MB
    pcm = audio.decode(bytes(data))
    assert abs(duration(pcm) - 1.0) < 0.05


def test_truncated_mp3_decodes_its_first_part(jfk_variants: dict[str, Path]) -> None:
    data = jfk_variants["mp3"].read_bytes()
    pcm = audio.decode(data[: len(data) // 2])
    assert 4.0 < duration(pcm) < 7.0


def test_too_long_is_a_413(jfk_variants: dict[str, Path]) -> None:
    for key in ("wav16", "mp3"):
        with pytest.raises(RaplError) as info:
            audio.decode(jfk_variants[key].read_bytes(), max_seconds=5)
        assert status_of(info.value) == 413 and info.value.code == "audio_too_long"


def test_ffmpeg_cli_fallback_is_used_when_pyav_cannot(monkeypatch: pytest.MonkeyPatch,
                                                      jfk_variants: dict[str, Path]) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not importable: the CLI decodes
    pcm = audio.decode(jfk_variants["ogg"].read_bytes())
    assert abs(duration(pcm) - 11.0) < 0.1


@pytest.mark.parametrize("container", ["ogg", "mp3", "webm", "flac"])  # not MP4 with its index at the end: a pipe
def test_ffmpeg_cli_decodes_real_files_through_pipes(jfk_variants: dict[str, Path], container: str) -> None:
    """The CLI itself (not a stand-in), on a real file, within MAX_AUDIO_SECONDS."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    data = jfk_variants[container].read_bytes()
    sink = Dense(float("inf"))
    assert decode_cli(io.BytesIO(data), sink, len(data))
    cli = sink.result()
    assert abs(duration(cli) - 11.0) < 0.1
    assert 0.05 < float(np.abs(cli).max()) < 1.5
    with pytest.raises(RaplError) as info:  # the limit holds on the CLI path too
        decode_cli(io.BytesIO(data), Dense(5), len(data))
    assert status_of(info.value) == 413


def _canary_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "recordings").mkdir()
    sf.write(tmp_path / "recordings" / "board-meeting.wav", _tone(channels=1), 44100)
    monkeypatch.chdir(tmp_path)


PLAYLISTS = {
    "ffconcat": b"ffconcat version 1.0\nfile recordings/board-meeting.wav\n",
    "ffconcat file: URL": b"ffconcat version 1.0\nfile 'file:recordings/board-meeting.wav'\n",
    "HLS": b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\nrecordings/board-meeting.wav\n#EXT-X-ENDLIST\n",
    "SDP": b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 45678 RTP/AVP 0\n"
           b"a=rtpmap:0 PCMU/8000\n",
}


@pytest.mark.parametrize("decoder", ["pyav", "cli"])
@pytest.mark.parametrize("case", list(PLAYLISTS))
def test_decoders_read_the_upload_and_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   decoder: str, case: str) -> None:
    """Playlists naming a file in the working directory, and SDP, are refused at once by PyAV and the CLI."""
    if decoder == "cli" and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    _canary_dir(tmp_path, monkeypatch)
    data = PLAYLISTS[case]
    sink = Dense(float("inf"))
    decode = decode_pyav if decoder == "pyav" else decode_cli
    started = time.perf_counter()
    assert not decode(io.BytesIO(data), sink, len(data))
    assert len(sink) == 0 and time.perf_counter() - started < 5


def test_allowed_formats_are_ffmpeg_demuxers() -> None:
    import av

    names = {part for name in av.formats_available for part in name.split(",")}
    assert set(FORMATS) <= names
    assert not {"concat", "hls", "dash", "sdp", "rtp", "rtsp", "image2", "lavfi"} & set(FORMATS)


def _lavfi(dst: Path, source: str, *args: str) -> Path:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, *args, str(dst)],
                   check=True, timeout=120)
    return dst


def test_flac_from_a_pipe_is_not_endless(jfk: Path) -> None:
    """FLAC written to a pipe has no length in its header; libsndfile calls that endless."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    piped = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(jfk), "-f", "flac", "pipe:1"],
                           capture_output=True, check=True, timeout=60).stdout
    assert abs(duration(audio.decode(piped, max_seconds=14400)) - 11.0) < 0.1


def test_one_sample_packets_exceed_the_decode_budget_quickly(tmp_path: Path) -> None:
    mkv = _lavfi(tmp_path / "tiny.mkv", "sine=f=440:r=8000:d=20", "-af", "asetnsamples=n=1", "-c:a", "pcm_s16le")
    started = time.perf_counter()
    with pytest.raises(RaplError) as info:
        audio.decode(mkv.read_bytes())
    assert status_of(info.value) == 400 and info.value.code == "decode_budget_exceeded" and info.value.param == "file"
    assert time.perf_counter() - started < 3


@pytest.mark.slow  # ffmpeg encodes, and the decoder reads, up to 10 minutes of audio per case
@pytest.mark.parametrize("source, args", [
    ("anoisesrc=d=120:a=0.1:r=48000", ["-c:a", "libopus", "-frame_duration", "2.5", "-b:a", "96k"]),  # 400 packets/s
    ("anullsrc=r=48000:cl=mono:d=600", ["-c:a", "libopus", "-frame_duration", "10", "-b:a", "6k"]),  # 3-byte packets
    ("anullsrc=r=48000:cl=mono:d=600", ["-c:a", "libopus", "-b:a", "6k"]),
    ("anoisesrc=d=120:a=0.1:r=8000", ["-c:a", "libvorbis"]),
    ("anoisesrc=d=120:a=0.1:r=8000", ["-c:a", "libopencore_amrnb", "-ar", "8000", "-f", "amr"]),
])
def test_real_codecs_stay_within_the_budget(tmp_path: Path, source: str, args: list[str]) -> None:
    """Opus at its shortest frames, Opus on silence, Vorbis and AMR at 8 kHz: many packets, all legitimate."""
    if "libopencore_amrnb" in args and "libopencore_amrnb" not in subprocess.run(
            ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30).stdout:
        pytest.skip("this ffmpeg has no AMR encoder")
    clip = _lavfi(tmp_path / "clip.bin", source, *args, *([] if "-f" in args else ["-f", "ogg"]))
    seconds = 600 if "anullsrc" in source else 120
    assert abs(duration(audio.decode(clip.read_bytes())) - seconds) < 0.2


def test_a_bomb_stops_at_the_limit_holding_only_what_was_decoded(tmp_path: Path) -> None:
    """An hour of FLAC silence in Matroska (kilobytes) against a 30-minute limit: 413, and the
    samples held never exceed what was decoded (silence: nothing at all)."""
    bomb = _lavfi(tmp_path / "bomb.mkv", "anullsrc=r=8000:cl=mono", "-t", "3600", "-c:a", "flac",
                  "-frame_size", "65535")
    tracemalloc.start()
    try:
        with pytest.raises(RaplError) as info:
            audio.decode_recording(bomb.read_bytes(), max_seconds=1800)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status_of(info.value) == 413
    assert peak < 20e6, f"{peak / 1e6:.0f} MB for a refused bomb"  # 30 minutes of float32 would be 115 MB


def test_dense_decode_is_sized_by_what_was_decoded(tmp_path: Path) -> None:
    """A header claiming 5 hours buys no memory: the buffer grows with the samples decoded."""
    buf = io.BytesIO()
    sf.write(buf, _tone(seconds=2.0, channels=1), 44100, format="FLAC")
    data = bytearray(buf.getvalue())
    info = data.index(b"fLaC") + 8 + 10  # STREAMINFO, past the block sizes: total samples in its last 36 bits
    data[info + 3] &= 0xF0
    data[info + 4:info + 8] = (18000 * 44100).to_bytes(4, "big")
    tracemalloc.start()
    try:
        pcm = audio.decode(bytes(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert abs(duration(pcm) - 2.0) < 0.05
    assert peak < 20e6


def test_recording_reads_like_the_dense_array(jfk_variants: dict[str, Path]) -> None:
    for key in ("wav16", "mp3"):
        data = jfk_variants[key].read_bytes()
        dense = audio.decode(data)
        silence = np.zeros(3 * PAGE + 123, dtype=np.float32)
        recording = Recording()
        for part in (dense, silence, dense):
            recording.write(part)
        recording.close()
        whole = np.concatenate([dense, silence, dense])
        assert len(recording) == len(whole) and recording.shape == whole.shape
        assert np.array_equal(np.asarray(recording), whole)
        for start, stop in ((0, 10), (100, PAGE + 7), (len(dense) - 5, len(dense) + PAGE * 2),
                            (len(whole) - 300, len(whole)), (5, 5)):
            assert np.array_equal(recording[start:stop], whole[start:stop])
        assert recording[-1] == whole[-1] and recording.peak == float(np.abs(whole).max())
        assert recording.pages[len(dense) // PAGE + 1] is None  # silence holds no samples
        if key == "wav16":  # 16-bit samples are kept as 16-bit: half the memory, bit-exact
            assert recording.stored_bytes() < 0.6 * whole.nbytes


def test_a_clip_shorter_than_a_page_has_its_peak(jfk_variants: dict[str, Path]) -> None:
    clip = audio.decode(jfk_variants["wav16"].read_bytes())[16000 * 2:16000 * 3]  # 1 s: no full page
    recording = audio.decode_recording(wav_bytes(clip))
    assert len(recording) == len(clip) and recording.peak == float(np.abs(clip).max()) > 0.05
    assert np.array_equal(np.asarray(recording), clip)


def test_silence_is_not_stored() -> None:
    recording = Recording(max_seconds=7200)
    quiet = np.full(SAMPLE_RATE * 60, 1e-4, dtype=np.float32)
    for _ in range(60):
        recording.write(quiet)
    recording.close()
    assert duration(recording) == 3600 and recording.stored_bytes() < 1e6
    assert float(np.abs(recording[123456:223456]).max()) == 0.0  # -80 dBFS reads back as digital silence


def test_video_without_audio_is_a_400(tmp_path: Path) -> None:
    src = tmp_path / "silent.mp4"
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    import subprocess

    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=red:s=32x32:d=1",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(src)], check=True)
    with pytest.raises(RaplError) as info:
        audio.decode(src.read_bytes())
    assert status_of(info.value) == 400


def test_opus_in_ogg_named_nothing(tmp_path: Path, jfk: Path) -> None:
    out = ffmpeg(jfk, tmp_path / "x.opus", "-c:a", "libopus", "-b:a", "24k")
    assert abs(duration(audio.decode(out.read_bytes())) - 11.0) < 0.1


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


def _wav_header_rate(rate: int, samples: int) -> bytes:
    """A 16-bit mono PCM WAV of ``samples`` samples whose header says ``rate`` Hz."""
    data = np.tile(np.int16([8192, -8192]), samples // 2).tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, 2 * rate, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)


@pytest.mark.parametrize("max_seconds", [14400, 60])  # an upload's limit, a known speaker's reference's
def test_a_sample_rate_below_speech_is_refused_at_once(max_seconds: float) -> None:
    """20,000 samples said to be at 1 Hz would resample to 320 million (3.5 GB): a 400 naming file, at once."""
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(RaplError) as info:
            audio.decode_recording(_wav_header_rate(1, 20_000), max_seconds)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status_of(info.value) == 400 and info.value.param == "file" and "1 Hz" in info.value.message
    assert peak < 5e6 and elapsed < 1


def test_pyav_refuses_a_sample_rate_below_speech(tmp_path: Path) -> None:
    mkv = _lavfi(tmp_path / "low.mkv", "aevalsrc=0.9:s=1000", "-t", "600", "-c:a", "flac")
    with pytest.raises(RaplError) as info:
        audio.decode(mkv.read_bytes())
    assert status_of(info.value) == 400 and info.value.param == "file" and "1000 Hz" in info.value.message


class _Spy:
    """A sink that remembers the largest write."""

    def __init__(self, max_seconds: float = float("inf")) -> None:
        self.max_seconds = max_seconds
        self.size = 0
        self.largest = 0

    def write(self, samples: np.ndarray) -> None:
        self.size += samples.size
        self.largest = max(self.largest, samples.size)

    def reset(self) -> None:
        self.size = 0

    def __len__(self) -> int:
        return self.size


@pytest.mark.parametrize("rate", [MIN_SAMPLE_RATE, 8000, 11025, 16000, 44100])
def test_every_resampler_call_makes_a_bounded_block(rate: int) -> None:
    """However long a block a decoder hands over, soxr is fed pieces of at most OUT_BLOCK output samples."""
    spy = _Spy()
    resampler = Resampler(rate, spy)
    resampler.write(np.zeros(rate * 60, dtype=np.float32))  # a minute in one block
    resampler.write(np.zeros(0, dtype=np.float32), last=True)
    assert spy.largest <= OUT_BLOCK + 4096 and abs(spy.size - 60 * SAMPLE_RATE) <= 1  # soxr adds its delay once


def test_the_limit_is_checked_before_resampling() -> None:
    """A block whose output would pass the limit is refused before soxr makes it."""
    spy = _Spy(max_seconds=10)
    with pytest.raises(RaplError) as info:
        Resampler(MIN_SAMPLE_RATE, spy).write(np.zeros(MIN_SAMPLE_RATE * 60, dtype=np.float32))
    assert status_of(info.value) == 413 and spy.size <= 10 * SAMPLE_RATE


def test_a_low_rate_wav_stops_at_the_limit_holding_little(tmp_path: Path) -> None:
    """10 minutes of 4 kHz noise (each block upsampled 4 times) against a 1-minute limit."""
    buf = io.BytesIO()
    sf.write(buf, np.random.default_rng(0).normal(0, 0.1, 4000 * 600).astype(np.float32), 4000, format="WAV",
             subtype="PCM_16")
    tracemalloc.start()
    try:
        with pytest.raises(RaplError) as info:
            audio.decode_recording(buf.getvalue(), max_seconds=60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status_of(info.value) == 413
    assert peak < 10e6, f"{peak / 1e6:.0f} MB"  # a minute of float32 pages is 3.8 MB


def _sine(seconds: float, freq: float = 440.3, rate: int = SAMPLE_RATE) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


@pytest.mark.parametrize("signal", ["constant", "constant with hiss", "sine", "square", "16-bit sine"])
def test_a_steady_signal_costs_no_memory_and_no_vad(signal: str) -> None:
    """An hour of a constant, or of a tone, is stored as one page and shown to the VAD as silence."""
    minute = {"constant": np.full(60 * SAMPLE_RATE, 0.9, dtype=np.float32),
              "constant with hiss": (0.9 + np.random.default_rng(1).uniform(-5e-4, 5e-4, 60 * SAMPLE_RATE)
                                     ).astype(np.float32),
              "sine": _sine(60),
              "square": np.where(np.arange(60 * SAMPLE_RATE) % 50 < 25, 0.9, -0.9).astype(np.float32),  # 320 Hz
              "16-bit sine": np.round(_sine(60) * 32767) / np.float32(32768)}[signal]
    recording = Recording(max_seconds=7200)
    for _ in range(60):
        recording.write(minute)
    recording.close()
    assert duration(recording) == 3600 and recording.stored_bytes() < 1e6
    assert len(recording.still) >= recording.page_count() - 3
    assert all(recording.page(i) is None for i in range(2, len(recording.pages)))
    middle = recording[SAMPLE_RATE * 1800:SAMPLE_RATE * 1810]  # reads back as the signal, not as silence
    assert abs(float(np.abs(middle).max()) - float(np.abs(minute).max())) < 1e-3
    assert abs(float(middle.mean()) - float(minute.mean())) < 1e-2


def test_speech_is_never_taken_for_a_steady_signal(jfk: Path, shared_audio: Path,
                                                    spoken_sentences: list[np.ndarray]) -> None:
    """Real speech, espeak-ng speech, speech looped, and speech 40 dB under a loud tone: every page is kept
    as it was and shown to the VAD."""
    clips = [audio.decode(jfk.read_bytes()), audio.decode((shared_audio / "zh_sample.wav").read_bytes()),
             np.concatenate(spoken_sentences)]
    for clip in clips:
        tone = _sine(len(clip) / SAMPLE_RATE, freq=440) * np.float32(1.6)
        for audio_in in (clip, np.tile(clip, 8), clip[:PAGE * (len(clip) // PAGE)].reshape(-1, PAGE)[[0] * 6].ravel(),
                         tone + clip / np.float32(100), clip + np.float32(0.5)):
            recording = Recording()
            recording.write(audio_in)
            recording.close()
            assert not recording.still
            assert np.array_equal(np.asarray(recording), audio_in)  # lossless: a looped page is the same page


def _noise(seconds: float) -> np.ndarray:
    return np.random.default_rng(2).normal(0, 0.1, int(seconds * SAMPLE_RATE)).astype(np.float32)


def test_the_memory_budget_is_shared_and_given_back() -> None:
    """Two recordings share one budget: the second waits, then gets 503 with Retry-After; released, it fits."""
    budget = MemoryBudget(3_000_000, wait=0.2)  # 23 pages of float32
    first = Recording(budget=budget)
    first.write(_noise(30))  # 14 pages: 1.8 MB
    assert budget.used == first.charged == 14 * PAGE * 4
    second = Recording(budget=budget)
    started = time.perf_counter()
    with pytest.raises(RaplError) as info:
        second.write(_noise(30))
    assert status_of(info.value) == 503 and info.value.code == "decode_memory_full" and info.value.retry_after
    assert time.perf_counter() - started >= 0.2
    second.reset()
    first.release()
    first.release()  # idempotent
    assert budget.used == 0
    second.write(_noise(30))
    assert budget.used == second.charged


def test_a_full_budget_waits_for_room() -> None:
    budget = MemoryBudget(3_000_000, wait=5)
    first = Recording(budget=budget)
    first.write(_noise(30))
    threading.Timer(0.3, first.release).start()
    second = Recording(budget=budget)
    second.write(_noise(30))  # waits for the first to be released
    assert budget.used == second.charged


def test_audio_larger_than_the_whole_budget_is_a_413_and_a_failed_decode_gives_its_charge_back() -> None:
    budget = MemoryBudget(1_000_000)
    with pytest.raises(RaplError) as info:
        audio.decode_recording(wav_bytes(_noise(60)), budget=budget)
    assert status_of(info.value) == 413 and "DECODE_MEMORY_MB" in info.value.message
    assert budget.used == 0
    recording = audio.decode_recording(wav_bytes(_noise(5)), budget=budget)
    assert budget.used == recording.charged == 2 * PAGE * 2  # two int16 pages; the tail is not charged
    recording.release()
    assert budget.used == 0


def test_the_server_charges_every_request_to_one_budget_and_gives_it_back(fake_serve: Any) -> None:
    """Over HTTP: a full budget answers 503 with Retry-After in the envelope; a request done gives its audio
    back (streamed or not); audio bigger than the whole budget is a 413."""
    import httpx2 as httpx

    server = fake_serve(DECODE_MEMORY_MB="2")
    budget: MemoryBudget = server.app.extensions["rapl.decode_budget"]
    budget.wait = 0.1
    speech = wav_bytes(_noise(10))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        def post(data: bytes, **form: str) -> Any:
            return http.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)}, data=form)

        for form in ({}, {"stream": "true"}):
            assert post(speech, **form).status_code == 200 and budget.used == 0
        budget.used = budget.limit  # other requests hold it all
        resp = post(speech)
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
        assert resp.json()["error"]["code"] == "decode_memory_full"
        budget.used = 0
        resp = post(wav_bytes(_noise(120)))  # 3.8 MB of pages
        assert resp.status_code == 413 and "DECODE_MEMORY_MB" in resp.json()["error"]["message"]
        assert budget.used == 0
