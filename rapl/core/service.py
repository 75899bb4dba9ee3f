"""The transcription service: plans, schedules and finishes one request's transcription.

The HTTP front end (rapl.http.api) reads the request and writes the answer; this module does what
lies between, for every front end alike: the vocabulary and capability checks, the plan (the
dictation overlap, VAD chunks, the silent-clip shortcut), the job on the model thread, and
what follows the model (replacement rules, speaker labels), with each stage's time.

    api._handle -> Transcriber.start -> ModelWorker.submit -> pipeline.run -> backend.transcribe
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..audio.recording import SILENT_PEAK, Recording
from ..audio.vad import RATE, Chunk
from ..errors import Invalid, Unsupported
from ..transcript.text import join_text
from ..transcript.transcription import Segment, Transcription
from .params import AudioRequest
from .pipeline import run
from .speakers import SpeakerError
from .vocabulary import Vocabulary
from .worker import ModelWorker

log = logging.getLogger(__name__)
OnSegment = Callable[[Segment], None]


@dataclass
class Job:
    """One request's transcription: its audio, what was asked, and the times of its stages."""

    audio: Recording
    request: AudioRequest
    label: str = "transcribe"
    known: dict[str, np.ndarray] = field(default_factory=dict)  # known speakers' decoded reference clips
    is_connected: Callable[[], bool] | None = None
    stats: dict[str, Any] = field(default_factory=dict)  # decode, vad, wait, inference, speakers (seconds)


