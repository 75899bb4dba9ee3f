"""RAPL: a local speech-to-text server that speaks OpenAI's audio API."""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from dotenv import load_dotenv
from flask import Flask, Request

from config import Settings

from . import auth, backends, errors, metrics
from .worker import ModelWorker

__version__ = "0.1.0"
log = logging.getLogger(__name__)


class InMemoryRequest(Request):
    """Keeps uploaded files in memory: no temporary files, whatever their size."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        return io.BytesIO()


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: read settings, start loading the model, register the API.

    ``overrides`` win over the environment and `.env` (tests pass settings this way);
    ``ENV_FILE`` names the dotenv file to read (default `.env`, empty for none).
    """
    overrides = dict(overrides or {})
    env_file = str(overrides.pop("ENV_FILE", os.environ.get("ENV_FILE", ".env")))
    if env_file and os.path.isfile(env_file):
        load_dotenv(env_file, override=False)
    settings = Settings.load(overrides)
    _configure_logging(settings.LOG_LEVEL)

    app = Flask(__name__, static_folder=None)  # the web blueprint serves rapl/static
    app.request_class = InMemoryRequest
    app.config.update(RAPL_SETTINGS=settings, RAPL_STARTED=time.time(),
                      MAX_CONTENT_LENGTH=settings.MAX_UPLOAD_MB * 1024 * 1024,
                      MAX_FORM_MEMORY_SIZE=1024 * 1024, JSON_SORT_KEYS=False)
    app.json.sort_keys = False
    errors.register(app)
    auth.register(app, settings.API_KEY)
    _warn_if_exposed(settings)
    from .api import bp as api_bp
    from .web import bp as web_bp

    app.register_blueprint(api_bp)
    app.register_blueprint(web_bp)
    worker = ModelWorker(backends.create(settings), settings)
    app.extensions["rapl"] = worker
    metrics.register(app, metrics.Metrics(queue_depth=lambda: worker.queue_depth,
                                          model_loaded=lambda: worker.state == "ready",
                                          info={"backend": settings.BACKEND, "model": settings.model}))
    log.info("RAPL %s: backend %s, model %s", __version__, settings.BACKEND, settings.model)
    return app


def _warn_if_exposed(settings: Settings) -> None:
    if settings.HOST not in ("127.0.0.1", "localhost", "::1") and not settings.API_KEY:
        log.warning("HOST=%s exposes RAPL beyond this machine without an API key: anyone who can reach "
                    "it can use it. Set API_KEY, or keep HOST=127.0.0.1.", settings.HOST)


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rapl").setLevel(level)


def create_app_or_exit() -> Flask:
    """create_app() for servers: an invalid setting prints one line and exits with status 2."""
    from config import SettingsError

    try:
        return create_app()
    except SettingsError as exc:
        print(f"rapl: invalid setting: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
