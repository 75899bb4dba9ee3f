"""RAPL settings: every setting is read, type-checked and documented here, in one place.

Each setting has a one-line comment that `.env.example` repeats.  Values come from, in
rising order of precedence: the defaults below, the `.env` file, the process environment,
and the ``overrides`` mapping given to :func:`rapl.create_app` (used by tests).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from dotenv import dotenv_values

from .catalog import SPECS

BACKENDS = tuple(SPECS)  # one registry entry per backend (rapl.catalog.SPECS)
DEFAULT_MODELS = {name: spec.default_model for name, spec in SPECS.items()}
RICH_MODES = ("plain", "emoji", "tags")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SPEAKER_MODELS = ("resemblyzer", "campplus", "pyannote")  # rapl.core.encoders.ENCODERS has the same keys
# CORS_ORIGINS=local: pages served on this machine, and Tauri apps' webviews (tauri://localhost on macOS
# and Linux, http(s)://tauri.localhost on Windows: *.localhost is always this machine). Not null (file://
# pages and Electron windows, but also sandboxed iframes on any website): CORS_ORIGINS=local,null opts in.
LOCAL_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*",
                 "https://localhost:*", "https://127.0.0.1:*", "https://[::1]:*",
                 "tauri://localhost", "http://tauri.localhost", "https://tauri.localhost")
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[a-z0-9._~-]+)(:(\d{1,5}|\*))?$")


class SettingsError(ValueError):
    """An invalid setting; the message names the setting and the valid values."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is invalid: use true or false")


