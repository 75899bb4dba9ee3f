"""Several models in one server: the models file (``MODELS_FILE``), and the pool that picks one per request.

``MODELS_FILE`` names a TOML file with one table per model, keyed by the id clients send
(``config/models.toml.example``)::

    [models.dictation]
    backend = "sensevoice"
    model = "iic/SenseVoiceSmall"      # hub id or local directory
    aliases = ["whisper-1", "gpt-4o-transcribe"]
    language = "zh"                    # optional defaults: language, prompt, vocabulary_file, vad

The `.env` model (``BACKEND`` + ``LOCAL_MODEL``) is always one of them, under its public name
(or under the id of the table that names the same backend and model): it is the default,
which answers every name the file does not know unless ``STRICT_MODELS=true`` (404
``model_not_found``). Each model has its own :class:`rapl.core.worker.ModelWorker` and
:class:`rapl.service.Transcriber`, and all of them share the one model thread (a single-worker
executor), so only one model is ever touched at a time, in the order requests came. Models load
on first use; at most ``MAX_LOADED_MODELS`` stay loaded (and, with ``MODEL_MEMORY_MB``, no more
than that much resident memory as measured at each load), the least recently used one being
unloaded (on the model thread, after its queued jobs and before the load that needs its room) to
make way. :meth:`Models.pull` downloads a model ahead of its first use, off the model thread.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..backends import fetch, public_name, store
from ..backends.store import looks_like_path
from ..catalog import SPECS
from ..settings import Settings, SettingsError

log = logging.getLogger(__name__)
KEYS = {"backend": str, "model": str, "aliases": list, "language": str, "prompt": str,
        "vocabulary_file": str, "vad": bool}


class ModelsFileError(SettingsError):
    """The models file is invalid; the message names the file, the line and the setting."""


@dataclass(frozen=True)
class ModelEntry:
    """One model clients can choose: its id, what loads it, the names it also answers to, its defaults."""

    id: str
    backend: str
    model: str
    aliases: tuple[str, ...] = ()
    language: str | None = None
    prompt: str | None = None
    vocabulary_file: str | None = None
    vad: bool | None = None
    line: int = 0  # where its table starts in the models file (0: the .env model)
    alias_line: int = 0  # where its aliases are

    def settings(self, base: Settings) -> Settings:
        """``base`` with this model's backend, model and defaults."""
        changed: dict[str, Any] = {"BACKEND": self.backend, "LOCAL_MODEL": self.model}
        if self.vocabulary_file is not None:
            changed["VOCABULARY_FILE"] = self.vocabulary_file
        if self.vad is not None:
            changed["VAD"] = self.vad
        return replace(base, **changed)


def read(path: str | Path, base: Settings) -> list[ModelEntry]:
    """The models ``path`` lists, checked; the `.env` model first. Raises ModelsFileError (file, line, key)."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelsFileError(f"MODELS_FILE={path}: cannot be read ({exc.strerror or exc})") from None
    tomllib = _toml()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelsFileError(f"MODELS_FILE={path}: {exc}") from None
    unknown = sorted(set(data) - {"models"})
    if unknown:
        raise ModelsFileError(f"{file}:{_line(text, unknown[0])}: unknown table [{unknown[0]}]: the file holds "
                              "[models.<id>] tables only")
    tables = data.get("models", {})
    if not isinstance(tables, dict):
        raise ModelsFileError(f"{file}:{_line(text, 'models')}: 'models' must be tables: [models.<id>]")
    entries, problems, named = [], [], []  # named: every table's names, the invalid ones' too
    for key, table in tables.items():
        try:
            entries.append(_entry(file, text, key, table))
            named.append(entries[-1])
        except ModelsFileError as exc:
            problems.append(str(exc))
            aliases = table.get("aliases", []) if isinstance(table, dict) else []
            named.append(ModelEntry(id=key, backend="", model="", line=_line(text, key),
                                    aliases=tuple(a for a in aliases if isinstance(a, str)) if isinstance(
                                        aliases, list) else (), alias_line=_setting_line(text, _line(text, key),
                                                                                       "aliases")))
    problems += _clashes(_ordered(named, base), file)
    if problems:
        raise ModelsFileError("\n".join(problems))
    return _ordered(entries, base)


def _toml() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def _line(text: str, key: str) -> int:
    """The line (1-based) of ``[models.key]`` or ``[key]`` in ``text``; 1 if not found."""
    pattern = re.compile(rf"^[ \t]*\[[ \t]*(models[ \t]*\.[ \t]*)?[\"']?{re.escape(key)}[\"']?[ \t]*\]", re.MULTILINE)
    found = pattern.search(text)
    return text.count("\n", 0, found.start()) + 1 if found else 1


def _setting_line(text: str, table_line: int, name: str) -> int:
    """The line of ``name = ...`` in the table that starts at ``table_line``; the table's line if not found."""
    lines = text.splitlines()
    for number in range(table_line, len(lines)):
        line = lines[number].strip()
        if line.startswith("["):
            break
        if re.match(rf"{re.escape(name)}\s*=", line):
            return number + 1
    return table_line