class Transcriber:
    """Runs jobs on the app's model worker; the app builds one at start-up."""

    def __init__(self, worker: ModelWorker, vocabulary: Vocabulary, diarizer: Any = None,
                 progress: bool = True, on_audio: Callable[[float], None] | None = None) -> None:
        self.worker = worker
        self.vocabulary = vocabulary
        self.diarizer = diarizer  # rapl.core.speakers.Diarizer, or None when speaker labels cannot run here
        self.progress = progress
        self.on_audio = on_audio  # told the seconds of audio of each finished transcription (metrics)

    def prepare(self, request: AudioRequest) -> AudioRequest:
        """The request with the server's vocabulary added, checked against the loaded model (400s)."""
        options = request.options
        if self.vocabulary.terms and self.worker.capabilities.can_bias:
            options = replace(options, keywords=self.vocabulary.keywords(options.keywords))
        self.worker.check(options)
        if request.diarized and self.diarizer is None:
            raise Unsupported("Speaker labels (diarized_json) are not installed on this server: pip install "
                              "webrtcvad-wheels librosa && pip install --no-deps resemblyzer (see README).",
                              param="response_format", code="unsupported_value")
        if request.diarized and self.worker.capabilities.can_time_words:  # segments are cut between words at turns
            options = replace(options, word_timestamps=True)
        return replace(request, options=options)

    def start(self, job: Job, on_segment: OnSegment | None = None) -> Future[Transcription]:
        """Plan and queue ``job``: the same plan, so the same words, streamed or not.

        A json/text clip that fits one chunk (dictation) goes to the model whole. When it is not
        streamed, the model starts on it while the VAD looks for speech in this thread, so the VAD
        adds no latency; no speech: the job is withdrawn if it has not started, and the answer is
        empty text either way. Digital silence never reaches the model. Longer audio is cut at
        pauses (rapl.audio.vad: for Whisper, pauses over 2 s are shortened inside a chunk). For Whisper
        every format gives a clip of one chunk to the model whole, so they all give the same words;
        a multilingual model asked for no language waits for the VAD in every format, since its
        stretches of speech may be in different languages (rapl.core.pipeline.by_language).
        """
        pcm, request = job.audio, job.request
        segmenter = self.worker.segmenter.tuned(request.options.vad)
        merge = self.worker.capabilities.segments_audio
        short = segmenter.enabled and len(pcm) <= segmenter.max_chunk
        if request.response_format in ("json", "text") and short and not self._tells_languages(request):
            if pcm.peak < SILENT_PEAK:
                return _finished(self._run(job, []))
            if on_segment is not None and not segmenter.heard(pcm):  # a stream must not see a withdrawn job
                return _finished(self._run(job, []))
            future = self._submit(job, [Chunk(0, len(pcm))], on_segment)
            if on_segment is not None or segmenter.heard(pcm):
                return future
            self.worker.withdraw(future)
            return _finished(self._run(job, []))
        planned = time.perf_counter()
        chunks = segmenter.plan(pcm, merge=merge)
        job.stats["vad"] = time.perf_counter() - planned
        if not chunks:
            return _finished(self._run(job, []))
        if short and (merge or self.worker.capabilities.can_time_words):
            # one chunk: the whole clip, as the dictation path gives it (a model that gives one segment
            # per chunk has it cut at the pauses by its word times: rapl.core.pipeline.run)
            chunks = [Chunk(0, len(pcm), (), tuple(span for c in chunks for span in c.speech))]
        return self._submit(job, chunks, on_segment)

    def _tells_languages(self, request: AudioRequest) -> bool:
        """Whether the model will be asked the language of each stretch of speech (no language given,
        a multilingual model whose backend can tell it: rapl.core.pipeline.by_language)."""
        caps = self.worker.capabilities
        return (request.options.language is None and caps.tells_languages
                and (caps.languages is None or len(caps.languages) > 1))

    def partial(self, key: Any, pieces: list[np.ndarray], request: AudioRequest) -> Future[list[str]]:
        """A live turn's audio so far (one or more pieces), decoded whole in the model thread's
        low-priority lane (rapl.core.worker), as texts with the replacement rules applied."""
        rules = self.vocabulary.replacements
        options = replace(request.options, draft=True, word_timestamps=False, logprobs=False)

        def work() -> list[str]:
            texts = []
            for audio in pieces:
                segments = self.worker.backend.transcribe(audio, options)
                texts.append(join_text([rules.apply(s.text) if rules else s.text for s in segments]))
            return texts

        return self.worker.submit_partial(key, work)

    def _submit(self, job: Job, chunks: list[Chunk], on_segment: OnSegment | None) -> Future[Transcription]:
        queued = time.perf_counter()

        def work() -> Transcription:
            job.stats["wait"] = time.perf_counter() - queued
            return self._run(job, chunks, on_segment)

        return self.worker.submit(work, job.is_connected, seconds=len(job.audio) / RATE)

    def _run(self, job: Job, chunks: list[Chunk], on_segment: OnSegment | None = None) -> Transcription:
        """The model, then the replacement rules (on each segment as it comes) and the speaker labels."""
        begun = time.perf_counter()
        rules = self.vocabulary.replacements

        def fixed(segment: Segment) -> Segment:  # the text and its timed words alike
            if not rules:
                return segment
            return replace(segment, text=rules.apply(segment.text), words=rules.apply_words(segment.words))

        told = (lambda s: on_segment(fixed(s))) if on_segment is not None else None
        long = len(job.audio) > self.worker.segmenter.max_chunk  # the long-form plan: unheard ends decoded again
        pauses = not self.worker.capabilities.segments_audio and any(len(c.speech) > 1 for c in chunks)
        options = replace(job.request.options, word_timestamps=True) if pauses else job.request.options
        result = run(self.worker.backend, job.audio, options, chunks, label=job.label,
                     progress=self.progress, on_segment=told, retry=long, pauses=pauses)
        job.stats["inference"] = time.perf_counter() - begun
        segments = [fixed(s) for s in result.segments]
        if job.request.diarized and segments:
            segments = self._label(job, segments, chunks)
        if self.on_audio is not None:
            self.on_audio(result.duration)
        return Transcription.of(segments, result.duration, result.task, result.language)

    def _label(self, job: Job, segments: list[Segment], chunks: list[Chunk]) -> list[Segment]:
        started = time.perf_counter()
        audio = job.audio[0:len(job.audio)]
        spans = [(start / RATE, end / RATE) for c in chunks for start, end in (c.speech or c.spans)]
        try:
            segments, labels = self.diarizer.split(audio, segments, speech_spans=spans, known=job.known,
                                                   num_speakers=job.request.num_speakers)
        except SpeakerError as exc:  # a reference clip without a voice, say
            raise Invalid(f"{exc}.", param="known_speaker_references", code="invalid_value") from None
        job.stats["speakers"] = time.perf_counter() - started
        return [replace(s, extra={**s.extra, "speaker": label}) for s, label in zip(segments, labels, strict=True)]


def _finished(result: Transcription) -> Future[Transcription]:
    future: Future[Transcription] = Future()
    future.set_result(result)
    return future
