"""The servers the benchmark measures, started as RAPL starts them, and nothing in rapl/ changed.

* ``InProcessServer``: ``create_app`` under waitress with RAPL's own adjustments
  (``rapl.server.adjustments``), on a thread of the benchmark's process, so the same loaded
  model can also be called directly, outside any request.
* ``server_env`` / ``start_rapl``: ``python -m rapl`` (or a bootstrap that sets an interpreter
  option and then runs ``rapl.cli.main`` unchanged) in a subprocess.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from bench import net

ROOT = Path(__file__).resolve().parents[1]
# Interpreter settings measured beside the default; the package itself runs unchanged.
PLAIN = "import sys; from rapl.cli import main; sys.exit(main())"
SWITCH_1MS = "import sys; sys.setswitchinterval(0.001); from rapl.cli import main; sys.exit(main())"


def server_env(backend: str, model: str, port: int, **extra: str) -> dict[str, str]:
    """Environment for ``python -m rapl``: defaults except the progress bar, no .env file."""
    return {"ENV_FILE": "", "BACKEND": backend, "LOCAL_MODEL": model, "HOST": net.HOST, "PORT": str(port),
            "PROGRESS": "false", "MAX_UPLOAD_MB": "2048", "REQUEST_TIMEOUT": "3600", **extra}


def start_rapl(name: str, backend: str, model: str, log_path: Path, code: str | None = None,
               **env: str) -> net.ServerProcess:
    """``python -m rapl`` (or ``python -c code``) on a free loopback port, started (not yet ready)."""
    port = net.free_port()
    argv = [sys.executable, "-m", "rapl"] if code is None else [sys.executable, "-c", code]
    return net.ServerProcess(name, argv, port, log_path, server_env(backend, model, port, **env), cwd=ROOT).start()


class InProcessServer:
    """The real app (create_app) under waitress, on a thread of this process, as cli.serve runs it."""

    def __init__(self, backend: str, model: str, vad: bool) -> None:
        from waitress.server import create_server

        from rapl import create_app
        from rapl.server import adjustments

        self.app = create_app({"ENV_FILE": "", "BACKEND": backend, "LOCAL_MODEL": model, "PROGRESS": "false",
                               "VAD": "true" if vad else "false"})
        settings = self.app.config["RAPL_SETTINGS"]
        self.worker = self.app.extensions["rapl"]
        served = {**adjustments(settings), "host": net.HOST, "port": 0}  # as RAPL's launchers serve
        self.server = create_server(self.app, **served)
        self.port = int(self.server.effective_port)
        self.thread = threading.Thread(target=self._serve, daemon=True, name="waitress")
        self.thread.start()
        try:  # load and warm up before the first request, as RAPL's launcher does
            self.worker.ensure_loaded()
        except Exception as exc:
            self.close()
            raise RuntimeError(f"model did not load: {self.worker.error or exc}") from exc
        if self.worker.state != "ready":
            self.close()
            raise RuntimeError(f"model did not load: {self.worker.error}")

    def _serve(self) -> None:
        try:
            self.server.run()
        except OSError:  # close() pulls the socket from under select(): that is how it stops
            pass

    def close_http(self) -> None:
        """Stop serving HTTP (the model stays loaded for direct calls)."""
        self.server.close()
        self.thread.join(timeout=10)

    def close(self) -> None:
        """Stop serving and stop the model thread."""
        self.close_http()
        self.worker.shutdown()


def planned_chunks(worker: Any, pcm: Any, response_format: str = "json") -> list[Any]:
    """The chunks the server gives the model for ``pcm`` (the server's rule, in rapl/service.py, recomputed
    here for the direct calls): a json/text clip that fits one chunk goes whole when the VAD hears speech
    in it; anything else is planned by the segmenter."""
    from rapl.vad import Chunk

    seg = worker.segmenter
    if response_format in ("json", "text") and seg.enabled and len(pcm) <= seg.max_chunk:
        return [Chunk(0, len(pcm))] if seg.speech(pcm) else []
    return list(seg.plan(pcm, merge=merges(worker)))


def merges(worker: Any) -> bool:
    """Whether the loaded model segments audio itself, so the VAD's spans are merged into long chunks
    (the model worker's ``capabilities``, or the backend's own flag in older code)."""
    return bool(getattr(getattr(worker, "capabilities", None) or worker.backend, "segments_audio", False))
