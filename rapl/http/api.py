"""The OpenAI-compatible HTTP API: transcriptions, translations, models, health."""

from __future__ import annotations

import io
import json
import logging
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from typing import IO, Any

import numpy as np
from flask import Blueprint, Response, current_app, g, jsonify, request

from .. import audio
from ..audio.recording import MemoryBudget, Recording, duration
from ..core import params
from ..core.models import ModelEntry, Models, Slot
from ..core.service import Job, Transcriber
from ..core.speakers import MAX_REFERENCE_SECONDS, MIN_REFERENCE_SECONDS
from ..core.worker import ModelWorker
from ..errors import APIError, Overloaded, RaplError, Unavailable, as_api, status_of
from ..transcript import formats
from ..transcript.text import join_text
from ..transcript.transcription import Segment, Transcription
from . import openapi
from .headers import request_id

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)

# Dictation apps differ on whether their base URL ends in /v1, so serve all three.
PREFIXES = ("/v1", "", "/v1/v1")
# OpenAI's speech-to-text model names: requests may use any of them (or any name at all).
# The audio models of openai-python's AudioModel, then the Realtime transcription ones.
OPENAI_MODELS = ("whisper-1", "gpt-transcribe", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
                 "gpt-4o-mini-transcribe-2025-12-15", "gpt-4o-transcribe-diarize", "gpt-live-transcribe",
                 "gpt-realtime-whisper")
DOWNLOAD_ANSWER_SECONDS = 1.0  # a download's POST waits this long, so a cached or unreachable model answers at once
MODEL_DOWNLOAD_RETRY = 60  # Retry-After of a download that failed
# A body this large is trimmed from the heap once the model is idle (rapl.core.heap keeps freed memory).
TRIM_BODY_BYTES = 32 * 2**20


def worker() -> ModelWorker:
    """The app's model worker."""
    return current_app.extensions["rapl"]


def transcriber() -> Transcriber:
    """The app's transcription service."""
    return current_app.extensions["rapl.service"]


def models() -> Models:
    """The app's models (one, or those MODELS_FILE lists)."""
    return current_app.extensions["rapl.models"]


def decode_budget() -> MemoryBudget:
    """The app's budget for decoded audio, shared by every request (DECODE_MEMORY_MB)."""
    return current_app.extensions["rapl.decode_budget"]


def _upload() -> IO[bytes]:
    if not (request.mimetype or "").startswith("multipart/form-data"):
        raise APIError("Send the audio as multipart/form-data with a 'file' field.", 400,
                       param="file", code="invalid_content_type")
    upload = request.files.get("file")
    if upload is None:
        raise APIError("The 'file' field is required: attach the audio file to transcribe.", 400,
                       param="file", code="missing_file")
    return upload.stream


def _handle(task: str) -> Response:
    try:
        return _transcribe(task)
    finally:
        if (request.content_length or 0) > TRIM_BODY_BYTES:  # its memory goes back once the model is idle
            worker().trim_when_idle()


def _transcribe(task: str) -> Response:
    started = time.perf_counter()
    stats: dict[str, Any] = {"id": request_id(), "task": task}
    g.rapl_stats = stats
    req = params.parse(request.form, task)
    slot = models().pick(req.model)  # the model the request names (else the default), room made for it
    work, service = slot.worker, slot.service
    req = _with_defaults(req, slot.entry)
    settings = current_app.config["RAPL_SETTINGS"]
    upload = _upload()
    work.check_room()  # a full queue answers 429 before the upload is decoded
    known = _known_speakers(req, settings.MAX_AUDIO_SECONDS)
    audio.release(request.environ.get("wsgi.input"))  # the form is parsed: the raw body is not needed
    # paged (silence is not stored) and charged to the server's budget until the request is done with it
    pcm = audio.decode_recording(upload, settings.MAX_AUDIO_SECONDS, decode_budget())
    handed_over = False  # to a stream, which releases the audio when its transcription ends
    try:
        audio.release(upload)  # decoded: a waiting request holds its audio, not its upload too
        stats.update(audio=duration(pcm), decode=time.perf_counter() - started)
        work.ensure_loaded()  # requests that arrive while the model loads wait for it
        req = service.prepare(req)
        connected = request.environ.get("waitress.client_disconnected")
        job = Job(pcm, req, label=stats["id"], known=known, stats=stats,
                  is_connected=(lambda: not connected()) if callable(connected) else None)
        headers = {"x-rapl-model": slot.entry.id}
        if req.stream:
            stats["stream"] = True
            response = _streaming(lambda on_segment: _released_when_done(service.start(job, on_segment), pcm),
                                  req, headers, stats)
            handed_over = True
            return response
        result = service.start(job).result()
    finally:
        if not handed_over:
            pcm.release()
    headers["openai-processing-ms"] = str(round((time.perf_counter() - started) * 1000))
    headers["Server-Timing"] = server_timing(stats)
    return _respond(result, req, headers)


