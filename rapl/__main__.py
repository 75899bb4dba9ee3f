"""`python -m rapl`: serve with waitress on HOST:PORT from the settings."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("rapl")


def main(argv: list[str] | None = None) -> int:
    """Start the server; returns the process exit status."""
    from waitress import serve

    from . import create_app_or_exit

    app = create_app_or_exit()
    settings = app.config["RAPL_SETTINGS"]
    worker = app.extensions["rapl"]
    print(f"RAPL serving {settings.BACKEND} model {settings.model} at "
          f"http://{settings.HOST}:{settings.PORT} (OpenAI base URL http://{settings.HOST}:{settings.PORT}/v1)",
          flush=True)
    try:
        serve(app, host=settings.HOST, port=settings.PORT, threads=settings.MAX_QUEUE + 4,
              channel_request_lookahead=1, ident="rapl")
    finally:
        worker.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
