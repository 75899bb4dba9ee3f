"""The OpenAI-compatible HTTP API: transcriptions, translations, models, health."""

from __future__ import annotations

import json
import logging
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np
from flask import Blueprint, Response, current_app, g, jsonify, request

from . import audio, formats, languages, openapi, pipeline
from .errors import APIError
from .metrics import metrics_of
from .transcription import Options, Segment, Transcription, join_text
from .vad import Chunk
from .worker import ModelWorker

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)

# Dictation apps differ on whether their base URL ends in /v1, so serve all three.
PREFIXES = ("/v1", "", "/v1/v1")
GRANULARITIES = ("segment", "word")
STREAM_CHUNK_SECONDS = 10
SILENT_PEAK = 1e-3  # -60 dBFS: a clip that never gets louder holds no speech


def worker() -> ModelWorker:
    """The app's model worker."""
    return current_app.extensions["rapl"]


def _form(name: str) -> str | None:
    value = request.form.get(name)
    return value if value not in (None, "") else None


def _temperature() -> float | None:
    raw = _form("temperature")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise APIError(f"temperature must be a number between 0 and 1, not {raw!r}.", 400,
                       param="temperature", code="invalid_value")
    return value


def _response_format() -> str:
    value = (_form("response_format") or "json").strip().lower()
    if value not in formats.FORMATS:
        raise APIError(f"response_format must be one of {', '.join(formats.FORMATS)}, not {value!r}.",
                       400, param="response_format", code="invalid_value")
    return value


def _granularities(response_format: str) -> set[str]:
    values = request.form.getlist("timestamp_granularities[]") + request.form.getlist("timestamp_granularities")
    wanted = {v.strip().lower() for v in values if v.strip()}
    bad = wanted - set(GRANULARITIES)
    if bad:
        raise APIError(f"timestamp_granularities must be among segment, word, not {sorted(bad)[0]!r}.",
                       400, param="timestamp_granularities", code="invalid_value")
    if wanted and response_format != "verbose_json":
        raise APIError("timestamp_granularities needs response_format=verbose_json.", 400,
                       param="timestamp_granularities", code="invalid_value")
    return wanted


def _stream() -> bool:
    raw = (_form("stream") or "false").strip().lower()
    if raw not in ("true", "false", "1", "0"):
        raise APIError(f"stream must be true or false, not {raw!r}.", 400, param="stream",
                       code="invalid_value")
    return raw in ("true", "1")


def _upload() -> IO[bytes]:
    if not (request.mimetype or "").startswith("multipart/form-data"):
        raise APIError("Send the audio as multipart/form-data with a 'file' field.", 400,
                       param="file", code="invalid_content_type")
    upload = request.files.get("file")
    if upload is None:
        raise APIError("The 'file' field is required: attach the audio file to transcribe.", 400,
                       param="file", code="missing_file")
    return upload.stream


def _options(task: str, words: bool) -> Options:
    language = None if task == "translate" else languages.normalize(_form("language"))
    return Options(language=language, prompt=_form("prompt"), temperature=_temperature(),
                   word_timestamps=words, task=task)