def _entry(file: Path, text: str, key: str, table: Any) -> ModelEntry:
    line = _line(text, key)

    def at(name: str) -> str:
        return f"{file}:{_setting_line(text, line, name)}: [models.{key}]"

    where = f"{file}:{line}: [models.{key}]"
    if not isinstance(table, dict):
        raise ModelsFileError(f"{where} must be a table")
    for name, value in table.items():
        if name not in KEYS:
            raise ModelsFileError(f"{at(name)}: unknown setting {name!r}: valid settings are {', '.join(KEYS)}")
        if not isinstance(value, KEYS[name]) or (name == "aliases" and not all(isinstance(a, str) for a in value)):
            kind = "a list of names" if name == "aliases" else "true or false" if KEYS[name] is bool else "text"
            raise ModelsFileError(f"{at(name)}: {name} must be {kind}")
    backend = table.get("backend")
    if backend not in SPECS:
        raise ModelsFileError(f"{at('backend')}: backend={backend!r} is invalid: use one of {', '.join(SPECS)}")
    model = str(table.get("model") or SPECS[backend].default_model)
    if looks_like_path(model) and not Path(model).expanduser().is_dir():
        raise ModelsFileError(f"{at('model')}: model={model!r} is not a directory here: give a model directory or a "
                              f"{SPECS[backend].hub} id")
    return ModelEntry(id=key, backend=backend, model=model, aliases=tuple(table.get("aliases", ())),
                      language=table.get("language"), prompt=table.get("prompt"),
                      vocabulary_file=table.get("vocabulary_file"), vad=table.get("vad"), line=line,
                      alias_line=_setting_line(text, line, "aliases"))


def _ordered(entries: list[ModelEntry], base: Settings) -> list[ModelEntry]:
    """The entries with the `.env` model first: its own table where one names it, else one of its own."""
    same = [e for e in entries if (e.backend, e.model) == (base.BACKEND, base.model)]
    default = same[0] if same else ModelEntry(id=public_name(base.model), backend=base.BACKEND, model=base.model)
    return [default, *(e for e in entries if e is not default)]


def _clashes(entries: list[ModelEntry], file: Path) -> list[str]:
    """One line per name (id or alias) that two models claim."""
    seen: dict[str, ModelEntry] = {}
    problems = []
    for entry in entries:
        for name in (entry.id, *entry.aliases):
            other = seen.get(name)
            if other is not None and other is not entry:
                first = f"[models.{other.id}]" if other.line else "the .env model"
                where = entry.alias_line if name != entry.id else entry.line
                problems.append(f"{file}:{where}: [models.{entry.id}]: the name {name!r} is already "
                                f"{first}'s: ids and aliases must be unique")
            seen[name] = entry
    return problems


