"""The shared segmentation stage (Silero VAD), through the real server: on a FakeBackend for what
reaches the model, on the real tiny.en model for a long recording."""

from __future__ import annotations

import numpy as np
import pytest

from rapl.audio.vad import Segmenter
from rapl.core.params import VAD_BOUNDS
from rapl.settings import Settings
from rapl.transcript.transcription import VadOptions
from support.fake_backend import FakeBackend, say
from support.server import Server, wait_until
from support.speech import JFK_TEXT, SENTENCES, SHARED_AUDIO, build_recording, tone, wav_bytes, wer


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
    assert all(c.length <= 12 * 16000 for c in chunks)  # what the model is given
    assert chunks[0].start / 16000 < starts[0] < chunks[0].end / 16000
    # every sentence lies whole inside one chunk (cuts fall in pauses)
    for start, part in zip(starts, spoken_sentences * 3, strict=True):
        end = start + len(part) / 16000 - 0.3
        assert any(c.start / 16000 <= start and end <= c.end / 16000 for c in chunks), start
    unmerged = segmenter.plan(recording, merge=False)
    assert len(unmerged) == 18


def test_the_dictation_check_hears_what_the_full_plan_hears(spoken_sentences) -> None:
    """Segmenter.heard (the dictation path's check, beside the model) stops at the first speech it hears,
    reading 0.5 s first: its answer is bool(speech()), and its probabilities are the full pass's."""
    import itertools

    from rapl.audio.recording import Recording
    from rapl.audio.vad import _batches, _probabilities

    segmenter = _segmenter()
    rng = np.random.default_rng(5)
    quiet = rng.normal(0, 0.003, 16000 * 9).astype(np.float32)
    late = np.concatenate([quiet, spoken_sentences[1]])  # speech only after 9 s
    clips = {"speech": spoken_sentences[0], "late speech": late, "silence": np.zeros(16000 * 10, np.float32),
             "noise": rng.normal(0, 0.1, 16000 * 10).astype(np.float32), "hiss": quiet}
    for name, clip in clips.items():
        assert segmenter.heard(Recording.wrap(clip)) == bool(segmenter.speech(Recording.wrap(clip))), name
    assert segmenter.heard(Recording.wrap(late)) and not segmenter.heard(Recording.wrap(clips["noise"]))
    ladder = itertools.chain((16, 32, 64), itertools.repeat(128))
    pieces = list(_batches(Recording.wrap(late), ladder))
    assert [len(p) for _, p in pieces[:3]] == [16, 32, 64]
    full = _probabilities(Recording.wrap(late))
    assert np.allclose(np.concatenate([p for _, p in pieces]), full[:sum(len(p) for _, p in pieces)], atol=1e-5)


def test_long_pauses_are_shortened_inside_merged_chunks(spoken_sentences) -> None:
    """For a model that segments audio itself, in a recording longer than one chunk, neighbouring speech is
    joined with each pause over KEPT_PAUSE_SECONDS shortened to it (faster-whisper's vad_filter leaves pauses
    out too): more speech per 30 s window, so fewer windows. A clip of one chunk keeps all of its pauses."""
    from rapl.audio.vad import KEPT_PAUSE_SECONDS

    parts = (spoken_sentences * 2)[:8]
    recording, starts = build_recording(parts, [1.0] + [6.0] * 7)
    assert len(recording) > 60 * 16000
    segmenter = _segmenter()
    chunks = segmenter.plan(recording)
    assert len(chunks) < 4 and all(c.length <= 30 * 16000 for c in chunks)  # 4+ with the pauses kept
    assert sum(c.length for c in chunks) < 0.7 * len(recording)
    for chunk in chunks:
        assert len(chunk.samples(recording)) == chunk.length
        for (_, b), (c, _) in zip(chunk.pieces, chunk.pieces[1:], strict=False):  # what is left out is silence
            assert b < c and not np.any(np.abs(recording[b:c]) > 0.01)
    kept = [(c - b) / 16000 for chunk in chunks for (_, b), (c, _) in zip(chunk.pieces, chunk.pieces[1:], strict=False)]
    assert kept  # the 6 s pauses were shortened: speech to speech, KEPT_PAUSE_SECONDS remain (padding included)
    pieces = [p for chunk in chunks for p in chunk.spans]
    for start, part in zip(starts, parts, strict=True):  # every sentence inside a piece, whole
        assert any(a / 16000 <= start and start + len(part) / 16000 - 0.3 <= b / 16000 for a, b in pieces), start
    for chunk in chunks:  # in the model's audio, the pause between two sentences is KEPT_PAUSE_SECONDS long
        heard = np.abs(chunk.samples(recording)) > 0.01
        loud = np.flatnonzero(heard)
        pauses = np.diff(loud) / 16000
        assert pauses.max() == pytest.approx(KEPT_PAUSE_SECONDS, abs=0.35) if len(chunk.pieces) > 1 else True
    short, _ = build_recording(spoken_sentences[:3], [1.0, 6.0, 6.0])  # 26 s: one chunk, pauses and all
    (whole,) = segmenter.plan(short)
    assert not whole.pieces and whole.length == whole.end - whole.start


