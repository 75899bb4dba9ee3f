"""The transcription service through the real server: speaker labels (diarized_json) and the vocabulary.

Real voices (JFK, and the Mandarin speaker of zh_sample.wav), the real multilingual Whisper base
model, the real speaker encoder, the official SDK.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rapl.transcript.text import join_text
from support.server import Server
from support.speech import build_recording, espeak, wav_bytes, wer

pytestmark = pytest.mark.slow  # the real Whisper base model and speaker encoder

pytest.importorskip("resemblyzer", reason="speaker labels: pip install webrtcvad-wheels librosa && "
                                          "pip install --no-deps resemblyzer")
CUT = 5.3  # seconds: where JFK's clip is split into two turns


@pytest.fixture(scope="module")
def meeting(shared_audio: Path) -> tuple[bytes, list[tuple[float, float]], np.ndarray]:
    """Three turns: JFK (first 5.3 s), the Mandarin speaker, JFK again; with where each turn lies."""
    from rapl import audio

    jfk = audio.decode((shared_audio / "en_jfk.flac").read_bytes())
    mandarin = audio.decode((shared_audio / "zh_sample.wav").read_bytes())
    parts = [jfk[:int(CUT * 16000)], mandarin, jfk[int(CUT * 16000):]]
    recording, starts = build_recording(parts, [0.5, 1.0, 1.0])
    turns = [(start, start + len(part) / 16000) for start, part in zip(starts, parts, strict=True)]
    return wav_bytes(recording), turns, jfk


@pytest.fixture(scope="module")
def base_server(serve, whisper_base_model: str) -> Server:  # noqa: ANN001
    server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_base_model})
    assert server.worker.state == "ready", server.worker.error
    return server


def data_url(pcm: np.ndarray) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav_bytes(pcm)).decode()


def labels_by_turn(segments: list[Any], turns: list[tuple[float, float]]) -> list[set[str]]:
    """The speaker labels of the segments whose middle lies in each turn."""
    found: list[set[str]] = [set() for _ in turns]
    for seg in segments:
        middle = (seg.start + seg.end) / 2
        nearest = min(range(len(turns)), key=lambda i: 0 if turns[i][0] <= middle <= turns[i][1]
                      else min(abs(middle - turns[i][0]), abs(middle - turns[i][1])))
        found[nearest].add(seg.speaker)
    return found


def test_three_turn_meeting_tells_the_two_voices_apart(base_server: Server, meeting) -> None:  # noqa: ANN001
    from openai.types.audio import TranscriptionDiarized

    clip, turns, _ = meeting
    result = base_server.client().audio.transcriptions.create(model="gpt-4o-transcribe-diarize",
                                                              file=("meeting.wav", clip),
                                                              response_format="diarized_json")
    assert isinstance(result, TranscriptionDiarized), type(result)
    first, second, third = labels_by_turn(result.segments, turns)
    assert first == third and len(first) == 1 and second.isdisjoint(first), (first, second, third)
    assert {s.speaker for s in result.segments} <= {"A", "B"}
    assert [s.id for s in result.segments] == [f"seg_{i}" for i in range(len(result.segments))]
    assert all(s.type == "transcript.text.segment" for s in result.segments)
    assert "country" in result.text and "新区" in result.text
    print("meeting:", [(s.speaker, round(s.start, 2), round(s.end, 2), s.text) for s in result.segments])


def test_a_known_speaker_is_named(base_server: Server, meeting) -> None:  # noqa: ANN001
    clip, turns, jfk = meeting
    # JFK's reference: 5 s of his clip (the only recording of him here, so it overlaps his turns)
    result = base_server.client().audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", file=("meeting.wav", clip), response_format="diarized_json",
        extra_body={"known_speaker_names": ["JFK"], "known_speaker_references": [data_url(jfk[3 * 16000:8 * 16000])]})
    first, second, third = labels_by_turn(result.segments, turns)
    assert first == third == {"JFK"} and "JFK" not in second and second <= {"A", "B"}, (first, second, third)


def test_the_number_of_speakers_can_be_fixed(base_server: Server, meeting) -> None:  # noqa: ANN001
    clip, _, _ = meeting
    with base_server.http() as http:
        body = http.post("/v1/audio/transcriptions", files={"file": ("m.wav", clip)},
                         data={"response_format": "diarized_json", "num_speakers": "1"}).json()
    assert {s["speaker"] for s in body["segments"]} == {"A"}


def test_diarized_stream_names_segments_then_labels_them(base_server: Server, meeting) -> None:  # noqa: ANN001
    from openai.types.audio import (
        TranscriptionTextDeltaEvent,
        TranscriptionTextDoneEvent,
        TranscriptionTextSegmentEvent,
    )

    clip, turns, _ = meeting
    with base_server.http() as http:
        resp = http.post("/v1/audio/transcriptions", files={"file": ("m.wav", clip)},
                         data={"response_format": "diarized_json", "stream": "true", "model": "gpt-4o-transcribe"})
    events = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    deltas = [TranscriptionTextDeltaEvent.model_validate(e) for e in events if e["type"] == "transcript.text.delta"]
    segments = [TranscriptionTextSegmentEvent.model_validate(e) for e in events
                if e["type"] == "transcript.text.segment"]
    done = TranscriptionTextDoneEvent.model_validate(events[-1])
    assert kinds[-1] == "transcript.text.done" and kinds.index("transcript.text.segment") > kinds.index(
        "transcript.text.delta")
    assert [d.segment_id for d in deltas] == [s.id for s in segments]
    assert "".join(d.delta for d in deltas) == done.text == join_text([s.text for s in segments])
    first, second, third = labels_by_turn(segments, turns)
    assert first == third and second.isdisjoint(first)


@pytest.mark.parametrize(("data", "param"), [
    ({"known_speaker_names[]": "Ann"}, "known_speaker_references"),
    ({"known_speaker_references[]": "data:audio/wav;base64,UklGRg=="}, "known_speaker_references"),
    ({"known_speaker_names[]": ["A1", "A2", "A3", "A4", "A5"], "known_speaker_references[]": ["data:,x"] * 5},
     "known_speaker_names"),
    ({"known_speaker_names[]": "Ann", "known_speaker_references[]": "https://example.com/ann.wav"},
     "known_speaker_references"),
    ({"known_speaker_names[]": "Ann", "known_speaker_references[]": "data:audio/wav;base64,not-base64!"},
     "known_speaker_references"),
    ({"known_speaker_names[]": "Ann", "known_speaker_references[]": "short"}, "known_speaker_references"),
    ({"num_speakers": "0"}, "num_speakers"),
    ({"num_speakers": "many"}, "num_speakers"),
])
def test_bad_speaker_parameters_are_400s(base_server: Server, meeting, data: dict[str, Any], param: str) -> None:  # noqa: ANN001
    clip, _, jfk = meeting
    if data.get("known_speaker_references[]") == "short":
        data = {**data, "known_speaker_references[]": data_url(jfk[:16000])}  # 1 s: too short to know a voice
    with base_server.http() as http:
        resp = http.post("/v1/audio/transcriptions", files={"file": ("m.wav", clip)},
                         data={"response_format": "diarized_json", **data})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_diarized_json_is_for_transcriptions_only(base_server: Server, meeting) -> None:  # noqa: ANN001
    clip, _, _ = meeting
    with base_server.http() as http:
        resp = http.post("/v1/audio/translations", files={"file": ("m.wav", clip)},
                         data={"response_format": "diarized_json"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "response_format"


# --- vocabulary --------------------------------------------------------------------------------

TERMS = ("Kubernetes", "Grafana", "Prometheus")
SENTENCES = ("We deploy the service on Kubernetes every morning.",
             "The Grafana dashboard shows the latency.",
             "Prometheus scrapes the metrics endpoint.")


@pytest.fixture(scope="module")
def jargon(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    out = tmp_path_factory.mktemp("jargon")
    return [espeak(text, out / f"j{i}.wav").read_bytes() for i, text in enumerate(SENTENCES)]


@pytest.fixture(scope="module")
def vocabulary_server(serve, whisper_base_model: str, tmp_path_factory: pytest.TempPathFactory) -> Server:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("vocabulary")
    (folder / "vocabulary.txt").write_text("# our stack\n" + "\n".join(TERMS) + "\n")
    (folder / "replacements.txt").write_text("scrapes -> collects\nlatency → LATENCY\n")
    return serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_base_model,
                  "VOCABULARY_FILE": str(folder / "vocabulary.txt"),
                  "REPLACEMENTS_FILE": str(folder / "replacements.txt")})


def test_vocabulary_reaches_whisper_and_replacements_apply_everywhere(vocabulary_server: Server, jargon,  # noqa: ANN001
                                                                     base_server: Server,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What reaches the model is exact (the request's keywords, then the file's); what Whisper then says
    varies from run to run, so the rules are checked against what it said, not against fixed words."""
    backend = vocabulary_server.worker.backend
    model = backend._model
    calls: list[dict[str, Any]] = []
    said: list[str] = []  # each segment's text as the model wrote it, before the rules
    original, transcribe = model.transcribe, backend.transcribe
    monkeypatch.setattr(model, "transcribe", lambda audio, **kw: calls.append(kw) or original(audio, **kw))
    monkeypatch.setattr(backend, "transcribe", lambda audio, options: (said.append(s.text) or s
                                                                      for s in transcribe(audio, options)))
    rules = vocabulary_server.app.extensions["rapl.service"].vocabulary.replacements
    with vocabulary_server.http() as http:
        text = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", jargon[2])},
                         data={"keywords[]": "scrapes", "response_format": "text"}).text
        heard, said[:] = list(said), []
        stream = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", jargon[1])},
                           data={"stream": "true", "model": "gpt-4o-transcribe"}).text
    assert calls[0]["hotwords"] == "scrapes " + " ".join(TERMS)  # the request's keywords, then the file's
    assert heard and wer(SENTENCES[1], join_text(said)) <= 0.5, (heard, said)  # the first varies most
    assert text.strip() == join_text([rules.apply(s) for s in heard]), (text, heard)
    assert "scrapes" not in text.lower()  # the rule leaves none, whatever Whisper wrote
    deltas = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: ")]
    streamed = join_text([rules.apply(s) for s in said])
    assert "".join(e.get("delta", "") for e in deltas) == deltas[-1]["text"] == streamed
    assert ("latency" in join_text(said).lower()) == ("LATENCY" in streamed)  # the rule, where the word was heard


def test_speaker_labels_work_on_another_backend(serve, tiny_sensevoice: Path, meeting) -> None:  # noqa: ANN001
    """The speaker stage runs after any model: here FunASR's SenseVoice (the tiny test model, one
    segment per utterance the VAD finds), on the same real voices."""
    clip, turns, _ = meeting
    server = serve({"BACKEND": "sensevoice", "LOCAL_MODEL": str(tiny_sensevoice)})
    result = server.client().audio.transcriptions.create(model="gpt-4o-transcribe-diarize",
                                                         file=("meeting.wav", clip), response_format="diarized_json")
    first, second, third = labels_by_turn(result.segments, turns)
    assert first == third and len(first) == 1 and second and second.isdisjoint(first), (first, second, third)
