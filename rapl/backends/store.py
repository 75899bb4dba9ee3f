"""The model store: where each backend's model comes from, and what this machine has cached.

A model is a local directory, or a hub id looked up, without network, in the cache of the hub its
backend's :class:`~rapl.catalog.BackendSpec` names (Hugging Face or ModelScope), and downloaded
from that hub only when the cache lacks it. A cached copy counts when it holds the spec's marker
file. The backends load through :func:`locate`; ``rapl check`` asks :func:`cached`, and
``rapl models`` lists :func:`inventory`: one lookup for all three. :class:`Pull` downloads a model
ahead of its first use (``rapl models pull``, ``POST /v1/models/{id}/download``) through the
backend's own download, in a thread of its own, and :func:`remove` deletes a cached copy.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..catalog import SPECS, BackendSpec

log = logging.getLogger(__name__)

HUGGING_FACE = "Hugging Face"
MODELSCOPE = "ModelScope"
LOCAL = "local directory"
GENERIC_MARKERS = frozenset({"config.json"})  # files nearly every hub model has: they name no backend

Download = Callable[[str], "str | os.PathLike[str]"]  # hub id -> the directory it was downloaded to
Complete = Callable[[Path], bool]  # whether a cached copy has everything the backend loads


@dataclass(frozen=True)
class CachedModel:
    """One model on this machine."""

    model_id: str  # its hub id, or the absolute path of a local directory
    backend: str  # the BACKEND it is for, or "other"
    size: int  # bytes
    path: str  # the directory holding its files
    source: str  # "local directory", "Hugging Face cache" or "ModelScope cache"


# --------------------------------------------------------------------------- one model


def looks_like_path(model: str) -> bool:
    """Whether ``model`` is meant as a directory rather than a hub id (``owner/name``)."""
    return (os.path.isabs(model) or model.startswith((".", "~")) or "\\" in model
            or model.count("/") >= 2)


def hub_id(spec: BackendSpec, model: str) -> str:
    """The hub id ``model`` names: as given when it has an owner (``iic/SenseVoiceSmall``), else the
    backend library's short name expanded (FunASR's ``paraformer-zh``, faster-whisper's ``small``
    once cached), else ``model`` itself."""
    expand = _SHORT_NAMES.get(spec.name)
    if "/" in model or expand is None:
        return model
    try:
        return expand(model) or model
    except Exception:  # noqa: BLE001 - library missing, or not a name it knows: use the name as is
        return model


def cached(spec: BackendSpec, model: str, complete: Complete | None = None) -> CachedModel | None:
    """``model`` on this machine, found without network: a local directory as it is, else its copy
    in the cache of ``spec.hub`` when that holds ``spec.marker`` (and passes ``complete``)."""
    local = Path(model).expanduser()
    if local.is_dir():
        where = os.path.abspath(local)
        return CachedModel(where, spec.name, tree_size(local), where, LOCAL)
    if looks_like_path(model):
        return None
    return _in_cache(spec, hub_id(spec, model), complete)


def locate(spec: BackendSpec, model: str, *, download: Download | None = None, complete: Complete | None = None,
           logger: logging.Logger | None = None) -> Path:
    """A directory holding ``model`` for the backend ``spec`` describes, downloading only when needed.

    A local directory is used as it is; a hub id comes from the hub's cache without network when
    the cache has it (see :func:`cached`), else ``download`` (default: the hub's snapshot download)
    fetches it. ``logger`` (the backend's) says which. Raises FileNotFoundError for a path that is
    no directory, and whatever the hub library raises when the download fails.
    """
    logger = logger or log
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    if looks_like_path(model):
        raise FileNotFoundError(errno.ENOENT, "no such model directory", model)
    model_id = hub_id(spec, model)
    found = _in_cache(spec, model_id, complete)
    if found is not None:
        logger.info("using the cached copy of %s from the %s at %s (no network)", model_id, found.source,
                    found.path)
        return Path(found.path)
    blocked = unreachable(spec)
    if blocked:  # fail in a moment, not after the hub library's retries (a first start offline)
        raise ConnectionError(f"{model_id} cannot be downloaded: {blocked}")
    logger.info("downloading %s from %s (first use)", model_id, spec.hub)
    return Path((download or _hub_download(spec.hub))(model_id))


def hub_host(spec: BackendSpec) -> str:
    """The host a download from ``spec``'s hub goes to (HF_ENDPOINT's, where set)."""
    return hub_address(spec)[0]


def hub_address(spec: BackendSpec) -> tuple[str, int]:
    """The host and port a download from ``spec``'s hub connects to (HF_ENDPOINT's, where set)."""
    if spec.hub == HUGGING_FACE and os.environ.get("HF_ENDPOINT"):
        url = urlsplit(os.environ["HF_ENDPOINT"])
        try:
            port = url.port
        except ValueError:  # not a port number: the hub library will say so
            port = None
        return url.hostname or spec.hub_host, port or (80 if url.scheme == "http" else 443)
    return spec.hub_host, 443


def unreachable(spec: BackendSpec, timeout: float = 3.0) -> str:
    """Why a download from ``spec``'s hub cannot work now, or "" when it may (a proxy is not probed)."""
    if spec.hub == HUGGING_FACE and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""
    host, port = hub_address(spec)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return ""
    except OSError:
        return f"{host} cannot be reached from this machine"