def test_a_packed_chunk_maps_times_back_to_the_recording() -> None:
    from rapl.audio.vad import Chunk

    chunk = Chunk(16000, 160000, ((16000, 48000), (96000, 160000)))  # 2 s + 4 s of 9 s, from 1 s
    assert chunk.length == 96000
    assert chunk.to_recording(0.0) == 0.0 and chunk.to_recording(1.5) == 1.5
    assert chunk.to_recording(2.0) == 5.0  # a seam starts the later piece...
    assert chunk.to_recording(2.0, ending=True) == 2.0  # ...and ends the earlier one
    assert chunk.to_recording(3.0) == 6.0 and chunk.to_recording(6.0, ending=True) == 9.0
    assert chunk.to_recording(7.5, ending=True) == 9.0  # past the audio: held at its end
    whole = Chunk(16000, 48000)
    assert whole.to_recording(1.25) == 1.25 and whole.samples(np.arange(60000)).tolist() == list(range(16000, 48000))


def test_segments_of_a_packed_chunk_are_timed_where_the_speech_is(fake_serve, spoken_sentences) -> None:  # noqa: ANN001
    """The model hears six sentences with their 6 s pauses shortened to 2 s; its segment and word times come
    back at the sentences' places in the recording, not at their places in what it heard."""
    server = fake_serve(FakeBackend(segments_audio=True, segment_seconds=0.5), VAD="true")
    parts = (spoken_sentences * 2)[:6]
    recording, starts = build_recording(parts, [1.0] + [6.0] * 5)  # 50 s: longer than a chunk
    with server.http() as http:
        body = http.post("/v1/audio/transcriptions", files={"file": ("x.wav", wav_bytes(recording))},
                         data={"response_format": "verbose_json",
                               "timestamp_granularities[]": ["word", "segment"]}).json()
    heard = sum(call.seconds for call in server.backend.calls)
    assert len(server.backend.calls) <= 2 and heard < len(recording) / 16000 - 15  # pauses shortened to 2 s
    loud = np.flatnonzero(np.abs(recording) > 0.01) / 16000
    breaks = np.flatnonzero(np.diff(loud) > 3.0)
    ends, begins = loud[breaks], loud[breaks + 1]  # each 6 s pause, speech to speech
    assert len(ends) == 5

    def left_out(t: float) -> bool:  # what the model never heard: each pause but 1 s on either side
        return any(end + 1.3 < t < begin - 1.3 for end, begin in zip(ends, begins, strict=True))

    times = [t for item in body["segments"] + body["words"] for t in (item["start"], item["end"])]
    assert times and not [t for t in times if left_out(t)]
    assert [s["start"] for s in body["segments"]] == sorted(s["start"] for s in body["segments"])
    for begin in [loud[0], *begins]:  # and each sentence's segments start where it is
        assert any(begin - 1.3 <= s["start"] <= begin + 0.3 for s in body["segments"]), begin
    assert body["segments"][-1]["end"] <= len(recording) / 16000


