"""One error type, and the handlers that answer every error in OpenAI's envelope."""

from __future__ import annotations

import logging
from concurrent.futures import CancelledError

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from .forms import MAX_REFERENCE_BYTES, FieldTooLarge, TooManyParts

log = logging.getLogger(__name__)

_TYPES = {401: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error",
          503: "server_error", 504: "server_error"}


class APIError(Exception):
    """An error the client sees as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 code: str | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        """The JSON body OpenAI would send."""
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}

    def response(self) -> Response:
        """A Flask response carrying this error."""
        resp = jsonify(self.body())
        resp.status_code = self.status
        resp.headers.update(self.headers)
        return resp


class RaplError(Exception):
    """Something went wrong, in words a user can act on; ``code`` and ``param`` name it for clients.

    Audio, the model worker, the pipeline and the backends raise these and know nothing of HTTP;
    :data:`STATUS` below is the one place that maps each kind to a status code.
    """

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after  # seconds after which trying again may work


class BadAudio(RaplError):
    """The upload is not audio that can be read (or would cost far more work than its size)."""


class TooLong(RaplError):
    """The audio is longer than MAX_AUDIO_SECONDS."""


class Invalid(RaplError):
    """A value in the request cannot be used (found past parsing, e.g. a voiceless reference clip)."""


class Unsupported(RaplError):
    """The loaded model (or this installation) cannot do what was asked."""


class Busy(RaplError):
    """MAX_QUEUE requests already wait for the model."""


class TimedOut(RaplError):
    """The request waited longer than REQUEST_TIMEOUT for the model."""


class ClientGone(RaplError):
    """The client hung up while its request waited."""


class Unavailable(RaplError):
    """No model to run on: it could not be loaded, or the server is stopping."""


class Overloaded(RaplError):
    """The server holds as much decoded audio as DECODE_MEMORY_MB allows; retry shortly."""


STATUS: dict[type[RaplError], int] = {BadAudio: 400, TooLong: 413, Invalid: 400, Unsupported: 400, Busy: 429,
                                      TimedOut: 504, ClientGone: 499, Unavailable: 503,
                                      Overloaded: 503}


def as_api(exc: RaplError) -> APIError:
    """The HTTP answer to a domain error: its status from :data:`STATUS`, its words unchanged."""
    status = next((STATUS[kind] for kind in type(exc).__mro__ if kind in STATUS), 500)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return APIError(exc.message, status, param=exc.param, code=exc.code, headers=headers)


def status_of(exc: BaseException | None) -> int:
    """The status a finished job's outcome is answered with: 200, 4xx/5xx for errors."""
    if exc is None:
        return 200
    if isinstance(exc, RaplError):
        return as_api(exc).status
    return exc.status if isinstance(exc, APIError) else 500


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "request_too_large", 415: "unsupported_media_type"}


def _too_large(exc: HTTPException) -> APIError:
    """The 413 for the limit really exceeded: one form field, the number of parts, or the whole body."""
    if isinstance(exc, FieldTooLarge):
        field = exc.field.removesuffix("[]") if exc.field else None
        limit = f"{exc.limit / 2**20:.1f} MB"
        if field == "known_speaker_references":
            message = (f"A known_speaker_references entry is larger than {limit}: a reference clip may have at "
                       f"most {MAX_REFERENCE_BYTES // 2**20} MB ({limit} as a data URL).")
        else:
            what = f"The form field {field!r}" if field else "A form field"
            message = f"{what} is larger than the {limit} one form field may hold."
        return APIError(message, 413, param=field, code="request_too_large")
    if isinstance(exc, TooManyParts):
        return APIError(f"The form has more than {exc.limit} parts.", 413, code="request_too_large")
    return APIError("The upload is larger than this server accepts (MAX_UPLOAD_MB).", 413, param="file",
                    code="request_too_large")


def _from_http(exc: HTTPException) -> APIError:
    status = exc.code or 500
    if status == 413:
        return _too_large(exc)
    if status == 405:
        headers = {"Allow": ", ".join(exc.valid_methods or [])} if getattr(exc, "valid_methods", None) else {}
        return APIError(f"Method not allowed: {exc.description}", 405,
                        code="method_not_allowed", headers=headers)
    if status == 404:
        return APIError("Unknown path. RAPL serves POST /v1/audio/transcriptions, "
                        "POST /v1/audio/translations, GET /v1/models, GET /health and the web page at /.", 404,
                        code="not_found")
    return APIError(exc.description or exc.name, status, code=_HTTP_CODES.get(status))


def register(app: Flask) -> None:
    """Answer APIError, every HTTP error and any unexpected exception in OpenAI's envelope."""

    @app.errorhandler(APIError)
    def _api_error(exc: APIError) -> Response:
        return exc.response()

    @app.errorhandler(RaplError)
    def _domain_error(exc: RaplError) -> Response:
        return as_api(exc).response()

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return _from_http(exc).response()

    @app.errorhandler(CancelledError)
    def _cancelled(exc: CancelledError) -> Response:
        return APIError("The server is shutting down; retry shortly.", 503, code="shutting_down").response()

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error while handling a request")
        return APIError(f"Internal error: {type(exc).__name__}. See the server log for details.",
                        500, code="internal_error").response()
