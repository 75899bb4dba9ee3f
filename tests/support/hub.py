"""A Hugging Face hub on loopback, serving model folders from this machine (the real hub is unreachable here).

It answers the four requests ``huggingface_hub.snapshot_download`` makes (a repository's revision, its
file tree, then a HEAD and a GET per file), so downloads run through the real hub library: set
``HF_ENDPOINT`` to :attr:`LocalHub.url`. ``delay`` slows each file so progress can be watched.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class LocalHub:
    """``repos``: hub id -> a folder whose files are that repository's."""

    def __init__(self, repos: dict[str, Path], delay: float = 0.0) -> None:
        self.repos, self.delay = repos, delay
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's names
                hub._answer(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = handler.path.split("?", 1)[0]
        self.requests.append(f"{handler.command} {path}")
        for repo, folder in self.repos.items():
            files = sorted(p for p in folder.iterdir() if p.is_file())
            if path.startswith(f"/api/models/{repo}/tree/"):
                return _json(handler, [{"type": "file", "path": p.name, "size": p.stat().st_size,
                                        "oid": _etag(p)[:40]} for p in files], body)
            if path.startswith(f"/api/models/{repo}/revision/"):
                return _json(handler, {"id": repo, "sha": COMMIT,
                                       "siblings": [{"rfilename": p.name} for p in files]}, body)
            prefix = f"/{repo}/resolve/"
            if path.startswith(prefix):
                file = folder / path[len(prefix):].split("/", 1)[-1]
                if file.is_file():
                    return self._file(handler, file, body)
        handler.send_response(404)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _file(self, handler: BaseHTTPRequestHandler, file: Path, body: bool) -> None:
        handler.send_response(200)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{_etag(file)}"')
        handler.send_header("Content-Length", str(file.stat().st_size))
        handler.end_headers()
        if not body:
            return
        with file.open("rb") as f:
            while chunk := f.read(4 << 20):
                handler.wfile.write(chunk)
                time.sleep(self.delay)


def _etag(file: Path) -> str:
    return hashlib.sha256(f"{file.name}:{file.stat().st_size}".encode()).hexdigest()


def _json(handler: BaseHTTPRequestHandler, data: object, body: bool) -> None:
    raw = json.dumps(data).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    if body:
        handler.wfile.write(raw)