@pytest.fixture(scope="module")
def six_speeches(speech_pcm) -> np.ndarray:  # noqa: ANN001
    """The JFK clip six times over, a second of silence after each: 72 s, 24 stretches of speech."""
    if not (SHARED_AUDIO / "en_jfk.flac").is_file():
        pytest.skip("needs the real speech clip en_jfk.flac (../shared/audio)")
    pause = np.zeros(16000, dtype=np.float32)
    return np.concatenate([np.concatenate([speech_pcm, pause]) for _ in range(6)])


def _sane(chunks: list, baseline: list, max_chunk: int) -> None:  # noqa: ANN001
    lengths = [c.length / 16000 for c in chunks]
    assert chunks and len(chunks) <= len(baseline), (len(chunks), len(baseline))
    assert min(lengths) >= 0.5 and max(lengths) <= max_chunk, lengths


@pytest.mark.parametrize("padding_ms", [7_500, 10_000, 60_000])
def test_any_padding_keeps_the_plan_sane(six_speeches: np.ndarray, padding_ms: int) -> None:
    """Padding was taken off the longest span twice: past 7.5 s of it the span length went negative
    and every 32 ms window became a chunk of its own (596 chunks instead of 24)."""
    segmenter = _segmenter()
    baseline = segmenter.plan(six_speeches, merge=False)
    padded = segmenter.tuned(VadOptions(padding_ms=padding_ms))
    _sane(padded.plan(six_speeches, merge=False), baseline, 30)
    _sane(padded.plan(six_speeches), baseline, 30)  # merged: never more chunks than stretches of speech
    short = _segmenter(MAX_CHUNK_SECONDS="5").tuned(VadOptions(padding_ms=padding_ms))
    assert all(c.end - c.start <= 5 * 16000 for c in short.plan(six_speeches, merge=False))


# Each end of each chunking_strategy bound, but threshold's top: OpenAI's range ends at 1, which asks that
# nothing count as speech (0.8 is the strictest that still hears clear speech; 0.9 kept 40 %).
ENDS = [(key, value) for key, bounds in VAD_BOUNDS.items() for value in bounds if (key, value) != ("threshold", 1.0)]


@pytest.mark.parametrize(("key", "value"), [*ENDS, ("threshold", 0.8)])
def test_every_allowed_vad_value_still_finds_the_speech(six_speeches: np.ndarray, key: str, value: float) -> None:
    """At the ends of the chunking_strategy bounds, chunks are sane and each of the six speeches reaches
    the model: at least half the speech the defaults find."""
    segmenter = _segmenter()
    field = {"threshold": "threshold", "prefix_padding_ms": "padding_ms", "silence_duration_ms": "min_silence_ms"}
    chunks = segmenter.tuned(VadOptions(**{field[key]: value})).plan(six_speeches, merge=False)
    lengths = [c.length / 16000 for c in chunks]
    assert len(chunks) <= 60 and min(lengths) >= 0.2 and max(lengths) <= 30, lengths  # no shreds
    default = sum((c.end - c.start) / 16000 for c in segmenter.plan(six_speeches, merge=False))
    assert sum(lengths) >= 0.5 * default, (sum(lengths), default)
    speech = len(six_speeches) // 6
    for n in range(6):
        assert any(c.start < (n + 1) * speech and c.end > n * speech for c in chunks), n


def test_vad_off_cuts_fixed_windows() -> None:
    segmenter = _segmenter(VAD="false", MAX_CHUNK_SECONDS="10")
    chunks = segmenter.plan(np.zeros(16000 * 25, dtype=np.float32))
    assert [(c.start, c.end) for c in chunks] == [(0, 160000), (160000, 320000), (320000, 400000)]
    # a tail of a few samples joins the window before it (models fail on a 3-sample input)
    chunks = segmenter.plan(np.zeros(160000 * 3 + 3, dtype=np.float32))
    assert [(c.start, c.end) for c in chunks] == [(0, 160000), (160000, 320000), (320000, 480003)]
    assert segmenter.plan(np.zeros(100, dtype=np.float32)) == []