def _handle(task: str) -> Response:
    started = time.perf_counter()
    request_id = uuid.uuid4().hex[:12]
    stats: dict[str, Any] = {"id": request_id, "task": task}
    g.rapl_stats = stats
    response_format = _response_format()
    words = "word" in _granularities(response_format)
    options = _options(task, words)
    stream = _stream()
    work = worker()
    settings = current_app.config["RAPL_SETTINGS"]
    pcm = audio.decode(_upload(), settings.MAX_AUDIO_SECONDS)
    stats.update(audio=audio.duration(pcm), decode=time.perf_counter() - started)
    work.loaded.result()  # requests that arrive while the model loads wait for it
    if work.state == "failed":
        raise work.unavailable()
    pipeline.check_options(work.backend, options)
    connected = request.environ.get("waitress.client_disconnected")
    is_connected = (lambda: not connected()) if callable(connected) else None
    metrics = metrics_of(current_app)
    queued = time.perf_counter()

    def job(chunks: list[Chunk], on_segment: Callable[[Segment], None] | None = None) -> Transcription:
        begun = time.perf_counter()
        stats["wait"] = begun - queued
        result = pipeline.run(work.backend, pcm, options, chunks, label=request_id,
                              progress=settings.PROGRESS, on_segment=on_segment)
        stats["inference"] = time.perf_counter() - begun
        metrics.audio_processed(result.duration)
        return result

    headers = {"x-rapl-model": work.backend.model, "x-request-id": request_id}
    if stream:
        stats["stream"] = True
        # A stream uses shorter chunks, so the first words go out soon after they were spoken.
        chunks = work.segmenter.plan(pcm, merge=work.backend.segments_audio, merge_seconds=STREAM_CHUNK_SECONDS)
        return _streaming(work, lambda on_segment: job(chunks, on_segment), headers, is_connected, stats)
    if response_format in ("json", "text") and work.segmenter.enabled and len(pcm) <= work.segmenter.max_chunk:
        result = _dictation(work, job, pcm, is_connected)
    else:
        chunks = work.segmenter.plan(pcm, merge=work.backend.segments_audio)
        result = work.submit(lambda: job(chunks), is_connected).result() if chunks else job([])
    headers["openai-processing-ms"] = str(round((time.perf_counter() - started) * 1000))
    return _respond(result, response_format, words, headers)


def _dictation(work: ModelWorker, job: Callable[[list[Chunk]], Transcription], pcm: Any,
               is_connected: Callable[[], bool] | None) -> Transcription:
    """A clip that fits one chunk, answered as plain text (what dictation apps ask for).

    The model starts on the whole clip at once while the VAD looks for speech in this thread,
    so the VAD adds no latency. No speech: the job is withdrawn if it has not started, and
    the answer is empty text either way. Digital silence never reaches the model at all.
    """
    if float(np.max(np.abs(pcm))) < SILENT_PEAK:
        return job([])
    future = work.submit(lambda: job([Chunk(0, len(pcm))]), is_connected)
    if work.segmenter.speech(pcm):
        return future.result()
    work.withdraw(future)
    return job([])


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


def _respond(result: Transcription, response_format: str, words: bool, headers: dict[str, str]) -> Response:
    body = formats.render(result, response_format, words)
    if isinstance(body, dict):
        resp = jsonify(body)
    else:
        resp = Response(body, content_type=formats.CONTENT_TYPES[response_format])
    resp.headers.update(headers)
    return resp


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def _streaming(work: ModelWorker, job: Callable[..., Transcription], headers: dict[str, str],
               is_connected: Callable[[], bool] | None, stats: dict[str, Any]) -> Response:
    """Server-Sent Events as OpenAI sends them: text deltas per segment, then the whole text."""
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def on_segment(segment: Segment) -> None:
        events.put(("segment", segment))

    future = work.submit(lambda: job(on_segment), is_connected)
    future.add_done_callback(lambda f: events.put(("done", f)))

    started = time.perf_counter()

    def generate() -> Iterator[bytes]:
        try:
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
            if kind == "segment":  # join as the final text is joined (no space between CJK characters)
                joined = join_text([sent, item.text])
                delta, sent = joined[len(sent):], joined
                if delta:
                    yield _sse({"type": "transcript.text.delta", "delta": delta, "logprobs": None})
                continue
            error = item.exception()
            if error is None:
                result: Transcription = item.result()
                yield _sse({"type": "transcript.text.done", "text": result.text, "logprobs": None,
                            "usage": formats.usage(result)})
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


def _model_card(work: ModelWorker) -> dict[str, Any]:
    return {"id": work.backend.model, "object": "model", "created": int(current_app.config["RAPL_STARTED"]),
            "owned_by": "rapl", "backend": work.backend.name, "status": work.state,
            "loaded": work.state == "ready"}


def list_models() -> Response:
    """GET /v1/models: the one model this server runs, in OpenAI's list shape."""
    return jsonify({"object": "list", "data": [_model_card(worker())]})


def get_model(model_id: str) -> Response:
    """GET /v1/models/<id>: any id answers with the loaded model (apps ask for whisper-1)."""
    return jsonify(_model_card(worker()))


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
