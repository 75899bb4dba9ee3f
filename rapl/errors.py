"""One error type, and the handlers that answer every error in OpenAI's envelope."""

from __future__ import annotations

import logging
from concurrent.futures import CancelledError

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

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


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "request_too_large", 415: "unsupported_media_type"}


def _from_http(exc: HTTPException) -> APIError:
    status = exc.code or 500
    if status == 413:
        message = "The upload is larger than this server accepts (MAX_UPLOAD_MB)."
        return APIError(message, 413, param="file", code="request_too_large")
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