@pytest.fixture
def vad_server(fake_serve) -> Server:  # noqa: ANN001
    """A real server with the VAD on, on a FakeBackend: what reaches the "model" is in its calls."""
    return fake_serve(FakeBackend(), VAD="true")


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_silence_and_noise_return_empty_text(vad_server: Server, kind: str) -> None:
    rng = np.random.default_rng(2)
    pcm = np.zeros(16000 * 30, np.float32) if kind == "silence" else rng.normal(0, 0.1, 16000 * 30).astype(np.float32)
    with vad_server.http() as http:
        body = http.post("/v1/audio/transcriptions", files={"file": ("x.wav", wav_bytes(pcm))},
                         data={"response_format": "verbose_json"}).json()
    assert body["text"] == "" and body["segments"] == []
    assert body["duration"] == 30.0
    assert vad_server.backend.calls == [] and vad_server.worker.counters["completed"] == 0  # the model never ran


def test_speech_between_pauses_reaches_the_model_and_silence_does_not(vad_server: Server, spoken_sentences) -> None:
    """Two sentences 20 s apart: the model hears each sentence (with a little padding), not the silence."""
    recording, starts = build_recording(spoken_sentences[:2], [5.0, 20.0])
    with vad_server.http() as http:
        body = http.post("/v1/audio/transcriptions", files={"file": ("x.wav", wav_bytes(recording))},
                         data={"response_format": "verbose_json"}).json()
    heard = [call.seconds for call in vad_server.backend.calls]
    assert len(heard) == 2 and len(body["segments"]) == 2
    for seconds, part in zip(heard, spoken_sentences[:2], strict=True):
        assert len(part) / 16000 - 1.0 < seconds < len(part) / 16000 + 1.0
    for segment, start in zip(body["segments"], starts, strict=True):  # placed where the speech was
        assert abs(segment["start"] - start) < 0.5, (segment, start)
    assert sum(heard) < body["duration"] / 2


@pytest.mark.slow  # the real tiny.en model on 20 minutes of audio
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


def test_short_json_clip_of_silence_never_reaches_the_model(vad_server: Server) -> None:
    with vad_server.http() as http:
        silence = wav_bytes(np.zeros(16000 * 8, np.float32))
        body = http.post("/v1/audio/transcriptions", files={"file": ("x.wav", silence)})
    assert body.json()["text"] == ""
    assert vad_server.backend.calls == [] and vad_server.worker.counters["completed"] == 0


def test_short_json_clip_of_noise_answers_empty_text(vad_server: Server) -> None:
    """Dictation path: the model may start on it while the VAD looks, but its words never come back
    (the fake says "speech 8.0 s" to whatever it is given)."""
    noise = np.random.default_rng(3).normal(0, 0.1, 16000 * 8).astype(np.float32)
    with vad_server.http() as http:
        for fmt in ("json", "text"):
            resp = http.post("/v1/audio/transcriptions", files={"file": ("x.wav", wav_bytes(noise))},
                             data={"response_format": fmt})
            assert resp.status_code == 200
            assert (resp.json()["text"] if fmt == "json" else resp.text) == ""
        streamed = http.post("/v1/audio/transcriptions", files={"file": ("x.wav", wav_bytes(noise))},
                             data={"stream": "true"})
    assert "speech" not in streamed.text and '"text": ""' in streamed.text  # a stream never sees such a job
    assert vad_server.worker.queue_depth == 0  # a withdrawn job leaves the queue count right


def test_short_json_clip_of_speech_goes_to_the_model_whole(vad_server: Server, spoken_sentences) -> None:
    clip = wav_bytes(spoken_sentences[0])
    with vad_server.http() as http:
        text = http.post("/v1/audio/transcriptions", files={"file": ("x.wav", clip)}).json()["text"]
    assert text == say(len(spoken_sentences[0]) / 16000)  # the whole clip, in one piece
    assert len(vad_server.backend.calls) == 1


def test_withdrawn_job_never_runs(fake_serve) -> None:  # noqa: ANN001
    import threading

    gate = threading.Event()
    server = fake_serve(FakeBackend(gate=gate))
    busy = threading.Thread(target=lambda: server.http().post("/v1/audio/transcriptions",
                                                              files={"file": ("l.wav", wav_bytes(tone(5.0)))}))
    busy.start()
    wait_until(lambda: server.worker.running, timeout=30, what="the first job to reach the model")
    ran: list[bool] = []
    future = server.worker.submit(lambda: ran.append(True))
    assert server.worker.queue_depth == 1
    assert server.worker.withdraw(future) is True
    assert server.worker.queue_depth == 0
    gate.set()
    busy.join(timeout=30)
    assert not busy.is_alive()
    assert ran == [] and future.cancelled()


