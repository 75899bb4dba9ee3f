"""The handlers that answer every error in OpenAI's envelope: APIError, the domain errors, HTTP
errors (a 413 naming the limit it broke) and anything unexpected (a 500 without the traceback)."""

from __future__ import annotations

import logging
from concurrent.futures import CancelledError

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from ..core.params import MAX_REFERENCE_BYTES
from ..errors import APIError, RaplError, as_api
from .forms import FieldTooLarge, TooManyParts

log = logging.getLogger(__name__)


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
