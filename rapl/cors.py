"""CORS: which web pages may call the API from a browser (setting CORS_ORIGINS).

By default (``local``) pages on this machine may: ``file://`` pages and Electron windows
(they send ``Origin: null``) and pages served from localhost, 127.0.0.1 or [::1] on any
port. Any other website gets no ``Access-Control-Allow-Origin``, so the browser keeps the
answer from it. Preflights (OPTIONS) are answered on every route without the API key;
errors carry the same headers, so a page can read OpenAI's error envelope.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from flask import Flask, Response, request

# Headers a page may send: the standard ones, the key, and what the official JS SDK adds in a browser.
ALLOWED_HEADERS = frozenset({"accept", "accept-language", "content-language", "content-type", "authorization",
                             "cache-control", "idempotency-key", "x-requested-with"})
ALLOWED_PREFIXES = ("x-stainless-", "openai-")
# Response headers a page may read besides the CORS-safelisted ones.
EXPOSED_HEADERS = "x-request-id, x-rapl-model, openai-processing-ms, Server-Timing, Retry-After, WWW-Authenticate"
METHODS = "GET, POST, OPTIONS"
MAX_AGE = "600"
_TOKEN = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")


class Policy:
    """Decides which origins are allowed: exact origins, ``scheme://host:*`` (any port) and ``*``."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = tuple(origins)
        self.any = "*" in self.origins
        self.exact = frozenset(o for o in self.origins if not o.endswith(":*"))
        self.any_port = tuple(o[:-2] for o in self.origins if o.endswith(":*"))

    @property
    def enabled(self) -> bool:
        """False when CORS_ORIGINS is empty or none: no CORS headers at all."""
        return bool(self.origins)

    def allows(self, origin: str) -> bool:
        """True if a page from ``origin`` (the Origin header's value) may read the API's answers."""
        origin = origin.strip().lower()
        if not origin:
            return False
        if self.any or origin in self.exact:
            return True
        base, _, port = origin.rpartition(":")
        return (origin in self.any_port) or (port.isdigit() and base in self.any_port)

    def private_network(self, origin: str) -> bool:
        """Whether to grant Chrome's Private Network Access to ``origin`` (already allowed).

        Not to ``null`` unless CORS_ORIGINS is ``*``: file:// pages and Electron windows never ask
        for it (they count as local), but a sandboxed iframe on a public website does.
        """
        return self.any or origin.strip().lower() != "null"


def allowed_headers(requested: str) -> str:
    """The subset of a preflight's Access-Control-Request-Headers that pages may send."""
    names = [h.strip().lower() for h in requested.split(",") if h.strip()]
    return ", ".join(h for h in names if _TOKEN.match(h) and (h in ALLOWED_HEADERS or h.startswith(ALLOWED_PREFIXES)))


def register(app: Flask, origins: Iterable[str]) -> None:
    """Answer preflights on every route without the API key and add CORS headers to every answer."""
    policy = Policy(origins)
    app.extensions["rapl.cors"] = policy

    def _preflight() -> Response | None:
        if request.method != "OPTIONS" or request.url_rule is None:
            return None  # unknown paths get their 404 (with CORS headers, below)
        resp = Response(status=204)
        resp.headers["Allow"] = ", ".join(sorted(request.url_rule.methods or ()))
        return resp

    # First, so a preflight is answered before the API key is checked (browsers never send it there).
    app.before_request_funcs.setdefault(None, []).insert(0, _preflight)

    @app.after_request
    def _cors_headers(resp: Response) -> Response:
        if not policy.enabled:
            return resp
        resp.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin is None or not policy.allows(origin):
            return resp
        headers = resp.headers
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers["Access-Control-Allow-Methods"] = METHODS
            wanted = allowed_headers(request.headers.get("Access-Control-Request-Headers", ""))
            if wanted:
                headers["Access-Control-Allow-Headers"] = wanted
            headers["Access-Control-Max-Age"] = MAX_AGE
            resp.vary.update(("Access-Control-Request-Method", "Access-Control-Request-Headers"))
            if (request.headers.get("Access-Control-Request-Private-Network", "").lower() == "true"
                    and policy.private_network(origin)):
                headers["Access-Control-Allow-Private-Network"] = "true"
        return resp