def _in_cache(spec: BackendSpec, model_id: str, complete: Complete | None) -> CachedModel | None:
    snapshot = _snapshot(spec.hub, model_id)
    if snapshot is None or not snapshot.is_dir():
        return None
    if spec.marker is not None and not (snapshot / spec.marker).is_file():
        return None
    if complete is not None and not complete(snapshot):
        return None
    return CachedModel(model_id, spec.name, tree_size(snapshot), str(snapshot), f"{spec.hub} cache")


def _modelscope_dir(model_id: str) -> Path | None:
    """``model_id`` in the ModelScope cache's own layouts (read from MODELSCOPE_CACHE now, not at import)."""
    root = modelscope_root()
    for candidate in (root / "models" / model_id, root / "hub" / model_id, root / "hub" / "models" / model_id):
        if candidate.is_dir():
            return candidate
    return None


def _snapshot(hub: str, model_id: str) -> Path | None:
    """The hub library's own cache lookup (its layouts vary by version), never the network; for
    ModelScope its classic layouts first, as its SDK may have read MODELSCOPE_CACHE once at import."""
    if hub == MODELSCOPE and (found := _modelscope_dir(model_id)) is not None:
        return found
    try:
        if hub == MODELSCOPE:
            from modelscope.hub.snapshot_download import snapshot_download
        else:
            from huggingface_hub import snapshot_download
        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, not a valid id, or the library is missing
        return None


def _hub_download(hub: str) -> Download:
    def download(model_id: str) -> str:
        if hub == MODELSCOPE:
            from modelscope.hub.snapshot_download import snapshot_download
        else:
            from huggingface_hub import snapshot_download
        return str(snapshot_download(model_id))

    return download


def _funasr_name(model: str) -> str:
    from funasr.download.name_maps_from_hub import name_maps_ms  # FunASR's public short-name table

    return name_maps_ms.get(model, model)


def _faster_whisper_name(model: str) -> str:
    from faster_whisper import download_model  # public; resolves "small" to its repo, offline here

    return _hf_repo_id(Path(download_model(model, local_files_only=True))) or model


# Short names only the backend's library knows, by BACKEND.
_SHORT_NAMES: dict[str, Callable[[str], str]] = {"sensevoice": _funasr_name, "whisper": _faster_whisper_name}


def _hf_repo_id(snapshot: Path) -> str | None:
    """owner/name from a Hugging Face cache path (.../models--owner--name/snapshots/<rev>)."""
    parts = snapshot.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return None


# --------------------------------------------------------------------------- download ahead, remove


def download_dir(spec: BackendSpec, model_id: str) -> Path:
    """Where the hub library writes ``model_id`` while it downloads (what a pull's progress measures)."""
    if spec.hub == MODELSCOPE:
        return _modelscope_dir(model_id) or modelscope_root() / "models" / model_id
    try:
        from huggingface_hub import constants

        root = Path(constants.HF_HUB_CACHE)
    except ImportError:
        root = Path.home() / ".cache" / "huggingface" / "hub"
    return root / ("models--" + model_id.replace("/", "--"))


