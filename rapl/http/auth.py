"""Optional API key: when API_KEY is set, every endpoint but the open ones needs it.

Live sessions' handshakes may carry it as the subprotocol ``openai-insecure-api-key.<key>``
instead (browsers cannot set headers on a WebSocket), as OpenAI's browser path does.
"""

from __future__ import annotations

import hmac
import logging

from flask import Flask, request

from ..errors import APIError
from .websocket import PATHS as REALTIME_PATHS
from .websocket import key_from_subprotocol

log = logging.getLogger(__name__)

# Reachable without a key: the health check (load balancers), the API description and the
# web page itself, which asks the user for the key before calling the API.
OPEN_PATHS = ("/health", "/", "/favicon.ico", "/openapi.json")
OPEN_PREFIXES = ("/static/",)


def register(app: Flask, api_key: str) -> None:
    """Require ``Authorization: Bearer <api_key>`` on every closed path (no-op if the key is empty)."""
    if not api_key:
        return
    expected = api_key.encode()

    @app.before_request
    def _check_key() -> None:
        if request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" and request.path in REALTIME_PATHS:  # a browser's WebSocket: no headers
            scheme, given = "bearer", key_from_subprotocol(request.headers) or ""
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            log.info("rejected a request to %r without a valid API key", request.path)
            raise APIError("Incorrect or missing API key. Send 'Authorization: Bearer <API_KEY>'.", 401,
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
