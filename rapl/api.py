"""The OpenAI-compatible HTTP API: transcriptions, translations, models, health."""

from __future__ import annotations

import json
import logging
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import IO, Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from . import audio, formats, openapi, params, pipeline, request_id
from .audio import Recording
from .backends import public_name
from .errors import APIError
from .metrics import metrics_of
from .text import join_text
from .transcription import Segment, Transcription
from .vad import Chunk
from .worker import ModelWorker

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)

# Dictation apps differ on whether their base URL ends in /v1, so serve all three.
PREFIXES = ("/v1", "", "/v1/v1")
# OpenAI's speech-to-text model names: requests may use any of them (or any name at all).
OPENAI_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
SILENT_PEAK = 1e-3  # -60 dBFS: a clip that never gets louder holds no speech


def worker() -> ModelWorker:
    """The app's model worker."""
    return current_app.extensions["rapl"]


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
    started = time.perf_counter()
    rid = request_id()
    stats: dict[str, Any] = {"id": rid, "task": task}
    g.rapl_stats = stats
    req = params.parse(request.form, task)
    work = worker()
    settings = current_app.config["RAPL_SETTINGS"]
    upload = _upload()
    work.check_room()  # a full queue answers 429 before the upload is decoded
    audio.release(request.environ.get("wsgi.input"))  # the form is parsed: the raw body is not needed
    pcm = audio.decode_recording(upload, settings.MAX_AUDIO_SECONDS)  # paged: silence is not stored
    audio.release(upload)  # decoded: a waiting request holds its audio, not its upload too
    stats.update(audio=audio.duration(pcm), decode=time.perf_counter() - started)
    work.ensure_loaded()  # requests that arrive while the model loads wait for it
    work.check(req.options)
    connected = request.environ.get("waitress.client_disconnected")
    is_connected = (lambda: not connected()) if callable(connected) else None
    metrics = metrics_of(current_app)
    queued = time.perf_counter()

    def job(chunks: list[Chunk], on_segment: Callable[[Segment], None] | None = None) -> Transcription:
        begun = time.perf_counter()
        stats["wait"] = begun - queued
        result = pipeline.run(work.backend, pcm, req.options, chunks, label=rid,
                              progress=settings.PROGRESS, on_segment=on_segment)
        stats["inference"] = time.perf_counter() - begun
        metrics.audio_processed(result.duration)
        return result

    headers = {"x-rapl-model": public_name(work.backend.model)}
    if req.stream:
        stats["stream"] = True
        return _streaming(work, lambda on_segment: _schedule(work, pcm, req, job, is_connected, on_segment),
                          req, headers, stats)
    result = _schedule(work, pcm, req, job, is_connected).result()
    headers["openai-processing-ms"] = str(round((time.perf_counter() - started) * 1000))
    headers["Server-Timing"] = server_timing(stats)
    return _respond(result, req, headers)


def server_timing(stats: dict[str, Any]) -> str:
    """The request's stages as a Server-Timing header (milliseconds): decode, VAD plan, queue wait, model."""
    stages = (("decode", "decode"), ("vad", "vad"), ("wait", "wait"), ("model", "inference"))
    return ", ".join(f"{name};dur={stats[key] * 1000:.1f}" for name, key in stages if key in stats)


def _finished(result: Transcription) -> Future[Transcription]:
    future: Future[Transcription] = Future()
    future.set_result(result)
    return future


