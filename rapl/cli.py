"""The command line: ``rapl`` / ``python -m rapl`` with subcommands serve (the default),
transcribe, models (list, pull, rm) and check: parsing, dispatch and printing. The work is done where the server
does it: rapl.core.pipeline (transcribe), rapl.backends.store (models), rapl.check (check).

Every subcommand reads its settings as :func:`rapl.create_app` does: the process environment
over the dotenv file named by ``ENV_FILE`` (default `.env`, empty for none), without changing
``os.environ``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .settings import Settings, SettingsError

if TYPE_CHECKING:
    from .core.models import ModelEntry

log = logging.getLogger("rapl")

EXTENSIONS = {"json": "json", "verbose_json": "json", "text": "txt", "srt": "srt", "vtt": "vtt"}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from . import __version__
    from .transcript.formats import FORMATS

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
    mo = sub.add_parser("models", help="list, download (pull) or delete (rm) models",
                        description="List the models in the Hugging Face and ModelScope caches, with sizes, "
                        "the configured one marked, and MODELS_FILE's models; or download one ahead of first "
                        "use, or delete a cached one.")
    actions = mo.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="list the models (the default)")
    pull = actions.add_parser("pull", help="download a model into its hub's cache, with a progress bar",
                              description="Download a model through its backend's hub library: NAME is a "
                              "MODELS_FILE id or alias, the .env model's name, or a hub id for --backend.")
    remove = actions.add_parser("rm", help="delete a model's cached download",
                                description="Delete a model from the Hugging Face or ModelScope cache (never "
                                "a local directory). NAME as for pull.")
    for action in (pull, remove):
        action.add_argument("name", metavar="NAME", help="a configured model id or alias, or a hub id")
        action.add_argument("--backend", "-b", default=None,
                            help="the backend a hub id is for (default: BACKEND)")
    remove.add_argument("--yes", "-y", action="store_true", help="delete without asking")
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
        if args.action == "pull":
            return pull(args.name, args.backend)
        if args.action == "rm":
            return remove(args.name, args.backend, args.yes)
        return models()
    return check()


# --------------------------------------------------------------------------- settings


def env_file() -> str | None:
    """The dotenv file create_app reads (ENV_FILE, default .env), or None when there is none to read."""
    name = os.environ.get("ENV_FILE", ".env")
    return name if name and os.path.isfile(name) else None


def load_settings() -> Settings:
    """The settings as create_app reads them: the environment over the dotenv file."""
    from .settings import use_env_file

    use_env_file(env_file())  # the CLI owns its process: `.env` reaches the hub libraries too
    return Settings.load()


def _settings_or_none() -> Settings | None:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"rapl: invalid setting: {exc}", file=sys.stderr, flush=True)
        return None


# --------------------------------------------------------------------------- serve


def serve() -> int:
    """Serve the app with waitress on HOST:PORT (see rapl.http.server); 2: an invalid setting, 3: cannot listen.

    The port is bound before the model loads, so a busy port is reported at once. Ctrl+C, SIGINT
    or SIGTERM stop it cleanly: no new connections, the running transcription finishes and its
    answer is sent, queued ones get 503.
    """
    from . import create_app_or_exit
    from .http.server import ListenError, Server

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

    from . import audio, backends
    from .audio.vad import Segmenter
    from .core import pipeline
    from .core.worker import failure_message
    from .errors import RaplError
    from .logs import configure_logging
    from .transcript import formats, languages
    from .transcript.transcription import Options

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
    except RaplError as exc:
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
            tqdm.write(f"rapl: {src}: failed: {describe(exc, src)}", file=sys.stderr)
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


def describe(exc: BaseException, src: Path) -> str:
    """An error's own message: a RaplError's words, an OSError's reason (and the file, when it is
    not ``src``), else its type and text."""
    from .errors import APIError, RaplError

    if isinstance(exc, (RaplError, APIError)):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        other = exc.filename is not None and str(exc.filename) != str(src)
        return f"{exc.strerror} ({exc.filename})" if other else exc.strerror
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- models


def models() -> int:
    """Print the locally cached models per backend (rapl.backends.store), the configured one marked with '*'."""
    from .backends import store
    from .catalog import SPECS

    settings = _settings_or_none()
    inventory = store.inventory()
    everything = list(inventory.models)
    wanted = None
    if settings is not None:
        print(f"Configured: BACKEND={settings.BACKEND}, model {settings.model}"
              + ("" if settings.LOCAL_MODEL else " (LOCAL_MODEL empty: the backend's default)"))
        spec = SPECS[settings.BACKEND]
        found = store.cached(spec, settings.model)
        if found is not None and found.source == store.LOCAL:
            everything.insert(0, found)
        wanted = found.model_id if found is not None else store.hub_id(spec, settings.model)
    hf_dir, ms_dir = inventory.hf_cache, inventory.modelscope_cache
    print(f"Hugging Face cache: {hf_dir or 'unknown'}" + (f" ({inventory.hf_note})" if inventory.hf_note else "")
          + ("" if hf_dir is None or hf_dir.is_dir() else " (does not exist yet)"))
    print(f"ModelScope cache:   {ms_dir}" + ("" if ms_dir.is_dir() else " (does not exist yet)"))
    width = max([len(m.model_id) for m in everything] + [20])
    for backend in (*SPECS, "other"):
        group = [m for m in everything if m.backend == backend]
        if backend == "other" and not group:
            continue
        print(f"\n{backend}:" if backend != "other" else "\nother (not recognised as a RAPL backend's model):")
        if not group:
            print(f"    (none cached; default model {SPECS[backend].default_model})")
        for m in group:
            mark = "*" if m.model_id == wanted else " "
            where = m.source if m.path == m.model_id else f"{m.source}  {m.path}"
            print(f"  {mark} {m.model_id:<{width}}  {store.human_size(m.size):>9}  {where}")
    if settings is not None and wanted not in {m.model_id for m in everything}:
        print(f"\nThe configured model {settings.model} is not cached here: the server downloads it on "
              "first start, or point LOCAL_MODEL at a local model directory (see `rapl check`).")
    else:
        print("\n* = the configured model")
    if settings is not None and settings.MODELS_FILE:
        return _models_file(settings)
    return 0


def _models_file(settings: Settings) -> int:
    """The models MODELS_FILE lists, each with whether it is cached here; 2 when the file is invalid."""
    from .backends import store
    from .catalog import SPECS
    from .core.models import ModelsFileError, read

    try:
        entries = read(settings.MODELS_FILE, settings)
    except ModelsFileError as exc:
        print(f"\nMODELS_FILE is invalid:\n{exc}", flush=True)
        return 2
    print(f"\nModels ({settings.MODELS_FILE}; at most {settings.MAX_LOADED_MODELS} loaded at once; the first "
          "is the default):")
    for entry in entries:
        found = store.cached(SPECS[entry.backend], entry.model)
        where = "not cached: downloaded on first use" if found is None else found.source
        aliases = f" (also {', '.join(entry.aliases)})" if entry.aliases else ""
        print(f"  {entry.id}{aliases}: {entry.backend} {entry.model}  [{where}]")
    return 0


def _named_model(name: str, backend: str | None) -> tuple[Settings, ModelEntry] | None:
    """The model ``name`` means: a MODELS_FILE id or alias, the .env model's name, else a hub id for
    ``backend`` (default BACKEND); None (after saying why) when the settings or the file are invalid."""
    from .backends import public_name
    from .catalog import SPECS
    from .core.models import ModelEntry, ModelsFileError, read

    settings = _settings_or_none()
    if settings is None:
        return None
    if backend is not None and backend not in SPECS:
        print(f"rapl: --backend {backend!r} is invalid: use one of {', '.join(SPECS)}", file=sys.stderr)
        return None
    try:
        entries = read(settings.MODELS_FILE, settings) if settings.MODELS_FILE else [
            ModelEntry(id=public_name(settings.model), backend=settings.BACKEND, model=settings.model)]
    except ModelsFileError as exc:
        print(f"rapl: MODELS_FILE is invalid:\n{exc}", file=sys.stderr)
        return None
    for entry in entries:
        if backend in (None, entry.backend) and name in (entry.id, *entry.aliases, entry.model):
            return settings, entry
    return settings, ModelEntry(id=name, backend=backend or settings.BACKEND, model=name)


def pull(name: str, backend: str | None = None) -> int:
    """Download a model through its backend's hub library, with a progress bar; 1 when it cannot."""
    from tqdm import tqdm

    from . import backends
    from .backends import store
    from .catalog import SPECS
    from .core.worker import failure_message

    named = _named_model(name, backend)
    if named is None:
        return 2
    settings, entry = named
    spec = SPECS[entry.backend]
    found = store.cached(spec, entry.model)
    if found is not None:
        print(f"{entry.model} is already here: {found.source} {found.path} ({store.human_size(found.size)})")
        return 0
    print(f"Downloading {entry.backend} model {entry.model} from {spec.hub}", flush=True)
    job = store.Pull(spec, entry.model, lambda model: backends.fetch(entry.backend, model)).start()
    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=entry.model, file=sys.stderr) as bar:
        while not job.wait(0.2):
            bar.update(job.bytes - bar.n)
        bar.update(job.bytes - bar.n)
    if job.status == "failed":
        model = backends.create(entry.settings(settings))
        print(f"rapl: {failure_message(model, job.exception or OSError(job.error))}\nDetail: {job.error}",
              file=sys.stderr)
        return 1
    print(f"Downloaded {entry.model} into {job.path} ({store.human_size(job.bytes)}, {job.seconds:g} s)")
    return 0


