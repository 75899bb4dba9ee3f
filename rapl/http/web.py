"""The web page at `/`: a self-contained transcription UI (no build step, nothing fetched from outside).

Register it in :func:`rapl.create_app` after the API blueprint::

    from .web import bp as web_bp
    app.register_blueprint(web_bp)

The page and its assets are public (like /health): they hold no data. The page asks for the
API key itself when the API answers 401.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC = Path(__file__).resolve().parent / "static"

bp = Blueprint("web", __name__)

# Short caching: assets are small, and a server upgrade should show up on the next reload.
_MAX_AGE = 60


def _headers(resp: Response) -> Response:
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")
    return resp


@bp.get("/")
def index() -> Response:
    """GET /: the page."""
    resp = send_from_directory(STATIC, "index.html", max_age=0)
    # Everything the page needs is served from here; keep it that way.
    resp.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'")
    return _headers(resp)


@bp.get("/static/<path:filename>")
def static(filename: str) -> Response:
    """GET /static/<file>: the page's script, style sheet and icon (404 for anything else)."""
    return _headers(send_from_directory(STATIC, filename, max_age=_MAX_AGE))
