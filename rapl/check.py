"""``rapl check``: verify the set-up (settings, decoder, backend library, model, port) and say
what to change when something is wrong. Each backend's packages and hub come from its BackendSpec;
the model is looked up as the backend loads it (rapl.backends.store)."""

from __future__ import annotations

import errno
import os
import shutil
import socket

from . import environment
from .backends import store
from .catalog import SPECS
from .http.server import free_port
from .settings import Settings, SettingsError


class Report:
    """Prints one line per finding and counts the failures and warnings."""

    def __init__(self) -> None:
        self.failures = 0
        self.warnings = 0

    def line(self, tag: str, what: str, message: str, fix: str | None = None) -> None:
        """Print ``tag what: message`` and, when given, the fix below it."""
        print(f"{tag:<5} {what}: {message}", flush=True)
        if fix:
            print(f"      -> {fix}", flush=True)

    def ok(self, what: str, message: str) -> None:
        """A check that passed."""
        self.line("ok", what, message)

    def info(self, what: str, message: str) -> None:
        """Something worth knowing that is no problem."""
        self.line("info", what, message)

    def warn(self, what: str, message: str, fix: str | None = None) -> None:
        """Something that may fail later."""
        self.warnings += 1
        self.line("WARN", what, message, fix)

    def fail(self, what: str, message: str, fix: str | None = None) -> None:
        """Something that stops RAPL from working."""
        self.failures += 1
        self.line("FAIL", what, message, fix)


def run(env_file: str | None) -> int:
    """Verify decoder, backend library, model and port with the settings of the environment over
    ``env_file`` (None: no dotenv file); 1 when anything failed."""
    report = Report()
    try:
        settings: Settings | None = Settings.load(environ=environment(env_file))
    except SettingsError as exc:
        settings = None
        report.fail("settings", str(exc), f"fix it in {env_file or 'the environment'} (see .env.example)")
    else:
        report.ok("settings", f"BACKEND={settings.BACKEND}, model {settings.model}, "
                  f"{'read ' + env_file if env_file else 'no .env file read'}")
    check_decoder(report)
    models_failed = False
    if settings is not None:
        if check_backend(report, settings):
            check_model(report, settings)
        check_port(report, settings)
        models_failed = not check_models_file(report, settings)
    if models_failed:
        print(f"\n{report.failures} check{'s' if report.failures != 1 else ''} failed (the models file).", flush=True)
        return 2
    if report.failures:
        print(f"\n{report.failures} check{'s' if report.failures != 1 else ''} failed.", flush=True)
        return 1
    print("\nAll checks passed" + (f" ({report.warnings} warning{'s' if report.warnings != 1 else ''})."
                                   if report.warnings else "."), flush=True)
    return 0


def _tone(container: str, seconds: float = 0.5, rate: int = 22050) -> bytes:
    """A 440 Hz tone as 16-bit mono ``container`` (WAV or AIFF) bytes."""
    import io

    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, 0.5 * np.sin(2 * np.pi * 440 * t), rate, format=container, subtype="PCM_16")
    return buf.getvalue()


def _pyav_samples(data: bytes) -> int:
    """Samples PyAV itself decodes from ``data`` (independent of rapl.audio)."""
    import io

    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream))


def check_models_file(report: Report, settings: Settings) -> bool:
    """MODELS_FILE, when set, reads and holds valid models: one FAIL line per problem; False if any."""
    if not settings.MODELS_FILE:
        return True
    from .core.models import ModelsFileError, read

    try:
        entries = read(settings.MODELS_FILE, settings)
    except ModelsFileError as exc:
        for problem in str(exc).splitlines():
            report.fail("models", problem)
        return False
    report.ok("models", f"{settings.MODELS_FILE}: {', '.join(e.id for e in entries)} "
              f"(default {entries[0].id}; at most {settings.MAX_LOADED_MODELS} loaded)")
    return True