def remove(name: str, backend: str | None = None, yes: bool = False) -> int:
    """Delete a model's cached download (asking first unless ``yes``); 1 when there is none or it is refused."""
    from .backends import store
    from .catalog import SPECS

    named = _named_model(name, backend)
    if named is None:
        return 2
    _settings, entry = named
    spec = SPECS[entry.backend]
    found = store.cached(spec, entry.model)
    if found is None:
        print(f"rapl: {entry.model} is not in the {spec.hub} cache: nothing to delete", file=sys.stderr)
        return 1
    if found.source == store.LOCAL:
        print(f"rapl: {entry.model} is a local directory, not a cached download: RAPL leaves it alone",
              file=sys.stderr)
        return 1
    if not yes:
        if not sys.stdin.isatty():
            print(f"rapl: would delete {found.path} ({store.human_size(found.size)}); add --yes to do it",
                  file=sys.stderr)
            return 1
        answer = input(f"Delete {found.model_id} ({store.human_size(found.size)}) from {found.path}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 1
    store.remove(spec, entry.model)
    print(f"Deleted {found.model_id} ({store.human_size(found.size)}) from the {found.source}")
    return 0


# --------------------------------------------------------------------------- check


def check() -> int:
    """Verify decoder, backend library, model and port (rapl.check); 1 when anything failed."""
    from . import check as checks

    return checks.run(env_file())
