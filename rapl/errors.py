"""The errors every layer raises: APIError (an answer in OpenAI's envelope) and the domain errors
(:class:`RaplError`) with the one table of their status codes. Imports nothing of RAPL; the Flask
handlers that answer them are in rapl.http.envelopes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Response

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
        from flask import jsonify

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