class _Bilingual(FakeBackend):
    """A multilingual fake: ``language_of`` says "zh" for stretches as long as ``zh_seconds`` (±0.5 s)."""

    def __init__(self, zh_seconds: float) -> None:
        super().__init__(segments_audio=True)
        self.zh_seconds = zh_seconds
        self.asked: list[float] = []

    def language_of(self, audio: np.ndarray, candidates: tuple[str, ...] = ()) -> tuple[str, float]:
        self.asked.append(len(audio) / 16000)
        seconds = len(audio) / 16000
        if seconds < 0.6:
            return "de", 0.3  # unsure: goes with its neighbour
        return ("zh", 0.9) if abs(seconds - self.zh_seconds) < 0.5 else ("en", 0.8)


def test_a_chunk_is_decoded_a_language_at_a_time(spoken_sentences) -> None:  # noqa: ANN001
    """Three sentences 1 s apart fit one chunk; the middle one is another language: the chunk is decoded in
    three parts, each in its language, timed where its speech is, and ``languages`` lists both in order."""
    from rapl.core.pipeline import run
    from rapl.transcript.transcription import Options

    parts = [spoken_sentences[0], spoken_sentences[2][:int(1.6 * 16000)], spoken_sentences[1]]
    recording, starts = build_recording(parts, [0.5, 1.0, 1.0])
    segmenter = _segmenter()
    (chunk,) = segmenter.plan(recording)
    assert len(chunk.stretches()) == 3
    backend = _Bilingual(zh_seconds=(chunk.stretches()[1][1] - chunk.stretches()[1][0]) / 16000)
    backend.load()
    result = run(backend, recording, Options(), [chunk], progress=False)
    assert [call.options.language for call in backend.calls] == ["en", "zh", "en"]
    assert len(backend.asked) == 3 and result.languages == ("en", "zh")
    for segment, start, part in zip(result.segments, starts, parts, strict=True):
        assert start - 0.5 <= segment.start and segment.end <= start + len(part) / 16000 + 0.5, (segment, start)
    backend.calls.clear()
    run(backend, recording, Options(language="en"), [chunk], progress=False)  # a language given: one part
    assert [call.options.language for call in backend.calls] == ["en"] and len(backend.asked) == 3
    (single,) = segmenter.plan(build_recording(parts[:1], [0.5])[0])
    backend.calls.clear()
    run(backend, build_recording(parts[:1], [0.5])[0], Options(), [single], progress=False)
    assert len(backend.asked) == 3 and [call.options.language for call in backend.calls] == [None]


def test_a_part_of_a_packed_chunk_keeps_its_pieces() -> None:
    from rapl.audio.vad import Chunk

    chunk = Chunk(0, 160000, ((0, 32000), (48000, 80000), (120000, 160000)),
                  ((0, 30000), (50000, 80000), (120000, 160000)))
    assert chunk.stretches() == [(0, 30000), (50000, 80000), (120000, 160000)]  # the VAD's spans
    later = chunk.part(50000, 160000)
    assert later == Chunk(50000, 160000, ((50000, 80000), (120000, 160000)), ((50000, 80000), (120000, 160000)))
    assert later.to_recording(1.875) == 120000 / 16000 - 50000 / 16000  # the seam: where the last piece starts
    assert chunk.part(0, 30000) == Chunk(0, 30000, (), ((0, 30000),))
    assert Chunk(0, 16000).stretches() == [(0, 16000)]


