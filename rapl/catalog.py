"""The backends RAPL knows, before any is built: one :class:`BackendSpec` line each.

Settings check BACKEND and pick the default model from here, ``rapl check`` and ``rapl models``
name the packages and hubs, and :func:`rapl.backends.create` imports the factory of the one
chosen. A new backend is one module in ``rapl/backends/`` plus one line below. Imports nothing of RAPL.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendSpec:
    """Everything RAPL knows about a backend before it is built."""

    name: str  # the BACKEND value
    factory: str  # "module:Class", imported only when chosen
    default_model: str  # what an empty LOCAL_MODEL loads
    packages: tuple[tuple[str, str], ...]  # (module to import, pip package) it needs
    hub: str  # where models that are not local directories come from
    hub_host: str  # that hub's host (what `rapl check` probes)
    marker: str | None  # a file every local model directory of this backend has (None: varies)


SPECS: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec("sensevoice", "rapl.backends.sensevoice:SenseVoiceBackend", "iic/SenseVoiceSmall",
                (("funasr", "funasr"), ("torch", "torch"), ("kaldi_native_fbank", "kaldi-native-fbank")),
                "ModelScope", "www.modelscope.cn", "config.yaml"),
    BackendSpec("whisper", "rapl.backends.whisper:WhisperBackend", "Systran/faster-whisper-small",
                (("faster_whisper", "faster-whisper"),), "Hugging Face", "huggingface.co", "model.bin"),
    BackendSpec("mlx", "rapl.backends.mlx:MLXBackend", "mlx-community/Qwen3-ASR-1.7B-8bit",
                (("mlx_audio", "mlx-audio"),), "Hugging Face", "huggingface.co", "config.json"),
)}
