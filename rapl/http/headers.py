"""What every answer carries, errors too: a request id (the SDKs' ``request_id``) and no type sniffing."""

from __future__ import annotations

import uuid

from flask import Response, g


def common_headers(response: Response) -> Response:
    """On every answer, errors too: a request id (the SDKs' ``request_id``), and no type sniffing
    (browsers must take every answer as the type it says it is, never a transcript as HTML)."""
    response.headers.setdefault("x-request-id", request_id())
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def request_id() -> str:
    """This request's id: 12 hex digits, made on first use."""
    if "request_id" not in g:
        g.request_id = uuid.uuid4().hex[:12]
    return g.request_id