class Pull:
    """One model downloading into its hub's cache, in a thread of its own (never the model thread).

    ``fetch`` is the backend's own way to a local directory (rapl.backends.fetch): a cached copy
    is found without network, else the backend's hub library downloads it (offline: at once, the
    reason in :attr:`error`). Progress is the bytes in the cache's folder for the model so far.
    """

    def __init__(self, spec: BackendSpec, model: str, fetch: Callable[[str], Path]) -> None:
        self.spec, self.model, self._fetch = spec, model, fetch
        self.model_id = model if looks_like_path(model) else hub_id(spec, model)
        self.status = "downloading"  # then "done" or "failed"
        self.error: str | None = None
        self.exception: BaseException | None = None
        self.path: str | None = None
        self.started = time.time()
        self.seconds: float | None = None
        self._before = 0
        self._done = threading.Event()

    def start(self) -> Pull:
        """Begin the download; returns self."""
        self._before = tree_size(download_dir(self.spec, self.model_id))
        threading.Thread(target=self._run, name="rapl-pull", daemon=True).start()
        return self

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self.path = str(self._fetch(self.model))
            self.status = "done"
        except BaseException as exc:  # noqa: BLE001 - reported to whoever asked, never raised in a thread
            self.error = f"{type(exc).__name__}: {exc}"
            self.exception = exc
            self.status = "failed"
            log.warning("download of %s failed: %s", self.model_id, self.error)
        finally:
            self.seconds = round(time.perf_counter() - started, 2)
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the download has ended (done or failed) within ``timeout`` seconds."""
        return self._done.wait(timeout)

    @property
    def bytes(self) -> int:
        """Bytes on disk for the model now: its finished files and those being written."""
        if self.path is not None:
            return tree_size(Path(self.path))
        return max(0, tree_size(download_dir(self.spec, self.model_id)) - self._before)

    def progress(self) -> dict[str, Any]:
        """What the API and the command line show."""
        body: dict[str, Any] = {"model": self.model_id, "status": self.status, "bytes": self.bytes,
                                "seconds": self.seconds if self.seconds is not None
                                else round(time.time() - self.started, 1)}
        if self.error:
            body["error"] = self.error
        return body


def remove(spec: BackendSpec, model: str) -> CachedModel | None:
    """Delete ``model``'s cached copy from its hub's cache; the copy deleted, or None when there is none.

    Raises ValueError for a local directory (RAPL deletes only what a hub library downloaded)."""
    found = cached(spec, model)
    if found is None:
        return None
    if found.source == LOCAL:
        raise ValueError(f"{model} is a local directory, not a cached download: RAPL leaves it alone")
    if spec.hub == HUGGING_FACE:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
        for repo in info.repos:
            if repo.repo_id == found.model_id and repo.repo_type == "model":
                info.delete_revisions(*(rev.commit_hash for rev in repo.revisions)).execute()
        shutil.rmtree(download_dir(spec, found.model_id), ignore_errors=True)  # its refs and locks too
    else:
        shutil.rmtree(found.path)
    return found


# --------------------------------------------------------------------------- what is cached


@dataclass(frozen=True)
class Inventory:
    """Both caches, read once: where they are and the models in them."""

    hf_cache: Path | None  # None: huggingface_hub is not installed
    hf_note: str | None  # why the Hugging Face cache could not be read, if so
    modelscope_cache: Path
    models: tuple[CachedModel, ...]


def inventory() -> Inventory:
    """Every model in the Hugging Face and ModelScope caches, each with the backend it is for."""
    hf_dir, hf_found, note = hf_models()
    ms_dir = modelscope_root()
    return Inventory(hf_dir, note, ms_dir, tuple(hf_found + modelscope_models(ms_dir)))


def hf_models() -> tuple[Path | None, list[CachedModel], str | None]:
    """(the Hugging Face hub cache, the models in it, a note when it cannot be read)."""
    try:
        from huggingface_hub import constants, scan_cache_dir
    except ImportError:
        return None, [], "huggingface_hub is not installed"
    cache_dir = Path(constants.HF_HUB_CACHE)
    if not cache_dir.is_dir():
        return cache_dir, [], None
    try:
        info = scan_cache_dir(cache_dir)
    except Exception as exc:  # noqa: BLE001 - a damaged cache must not stop the listing
        return cache_dir, [], f"could not scan it: {exc}"
    found = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        names = {f.file_name for rev in repo.revisions for f in rev.files}
        snapshot = max(repo.revisions, key=lambda r: r.last_modified).snapshot_path if repo.revisions \
            else repo.repo_path
        found.append(CachedModel(repo.repo_id, backend_of(repo.repo_id, names, HUGGING_FACE), repo.size_on_disk,
                                 str(snapshot), f"{HUGGING_FACE} cache"))
    return cache_dir, sorted(found, key=lambda m: m.model_id.lower()), None


def modelscope_root() -> Path:
    """The ModelScope cache: MODELSCOPE_CACHE, else ~/.cache/modelscope.

    The classic SDK keeps models in ~/.cache/modelscope/hub/<owner>/<name>, the newer
    modelscope_hub in ~/.cache/modelscope/models/<owner>--<name>/snapshots/<rev>: scanning
    ~/.cache/modelscope finds both.
    """
    env = os.environ.get("MODELSCOPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "modelscope"


def modelscope_models(root: Path | None = None, max_depth: int = 6) -> list[CachedModel]:
    """Models in the ModelScope cache: directories holding configuration.json or a ModelScope backend's marker."""
    root = modelscope_root() if root is None else root
    if not root.is_dir():
        return []
    markers = {"configuration.json"} | {s.marker for s in SPECS.values() if s.hub == MODELSCOPE and s.marker}
    found: dict[str, CachedModel] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "datasets")
        if markers.isdisjoint(filenames):
            if depth >= max_depth:
                dirnames[:] = []
            continue
        dirnames[:] = []  # a model directory: do not look for models inside it
        model_id = _modelscope_id(here.relative_to(root).parts)
        model = CachedModel(model_id, backend_of(model_id, _walk_files(here), MODELSCOPE), tree_size(here),
                            str(here), f"{MODELSCOPE} cache")
        if model_id not in found or model.size > found[model_id].size:
            found[model_id] = model
    return sorted(found.values(), key=lambda m: m.model_id.lower())


