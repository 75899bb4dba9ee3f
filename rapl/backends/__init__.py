"""Speech-to-text backends behind one small Protocol, chosen by the BACKEND setting.

A backend is one module plus one entry in ``rapl.catalog.SPECS``: its factory, default model, the
packages it needs, the hub its models come from and the file that marks a local model directory.
Settings, ``rapl check``, ``rapl models`` and README's table derive from that entry. Each backend imports its
heavy library only inside ``load()``, so choosing one never imports the others; ``load()``
returns what the loaded model can do (its Capabilities), and ``transcribe()`` yields segments.

Beside them, the model store (``store``: local directories, the hub caches, downloads ahead of
first use). May import rapl.audio (the sample rate), rapl.transcript and the foundation; the core
imports the backends, never the other way round.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..catalog import SPECS

if TYPE_CHECKING:
    import numpy as np

    from ..settings import Settings
    from ..transcript.transcription import Options, Segment


@dataclass(frozen=True)
class Capabilities:
    """What a loaded model can do; requests asking for more get a 400 naming the parameter."""

    languages: frozenset[str] | None = None  # ISO codes it accepts; None: any code
    can_translate: bool = False  # speech to English text (task="translate")
    can_time_words: bool = False  # word timestamps
    segments_audio: bool = False  # splits a long chunk into timed segments itself (Whisper); else one per chunk
    can_bias: bool = False  # takes a vocabulary (keywords[]) to favour
    can_detect_among: bool = False  # restricts language detection to given languages (languages[])
    can_logprobs: bool = False  # reports per-token log-probabilities (include[]=logprobs)
    tells_languages: bool = False  # can tell each stretch's language (language_of: rapl.core.pipeline.by_language)


class Backend(Protocol):
    """What RAPL needs from a speech-to-text model."""

    name: str  # the BACKEND value
    model: str  # the hub id or directory in use
    hub: str  # where a model that is not a local directory is downloaded from

    def load(self) -> Capabilities:
        """Download if needed, load and warm up the model (runs in the model thread)."""

    def unload(self) -> None:
        """Drop the model so its memory can be freed (load() brings it back)."""

    def transcribe(self, audio: np.ndarray, options: Options) -> Iterator[Segment]:
        """Transcribe 16 kHz mono float32 audio (one chunk of at most MAX_CHUNK_SECONDS).

        Yields its segments in order, as each is done; times are relative to the start of
        ``audio``; a segment's ``language`` is the language the model heard, where it says.
        """


# Folder names that say nothing about the model: a directory called so is named by its parent.
_GENERIC_FOLDERS = frozenset({"model", "models", "checkpoint", "checkpoints", "weights", "data", "files", "ct2",
                              "snapshot", "snapshots", "main", "latest", "current", "export", "exported"})
_HASH = re.compile(r"^[0-9a-f]{16,64}$")  # a hub cache's snapshot folder (a commit hash)


def public_name(model: str) -> str:
    """The model's name as clients see it: a hub id as is, a local directory by its last meaningful part.

    ``.../whisper-tiny.en/model`` is ``whisper-tiny.en``, a Hugging Face cache snapshot
    (``models--Org--name/snapshots/<hash>``) is ``Org/name``. The server's own paths never leave
    it (in /v1/models, /health or headers).
    """
    path = Path(model).expanduser()
    if not (path.is_absolute() or path.is_dir()):
        return model
    path = Path(os.path.normpath(path))
    for part in reversed(path.parts[1:] if path.anchor else path.parts):
        if part.startswith("models--") and part.count("--") >= 2:
            return part[len("models--"):].replace("--", "/", 1)
        if part != ".." and part.lower() not in _GENERIC_FOLDERS and not _HASH.match(part.lower()):
            return part
    return path.name or model


def cpu_threads(settings: Settings) -> int:
    """THREADS, or every core when it is 0."""
    return settings.THREADS or os.cpu_count() or 1


def warm_up_noise(seconds: float = 1.0) -> np.ndarray:
    """Quiet noise to run a freshly loaded model once, so the first request pays no set-up."""
    import numpy as np

    from ..audio.recording import SAMPLE_RATE

    return np.random.default_rng(0).normal(0.0, 1e-3, int(seconds * SAMPLE_RATE)).astype(np.float32)


def free_memory() -> None:
    """Return freed model memory to the system (and the GPU, where torch or MLX hold it)."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    mx = sys.modules.get("mlx.core")
    if mx is not None and hasattr(mx, "clear_cache"):
        mx.clear_cache()


def create(settings: Settings) -> Backend:
    """Build (but do not load) the backend that ``settings.BACKEND`` names."""
    module_name, class_name = SPECS[settings.BACKEND].factory.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(settings)


def fetch(name: str, model: str) -> Path:
    """A local directory holding ``model`` for the backend ``name``, downloaded through that backend's
    own hub library when not cached (``rapl models pull``, ``POST /v1/models/{id}/download``)."""
    module = importlib.import_module(SPECS[name].factory.split(":")[0])
    return Path(module.fetch(model))