def _with_defaults(req: params.AudioRequest, entry: ModelEntry) -> params.AudioRequest:
    """``req`` with its model's defaults (MODELS_FILE: language, prompt) where the request left them out."""
    options = req.options
    if entry.language and options.language is None and not options.candidates and options.task == "transcribe":
        options = replace(options, language=entry.language)
    if entry.prompt and options.prompt is None:
        options = replace(options, prompt=entry.prompt)
    return req if options is req.options else replace(req, options=options)


def _released_when_done(future: Future[Transcription], recording: Recording) -> Future[Transcription]:
    """``future``, which gives ``recording``'s charge back to the budget when its transcription ends."""
    future.add_done_callback(lambda _: recording.release())
    return future


def _known_speakers(req: params.AudioRequest, max_seconds: float) -> dict[str, np.ndarray]:
    """The known speakers' reference clips, decoded: 2 to 10 s of audio each (400 otherwise)."""
    known = {}
    for name, data in req.known_speakers:
        try:  # charged to the server's budget while it is decoded, like an upload
            clip = audio.decode_recording(io.BytesIO(data), min(max_seconds, 60), decode_budget())
        except Overloaded:
            raise
        except RaplError as exc:
            raise APIError(f"The reference clip of {name!r} could not be used: {exc.message}", 400,
                           param="known_speaker_references", code="invalid_value") from None
        clip.release()  # copied below: at most 10 s, 640 KB
        seconds = duration(clip)
        if not MIN_REFERENCE_SECONDS <= seconds <= MAX_REFERENCE_SECONDS:
            raise APIError(f"The reference clip of {name!r} is {seconds:.1f} s long: give {MIN_REFERENCE_SECONDS:g} "
                           f"to {MAX_REFERENCE_SECONDS:g} s of their voice.", 400,
                           param="known_speaker_references", code="invalid_value")
        known[name] = clip[0:len(clip)]
    return known


def server_timing(stats: dict[str, Any]) -> str:
    """The request's stages as a Server-Timing header (milliseconds): decode, VAD plan, queue wait, model."""
    stages = (("decode", "decode"), ("vad", "vad"), ("wait", "wait"), ("model", "inference"),
              ("speakers", "speakers"))
    return ", ".join(f"{name};dur={stats[key] * 1000:.1f}" for name, key in stages if key in stats)


@bp.after_request
def _log_request(response: Response) -> Response:
    """One structured line per transcription request (streams log theirs when they end)."""
    stats = g.get("rapl_stats")
    if stats is not None and not stats.get("stream"):
        stats["total"] = time.perf_counter() - g.rapl_started
        log_request(stats, response.status_code)
    return response


@bp.before_request
def _start_clock() -> None:
    g.rapl_started = time.perf_counter()


def log_request(stats: dict[str, Any], status: int) -> None:
    """Log ``stats`` as one key=value line: id, audio seconds, decode, queue wait, inference, RTF, status."""
    audio_s = stats.get("audio", 0.0)
    inference = stats.get("inference", 0.0)
    rtf = inference / audio_s if audio_s else 0.0
    log.info("request id=%s task=%s status=%d audio_s=%.2f decode_s=%.3f wait_s=%.3f inference_s=%.3f "
             "rtf=%.3f total_s=%.3f", stats.get("id"), stats.get("task"), status, audio_s, stats.get("decode", 0.0),
             stats.get("wait", 0.0), inference, rtf, stats.get("total", 0.0))


