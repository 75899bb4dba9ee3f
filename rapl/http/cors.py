"""Browser rules: which web pages may call the API (setting CORS_ORIGINS), and the rest are refused.

By default (``local``) pages served from localhost, 127.0.0.1 or [::1] on any port may; pages
served by RAPL itself (its web page, same-origin) always may. ``file://`` pages and Electron apps
that load their window from a file (OpenWhispr) send ``Origin: null``, which is also what a
sandboxed iframe on any website sends: they may only when CORS_ORIGINS lists ``null``
(``CORS_ORIGINS=local,null``).

A request from any other page is refused with 403 before its body is read: a cross-site
``multipart/form-data`` POST needs no preflight, so the browser would send it and only hide the
answer. The same goes for cross-site subresource requests that carry no ``Origin`` (``<img>``,
``<script>``: ``Sec-Fetch-Site: cross-site``); a top-level navigation (the user following a link)
still gets the page. Allowed pages get ``Access-Control-Allow-Origin``; preflights (OPTIONS) are
answered on every route without the API key, and errors carry the same headers, so a page can
read OpenAI's error envelope. Requests without ``Origin`` and ``Sec-Fetch-Site`` (apps, SDKs,
curl) are not affected.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

from flask import Flask, Response, request

from ..errors import APIError

log = logging.getLogger(__name__)

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


_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
# Sec-Fetch-Site values a browser sends for requests the user or RAPL's own page made.
_OWN_SITES = ("same-origin", "none")


def same_origin(origin: str, host: str | None) -> bool:
    """True if ``origin`` (an Origin header) names the server the request reached (its Host header).

    For browsers without Sec-Fetch-Site: RAPL's own web page, reached by a name in ALLOWED_HOSTS
    (or behind a TLS proxy), posts with its own origin. The Host header was checked (rapl.http.hosts).
    The scheme is not compared (behind a TLS proxy the page is https, the request to RAPL http):
    the browser reached that host and port and found this server, so a page there is its own.
    """
    scheme, sep, authority = origin.strip().lower().partition("://")
    if not sep or not host or scheme not in _DEFAULT_PORTS:
        return False
    default = _DEFAULT_PORTS[scheme]
    return authority.removesuffix(default) == host.strip().lower().removesuffix(default)


def _navigation(headers: Mapping[str, str], method: str) -> bool:
    """A top-level GET navigation: the user followed a link here; the linking page reads nothing."""
    return (method in ("GET", "HEAD") and headers.get("Sec-Fetch-Mode", "").lower() == "navigate"
            and headers.get("Sec-Fetch-Dest", "").lower() == "document")


def refusal(policy: Policy, headers: Mapping[str, str], method: str) -> str | None:
    """Why a request comes from a web page CORS_ORIGINS does not allow, or None to let it in.

    Only browsers send Origin and Sec-Fetch-Site (pages cannot forge them); requests with neither
    are apps, SDKs or curl, and pass. Preflights (OPTIONS) pass: they carry no body and do no work,
    and a refused origin gets no CORS headers, so the browser sends nothing more.
    """
    if policy.any or method == "OPTIONS":
        return None
    site = headers.get("Sec-Fetch-Site", "").strip().lower()
    if site in _OWN_SITES:
        return None
    origin = headers.get("Origin")
    if origin is not None:
        if policy.allows(origin) or same_origin(origin, headers.get("Host")):
            return None
        return f"Origin {origin[:100]!r}"
    if site == "cross-site" and not _navigation(headers, method):
        return "Sec-Fetch-Site 'cross-site' without Origin"
    return None


def _refused_error(origin: str | None) -> APIError:
    if origin is not None and origin.strip().lower() == "null":
        message = ("Requests from pages with Origin 'null' (file:// pages, Electron apps, sandboxed iframes) are "
                   "refused. To allow file:// pages and apps such as OpenWhispr, set CORS_ORIGINS=local,null.")
    elif origin is not None:
        message = f"Requests from web pages on {origin[:100]!r} are refused: add that origin to CORS_ORIGINS."
    else:
        message = "Cross-site requests from web pages are refused: only pages allowed by CORS_ORIGINS may call RAPL."
    return APIError(message, 403, code="origin_not_allowed")


def allowed_headers(requested: str) -> str:
    """The subset of a preflight's Access-Control-Request-Headers that pages may send."""
    names = [h.strip().lower() for h in requested.split(",") if h.strip()]
    return ", ".join(h for h in names if _TOKEN.match(h) and (h in ALLOWED_HEADERS or h.startswith(ALLOWED_PREFIXES)))


def register(app: Flask, origins: Iterable[str]) -> None:
    """Refuse pages CORS_ORIGINS does not allow (403), answer preflights on every route without the
    API key, and add CORS headers to every answer to an allowed page."""
    policy = Policy(origins)
    app.extensions["rapl.cors"] = policy

    def _preflight() -> Response | None:
        if request.method != "OPTIONS" or request.url_rule is None:
            return None  # unknown paths get their 404 (with CORS headers, below)
        resp = Response(status=204)
        resp.headers["Allow"] = ", ".join(sorted(request.url_rule.methods or ()))
        return resp

    def _refuse_foreign_pages() -> None:
        reason = refusal(policy, request.headers, request.method)
        if reason is not None:
            log.info("refused a request to %r from a web page CORS_ORIGINS does not allow (%s)", request.path, reason)
            raise _refused_error(request.headers.get("Origin"))

    # First, so a preflight is answered before the API key is checked (browsers never send it there),
    # and before that a page CORS_ORIGINS does not allow is refused: before the key, before the body is read.
    hooks = app.before_request_funcs.setdefault(None, [])
    hooks.insert(0, _preflight)
    hooks.insert(0, _refuse_foreign_pages)

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