def check_decoder(report: Report) -> None:
    """PyAV and the WAV/FLAC fast path decode a generated tone; ffmpeg on PATH is reported."""
    fix = "reinstall the audio libraries: pip install --force-reinstall -r requirements.txt (av, soundfile, soxr)"
    try:
        import av

        from . import audio
    except Exception as exc:  # noqa: BLE001 - report any import failure
        report.fail("decoder", f"the audio libraries cannot be imported ({type(exc).__name__}: {exc})", fix)
    else:
        try:
            wav, aiff = _tone("WAV"), _tone("AIFF")
            raw = _pyav_samples(aiff)  # AIFF is not on the fast path: rapl.audio hands it to PyAV too
            decoded = [audio.decode(wav), audio.decode(aiff)]
        except Exception as exc:  # noqa: BLE001
            report.fail("decoder", f"decoding a generated tone failed: {type(exc).__name__}: {exc}", fix)
        else:
            expected = audio.SAMPLE_RATE // 2
            good = abs(raw - 22050 // 2) <= 1 and all(
                abs(len(pcm) - expected) < expected * 0.05 and float(abs(pcm).max()) > 0.1 for pcm in decoded)
            if good:
                report.ok("decoder", f"PyAV {av.__version__} (FFmpeg {getattr(av, 'ffmpeg_version_info', '?')}) "
                          "and the WAV/FLAC fast path decode a generated tone")
            else:
                report.fail("decoder", "a generated tone decoded to the wrong length or to silence "
                            f"(PyAV: {raw} samples of 11025; rapl.audio: {[len(p) for p in decoded]} of {expected})",
                            fix)
    exe = shutil.which("ffmpeg")
    report.info("ffmpeg", f"{exe} is on PATH; used only as a fallback for files PyAV cannot read" if exe else
                "no ffmpeg on PATH; not needed (PyAV carries FFmpeg's libraries), only a fallback")


def check_backend(report: Report, settings: Settings) -> bool:
    """The backend's packages (from its BackendSpec) import and the backend can be built."""
    import importlib

    from . import backends

    spec = SPECS[settings.BACKEND]
    ok = True
    for module, package in spec.packages:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - ImportError, or a library broken on import
            ok = False
            hint = f"pip install -r requirements.txt (or: pip install {package})"
            if settings.BACKEND == "mlx":  # the same advice as `serve` gives (one truth per platform)
                from .backends.mlx import install_command

                hint = f"install mlx-audio and MLX: {install_command()}"
            report.fail("backend", f"BACKEND={settings.BACKEND} needs {package}, which cannot be imported "
                        f"({type(exc).__name__}: {exc})", hint)
    if not ok:
        return False
    try:
        backends.create(settings)
    except Exception as exc:  # noqa: BLE001 - SettingsError names the fix; anything else is reported too
        report.fail("backend", f"BACKEND={settings.BACKEND} cannot be set up: {exc}",
                    "install what it names, or choose another BACKEND")
        return False
    libs = ", ".join(package for _module, package in spec.packages)
    report.ok("backend", f"BACKEND={settings.BACKEND}: {libs} import{'s' if ',' not in libs else ''}")
    return True