def _int(low: int, high: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is invalid: use a whole number") from None
        if value < low or (high is not None and value > high):
            upper = f" and {high}" if high is not None else " or more"
            between = f"between {low}{upper}" if high is not None else f"{low}{upper}"
            raise SettingsError(f"{name}={raw!r} is out of range: use {between}")
        return value

    return parse


def _float(low: float, high: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is invalid: use a number") from None
        if not low <= value <= high:
            raise SettingsError(f"{name}={raw!r} is out of range: use {low} to {high}")
        return value

    return parse


def _choice(choices: tuple[str, ...], lower: bool = True) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower() if lower else raw.strip().upper()
        if value not in choices:
            raise SettingsError(f"{name}={raw!r} is invalid: use one of {', '.join(choices)}")
        return value

    return parse


def _device(name: str, raw: str) -> str:
    value = raw.strip().lower()
    base = value.split(":", 1)[0]
    if base not in ("auto", "cpu", "cuda", "mps") or (":" in value and base != "cuda"):
        raise SettingsError(f"{name}={raw!r} is invalid: use one of auto, cpu, cuda, cuda:N, mps")
    return value


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _origins(name: str, raw: str) -> tuple[str, ...]:
    """CORS origins: local, *, none (or empty), or a comma list of origins and those words."""
    items = [item.strip().lower().rstrip("/") for item in raw.split(",") if item.strip()]
    if not items or items == ["none"]:
        return ()
    origins: list[str] = []
    for item in items:
        if item == "local":
            origins += LOCAL_ORIGINS
        elif item == "*" or item == "null" or _ORIGIN.match(item):
            origins.append(item)
        else:
            raise SettingsError(f"{name}={raw!r} is invalid: {item!r} is not an origin; use local, *, none, "
                                "or a comma list of origins such as http://localhost:* or https://app.example")
    return tuple(dict.fromkeys(origins))


def _hosts(name: str, raw: str) -> tuple[str, ...]:
    """Host names the server answers to besides localhost and HOST: a comma list of names and addresses, or *."""
    hosts: list[str] = []
    for item in (item.strip() for item in raw.split(",")):
        if not item:
            continue
        host = normalize_host(item)
        if host != "*" and not (_is_address(host) or _HOST_NAME.match(host)):
            raise SettingsError(f"{name}={raw!r} is invalid: {item!r} is not a host name or address; use *, or a "
                                "comma list of names and addresses without scheme or port, such as "
                                "192.168.1.5,mymac.local,rapl.example.com")
        hosts.append(host)
    return tuple(dict.fromkeys(hosts))


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# name -> (default, parser, one-line description repeated in .env.example)
SPEC: dict[str, tuple[str, Callable[[str, str], Any], str]] = {
    "BACKEND": ("sensevoice", _choice(BACKENDS), f"Speech-to-text backend: {', '.join(BACKENDS[:-1])} or "
                f"{BACKENDS[-1]}."),
    "LOCAL_MODEL": ("", _text, "Model: a hub id or a local directory; empty picks the backend's default."),
    "MODELS_FILE": ("", _text, "TOML file of more models clients choose by the request's model field "
                    "(see config/models.toml.example); empty: the BACKEND + LOCAL_MODEL one only."),
    "MAX_LOADED_MODELS": ("1", _int(1, 64), "Models kept loaded at once; the least recently used idle one is "
                          "unloaded to make room."),
    "MODEL_MEMORY_MB": ("0", _int(0), "Resident memory the loaded models may use together, in MB, as measured at "
                        "each load; least recently used ones are unloaded to stay under it; 0: no budget."),
    "STRICT_MODELS": ("false", _bool, "Answer 404 model_not_found to a model name the server does not know "
                      "(else the BACKEND + LOCAL_MODEL model answers it): true or false."),
    "DEVICE": ("auto", _device, "Where the model runs: auto, cpu, cuda, cuda:N or mps."),
    "HOST": ("127.0.0.1", _text, "Address RAPL listens on (both launchers); keep 127.0.0.1 unless you set API_KEY."),
    "PORT": ("8000", _int(1, 65535), "Port RAPL listens on (python -m rapl and waitress-serve wsgi:app)."),
    "API_KEY": ("", _text, "If set, the API needs 'Authorization: Bearer <key>' (open: /health, /openapi.json, "
                "the web page / and /static/*)."),
    "CORS_ORIGINS": ("local", _origins, "Web pages allowed to call the API (others get 403): local (localhost "
                     "pages, Tauri apps), null (file:// pages, Electron apps), *, none, or a comma list of these "
                     "and origins."),
    "ALLOWED_HOSTS": ("", _hosts, "Host names clients reach RAPL by besides localhost, HOST and IP addresses (LAN "
                      "name, reverse proxy), comma-separated, or *; other names get 421."),
    "MAX_UPLOAD_MB": ("25", _int(1, 4096), "Largest accepted upload in megabytes (OpenAI's limit is 25)."),
    "MAX_AUDIO_SECONDS": ("14400", _int(1), "Longest accepted audio after decoding, in seconds."),
    "MAX_QUEUE": ("16", _int(1, 10000), "Requests allowed to wait for the model; more get 429."),
    "DECODE_MEMORY_MB": ("0", _int(0, 1 << 20), "Decoded audio all requests together may hold, in MB; 0: room "
                         "for two of MAX_AUDIO_SECONDS (64 KB a second: 1843 MB for 4 hours)."),
    "REQUEST_TIMEOUT": ("600", _int(1), "Seconds a request may wait in the queue before it gets 504."),
    "MODEL_RETRY_SECONDS": ("30", _int(1, 86400), "Seconds before a model that failed to load is tried again "
                            "(on the next request; doubles up to 10 minutes)."),
    "MODEL_IDLE_UNLOAD": ("0", _int(0), "Idle seconds before the model is freed (next request reloads it); 0: never."),
    "THREADS": ("0", _int(0, 1024), "CPU threads for inference; 0 uses every core."),
    "WHISPER_COMPUTE_TYPE": ("default", _text, "faster-whisper compute type; default is int8 on CPU, float16 on CUDA."),
    "RICH_TEXT": ("plain", _choice(RICH_MODES), "SenseVoice emotion/event tags in text: plain, emoji or tags."),
    "USE_ITN": ("true", _bool, "SenseVoice inverse text normalisation (numbers, punctuation): true or false."),
    "VAD": ("true", _bool, "Split long audio at pauses found by voice-activity detection: true or false."),
    "VAD_THRESHOLD": ("0.5", _float(0.0, 1.0), "Speech probability above which audio counts as speech (0 to 1)."),
    "MAX_CHUNK_SECONDS": ("30", _int(5, 600), "Longest piece of audio given to the model at once, in seconds."),
    "MIN_SILENCE_MS": ("500", _int(0, 10000), "Shortest pause, in milliseconds, that may separate two pieces."),
    "SPEAKER_MODEL": ("resemblyzer", _choice(SPEAKER_MODELS), "Voice encoder that labels speakers: resemblyzer "
                      "(ships with its package), campplus (FunASR CAM++) or pyannote."),
    "VOCABULARY_FILE": ("", _text, "File of terms added to every request's keywords, one a line, # comments "
                        "(see config/vocabulary.txt.example); empty: none."),
    "REPLACEMENTS_FILE": ("", _text, "File of 'wrong -> right' rules applied to every transcript "
                          "(see config/replacements.txt.example); empty: none."),
    "REALTIME_MAX_SESSIONS": ("8", _int(0, 100), "Live dictation sessions (WebSocket /v1/realtime) open at once; "
                              "more are closed with a reason; 0: none."),
    "REALTIME_IDLE_SECONDS": ("120", _int(5, 86400), "Seconds a live session may send nothing (not even a ping) "
                              "before it is closed."),
    "REALTIME_SESSION_MINUTES": ("60", _int(1, 1440), "Longest live session in minutes, as OpenAI's (clients "
                                 "reconnect); then session_expired."),
    "REALTIME_MAX_MESSAGE_MB": ("16", _int(1, 64), "Largest WebSocket message a live session takes, in MB "
                                "(OpenAI's append carries up to 15 MiB)."),
    "PROGRESS": ("true", _bool, "Show a tqdm progress bar in the terminal for each transcription."),
    "LOG_LEVEL": ("INFO", _choice(LOG_LEVELS, lower=False), "Logging level: DEBUG, INFO, WARNING or ERROR."),
}


@dataclass(frozen=True)
class Settings:
    """Validated settings; build with :meth:`Settings.load`."""

    BACKEND: str
    LOCAL_MODEL: str
    MODELS_FILE: str
    MAX_LOADED_MODELS: int
    MODEL_MEMORY_MB: int
    STRICT_MODELS: bool
    DEVICE: str
    HOST: str
    PORT: int
    API_KEY: str
    CORS_ORIGINS: tuple[str, ...]
    ALLOWED_HOSTS: tuple[str, ...]
    MAX_UPLOAD_MB: int
    MAX_AUDIO_SECONDS: int
    MAX_QUEUE: int
    DECODE_MEMORY_MB: int
    REQUEST_TIMEOUT: int
    MODEL_RETRY_SECONDS: int
    MODEL_IDLE_UNLOAD: int
    THREADS: int
    WHISPER_COMPUTE_TYPE: str
    RICH_TEXT: str
    USE_ITN: bool
    VAD: bool
    VAD_THRESHOLD: float
    MAX_CHUNK_SECONDS: int
    MIN_SILENCE_MS: int
    SPEAKER_MODEL: str
    VOCABULARY_FILE: str
    REPLACEMENTS_FILE: str
    REALTIME_MAX_SESSIONS: int
    REALTIME_IDLE_SECONDS: int
    REALTIME_SESSION_MINUTES: int
    REALTIME_MAX_MESSAGE_MB: int
    PROGRESS: bool
    LOG_LEVEL: str

    @property
    def decode_memory(self) -> int:
        """Bytes of decoded audio the server may hold at once: DECODE_MEMORY_MB, or two longest recordings."""
        return self.DECODE_MEMORY_MB * 1_000_000 or 2 * self.MAX_AUDIO_SECONDS * 64_000

    @property
    def model(self) -> str:
        """The model to load: LOCAL_MODEL, or the backend's default."""
        return self.LOCAL_MODEL or DEFAULT_MODELS[self.BACKEND]

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None,
             environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``environ`` (default: os.environ) and ``overrides``.

        Raises SettingsError naming the first invalid setting and its valid values.
        """
        environ = os.environ if environ is None else environ
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(SPEC) - {"ENV_FILE"})
        if unknown:
            raise SettingsError(f"unknown setting {unknown[0]}: valid settings are {', '.join(SPEC)}")
        values: dict[str, Any] = {}
        for name, (default, parse, _doc) in SPEC.items():
            raw = overrides.get(name, environ.get(name, default))
            values[name] = parse(name, str(raw) if not isinstance(raw, bool) else str(raw).lower())
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """Settings safe to show (the API key is masked)."""
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["API_KEY"] = "set" if self.API_KEY else ""
        return shown


def env_example() -> str:
    """The text of `.env.example`, generated from SPEC so the two never drift."""
    lines = ["# RAPL settings. Copy to .env and edit; real environment variables win over this file.", ""]
    for name, (default, _parse, doc) in SPEC.items():
        lines += [f"# {doc}", f"{name}={default}", ""]
    return "\n".join(lines)


def normalize_host(name: str) -> str:
    """``name`` as compared: lower-case, without IPv6 brackets or one trailing dot, IP addresses canonical."""
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    name = name.removesuffix(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


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
