"""RAPL: a local speech-to-text server that speaks OpenAI's audio API."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from flask import Flask

from . import backends
from .audio.recording import MemoryBudget
from .backends import Backend
from .core import encoders
from .core.models import ModelEntry, Models, Slot
from .core.models import read as read_models
from .core.service import Transcriber
from .core.speakers import Diarizer
from .core.vocabulary import Vocabulary
from .core.worker import ModelWorker
from .http import auth, cors, envelopes, hosts, metrics
from .http.forms import MAX_FIELD_BYTES, InMemoryRequest
from .http.headers import common_headers
from .settings import SPEC, Settings, environment

__version__ = "0.1.0"
log = logging.getLogger(__name__)


def create_app(overrides: Mapping[str, Any] | None = None, *, backend: Backend | None = None,
               backends_by_id: Mapping[str, Backend] | None = None) -> Flask:
    """Build the app: read settings, register the API, and put the model worker on it.

    Only wires: nothing starts here (no thread, no model load, no logging set-up, no change to
    ``os.environ``); the entry points start the worker (``rapl.http.server``), and the first request
    starts it where nothing did. ``overrides`` win over the environment and `.env` (tests pass
    settings this way); ``ENV_FILE`` names the dotenv file to read (default `.env`, empty for
    none). ``backend`` replaces the one BACKEND names, ``backends_by_id`` those of MODELS_FILE's models by
    id (tests give fake ones).
    """
    overrides = dict(overrides or {})
    env_file = str(overrides.pop("ENV_FILE", os.environ.get("ENV_FILE", ".env")))
    settings = Settings.load(overrides, environ=environment(env_file))

    app = Flask(__name__, static_folder=None)  # the web blueprint serves rapl/http/static
    app.request_class = InMemoryRequest
    app.config.update(RAPL_SETTINGS=settings, RAPL_STARTED=time.time(), RAPL_VERSION=__version__,
                      MAX_CONTENT_LENGTH=settings.MAX_UPLOAD_MB * 1024 * 1024,
                      MAX_FORM_MEMORY_SIZE=MAX_FIELD_BYTES,  # a speaker reference's data URL fits
                      JSON_SORT_KEYS=False)
    app.json.sort_keys = False
    app.json.ensure_ascii = False  # Chinese and other scripts as UTF-8, not \uXXXX escapes
    envelopes.register(app)
    app.after_request(common_headers)
    cors.register(app, settings.CORS_ORIGINS)
    hosts.register(app, settings.ALLOWED_HOSTS, settings.HOST)  # after cors: its check runs first
    auth.register(app, settings.API_KEY)
    _warn_if_exposed(settings)
    from .http.api import bp as api_bp
    from .http.web import bp as web_bp
    from .http.websocket import Sessions
    from .http.websocket import bp as realtime_bp

    app.register_blueprint(api_bp)
    app.register_blueprint(realtime_bp)
    app.register_blueprint(web_bp)
    app.extensions["rapl.realtime"] = Sessions(settings.REALTIME_MAX_SESSIONS, settings.REALTIME_IDLE_SECONDS,
                                               settings.REALTIME_SESSION_MINUTES * 60,
                                               settings.REALTIME_MAX_MESSAGE_MB * 2**20)
    app.extensions["rapl.decode_budget"] = MemoryBudget(settings.decode_memory)  # every request's decoded audio
    info = {"backend": backend.name if backend is not None else settings.BACKEND,
            "model": backends.public_name(backend.model if backend is not None else settings.model)}
    live = app.extensions["rapl.realtime"]
    pool: Models | None = None
    app_metrics = metrics.Metrics(queue_depth=lambda: pool.waiting() if pool else 0,
                                  model_loaded=lambda: pool is not None and pool.default.worker.state == "ready",
                                  info=info, live=lambda: {**live.health(), **(pool.default.worker.counters
                                                                               if pool else {})},
                                  models=lambda: pool.describe() if pool else [])
    metrics.register(app, app_metrics)
    diarizer = _diarizer(settings)

    def build(entry: ModelEntry, executor: ThreadPoolExecutor) -> Slot:
        own = entry.settings(settings)
        given = backend if entry is entries[0] else (backends_by_id or {}).get(entry.id)
        model = given if given is not None else backends.create(own)
        work = ModelWorker(model, own, executor)
        service = Transcriber(work, Vocabulary.from_settings(own), diarizer, progress=settings.PROGRESS,
                              on_audio=app_metrics.audio_processed)
        return Slot(entry, work, service)

    entries = (read_models(settings.MODELS_FILE, settings) if settings.MODELS_FILE else
               [ModelEntry(id=backends.public_name(backend.model if backend is not None else settings.model),
                           backend=settings.BACKEND, model=settings.model)])
    if backend is not None and not entries[0].line:  # the .env model, given: named after what it is
        entries[0] = replace(entries[0], id=backends.public_name(backend.model))
    pool = Models(entries, build, settings.MAX_LOADED_MODELS, settings.STRICT_MODELS, settings.MODEL_MEMORY_MB)
    app.extensions["rapl.models"] = pool
    app.extensions["rapl"] = pool.default.worker  # the .env model's: started with the server
    app.extensions["rapl.service"] = pool.default.service
    log.info("RAPL %s: backend %s, model %s", __version__, settings.BACKEND, settings.model)
    return app


def _diarizer(settings: Settings) -> Diarizer | None:
    """The speaker stage SPEAKER_MODEL names (its model loads on first use), or None where it cannot run.

    A SPEAKER_MODEL chosen in the settings must be installed (start-up fails, naming the command);
    the default one is optional: without it diarized_json answers 400 saying what to install.
    """
    try:
        encoders.check(settings.SPEAKER_MODEL)
    except encoders.SpeakerModelError as exc:
        if settings.SPEAKER_MODEL != SPEC["SPEAKER_MODEL"][0]:  # chosen, not the default
            raise
        log.info("speaker labels (diarized_json) are off: %s", exc)
        return None
    return Diarizer.from_settings(settings)


def _warn_if_exposed(settings: Settings) -> None:
    if settings.HOST not in ("127.0.0.1", "localhost", "::1") and not settings.API_KEY:
        log.warning("HOST=%s exposes RAPL beyond this machine without an API key: anyone who can reach "
                    "it can use it. Set API_KEY, or keep HOST=127.0.0.1.", settings.HOST)


def create_app_or_exit() -> Flask:
    """create_app() for servers: an invalid setting prints one line and exits with status 2."""
    from .settings import SettingsError

    try:
        return create_app()
    except SettingsError as exc:
        print(f"rapl: invalid setting: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
