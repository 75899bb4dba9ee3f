"""The shared segmentation stage and long recordings, through the real server."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import JFK_TEXT, SENTENCES, Server, build_recording, wav_bytes, wer
from rapl.settings import Settings
from rapl.vad import Segmenter


def _segmenter(**overrides: str) -> Segmenter:
    segmenter = Segmenter(Settings.load({"ENV_FILE": "", **overrides}, environ={}))
    segmenter.load()
    return segmenter


def test_silence_and_noise_have_no_chunks() -> None:
    segmenter = _segmenter()
    rng = np.random.default_rng(1)
    assert segmenter.plan(np.zeros(16000 * 20, dtype=np.float32)) == []
    assert segmenter.plan(rng.normal(0, 0.05, 16000 * 20).astype(np.float32)) == []


def test_chunks_cut_at_pauses_and_never_exceed_the_maximum(spoken_sentences) -> None:
    recording, starts = build_recording(spoken_sentences * 3, [3.0] * 18)
    segmenter = _segmenter(MAX_CHUNK_SECONDS="12")
    chunks = segmenter.plan(recording)
    assert all(c.end - c.start <= 12 * 16000 for c in chunks)
    assert chunks[0].start / 16000 < starts[0] < chunks[0].end / 16000
    # every sentence lies whole inside one chunk (cuts fall in pauses)
    for start, part in zip(starts, spoken_sentences * 3, strict=True):
        end = start + len(part) / 16000 - 0.3
        assert any(c.start / 16000 <= start and end <= c.end / 16000 for c in chunks), start
    unmerged = segmenter.plan(recording, merge=False)
    assert len(unmerged) == 18


def test_vad_off_cuts_fixed_windows() -> None:
    segmenter = _segmenter(VAD="false", MAX_CHUNK_SECONDS="10")
    chunks = segmenter.plan(np.zeros(16000 * 25, dtype=np.float32))
    assert [(c.start, c.end) for c in chunks] == [(0, 160000), (160000, 320000), (320000, 400000)]
    # a tail of a few samples joins the window before it (models fail on a 3-sample input)
    chunks = segmenter.plan(np.zeros(160000 * 3 + 3, dtype=np.float32))
    assert [(c.start, c.end) for c in chunks] == [(0, 160000), (160000, 320000), (320000, 480003)]
    assert segmenter.plan(np.zeros(100, dtype=np.float32)) == []


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_silence_and_noise_return_empty_text(whisper_server: Server, kind: str) -> None:
    rng = np.random.default_rng(2)
    pcm = np.zeros(16000 * 30, np.float32) if kind == "silence" else rng.normal(0, 0.1, 16000 * 30).astype(np.float32)
    completed = whisper_server.worker.counters["completed"]
    with whisper_server.http() as http:
        body = http.post("/v1/audio/transcriptions", files={"file": ("x.wav", wav_bytes(pcm))},
                         data={"response_format": "verbose_json"}).json()
    assert body["text"] == "" and body["segments"] == []
    assert body["duration"] == 30.0
    assert whisper_server.worker.counters["completed"] == completed  # the model never ran


def test_twenty_minute_recording_keeps_order_and_times(whisper_server: Server, spoken_sentences, jfk) -> None:
    """20 minutes: real and synthesized speech between long stretches of silence and noise."""
    from rapl import audio

    parts = [audio.decode(jfk.read_bytes())] + spoken_sentences * 2
    references = [JFK_TEXT] + SENTENCES * 2
    gaps = [25.0, 140.0, 95.0, 230.0, 60.0, 170.0, 45.0, 120.0, 80.0, 150.0, 30.0, 20.0, 15.0]
    recording, starts = build_recording(parts, gaps, noise=0.003)
    assert 19 * 60 < len(recording) / 16000 < 21 * 60
    client = whisper_server.client()
    result = client.audio.transcriptions.create(model="whisper-1", file=("long.flac", wav_bytes(recording, "FLAC")),
                                                response_format="verbose_json")
    segments = list(result.segments)
    assert [s.start for s in segments] == sorted(s.start for s in segments)
    found = []
    for start, part, reference in zip(starts, parts, references, strict=True):
        end = start + len(part) / 16000
        inside = [s for s in segments if start - 0.5 <= s.start and s.end <= end + 0.5]
        # the sentence is there, where it was spoken (tiny.en on espeak-ng speech is rough: WER <= 0.5)
        assert inside, (start, [(s.start, s.text) for s in segments])
        assert abs(inside[0].start - start) <= 0.5, (start, inside[0].start)
        assert wer(reference, " ".join(s.text for s in inside)) <= (0.1 if part is parts[0] else 0.5)
        found += inside
    # no text in the silent or noisy stretches: every segment belongs to a spoken part
    assert len(found) == len(segments)
    assert wer(JFK_TEXT, segments[0].text + " " + segments[1].text) <= 0.2 or wer(JFK_TEXT, result.text[:120]) <= 0.2


def test_short_json_clip_of_silence_never_reaches_the_model(whisper_server: Server) -> None:
    completed = whisper_server.worker.counters["completed"]
    with whisper_server.http() as http:
        silence = wav_bytes(np.zeros(16000 * 8, np.float32))
        body = http.post("/v1/audio/transcriptions", files={"file": ("x.wav", silence)})
    assert body.json()["text"] == ""
    assert whisper_server.worker.counters["completed"] == completed


def test_short_json_clip_of_noise_answers_empty_text(whisper_server: Server) -> None:
    """Dictation path: the model may start on it while the VAD looks, but no text comes back."""
    noise = np.random.default_rng(3).normal(0, 0.1, 16000 * 8).astype(np.float32)
    with whisper_server.http() as http:
        for fmt in ("json", "text"):
            resp = http.post("/v1/audio/transcriptions", files={"file": ("x.wav", wav_bytes(noise))},
                             data={"response_format": fmt})
            assert resp.status_code == 200
            assert (resp.json()["text"] if fmt == "json" else resp.text) == ""
    assert whisper_server.worker.queue_depth == 0  # a withdrawn job leaves the queue count right


def test_withdrawn_job_never_runs(serve, whisper_model: str, spoken_sentences) -> None:  # noqa: ANN001
    import threading
    import time

    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model})
    long_clip = wav_bytes(build_recording(spoken_sentences * 2, [0.5] * 12)[0])
    busy = threading.Thread(target=lambda: server.http().post("/v1/audio/transcriptions",
                                                              files={"file": ("l.wav", long_clip)}))
    busy.start()
    while not server.worker.running:
        time.sleep(0.01)
    ran: list[bool] = []
    future = server.worker.submit(lambda: ran.append(True))
    assert server.worker.queue_depth == 1
    assert server.worker.withdraw(future) is True
    assert server.worker.queue_depth == 0
    busy.join(timeout=120)
    assert ran == [] and future.cancelled()