@dataclass
class Slot:
    """One model of the pool: its entry, worker and service, and how it has been used."""

    entry: ModelEntry
    worker: Any  # rapl.core.worker.ModelWorker
    service: Any  # rapl.core.service.Transcriber
    last_used: float = 0.0
    requests: int = 0
    load_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Models:
    """The models of one server, on one model thread; picks a model per request and keeps MAX_LOADED_MODELS."""

    def __init__(self, entries: list[ModelEntry], build: Callable[[ModelEntry, ThreadPoolExecutor], Slot],
                 max_loaded: int = 1, strict: bool = False, memory_mb: int = 0) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rapl-model")
        self.slots = {entry.id: build(entry, self.executor) for entry in entries}
        self.default = self.slots[entries[0].id]
        self.max_loaded = max_loaded
        self.strict = strict
        self.memory_budget = memory_mb * 1_000_000  # bytes; 0: none
        self.pulls: dict[str, store.Pull] = {}  # by model id: the latest download asked for
        self._names = {name: slot for slot in self.slots.values() for name in (slot.entry.id, *slot.entry.aliases)}
        self._lock = threading.Lock()
        for slot in self.slots.values():
            slot.worker.waiting_everywhere = self.waiting

    @property
    def several(self) -> bool:
        """Whether more than one model is configured."""
        return len(self.slots) > 1

    def names(self) -> Mapping[str, Slot]:
        """Every id and alias, and the model each names."""
        return self._names

    def find(self, name: str) -> Slot | None:
        """The model ``name`` (an id or an alias) names, or None."""
        return self._names.get(name.strip())

    def pick(self, name: str) -> Slot:
        """The model a request's ``model`` field chooses: a configured id or alias, else the default
        (apps send names they cannot change), or a 404 when STRICT_MODELS is on."""
        slot = self.find(name or "")
        if slot is None:
            if self.strict and name:
                from ..errors import APIError

                raise APIError(f"The model '{name}' does not exist here. This server has "
                               f"{', '.join(self._names)}.", 404, param="model", code="model_not_found")
            slot = self.default
        self.use(slot)
        return slot

    def use(self, slot: Slot) -> None:
        """Mark ``slot`` used now; if it must load, make room first (its LRU neighbours unloaded, in order)."""
        with self._lock:
            slot.last_used = time.monotonic()
            slot.requests += 1
            if self._resident(slot):
                return
            others = sorted((s for s in self.slots.values() if s is not slot and self._resident(s)),
                            key=lambda s: s.last_used)
            need = self._expected_bytes(slot) if self.memory_budget else 0
            while others and (len(others) >= self.max_loaded or self._over_budget(others, need)):
                victim = others.pop(0)
                why = "MAX_LOADED_MODELS" if len(others) + 1 >= self.max_loaded else "MODEL_MEMORY_MB"
                log.info("unloading model %s (least recently used; %s) to make room for %s", victim.entry.id,
                         why, slot.entry.id)
                victim.worker.unload_soon()

    def _over_budget(self, others: list[Slot], need: int) -> bool:
        """Whether ``others`` (loaded) and ``need`` more bytes exceed MODEL_MEMORY_MB."""
        if not self.memory_budget:
            return False
        return sum(s.worker.memory_bytes or 0 for s in others) + need > self.memory_budget

    @staticmethod
    def _expected_bytes(slot: Slot) -> int:
        """What loading ``slot`` will add: its last measured load, else its size on disk (0 if unknown)."""
        if slot.worker.memory_bytes is not None:
            return slot.worker.memory_bytes
        spec = SPECS.get(slot.entry.backend)
        found = store.cached(spec, slot.entry.model) if spec is not None else None
        return found.size if found is not None else 0

    @staticmethod
    def _resident(slot: Slot) -> bool:
        worker = slot.worker
        return worker.loaded is not None and worker.state in ("ready", "loading")

    def describe(self) -> list[dict[str, Any]]:
        """Each model as /health and /metrics show it: state, requests, load time, idle time, memory."""
        now = time.monotonic()
        return [{"id": slot.entry.id, "backend": slot.entry.backend, "aliases": list(slot.entry.aliases),
                 "status": slot.worker.state if slot.worker.loaded is not None else "unloaded",
                 "requests": slot.requests, "load_seconds": slot.worker.load_seconds,
                 "idle_seconds": round(now - slot.last_used, 1) if slot.last_used else None,
                 "memory_mb": _mb(slot.worker.memory_bytes) if self._resident(slot) else None}
                for slot in self.slots.values()]

    def pull(self, slot: Slot) -> store.Pull:
        """Download ``slot``'s model into its hub's cache now, in a thread of its own (the model thread
        keeps serving); the download already running for it, if one is."""
        with self._lock:
            running = self.pulls.get(slot.entry.id)
            if running is not None and running.status == "downloading":
                return running
            backend = slot.entry.backend
            pull = store.Pull(SPECS[backend], slot.entry.model, lambda model: fetch(backend, model))
            self.pulls[slot.entry.id] = pull.start()
            return pull

    def waiting(self) -> int:
        """Requests waiting for the model thread, every model together (MAX_QUEUE bounds this)."""
        return sum(s.worker.own_waiting for s in self.slots.values())

    def start(self) -> None:
        """Begin loading the default model (the others load on first use)."""
        self.default.worker.start()

    def shutdown(self) -> None:
        """Stop every model's threads; the model thread finishes its running job."""
        for slot in self.slots.values():
            slot.worker.shutdown()


def _mb(count: int | None) -> float | None:
    return round(count / 1e6, 1) if count is not None else None
