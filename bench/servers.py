"""The server the benchmark measures, started as RAPL starts it, and nothing in rapl/ changed.

* ``server_env`` / ``start_rapl``: ``python -m rapl`` in a subprocess.
* ``segmenter`` / ``long_chunks``: RAPL's own chunk plan for a long recording, recomputed in the
  benchmark's process, so the model can be given the same chunks in the direct process (bench/direct.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench import net

ROOT = Path(__file__).resolve().parents[1]


def server_env(backend: str, model: str, port: int, **extra: str) -> dict[str, str]:
    """Environment for ``python -m rapl``: defaults except the progress bar, no .env file."""
    return {"ENV_FILE": "", "BACKEND": backend, "LOCAL_MODEL": model, "HOST": net.HOST, "PORT": str(port),
            "PROGRESS": "false", "MAX_UPLOAD_MB": "2048", "REQUEST_TIMEOUT": "3600", **extra}


def start_rapl(name: str, backend: str, model: str, log_path: Path, **env: str) -> net.ServerProcess:
    """``python -m rapl`` on a free loopback port, started (not yet ready)."""
    port = net.free_port()
    argv = [sys.executable, "-m", "rapl"]
    return net.ServerProcess(name, argv, port, log_path, server_env(backend, model, port, **env), cwd=ROOT).start()


# Whether the backend's model segments a long chunk itself (its Capabilities.segments_audio): the server then
# merges the VAD's spans up to MAX_CHUNK_SECONDS, else each pause starts a chunk.
SEGMENTS_AUDIO = {"whisper": True, "sensevoice": False}


def segmenter(backend: str, model: str, **env: str) -> Any:
    """RAPL's own Segmenter (rapl.audio.vad), built from the settings ``start_rapl`` gives the server."""
    from rapl.audio.vad import Segmenter
    from rapl.settings import Settings

    settings = {k: v for k, v in server_env(backend, model, 8000, **env).items() if k != "ENV_FILE"}
    return Segmenter(Settings.load(settings))


def long_chunks(seg: Any, backend: str, pcm: Any) -> list[tuple[int, int]]:
    """The chunks the server gives the model for a recording longer than one chunk (the server's rule in
    rapl/core/service.py, recomputed here): ``Segmenter.plan``, merged for models that segment audio themselves."""
    return [(int(c.start), int(c.end)) for c in seg.plan(pcm, merge=SEGMENTS_AUDIO[backend])]
