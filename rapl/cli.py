"""The command line: ``rapl`` / ``python -m rapl`` with subcommands serve (the default),
transcribe, models and check.

Every subcommand reads its settings as :func:`rapl.create_app` does: the dotenv file named
by ``ENV_FILE`` (default `.env`, empty for none) under the process environment.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import shutil
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .settings import DEFAULT_MODELS, Settings, SettingsError

log = logging.getLogger("rapl")

EXTENSIONS = {"json": "json", "verbose_json": "json", "text": "txt", "srt": "srt", "vtt": "vtt"}
# BACKEND -> (module to import, pip package) the backend needs.
LIBRARIES: dict[str, tuple[tuple[str, str], ...]] = {
    "whisper": (("faster_whisper", "faster-whisper"),),
    "sensevoice": (("funasr", "funasr"), ("torch", "torch"), ("kaldi_native_fbank", "kaldi-native-fbank")),
    "mlx": (("mlx_audio", "mlx-audio"),),
}
# BACKEND -> (hub it downloads from, host:port probed by `check`).
HUBS = {"whisper": ("Hugging Face", "huggingface.co"), "mlx": ("Hugging Face", "huggingface.co"),
        "sensevoice": ("ModelScope", "www.modelscope.cn")}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from . import __version__
    from .formats import FORMATS

    parser = argparse.ArgumentParser(
        prog="rapl", description="RAPL: a local speech-to-text server that speaks OpenAI's audio API. "
        "Settings come from .env and the environment (see .env.example).")
    parser.add_argument("--version", action="version", version=f"rapl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", help="serve the API on HOST:PORT (the default)",
                   description="Serve the OpenAI-compatible API with waitress on HOST:PORT.")
    tr = sub.add_parser("transcribe", help="transcribe audio files in-process",
                        description="Transcribe files with the configured backend and write one output "
                        "file per input, named <stem>.<ext>.")
    tr.add_argument("files", nargs="+", metavar="FILE", type=Path, help="audio or video files")
    tr.add_argument("--format", "-f", dest="response_format", choices=FORMATS, default="text",
                    help="output format (default: text)")
    tr.add_argument("--language", "-l", default=None,
                    help="spoken language as a code or name (default: detect)")
    tr.add_argument("--output", "-o", type=Path, default=None, metavar="DIR",
                    help="directory for the outputs (default: beside each input)")
    tr.add_argument("--verbose", "-v", action="store_true", help="log what the model does")
    sub.add_parser("models", help="list the models cached locally, per backend",
                   description="List the models in the Hugging Face and ModelScope caches, with sizes, "
                   "and mark the configured one.")
    sub.add_parser("check", help="verify the set-up (exit status 1 on any failure)",
                   description="Check the audio decoder, the backend library, the model and the port, "
                   "saying what to change when something is wrong.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    command = args.command or "serve"
    if command == "serve":
        return serve()
    if command == "transcribe":
        return transcribe(args.files, args.response_format, args.language, args.output, args.verbose)
    if command == "models":
        return models()
    return check()


# --------------------------------------------------------------------------- settings


def load_env() -> str | None:
    """Read the dotenv file as create_app does; returns its path, or None when none was read."""
    from dotenv import load_dotenv

    env_file = os.environ.get("ENV_FILE", ".env")
    if env_file and os.path.isfile(env_file):
        load_dotenv(env_file, override=False)
        return env_file
    return None


def _settings_or_none() -> Settings | None:
    load_env()
    try:
        return Settings.load()
    except SettingsError as exc:
        print(f"rapl: invalid setting: {exc}", file=sys.stderr, flush=True)
        return None


# --------------------------------------------------------------------------- serve


def serve() -> int:
    """Serve the app with waitress on HOST:PORT (see rapl.server); 2: an invalid setting, 3: cannot listen.

    The port is bound before the model loads, so a busy port is reported at once. Ctrl+C, SIGINT
    or SIGTERM stop it cleanly: no new connections, the running transcription finishes and its
    answer is sent, queued ones get 503.
    """
    from . import create_app_or_exit
    from .server import ListenError, Server

    settings = _settings_or_none()
    if settings is None:
        return 2
    try:
        server = Server(settings)
    except ListenError as exc:
        print(f"rapl: {exc}", file=sys.stderr, flush=True)
        return exc.status
    server.attach(create_app_or_exit())
    server.announce()
    server.run()  # returns after a graceful stop
    return 0


# --------------------------------------------------------------------------- transcribe


def transcribe(files: list[Path], response_format: str = "text", language: str | None = None,
               output: Path | None = None, verbose: bool = False) -> int:
    """Transcribe ``files`` in-process; 0 when all succeeded, 1 when any failed, 2 on bad usage."""
    from tqdm import tqdm

    from . import audio, backends, configure_logging, formats, languages, pipeline
    from .errors import APIError
    from .transcription import Options
    from .vad import Segmenter
    from .worker import failure_message

    settings = _settings_or_none()
    if settings is None:
        return 2
    configure_logging(settings.LOG_LEVEL if verbose or settings.LOG_LEVEL == "DEBUG" else "WARNING")
    if output is not None:
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"rapl: cannot create the output directory {output}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    try:
        backend = backends.create(settings)
    except Exception as exc:  # noqa: BLE001 - a missing library or bad setting: say it and stop
        print(f"rapl: cannot use BACKEND={settings.BACKEND}: {exc}", file=sys.stderr)
        return 2
    print(f"rapl: loading {settings.BACKEND} model {settings.model} ...", file=sys.stderr, flush=True)
    segmenter = Segmenter(settings)
    try:
        caps = backend.load()
        segmenter.load()
    except Exception as exc:  # noqa: BLE001 - report it the way the server does
        print(f"rapl: {failure_message(backend, exc)} Detail: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    options = Options(language=languages.normalize(language))
    try:
        pipeline.check_options(caps, options, f"the {backend.name} model {backends.public_name(backend.model)}")
    except APIError as exc:
        print(f"rapl: {exc.message}", file=sys.stderr)
        return 2

    ext = EXTENSIONS[response_format]
    written: dict[Path, Path] = {}
    failed = 0
    bar = tqdm(files, desc="rapl transcribe", unit="file", disable=not settings.PROGRESS, dynamic_ncols=True)
    for src in bar:
        dst = (output if output is not None else src.parent) / f"{src.stem}.{ext}"
        try:
            _check_destination(src, dst, written)
            pcm = audio.decode(src.read_bytes(), settings.MAX_AUDIO_SECONDS)
            chunks = segmenter.plan(pcm, merge=caps.segments_audio)
            result = pipeline.run(backend, pcm, options, chunks, label=src.name, progress=settings.PROGRESS)
            body = formats.render(result, response_format)
            text = json.dumps(body, ensure_ascii=False, indent=2) if isinstance(body, dict) else body
            dst.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            failed += 1
            tqdm.write(f"rapl: {src}: failed: {_reason(exc, src)}", file=sys.stderr)
            continue
        written[dst.resolve()] = src
        tqdm.write(f"{src} -> {dst}", file=sys.stdout)
    bar.close()
    done = len(files) - failed
    print(f"rapl: transcribed {done} of {len(files)} file{'s' if len(files) != 1 else ''}"
          + (f"; {failed} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _check_destination(src: Path, dst: Path, written: dict[Path, Path]) -> None:
    if dst.resolve() == src.resolve():
        raise ValueError(f"the output {dst} would overwrite the input; use --output DIR")
    if dst.resolve() in written:
        raise ValueError(f"the output {dst} was already written for {written[dst.resolve()]}; "
                         "rename one of them or use separate runs")


def _reason(exc: BaseException, src: Path) -> str:
    from .errors import APIError

    if isinstance(exc, APIError):
        return exc.message.replace("The uploaded file", "The file").replace("Send a common", "Use a common")
    if isinstance(exc, OSError) and exc.strerror:
        other = exc.filename is not None and str(exc.filename) != str(src)
        return f"{exc.strerror} ({exc.filename})" if other else exc.strerror
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class CachedModel:
    """One model found on disk."""

    model_id: str
    backend: str  # sensevoice, whisper, mlx, or "other"
    size: int  # bytes
    path: str
    source: str  # "Hugging Face cache", "ModelScope cache" or "local directory"


def hf_cache() -> tuple[str | None, list[CachedModel], str | None]:
    """(cache directory, models in the Hugging Face hub cache, a note when it cannot be read)."""
    try:
        from huggingface_hub import constants, scan_cache_dir
    except ImportError:
        return None, [], "huggingface_hub is not installed"
    cache_dir = str(constants.HF_HUB_CACHE)
    if not os.path.isdir(cache_dir):
        return cache_dir, [], None
    try:
        info = scan_cache_dir()
    except Exception as exc:  # noqa: BLE001 - a damaged cache must not stop the listing
        return cache_dir, [], f"could not scan it: {exc}"
    found = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        names = {f.file_name for rev in repo.revisions for f in rev.files}
        snapshot = max(repo.revisions, key=lambda r: r.last_modified).snapshot_path if repo.revisions \
            else repo.repo_path
        found.append(CachedModel(repo.repo_id, _backend_of(repo.repo_id, names), repo.size_on_disk,
                                 str(snapshot), "Hugging Face cache"))
    return cache_dir, sorted(found, key=lambda m: m.model_id.lower()), None


def modelscope_root() -> Path:
    """The ModelScope cache: MODELSCOPE_CACHE, else ~/.cache/modelscope.

    The classic SDK keeps models in ~/.cache/modelscope/hub/<owner>/<name>, the newer
    modelscope_hub in ~/.cache/modelscope/models/<owner>--<name>/snapshots/<rev>: scanning
    ~/.cache/modelscope finds both.
    """
    env = os.environ.get("MODELSCOPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "modelscope"


def modelscope_cache(root: Path | None = None, max_depth: int = 6) -> list[CachedModel]:
    """Models in the ModelScope cache: directories holding configuration.json or config.yaml."""
    root = modelscope_root() if root is None else root
    found: dict[str, CachedModel] = {}
    if not root.is_dir():
        return []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "datasets")
        if "configuration.json" not in filenames and "config.yaml" not in filenames:
            if depth >= max_depth:
                dirnames[:] = []
            continue
        dirnames[:] = []  # a model directory: do not look for models inside it
        model_id = _modelscope_id(here.relative_to(root).parts)
        model = CachedModel(model_id, _backend_of(model_id, set(_walk_files(here)), modelscope=True),
                            _tree_size(here), str(here), "ModelScope cache")
        if model_id not in found or model.size > found[model_id].size:
            found[model_id] = model
    return sorted(found.values(), key=lambda m: m.model_id.lower())


def _modelscope_id(parts: tuple[str, ...]) -> str:
    parts = tuple(parts)
    if "snapshots" in parts:  # modelscope_hub layout: models/<owner>--<name>/snapshots/<rev>
        repo = parts[parts.index("snapshots") - 1] if parts.index("snapshots") else parts[0]
        return repo.removeprefix("models--").replace("--", "/", 1)
    while len(parts) > 2 and parts[0] in ("hub", "models"):
        parts = parts[1:]
    return "/".join(parts).replace("___", ".")  # ModelScope masks dots in names as ___


def _walk_files(path: Path) -> Iterable[str]:
    for _dirpath, _dirnames, filenames in os.walk(path):
        yield from filenames


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size  # follows links to blobs
            except OSError:
                pass
    return total


def _backend_of(model_id: str, files: set[str], modelscope: bool = False) -> str:
    lowered = model_id.lower()
    if "mlx" in lowered:
        return "mlx"
    if "sensevoice" in lowered or (modelscope and "config.yaml" in files and "model.pt" in files):
        return "sensevoice"
    if "whisper" in lowered and "model.bin" in files:
        return "whisper"
    if "model.bin" in files and ("vocabulary.txt" in files or "vocabulary.json" in files):
        return "whisper"  # a CTranslate2 Whisper conversion under another name
    return "other"


def resolve_model_id(settings: Settings) -> str:
    """The hub id the configured model means (short names like whisper's 'small' expanded)."""
    model = settings.model
    if "/" in model:
        return model
    try:
        if settings.BACKEND == "whisper":
            from faster_whisper.utils import _MODELS

            return _MODELS.get(model, model)
        if settings.BACKEND == "sensevoice":
            from funasr.download.name_maps_from_hub import name_maps_ms

            return name_maps_ms.get(model, model)
    except Exception:  # noqa: BLE001 - library missing or changed: use the name as is
        pass
    return model


def _size(n: int) -> str:
    if n <= 0:
        return "0 B"
    units = ("B", "kB", "MB", "GB", "TB")
    power = min(int(math.log(n, 1000)), len(units) - 1)
    return f"{n / 1000 ** power:.1f} {units[power]}" if power else f"{n} B"


def models() -> int:
    """Print the locally cached models per backend, the configured one marked with '*'."""
    settings = _settings_or_none()
    wanted = resolve_model_id(settings) if settings else None
    local: list[CachedModel] = []
    if settings is not None:
        print(f"Configured: BACKEND={settings.BACKEND}, model {settings.model}"
              + ("" if settings.LOCAL_MODEL else " (LOCAL_MODEL empty: the backend's default)"))
        path = os.path.expanduser(settings.model)
        if os.path.isdir(path):
            local.append(CachedModel(os.path.abspath(path), settings.BACKEND, _tree_size(Path(path)),
                                     os.path.abspath(path), "local directory"))
            wanted = os.path.abspath(path)
    hf_dir, hf_models, hf_note = hf_cache()
    ms_dir = modelscope_root()
    ms_models = modelscope_cache(ms_dir)
    print(f"Hugging Face cache: {hf_dir or 'unknown'}" + (f" ({hf_note})" if hf_note else "")
          + ("" if hf_dir is None or os.path.isdir(hf_dir) else " (does not exist yet)"))
    print(f"ModelScope cache:   {ms_dir}" + ("" if ms_dir.is_dir() else " (does not exist yet)"))
    everything = local + hf_models + ms_models
    width = max([len(m.model_id) for m in everything] + [20])
    for backend in (*DEFAULT_MODELS, "other"):
        group = [m for m in everything if m.backend == backend]
        if backend == "other" and not group:
            continue
        print(f"\n{backend}:" if backend != "other" else "\nother (not recognised as a RAPL backend's model):")
        if not group:
            print(f"    (none cached; default model {DEFAULT_MODELS[backend]})")
        for m in group:
            mark = "*" if wanted is not None and m.model_id == wanted else " "
            where = m.source if m.path == m.model_id else f"{m.source}  {m.path}"
            print(f"  {mark} {m.model_id:<{width}}  {_size(m.size):>9}  {where}")
    if settings is not None and wanted not in {m.model_id for m in everything}:
        print(f"\nThe configured model {settings.model} is not cached here: the server downloads it on "
              "first start, or point LOCAL_MODEL at a local model directory (see `rapl check`).")
    else:
        print("\n* = the configured model")
    return 0


# --------------------------------------------------------------------------- check


class _Report:
    def __init__(self) -> None:
        self.failures = 0
        self.warnings = 0

    def line(self, tag: str, what: str, message: str, fix: str | None = None) -> None:
        print(f"{tag:<5} {what}: {message}", flush=True)
        if fix:
            print(f"      -> {fix}", flush=True)

    def ok(self, what: str, message: str) -> None:
        self.line("ok", what, message)

    def info(self, what: str, message: str) -> None:
        self.line("info", what, message)

    def warn(self, what: str, message: str, fix: str | None = None) -> None:
        self.warnings += 1
        self.line("WARN", what, message, fix)

    def fail(self, what: str, message: str, fix: str | None = None) -> None:
        self.failures += 1
        self.line("FAIL", what, message, fix)


def check() -> int:
    """Verify decoder, backend library, model and port; 1 when anything failed."""
    report = _Report()
    env_file = load_env()
    try:
        settings: Settings | None = Settings.load()
    except SettingsError as exc:
        settings = None
        report.fail("settings", str(exc), f"fix it in {env_file or 'the environment'} (see .env.example)")
    else:
        report.ok("settings", f"BACKEND={settings.BACKEND}, model {settings.model}, "
                  f"{'read ' + env_file if env_file else 'no .env file read'}")
    _check_decoder(report)
    if settings is not None:
        if _check_backend(report, settings):
            _check_model(report, settings)
        _check_port(report, settings)
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


def _check_decoder(report: _Report) -> None:
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


def _check_backend(report: _Report, settings: Settings) -> bool:
    import importlib

    from . import backends

    ok = True
    for module, package in LIBRARIES.get(settings.BACKEND, ()):
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
    libs = ", ".join(package for _module, package in LIBRARIES.get(settings.BACKEND, ()))
    report.ok("backend", f"BACKEND={settings.BACKEND}: {libs} import{'s' if ',' not in libs else ''}")
    return True


def _looks_like_path(model: str) -> bool:
    return (os.path.isabs(model) or model.startswith((".", "~")) or "\\" in model
            or model.count("/") >= 2)


def _cached(backend: str, model_id: str) -> CachedModel | None:
    _dir, hf_models, _note = hf_cache()
    candidates = hf_models + modelscope_cache()
    found = next((m for m in candidates if m.model_id == model_id and m.size > 0), None)
    if found is None and backend == "sensevoice":
        try:  # ask ModelScope itself, as the backend does (its cache layouts vary by version)
            from .backends.sensevoice import cached_modelscope

            path = cached_modelscope(model_id)
        except Exception:  # noqa: BLE001
            path = None
        if path:
            found = CachedModel(model_id, backend, _tree_size(Path(path)), path, "ModelScope cache")
    return found


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _check_model(report: _Report, settings: Settings) -> None:
    model = settings.model
    setting = f"LOCAL_MODEL={settings.LOCAL_MODEL}" if settings.LOCAL_MODEL else \
        f"LOCAL_MODEL empty: the {settings.BACKEND} default"
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        expected = {"whisper": "model.bin", "mlx": "config.json", "sensevoice": None}[settings.BACKEND]
        if expected and not os.path.isfile(os.path.join(path, expected)):
            report.warn("model", f"LOCAL_MODEL={settings.LOCAL_MODEL} is a directory without {expected}; "
                        f"it may not be a {settings.BACKEND} model",
                        "point LOCAL_MODEL at the directory that holds the model files")
        else:
            report.ok("model", f"LOCAL_MODEL is a local directory ({os.path.abspath(path)}, "
                      f"{_size(_tree_size(Path(path)))})")
        return
    if _looks_like_path(model):
        report.fail("model", f"LOCAL_MODEL={settings.LOCAL_MODEL} is not a directory (it does not exist "
                    "or is not readable)",
                    "set LOCAL_MODEL to an existing model directory, or to a hub id such as "
                    f"{DEFAULT_MODELS[settings.BACKEND]} (empty picks that default)")
        return
    model_id = resolve_model_id(settings)
    cached = _cached(settings.BACKEND, model_id)
    if cached is not None:
        report.ok("model", f"{model_id} ({setting}) is in the {cached.source} ({cached.path}, {_size(cached.size)})")
        return
    hub, host = HUBS[settings.BACKEND]
    if settings.BACKEND != "sensevoice" and os.environ.get("HF_ENDPOINT"):
        host = os.environ["HF_ENDPOINT"].split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") \
        and settings.BACKEND != "sensevoice"
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    offline_fix = ("to work offline, download it on a connected machine and copy the model directory here, "
                   "then point LOCAL_MODEL at that local directory")
    message = f"{model_id} ({setting}) is not in the local cache: the server downloads it from {hub} on first start"
    if offline or (not proxied and not _reachable(host)):
        why = "HF_HUB_OFFLINE is set" if offline else f"{host} cannot be reached from this machine"
        report.fail("model", f"{message}, but {why}", offline_fix)
    else:
        report.warn("model", f"{message} (needs {host})", offline_fix)


def _check_port(report: _Report, settings: Settings) -> None:
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
            if exc.errno in (errno.EADDRINUSE, 10048):
                report.fail("port", f"{where} is already in use (another RAPL, or another program, listens "
                            "there)", f"stop that program, or set PORT to a free port (for example "
                            f"PORT={_free_port(host)}) in .env or the environment")
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


def _free_port(host: str) -> int:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
            return sock.getsockname()[1]
    except OSError:
        return 8001