def check_model(report: Report, settings: Settings) -> None:
    """The model is a local directory, or cached, or its hub can be reached for the first start."""
    spec = SPECS[settings.BACKEND]
    model = settings.model
    setting = f"LOCAL_MODEL={settings.LOCAL_MODEL}" if settings.LOCAL_MODEL else \
        f"LOCAL_MODEL empty: the {settings.BACKEND} default"
    found = store.cached(spec, model)
    if found is not None and found.source == store.LOCAL:
        if spec.marker and not os.path.isfile(os.path.join(found.path, spec.marker)):
            report.warn("model", f"LOCAL_MODEL={settings.LOCAL_MODEL} is a directory without {spec.marker}; "
                        f"it may not be a {settings.BACKEND} model",
                        "point LOCAL_MODEL at the directory that holds the model files")
        else:
            report.ok("model", f"LOCAL_MODEL is a local directory ({found.path}, {store.human_size(found.size)})")
        return
    if store.looks_like_path(model):
        report.fail("model", f"LOCAL_MODEL={settings.LOCAL_MODEL} is not a directory (it does not exist "
                    "or is not readable)",
                    "set LOCAL_MODEL to an existing model directory, or to a hub id such as "
                    f"{spec.default_model} (empty picks that default)")
        return
    model_id = found.model_id if found is not None else store.hub_id(spec, model)
    if found is not None:
        report.ok("model", f"{model_id} ({setting}) is in the {found.source} ({found.path}, "
                  f"{store.human_size(found.size)})")
        return
    offline_fix = ("to work offline, download it on a connected machine and copy the model directory here, "
                   "then point LOCAL_MODEL at that local directory")
    message = (f"{model_id} ({setting}) is not in the local cache: the server downloads it from {spec.hub} "
               "on first start")
    why = store.unreachable(spec)
    if why:
        report.fail("model", f"{message}, but {why}", offline_fix)
    else:
        report.warn("model", f"{message} (needs {store.hub_host(spec)})", offline_fix)


def running_rapl(host: str, port: int, timeout: float = 3.0) -> str:
    """What a RAPL already listening on ``host``:``port`` says of itself ("whisper model tiny.en, ready"),
    or "" when what listens there is not RAPL (or does not answer)."""
    import json
    import urllib.error
    import urllib.request

    connect = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    url = f"http://{f'[{connect}]' if ':' in connect else connect}:{port}/health"
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
        with opener.open(url, timeout=timeout) as resp:
            server, body = resp.headers.get("Server", ""), json.loads(resp.read(65536))
    except urllib.error.HTTPError as exc:  # 503 while loading or after a failed load: still RAPL
        try:
            server, body = exc.headers.get("Server", ""), json.loads(exc.read(65536))
        except ValueError:
            return ""
    except (OSError, ValueError):
        return ""
    if not server.startswith("rapl") or not isinstance(body, dict) or "backend" not in body:
        return ""
    return f"{body.get('backend')} model {body.get('model')}, {body.get('status')}"


def check_port(report: Report, settings: Settings) -> None:
    """HOST:PORT can be bound now; a warning when it is exposed without an API key."""
    host, port = settings.HOST, settings.PORT
    where = f"{host}:{port}"
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                 flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        report.fail("port", f"HOST={host} does not resolve ({exc.strerror})",
                    "set HOST to an address of this machine, such as 127.0.0.1")
        return
    with socket.socket(family, kind, proto) as sock:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress does
        try:
            sock.bind(address)
        except OSError as exc:
            running = exc.errno in (errno.EADDRINUSE, 10048) and running_rapl(host, port)
            if running:
                report.ok("port", f"RAPL already serves at {where} ({running}): these settings are in use")
                report.info("port", "to start another RAPL beside it, set PORT to a free port "
                            f"(for example PORT={free_port(host)})")
            elif exc.errno in (errno.EADDRINUSE, 10048):
                report.fail("port", f"{where} is already in use (another RAPL, or another program, listens "
                            "there)", f"stop that program, or set PORT to a free port (for example "
                            f"PORT={free_port(host)}) in .env or the environment")
            elif exc.errno in (errno.EADDRNOTAVAIL, 10049):
                report.fail("port", f"HOST={host} is not an address of this machine",
                            "set HOST=127.0.0.1 (or 0.0.0.0 to listen on every interface, with API_KEY set)")
            elif exc.errno in (errno.EACCES, errno.EPERM, 10013):
                report.fail("port", f"not allowed to listen on {where} (ports below 1024 need privileges)",
                            "set PORT to 1024 or above, e.g. PORT=8000")
            else:
                report.fail("port", f"cannot listen on {where}: {exc.strerror or exc}",
                            "change HOST or PORT")
            return
    report.ok("port", f"{where} is free")
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.API_KEY:
        report.warn("port", f"HOST={host} accepts connections from other machines and API_KEY is empty",
                    "set API_KEY, or keep HOST=127.0.0.1")
