"""RAPL: a local speech-to-text server that speaks OpenAI's audio API."""

from __future__ import annotations

import io
import logging
import os
import sys
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import IO, Any

from dotenv import dotenv_values
from flask import Flask, Request, Response, g

from . import auth, backends, cors, encoders, errors, hosts, metrics
from .backends import Backend
from .forms import MAX_FIELD_BYTES, FormParser
from .models import ModelEntry, Models, Slot
from .models import read as read_models
from .recording import MemoryBudget
from .service import Transcriber
from .settings import SPEC, Settings
from .speakers import Diarizer
from .vocabulary import Vocabulary
from .worker import ModelWorker

__version__ = "0.1.0"
log = logging.getLogger(__name__)


class InMemoryRequest(Request):
    """Keeps uploaded files in memory: no temporary files, whatever their size. A too-large form
    field or too many parts raise rapl.forms' own 413s, which name the limit they broke."""

    form_data_parser_class = FormParser

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        return io.BytesIO()


def create_app(overrides: Mapping[str, Any] | None = None, *, backend: Backend | None = None,
               backends_by_id: Mapping[str, Backend] | None = None) -> Flask:
    """Build the app: read settings, register the API, and put the model worker on it.

    Only wires: nothing starts here (no thread, no model load, no logging set-up, no change to
    ``os.environ``); the entry points start the worker (``rapl.server``), and the first request
    starts it where nothing did. ``overrides`` win over the environment and `.env` (tests pass
    settings this way); ``ENV_FILE`` names the dotenv file to read (default `.env`, empty for
    none). ``backend`` replaces the one BACKEND names, ``backends_by_id`` those of MODELS_FILE's models by
    id (tests give fake ones).
    """
    overrides = dict(overrides or {})
    env_file = str(overrides.pop("ENV_FILE", os.environ.get("ENV_FILE", ".env")))
    settings = Settings.load(overrides, environ=environment(env_file))

    app = Flask(__name__, static_folder=None)  # the web blueprint serves rapl/static
    app.request_class = InMemoryRequest
    app.config.update(RAPL_SETTINGS=settings, RAPL_STARTED=time.time(),
                      MAX_CONTENT_LENGTH=settings.MAX_UPLOAD_MB * 1024 * 1024,
                      MAX_FORM_MEMORY_SIZE=MAX_FIELD_BYTES,  # a speaker reference's data URL fits
                      JSON_SORT_KEYS=False)
    app.json.sort_keys = False
    app.json.ensure_ascii = False  # Chinese and other scripts as UTF-8, not \uXXXX escapes
    errors.register(app)
    app.after_request(_common_headers)
    cors.register(app, settings.CORS_ORIGINS)
    hosts.register(app, settings.ALLOWED_HOSTS, settings.HOST)  # after cors: its check runs first
    auth.register(app, settings.API_KEY)
    _warn_if_exposed(settings)
    from .api import bp as api_bp
    from .web import bp as web_bp
    from .websocket import Sessions
    from .websocket import bp as realtime_bp

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


def _common_headers(response: Response) -> Response:
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


def _warn_if_exposed(settings: Settings) -> None:
    if settings.HOST not in ("127.0.0.1", "localhost", "::1") and not settings.API_KEY:
        log.warning("HOST=%s exposes RAPL beyond this machine without an API key: anyone who can reach "
                    "it can use it. Set API_KEY, or keep HOST=127.0.0.1.", settings.HOST)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _EscapingFilter(logging.Filter):
    """On a handler: control characters in each record's message written as escapes, so client text
    cannot forge log lines, whichever formatter then writes it (tracebacks keep their lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Escape the message in place; never drops a record."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: the handler reports it as logging does
            return True
        if not message.isprintable():
            record.msg, record.args = message.translate(_ESCAPES), ()
        return True


# C0 and C1 control characters (CR, LF, NEL, ESC...), DEL and the Unicode line and paragraph separators.
_ESCAPES = {code: f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"
            for code in [*range(32), *range(127, 160), 0x2028, 0x2029]}


def environment(env_file: str | None) -> dict[str, str]:
    """The process environment over the dotenv file's values (the file never overrides a real variable)."""
    values: dict[str, str] = {}
    if env_file and os.path.isfile(env_file):
        values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    return {**values, **os.environ}


def use_env_file(env_file: str | None) -> None:
    """For entry points, which own the process: the dotenv file's variables join the process
    environment where unset, so the hub libraries see HF_HOME, MODELSCOPE_CACHE, HTTPS_PROXY and
    the like from `.env` too. create_app() never does this."""
    for name, value in environment(env_file).items():
        os.environ.setdefault(name, value)


def configure_logging(level: str) -> None:
    """Log to stderr with timestamps, control characters escaped (entry points call this, not create_app).

    Under `waitress-serve`, waitress's serve() has already called ``logging.basicConfig()``: its bare
    handler gets RAPL's format too, so waitress's own lines are timestamped. A handler with a format
    of its own keeps it, but escapes client text as well.
    """
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        if _bare(handler.formatter):
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
        if not any(isinstance(f, _EscapingFilter) for f in handler.filters):
            handler.addFilter(_EscapingFilter())
    logging.getLogger("rapl").setLevel(level)


def _bare(formatter: logging.Formatter | None) -> bool:
    """No format chosen: logging's default, or the one ``logging.basicConfig()`` sets."""
    return formatter is None or getattr(formatter, "_fmt", None) in (None, "%(message)s", logging.BASIC_FORMAT)


def create_app_or_exit() -> Flask:
    """create_app() for servers: an invalid setting prints one line and exits with status 2."""
    from .settings import SettingsError

    try:
        return create_app()
    except SettingsError as exc:
        print(f"rapl: invalid setting: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
