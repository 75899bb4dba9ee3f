"""Speech-to-text backends behind one small Protocol, chosen by the BACKEND setting.

Each backend lives in its own module and imports its heavy library only inside
``load()``, so choosing one never imports the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from ..settings import Settings
from ..transcription import Options, Segment, Transcription

OnSegment = Callable[[Segment], None]

# BACKEND value -> "module:Class", imported only when chosen.
REGISTRY: dict[str, str] = {
    "sensevoice": "rapl.backends.sensevoice:SenseVoiceBackend",
    "whisper": "rapl.backends.whisper:WhisperBackend",
    "mlx": "rapl.backends.mlx:MLXBackend",
}


class Backend(Protocol):
    """What RAPL needs from a speech-to-text model."""

    name: str  # the BACKEND value
    model: str  # the hub id or directory in use
    hub: str  # where a model that is not a local directory is downloaded from
    languages: frozenset[str] | None  # ISO codes it accepts; None: any Whisper code
    can_translate: bool  # speech to English text (task="translate")
    can_time_words: bool  # word timestamps
    segments_audio: bool  # splits a long chunk into timed segments itself (Whisper); else one per chunk
    can_bias: bool  # takes a vocabulary (keywords[]) to favour
    can_detect_among: bool  # restricts language detection to given languages (languages[])
    can_logprobs: bool  # reports per-token log-probabilities (include[]=logprobs)

    def load(self) -> None:
        """Download if needed, load and warm up the model (runs in the model thread)."""

    def unload(self) -> None:
        """Drop the model so its memory can be freed (load() brings it back)."""

    def transcribe(self, audio: np.ndarray, options: Options, on_segment: OnSegment) -> Transcription:
        """Transcribe 16 kHz mono float32 audio (one chunk of at most MAX_CHUNK_SECONDS).

        Calls ``on_segment`` for every segment of the result, in order, as each is done;
        times are relative to the start of ``audio``.
        """


def public_name(model: str) -> str:
    """The model's name as clients see it: a hub id as is, a local directory by its folder name.

    The server's own paths never leave it (in /v1/models, /health or headers).
    """
    path = Path(model).expanduser()
    return path.name or model if path.is_absolute() or path.is_dir() else model


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
    module_name, class_name = REGISTRY[settings.BACKEND].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(settings)