def _modelscope_id(parts: tuple[str, ...]) -> str:
    if "snapshots" in parts:  # modelscope_hub layout: models/<owner>--<name>/snapshots/<rev>
        repo = parts[parts.index("snapshots") - 1] if parts.index("snapshots") else parts[0]
        return repo.removeprefix("models--").replace("--", "/", 1)
    while len(parts) > 2 and parts[0] in ("hub", "models"):
        parts = parts[1:]
    return "/".join(parts).replace("___", ".")  # ModelScope masks dots in names as ___


def backend_of(model_id: str, files: Iterable[str], hub: str) -> str:
    """The backend a cached model is for, from the specs of the backends on ``hub``, else "other".

    In turn: a backend the id names whose marker file the model has; the backend whose marker it
    has, where that marker is specific (not config.json); a backend the id names when no other
    backend's marker is there.
    """
    files = set(files)
    lowered = model_id.lower()
    specs = [s for s in SPECS.values() if s.hub == hub]
    named = [s for s in specs if s.name in lowered]
    for spec in named:
        if spec.marker is None or spec.marker in files:
            return spec.name
    for spec in specs:
        if spec.marker in files and spec.marker not in GENERIC_MARKERS:
            return spec.name
    for spec in named:
        if not any(o.marker in files for o in specs if o is not spec and o.marker):
            return spec.name
    return "other"


def _walk_files(path: Path) -> Iterable[str]:
    for _dirpath, _dirnames, filenames in os.walk(path):
        yield from filenames


def tree_size(path: Path) -> int:
    """Bytes of every file under ``path``, following links (a Hugging Face snapshot links to its blobs)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def human_size(n: int) -> str:
    """``n`` bytes as 1.5 MB, in powers of 1000."""
    if n <= 0:
        return "0 B"
    units = ("B", "kB", "MB", "GB", "TB")
    power = min(int(math.log(n, 1000)), len(units) - 1)
    return f"{n / 1000 ** power:.1f} {units[power]}" if power else f"{n} B"