def _schedule(work: ModelWorker, pcm: Recording, req: params.AudioRequest, job: Callable[..., Transcription],
              is_connected: Callable[[], bool] | None,
              on_segment: Callable[[Segment], None] | None = None) -> Future[Transcription]:
    """Plan and queue the transcription: the same plan, so the same words, streamed or not.

    A json/text clip that fits one chunk (dictation) goes to the model whole. When it is not
    streamed, the model starts on it while the VAD looks for speech in this thread, so the VAD
    adds no latency; no speech: the job is withdrawn if it has not started, and the answer is
    empty text either way. Digital silence never reaches the model. Longer audio is cut at
    pauses; its first chunk is short, so a stream's first words come early.
    """
    segmenter = work.segmenter.tuned(req.options.vad)
    if req.response_format in ("json", "text") and segmenter.enabled and len(pcm) <= segmenter.max_chunk:
        if pcm.peak < SILENT_PEAK:
            return _finished(job([]))
        if on_segment is not None and not segmenter.speech(pcm):  # a stream must not see a withdrawn job's words
            return _finished(job([]))
        future = work.submit(lambda: job([Chunk(0, len(pcm))], on_segment), is_connected)
        if on_segment is not None or segmenter.speech(pcm):
            return future
        work.withdraw(future)
        return _finished(job([]))
    planned = time.perf_counter()
    chunks = segmenter.plan(pcm, merge=work.capabilities.segments_audio)
    g.rapl_stats["vad"] = time.perf_counter() - planned
    if not chunks:
        return _finished(job([]))
    return work.submit(lambda: job(chunks, on_segment), is_connected)


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
    body = formats.render(result, req.response_format, req.words, req.segments, req.logprobs)
    if isinstance(body, dict):
        resp = jsonify(body)
    else:
        resp = Response(body, content_type=formats.CONTENT_TYPES[req.response_format])
    resp.headers.update(headers)
    return resp


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def _streaming(work: ModelWorker, start: Callable[[Callable[[Segment], None]], Future[Transcription]],
               req: params.AudioRequest, headers: dict[str, str], stats: dict[str, Any]) -> Response:
    """Server-Sent Events as OpenAI sends them: text deltas per segment, then the whole text.

    The headers go out at once (an SSE comment), before the model has said anything.
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
                error = future.exception()
                status = error.status if isinstance(error, APIError) else 500 if error else 200
            log_request(stats, status)

    def events_of() -> Iterator[bytes]:
        sent = ""
        while True:
            kind, item = events.get()
            if kind == "segment":  # joined exactly as the final text is joined
                joined = join_text([sent, item.text])
                delta, sent = joined[len(sent):], joined
                if delta:
                    event = {"type": "transcript.text.delta", "delta": delta}
                    if req.logprobs:
                        event["logprobs"] = formats.token_logprobs(item.logprobs)
                    yield _sse(event)
                continue
            error = item.exception()
            if error is None:
                result: Transcription = item.result()
                done = {"type": "transcript.text.done", "text": result.text}
                if req.logprobs:
                    done["logprobs"] = formats.token_logprobs(result.logprobs)
                yield _sse({**done, "usage": formats.token_usage(result, req.options.prompt)})
            else:
                api_error = error if isinstance(error, APIError) else APIError(
                    f"Internal error: {type(error).__name__}. See the server log.", 500,
                    code="internal_error")
                if not isinstance(error, APIError):
                    log.error("streamed transcription failed", exc_info=error)
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


def _model_card(model_id: str, work: ModelWorker) -> dict[str, Any]:
    loaded = public_name(work.backend.model)
    card = {"id": model_id, "object": "model", "created": int(current_app.config["RAPL_STARTED"]),
            "owned_by": "rapl", "backend": work.backend.name, "status": work.state,
            "loaded": work.state == "ready"}
    if model_id != loaded:
        card["root"] = loaded  # an OpenAI name this server answers to with its one model
    return card


def _model_ids(work: ModelWorker) -> list[str]:
    loaded = public_name(work.backend.model)
    return [loaded, *(name for name in OPENAI_MODELS if name != loaded)]


def list_models() -> Response:
    """GET /v1/models: the loaded model, then the OpenAI names it answers to (all served by it)."""
    work = worker()
    return jsonify({"object": "list", "data": [_model_card(i, work) for i in _model_ids(work)]})


def get_model(model_id: str) -> Response:
    """GET /v1/models/<id>: the loaded model or one of the OpenAI names it answers to."""
    work = worker()
    if model_id not in _model_ids(work):
        raise APIError(f"The model '{model_id}' does not exist here. This server answers to "
                       f"{', '.join(_model_ids(work))} (any name in a transcription request selects "
                       "the loaded model).", 404, param="model", code="model_not_found")
    return jsonify(_model_card(model_id, work))


def health() -> Response:
    """GET /health: loading, ready, unloaded or failed, with backend, model and queue depth."""
    body = worker().health()
    # An idle-unloaded model is healthy: the next request reloads it (load balancers must send one).
    healthy = body["status"] in ("ready", "unloading", "unloaded")
    return Response(json.dumps(body), status=200 if healthy else 503,
                    content_type="application/json")


for _i, _prefix in enumerate(PREFIXES):
    bp.add_url_rule(f"{_prefix}/audio/transcriptions", f"transcriptions{_i}", transcriptions, methods=["POST"])
    bp.add_url_rule(f"{_prefix}/audio/translations", f"translations{_i}", translations, methods=["POST"])
    bp.add_url_rule(f"{_prefix}/models", f"models{_i}", list_models, methods=["GET"])
    bp.add_url_rule(f"{_prefix}/models/<path:model_id>", f"model{_i}", get_model, methods=["GET"])
bp.add_url_rule("/health", "health", health, methods=["GET"])
bp.add_url_rule("/openapi.json", "openapi", lambda: jsonify(openapi.spec()), methods=["GET"])