def _respond(result: Transcription, req: params.AudioRequest, headers: dict[str, str]) -> Response:
    body = formats.render(result, req.response_format, req.words, req.segments, req.logprobs, req.model,
                          req.options.prompt)
    if isinstance(body, dict):
        resp = jsonify(body)
    else:
        resp = Response(body, content_type=formats.CONTENT_TYPES[req.response_format])
    resp.headers.update(headers)
    return resp


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def _streaming(start: Callable[[Callable[[Segment], None]], Future[Transcription]],
               req: params.AudioRequest, headers: dict[str, str], stats: dict[str, Any]) -> Response:
    """Server-Sent Events as OpenAI sends them: text deltas per segment, then the whole text.

    The headers go out at once (an SSE comment), before the model has said anything. With
    diarized_json each delta names its segment, and once the voices are told apart (which needs the
    whole recording) a ``transcript.text.segment`` event per segment carries its speaker.
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    future = start(lambda segment: events.put(("segment", segment)))
    future.add_done_callback(lambda f: events.put(("done", f)))
    started = time.perf_counter()

    def generate() -> Iterator[bytes]:
        try:
            yield b": transcription started\n\n"
            yield from events_of()
        finally:
            stats["total"] = time.perf_counter() - started + stats.get("decode", 0.0)
            if not future.done():
                status = 499  # the client went away mid-stream
            else:
                status = status_of(future.exception())
            log_request(stats, status)

    def events_of() -> Iterator[bytes]:
        sent, count = "", 0
        while True:
            kind, item = events.get()
            if kind == "segment":  # joined exactly as the final text is joined
                joined = join_text([sent, item.text])
                delta, sent = joined[len(sent):], joined
                if delta:
                    event = {"type": "transcript.text.delta", "delta": delta}
                    if req.logprobs:
                        event["logprobs"] = formats.token_logprobs(item.logprobs)
                    if req.diarized:
                        event["segment_id"] = formats.segment_id(count)
                    count += 1
                    yield _sse(event)
                continue
            error = item.exception()
            if error is None:
                result: Transcription = item.result()
                if req.diarized:
                    for index, segment in enumerate(formats.timed_segments(result)):
                        yield _sse(formats.diarized_segment(index, segment))
                done = {"type": "transcript.text.done", "text": result.text}
                if req.logprobs:
                    done["logprobs"] = formats.token_logprobs(result.logprobs)
                done["languages"] = formats.languages(result)
                yield _sse({**done, "usage": formats.token_usage(result, req.options.prompt)})
            else:
                if isinstance(error, RaplError):
                    api_error = as_api(error)
                elif isinstance(error, APIError):
                    api_error = error
                else:
                    log.error("streamed transcription failed", exc_info=error)
                    api_error = APIError(f"Internal error: {type(error).__name__}. See the server log.", 500,
                                         code="internal_error")
                yield _sse({"type": "error", **api_error.body()})
            return

    headers = {**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(generate(), content_type="text/event-stream", headers=headers)


def transcriptions() -> Response:
    """POST /v1/audio/transcriptions."""
    return _handle("transcribe")


def translations() -> Response:
    """POST /v1/audio/translations: speech to English text."""
    return _handle("translate")


def _model_card(model_id: str, slot: Slot) -> dict[str, Any]:
    work = slot.worker
    status = work.state if work.loaded is not None else "unloaded"  # not loaded yet: on first use
    card = {"id": model_id, "object": "model", "created": int(current_app.config["RAPL_STARTED"]),
            "owned_by": "rapl", "backend": work.backend.name, "status": status, "loaded": status == "ready"}
    if model_id != slot.entry.id:
        card["root"] = slot.entry.id  # an alias, or an OpenAI name the default model answers to
    pool = models()
    if status == "ready" and work.memory_bytes is not None:
        card["memory_mb"] = round(work.memory_bytes / 1e6, 1)
    pull = pool.pulls.get(slot.entry.id)
    if pull is not None:
        card["download"] = pull.progress()
    return card


def _named() -> dict[str, Slot]:
    """Every name this server answers to in /v1/models: each model's id and aliases, then the OpenAI names
    the default model answers (all names answer when STRICT_MODELS is off; only these are listed)."""
    pool = models()
    named = dict(pool.names())
    if not pool.strict:
        named.update({name: pool.default for name in OPENAI_MODELS if name not in named})
    return named


def list_models() -> Response:
    """GET /v1/models: every model and alias, whether each is loaded, and the OpenAI names."""
    return jsonify({"object": "list", "data": [_model_card(name, slot) for name, slot in _named().items()]})


def _slot(model_id: str) -> Slot:
    named = _named()
    if model_id not in named:
        raise APIError(f"The model '{model_id}' does not exist here. This server answers to "
                       f"{', '.join(named)}.", 404, param="model", code="model_not_found")
    return named[model_id]


def get_model(model_id: str) -> Response:
    """GET /v1/models/<id>: one model, alias or OpenAI name this server answers to."""
    return jsonify(_model_card(model_id, _slot(model_id)))


def load_model(model_id: str) -> Response:
    """POST /v1/models/<id>/load: load a model now (room made as for a request); 503 if it cannot load."""
    slot = _slot(model_id)
    models().use(slot)
    slot.worker.ensure_loaded()
    return jsonify(_model_card(model_id, slot))


def download_model(model_id: str) -> Response:
    """POST /v1/models/<id>/download: fetch a configured hub model into its cache ahead of first use, with
    the backend's hub library, beside the model thread. 200 once there (at once when cached), 202 while
    it downloads (GET /v1/models/<id> shows ``download``: status and bytes so far), 503 when it cannot."""
    slot = _slot(model_id)
    pull = models().pull(slot)
    if pull.wait(DOWNLOAD_ANSWER_SECONDS) and pull.status == "failed":
        from ..core.worker import failure_message

        raise Unavailable(f"{failure_message(slot.worker.backend, pull.exception)} Detail: {pull.error}",
                          code="model_download_failed", retry_after=MODEL_DOWNLOAD_RETRY)
    card = _model_card(model_id, slot)
    return Response(json.dumps(card), status=200 if pull.status == "done" else 202, content_type="application/json")


def unload_model(model_id: str) -> Response:
    """DELETE /v1/models/<id>: unload a model after the jobs already queued for it; the next request reloads."""
    slot = _slot(model_id)
    slot.worker.unload_soon()
    return jsonify(_model_card(model_id, slot))


def health() -> Response:
    """GET /health: loading, ready, unloaded or failed, with backend, model and queue depth."""
    work = worker()
    if work.loaded is not None:
        work.retry_if_due()  # a failed load is tried again after its back-off, traffic or not
    body = work.health()
    pool = models()
    if pool.several:  # each model: its state, when it was last asked for, how often, how long it took to load
        body["models"] = pool.describe()
    live = current_app.extensions.get("rapl.realtime")
    if live is not None:
        body.update(live.health())
    # An idle-unloaded model is healthy: the next request reloads it (load balancers must send one).
    healthy = body["status"] in ("ready", "unloading", "unloaded")
    return Response(json.dumps(body), status=200 if healthy else 503,
                    content_type="application/json")


for _i, _prefix in enumerate(PREFIXES):
    bp.add_url_rule(f"{_prefix}/audio/transcriptions", f"transcriptions{_i}", transcriptions, methods=["POST"])
    bp.add_url_rule(f"{_prefix}/audio/translations", f"translations{_i}", translations, methods=["POST"])
    bp.add_url_rule(f"{_prefix}/models", f"models{_i}", list_models, methods=["GET"])
    bp.add_url_rule(f"{_prefix}/models/<path:model_id>/load", f"load{_i}", load_model, methods=["POST"])
    bp.add_url_rule(f"{_prefix}/models/<path:model_id>/download", f"download{_i}", download_model,
                    methods=["POST"])
    bp.add_url_rule(f"{_prefix}/models/<path:model_id>", f"model{_i}", get_model, methods=["GET"])
    bp.add_url_rule(f"{_prefix}/models/<path:model_id>", f"unload{_i}", unload_model, methods=["DELETE"])
bp.add_url_rule("/health", "health", health, methods=["GET"])
bp.add_url_rule("/openapi.json", "openapi", lambda: jsonify(openapi.spec(current_app.config["RAPL_VERSION"])),
                methods=["GET"])