def test_a_stretch_of_an_unsure_language_goes_with_its_neighbours(spoken_sentences) -> None:  # noqa: ANN001
    from rapl.core.pipeline import by_language
    from rapl.transcript.transcription import Options

    recording, _ = build_recording([spoken_sentences[0], spoken_sentences[1], spoken_sentences[2]], [0.5, 1.0, 1.0])
    (chunk,) = _segmenter().plan(recording)
    backend = _Bilingual(zh_seconds=-10)
    answers = iter([("de", 0.3), ("en", 0.9), ("zh", 0.45)])  # unsure, sure, unsure
    backend.language_of = lambda audio, candidates=(): next(answers)  # type: ignore[method-assign]
    assert by_language(backend, recording, chunk, Options()) == [(chunk, "en")]  # one part, in English
    backend.language_of = lambda audio, candidates=(): ("fr", 0.2)  # type: ignore[method-assign]
    assert by_language(backend, recording, chunk, Options()) == [(chunk, None)]  # none sure: the model decides


class _Hasty:
    """Whisper at its worst: it gives words for the first sentence of what it is sent (up to its first
    pause of half a second), then says end-of-text."""

    capabilities = FakeBackend(segments_audio=True).capabilities

    def __init__(self) -> None:
        self.calls: list[tuple[float, tuple[int, ...]]] = []  # (seconds sent, context tokens)

    def transcribe(self, audio: np.ndarray, options):  # noqa: ANN001, ANN201
        from rapl.transcript.transcription import Segment

        self.calls.append((len(audio) / 16000, options.context))
        n = len(self.calls)
        loud = np.abs(audio[:len(audio) // 160 * 160]).reshape(-1, 160).max(axis=1) > 0.01  # 10 ms frames
        first = int(np.argmax(loud))
        quiet = np.flatnonzero(np.convolve(~loud[first:], np.ones(50), "valid") == 50)  # 0.5 s of quiet
        end = (first + (int(quiet[0]) if len(quiet) else len(loud) - first)) / 100
        yield Segment(0.0, end, f"part {n}", tokens=(100 + n, 200 + n))  # from the start, pause and all


def test_a_chunk_whose_end_got_no_words_is_decoded_again_from_there(spoken_sentences) -> None:  # noqa: ANN001
    """Three sentences in one chunk, a model that stops after 2 s: the long-form plan decodes the unheard rest
    again (each time going on from the tokens before), so every sentence gets words; dictation does not."""
    from rapl.core.pipeline import MAX_RETRIES, run
    from rapl.transcript.transcription import Options

    recording, starts = build_recording(spoken_sentences[:3], [1.0, 1.0, 1.0])
    (chunk,) = _segmenter().plan(recording)
    assert len(chunk.stretches()) == 3 and MAX_RETRIES >= 2
    backend = _Hasty()
    result = run(backend, recording, Options(), [chunk], progress=False, retry=True)
    assert len(backend.calls) == 3 and [c[1] for c in backend.calls] == [(), (101, 201), (101, 201, 102, 202)]
    for segment, (start, end) in zip(result.segments, chunk.stretches(), strict=True):
        assert start / 16000 <= segment.start < end / 16000  # each sentence heard, its segment on its speech
    assert result.segments[0].start == pytest.approx(chunk.stretches()[0][0] / 16000)  # moved out of the pause
    once = _Hasty()
    assert len(run(once, recording, Options(), [chunk], progress=False).segments) == 1 and len(once.calls) == 1


def test_segment_ends_move_out_of_pauses_and_no_context_crosses_a_language() -> None:
    from rapl.core.pipeline import _context, _snapped
    from rapl.transcript.transcription import Segment, Word

    speech = ((16000, 48000), (64000, 96000))  # 1-3 s and 4-6 s
    segment = Segment(0.5, 3.8, "a b", words=(Word("a", 0.5, 1.5), Word("b", 2.0, 3.8)))
    snapped = _snapped(segment, speech)
    assert (snapped.start, snapped.end) == (1.0, 3.0) and snapped.words[0].start == 1.0 and snapped.words[1].end == 3.0
    assert _snapped(Segment(3.1, 3.9, "uh"), speech) == Segment(3.1, 3.9, "uh")  # over no speech: kept
    assert _snapped(Segment(2.0, 4.1, "x"), speech).end == 3.0  # 0.1 s into the next stretch does not count
    said = [Segment(0, 1, "a", tokens=(1,), language="en"), Segment(1, 2, "b", tokens=(2,), language="en")]
    assert _context(said, "en") == (1, 2) and _context(said, None) == (1, 2)
    assert _context(said, "de") == () and _context([], "en") == ()
